"""Width arithmetic: the paper's sizes, exact decimals, rounding, and refusals."""

from __future__ import annotations

import pytest

from hubprune.errors import TargetError
from hubprune.pruning.plan import PAPER_PCTS, ModelShape, Target, parse_targets, plan_family, width_for

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192)
PAPER_WIDTHS = [7373, 6554, 5735, 4916, 4096, 3277]  # arXiv 2512.22671, 10..60 %


def test_paper_percentages_give_the_paper_widths():
    assert [width_for(Target("pct", p), **LLAMA_1B) for p in PAPER_PCTS] == PAPER_WIDTHS


def test_paper_ratios_give_the_same_widths():
    ratios = ["3.6", "3.2", "2.8", "2.4", "2.0", "1.6"]
    assert [width_for(Target("ratio", r), **LLAMA_1B) for r in ratios] == PAPER_WIDTHS


def test_ratio_is_exact_for_decimal_input():
    assert width_for(Target("ratio", "2.4"), **LLAMA_1B) == 4916  # ceil(4915.2), no float drift
    assert (
        width_for(Target("ratio", "0.29"), hidden_size=100, intermediate_size=400) == 29
    )  # 0.29*100 in float is 28.999...


def test_percentage_uses_exact_floor():
    assert width_for(Target("pct", "29"), hidden_size=10, intermediate_size=100) == 71  # floor(29) not floor(28.999...)


def test_multiple_of_rounds_to_nearest_with_halves_up():
    assert width_for(Target("ratio", "2.4"), **LLAMA_1B, multiple_of=64) == 4928  # 4916/64 = 76.8 -> 77
    assert width_for(Target("size", "96"), **LLAMA_1B, multiple_of=64) == 128  # 1.5 -> 2
    assert width_for(Target("size", "95"), **LLAMA_1B, multiple_of=64) == 64


@pytest.mark.parametrize(
    "target, fragment",
    [
        (Target("ratio", "4.0"), "below the current width"),
        (Target("ratio", "5"), "below the current width"),
        (Target("ratio", "0"), "must be positive"),
        (Target("ratio", "-1"), "must be positive"),
        (Target("size", "8192"), "below the current width"),
        (Target("size", "0"), "at least 1"),
        (Target("pct", "0"), "between 0 and 100"),
        (Target("pct", "100"), "between 0 and 100"),
    ],
)
def test_widths_outside_one_to_n_are_refused(target, fragment):
    with pytest.raises(TargetError, match=fragment):
        width_for(target, **LLAMA_1B)


def test_rounding_to_zero_is_refused():
    with pytest.raises(TargetError, match="after rounding to a multiple of 64"):
        width_for(Target("size", "20"), **LLAMA_1B, multiple_of=64)


@pytest.mark.parametrize(
    "text, fragment",
    [("2.4,abc", "not a number"), ("", "not a number"), ("2.4,2.4", "given twice"), ("nan", "not a finite number")],
)
def test_bad_target_lists_are_refused(text, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_targets("ratio", text)


def test_sizes_must_be_whole():
    with pytest.raises(TargetError, match="whole number"):
        parse_targets("size", "100.5")


SHAPE = ModelShape(
    hidden_size=2048,
    intermediate_size=8192,
    num_layers=16,
    params_total=1_235_814_400,
    params_mlp=805_306_368,
    weight_bytes=2_471_628_800,
    params_per_neuron=16 * 3 * 2048,
    bytes_per_neuron=16 * 3 * 2048 * 2,
)


def test_family_plan_matches_the_paper_parameter_counts():
    plan = plan_family("Llama-3.2-1B", SHAPE, parse_targets("pct", ",".join(PAPER_PCTS)))
    assert [m.intermediate_size for m in plan.members] == PAPER_WIDTHS
    assert [round(m.params_total / 1e6, 2) for m in plan.members] == [1155.30, 1074.79, 994.28, 913.77, 833.16, 752.65]
    assert [m.name for m in plan.members][:2] == ["Llama-3.2-1B-er3.6", "Llama-3.2-1B-er3.2"]


def test_two_targets_with_the_same_width_are_refused():
    with pytest.raises(TargetError, match="both give intermediate size 4916"):
        plan_family("m", SHAPE, [Target("ratio", "2.4"), Target("size", "4916")])


def test_names_fall_back_to_widths_when_ratios_collide():
    plan = plan_family("m", SHAPE, [Target("size", "4916"), Target("size", "4917")])
    assert [m.name for m in plan.members] == ["m-i4917", "m-i4916"]
