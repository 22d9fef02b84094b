"""Which moments each profile figure spans, checked against a fake clock instead of samples the profiler made.

A fake model's generate() follows transformers' streamer protocol (the prompt is handed over first, then one
put per decoding step with one token per sequence, then end()) and moves a fake clock forward by known costs;
an energy counter draws constant power on the same clock. Every figure then has one exact expected value:
TTFT = SETUP + PREFILL, decode time = (new - 1) x STEP + TAIL, energy = power x the timed runs' time only.
Nothing here reads the wall clock (house rule 9).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hubprune.measure import efficiency
from hubprune.measure.efficiency import ProfileSettings, _profile_batch
from hubprune.measure.energy import EnergySource

# Costs in fake seconds, powers of two so the clock's sums are exact, and all different, so that a figure
# spanning the wrong moments lands on a different number.
SETUP = 2**-6  # from the generate() call to handing over the prompt (before prefill starts)
PREFILL = 2**-2  # prefill and the first step: from the prompt to the first generated tokens
STEP = 2**-5  # each later decoding step
TAIL = 2**-8  # after the last token, until generate() returns
WATTS = 40.0
BATCH = 3  # > 1, so tokens and decoding steps differ
NEW = 4
RUN = SETUP + PREFILL + (NEW - 1) * STEP + TAIL  # one whole generate() call


class FakeClock:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


class PowerMeter:
    """An energy counter at constant power on the fake clock: joules = WATTS x fake seconds since zero."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def read_joules(self) -> float:
        return WATTS * self.clock()


class FakeModel:
    """generate() as transformers streams it, with each stage costing a known time on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0

    def generate(self, input_ids: torch.Tensor, *, attention_mask: Any, generation_config: Any, streamer: Any):
        new = generation_config.max_new_tokens
        assert generation_config.min_new_tokens == new and generation_config.eos_token_id is None
        self.calls += 1
        self.clock.advance(SETUP)
        streamer.put(input_ids)  # transformers hands over the prompt before prefill
        steps = []
        for step in range(new):
            self.clock.advance(PREFILL if step == 0 else STEP)
            tokens = torch.full((input_ids.shape[0],), 7, dtype=torch.long)  # one token per sequence
            streamer.put(tokens)
            steps.append(tokens)
        streamer.end()
        self.clock.advance(TAIL)
        return torch.cat([input_ids, torch.stack(steps, dim=1)], dim=1)


def profile(monkeypatch, **overrides: Any) -> tuple[dict[str, Any], FakeModel]:
    """One batch size profiled on the fake model and clock, with a power meter as its energy counter."""
    clock = FakeClock()
    monkeypatch.setattr(efficiency, "_now", clock)
    model = FakeModel(clock)
    options = dict(device="cpu", batch_sizes=(BATCH,), new_tokens=NEW, min_seconds=0.0, min_runs=3, warmup_runs=2)
    settings = ProfileSettings(**{**options, **overrides, "energy": "off"})
    energy = EnergySource("fake", "measured", "constant power on the fake clock", PowerMeter(clock))
    prompt = torch.arange(5, 11)
    return _profile_batch(model, prompt, BATCH, settings, energy), model


def test_ttft_runs_from_the_generate_call_to_the_first_generated_token(monkeypatch):
    batch, _ = profile(monkeypatch)
    # Not from the prompt's hand-over (PREFILL alone), nor to the second token (+ STEP).
    assert [run["ttft_s"] for run in batch["runs"]] == [pytest.approx(SETUP + PREFILL)] * 3
    assert batch["ttft"]["median"] == pytest.approx(SETUP + PREFILL)
    assert [run["e2e_s"] for run in batch["runs"]] == [pytest.approx(RUN)] * 3


def test_decode_time_spans_first_token_to_the_end_over_the_tokens_after_the_first(monkeypatch):
    batch, _ = profile(monkeypatch)
    for run in batch["runs"]:
        assert run["decode_s"] == pytest.approx((NEW - 1) * STEP + TAIL)
        assert run["decode_tokens"] == BATCH * (NEW - 1)
        assert run["generated_tokens"] == BATCH * NEW
    rate = BATCH * (NEW - 1) / ((NEW - 1) * STEP + TAIL)
    assert batch["decode_throughput"]["samples"] == [pytest.approx(rate)] * 3
    assert batch["decode_throughput"]["median"] == pytest.approx(rate)


def test_energy_per_token_counts_the_timed_runs_and_not_the_warm_up(monkeypatch):
    batch, model = profile(monkeypatch, warmup_runs=2, min_runs=3)
    assert model.calls == 2 + 3 and batch["warmup_runs"] == 2 and batch["timed_runs"] == 3
    energy = batch["energy_per_token"]
    assert batch["timed_window_s"] == energy["window_s"] == pytest.approx(3 * RUN)
    assert energy["joules"] == pytest.approx(WATTS * 3 * RUN)  # warm-up included would be 5 runs' worth
    assert energy["tokens"] == 3 * BATCH * NEW
    assert energy["value"] == pytest.approx(WATTS * RUN / (BATCH * NEW))
    assert energy["mean_power_w"] == pytest.approx(WATTS)
    assert (energy["method"], energy["source"], energy["unit"]) == ("measured", "fake", "J/token")


def test_timed_runs_go_on_until_min_seconds_have_passed_on_the_clock(monkeypatch):
    batch, model = profile(monkeypatch, warmup_runs=1, min_runs=1, min_seconds=2.5 * RUN)
    assert batch["timed_runs"] == len(batch["runs"]) == 3 and model.calls == 1 + 3
    assert batch["timed_window_s"] == pytest.approx(3 * RUN)
