"""GGUF members, read back by an independent reader: transformers' GGUF loader (its own tensor names, un-permuting,
norm shift and dequantization) must give the safetensors member's logits, and its tokenizer, rebuilt from the file,
must tokenize as the member's own does.

Quantized files are checked against an oracle: the member with every weight matrix rounded through the file's
block format (gguf.quants) by the rule the files follow (norms and biases F32; embeddings and output Q8_0 in 4-
and 5-bit files; F16 where a row does not fill whole 32-value blocks). The reader's logits then match to float
precision, whatever the rounding costs; what the rounding costs on a tiny random member is bounded separately."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from click.testing import CliRunner
from support.gguf_ready import build_convertible, round_like_a_gguf_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hubprune.cli import main
from hubprune.export import gguf as export_gguf

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3")
TYPES = ("F16", "Q8_0", "Q4_0")
EVERY_TYPE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
SAMPLE = "w17 w4 hello, world. it's 2024\n ok Zz w5!"
IDS = torch.tensor([[5, 9, 17, 33, 60, 2, 44, 70, 71, 80, 90, 11]])
# largest |logit - member's logit| / largest |member logit|, over the 8 tiny members (25 % removed, weights
# N(0, 0.3)), measured: F16 1.1e-3, BF16 7e-3, Q8_0 3.6e-2, Q4_0 0.19; bounds a little above
LOSS_BOUND = {
    "F32": 1e-5,
    "F16": 2e-3,
    "BF16": 1.5e-2,
    "Q8_0": 6e-2,
    "Q4_0": 0.3,
    "Q4_1": 0.3,
    "Q5_0": 0.2,
    "Q5_1": 0.2,
}


def _member(tmp_path: Path, model_type: str, types: tuple[str, ...]) -> Path:
    source = build_convertible(tmp_path / "source", model_type)
    out = tmp_path / "member"
    result = CliRunner().invoke(main, ["prune", str(source), "-o", str(out), "--pct", "25", "--gguf", ",".join(types)])
    assert result.exit_code == 0, result.output
    return out


def _reader_config(folder: Path, name: str, model_type: str):
    """transformers' GGUF loader leaves two keys at their config defaults: Gemma's query scalar (llama.cpp uses
    1/sqrt(head_dim), which the file's key_length gives) and Qwen 3's head_dim; set them as llama.cpp reads them."""
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if model_type.startswith("gemma"):
        config.query_pre_attn_scalar = config.head_dim
    if model_type == "qwen3":
        config.head_dim = 8
    return config


def _read_back(member: Path, kind: str, model_type: str, tmp_path: Path):
    """The member's GGUF file of `kind`, alone in a folder (so no tokenizer.json beside it is read instead)."""
    name = f"member-{kind}.gguf"
    alone = tmp_path / f"alone-{kind}"
    alone.mkdir()
    shutil.copy(member / name, alone / name)
    config = _reader_config(alone, name, model_type)
    model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=name, config=config, dtype=torch.float32)
    return alone, name, model.eval()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_reads_back_as_the_member(tmp_path, model_type, monkeypatch):
    monkeypatch.setattr(export_gguf, "CHUNK_BYTES", 256)  # tensors converted a few rows at a time, as big ones are
    # every type once (llama); the 4-bit rule for tied embeddings once more (Gemma ties them); F16 and Q8_0 for all
    types = EVERY_TYPE if model_type == "llama" else TYPES if model_type == "gemma3_text" else TYPES[:2]
    member = _member(tmp_path, model_type, types)
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()(IDS).logits
        for kind in types:
            alone, name, model = _read_back(member, kind, model_type, tmp_path)
            got = model(IDS).logits
            oracle = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
            exact = round_like_a_gguf_file(oracle, kind)(IDS).logits
            assert torch.allclose(got, exact, atol=2e-4, rtol=1e-4), (kind, (got - exact).abs().max())
            loss = ((got - want).abs().max() / want.abs().max()).item()
            assert loss < LOSS_BOUND[kind], (kind, loss)
            file_type = gguf.GGUFReader(alone / name).fields["general.file_type"].contents()
            assert gguf.LlamaFileType(file_type).name.endswith(f"_{kind}"), (kind, file_type)  # ALL_F32, MOSTLY_F16..
    tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=name)
    assert tokenizer(SAMPLE).input_ids == AutoTokenizer.from_pretrained(member)(SAMPLE).input_ids

    fields = gguf.GGUFReader(member / "member-F16.gguf").fields
    arch = fields["general.architecture"].contents()
    assert arch == {"mistral": "llama", "gemma3_text": "gemma3"}.get(model_type, model_type)
    for key in ("block_count", "context_length", "embedding_length", "attention.head_count"):
        assert f"{arch}.{key}" in fields, key
    assert fields[f"{arch}.feed_forward_length"].contents() == 48  # the member's width, not the base's 64
    tokens = fields["tokenizer.ggml.tokens"].contents()
    embeddings = next(t for t in gguf.GGUFReader(member / "member-F16.gguf").tensors if t.name == "token_embd.weight")
    assert len(tokens) == embeddings.shape[-1]  # llama.cpp refuses a vocabulary of another size than the rows
    model_kind = fields["tokenizer.ggml.model"].contents()
    assert model_kind == ("llama" if "tokenizer.ggml.scores" in fields else "gpt2")
    if model_kind == "gpt2":
        assert fields["tokenizer.ggml.pre"].contents() in ("llama-bpe", "qwen2")
        assert "tokenizer.ggml.merges" in fields
    recorded = json.loads((member / "hubprune.json").read_text())["gguf"]
    assert sorted(recorded) == sorted(types) and recorded["Q8_0"]["kept_f16"] == [
        f"blk.{i}.ffn_down.weight" for i in range(2)
    ]
