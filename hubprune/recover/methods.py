"""The registry of recovery methods: one entry per method, each the name `--recover` takes and the functions of
its own module. Adding a method is one module and one entry here.

A method acts in one of two phases of a build:
- "pass": before the streaming pass, from the calibration's statistics; it changes what the pass writes for the
  kept neurons (refit: down_proj's kept columns). Such methods run first.
- "member": on the member once it is written (or, in check-criteria, on the pruned model in memory); it trains
  the member (distill, reconstruct). They run in the order given, after every pass method.

What a method's module provides, by phase (apply.py calls them):
- pass: `member_updates(inputs: PassInputs, kept) -> Refits`, the update of the kept down_proj columns of every
  layer for one member width, and its record;
- member: `recover_folder(folder, teacher, settings, roles, run) -> record` on a member on disk (written back in
  place), `recover_model(student, teacher, settings, roles, run) -> record` on a pruned model in memory, and
  `describe(settings) -> str`, the line said before it runs on a member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubprune.errors import CriterionError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help
    phase: str  # "pass" or "member"
    reads_calibration: bool  # reads the calibration data (its statistics, or with runs_model its windows)
    record_key: str  # the key of its record in the member's hubprune.json
    module: str  # the module that does the work (imported when used: methods.py stays cheap to import)
    runs_model: bool = False  # runs the loaded model over the calibration windows (else: reads Gram matrices)

    def load(self) -> Any:
        import importlib

        return importlib.import_module(self.module)


METHODS = {
    method.name: method
    for method in (
        Method(
            "refit",
            "training-free least-squares refit of down_proj's kept columns on the calibration text (ridge toward "
            "the original columns, chosen on held-out windows)",
            "pass",
            True,
            "recovery",
            "hubprune.recover.refit",
        ),
        Method(
            "sequential",
            "the refit done layer by layer in order, each layer fitted on the inputs the member's own pruned and "
            "refit layers below give it (no training; about 2 forward passes over the calibration per width)",
            "pass",
            True,
            "recovery",
            "hubprune.recover.sequential",
            runs_model=True,
        ),
        Method(
            "distill",
            "train the MLP to the base's next-token distributions (KL) on text the base generates",
            "member",
            False,
            "distillation",
            "hubprune.recover.distill",
        ),
        Method(
            "reconstruct",
            "train each pruned MLP (gate, up, down), layer by layer in order, to give the unpruned MLP's outputs on "
            "the member's own inputs, on the calibration windows (the best held-out weights kept)",
            "member",
            True,
            "reconstruction",
            "hubprune.recover.reconstruct",
            runs_model=True,
        ),
    )
}
NONE = "none"
SEPARATOR = "+"


def parse_steps(text: str) -> tuple[str, ...]:
    """'refit+distill' -> ('refit', 'distill'); 'none' -> (); CriterionError for an unknown or misplaced step."""
    if text.strip() == NONE:
        return ()
    return check_steps(tuple(part.strip() for part in text.split(SEPARATOR)))


def check_steps(steps: tuple[str, ...]) -> tuple[str, ...]:
    choices = f"{NONE}, or {', '.join(METHODS)} joined by {SEPARATOR} (e.g. refit+distill)"
    for step in steps:
        if step not in METHODS:
            raise CriterionError(f"unknown recovery {step!r}: choose {choices}")
    if len(set(steps)) != len(steps):
        raise CriterionError(f"recovery {SEPARATOR.join(steps)} names a step twice: give each step once")
    if len(of_phase(steps, "pass")) > 1:  # the pass writes one update of the kept columns per layer
        raise CriterionError(
            f"recovery {SEPARATOR.join(steps)} has two steps that change the pass "
            f"({', '.join(_of_phase('pass'))}): give one"
        )
    phases = [METHODS[step].phase for step in steps]
    if phases != sorted(phases, key=lambda phase: phase != "pass"):
        raise CriterionError(
            f"recovery {SEPARATOR.join(steps)}: a step that changes the pass ({', '.join(_of_phase('pass'))}) "
            "comes before the steps that train the written member: reorder them"
        )
    return steps


def label(steps: tuple[str, ...]) -> str:
    return SEPARATOR.join(steps) or NONE


def of_phase(steps: tuple[str, ...], phase: str) -> list[Method]:
    return [METHODS[step] for step in steps if METHODS[step].phase == phase]


def _of_phase(phase: str) -> list[str]:
    return [name for name, method in METHODS.items() if method.phase == phase]


def help_text() -> str:
    """The --recover help: every method and what it does."""
    described = "; ".join(f"{name} = {method.summary}" for name, method in METHODS.items())
    return f"After pruning, these steps joined by {SEPARATOR}: {described}; {NONE} = the kept columns as they are."
