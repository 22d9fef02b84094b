"""Tiny random checkpoints of every supported family, built locally with transformers (no network)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3Config, PreTrainedTokenizerFast

HIDDEN, WIDTH, LAYERS, VOCAB = 32, 64, 2, 96
_COMMON = dict(
    hidden_size=HIDDEN,
    intermediate_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3")


def tiny_config(model_type: str, **overrides):
    kw = dict(_COMMON, **overrides)
    if model_type in ("qwen3", "gemma2", "gemma3_text", "gemma3"):
        kw.setdefault("head_dim", 8)
    if model_type == "gemma3":
        vision = dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        return Gemma3Config(text_config=kw, vision_config=vision, mm_tokens_per_image=4)
    return AutoConfig.for_model(model_type, **kw)


SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3: the pad, bos and eos ids of _COMMON
# Qwen2Tokenizer's own pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py): letters with the
# character before them, digits one by one
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _tokenizer(bos: bool = False, model_type: str = "") -> PreTrainedTokenizerFast:
    """A word-level tokenizer of w4 w5 ...; with `bos`, it puts <s> (id 1) before every text, as Llama 3's and
    Gemma's do. For qwen2, a byte-level BPE one (see _byte_level_bpe)."""
    if model_type == "qwen2":
        backend = _byte_level_bpe()
    else:
        vocab = {**{token: i for i, token in enumerate(SPECIAL_TOKENS)}, **{f"w{i}": i for i in range(4, VOCAB)}}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _byte_level_bpe() -> Tokenizer:
    """A byte-level BPE tokenizer as Qwen2's is built (its split, then bytes as characters: a space is "Ġ", a
    newline "Ċ"), of a vocabulary that fits VOCAB: the special tokens, digits, lower-case letters, a little
    punctuation and each letter after a space. "w17 w4" is "w", "1", "7", "Ġw", "4"; other characters (capitals)
    are dropped, as byte-level BPE drops what its vocabulary lacks.

    transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which keeps only the vocabulary and
    merges of tokenizer.json and puts its own split and byte-level steps around them: a word-level vocabulary then
    encodes text to no tokens at all."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    merges = [("Ġ", letter) for letter in letters]
    symbols = [*SPECIAL_TOKENS, "Ġ", "Ċ", ".", ",", "'", *"0123456789", *letters, *(a + b for a, b in merges)]
    assert len(symbols) <= VOCAB
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(symbols)}, merges=merges))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def build_tiny(
    folder: Path,
    model_type: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_shard_size: str | None = None,
    bos: bool = False,
    **overrides,
) -> Path:
    """Save a randomly initialised tiny model (weights scaled up so pruning visibly changes logits)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    _tokenizer(bos, model_type).save_pretrained(folder)
    return Path(folder)
