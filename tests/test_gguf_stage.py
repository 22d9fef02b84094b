"""The GGUF stage as a user meets it: --gguf on build-family and prune, `hubprune gguf` on a built family (resuming
what is there), the cards' llama.cpp / Ollama sections, push's dry run, and refusals before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner
from support.gguf_ready import build_convertible

from hubprune.cli import main

MEMBER = "source-er1.5"


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gguf-family")
    source = build_convertible(root / "source", "llama")
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# source\n")
    out = root / "family"
    args = ["build-family", str(source), "-o", str(out), "--sizes", "48,32", "--skip-eval", "--skip-profile"]
    result = CliRunner().invoke(main, [*args, "--gguf", "q8_0"])
    assert result.exit_code == 0, result.output
    return out


def test_build_family_writes_records_and_cards_each_members_files(family):
    manifest = json.loads((family / "family.json").read_text())
    for member in manifest["members"]:
        name = member["name"]
        assert (family / name / f"{name}-Q8_0.gguf").is_file()
        assert member["stages"]["gguf"]["files"]["Q8_0"]["file"] == f"{name}-Q8_0.gguf"
    card = (family / MEMBER / "README.md").read_text()
    assert "## Use with llama.cpp / Ollama" in card
    assert f"llama-cli -hf YOUR-NAMESPACE/{MEMBER}:Q8_0" in card
    assert f"ollama run hf.co/YOUR-NAMESPACE/{MEMBER}:Q8_0" in card
    # width 48 is not a multiple of 32: its ffn_down rows stay F16, and the card says so; width 32 is quantized
    assert "the 2 tensors whose rows are 48 long (ffn_down) are F16" in card
    assert "are F16" not in (family / "source-er1" / "README.md").read_text()
    assert f"`{MEMBER}-Q8_0.gguf`" in (family / "README.md").read_text()
    fields = gguf.GGUFReader(family / MEMBER / f"{MEMBER}-Q8_0.gguf").fields
    assert fields["general.name"].contents() == MEMBER
    assert fields["general.base_model.0.name"].contents() == "source"
    assert fields["general.license"].contents() == "apache-2.0"  # the base card's, as the member card says


def test_gguf_command_adds_types_and_keeps_what_is_written(family):
    q8 = family / MEMBER / f"{MEMBER}-Q8_0.gguf"
    before = q8.stat().st_mtime_ns
    result = CliRunner().invoke(main, ["gguf", str(family), "--types", "Q8_0,f16"])
    assert result.exit_code == 0, result.output
    assert f"{MEMBER}-Q8_0.gguf already written" in result.output
    assert q8.stat().st_mtime_ns == before and (family / MEMBER / f"{MEMBER}-F16.gguf").is_file()
    recorded = json.loads((family / MEMBER / "hubprune.json").read_text())["gguf"]
    assert sorted(recorded) == ["F16", "Q8_0"] and recorded["F16"]["metadata_from"] == "safetensors"
    dry = CliRunner().invoke(main, ["push", str(family), "--namespace", "acme", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    size = (family / MEMBER / f"{MEMBER}-F16.gguf").stat().st_size
    assert f"{MEMBER}-F16.gguf  {size / 1e3:.4g} kB" in dry.output


@pytest.mark.parametrize(
    "types, message",
    [
        ("q4_k_m", "error: GGUF type Q4_K_M is written by llama.cpp's llama-quantize, not by the gguf package: write "
         "F16 here, then run `llama-quantize MEMBER-F16.gguf MEMBER-Q4_K_M.gguf Q4_K_M`"),
        ("f16,q3", "error: Invalid value for '--gguf': unknown GGUF type 'q3': choose from F32, F16, BF16, Q8_0, "
         "Q4_0, Q4_1, Q5_0, Q5_1"),
    ],
)  # fmt: skip
def test_a_type_the_gguf_package_cannot_write_is_refused(tiny_dir, tmp_path, types, message):
    out = tmp_path / "member"
    result = CliRunner().invoke(main, ["prune", str(tiny_dir("llama")), "-o", str(out), "--pct", "25", "--gguf", types])
    assert result.exit_code == 1 and result.output.startswith(message.split(":")[0]), result.output
    assert message.split(": ", 1)[1].split("'")[0] in result.output
    assert not out.exists()


def test_a_tokenizer_llama_cpp_has_no_match_for_is_refused_before_pruning(tiny_dir, tmp_path):
    """The tiny models' word-level tokenizer has no llama.cpp counterpart: nothing is pruned or written."""
    out = tmp_path / "family"
    args = ["build-family", str(tiny_dir("llama")), "-o", str(out), "--sizes", "48", "--skip-eval", "--skip-profile"]
    result = CliRunner().invoke(main, [*args, "--gguf", "f16"])
    assert result.exit_code == 1
    assert "tokenizer is 'WordLevel'; GGUF conversion handles BPE tokenizers" in result.output
    assert not out.exists()


def test_push_refuses_a_gguf_file_whose_metadata_names_this_machine(family, tmp_path):
    leaky = family / MEMBER / "leaky.gguf"
    writer = gguf.GGUFWriter(str(leaky), "llama")
    writer.add_string("tokenizer.chat_template", f"{{# made in {Path.home()}/models #}}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    try:
        result = CliRunner().invoke(main, ["push", str(family), "--namespace", "acme", "--dry-run"])
    finally:
        leaky.unlink()
    assert result.exit_code == 1
    assert f"{MEMBER}/leaky.gguf names this machine" in result.output and "nothing was sent" in result.output


def test_a_source_gguf_for_a_family_built_from_safetensors_is_refused(family, tmp_path):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    result = CliRunner().invoke(main, ["gguf", str(family), "--types", "f16", "--source", str(other)])
    assert result.exit_code == 1
    assert "error: --source names the .gguf file a family was built from, and this one was not" in result.output
