"""What a member is distilled from: the base model (the teacher) and the data, sequences the base model samples
itself or windows of a text the user gives, with one in HELD_OUT_EVERY held out to measure the KL on (see distill.py
for how they are used)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hubprune.device import resolve_device
from hubprune.errors import CriterionError
from hubprune.model_inputs import first_predicted, special_prefix, token_ids, windows
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.texts import paragraphs, read_text, shared_ngrams

if TYPE_CHECKING:
    from hubprune.recover.distill import DistillSettings

HELD_OUT_EVERY = 8
GENERATION_BATCH = 64  # sequences sampled together: a decoding step costs little more for 64 than for 1
SELF_GENERATED = (
    "sequences the base model generated itself (temperature 1, no top-k or top-p, from its start token, end of text "
    "suppressed)"
)


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
    start_tokens = _start_tokens(tokenizer)
    identity = {
        "source": source,
        "start": " ".join(map(str, start_tokens)),
        "seed": str(settings.seed),
        "seq_len": str(settings.seq_len),
        "count": str(needed + held_out),
    }
    sequences = _cached(cache, identity)
    if sequences is None:
        sequences = generate(teacher, tokenizer, needed + held_out, settings.seq_len, settings.seed, on_progress)
        if cache is not None:
            _save_cache(cache, identity, sequences)
    texts = tokenizer.batch_decode(sequences[:, len(start_tokens) :])
    record = {
        "source": f"{SELF_GENERATED}; start token {tokenizer.convert_ids_to_tokens(list(start_tokens))}",
        "sequences": {"train": needed, "held_out": held_out},
        "seq_len": settings.seq_len,
        "seed": settings.seed,
        "sha256": sha256_hex(sequences.numpy().tobytes()),
        "offline_suite_paragraphs_sharing_13_words": shared_ngrams("\n".join(texts), paragraphs()),
    }
    # the samples are independent draws: the last ones are as good a held-out set as any
    return DistillData(sequences[:needed], sequences[needed:], first_predicted(start_tokens), record)


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
        "offline_suite_paragraphs_sharing_13_words": shared_ngrams(text, paragraphs()),
    }
    return DistillData(sequences[~is_held_out], sequences[is_held_out], first_predicted(prefix), record)


def _start_tokens(tokenizer: Any) -> tuple[int, ...]:
    """What a generated sequence starts from: the tokens the tokenizer puts before every text (BOS), else its BOS
    or end-of-text token (SmolLM2 adds none, and a sequence needs one to start from)."""
    prefix = special_prefix(tokenizer)
    if prefix:
        return prefix
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return (int(token),)
    raise CriterionError("the tokenizer has no BOS or end-of-text token to generate from: give --distill-text")


def generate(
    model: Any, tokenizer: Any, count: int, seq_len: int, seed: int, on_progress: ProgressCallback | None = None
) -> torch.Tensor:
    """`count` sequences of `seq_len` tokens sampled from `model` (temperature 1, the whole distribution), each
    from the start tokens; end of text is suppressed so every sequence has its full length. Batch b is sampled
    with seed `seed` + b, so the sequences depend on the seed alone."""
    from transformers import GenerationConfig

    start = torch.tensor(_start_tokens(tokenizer))
    device = next(model.parameters()).device
    new = seq_len - len(start)
    # built from nothing, not from the model's generation_config.json, whose penalties and filters would bend the
    # distribution away from the model's own
    sampling = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    batch = GENERATION_BATCH
    found = []
    began = time.perf_counter()
    for b, first in enumerate(range(0, count, batch)):
        rows = min(batch, count - first)
        inputs = start.repeat(rows, 1).to(device)
        torch.manual_seed(seed + b)
        with torch.no_grad():
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=sampling)
        found.append(out.cpu())
        done = first + rows
        rate = done * seq_len / (time.perf_counter() - began)
        report(
            on_progress,
            Progress("distill", f"generating, {rate:.0f} tok/s", "data", done * seq_len, count * seq_len, "tok"),
        )
    return torch.cat(found)


def _cached(cache: Path | None, identity: dict[str, str]) -> torch.Tensor | None:
    from safetensors import safe_open

    if cache is None or not cache.exists():
        return None
    with safe_open(cache, framework="pt") as f:
        if f.metadata() != {"format": "pt", **identity}:
            return None
        return f.get_tensor("input_ids")


def _save_cache(cache: Path, identity: dict[str, str], sequences: torch.Tensor) -> None:
    from safetensors.torch import save_file

    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_name(f".{cache.name}.tmp")
    metadata = {"format": "pt", **identity}
    save_file({"input_ids": sequences.contiguous()}, str(temporary), metadata=metadata)
    temporary.replace(cache)


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
    """The base model, loaded once (None where launched processes load their own), the data every member of a
    family learns from, and the folder the base is in."""

    model: Any
    data: DistillData
    folder: Path


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
