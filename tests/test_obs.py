"""The compensation-aware criteria `obs` (structured OBS, #23) and `obs-fisher` (its error weighted by the layer's
output Fisher F) against an independent float64 implementation: the greedy order in which neurons leave, each step
taking the neuron whose removal, with every remaining column re-solved by least squares, costs the least in total,
each cost computed from scratch by torch.linalg.lstsq (no inverse, no update formula); under F the cost is
||L^T (W - W') A^T||^2 with F = L L^T, so the same from-scratch solve on L^T W. Then through a build on a tiny
model."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_criteria import words

from hubprune.device import RuntimeSettings
from hubprune.errors import CriterionError
from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.importance import OBS_DAMP, obs, rank
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings


def removal_cost(weight: torch.Tensor, h: torch.Tensor, removed: list[int]) -> float:
    """min over the kept columns of ||(W - W') A^T||^2 with W'_removed = 0, A = [H; sqrt(lambda) I] (so that
    A^T A = G + lambda I): the output error plus the dampening, as a stacked least-squares problem."""
    width = weight.shape[1]
    gram = h.T @ h
    a = torch.cat([h, (OBS_DAMP * gram.diagonal().mean()).sqrt() * torch.eye(width, dtype=torch.float64)])
    kept = [j for j in range(width) if j not in removed]
    fixed = a[:, removed] @ weight[:, removed].T  # the removed columns' part of (W - W') A^T, which nothing can undo
    if not kept:
        return float(fixed.square().sum())
    solution = torch.linalg.lstsq(a[:, kept], -fixed).solution
    return float((fixed + a[:, kept] @ solution).square().sum())


def greedy_order(weight: torch.Tensor, h: torch.Tensor) -> list[int]:
    removed: list[int] = []
    while len(removed) < weight.shape[1]:
        costs = {j: removal_cost(weight, h, removed + [j]) for j in range(weight.shape[1]) if j not in removed}
        removed.append(min(costs, key=costs.get))
    return removed


HIDDEN, TOKENS = 6, 40


def layer(generator: torch.Generator, width: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A down_proj input over TOKENS tokens and a down_proj weight, float64. The inputs are correlated, so that
    compensation matters: a neuron another one can stand in for is cheap to remove."""
    mix = torch.randn(width, width, generator=generator, dtype=torch.float64)
    h = torch.randn(TOKENS, width, generator=generator, dtype=torch.float64) @ mix
    return h, torch.randn(HIDDEN, width, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_obs_removes_neurons_in_the_order_exact_least_squares_gives(seed):
    h, weight = layer(torch.Generator().manual_seed(seed))
    scores = obs(weight.float(), (h.T @ h).float(), group=1)
    expected = greedy_order(weight, h)
    assert rank(scores).flip(0).tolist() == expected  # the first removed ranks last
    # and not what ignoring compensation would give: the plain cost ||W_:,j||^2 G_jj orders them otherwise
    plain = (weight.square().sum(dim=0) * (h.T @ h).diagonal()).argsort().tolist()
    assert plain != expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_obs_fisher_removes_neurons_in_the_order_exact_least_squares_gives_in_the_fishers_metric(seed):
    generator = torch.Generator().manual_seed(seed)
    h, weight = layer(generator)
    # an output metric far from the identity: the model cares about some output directions much more than others
    grads = torch.randn(TOKENS, HIDDEN, generator=generator, dtype=torch.float64) * torch.logspace(0, 2, HIDDEN)
    fisher = grads.T @ grads
    scores = obs(weight.float(), (h.T @ h).float(), group=1, fisher=fisher.float())
    expected = greedy_order(torch.linalg.cholesky(fisher).T @ weight, h)
    assert rank(scores).flip(0).tolist() == expected
    assert greedy_order(weight, h) != expected  # the Fisher changes the order: without it the test proves nothing


def test_groups_remove_the_cheapest_neurons_of_each_step_together(seed=3):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(50, 12, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    scores = obs(weight.float(), (h.T @ h).float(), group=4)
    first = set(rank(scores).flip(0)[:4].tolist())
    singles = {j: removal_cost(weight, h, [j]) for j in range(12)}
    assert first == set(sorted(singles, key=singles.get)[:4])


def test_obs_is_a_criterion_of_a_build(tmp_path, tiny_dir):
    text = tmp_path / "calibration.txt"
    text.write_text(words(7, 400))
    settings = PruneSettings(
        "obs", calibration=CalibrationSettings(text=text, max_tokens=300, window=50), recovery=RecoverySettings()
    )
    family = tmp_path / "fam"
    build_family(open_source(str(tiny_dir("llama"))), family, [Target("size", "40")], settings)
    member = next(p for p in family.iterdir() if p.is_dir())
    assert json.loads((member / "hubprune.json").read_text())["criterion"] == "obs"


def test_obs_fisher_is_a_criterion_of_a_build_and_needs_the_model_in_memory(tmp_path, tiny_dir):
    text = tmp_path / "calibration.txt"
    text.write_text(words(7, 400))
    calibration = CalibrationSettings(text=text, max_tokens=300, window=50)
    settings = PruneSettings("obs-fisher", calibration=calibration, recovery=RecoverySettings())
    family = tmp_path / "fam"
    build_family(open_source(str(tiny_dir("llama"))), family, [Target("size", "40")], settings)
    record = json.loads((next(p for p in family.iterdir() if p.is_dir()) / "hubprune.json").read_text())
    assert record["criterion"] == "obs-fisher"
    assert record["calibration"]["output_fisher"].startswith("every window, one next token drawn per position")
    with pytest.raises(CriterionError, match="leave out `max_memory`, or choose criterion obs"):
        build_family(
            open_source(str(tiny_dir("llama"))),
            tmp_path / "capped",
            [Target("size", "40")],
            settings,
            RuntimeSettings(max_memory=10**6),
        )
    assert not (tmp_path / "capped").exists()


def test_check_criteria_compares_obs_fisher(tmp_path, tiny_dir):
    from click.testing import CliRunner

    from hubprune.cli import main

    calibration, held_out = tmp_path / "calibration.txt", tmp_path / "held-out.txt"
    calibration.write_text(words(7, 2000))  # three windows of 512 tokens: the Gram matrices hold one out
    held_out.write_text(words(8, 300))
    args = ["check-criteria", str(tiny_dir("llama")), "--text", str(held_out), "--pcts", "25", "--seeds", "1"]
    result = CliRunner().invoke(main, [*args, "--criteria", "obs,obs-fisher,random", "--calibration", str(calibration)])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines() if line.startswith("obs")]
    assert rows == ["obs", "obs-fisher"]
