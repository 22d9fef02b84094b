"""From what the user asks for (ratios, percentages or sizes) to a FamilyPlan. Pure: no I/O.

Widths use exact decimal arithmetic so that "2.4" with hidden 2048 gives ceil(4915.2) = 4916 on every machine,
never 4915 or 4917 through binary floating point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from hubprune.errors import TargetError

TargetKind = Literal["ratio", "pct", "size"]
PAPER_PCTS = ("10", "20", "30", "40", "50", "60")  # arXiv 2512.22671: 10..60 % of the MLP width removed


@dataclass(frozen=True)
class Target:
    """One requested member width, kept as the user wrote it."""

    kind: TargetKind
    value: str  # decimal text, e.g. "2.4", "10", "4096"

    def describe(self) -> str:
        return {"ratio": f"ratio {self.value}", "pct": f"{self.value}% pruned", "size": f"size {self.value}"}[self.kind]


@dataclass(frozen=True)
class ModelShape:
    """What planning needs to know about the source model, taken from its config and tensor layout."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    params_total: int
    params_mlp: int
    weight_bytes: int
    params_per_neuron: int  # parameters one neuron owns across all layers (gate row, up row, down column, biases)
    bytes_per_neuron: int


@dataclass(frozen=True)
class MemberPlan:
    """One member of the family: its name, how its width was asked for, and what it will weigh."""

    name: str
    target: Target
    intermediate_size: int
    ratio: float  # intermediate_size / hidden_size
    params_total: int
    params_mlp: int
    weight_bytes: int


@dataclass(frozen=True)
class FamilyPlan:
    base_name: str
    shape: ModelShape
    multiple_of: int | None
    members: tuple[MemberPlan, ...]


def parse_targets(kind: TargetKind, text: str) -> list[Target]:
    """'2.4,2.0' -> [Target('ratio', '2.4'), Target('ratio', '2.0')], refusing non-numbers and repeats."""
    option = {"ratio": "`ratios`", "pct": "`pcts`", "size": "`sizes`"}[kind]
    targets: list[Target] = []
    for item in (part.strip() for part in text.split(",")):
        value = _decimal(item, option)
        if kind == "size" and value != value.to_integral_value():
            raise TargetError(f"{option}: {item!r} is not a whole number of neurons: give integers like 4096")
        normalized = str(int(value)) if kind == "size" else item
        target = Target(kind, normalized)
        if target in targets:
            raise TargetError(f"{option}: {item!r} is given twice: list each width once")
        targets.append(target)
    return targets


def _decimal(item: str, option: str) -> Decimal:
    try:
        value = Decimal(item)
    except InvalidOperation:
        raise TargetError(
            f"{option}: {item!r} is not a number: give numbers separated by commas, like 3.6,2.4"
        ) from None
    if not value.is_finite():
        raise TargetError(f"{option}: {item!r} is not a finite number")
    return value


def width_for(target: Target, *, hidden_size: int, intermediate_size: int, multiple_of: int | None = None) -> int:
    """The intermediate size k a target asks for, checked to satisfy 1 <= k < intermediate_size.

    ratio r:       k = ceil(r * hidden_size)
    percentage p:  k = n - min(floor(p * n / 100), n - 1)   (the paper's rule, optipfair's too)
    size:          k as given
    multiple_of N: k rounded to the nearest multiple of N, halves up.
    """
    n = intermediate_size
    value = Decimal(target.value)
    if target.kind == "ratio":
        if value <= 0:
            raise TargetError(
                f"{target.describe()} must be positive: expansion ratios are intermediate/hidden, e.g. 2.4"
            )
        k = math.ceil(value * hidden_size)
    elif target.kind == "pct":
        if not 0 < value < 100:
            raise TargetError(f"{target.describe()}: a pruning percentage must be between 0 and 100 (exclusive)")
        k = n - min(math.floor(value * n / 100), n - 1)
    else:
        k = int(value)
    if multiple_of is not None:
        k = (2 * k + multiple_of) // (2 * multiple_of) * multiple_of
    if not 1 <= k < n:
        current = f"the current width is {n} (ratio {Decimal(n) / hidden_size:.4g})"
        rounded = f" after rounding to a multiple of {multiple_of}" if multiple_of else ""
        raise TargetError(
            f"{target.describe()} gives intermediate size {k}{rounded}, but it must be at least 1 and below the "
            f"current width: {current}; choose a smaller model width"
        )
    return k


def member_name(base_name: str, intermediate_size: int, hidden_size: int) -> str:
    """'<base>-er2.4' for intermediate/hidden = 2.4004: the expansion ratio is the family's knob."""
    ratio = f"{intermediate_size / hidden_size:.2f}".rstrip("0").rstrip(".")
    return f"{base_name}-er{ratio}"


def plan_family(
    base_name: str, shape: ModelShape, targets: list[Target], *, multiple_of: int | None = None
) -> FamilyPlan:
    """Every member's width, name and size, ordered from widest to narrowest; all checked before any write."""
    if not targets:
        raise TargetError("no widths given: give `ratios`, `pcts` or `sizes`")
    if multiple_of is not None and multiple_of < 1:
        raise TargetError(f"`multiple_of` {multiple_of}: must be a positive integer, e.g. 64")
    by_width: dict[int, Target] = {}
    for target in targets:
        k = width_for(
            target, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, multiple_of=multiple_of
        )
        if k in by_width:
            raise TargetError(
                f"{by_width[k].describe()} and {target.describe()} both give intermediate size {k}: drop one"
            )
        by_width[k] = target
    names = {k: member_name(base_name, k, shape.hidden_size) for k in by_width}
    if len(set(names.values())) < len(names):  # two widths round to the same 2-decimal ratio
        names = {k: f"{base_name}-i{k}" for k in by_width}
    members = []
    for k in sorted(by_width, reverse=True):
        removed = shape.intermediate_size - k
        members.append(
            MemberPlan(
                name=names[k],
                target=by_width[k],
                intermediate_size=k,
                ratio=k / shape.hidden_size,
                params_total=shape.params_total - removed * shape.params_per_neuron,
                params_mlp=shape.params_mlp - removed * shape.params_per_neuron,
                weight_bytes=shape.weight_bytes - removed * shape.bytes_per_neuron,
            )
        )
    return FamilyPlan(base_name=base_name, shape=shape, multiple_of=multiple_of, members=tuple(members))
