"""What a build does when not told: the method that measured best (activation + refit), unless `--preset paper` asks
for the paper's (MAW, no recovery); an option given on the command line wins over either."""

from __future__ import annotations

import json

import pytest
from test_cli import invoke

from hubprune.pruning import family as family_module
from hubprune.pruning.family import PruneSettings
from hubprune.recover.settings import RecoverySettings


def built_with(tmp_path, tiny_dir, *options) -> tuple[str, str, int]:
    """The criterion and recovery family.json records, and how many members were built."""
    family = tmp_path / "fam"
    result = invoke("build-family", tiny_dir("llama"), "-o", family, "--skip-eval", "--skip-profile", *options)
    assert result.exit_code == 0, result.output
    recorded = json.loads((family / "family.json").read_text())
    return recorded["criterion"], recorded["recovery"], len(recorded["members"])


@pytest.mark.parametrize(
    "options, expected",
    [
        (("--sizes", "48"), ("activation", "refit", 1)),
        (("--preset", "paper"), ("maw", "none", 6)),
        (("--preset", "paper", "--criterion", "activation"), ("activation", "none", 6)),
        (("--preset", "paper", "--recover", "refit"), ("maw", "refit", 6)),
        (("--sizes", "48", "--recover", "none"), ("activation", "none", 1)),
    ],
)
def test_the_default_is_activation_and_refit_and_the_paper_preset_is_the_papers_method(
    tmp_path, tiny_dir, options, expected
):
    assert built_with(tmp_path, tiny_dir, *options) == expected


def test_the_library_defaults_are_the_command_lines():
    settings = PruneSettings()
    assert (settings.criterion, settings.recovery.steps) == ("activation", ("refit",))
    paper = settings.paper_method()
    assert (paper.criterion, paper.recovery) == ("maw", RecoverySettings())
    assert RecoverySettings().steps == ()  # alone (check-criteria), recovery is none


@pytest.mark.parametrize(
    "options, says",
    [
        (
            ("--sizes", "48"),
            [
                "the **activation** criterion, on the base's activations over calibration text. It has",
                "After pruning: down_proj's kept columns refit without training (see Method); the attention",
                "computed in float32 from the stored weights and the calibration text, hubprune/data/texts/jargon-file-4.4.7-ch1-8.txt, paragraphs 66-130.",
            ],
        ),
        (
            ("--sizes", "48", "--criterion", "maw", "--recover", "none"),
            [
                "the **MAW (PPM)** weight criterion. It has",
                "Nothing else was changed or trained: the attention, embeddings and norms are the base's own.",
                "computed in float32 from the stored weights. The k highest-scoring",
            ],
        ),
    ],
)
def test_a_members_card_says_how_its_neurons_were_chosen_and_what_changed_after(tmp_path, tiny_dir, options, says):
    built_with(tmp_path, tiny_dir, *options)
    card = " ".join((tmp_path / "fam" / "src-llama0-er1.5" / "README.md").read_text().split())
    for sentence in says:
        assert sentence in card


def test_a_family_built_with_the_papers_method_names_every_setting_to_resume_it(tmp_path, tiny_dir):
    """A family built before the defaults changed (MAW, no recovery) differs from a plain rerun in two settings:
    one message names both, so one more command resumes it."""
    built_with(tmp_path, tiny_dir, "--sizes", "48", "--criterion", "maw", "--recover", "none")
    family = tmp_path / "fam"
    recorded = json.loads((family / "family.json").read_text())["commands"]["build-family"]
    assert "--criterion maw --recover none" in recorded  # as typed: a command that parses again
    result = invoke(
        "build-family", tiny_dir("llama"), "-o", family, "--skip-eval", "--skip-profile", "--sizes", "48,40"
    )
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        "holds a family built with criterion maw, recovery none; this run asks for criterion activation, recovery "
        "refit: give --criterion maw and give --recover none to resume it, or choose a new folder"
    )
    resumed = invoke(
        "build-family", tiny_dir("llama"), "-o", family, "--skip-eval", "--skip-profile", "--sizes", "48,40",
        "--criterion", "maw", "--recover", "none",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output


def test_a_model_whose_float32_load_would_not_fit_is_refused_before_calibration(tmp_path, tiny_dir, monkeypatch):
    """The default calibrates, loading the whole model in float32; where the machine has less memory available than
    that, the build stops first with the two ways out (a memory cap, or the weights alone), and writes nothing."""
    monkeypatch.setattr(family_module, "available_memory", lambda: 10_000)  # bytes: less than the tiny model's
    family = tmp_path / "fam"
    result = invoke("build-family", tiny_dir("llama"), "-o", family, "--skip-eval", "--skip-profile", "--sizes", "48")
    assert result.exit_code == 1
    assert "calibration loads the whole model in float32 on the CPU" in result.output
    assert (
        "give --max-memory to keep part of it on disk, or prune by weights alone (--criterion maw, --recover none)"
        in (result.output)
    )
    assert not family.exists()
    weights_alone = ("--criterion", "maw", "--recover", "none")
    assert invoke("build-family", tiny_dir("llama"), "-o", family, "--skip-eval", "--skip-profile", "--sizes", "48",
                  *weights_alone).exit_code == 0  # fmt: skip
