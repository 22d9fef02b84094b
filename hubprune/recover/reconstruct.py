"""Local reconstruction: each pruned MLP trained, layer by layer in order, to give what the unpruned MLP gives on
the member's own inputs.

After pruning (and the refit) a member's MLP at layer l is trained with gradient steps, all three of its tensors
(gate, up, down at the member's width), to minimise

    sum_t || MLP_dense(x~(t)) - MLP_member(x~(t)) ||^2 / sum_t || MLP_dense(x~(t)) ||^2

where x~(t) is the MLP's input at calibration token t in the member itself, whose layers below are already
reconstructed (the sequential scheme of the refit's `sequential`, with gradient steps instead of a closed form, so
the gate and up projections move too). The unpruned MLP's weights are the base model's; only the member's MLP
tensors change, and the member stays a plain checkpoint of the same names, shapes and dtypes.

Data: the calibration windows the family read (`--calibration`, `--calibration-tokens`), every third one held out
as for the refit. Each layer runs Adam for its planned steps on batches of tokens drawn from the fitting windows
(seeded); every CHECK_EVERY steps the held-out windows' relative error is measured, and the layer keeps the
weights that scored best on them (the weights it started from included: a layer is never made worse on held-out
windows). The step's state is one file per layer done, so a stopped build resumes at the next layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hubprune.device import resolve_device
from hubprune.errors import CriterionError
from hubprune.fields import setting
from hubprune.model_inputs import loaded_modules
from hubprune.progress import Progress, report
from hubprune.recover.distill import DistillRun, mlp_parameters, write_back
from hubprune.recover.layer_calls import decoder_layers, input_of, record_calls, run_layer
from hubprune.recover.refit import HELD_OUT_EVERY, is_held_out

if TYPE_CHECKING:
    from hubprune.recover.distill_data import Teacher
    from hubprune.recover.settings import RecoverySettings

DEFAULT_TOKENS = 32_768  # per layer: 64 steps of DEFAULT_BATCH tokens
DEFAULT_BATCH = 512
DEFAULT_LEARNING_RATE = 1e-4
CHECK_EVERY = 16  # steps between measurements on the held-out windows
STATE = "reconstruct"
OBJECTIVE = (
    "sum_t ||MLP_dense(x~) - MLP_member(x~)||^2 / sum_t ||MLP_dense(x~)||^2 per layer, x~ the MLP's input in the "
    "member whose layers below are already reconstructed; layers in order"
)
TRAINED = "the gate, up and down projections of each layer, one layer at a time; nothing else"


@dataclass(frozen=True)
class ReconstructSettings:
    tokens: int = setting(
        DEFAULT_TOKENS,
        f"Local reconstruction's budget per layer in training tokens (steps of {DEFAULT_BATCH} calibration tokens).",
        flag="--reconstruct-tokens",
        minimum=1,
    )
    steps: int | None = setting(
        None,
        "Stop each layer's reconstruction after N steps, if that comes before the token budget.",
        flag="--reconstruct-steps",
        minimum=1,
    )
    learning_rate: float = setting(
        DEFAULT_LEARNING_RATE, "Local reconstruction's learning rate (Adam, constant).", flag="--reconstruct-lr"
    )
    batch: int = DEFAULT_BATCH  # tokens per step
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens", "batch"):
            if getattr(self, name) < 1:
                raise CriterionError(f"reconstruction {name} must be at least 1, not {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise CriterionError(f"reconstruction steps must be at least 1, not {self.steps}: leave it out for no cap")
        if not self.learning_rate > 0:
            raise CriterionError(f"the reconstruction learning rate must be positive, not {self.learning_rate}")

    @property
    def planned_steps(self) -> int:
        """Steps per layer: the token budget in whole batches (at least one), capped by `steps`."""
        by_tokens = max(1, self.tokens // self.batch)
        return min(by_tokens, self.steps) if self.steps else by_tokens

    def identity(self) -> dict[str, Any]:
        return asdict(self)


def check_windows(count: int) -> None:
    """Refuse a calibration of fewer windows than one to hold out needs."""
    if count < HELD_OUT_EVERY:
        raise CriterionError(
            f"local reconstruction needs at least {HELD_OUT_EVERY} calibration windows (every third held out), and "
            f"the calibration gives {count}: raise `calibration_tokens`"
        )


@dataclass(frozen=True)
class _Layer:
    """One layer's MLP in the member and in the unpruned model, and the member's trained tensors by name."""

    block: torch.nn.Module  # the member's decoder layer
    mlp: torch.nn.Module
    dense_mlp: torch.nn.Module
    tensors: dict[str, torch.nn.Parameter]  # checkpoint name -> the member's parameter


def reconstruct(
    student: Any,
    teacher: Any,
    windows: tuple[torch.Tensor, ...],
    settings: ReconstructSettings,
    roles: dict[str, tuple[int, str]],
    run: DistillRun,
    identity: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train `student`'s MLPs in place, layer by layer (see the module's docstring); its record and the trained
    tensors by checkpoint name (float32, on the CPU). With `run.state`, each layer done is saved there, and a layer
    saved by a run of the same `identity`, windows and starting MLP tensors is loaded instead of trained again."""
    began = time.perf_counter()
    check_windows(len(windows))
    device = torch.device(resolve_device(run.device, CriterionError))
    student.to(device).eval()
    teacher.to(device).eval()
    layers = _layers(student, teacher, roles)
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    member, calls = record_calls(student, {layer: part.block for layer, part in layers.items()}, windows)
    # a saved layer is reused only by a run that starts from the same member on the same windows
    starts = {name: p for part in layers.values() for name, p in part.tensors.items()}
    key = json.dumps({**(identity or {}), "windows": _sha256(windows), "start": _sha256(starts)}, sort_keys=True)
    records: dict[str, dict[str, Any]] = {}
    for number, layer in enumerate(sorted(layers)):
        part = layers[layer]
        saved = _load_layer(run.state, layer, key)
        if saved is None:
            inputs = [input_of(part.mlp, part.block, member[i], calls[i][layer]) for i in range(len(windows))]
            record = _train_layer(part, inputs, settings, layer)
            _save_layer(run.state, layer, key, part.tensors, record)
        else:
            tensors, record = saved
            with torch.no_grad():
                for name, parameter in part.tensors.items():
                    parameter.copy_(tensors[name])
        records[str(layer)] = record
        with torch.no_grad():
            member = [run_layer(part.block, member[i], calls[i][layer]) for i in range(len(windows))]
        report(
            run.on_progress,
            Progress(
                "reconstruct",
                f"[reconstruct] {run.item} layer {layer} ({number + 1}/{len(layers)}): MLP error on held-out "
                f"windows {record['held_out_error']['before']:.4f} -> {record['held_out_error']['after']:.4f}"
                + (" (saved by a stopped run)" if "resumed" in record else ""),
                run.item,
                number + 1,
                len(layers),
                "layers",
            ),
        )
    seconds = time.perf_counter() - began
    record = _record(settings, records, windows, device.type, seconds)
    tensors = {name: p.detach().float().cpu() for part in layers.values() for name, p in part.tensors.items()}
    return record, tensors


def _record(
    settings: ReconstructSettings,
    layers: dict[str, dict[str, Any]],
    windows: tuple[torch.Tensor, ...],
    device: str,
    seconds: float,
) -> dict[str, Any]:
    """What hubprune.json keeps of one member's reconstruction; `seconds` this run's, to which the layers an earlier,
    stopped run trained add theirs."""
    befores = [r["held_out_error"]["before"] for r in layers.values()]
    afters = [r["held_out_error"]["after"] for r in layers.values()]
    held_out_tokens = sum(w.numel() for w in _split(windows)[1])
    return {
        "method": "reconstruct",
        "objective": OBJECTIVE,
        "trained": TRAINED,
        "optimizer": f"Adam, learning rate {settings.learning_rate:g}, constant; {settings.batch} tokens a step, "
        f"drawn from the fitting windows with seed {settings.seed}; the weights of the best held-out check kept",
        "steps_per_layer": settings.planned_steps,
        "tokens_per_layer": settings.planned_steps * settings.batch,
        "calibration_tokens": {"fit": sum(w.numel() for w in windows) - held_out_tokens, "held_out": held_out_tokens},
        "held_out_error": {
            "before": sum(befores) / len(befores),
            "after": sum(afters) / len(afters),
            "meaning": "mean over layers of the relative error of the MLP's output on the held-out calibration "
            "windows, on the member's own inputs: sum ||MLP_dense(x~) - MLP_member(x~)||^2 / sum ||MLP_dense(x~)||^2",
        },
        "layers": layers,
        "device": device,
        "seconds": round(seconds + sum(r["seconds"] for r in layers.values() if "resumed" in r), 1),
    }


def _sha256(tensors: tuple[torch.Tensor, ...] | dict[str, torch.Tensor]) -> str:
    found = hashlib.sha256()
    for name, tensor in sorted(tensors.items()) if isinstance(tensors, dict) else enumerate(tensors):
        found.update(str(name).encode())
        found.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())  # any dtype
    return found.hexdigest()


def _layers(student: Any, teacher: Any, roles: dict[str, tuple[int, str]]) -> dict[int, _Layer]:
    """Each layer's MLP (the module holding its tensors: 'model.layers.3.mlp' for 'model.layers.3.mlp.up_proj.weight')
    in the member and in the base, the member's decoder layer and its trained parameters."""
    tensors = mlp_parameters(student, roles)
    parents: dict[int, set[str]] = {}
    for name, (layer, _) in roles.items():
        parents.setdefault(layer, set()).add(name.rsplit(".", 2)[0])
    if any(len(found) != 1 for found in parents.values()):
        raise CriterionError("local reconstruction cannot find one MLP module per layer here: recover with refit")
    mlp_names = {layer: found.pop() for layer, found in parents.items()}
    mlps, dense = loaded_modules(student, mlp_names), loaded_modules(teacher, mlp_names)
    blocks = decoder_layers(student, mlps, "local reconstruction")
    return {
        layer: _Layer(
            blocks[layer], mlps[layer], dense[layer], {n: p for n, p in tensors.items() if roles[n][0] == layer}
        )
        for layer in mlp_names
    }


def _split(per_window: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The windows' items to fit on, and those held out."""
    fit: list[torch.Tensor] = []
    held_out: list[torch.Tensor] = []
    for i, item in enumerate(per_window):
        (held_out if is_held_out(i) else fit).append(item)
    return fit, held_out


def _relative_error(mlp: torch.nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        error = sum(float((mlp(x) - y).pow(2).sum()) for x, y in zip(inputs, targets, strict=True))
    return error / sum(float(y.pow(2).sum()) for y in targets)


def _train_layer(part: _Layer, inputs: list[torch.Tensor], settings: ReconstructSettings, layer: int) -> dict[str, Any]:
    """Adam on the layer's MLP tensors toward the unpruned MLP on the same inputs; the best held-out weights kept."""
    started = time.perf_counter()
    with torch.no_grad():
        targets = [part.dense_mlp(x) for x in inputs]
    (fit_x, held_x), (fit_y, held_y) = _split(inputs), _split(targets)
    fit_x, fit_y = torch.cat(fit_x), torch.cat(fit_y)
    scale = float(fit_y.pow(2).sum(-1).mean())  # the mean squared norm of a target: the loss is relative
    parameters = list(part.tensors.values())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + layer)
    before = best = _relative_error(part.mlp, held_x, held_y)
    best_weights = [p.detach().clone() for p in parameters]
    best_step = 0
    steps = settings.planned_steps
    try:
        for step in range(1, steps + 1):
            rows = torch.randint(len(fit_x), (min(settings.batch, len(fit_x)),), generator=generator)
            x, y = fit_x[rows], fit_y[rows]
            loss = (part.mlp(x) - y).pow(2).sum(-1).mean() / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % CHECK_EVERY == 0 or step == steps:
                error = _relative_error(part.mlp, held_x, held_y)
                if not math.isfinite(error):
                    raise CriterionError(
                        f"local reconstruction diverged at layer {layer} (held-out error {error}): lower "
                        f"`reconstruct_lr` (now {settings.learning_rate:g})"
                    )
                if error < best:
                    best, best_step = error, step
                    best_weights = [p.detach().clone() for p in parameters]
    finally:
        for parameter in parameters:
            parameter.requires_grad_(False)
    with torch.no_grad():
        for parameter, weights in zip(parameters, best_weights, strict=True):
            parameter.copy_(weights)
    return {
        "held_out_error": {"before": before, "after": best},
        "best_step": best_step,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _layer_file(state: Path, layer: int) -> Path:
    return state / STATE / f"layer-{layer}.safetensors"


def _save_layer(
    state: Path | None, layer: int, key: str, tensors: dict[str, torch.nn.Parameter], record: dict[str, Any]
) -> None:
    """Keep one layer's trained tensors and record, written beside and renamed: a stop leaves whole files."""
    if state is None:
        return
    from safetensors.torch import save_file

    path = _layer_file(state, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    found = {name: p.detach().cpu().contiguous() for name, p in tensors.items()}
    save_file(found, str(temporary), metadata={"identity": key, "record": json.dumps(record)})
    temporary.replace(path)


def _load_layer(state: Path | None, layer: int, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """A layer saved by a run of the same identity, else None."""
    if state is None or not _layer_file(state, layer).exists():
        return None
    from safetensors import safe_open

    with safe_open(_layer_file(state, layer), framework="pt") as f:
        metadata = f.metadata()
        if metadata.get("identity") != key:
            return None
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return tensors, {**json.loads(metadata["record"]), "resumed": True}


# --- the registry's member step (methods.py) ---------------------------------------------------------------------


def describe(settings: RecoverySettings) -> str:
    """The line said before it runs on a member."""
    found = settings.reconstruct
    return f"{found.planned_steps} steps of {found.batch} tokens per layer"


def _identity(settings: RecoverySettings, run: DistillRun) -> dict[str, Any]:
    return {"settings": settings.reconstruct.identity(), "member": run.member, "steps": list(settings.steps)}


def recover_folder(
    folder: Path, teacher: Teacher, settings: RecoverySettings, roles: dict[str, tuple[int, str]], run: DistillRun
) -> dict[str, Any]:
    """Reconstruct the member in `folder` and write its MLP tensors back in place."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    record, tensors = reconstruct(
        student, teacher.model, teacher.windows, settings.reconstruct, roles, run, _identity(settings, run)
    )
    write_back(folder, tensors)
    teacher.model.to("cpu")  # off the GPU: a launched distillation may need it next
    return record


def recover_model(
    student: Any, teacher: Teacher, settings: RecoverySettings, roles: dict[str, tuple[int, str]], run: DistillRun
) -> dict[str, Any]:
    """Reconstruct `student`, a pruned model in memory, in place."""
    return reconstruct(student, teacher.model, teacher.windows, settings.reconstruct, roles, run)[0]
