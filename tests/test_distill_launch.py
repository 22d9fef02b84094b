"""Distillation in launched processes (#15, `--distill-launcher`): two CPU processes started by torchrun (DDP over
gloo, the same code path accelerate's multi-GPU launch takes) train the member to what one process trains, each on
half of every step's sequences; a launch that cannot split the batch, or fails, or is not asked for, is refused
in one line and leaves no member behind."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import torch
from test_cli import assert_clean_error, invoke
from test_distill import SMALL, tensors

from hubprune.errors import CriterionError
from hubprune.local_paths import command_without_local_paths
from hubprune.pruning.family import DISTILL_WORK, PruneSettings, build_family, prune_one
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings


def torchrun(processes: int) -> str:
    """A launcher of `processes` CPU processes on this machine (a free port each time: tests may run together)."""
    return f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node {processes}"


def test_two_processes_train_the_member_one_process_trains(tiny_dir, tmp_path):
    checkpoint = open_source(str(tiny_dir("llama")))
    target = [Target("pct", "50")]
    build_family(
        checkpoint, tmp_path / "one", target, PruneSettings("maw", recovery=RecoverySettings("distill", distill=SMALL))
    )
    launched = PruneSettings("maw", recovery=RecoverySettings("distill", distill=SMALL, launcher=torchrun(2)))
    build_family(checkpoint, tmp_path / "two", target, launched)

    name = next(p.name for p in (tmp_path / "one").iterdir() if p.is_dir())
    one, two = tensors(tmp_path / "one" / name), tensors(tmp_path / "two" / name)
    assert one.keys() == two.keys()
    assert invoke("prune", checkpoint.folder, "-o", tmp_path / "plain", "--pct", 50).exit_code == 0
    plain = tensors(tmp_path / "plain")  # the member before training: the same tensors, names and shapes
    assert plain.keys() == one.keys()
    changed = {n for n in one if not torch.equal(one[n], plain[n])}
    assert changed == {n for n in one if ".mlp." in n}  # training changed every MLP tensor, and nothing else
    for n in one:  # the same global batch and steps: equal up to the order float sums are taken in
        assert torch.allclose(one[n], two[n], rtol=0, atol=1e-6), n

    first, second = (
        json.loads((tmp_path / f / name / "hubprune.json").read_text())["distillation"] for f in ("one", "two")
    )
    assert first["engine"] == {"distributed_type": "NO", "processes": 1, "mixed_precision": "no"}
    assert second["engine"] == {"distributed_type": "MULTI_CPU", "processes": 2, "mixed_precision": "no"}
    assert second["held_out_kl"]["after"] == pytest.approx(first["held_out_kl"]["after"], rel=1e-5)
    assert second["held_out_kl"]["after"] < second["held_out_kl"]["before"]
    assert not (tmp_path / "two" / DISTILL_WORK).exists()  # job, data and record went with the work folder
    assert invoke("card", tmp_path / "two").exit_code == 0
    assert "s on 2 cpu processes (MULTI_CPU)." in (tmp_path / "two" / name / "README.md").read_text()


def test_processes_that_do_not_divide_the_batch_are_refused(tiny_dir, tmp_path):
    checkpoint = open_source(str(tiny_dir("llama")))
    settings = PruneSettings(
        "maw", recovery=RecoverySettings("distill", distill=SMALL, launcher=torchrun(3))
    )  # 4 sequences a step
    with pytest.raises(CriterionError, match="4 sequences do not split evenly over 3 processes"):
        prune_one(checkpoint, tmp_path / "out", Target("pct", "50"), settings)
    assert not (tmp_path / "out").exists() and not any(tmp_path.glob(".partial*"))


def test_a_failed_launch_leaves_no_member(tiny_dir, tmp_path):
    result = invoke(
        "prune", tiny_dir("llama"), "-o", tmp_path / "out", "--pct", 50,
        "--recover", "distill", "--distill-tokens", 2048, "--distill-launcher", "false",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: distilling out in the launched processes failed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--distill-launcher", "torchrun"], ["--distill-launcher is given, but --recover refit does not distil"]),
        (
            ["--recover", "distill", "--distill-launcher", "no-such-launcher --x"],
            ["--distill-launcher starts with no-such-launcher, which is not found"],
        ),
        (["--recover", "distill", "--distill-launcher", "'unclosed"], ["--distill-launcher cannot be read"]),
    ],
)
def test_a_launcher_that_cannot_run_is_refused_before_anything_is_written(tiny_dir, tmp_path, extra, fragments):
    result = invoke("prune", tiny_dir("llama"), "-o", tmp_path / "out", "--pct", 50, *extra)
    assert_clean_error(result, *fragments)
    assert not any(tmp_path.iterdir())


def test_hubprune_itself_under_a_launcher_is_refused_before_anything_runs(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun and accelerate launch set it in each process they start
    result = invoke("prune", tiny_dir("llama"), "-o", tmp_path / "out", "--pct", 50)
    assert_clean_error(result, "a launcher started 2 (WORLD_SIZE=2)", "give the launcher to --distill-launcher")
    assert not any(tmp_path.iterdir())


def test_the_cards_name_a_launchers_local_files_by_name_only():
    typed = shlex.join(
        ["hubprune", "build-family", "/home/me/model", "--distill-launcher", "/home/me/venv/bin/accelerate launch "
         "--config_file /home/me/ds.yaml", "--pcts", "20"]
    )  # fmt: skip
    assert shlex.split(command_without_local_paths(typed)) == [
        "hubprune", "build-family", "model", "--distill-launcher", "accelerate launch --config_file ds.yaml", "--pcts", "20"
    ]  # fmt: skip
