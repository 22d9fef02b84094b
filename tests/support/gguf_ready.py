"""Tiny models ready for GGUF, and an oracle for quantized GGUF files.

The tokenizers are of the two kinds llama.cpp runs (the tiny models' word-level one has no counterpart there):
byte-level BPE with Llama 3's or Qwen 2's word split, and SentencePiece-style BPE ("▁" for spaces, <0xNN> byte pieces, byte fallback)
with or without the leading "▁" (Llama 2 / Mistral / Phi-3 put one before the text, Gemma does not).

Each has merges that matter ("w" with a digit before a space with a letter; two digit pairs in the byte-level
one), so a converter that loses the merge order or the word split tokenizes differently."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from support.tiny_models import QWEN2_SPLIT, SPECIAL_TOKENS, build_tiny

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SENTENCEPIECE_VOCAB = 4 + 256 + 1 + 26 + 10 + 4 + 26 + 10  # special, bytes, "▁", letters, digits, punctuation, merges
# which tokenizer each family's tiny GGUF-ready model gets (the kinds its real models use)
KIND = {
    "llama": "llama3",
    "mistral": "sentencepiece",
    "qwen2": "qwen2",
    "qwen3": "qwen2",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gemma3": "gemma",
    "phi3": "sentencepiece",
}


def byte_level(split: str) -> Tokenizer:
    """Bytes as characters ("Ġ" a space), the given word split, merges of "w" and each digit, two digit pairs,
    then a space and a letter; a word that is a whole token is taken as it is (ignore_merges), as Llama 3's tokenizer does."""
    space_letters = [("Ġ", letter) for letter in LETTERS]
    w_digits = [("w", digit) for digit in "0123456789"]
    # digit pairs: a split that keeps "17" together (Llama 3's) makes the token "17", one that splits digits not
    merges = [*w_digits, ("1", "7"), ("2", "0"), *space_letters]
    symbols = [*SPECIAL_TOKENS, "Ġ", "Ċ", ".", ",", "'", *"0123456789", *LETTERS, *(a + b for a, b in merges)]
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def sentencepiece_style(prepend: bool) -> Tokenizer:
    """Pieces with "▁" for spaces and byte fallback, merges of "w" and a digit, then of "▁" and a letter."""
    space_letters = [("\u2581", letter) for letter in LETTERS]
    w_digits = [("w", digit) for digit in "0123456789"]
    # "▁w1": "w1" ranks before "▁w", so only a converter that keeps the merge order gives "▁", "w1"
    merges = [*w_digits, *space_letters]
    symbols = [
        *SPECIAL_TOKENS,
        *(f"<0x{b:02X}>" for b in range(256)),
        "\u2581",
        *LETTERS,
        *"0123456789",
        ".",
        ",",
        "'",
        "!",
        *(a + b for a, b in merges),
    ]
    assert len(symbols) == SENTENCEPIECE_VOCAB
    backend = Tokenizer(
        models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=merges, byte_fallback=True, unk_token="<unk>")
    )
    steps = [normalizers.Prepend("\u2581")] if prepend else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip("\u2581", 1, 0)]
    )
    return backend


def build_convertible(folder: Path, model_type: str, **overrides) -> Path:
    """A tiny model of `model_type` with the tokenizer kind its real models use (KIND), ready for GGUF."""
    kind = KIND[model_type]
    if kind in ("sentencepiece", "gemma"):
        overrides.setdefault("vocab_size", SENTENCEPIECE_VOCAB)
        backend = sentencepiece_style(prepend=kind == "sentencepiece")
    else:
        backend = byte_level(LLAMA3_SPLIT if kind == "llama3" else QWEN2_SPLIT)
    if model_type in ("gemma2", "gemma3_text", "gemma3"):
        overrides.setdefault("query_pre_attn_scalar", 8)  # llama.cpp scales queries by 1/sqrt(head_dim)
    build_tiny(folder, model_type, **overrides)
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


def round_like_a_gguf_file(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """An oracle for a GGUF file of `kind`: every weight matrix of the language model rounded through the block
    format it gets in the file (norms and biases stay F32; embeddings and output are Q8_0 in 4- and 5-bit files;
    F16 where a row does not fill whole 32-value blocks), in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() != 2 or "vision" in name or "multi_modal" in name:
                continue
            low_bit = kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")
            wanted = "Q8_0" if low_bit and ("embed_tokens" in name or "lm_head" in name) else kind
            qtype = gguf.GGMLQuantizationType[wanted]
            if param.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
                qtype = gguf.GGMLQuantizationType.F16
            values = param.detach().numpy().astype(np.float32)
            rounded = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)
            param.copy_(torch.from_numpy(np.asarray(rounded, dtype=np.float32).reshape(param.shape)))
    return model
