"""The CLI end to end: plan, prune, build-family, resume, and every kind of bad input (one-line error,
non-zero exit, nothing half-written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from support.oracle import load_tensors
from support.tiny_models import build_tiny
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.pruning import family as build_module


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_plan_prints_the_table_and_writes_nothing(tiny_dir, tmp_path):
    source = tiny_dir("llama")
    before = sorted(p.name for p in source.iterdir())
    result = invoke("plan", source, "--ratios", "1.5,1")
    assert result.exit_code == 0, result.output
    assert "er1.5" in result.output and "48" in result.output and "-12.4%" in result.output
    assert sorted(p.name for p in source.iterdir()) == before


def test_prune_writes_one_loadable_member(tiny_dir, tmp_path):
    out = tmp_path / "member"
    result = invoke("prune", tiny_dir("qwen2"), "-o", out, "--pct", "25", "--criterion", "ppm")
    assert result.exit_code == 0, result.output
    assert "intermediate size 48" in result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 48
    assert json.loads((out / "hubprune.json").read_text())["criterion"] == "maw"
    assert not list(tmp_path.glob(".partial-*"))


def test_a_local_source_is_recorded_by_name_and_digest_not_by_path(tiny_dir, tmp_path):
    """Two copies of one folder in different places give the same record; a changed config another digest."""
    records = []
    for where in ("a", "b"):
        source = shutil.copytree(tiny_dir("llama"), tmp_path / where / "Llama-tiny")
        if where == "b":
            config = json.loads((source / "config.json").read_text())
            (source / "config.json").write_text(json.dumps({**config, "rope_theta": 12345.0}))
        for copy in ("same", "moved"):
            folder = shutil.copytree(source, tmp_path / where / copy / "Llama-tiny")
            assert invoke("prune", folder, "-o", tmp_path / where / copy / "out", "--ratio", "1.5").exit_code == 0
            records.append(json.loads((tmp_path / where / copy / "out" / "hubprune.json").read_text())["source"])
    assert records[0] == records[1] and records[2] == records[3]
    assert records[0]["id"] == "Llama-tiny" and records[0]["digest"].startswith("sha256:")
    assert records[0]["digest"] != records[2]["digest"]
    assert str(tmp_path) not in json.dumps(records)


def test_build_family_skips_members_already_built(tiny_dir, tmp_path):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    assert (
        invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48,32").exit_code == 0
    )
    members = json.loads((family / "family.json").read_text())["members"]
    assert [m["intermediate_size"] for m in members] == [48, 32]
    kept_file = family / members[0]["path"] / "model.safetensors"
    stamp = kept_file.stat().st_mtime_ns
    shutil.rmtree(family / members[1]["path"])
    result = invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48,32,16")
    assert result.exit_code == 0, result.output
    assert kept_file.stat().st_mtime_ns == stamp, "a finished member was rewritten"
    manifest = json.loads((family / "family.json").read_text())
    assert [m["intermediate_size"] for m in manifest["members"]] == [48, 32, 16]
    assert all(m["stages"]["prune"]["status"] == "done" for m in manifest["members"])
    assert AutoModelForCausalLM.from_pretrained(family / manifest["members"][1]["path"]).config.intermediate_size == 32


def test_a_stopped_build_leaves_no_member_and_resumes(tiny_dir, tmp_path, monkeypatch):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    real_pass = build_module.prune_pass

    def interrupted(*args, **kwargs):
        kwargs["on_progress"] = lambda event: (
            (_ for _ in ()).throw(KeyboardInterrupt) if event.done > event.total / 2 else None
        )
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(build_module, "prune_pass", interrupted)
    result = invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 130
    assert "run the same command again" in result.output
    assert sorted(p.name for p in family.iterdir()) == ["family.json"]  # no member, no partial folder
    pending = json.loads((family / "family.json").read_text())["members"]
    assert [m["stages"]["prune"]["status"] for m in pending] == ["pending", "pending"]

    monkeypatch.setattr(build_module, "prune_pass", real_pass)
    assert (
        invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48,32").exit_code == 0
    )
    done = json.loads((family / "family.json").read_text())["members"]
    assert [m["stages"]["prune"]["status"] for m in done] == ["done", "done"]


def test_existing_family_with_other_settings_is_refused(tiny_dir, tmp_path):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    assert invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48").exit_code == 0
    assert_clean_error(
        invoke(
            "build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "48", "--criterion", "l2"
        ),
        "criterion activation",  # the default
        "choose a new folder",
    )


def test_non_empty_foreign_folder_needs_force(tiny_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_clean_error(
        invoke("build-family", "--skip-eval", "--skip-profile", tiny_dir("llama"), "-o", out, "--sizes", "48"),
        "--force",
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (
        invoke(
            "build-family", "--skip-eval", "--skip-profile", tiny_dir("llama"), "-o", out, "--sizes", "48", "--force"
        ).exit_code
        == 0
    )
    assert (out / "notes.txt").read_text() == "mine"


def _gpt2(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(folder)
    return folder


def _truncated(folder, tiny_dir):
    shutil.copytree(tiny_dir("llama"), folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def _corrupt_header(folder, tiny_dir):
    shutil.copytree(tiny_dir("llama"), folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:20] = b"\x00garbage!!!!"
    (folder / "model.safetensors").write_bytes(bytes(data))
    return folder


def _missing_shard(folder, tiny_dir):
    shutil.copytree(tiny_dir("llama", max_shard_size="20KB"), folder)
    next(folder.glob("model-00002-*.safetensors")).unlink()
    return folder


def _no_config(folder, tiny_dir):
    shutil.copytree(tiny_dir("llama"), folder)
    (folder / "config.json").unlink()
    return folder


def _pickled(folder, tiny_dir):
    shutil.copytree(tiny_dir("llama"), folder)
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    return folder


def _uneven_layers(folder, tiny_dir):
    """Layer 1 is narrower than the config's width: per-layer widths differ."""
    shutil.copytree(tiny_dir("llama"), folder)
    tensors = load_tensors(folder)
    for part in ("gate_proj", "up_proj"):
        name = f"model.layers.1.mlp.{part}.weight"
        tensors[name] = tensors[name][:40].contiguous()
    tensors["model.layers.1.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"][:, :40].contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda f, t: _gpt2(f), ["'gpt2' is not supported", "llama"]),
        (_truncated, ["truncated", "re-download"]),
        (_corrupt_header, ["corrupt", "re-download"]),
        (_missing_shard, ["missing", "model-00002"]),
        (_no_config, ["no config.json"]),
        (_pickled, ["pickled", "convert them to safetensors"]),
        (_uneven_layers, ["per-layer widths differ", "layer 1 has MLP width 40"]),
    ],
)
def test_bad_sources_give_one_line_and_write_nothing(tmp_path, tiny_dir, make, fragments):
    source = make(tmp_path / "src", tiny_dir)
    out = tmp_path / "fam"
    assert_clean_error(
        invoke("build-family", "--skip-eval", "--skip-profile", source, "-o", out, "--ratios", "1.5"), *fragments
    )
    assert not out.exists()
    assert_clean_error(invoke("prune", source, "-o", tmp_path / "one", "--ratio", "1.5"), *fragments)
    assert not (tmp_path / "one").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--ratios", "2"], ["ratio 2 gives intermediate size 64", "below the current width"]),
        (["--ratios", "3"], ["below the current width"]),
        (["--ratios", "0"], ["must be positive"]),
        (["--ratios", "-1.5"], ["must be positive"]),
        (["--sizes", "0"], ["at least 1"]),
        (["--ratios", "1.5,big"], ["'big' is not a number"]),
        (["--ratios", "1.5", "--criterion", "magnitude"], ["unknown criterion 'magnitude'", "maw"]),
        (["--ratios", "1.5", "--pcts", "10"], ["exactly one of"]),
        ([], ["exactly one of"]),
    ],
)
def test_bad_targets_give_one_line_and_write_nothing(tmp_path, tiny_dir, args, fragments):
    out = tmp_path / "fam"
    assert_clean_error(
        invoke("build-family", "--skip-eval", "--skip-profile", tiny_dir("llama"), "-o", out, *args), *fragments
    )
    assert not out.exists()


def test_prune_refuses_an_existing_output(tmp_path, tiny_dir):
    out = tmp_path / "exists"
    out.mkdir()
    assert_clean_error(invoke("prune", tiny_dir("llama"), "-o", out, "--ratio", "1.5"), "already exists")
    assert list(out.iterdir()) == []


def test_unknown_source_is_refused(tmp_path):
    assert_clean_error(invoke("plan", tmp_path / "nope" / "deeper", "--ratios", "1.5"), "neither an existing folder")
    assert_clean_error(
        invoke(
            "plan",
            "someone/model",
            "--ratios",
            "1.5",
        ),
        "cannot reach the Hub",
    )


def test_local_source_with_revision_is_refused(tiny_dir):
    assert_clean_error(
        invoke("plan", tiny_dir("llama"), "--ratios", "1.5", "--revision", "main"), "Hub repositories only"
    )


def test_members_carry_tokenizer_and_licence_but_not_readme_or_pickles(tmp_path):
    source = build_tiny(tmp_path / "src", "llama")
    for name, text in {
        "LICENSE": "licence",
        "USE_POLICY.md": "policy",
        "README.md": "base card",
        "pytorch_model.bin": "pickle",
        "model.gguf": "gguf",
    }.items():
        (source / name).write_text(text)
    (source / "original").mkdir()
    (source / "original" / "consolidated.00.pth").write_text("x")
    assert invoke("prune", source, "-o", tmp_path / "m", "--ratio", "1.5").exit_code == 0
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == [
        "LICENSE",
        "USE_POLICY.md",
        "config.json",
        "generation_config.json",
        "hubprune-kept-indices.json",
        "hubprune.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-sizes", "0"], "batch size 0"),
        (["--batch-sizes", "one"], "'one' is not a whole number"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),
        pytest.param(
            ["--energy", "nvml"],
            "nvml",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),  # on a GPU, nvml measures
        (["--rounds", "0"], "rounds 0: give a whole number >= 1"),
    ],
)
def test_bad_profile_input_gives_one_line_and_writes_nothing(tmp_path, tiny_dir, args, fragment):
    assert_clean_error(invoke("profile", tiny_dir("llama"), *args), fragment)
    assert not (tiny_dir("llama") / "results").exists()
    family = tmp_path / "fam"
    assert_clean_error(
        invoke("build-family", "--skip-eval", tiny_dir("llama"), "-o", family, "--sizes", "48", *args),
        fragment,
    )
    assert not family.exists()


def test_progress_hides_the_weight_loading_bars_and_keeps_the_download_bars():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from hubprune.cli.output import ProgressDisplay

    ProgressDisplay()
    assert not transformers_logging.is_progress_bar_enabled()
    assert not are_progress_bars_disabled()
