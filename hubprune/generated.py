"""Text the base model samples itself: the default calibration data and the default distillation data, made by one
generator and kept in one kind of cache.

Why: what a pruned member is fitted on decides what it is good at. A text of one domain (the shipped Jargon File)
fits the member to that domain; sequences the base model samples from its own start token follow the base's own
distribution over everything it learnt. Measured on SmolLM2-135M at 20 % removed (DESIGN.md, docs/recovery.md):
activation + refit calibrated on 8,192 generated tokens is 1.50x the base's perplexity on news text, against
1.65x calibrated on the shipped text.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from hubprune.errors import CriterionError
from hubprune.model_inputs import special_prefix
from hubprune.progress import Progress, ProgressCallback, report

GENERATION_BATCH = 64  # sequences sampled together: a decoding step costs little more for 64 than for 1
SELF_GENERATED = (
    "sequences the base model generated itself (temperature 1, no top-k or top-p, from its start token, end of text "
    "suppressed)"
)


DOCUMENT_SEPARATOR = "<|endoftext|>"  # what GPT-2-style vocabularies (SmolLM, Qwen) put between pretraining documents


def start_tokens(tokenizer: Any) -> tuple[int, ...]:
    """What a generated sequence starts from: the start of a document as the model saw documents in pretraining.
    That is the tokens the tokenizer puts before every text (Llama 3's and Gemma's BOS); else the vocabulary's
    end-of-text token, which separates documents (SmolLM2's BOS is `<|im_start|>`, the start of a chat turn: from
    it the base writes chat, and members fitted on that measured worse on other text, DESIGN.md); else its BOS or
    EOS token."""
    prefix = special_prefix(tokenizer)
    if prefix:
        return prefix
    separator = tokenizer.get_vocab().get(DOCUMENT_SEPARATOR)
    if separator is not None:
        return (int(separator),)
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return (int(token),)
    raise CriterionError(
        "the tokenizer has no BOS or end-of-text token to generate from: give a text (`calibration`, `distill_text`)"
    )


def generate(
    model: Any,
    tokenizer: Any,
    count: int,
    seq_len: int,
    seed: int,
    on_progress: ProgressCallback | None = None,
    stage: str = "distill",
) -> torch.Tensor:
    """`count` sequences of `seq_len` tokens sampled from `model` (temperature 1, the whole distribution), each
    from the start tokens; end of text is suppressed so every sequence has its full length. Batch b is sampled
    with seed `seed` + b, so the sequences depend on the seed alone."""
    from transformers import GenerationConfig

    start = torch.tensor(start_tokens(tokenizer))
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
            Progress(stage, f"generating, {rate:.0f} tok/s", "data", done * seq_len, count * seq_len, "tok"),
        )
    return torch.cat(found)


def generated(
    model: Any,
    tokenizer: Any,
    count: int,
    seq_len: int,
    seed: int,
    *,
    source: str,
    cache: Path | None,
    on_progress: ProgressCallback | None = None,
    stage: str = "distill",
) -> torch.Tensor:
    """As `generate`, kept in the .safetensors file `cache` (None: not kept): a cache made from another `source`
    (an identity of the base) or with other settings is made again. Whoever asks for the same sequences again (a
    resumed build, every member of a family, check-criteria) reads them instead of sampling them again."""
    identity = {
        "source": source,
        "start": " ".join(map(str, start_tokens(tokenizer))),
        "seed": str(seed),
        "seq_len": str(seq_len),
        "count": str(count),
    }
    sequences = _cached(cache, identity)
    if sequences is None:
        sequences = generate(model, tokenizer, count, seq_len, seed, on_progress, stage)
        if cache is not None:
            _save_cache(cache, identity, sequences)
    return sequences


def cache_name(source: str, count: int, seq_len: int, seed: int) -> str:
    """A file name for the sequences of one base and settings in a shared cache folder."""
    key = json.dumps([source, count, seq_len, seed]).encode("utf-8")
    return f"{hashlib.sha256(key).hexdigest()[:24]}.safetensors"


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
