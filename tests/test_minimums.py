"""Bad inputs a new user tries: every data-driven step states the least data it reads (in --help) and refuses less
in one line with nothing written; an output folder inside the source folder is refused; recovery steps are
named and ordered as the registry says."""

from __future__ import annotations

import pytest
from test_cli import assert_clean_error, invoke
from test_recovery import words

from hubprune.errors import CriterionError
from hubprune.pruning.calibrate import MIN_CALIBRATION_TOKENS
from hubprune.pruning.check import MIN_HELD_OUT_TOKENS
from hubprune.recover.settings import RecoverySettings


def test_calibrating_on_a_few_tokens_is_refused_before_anything_is_written(tiny_dir, tmp_path):
    source = tiny_dir("llama")
    result = invoke("prune", source, "-o", tmp_path / "out", "--pct", 50, "--criterion", "activation",
                    "--calibration-tokens", 3)  # fmt: skip
    assert result.exit_code != 0 and "--calibration-tokens" in result.output and "x>=64" in result.output
    assert not any(tmp_path.iterdir())
    assert f"at least {MIN_CALIBRATION_TOKENS}" in " ".join(invoke("prune", "--help").output.split())


def test_a_calibration_text_of_fewer_tokens_than_the_minimum_is_refused(tiny_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(words(3, MIN_CALIBRATION_TOKENS - 4))
    out = tmp_path / "out"
    result = invoke("prune", tiny_dir("llama"), "-o", out, "--pct", 50, "--criterion", "activation",
                    "--calibration", short)  # fmt: skip
    assert_clean_error(result, f"gives {MIN_CALIBRATION_TOKENS - 4} tokens", f"at least {MIN_CALIBRATION_TOKENS}")
    assert not out.exists() and not list(tmp_path.glob(".partial*"))


def test_check_criteria_refuses_a_held_out_text_too_short_to_measure(tiny_dir, tmp_path):
    text = tmp_path / "two-words.txt"
    text.write_text("w5 w6")
    result = invoke("check-criteria", tiny_dir("llama"), "--text", text, "--pcts", "50", "--criteria", "maw")
    assert_clean_error(result, "gives 2 tokens", f"at least {MIN_HELD_OUT_TOKENS}")  # before the model loads
    result = invoke("check-criteria", tiny_dir("llama"), "--tokens", 3)
    assert result.exit_code != 0 and "--tokens" in result.output


@pytest.mark.parametrize("command", ["prune", "build-family"])
def test_an_output_folder_inside_the_source_folder_is_refused(tiny_dir, tmp_path, command):
    source = tiny_dir("llama")
    before = sorted(p.name for p in source.iterdir())
    width = ["--pct", 50] if command == "prune" else ["--pcts", 50, "--skip-eval", "--skip-profile"]
    result = invoke(command, source, "-o", source / "sub", *width)
    assert_clean_error(result, "is inside the source folder", "choose a folder outside it")
    assert sorted(p.name for p in source.iterdir()) == before


@pytest.mark.parametrize(
    "steps, fragment",
    [
        ("finetune", "unknown recovery 'finetune'"),
        ("distill+refit", "comes before the steps that train"),
        ("refit+refit", "names a step twice"),
    ],
)
def test_recovery_steps_are_the_registrys_in_its_order(steps, fragment):
    with pytest.raises(CriterionError, match=fragment):
        RecoverySettings(steps)
    assert RecoverySettings("refit+distill").steps == ("refit", "distill")
    assert RecoverySettings("refit+distill").label == "refit+distill" and RecoverySettings().label == "none"
