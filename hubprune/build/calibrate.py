"""Activations from a calibration text, for the data-aware criteria (activation, hybrid) and for recovery.

The one stage besides GGUF conversion that loads the model: the activations of down_proj's input need a
forward pass. It runs once, before the streaming prune pass, over at most `max_tokens` tokens of the text in
windows of `window` tokens, and keeps per layer two float32 vectors of the MLP width: the mean absolute
value and the L2 norm over all tokens of each neuron's down_proj input. Recovery (recovery.py) also needs each
layer's Gram matrix of that input, n x n: one over the fitting windows and one over every third window, held out
to choose the regulariser.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubprune.errors import CriterionError
from hubprune.measure.offline_tasks import TEXT_FILE, paragraphs

DEFAULT_TOKENS = 4096
DEFAULT_WINDOW = 512
SHIPPED_TEXT = f"hubprune/data/texts/{TEXT_FILE}"
# The offline suite scores the first paragraphs of the shipped text; by default calibration reads the
# paragraphs from this one on, which the disjointness check confirms share no 13-word sequence with them.
SHIPPED_CALIBRATION_START = 65
NGRAM = 13  # the span GPT-3's contamination check used; long enough that a shared one is no coincidence
# A calibration file of fewer words is refused as soon as it is read, before any model is loaded or anything is
# written: a text that short calibrates nothing. The 2 tokens calibration needs at the least (one read, one
# predicted) are checked again once the tokenizer has read the text (collect_activations), since a tokenizer may
# give fewer tokens than words.
MIN_WORDS = 2


@dataclass(frozen=True)
class CalibrationSettings:
    text: Path | None = None  # a UTF-8 text file; None: the second half of the text shipped with hubprune
    max_tokens: int = DEFAULT_TOKENS
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True)
class ActivationStats:
    """Per layer, over every calibration token t, of each neuron i's down_proj input h_i(t)."""

    abs_mean: dict[int, torch.Tensor]  # mean_t |h_i(t)|
    l2: dict[int, torch.Tensor]  # sqrt(sum_t h_i(t)^2)
    record: dict[str, Any]  # what the calibration read: source, sha256, tokens; kept in hubprune.json
    grams: Grams | None = None  # only when recovery asked for them


@dataclass(frozen=True)
class Grams:
    """Per layer, G = sum_t h(t) h(t)^T (float32, n x n) of down_proj's input over two disjoint sets of windows:
    `fit` (two windows in three) and `held_out` (every third window), with the tokens each holds."""

    fit: dict[int, torch.Tensor]
    held_out: dict[int, torch.Tensor]
    fit_tokens: int
    held_out_tokens: int


HELD_OUT_EVERY = 3  # window i is held out when i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def calibration_text(settings: CalibrationSettings) -> tuple[str, str]:
    """The text and a description of where it came from. A file that cannot be read as UTF-8 text, or holds
    fewer than MIN_WORDS words, is refused here, before anything is loaded or written."""
    if settings.text is None:
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


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the file `path`, or CriterionError naming the problem (`what`: which text it is)."""
    path = Path(path)
    fix = "give a UTF-8 text file"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CriterionError(f"the {what} {path} does not exist: {fix}") from None
    except IsADirectoryError:
        raise CriterionError(f"the {what} {path} is a folder, not a file: {fix}") from None
    except UnicodeDecodeError as exc:
        raise CriterionError(
            f"the {what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): {fix}"
        ) from None
    except OSError as exc:
        raise CriterionError(f"cannot read the {what} {path} ({exc.strerror or exc}): {fix}") from None


def calibrate(
    folder: Path,
    down_modules: dict[int, str],
    settings: CalibrationSettings,
    *,
    grams: bool = False,
    announce: Callable[[], None] | None = None,
) -> ActivationStats:
    """Load the model in `folder` (float32, CPU) and collect each layer's down_proj input statistics over the
    calibration text. `down_modules` maps each layer to its down_proj module's name. The text is checked first,
    with the tokenizer alone; `announce` is called once it passes, before the model loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    calibration_windows(tokenizer, settings, grams=grams)
    if announce is not None:
        announce()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return collect_activations(model, tokenizer, down_modules, settings, grams=grams)


def calibration_windows(
    tokenizer: Any, settings: CalibrationSettings, *, grams: bool = False
) -> tuple[list[torch.Tensor], str, str]:
    """The model inputs calibration runs (see windows), the text and its source; refuses a text too short for
    them, and with `grams` one that gives too few windows to hold some out."""
    if settings.max_tokens < 2 or settings.window < 2:
        raise CriterionError("calibration needs at least 2 tokens and a window of at least 2: raise the settings")
    text, source = calibration_text(settings)
    ids = token_ids(tokenizer, text, settings.max_tokens)
    if ids.numel() < 2:
        raise CriterionError(f"the calibration text {source} has fewer than 2 tokens: give a longer text")
    inputs = windows(ids, settings.window, special_prefix(tokenizer))
    if grams and len(inputs) < HELD_OUT_EVERY:
        raise CriterionError(
            f"recovery holds out every {HELD_OUT_EVERY}rd calibration window to choose its regulariser, and "
            f"{source} gives {len(inputs)} window(s) of {settings.window} tokens: give a longer text or more "
            "`calibration_tokens`"
        )
    return inputs, text, source


def collect_activations(
    model: Any, tokenizer: Any, down_modules: dict[int, str], settings: CalibrationSettings, *, grams: bool = False
) -> ActivationStats:
    """Run a loaded model over the calibration text with hooks on each layer's down_proj input; with `grams`,
    also each layer's Gram matrices (see Grams)."""
    inputs, text, source = calibration_windows(tokenizer, settings, grams=grams)
    prefix = special_prefix(tokenizer)
    abs_sum: dict[int, torch.Tensor] = {}
    sq_sum: dict[int, torch.Tensor] = {}
    gram_sums: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] = ({}, {})
    held_out = [False]  # whether the window running now is held out

    def hook(layer: int):  # noqa: ANN202 - a forward pre-hook
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            h = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            abs_sum[layer] = abs_sum.get(layer, 0) + h.abs().sum(dim=0)
            sq_sum[layer] = sq_sum.get(layer, 0) + h.square().sum(dim=0)
            if grams:
                into = gram_sums[held_out[0]]
                into[layer] = into.get(layer, 0) + h.T @ h

        return record

    handles = []
    counts = [0, 0]  # tokens in the fitting and the held-out windows
    try:
        for layer, module in loaded_modules(model, down_modules).items():
            handles.append(module.register_forward_pre_hook(hook(layer)))
        with torch.no_grad():
            for i, window in enumerate(inputs):
                held_out[0] = grams and i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
                model(window[None])
                counts[held_out[0]] += window.numel()
    finally:
        for handle in handles:
            handle.remove()
    tokens = sum(counts)
    record = {
        "source": source,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokens": tokens,
        "window": settings.window,
        "special_prefix": tokenizer.convert_ids_to_tokens(list(prefix)),  # what began every window
    }
    return ActivationStats(
        abs_mean={layer: total / tokens for layer, total in abs_sum.items()},
        l2={layer: total.sqrt() for layer, total in sq_sum.items()},
        record=record,
        grams=Grams(gram_sums[0], gram_sums[1], counts[0], counts[1]) if grams else None,
    )


def loaded_modules(model: Any, names: dict[int, str]) -> dict[int, torch.nn.Module]:
    """Each layer's module in the loaded model, from the name of its weight in the checkpoint. A loaded model's
    module names follow its classes and can differ from the tensor names (Gemma 3's multimodal checkpoint stores
    language_model.model.layers.N..., its loaded model names model.language_model.layers.N...), so a name the
    model lacks is found as the one module, outside a vision tower, ending in the same layers.N... path."""
    modules = dict(model.named_modules())
    found = {}
    for layer, name in names.items():
        if name in modules:
            found[layer] = modules[name]
            continue
        tail = name[name.find(f"layers.{layer}.") :]
        matches = [module for path, module in modules.items() if path.endswith(f".{tail}") and "vision" not in path]
        if len(matches) != 1:
            raise CriterionError(
                f"the loaded model has {len(matches) or 'no'} module(s) for {name!r}: this architecture's module names "
                "cannot be matched to its tensor names; use a weight criterion"
            )
        found[layer] = matches[0]
    return found


def token_ids(tokenizer: Any, text: str, max_tokens: int) -> torch.Tensor:
    """The text's own tokens, without the special tokens the tokenizer adds (windows() puts those back per window)."""
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:max_tokens]


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The tokens the tokenizer puts before every text it encodes by default: BOS for Llama 3 and Gemma, none for
    SmolLM2. A model sees them at the start of every input in use, so every window starts with them too (lm-eval
    does the same for each model it scores)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    if len(full) > len(plain) and full[len(full) - len(plain) :] == plain:
        return tuple(full[: len(full) - len(plain)])
    return ()


def windows(ids: torch.Tensor, size: int, prefix: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """The model inputs that cover `ids`: `prefix` (see special_prefix) then the next `size` - len(prefix) tokens,
    so that each input is `size` tokens long; a last input with nothing to predict is dropped."""
    step = size - len(prefix)
    if step < 1:
        raise CriterionError(f"windows of {size} tokens leave no room for the text after {len(prefix)} special tokens")
    head = torch.tensor(prefix, dtype=ids.dtype)
    inputs = (torch.cat([head, ids[s : s + step]]) for s in range(0, ids.numel(), step))
    return [w for w in inputs if w.numel() > first_predicted(prefix)]


def first_predicted(prefix: tuple[int, ...]) -> int:
    """Where a window's scored tokens start: the first text token after a prefix (it is predicted from BOS), else
    the second (the first has no context)."""
    return max(len(prefix), 1)


def shared_ngrams(calibration: str, documents: list[str], n: int = NGRAM) -> int:
    """How many of `documents` share at least one n-word sequence with the calibration text (words compared
    lower-cased, punctuation dropped): 0 means the texts are disjoint for this purpose."""
    seen = _ngrams(calibration, n)
    return sum(1 for doc in documents if _ngrams(doc, n) & seen)


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
