"""The medians and p90s a profile reports, against numpy's percentiles of the same samples.

The runs come from test_profile_timing's fake model and clock, on a machine that slows down faster and faster as
it runs (each call's every cost multiplied by a growing factor): every figure's samples then spread unevenly, so
that the p90 lies far from the median and a p90 computed as any other statistic lands on another number. Nothing
here reads the wall clock (house rule 9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_profile_timing import NEW, PREFILL, SETUP, FakeClock, FakeModel

from hubprune.measure import efficiency
from hubprune.measure.efficiency import ProfileSettings, _profile_batch
from hubprune.measure.energy import EnergySource
from hubprune.measure.profile import _merge_batch

RUNS = 10
FIGURES = {  # each figure's samples, from the runs it is computed from
    "ttft": lambda run: run["ttft_s"],
    "decode_throughput": lambda run: run["decode_tokens"] / run["decode_s"],
    "e2e_latency": lambda run: run["e2e_s"],
}


def slowdown(call: int, pace: float) -> float:
    """How much slower than the fake model's costs the `call`-th generate() (from 0, warm-up included) runs."""
    return pace * (1 + call**3 / 64)


class SlowingModel(FakeModel):
    """The fake model on a machine that slows down: every cost of its k-th call is slowdown(k, pace) times the
    fake model's."""

    def __init__(self, clock: FakeClock, pace: float) -> None:
        super().__init__(clock)
        self.pace = pace

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        advance, factor = self.clock.advance, slowdown(self.calls, self.pace)
        self.clock.advance = lambda seconds: advance(seconds * factor)
        try:
            return super().generate(input_ids, **kwargs)
        finally:
            self.clock.advance = advance


def profiled(monkeypatch, pace: float = 1.0) -> dict[str, Any]:
    """One batch size of one sequence: one warm-up run, then RUNS timed runs."""
    clock = FakeClock()
    monkeypatch.setattr(efficiency, "_now", clock)
    settings = ProfileSettings(
        device="cpu", batch_sizes=(1,), new_tokens=NEW, min_seconds=0.0, min_runs=RUNS, warmup_runs=1, energy="off"
    )
    energy = EnergySource(None, "unavailable", "not measured here")
    return _profile_batch(SlowingModel(clock, pace), torch.arange(5, 11), 1, settings, energy)


def assert_numpys_percentiles(batch: dict[str, Any]) -> None:
    for key, sample in FIGURES.items():
        samples = [sample(run) for run in batch["runs"]]
        figure = batch[key]
        assert figure["samples"] == pytest.approx(samples), key
        assert figure["median"] == pytest.approx(float(np.percentile(samples, 50))), key
        assert figure["p90"] == pytest.approx(float(np.percentile(samples, 90))), key  # numpy's default: linear
        assert abs(figure["p90"] - figure["median"]) > 0.1 * figure["median"], key  # the spread the test relies on


def test_one_rounds_median_and_p90_are_numpys(monkeypatch):
    batch = profiled(monkeypatch)
    assert batch["timed_runs"] == RUNS
    ttft = [run["ttft_s"] for run in batch["runs"]]  # runs 1..10 after the warm-up (call 0)
    assert ttft == [pytest.approx((SETUP + PREFILL) * slowdown(call, 1.0)) for call in range(1, RUNS + 1)]
    # by hand: the 10 values are increasing, so the median is halfway between the 5th and 6th, and the p90 lies
    # at rank 0.9 x 9 = 8.1 (from 0), a tenth of the way from the 9th to the 10th
    assert batch["ttft"]["median"] == pytest.approx((ttft[4] + ttft[5]) / 2)
    assert batch["ttft"]["p90"] == pytest.approx(ttft[8] + 0.1 * (ttft[9] - ttft[8]))
    assert_numpys_percentiles(batch)


def test_pooled_rounds_median_and_p90_are_numpys_over_every_run(monkeypatch):
    """Two rounds (each a fresh process in a real profile), the second on a slower machine: the pooled figures are
    the percentiles of all twenty runs, not one round's, nor a figure of the rounds' figures."""
    rounds = [profiled(monkeypatch), profiled(monkeypatch, pace=1.5)]
    pooled = _merge_batch(rounds)
    assert pooled["timed_runs"] == 2 * RUNS and [run["round"] for run in pooled["runs"]] == [1] * RUNS + [2] * RUNS
    assert_numpys_percentiles(pooled)
    for key in FIGURES:
        assert pooled[key]["p90"] not in [pytest.approx(r[key]["p90"]) for r in rounds], key
