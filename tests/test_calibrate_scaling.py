"""Calibration of models larger than memory: under a memory cap (LoadSettings.max_memory) the model is dispatched by
accelerate with its weights left on disk, in the checkpoint's own dtype, and the Gram matrices are summed in files.
The statistics must equal those of the default load (whole model, float32, in memory) within what the dtype allows,
and nothing may be left in the scratch folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support.tiny_models import build_tiny
from test_data_criteria import words
from transformers import AutoModelForCausalLM

from hubprune.errors import CriterionError
from hubprune.pruning.calibrate import ActivationStats, CalibrationSettings, LoadSettings, calibrate
from hubprune.pruning.prune import analyse, down_modules
from hubprune.pruning.source import open_source
from hubprune.recover.refit import refit_layer

TOKENS, WINDOW = 300, 50  # six windows: four fit, two held out
CAP = 1_000  # bytes: far below any tiny model's weights, so every module stays on disk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny checkpoints of this module's own, in folders of their own name: the session's tiny_dir numbers its
    folders src-<family>N in the order they are made, and other modules' tests name members after them."""
    cache: dict[tuple, Path] = {}

    def make(family: str, **kwargs) -> Path:
        key = (family, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = build_tiny(tmp_path_factory.mktemp(f"scaling-{family}"), family, **kwargs)
        return cache[key]

    return make


@pytest.fixture
def settings(tmp_path) -> CalibrationSettings:
    path = tmp_path / "calibration.txt"
    path.write_text(words(7, 400))
    return CalibrationSettings(text=path, max_tokens=TOKENS, window=WINDOW)


@pytest.fixture
def loaded(monkeypatch) -> list:
    """The models calibrate loads, kept to inspect how they were dispatched."""
    models = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        models.append(original(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return models


def run(source, settings, load: LoadSettings | None = None) -> ActivationStats:
    modules = down_modules(analyse(open_source(str(source))))
    return calibrate(source, modules, settings, grams=True, load=load or LoadSettings())


def assert_close(capped: ActivationStats, default: ActivationStats, rtol: float) -> None:
    """Every statistic of every layer within `rtol` of the default's, relative to its largest magnitude."""
    assert capped.grams.fit_tokens == default.grams.fit_tokens and capped.grams.held_out_tokens > 0
    assert capped.grams.held_out_tokens == default.grams.held_out_tokens
    pairs = {
        "abs_mean": (capped.abs_mean, default.abs_mean),
        "l2": (capped.l2, default.l2),
        "fit": (capped.grams.fit, default.grams.fit),
        "held_out": (capped.grams.held_out, default.grams.held_out),
    }
    for name, (got, want) in pairs.items():
        assert got.keys() == want.keys() and got
        for layer in want:
            assert got[layer].dtype == torch.float32 and got[layer].device.type == "cpu"
            scale = want[layer].abs().max()
            assert (got[layer] - want[layer]).abs().max() <= rtol * scale, (name, layer)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_capped_float32_statistics_equal_the_default(tiny, settings, loaded, tmp_path, family):
    source = tiny(family, num_hidden_layers=3)
    default = run(source, settings)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    capped = run(source, settings, LoadSettings(max_memory=CAP, scratch=scratch))
    dispatched = loaded[-1]
    assert "disk" in dispatched.hf_device_map.values(), dispatched.hf_device_map  # the cap was honoured
    assert dispatched.dtype == torch.float32
    assert_close(capped, default, rtol=1e-5)
    assert list(scratch.iterdir()) == []  # offload folder and Gram files gone, the Grams still readable
    assert capped.record == default.record | {"dtype": "float32", "device": "cpu"}


def test_capped_bf16_model_calibrates_in_its_own_dtype(tiny, settings, loaded, tmp_path):
    source = tiny("llama", dtype=torch.bfloat16, num_hidden_layers=3)
    default = run(source, settings)  # float32 compute on the bf16 weights
    assert loaded[-1].dtype == torch.float32
    capped = run(source, settings, LoadSettings(max_memory=CAP, scratch=tmp_path))
    assert loaded[-1].dtype == torch.bfloat16 and "disk" in loaded[-1].hf_device_map.values()
    assert capped.record["dtype"] == "bfloat16"
    assert_close(capped, default, rtol=0.05)  # bf16 activations round to 3 significant digits
    assert not capped.grams.fit[0].equal(default.grams.fit[0])  # computed in bf16, not float32
    assert list(tmp_path.glob("hubprune-calibrate-*")) == []


def test_file_backed_grams_refit_like_in_memory_ones(tiny, settings, tmp_path):
    source = tiny("llama", num_hidden_layers=2)
    default = run(source, settings)
    capped = run(source, settings, LoadSettings(max_memory=CAP, scratch=tmp_path))
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    kept = torch.arange(0, 64, 2)
    for layer in (0, 1):
        want = refit_layer(weight, default.grams.fit[layer], default.grams.held_out[layer], kept)
        got = refit_layer(weight, capped.grams.fit[layer], capped.grams.held_out[layer], kept)
        assert got.alpha == want.alpha
        torch.testing.assert_close(got.update, want.update, rtol=1e-4, atol=1e-6)


def test_an_error_leaves_no_scratch_folder(tiny, settings, tmp_path):
    source = tiny("llama", num_hidden_layers=2)
    with pytest.raises(CriterionError, match="cannot be matched"):
        calibrate(source, {0: "model.nothing.0.down"}, settings, load=LoadSettings(max_memory=CAP, scratch=tmp_path))
    assert list(tmp_path.iterdir()) == [tmp_path / "calibration.txt"]


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (LoadSettings(max_memory=0), "max_memory must be a positive number of bytes, not 0"),
        (LoadSettings(device="tpu"), "unknown device 'tpu'"),
        (LoadSettings(max_memory=CAP, scratch="/nonexistent/scratch"), "is not a folder"),
    ],
)
def test_load_settings_it_cannot_honour_are_refused_before_loading(tiny, settings, loaded, load, message):
    with pytest.raises(CriterionError, match=message):
        run(tiny("llama", num_hidden_layers=2), settings, load)
    assert loaded == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tiny, settings):
    with pytest.raises(CriterionError, match="torch sees no CUDA GPU"):
        run(tiny("llama", num_hidden_layers=2), settings, LoadSettings(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("cap", [None, CAP])
def test_cuda_statistics_match_the_default(tiny, settings, loaded, tmp_path, cap):
    source = tiny("llama", num_hidden_layers=3)
    default = run(source, settings)
    on_gpu = run(source, settings, LoadSettings(device="cuda", max_memory=cap, scratch=tmp_path))
    assert_close(on_gpu, default, rtol=1e-3)  # TF32 may be on
    assert on_gpu.record["device"] == "cuda" and list(tmp_path.glob("hubprune-calibrate-*")) == []


def test_the_command_line_cap_reaches_calibration(tiny, settings, loaded, tmp_path):
    from test_cli import invoke

    source, out = tiny("llama", num_hidden_layers=2), tmp_path / "member"
    text = ("--calibration", settings.text, "--calibration-tokens", TOKENS)
    result = invoke(
        "prune",
        source,
        "-o",
        out,
        "--intermediate-size",
        40,
        "--criterion",
        "activation",
        "--recover",
        "none",
        "--max-memory",
        "1KB",
        *text,
    )
    assert result.exit_code == 0, result.output
    assert "disk" in loaded[0].hf_device_map.values()  # calibration's load: the model dispatched under the cap
    calibration = json.loads((out / "hubprune.json").read_text())["calibration"]
    assert (calibration["dtype"], calibration["device"]) == ("float32", "cpu")


def test_a_family_is_calibrated_one_way(tiny, settings, tmp_path):
    from test_cli import assert_clean_error, invoke

    source, family = tiny("llama", num_hidden_layers=2), tmp_path / "fam"
    base = (
        "build-family",
        source,
        "-o",
        family,
        "--sizes",
        40,
        "--criterion",
        "activation",
        "--skip-eval",
        "--recover",
        "none",
    )
    text = ("--skip-profile", "--calibration", settings.text, "--calibration-tokens", TOKENS)
    assert invoke(*base, *text, "--max-memory", "1KB").exit_code == 0
    before = (family / "family.json").read_bytes()
    result = invoke(*base, *text)  # without the cap: the statistics would come from float32, not the source dtype
    assert_clean_error(result, "calibrated with --max-memory", "give --max-memory to resume it")
    assert (family / "family.json").read_bytes() == before
