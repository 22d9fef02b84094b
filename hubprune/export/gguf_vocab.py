"""A member's tokenizer (tokenizer.json and tokenizer_config.json) as the tokenizer.* keys llama.cpp reads.

llama.cpp has two tokenizers that these families use, and a file must name the right one with the right
pre-tokenizer, or llama.cpp tokenizes differently from the model's own tokenizer without any error:
- byte-level BPE ("gpt2": Llama 3, SmolLM, Qwen): the vocabulary, the merges, and `tokenizer.ggml.pre`, the name
  of llama.cpp's built-in split of text into words before the merges. llama.cpp's converter picks that name from a
  hash of the tokenizer's output on a test text; this module reads the split itself from tokenizer.json and names
  it only when it is one of the splits llama.cpp knows exactly (otherwise it refuses);
- SentencePiece-style BPE ("llama": Llama 2, Mistral, Gemma, Phi-3): pieces with "▁" for spaces and <0xNN> byte
  pieces, merged by score, so each merged piece's score here is minus the rank of the merge that makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubprune.errors import ExportError

# the word splits of llama.cpp's pre-tokenizers, as Hugging Face tokenizers spell them in a Split pre-tokenizer
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
SPACE_MARK = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer.* keys of one GGUF file; `model` is "gpt2" or "llama", `pre` the pre-tokenizer name."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    special_ids: dict[str, int]  # bos, eos, unknown, padding -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | None

    def key_values(self) -> dict[str, Any]:
        """Full GGUF key -> value (lists are arrays)."""
        keys: dict[str, Any] = {
            "tokenizer.ggml.model": self.model,
            "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": self.tokens,
            "tokenizer.ggml.token_type": self.token_types,
        }
        if self.scores is not None:
            keys["tokenizer.ggml.scores"] = self.scores
        if self.merges is not None:
            keys["tokenizer.ggml.merges"] = self.merges
        for role, token_id in self.special_ids.items():
            keys[f"tokenizer.ggml.{role}_token_id"] = token_id
        keys["tokenizer.ggml.add_bos_token"] = self.add_bos
        keys["tokenizer.ggml.add_eos_token"] = self.add_eos
        if self.add_space_prefix is not None:
            keys["tokenizer.ggml.add_space_prefix"] = self.add_space_prefix
        if self.chat_template:
            keys["tokenizer.chat_template"] = self.chat_template
        return keys


def read_vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """The GGUF vocabulary of the tokenizer in `folder`, padded to the model's `vocab_size` (embedding rows)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            f"{folder.name} has no tokenizer.json: GGUF conversion reads the fast tokenizer (save the tokenizer "
            "with transformers into the member folder)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    config = _json(folder / "tokenizer_config.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"{folder.name}'s tokenizer is {model.get('type')!r}; GGUF conversion handles BPE tokenizers (byte-level "
            "as in Llama 3 and Qwen, or SentencePiece-style as in Llama 2, Mistral and Gemma)"
        )
    tokens, added = _tokens(data, vocab_size, folder.name)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    sentencepiece = _is_sentencepiece_style(data)
    types = _token_types(tokens, added, model.get("unk_token"), sentencepiece)
    encode = _encoder(path)
    special = _special_ids(config, tokens)
    add_bos = "bos" in special and _adds(encode, special["bos"], first=True)
    add_eos = "eos" in special and _adds(encode, special["eos"], first=False)
    template = config.get("chat_template")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if sentencepiece:
        return Vocabulary(
            "llama",
            "default",
            tokens,
            types,
            _merge_scores(tokens, merges),
            None,
            special,
            add_bos,
            add_eos,
            _prepends_space(data),
            template if isinstance(template, str) else None,
        )
    return Vocabulary(
        "gpt2",
        pre_tokenizer_name(data, folder.name),
        tokens,
        types,
        None,
        merges,
        special,
        add_bos,
        add_eos,
        None,
        template if isinstance(template, str) else None,
    )


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _tokens(data: dict[str, Any], vocab_size: int, where: str) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """Tokens by id, the added ones included; ids the tokenizer does not use (embedding rows beyond it) get
    placeholder names, as llama.cpp's converter gives them."""
    by_id: dict[int, str] = {i: t for t, i in data["model"]["vocab"].items()}
    added = {entry["id"]: entry for entry in data.get("added_tokens") or []}
    by_id.update({i: entry["content"] for i, entry in added.items()})
    if max(by_id) >= vocab_size:
        raise ExportError(
            f"{where}'s tokenizer has token id {max(by_id)} but the model only {vocab_size} embedding rows: the "
            "tokenizer does not belong to this model"
        )
    return [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)], added


def _is_sentencepiece_style(data: dict[str, Any]) -> bool:
    """Spaces become "▁" (a Metaspace pre-tokenizer or a Replace normalizer), as SentencePiece writes them."""
    text = json.dumps([data.get("pre_tokenizer"), data.get("normalizer")], ensure_ascii=False)
    return "Metaspace" in text or SPACE_MARK in text


def _prepends_space(data: dict[str, Any]) -> bool:
    """Whether a "▁" is put before the text (Llama 2, Mistral), or not (Gemma)."""
    if "Prepend" in json.dumps(data.get("normalizer")):
        return True
    steps = _pre_tokenizer_steps(data)
    return any(s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never" for s in steps)


def _pre_tokenizer_steps(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The pre-tokenizer's steps in order (a Sequence's, or the one step; none when there is no pre-tokenizer)."""
    pre = data.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre] if pre else []


def _token_types(
    tokens: list[str], added: dict[int, dict[str, Any]], unk: str | None, sentencepiece: bool
) -> list[int]:
    types = []
    for i, token in enumerate(tokens):
        if i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif token == f"[PAD{i}]":
            types.append(UNUSED)
        elif unk is not None and token == unk:
            types.append(UNKNOWN)
        elif sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return types


def _merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece merges the adjacent pair whose joined piece scores highest: minus the rank of the first merge
    that makes a piece reproduces the BPE merge order; pieces no merge makes get a score below every merge."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, r)
    floor = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else floor for t in tokens]


def _encoder(path: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda text: tokenizer.encode(text, add_special_tokens=True).ids


def _adds(encode, token_id: int, first: bool) -> bool:
    ids = encode("a b")
    return bool(ids) and ids[0 if first else -1] == token_id


def _special_ids(config: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    ids = {token: i for i, token in enumerate(tokens)}
    roles = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}
    found = {}
    for role, key in roles.items():
        value = config.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content in ids:
            found[role] = ids[content]
    return found


def pre_tokenizer_name(data: dict[str, Any], where: str) -> str:
    """llama.cpp's name for this byte-level tokenizer's word split, read from its tokenizer.json; refused when it
    is not one llama.cpp spells exactly."""
    steps = _pre_tokenizer_steps(data)
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        name = SPLIT_NAMES.get(pattern) if steps[0].get("behavior") == "Isolated" else None
        # llama.cpp takes a Llama 3 word that is a whole token as it is, without merges (ignore_merges)
        if name and (name != "llama-bpe" or (data.get("model") or {}).get("ignore_merges")):
            return name
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # each digit alone, then GPT-2's split (SmolLM, StarCoder)
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    raise ExportError(
        f"{where}'s tokenizer splits words in a way llama.cpp has no exact match for ({' + '.join(map(str, kinds)) or 'none'}): "
        "a GGUF file of it would tokenize differently; convert it with llama.cpp's convert_hf_to_gguf.py, which "
        "refuses or names it"
    )
