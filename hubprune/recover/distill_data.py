"""What a member is distilled from: the base model (the teacher) and the data, sequences the base model samples
itself or windows of a text the user gives, with one in HELD_OUT_EVERY held out to measure the KL on (see distill.py
for how they are used)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hubprune.device import resolve_device
from hubprune.errors import CriterionError
from hubprune.generated import SELF_GENERATED, generated, start_tokens
from hubprune.model_inputs import first_predicted, special_prefix, token_ids, windows
from hubprune.progress import ProgressCallback
from hubprune.texts import offline_suite_paragraphs, read_text, shared_ngrams

if TYPE_CHECKING:
    from hubprune.recover.distill import DistillSettings

HELD_OUT_EVERY = 8


@dataclass(frozen=True)
class DistillData:
    """Token sequences of one length: `train` to learn from, `held_out` to measure the KL on."""

    train: torch.Tensor  # sequences x seq_len
    held_out: torch.Tensor
    start: int  # the first predicted position (after the start tokens)
    record: dict[str, Any]


def prepare_data(
    teacher: Any,
    tokenizer: Any,
    settings: DistillSettings,
    *,
    cache: Path | None = None,
    source: str = "",
    on_progress: ProgressCallback | None = None,
) -> DistillData:
    """The training and held-out sequences: the text's windows, or sequences the base samples itself (kept in
    `cache`, a .safetensors file, so that every member of a family and a resumed run learn from the same ones; a
    cache made from another `source` (an identity of the base) or other settings is made again)."""
    if settings.text is not None:
        return text_data(tokenizer, settings)
    needed = settings.planned_steps * settings.batch
    held_out = max(1, math.ceil(needed / (HELD_OUT_EVERY - 1)))  # one sequence in HELD_OUT_EVERY
    first = start_tokens(tokenizer)
    sequences = generated(
        teacher, tokenizer, needed + held_out, settings.seq_len, settings.seed, source=source, cache=cache,
        on_progress=on_progress,
    )  # fmt: skip
    texts = tokenizer.batch_decode(sequences[:, len(first) :])
    record = {
        "source": f"{SELF_GENERATED}; start token {tokenizer.convert_ids_to_tokens(list(first))}",
        "sequences": {"train": needed, "held_out": held_out},
        "seq_len": settings.seq_len,
        "seed": settings.seed,
        "sha256": sha256_hex(sequences.numpy().tobytes()),
        "offline_suite_paragraphs_sharing_13_words": shared_ngrams("\n".join(texts), offline_suite_paragraphs()),
    }
    # the samples are independent draws: the last ones are as good a held-out set as any
    return DistillData(sequences[:needed], sequences[needed:], first_predicted(first), record)


def check_text(folder: Path, settings: DistillSettings) -> None:
    """Refuse, with the tokenizer alone and before anything is loaded or written, a distillation text too short to
    give one sequence to learn from and one to hold out."""
    if settings.text is not None:
        from transformers import AutoTokenizer

        text_data(AutoTokenizer.from_pretrained(folder), settings)


def text_data(tokenizer: Any, settings: DistillSettings) -> DistillData:
    """The text's windows of seq_len tokens (each starting with the tokenizer's special prefix); every
    HELD_OUT_EVERY-th held out, spread over the text."""
    text = read_text(settings.text, "distillation text")  # type: ignore[arg-type]
    prefix = special_prefix(tokenizer)
    found = [
        w for w in windows(token_ids(tokenizer, text, 10**12), settings.seq_len, prefix) if len(w) == settings.seq_len
    ]
    if len(found) < 2:
        raise CriterionError(
            f"the distillation text {Path(settings.text).name} gives {len(found)} window(s) of {settings.seq_len} "  # type: ignore[arg-type]
            "tokens; it needs 2 (one to learn from, one held out): give a longer text"
        )
    sequences = torch.stack(found)
    is_held_out = torch.arange(len(found)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    is_held_out[-1] |= not bool(is_held_out.any())
    record = {
        "source": Path(settings.text).name,  # type: ignore[arg-type]  # the name only: it is published
        "sha256": sha256_hex(text.encode("utf-8")),
        "sequences": {"train": int((~is_held_out).sum()), "held_out": int(is_held_out.sum())},
        "seq_len": settings.seq_len,
        "offline_suite_paragraphs_sharing_13_words": shared_ngrams(text, offline_suite_paragraphs()),
    }
    return DistillData(sequences[~is_held_out], sequences[is_held_out], first_predicted(prefix), record)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_data(data: DistillData, path: Path) -> None:
    """Write `data` whole to `path` (.safetensors), for processes that distil from it (distill_launch.py)."""
    from safetensors.torch import save_file

    metadata = {"start": str(data.start), "record": json.dumps(data.record)}
    save_file({"train": data.train.contiguous(), "held_out": data.held_out.contiguous()}, str(path), metadata)


def load_data(path: Path) -> DistillData:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        train, held_out = f.get_tensor("train"), f.get_tensor("held_out")
    return DistillData(train, held_out, int(metadata["start"]), json.loads(metadata["record"]))


@dataclass(frozen=True)
class Teacher:
    """What every member of a family learns from, loaded once: the base model (None where launched processes load
    their own), the distillation's data (None without distillation), the folder the base is in, and the
    calibration windows (for local reconstruction)."""

    model: Any
    data: DistillData | None
    folder: Path
    windows: tuple[torch.Tensor, ...] = ()


def load_teacher(
    folder: Path,
    settings: DistillSettings,
    *,
    cache: Path | None = None,
    source: str = "",
    device: str = "cpu",
    keep_model: bool = True,
    announce: Callable[[], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Teacher:
    """The base model in `folder` (float32) on `device`, and the data (see prepare_data); without `keep_model`, the
    model only makes the data and is let go. A text too short to distil on is refused with the tokenizer alone;
    `announce` is called once it passes, before the model loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = resolve_device(device, CriterionError)
    checked = text_data(tokenizer, settings) if settings.text is not None else None  # refused here if too short
    if announce is not None:
        announce()
    if checked is not None and not keep_model:
        return Teacher(None, checked, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    data = checked or prepare_data(model, tokenizer, settings, cache=cache, source=source, on_progress=on_progress)
    return Teacher(model if keep_model else None, data, folder)
