"""One streaming pass over a source checkpoint writes every member of a family.

Tensors are visited in file order. An untouched tensor is copied byte-for-byte into every member by the
kernel (no dtype conversion, no trip through Python memory). Every layer is scored before the pass
(weight_layer_scores streams each layer's gate and up rows through the criterion, chunk by chunk; data_scores
uses calibration statistics), so a checkpoint that cannot be ranked is refused with nothing written. The pass
then streams each MLP tensor in row chunks of at most CHUNK_BYTES, and every member receives its kept rows (or
columns) of each chunk. Peak memory is a few chunks, whatever the size of the model or of its layers. Gate and
up are read twice, to score and to write: the second read finds them in the page cache when the model fits.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from hubprune.errors import CheckpointError, CriterionError, TargetError
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.arch import ArchSpec, resolve
from hubprune.pruning.calibrate import ActivationStats
from hubprune.pruning.checkpoint import FLOAT_DTYPES, Checkpoint, TensorInfo, read_tensor
from hubprune.pruning.importance import (
    FISHER_CRITERIA,
    GRAM_CRITERIA,
    activation,
    hybrid,
    keep,
    obs,
    peak_to_peak,
    random_scores,
    rank,
    score_rows,
)
from hubprune.pruning.plan import ModelShape
from hubprune.pruning.writer import DEFAULT_MAX_SHARD_BYTES, ShardedWriter, TensorSpec, verify
from hubprune.recover.refit import NewColumns, apply_update, removed_of

# Roles of MLP tensors, and which dimension of each is indexed by neuron.
ROW_ROLES = ("gate.weight", "gate.bias", "up.weight", "up.bias")
FUSED_ROLES = ("gate_up.weight", "gate_up.bias")  # rows [0, n) are gate, rows [n, 2n) are up
COLUMN_ROLES = ("down.weight",)
UNTOUCHED_ROLES = ("down.bias",)

CHUNK_BYTES = 16 * 1024**2


@dataclass(frozen=True)
class MlpLayout:
    """Where each layer's GLU tensors are in a checkpoint, checked for a single uniform width."""

    spec: ArchSpec
    hidden_size: int
    intermediate_size: int
    num_layers: int
    roles: dict[str, tuple[int, str]]  # tensor name -> (layer, role)
    scoring_tensors: dict[int, tuple[str, ...]]  # layer -> (gate, up) names, or (gate_up,) when fused

    def params_per_neuron(self, tensors: dict[str, TensorInfo]) -> tuple[int, int]:
        """(parameters, bytes) that one neuron owns across all layers."""
        params = nbytes = 0
        for name, (_, role) in self.roles.items():
            if role in UNTOUCHED_ROLES:
                continue
            info = tensors[name]
            per = info.numel // self.intermediate_size
            params += per
            nbytes += info.nbytes // self.intermediate_size
        return params, nbytes


def analyse(checkpoint: Checkpoint) -> MlpLayout:
    """Find and check every GLU tensor: known roles, float dtypes, the shapes the config promises."""
    spec = resolve(checkpoint.config)
    hidden, n = spec.widths(checkpoint.config)
    bias = spec.has_bias(checkpoint.config)
    role_of_suffix = _suffix_roles(spec, bias)
    roles: dict[str, tuple[int, str]] = {}
    for name in checkpoint.tensors:
        match = spec.mlp_prefix.match(name)
        if not match:
            continue
        suffix = name[match.end() :]
        if suffix not in role_of_suffix:
            fix = "prune the original model"
            if suffix.endswith(".bias") and spec.bias_flag and not bias:
                fix += f" (or, if this model does use MLP biases, set {spec.bias_flag}: true in config.json)"
            raise CheckpointError(
                f"unexpected MLP tensor {name!r}: a {spec.name} MLP "
                f"{f'with {spec.bias_flag} true ' if bias else ''}holds only {', '.join(sorted(role_of_suffix))} "
                f"(hubprune/data/architectures/{spec.name}.json); this checkpoint is quantized, adapted or of "
                f"another architecture than its config.json says: {fix}"
            )
        roles[name] = (int(match.group("layer")), role_of_suffix[suffix])
    layers = sorted({layer for layer, _ in roles.values()})
    num_layers = spec.text_config(checkpoint.config).get("num_hidden_layers", len(layers))
    if not isinstance(num_layers, int) or isinstance(num_layers, bool):
        raise CheckpointError(
            f"config.json has num_hidden_layers {num_layers!r}, not a whole number: restore the original config.json"
        )
    if not layers:
        raise CheckpointError(f"no {spec.name} MLP tensors found in {checkpoint.folder}: is the checkpoint complete?")
    if layers != list(range(num_layers)):
        raise CheckpointError(
            f"config.json says num_hidden_layers {num_layers} but the weights hold MLP tensors for "
            f"{len(layers)} layer(s) ({_spans(layers)}): the weights and config.json disagree; re-download the "
            "checkpoint, or restore its original config.json"
        )
    scoring_roles = ("gate_up.weight",) if spec.gate_up else ("gate.weight", "up.weight")
    needed = (*scoring_roles, "down.weight")
    if bias:
        needed += tuple(role.replace(".weight", ".bias") for role in needed)
    by_layer: dict[int, dict[str, str]] = {layer: {} for layer in layers}
    for name, (layer, role) in roles.items():
        by_layer[layer][role] = name
    for layer, found in by_layer.items():
        missing = [role for role in needed if role not in found]
        if missing:
            names = ", ".join(_suffix_of(spec, role) for role in missing)
            raise CheckpointError(
                f"layer {layer} lacks its MLP tensor(s) {names}: the checkpoint is incomplete; re-download it"
            )
        for role, name in found.items():
            _check_shape(checkpoint.tensors[name], role, layer, hidden, n)
    scoring = {layer: tuple(found[r] for r in scoring_roles) for layer, found in by_layer.items()}
    return MlpLayout(spec, hidden, n, num_layers, roles, scoring)


def _suffix_roles(spec: ArchSpec, bias: bool) -> dict[str, str]:
    """Tensor name suffix after the MLP prefix -> role: 'gate_proj.weight' -> 'gate.weight'; biases only when
    the config says the MLP has them."""
    parts = {"gate_up": spec.gate_up} if spec.gate_up else {"gate": spec.gate, "up": spec.up}
    parts["down"] = spec.down
    kinds = ("weight", "bias") if bias else ("weight",)
    return {f"{module}.{kind}": f"{part}.{kind}" for part, module in parts.items() for kind in kinds}


def _suffix_of(spec: ArchSpec, role: str) -> str:
    """'up.weight' -> 'up_proj.weight', as the checkpoint names it."""
    part, kind = role.split(".")
    return f"{getattr(spec, part)}.{kind}"


def _spans(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans: list[list[int]] = []
    for layer in layers:
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _check_shape(info: TensorInfo, role: str, layer: int, hidden: int, n: int) -> None:
    # The dtype first: a quantized tensor's shape is packed, and its dtype says why better than its shape does.
    if info.dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{info.name} is stored as {info.dtype}, not as floats (a quantized checkpoint?): hubprune prunes "
            "float16/bfloat16/float32 MLP weights: prune the unquantized model, then quantize the members"
        )
    fused = role in FUSED_ROLES
    neuron_dim = 1 if role in COLUMN_ROLES else 0
    expected = [2 * n if fused else n, hidden] if role.endswith(".weight") else [2 * n if fused else n]
    if role in COLUMN_ROLES:
        expected = [hidden, n]
    elif role in UNTOUCHED_ROLES:
        expected = [hidden]
    shape = list(info.shape)
    if shape != expected:
        only_width_differs = (
            role not in UNTOUCHED_ROLES
            and len(shape) == len(expected)
            and all(a == b for d, (a, b) in enumerate(zip(shape, expected)) if d != neuron_dim)
        )
        if only_width_differs:
            width = shape[neuron_dim] // 2 if fused else shape[neuron_dim]
            raise TargetError(
                f"layer {layer} has MLP width {width} but config.json says intermediate_size {n}: per-layer widths "
                "differ, and plain from_pretrained needs one width for all layers; prune a uniform-width model"
            )
        raise CheckpointError(
            f"{info.name} has shape {shape}, expected {expected} from config.json: the weights and config.json "
            "disagree; re-download the checkpoint, or restore its original config.json"
        )


def model_shape(checkpoint: Checkpoint, layout: MlpLayout) -> ModelShape:
    params_per_neuron, bytes_per_neuron = layout.params_per_neuron(checkpoint.tensors)
    return ModelShape(
        hidden_size=layout.hidden_size,
        intermediate_size=layout.intermediate_size,
        num_layers=layout.num_layers,
        params_total=sum(t.numel for t in checkpoint.tensors.values()),
        params_mlp=sum(checkpoint.tensors[name].numel for name in layout.roles),
        weight_bytes=checkpoint.weight_bytes,
        params_per_neuron=params_per_neuron,
        bytes_per_neuron=bytes_per_neuron,
    )


def output_specs(checkpoint: Checkpoint, layout: MlpLayout, width: int) -> list[TensorSpec]:
    """Every output tensor, in source order, with its MLP dimensions cut to `width`."""
    specs = []
    for info in checkpoint.tensors.values():
        shape = list(info.shape)
        role = layout.roles.get(info.name, (0, ""))[1]
        if role in ROW_ROLES:
            shape[0] = width
        elif role in FUSED_ROLES:
            shape[0] = 2 * width
        elif role in COLUMN_ROLES:
            shape[1] = width
        specs.append(TensorSpec(info.name, info.dtype, tuple(shape)))
    return specs


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _row_chunks(info: TensorInfo, start: int, stop: int) -> list[tuple[int, int]]:
    """[start, stop) cut into row ranges of at most CHUNK_BYTES (at least one row each)."""
    rows = info.shape[0] if info.shape else 1
    row_bytes = max(1, info.nbytes // rows) if rows else 1
    step = max(1, CHUNK_BYTES // row_bytes)
    return [(r, min(r + step, stop)) for r in range(start, stop, step)]


@dataclass(frozen=True)
class MemberOutput:
    """Where one member's weights go and how wide its MLP is."""

    folder: Path
    intermediate_size: int


def prune_pass(
    checkpoint: Checkpoint,
    layout: MlpLayout,
    outputs: list[MemberOutput],
    layer_scores: dict[int, torch.Tensor],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_progress: ProgressCallback | None = None,
    down_updates: dict[int, dict[int, torch.Tensor | NewColumns]] | None = None,
) -> dict[int, torch.Tensor]:
    """Write every member's weights in one pass over the source; return each width's kept indices,
    a [num_layers, width] int64 tensor with each row ascending. Every layer's scores are computed beforehand
    (layer_scores: weight_layer_scores or data_scores), so a checkpoint that cannot be ranked is refused before
    anything is written. `down_updates` (width -> layer -> M or NewColumns, a pass method's) makes a member's
    down_proj the refit W_K + W_R M (or the new columns) instead of the kept columns W_K, chunk by chunk, in the
    source dtype.

    Each member's folder must exist and be empty of weights; its safetensors files are verified (headers and
    shapes re-read) before this returns.
    """
    specs = {out.intermediate_size: output_specs(checkpoint, layout, out.intermediate_size) for out in outputs}
    writers = [
        (out.intermediate_size, ShardedWriter(out.folder, specs[out.intermediate_size], max_shard_bytes))
        for out in outputs
    ]
    kept = {
        out.intermediate_size: torch.empty(layout.num_layers, out.intermediate_size, dtype=torch.int64)
        for out in outputs
    }
    scored: set[int] = set()
    total, done = checkpoint.weight_bytes, 0
    source_fds: dict[Path, int] = {}
    pipeline = _Pipeline(workers=min(len(writers), os.cpu_count() or 1))
    try:
        for info in checkpoint.tensors.values():
            role = layout.roles.get(info.name, (0, "untouched"))[1]
            if info.name not in layout.roles or role in UNTOUCHED_ROLES:
                fd = source_fds.get(info.file)
                if fd is None:
                    fd = source_fds[info.file] = os.open(info.file, os.O_RDONLY)
                pipeline.submit([functools.partial(writer.copy, info.name, fd, info.offset) for _, writer in writers])
            else:
                layer = layout.roles[info.name][0]
                if layer not in scored:
                    ranking = rank(layer_scores[layer])
                    for width, indices in kept.items():
                        indices[layer] = keep(ranking, width)
                    scored.add(layer)
                updates = {w: (down_updates or {}).get(w, {}).get(layer) for w in kept}
                _write_mlp_tensor(
                    pipeline,
                    info,
                    role,
                    {w: k[layer] for w, k in kept.items()},
                    writers,
                    layout.intermediate_size,
                    updates,
                )
            done += info.nbytes
            report(on_progress, Progress("prune", done=done, total=total, unit="B"))
        pipeline.drain()
        for _, writer in writers:
            writer.close()
    except BaseException:
        pipeline.close()  # no job may still be writing when the files close
        for _, writer in writers:
            writer.abort()
        raise
    finally:
        pipeline.close()
        for fd in source_fds.values():
            os.close(fd)
    for out in outputs:
        verify(out.folder, specs[out.intermediate_size])
    return kept


class _Pipeline:
    """Writes one batch of jobs (one per member) on worker threads while the main thread reads the next chunk.

    os.write, copy_file_range and index_select release the GIL, and copying into the page cache is CPU-bound,
    so members are written in parallel. A batch starts only when the previous one has finished, so every
    member's writer still receives its bytes in order.
    """

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._in_flight: list[Future[None]] = []

    def submit(self, jobs: list[Callable[[], None]]) -> None:
        self.drain()
        self._in_flight = [self._pool.submit(job) for job in jobs]

    def drain(self) -> None:
        """Wait until every job in flight has finished, then re-raise the first failure."""
        futures, self._in_flight = self._in_flight, []
        wait(futures)
        for future in futures:
            future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def weight_scores(checkpoint: Checkpoint, layout: MlpLayout, layer: int, criterion: str, seed: int) -> torch.Tensor:
    """Every neuron's float32 score in one layer, streaming gate and up rows through the criterion in chunks."""
    n = layout.intermediate_size
    if criterion == "random":
        return random_scores(n, seed=seed, layer=layer)
    gate_info, up_info, up_start = _scoring_infos(checkpoint, layout, layer)
    parts = []
    for start, stop in _row_chunks(gate_info, 0, n):
        gate = read_tensor(gate_info, start, stop)
        up = read_tensor(up_info, up_start + start, up_start + stop)
        parts.append(score_rows(criterion, gate, up, layer=layer))
    return torch.cat(parts)


def weight_layer_scores(
    checkpoint: Checkpoint, layout: MlpLayout, criterion: str, seed: int = 0
) -> dict[int, torch.Tensor]:
    """Every layer's float32 scores under a weight criterion (or random), read before anything is written, so
    that a checkpoint whose gate/up weights hold NaN or inf is refused (CriterionError) with nothing on disk.
    The pass then reads gate and up once more, to write them (from the page cache when the model fits in it)."""
    return {layer: weight_scores(checkpoint, layout, layer, criterion, seed) for layer in range(layout.num_layers)}


def down_weights(checkpoint: Checkpoint, layout: MlpLayout) -> dict[int, torch.Tensor]:
    """Every layer's whole down_proj weight (hidden x n, float32), for recovery's refit."""
    found = {}
    for name, (layer, role) in layout.roles.items():
        if role == "down.weight":
            info = checkpoint.tensors[name]
            found[layer] = read_tensor(info, 0, info.shape[0]).float()
    return found


def down_modules(layout: MlpLayout) -> dict[int, str]:
    """Each layer's down_proj module name (its weight's tensor name without ".weight"), for calibration hooks."""
    return {
        layer: name.removesuffix(".weight") for name, (layer, role) in layout.roles.items() if role == "down.weight"
    }


def data_scores(
    checkpoint: Checkpoint, layout: MlpLayout, stats: ActivationStats, criterion: str
) -> dict[int, torch.Tensor]:
    """Every layer's scores under a data-aware criterion, from calibration statistics and the weights, streamed
    in row chunks like the weight criteria (down_proj's columns are reduced chunk by chunk over its rows)."""
    down = {layer: name for name, (layer, role) in layout.roles.items() if role == "down.weight"}
    found = {}
    for layer in range(layout.num_layers):
        info = checkpoint.tensors[down[layer]]
        sq_sum = torch.zeros(layout.intermediate_size)
        high = torch.full((layout.intermediate_size,), -torch.inf)
        low = torch.full((layout.intermediate_size,), torch.inf)
        for start, stop in _row_chunks(info, 0, info.shape[0]):
            rows = read_tensor(info, start, stop).float()
            sq_sum += rows.square().sum(dim=0)
            high = torch.maximum(high, rows.amax(dim=0))
            low = torch.minimum(low, rows.amin(dim=0))
        if criterion == "activation":
            scores = activation(stats.abs_mean[layer], sq_sum.sqrt())
        elif criterion in GRAM_CRITERIA:
            assert stats.grams is not None, "the obs criteria read the calibration's Gram matrices"
            gram = stats.grams.fit[layer].double() + stats.grams.held_out[layer].double()
            fisher = None
            if criterion in FISHER_CRITERIA:
                assert stats.fishers is not None, "obs-fisher reads the calibration's output Fishers"
                fisher = stats.fishers[layer]
            scores = obs(read_tensor(info, 0, info.shape[0]).float(), gram, fisher=fisher)
        else:
            gate_ptp, up_ptp = _gate_up_peak_to_peak(checkpoint, layout, layer)
            scores = hybrid(gate_ptp, up_ptp, high + low.abs(), stats.l2[layer])
        if not bool(torch.isfinite(scores).all()):
            raise CriterionError(f"layer {layer}: criterion {criterion!r} gives non-finite scores (NaN or inf)")
        found[layer] = scores
    return found


def _gate_up_peak_to_peak(checkpoint: Checkpoint, layout: MlpLayout, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    gate_info, up_info, up_start = _scoring_infos(checkpoint, layout, layer)
    gate_parts, up_parts = [], []
    for start, stop in _row_chunks(gate_info, 0, layout.intermediate_size):
        gate_parts.append(peak_to_peak(read_tensor(gate_info, start, stop), 1))
        up_parts.append(peak_to_peak(read_tensor(up_info, up_start + start, up_start + stop), 1))
    return torch.cat(gate_parts), torch.cat(up_parts)


def _scoring_infos(checkpoint: Checkpoint, layout: MlpLayout, layer: int) -> tuple[TensorInfo, TensorInfo, int]:
    """The gate and up tensors of a layer and the row where up starts (n in a fused gate_up, else 0)."""
    names = layout.scoring_tensors[layer]
    if len(names) == 1:  # fused: gate rows [0, n), up rows [n, 2n) of the same tensor
        return checkpoint.tensors[names[0]], checkpoint.tensors[names[0]], layout.intermediate_size
    gate_info, up_info = (checkpoint.tensors[name] for name in names)
    return gate_info, up_info, 0


def _write_mlp_tensor(
    pipeline: _Pipeline,
    info: TensorInfo,
    role: str,
    kept: dict[int, torch.Tensor],
    writers: list[tuple[int, ShardedWriter]],
    intermediate_size: int,
    updates: dict[int, torch.Tensor | NewColumns | None],
) -> None:
    """Stream one MLP tensor chunk by chunk; every member gets its kept rows (or columns) of each chunk, or for
    down_proj with an update (recovery), its refit columns."""
    first = True
    if role in COLUMN_ROLES:  # down_proj [hidden, n]: any rows, the kept (or refit) columns
        removed = {
            width: removed_of(kept[width], intermediate_size) for width, update in updates.items() if update is not None
        }
        for start, stop in _row_chunks(info, 0, info.shape[0]):
            chunk = read_tensor(info, start, stop)
            jobs = []
            for width, writer in writers:
                begin = info.name if first else None
                if updates.get(width) is None:
                    jobs.append(functools.partial(_append_columns, writer, begin, chunk, kept[width]))
                else:
                    columns = functools.partial(apply_update, chunk, kept[width], removed[width], updates[width], start)
                    jobs.append(functools.partial(_append_computed, writer, begin, columns))
            pipeline.submit(jobs)
            first = False
        return
    # gate / up rows [0, n); a fused gate_up has gate rows [0, n) then up rows [n, 2n), kept in that order
    for segment in (0, intermediate_size) if role in FUSED_ROLES else (0,):
        for start, stop in _row_chunks(info, 0, intermediate_size):
            chunk = read_tensor(info, segment + start, segment + stop)
            jobs = []
            for width, writer in writers:
                indices = kept[width]
                lo, hi = (int(torch.searchsorted(indices, bound)) for bound in (start, stop))
                jobs.append(
                    functools.partial(_append_rows, writer, info.name if first else None, chunk, indices[lo:hi] - start)
                )
            pipeline.submit(jobs)
            first = False


def _append_columns(writer: ShardedWriter, begin: str | None, chunk: torch.Tensor, indices: torch.Tensor) -> None:
    if begin is not None:
        writer.begin(begin)
    writer.append(_as_bytes(chunk.index_select(1, indices)))


def _append_computed(writer: ShardedWriter, begin: str | None, compute: Callable[[], torch.Tensor]) -> None:
    """Compute a chunk's output on the worker thread (a refit's matrix product), then write it."""
    if begin is not None:
        writer.begin(begin)
    writer.append(_as_bytes(compute()))


def _append_rows(writer: ShardedWriter, begin: str | None, chunk: torch.Tensor, indices: torch.Tensor) -> None:
    """Write the chunk's rows at `indices` (ascending) straight from the chunk: runs of consecutive rows go
    out as one slice each (writev), with no gathered copy in between."""
    if begin is not None:
        writer.begin(begin)
    if indices.numel() == 0:
        return
    raw = _as_bytes(chunk)
    row_bytes = raw.nbytes // chunk.shape[0]
    breaks = torch.nonzero(indices[1:] - indices[:-1] != 1).flatten() + 1
    starts = torch.cat([indices[:1], indices[breaks]]).tolist()
    stops = (torch.cat([indices[breaks - 1], indices[-1:]]) + 1).tolist()
    writer.append_many([raw[a * row_bytes : b * row_bytes] for a, b in zip(starts, stops)])
