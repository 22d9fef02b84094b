"""Activations from calibration data, for the data-aware criteria (activation, hybrid, obs, obs-fisher) and for recovery.

The data (CalibrationSettings.text): by default the second half of the text hubprune ships; `generated`, sequences
the base model samples itself (generated.py), kept in the cache; or a text file of the user's.

The one stage besides GGUF conversion that loads the model: the activations of down_proj's input need a
forward pass. It runs once, before the streaming prune pass, over at most `max_tokens` tokens of the text in
windows of `window` tokens, and keeps per layer two float32 vectors of the MLP width: the mean absolute
value and the L2 norm over all tokens of each neuron's down_proj input. Recovery (recovery.py) also needs each
layer's Gram matrix of that input, n x n: one over the fitting windows and one over every third window, held out
to choose the regulariser.

How the model is loaded (LoadSettings): by default whole, in float32, on the CPU. With a memory cap, in the
checkpoint's own dtype through accelerate's big-model loading: the modules that do not fit the cap stay on disk
and each is read from the checkpoint's safetensors just before it runs, so a model larger than memory calibrates;
the Gram matrices then live in files (see GramFiles) rather than in memory. docs/calibration.md has the figures.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubprune.device import resolve_device
from hubprune.errors import CriterionError
from hubprune.fields import setting
from hubprune.generated import SELF_GENERATED, cache_name, generated, start_tokens
from hubprune.model_inputs import loaded_modules, special_prefix, token_ids, windows
from hubprune.progress import ProgressCallback
from hubprune.pruning.fisher import FISHER_SEED, output_fishers
from hubprune.recover.refit import HELD_OUT_EVERY, Grams, is_held_out
from hubprune.texts import (
    SHIPPED_CALIBRATION_START,
    SHIPPED_TEXT,
    offline_suite_paragraphs,
    paragraphs,
    read_text,
    shared_ngrams,
)

DEFAULT_TOKENS = 4096
DEFAULT_WINDOW = 512
# A calibration file of fewer words is refused as soon as it is read, before any model is loaded or anything is
# written: a text that short calibrates nothing. The 2 tokens calibration needs at the least (one read, one
# predicted) are checked again once the tokenizer has read the text (collect_activations), since a tokenizer may
# give fewer tokens than words.
MIN_WORDS = 2


# Fewer calibration tokens than this estimate no statistic worth ranking neurons or refitting weights on: refused
# (a few thousand are usual).
MIN_CALIBRATION_TOKENS = 64


GENERATED = "generated"  # sequences the base model samples itself (generated.py)
SHIPPED = "shipped"  # the second half of the text shipped with hubprune
MIXED = "mixed"  # the shipped half first, then generated sequences up to the calibration's tokens
CALIBRATION_SEED = 0  # of the generated sequences: one family, one calibration, on every machine


@dataclass(frozen=True)
class CalibrationSettings:
    # shipped by default: on SmolLM2 at 20 % removed, MAW + refit calibrated on it scores 2.69x / 2.46x / 1.93x the
    # base on news / fiction / the Python FAQ, against 3.80x / 3.56x / 3.07x calibrated on generated text
    # (bench/recovery.py, docs/recovery.md): English prose of any domain beat the small base's own samples
    text: Path | str = setting(
        SHIPPED,
        f"Calibration data of the data-aware criteria and the refits: {SHIPPED} (part of the English text hubprune "
        f"ships), {GENERATED} (sequences the base model samples itself, cached), {MIXED} (the shipped part, about "
        "6,000 tokens, then generated sequences up to --calibration-tokens), or a UTF-8 text FILE.",
        flag="--calibration",
        parse="calibration-file",
    )  # GENERATED, SHIPPED, MIXED, or the path of a UTF-8 text file
    max_tokens: int = setting(
        DEFAULT_TOKENS,
        f"Tokens of the calibration text read (at least {MIN_CALIBRATION_TOKENS}).",
        flag="--calibration-tokens",
        minimum=MIN_CALIBRATION_TOKENS,
    )
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_CALIBRATION_TOKENS or self.window < 2:
            raise CriterionError(
                f"calibration reads at least {MIN_CALIBRATION_TOKENS} tokens in windows of at least 2, not "
                f"{self.max_tokens} in windows of {self.window}: raise `calibration_tokens`"
            )


@dataclass(frozen=True)
class LoadSettings:
    """Where and how calibration loads the model.

    The default (cpu, no cap) loads the whole model in float32, as hubprune always has. Any other setting loads it
    in the checkpoint's own dtype (its config's `dtype`; the statistics are still summed in float32), since float32
    doubles the bytes of a bf16 model that is already too large. With `max_memory`, the model goes through
    accelerate's device map: modules up to `max_memory` bytes stay resident on `device`, the rest stay on disk in
    the checkpoint's own safetensors (nothing is copied) and are read just before each runs; and the Gram matrices
    are summed in files, not in memory. `max_memory` bounds the resident weights only: the process also holds one
    onloaded module, a window's activations and the file pages being written, which the kernel can write back.
    """

    device: str = "cpu"  # cpu, cuda, cuda:N or auto; on a GPU the statistics are summed there, then moved to CPU
    max_memory: int | None = None  # bytes of resident weights on `device`; None: no cap, the whole model resident
    scratch: Path | None = None  # where the temporary folder is made (None: the system's); on a disk, not tmpfs


@dataclass(frozen=True)
class ActivationStats:
    """Per layer, over every calibration token t, of each neuron i's down_proj input h_i(t)."""

    abs_mean: dict[int, torch.Tensor]  # mean_t |h_i(t)|
    l2: dict[int, torch.Tensor]  # sqrt(sum_t h_i(t)^2)
    record: dict[str, Any]  # what the calibration read: source, sha256, tokens; kept in hubprune.json
    grams: Grams | None = None  # only when recovery asked for them
    inputs: tuple[torch.Tensor, ...] = ()  # the windows the model ran, for the steps that run it again
    fishers: dict[int, torch.Tensor] | None = None  # each layer's output Fisher (fisher.py), for obs-fisher
    text: str = ""  # the calibration text (generated sequences decoded), to look for overlaps with other texts


def calibration_text(settings: CalibrationSettings) -> tuple[str, str]:
    """The text and a description of where it came from, for a text (not generated) calibration. A file that
    cannot be read as UTF-8 text, or holds fewer than MIN_WORDS words, is refused here, before anything is loaded
    or written. For MIXED, its shipped part (the rest is generated by the model, calibration_windows)."""
    assert settings.text != GENERATED, "generated calibration data is made by the model (calibration_windows)"
    if settings.text in (SHIPPED, MIXED):
        found = paragraphs()
        return "\n\n".join(found[SHIPPED_CALIBRATION_START:]), (
            f"{SHIPPED_TEXT}, paragraphs {SHIPPED_CALIBRATION_START + 1}-{len(found)}"
        )
    text = read_text(settings.text, "calibration text")
    words = len(text.split())
    if words < MIN_WORDS:
        raise CriterionError(
            f"the calibration text {settings.text} holds {words} word(s), too short to calibrate on (it needs at "
            f"least {MIN_WORDS}; a few thousand tokens are usual): give a longer text"
        )
    return text, Path(settings.text).name  # the name only: it is published


def calibrate(
    folder: Path,
    down_modules: dict[int, str],
    settings: CalibrationSettings,
    *,
    grams: bool = False,
    announce: Callable[[], None] | None = None,
    load: LoadSettings = LoadSettings(),
    source: str = "",
    keep_inputs: bool = False,
    fishers: bool = False,
    on_progress: ProgressCallback | None = None,
) -> ActivationStats:
    """Load the model in `folder` as `load` says (by default whole, float32, CPU) and collect each layer's
    down_proj input statistics over the calibration data. `down_modules` maps each layer to its down_proj module's
    name; `source`, an identity of the base, keys the cache of generated data. A text and the load settings are
    checked first, with the tokenizer alone; `announce` is called once they pass, before the model loads. With
    `keep_inputs`, the windows the model ran are kept in the result; with `fishers`, each layer's output Fisher
    (which needs the whole model in memory: refused with `max_memory`). Any temporary folder is removed before this
    returns, also on error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_load(load)
    if fishers and load.max_memory is not None:
        raise CriterionError(
            "the output Fisher (criterion obs-fisher) back-propagates through the whole model, which `max_memory` "
            "keeps partly on disk: leave out `max_memory`, or choose criterion obs"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if settings.text != GENERATED:
        calibration_windows(tokenizer, settings, grams=grams or keep_inputs)
    if announce is not None:
        announce()
    run = functools.partial(
        collect_activations,
        grams=grams,
        source=source,
        keep_inputs=keep_inputs,
        fishers=fishers,
        on_progress=on_progress,
    )
    if device == "cpu" and load.max_memory is None:  # what hubprune always did: its results stay as they were
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return run(model, tokenizer, down_modules, settings)
    with scratch_folder(load.scratch) as temp:
        model = load_model(folder, device, load.max_memory, temp / "offload")
        files = temp / "grams" if load.max_memory is not None else None
        stats = run(model, tokenizer, down_modules, settings, device=device, files=files)
        del model  # its hooks read the offload folder until here
    return stats


def check_load(load: LoadSettings) -> str:
    """The device calibration runs on (see resolve_device), or CriterionError for settings it cannot honour."""
    device = resolve_device(load.device, CriterionError)
    if load.max_memory is not None and load.max_memory < 1:
        raise CriterionError(f"max_memory must be a positive number of bytes, not {load.max_memory}: raise it")
    if load.scratch is not None and not Path(load.scratch).is_dir():
        raise CriterionError(f"the scratch folder {load.scratch} is not a folder: create it or give another")
    return device


@contextmanager
def scratch_folder(parent: Path | None) -> Iterator[Path]:
    """A new temporary folder under `parent` (None: the system's temporary folder), removed with all it holds on
    exit. Calibration never writes into a family or source folder: the family may be published."""
    folder = Path(tempfile.mkdtemp(prefix="hubprune-calibrate-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_model(folder: Path, device: str, max_memory: int | None, offload: Path) -> Any:
    """The model in its checkpoint's dtype on `device`; with `max_memory` (bytes), dispatched by accelerate so that
    at most that much of its weights is resident there and the rest is read from disk as each module runs. A
    safetensors checkpoint's offloaded weights are read where they lie; `offload` receives only those that loading
    converts (e.g. fused experts), so it must outlive the model's use."""
    from transformers import AutoModelForCausalLM

    if max_memory is None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype="auto", device_map={"": device}).eval()
    where: int | str = "cpu" if device == "cpu" else (torch.device(device).index or 0)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype="auto", device_map="auto", max_memory={where: max_memory}, offload_folder=str(offload)
    )
    return model.eval()


def calibration_windows(
    tokenizer: Any,
    settings: CalibrationSettings,
    *,
    grams: bool = False,
    model: Any = None,
    source: str = "",
    on_progress: ProgressCallback | None = None,
) -> tuple[list[torch.Tensor], str, str]:
    """The model inputs calibration runs (see windows), the text and its source; refuses a text too short for
    them, and with `grams` (or kept windows, which the steps that run the model hold some of out too) one that gives
    too few windows to hold some out. Generated data needs the `model`."""
    if settings.text == GENERATED:
        return generated_windows(model, tokenizer, settings, source, on_progress)
    if settings.text == MIXED:
        return mixed_windows(tokenizer, settings, grams, model, source, on_progress)
    text, label = calibration_text(settings)
    ids = token_ids(tokenizer, text, settings.max_tokens)
    if ids.numel() < MIN_CALIBRATION_TOKENS:
        raise CriterionError(
            f"the calibration text {label} gives {ids.numel()} tokens; calibration needs at least "
            f"{MIN_CALIBRATION_TOKENS}: give a longer text"
        )
    inputs = windows(ids, settings.window, special_prefix(tokenizer))
    if grams and len(inputs) < HELD_OUT_EVERY:
        raise CriterionError(
            f"recovery (and the obs criteria) hold out every {HELD_OUT_EVERY}rd calibration window (to choose a "
            f"regulariser or weights), and {label} gives {len(inputs)} window(s) of {settings.window} tokens: give a "
            "longer text or more `calibration_tokens`, or leave out what needs them (`recover` none; a criterion other "
            "than obs)"
        )
    return inputs, text, label


def mixed_windows(
    tokenizer: Any,
    settings: CalibrationSettings,
    grams: bool,
    model: Any,
    source: str,
    on_progress: ProgressCallback | None,
) -> tuple[list[torch.Tensor], str, str]:
    """The shipped part's windows, then, for the tokens `max_tokens` leaves (none where fewer than
    MIN_CALIBRATION_TOKENS are left), sequences the base samples itself, as GENERATED makes them; none without a
    `model`, where only the text is checked. Every third window is held out across both, so both kinds of text are
    among the held-out windows."""
    shipped, text, label = calibration_windows(tokenizer, dataclasses.replace(settings, text=SHIPPED), grams=grams)
    left = settings.max_tokens - len(token_ids(tokenizer, text, settings.max_tokens))
    if left < MIN_CALIBRATION_TOKENS or model is None:
        return shipped, text, label
    rest = dataclasses.replace(settings, text=GENERATED, max_tokens=left)
    sampled, sampled_text, sampled_label = generated_windows(model, tokenizer, rest, source, on_progress)
    return [*shipped, *sampled], f"{text}\n\n{sampled_text}", f"{label}, then {sampled_label}"


def generated_windows(
    model: Any, tokenizer: Any, settings: CalibrationSettings, source: str, on_progress: ProgressCallback | None
) -> tuple[list[torch.Tensor], str, str]:
    """About `max_tokens` tokens the base samples itself, in sequences of `window` tokens (each from the start
    token), at least HELD_OUT_EVERY of them so that recovery can hold some out; cached under cache_root() by the
    base's identity `source`."""
    from hubprune.pruning.gguf import cache_root

    count = math.ceil(settings.max_tokens / settings.window)
    length = settings.window
    if count < HELD_OUT_EVERY:
        count, length = HELD_OUT_EVERY, math.ceil(settings.max_tokens / HELD_OUT_EVERY)
    cache = cache_root() / "generated" / cache_name(source, count, length, CALIBRATION_SEED) if source else None
    sequences = generated(
        model, tokenizer, count, length, CALIBRATION_SEED, source=source, cache=cache, on_progress=on_progress,
        stage="prune",
    )  # fmt: skip
    first = start_tokens(tokenizer)
    text = "\n\n".join(tokenizer.batch_decode(sequences[:, len(first) :]))
    label = f"{SELF_GENERATED}; seed {CALIBRATION_SEED}; start token {' '.join(tokenizer.convert_ids_to_tokens(list(first)))}"
    return list(sequences), text, label


def collect_activations(
    model: Any,
    tokenizer: Any,
    down_modules: dict[int, str],
    settings: CalibrationSettings,
    *,
    grams: bool = False,
    device: str = "cpu",
    files: Path | None = None,
    source: str = "",
    keep_inputs: bool = False,
    fishers: bool = False,
    on_progress: ProgressCallback | None = None,
) -> ActivationStats:
    """Run a loaded model over the calibration data with hooks on each layer's down_proj input; with `grams`,
    also each layer's Gram matrices (see Grams), summed in files under the folder `files` when it is given, else
    in memory; with `fishers`, each layer's output Fisher on the same windows (fisher.py). Sums are float32 on the
    device the activations are on, and end on the CPU."""
    inputs, text, label = calibration_windows(
        tokenizer, settings, grams=grams or keep_inputs, model=model, source=source, on_progress=on_progress
    )
    prefix = special_prefix(tokenizer)
    abs_sum: dict[int, torch.Tensor] = {}
    sq_sum: dict[int, torch.Tensor] = {}
    sums = GramFiles(files) if files is not None else GramSums()
    held_out = [False]  # whether the window running now is held out

    def hook(layer: int):  # noqa: ANN202 - a forward pre-hook
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            h = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            abs_sum[layer] = abs_sum.get(layer, 0) + h.abs().sum(dim=0)
            sq_sum[layer] = sq_sum.get(layer, 0) + h.square().sum(dim=0)
            if grams:
                sums.add(held_out[0], layer, h)

        return record

    modules = loaded_modules(model, down_modules)
    handles = []
    counts = [0, 0]  # tokens in the fitting and the held-out windows
    try:
        for layer, module in modules.items():
            handles.append(module.register_forward_pre_hook(hook(layer)))
        with torch.no_grad():
            for i, window in enumerate(inputs):
                held_out[0] = grams and is_held_out(i)
                model(window[None].to(device), **last_logit_only(model))
                counts[held_out[0]] += window.numel()
    finally:
        for handle in handles:
            handle.remove()
    found_fishers = None
    if fishers:
        found_fishers = output_fishers(model, inputs, modules, device=device)
    tokens = sum(counts)
    record = {
        "source": label,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokens": tokens,
        "window": settings.window,
        "special_prefix": tokenizer.convert_ids_to_tokens(list(prefix)),  # what began every window
        # the offline suite scores the shipped texts: a calibration that read part of them flatters its figures
        "offline_suite_paragraphs_sharing_13_words": shared_ngrams(text, offline_suite_paragraphs()),
    }
    if settings.text == GENERATED:
        record |= {"sequences": len(inputs), "seq_len": int(inputs[0].numel())}
    if fishers:
        record["output_fisher"] = f"every window, one next token drawn per position from the model, seed {FISHER_SEED}"
    if files is not None or device != "cpu" or model.dtype != torch.float32:  # not the default load: say how
        record |= {"dtype": str(model.dtype).removeprefix("torch."), "device": torch.device(device).type}
    return ActivationStats(
        abs_mean={layer: (total / tokens).cpu() for layer, total in abs_sum.items()},
        l2={layer: total.sqrt().cpu() for layer, total in sq_sum.items()},
        record=record,
        grams=Grams(*sums.result(), counts[0], counts[1]) if grams else None,
        inputs=tuple(inputs) if keep_inputs else (),
        text=text,
        fishers=found_fishers,
    )


def last_logit_only(model: Any) -> dict[str, int]:
    """Ask the model for the last position's logits only, where it can: calibration reads no logits, and a window's
    logits over a large vocabulary (512 x 128,256 floats for Llama 3) cost more memory than one layer's activations."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


class GramSums:
    """Each layer's Gram matrices summed in memory, on the device the activations are on (the default load, or a
    GPU: there they move to the CPU at the end)."""

    def __init__(self) -> None:
        self.sums: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] = ({}, {})

    def add(self, held_out: bool, layer: int, h: torch.Tensor) -> None:
        into = self.sums[held_out]
        into[layer] = into.get(layer, 0) + h.T @ h

    def result(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        return tuple({layer: gram.cpu() for layer, gram in into.items()} for into in self.sums)  # type: ignore[return-value]


class GramFiles:
    """Each layer's Gram matrices summed in float32 files under `folder`, one per layer and window set, so that
    they need no memory of their own: 2 x layers x n^2 floats is 15 GB for Llama-3.2-3B, more than its bf16 weights.
    A file is mapped only while one window adds to it; its pages are then the kernel's to write back and drop. On
    a GPU the window's product is computed there and added on the CPU."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.widths: dict[tuple[bool, int], int] = {}

    def add(self, held_out: bool, layer: int, h: torch.Tensor) -> None:
        width = h.shape[1]
        path = self._path(held_out, layer)
        if (held_out, layer) not in self.widths:
            with open(path, "wb") as file:
                file.truncate(width * width * 4)  # a sparse file of zeros: no disk used until written
            self.widths[held_out, layer] = width
        gram = _map(path, width)
        if h.is_cuda:
            gram += (h.T @ h).cpu()
        else:
            gram.addmm_(h.T, h)
        del gram  # unmapped: the written pages stay in the page cache until the kernel writes them back

    def result(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Every sum as a tensor mapping its file, whose name is removed at once: the kernel frees the file when the
        last tensor mapping it is dropped, and the folder can go (see Grams)."""
        found: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] = ({}, {})
        for (held_out, layer), width in sorted(self.widths.items()):
            path = self._path(held_out, layer)
            found[held_out][layer] = _map(path, width)
            path.unlink()
        return found

    def _path(self, held_out: bool, layer: int) -> Path:
        return self.folder / f"{'held-out' if held_out else 'fit'}-{layer}.f32"


def _map(path: Path, width: int) -> torch.Tensor:
    """The width x width float32 matrix in the file `path`, mapped shared: writes go to the file."""
    return torch.from_file(str(path), shared=True, size=width * width, dtype=torch.float32).view(width, width)
