"""Command-line options, declared once from the library's settings dataclasses.

Each stage's settings (EvalSettings, ProfileSettings, CardSettings, PruneSettings) become options through one
decorator, which gives the command a ready settings object instead of loose keyword arguments; the defaults
shown in --help are the dataclasses' own. Options carry the stage they belong to, and StagedCommand groups
--help by stage. Sizes and comma lists are Click parameter types, so bad values are refused by Click itself.
(The same shape as mergekit's options.py and huggingface_hub's cli/_cli_utils.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hubprune.errors import HubpruneError
from hubprune.measure.efficiency import ProfileSettings
from hubprune.measure.evaluate import EvalSettings
from hubprune.pruning.calibrate import CalibrationSettings, calibration_text
from hubprune.publish.cards import CardSettings
from hubprune.recover.distill import DistillSettings
from hubprune.texts import read_text

# --- parameter types --------------------------------------------------------------------------------------------


class Bytes(int):
    """A number of bytes that remembers how it was written ('5GiB'), to write the command line back."""

    text: str

    def __new__(cls, count: int, text: str) -> Bytes:
        value = super().__new__(cls, count)
        value.text = text
        return value

    def __str__(self) -> str:
        return self.text


class ByteSize(click.ParamType):
    """'5GiB', '500MB', '2048' -> a number of bytes."""

    name = "size"
    UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).upper() not in self.UNITS:
            self.fail(f"{value!r} is not a size: use e.g. 5GB, 500MB or 2GiB", param, ctx)
        count = int(float(match.group(1)) * self.UNITS[match.group(2).upper()])
        if count < 1:
            self.fail(f"{value!r} is not a positive size (at least one byte): use e.g. 5GB, 500MB or 2GiB", param, ctx)
        return Bytes(count, str(value))


class TextFile(click.ParamType):
    """A text file, read once as the option is parsed by the library's own `check`, so that an unreadable or
    unusable text is refused before anything is loaded or written; the command gets the path."""

    name = "file"

    def __init__(self, check: Callable[[Path], object]) -> None:
        self.check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        try:
            self.check(path)
        except HubpruneError as exc:
            self.fail(str(exc), param, ctx)
        return path


def _calibration_file(path: Path) -> object:
    return calibration_text(CalibrationSettings(text=path))


def _held_out_file(path: Path) -> object:
    return read_text(path, "held-out text")


def _distill_file(path: Path) -> object:
    return DistillSettings(text=path).identity()


CALIBRATION_FILE = TextFile(_calibration_file)
DISTILL_FILE = TextFile(_distill_file)
HELD_OUT_FILE = TextFile(_held_out_file)


class CommaList(click.ParamType):
    """'a, b' -> ('a', 'b'); with `whole_numbers`, '1,8' -> (1, 8), each a whole number."""

    def __init__(self, what: str, *, whole_numbers: bool = False) -> None:
        self.name = what
        self.whole_numbers = whole_numbers

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        items = tuple(part.strip() for part in str(value).split(",") if part.strip())
        if not self.whole_numbers:
            return items
        for item in items:
            if not re.fullmatch(r"\d+", item):
                self.fail(
                    f"{item!r} is not a whole number: give whole numbers separated by commas, e.g. 1,8", param, ctx
                )
        return tuple(int(item) for item in items)


# --- options grouped by stage in --help ---------------------------------------------------------------------------


class StageOption(click.Option):
    """An option that knows which stage of the job it sets, for the grouped --help."""

    def __init__(self, *args: Any, stage: str = "general", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage


STAGE_TITLES = {
    "general": "Options",
    "widths": "Widths (give one)",
    "prune": "Pruning",
    "check": "Criteria check",
    "eval": "Benchmarks (eval stage)",
    "runtime": "Eval and profile",
    "profile": "Efficiency (profile stage)",
    "card": "Model cards",
}


class StagedCommand(click.Command):
    """A command whose --help lists its options under one heading per stage, in STAGE_TITLES order."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, "stage", "general"), []).append(record)
        for stage in sorted(groups, key=lambda s: list(STAGE_TITLES).index(s) if s in STAGE_TITLES else 0):
            with formatter.section(STAGE_TITLES.get(stage, stage)):
                formatter.write_dl(groups[stage])


def option(*decls: str, stage: str = "general", **kwargs: Any) -> Callable[..., Any]:
    return click.option(*decls, cls=StageOption, stage=stage, **kwargs)


# --- settings dataclasses -> options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """How one settings field appears on the command line."""

    help: str
    type: Any = None  # a Click type; None: the type of the field's default
    flag: str | None = None  # default: --field-name


DEVICE_FIELDS = {
    "device": Field("auto (cuda when torch sees a GPU, else cpu), cpu or cuda."),
}
EVAL_FIELDS = {
    "suite": Field(
        "Built-in suite (paper, quick, offline) or a suite YAML; auto: offline for the embedded default, with "
        "HF_HUB_OFFLINE set, or where the Hub does not answer (one quick request finds out), else paper."
    ),
    "tasks": Field("Only these lm-eval tasks, comma-separated.", CommaList("tasks")),
    "include_paths": Field(
        "Folder of local lm-eval task YAMLs (run with the Hub off); repeat for several.",
        click.Path(path_type=Path),
        "--include-path",
    ),
    "limit": Field("At most N documents per task (indicative results).", int),
    "batch_size": Field("auto (4 on a CPU, lm-eval's search on a GPU) or a positive integer."),
    **DEVICE_FIELDS,
    "dtype": Field("auto (bfloat16 on GPU, float32 on CPU), bfloat16 or float32."),
    "backend": Field("hf, or vllm (the vllm extra)."),
    "tensor_parallel_size": Field("vLLM tensor parallelism."),
    "data_parallel_size": Field("vLLM data parallelism."),
}
PROFILE_FIELDS = {
    **DEVICE_FIELDS,
    "dtype": Field("auto (as the checkpoint stores it), float32 or bfloat16."),
    "batch_sizes": Field("Batch sizes to profile, comma-separated.", CommaList("sizes", whole_numbers=True)),
    "prompt_tokens": Field("Prompt length (tokens)."),
    "new_tokens": Field("Generated tokens per sequence."),
    "min_seconds": Field("Least timed seconds per batch size, all rounds together."),
    "rounds": Field("Fresh processes per model, the models taking turns; the figures pool them."),
    "energy": Field("auto, nvml, rapl, codecarbon (an estimate) or off."),
}
# build-family runs eval and profile on one device in one dtype: one option each, whose help says what auto
# means for each stage.
SHARED_RUNTIME_FIELDS = {
    **DEVICE_FIELDS,
    "dtype": Field(
        "auto, bfloat16 or float32. auto: eval in bfloat16 on GPU and float32 on CPU; profile in the dtype the "
        "checkpoint stores."
    ),
}
CARD_FIELDS = {
    "namespace": Field("Hub user or organisation the members are published under (repo ids in the cards)."),
    "license": Field("Hub licence id of the base (e.g. apache-2.0), when not found."),
    "license_name": Field("With --license other: the licence's name."),
    "license_link": Field("With --license other: its URL (or LICENSE file)."),
    "base_model": Field("Hub id of the base, when the source is a local folder."),
    "template_dir": Field(
        "Folder of card templates that replace the built-in ones of the same name.", click.Path(path_type=Path)
    ),
}
SETTINGS_FIELDS: dict[type, dict[str, Field]] = {
    EvalSettings: EVAL_FIELDS,
    ProfileSettings: PROFILE_FIELDS,
    CardSettings: CARD_FIELDS,
}


def flag_of(name: str, spec: Field) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def settings_options(
    cls: type, stage: str, into: str, *, shared: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an option for every exposed field of the settings dataclass `cls` and hand the command one `cls`
    instance as the keyword argument `into`. Fields named in `shared` get no option here: their value comes from
    an option another decorator declares (shared_runtime_options), which must be applied below this one."""
    fields = SETTINGS_FIELDS[cls]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs[name] if name in shared else kwargs.pop(name) for name in fields}
            values = {name: value for name, value in values.items() if value is not None or defaults[name] is None}
            if "include_paths" in values:
                values["include_paths"] = tuple(values["include_paths"])
            kwargs[into] = cls(**values)
            return func(*args, **kwargs)

        for name, spec in reversed(list(fields.items())):
            if name not in shared:
                wrapper = _field_option(name, spec, defaults[name], stage)(wrapper)
        return wrapper

    return decorator


def shared_runtime_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--device and --dtype once, for both eval and profile (see SHARED_RUNTIME_FIELDS)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in SHARED_RUNTIME_FIELDS:
            kwargs.pop(name)
        return func(*args, **kwargs)

    for name, spec in reversed(list(SHARED_RUNTIME_FIELDS.items())):
        wrapper = _field_option(name, spec, "auto", "runtime")(wrapper)
    return wrapper


def _field_option(name: str, spec: Field, default: Any, stage: str) -> Callable[..., Any]:
    multiple = isinstance(default, tuple) and spec.type is not None and not isinstance(spec.type, CommaList)
    shown = ",".join(str(v) for v in default) if isinstance(default, tuple) and default else default
    return option(
        flag_of(name, spec),
        name,
        stage=stage,
        type=spec.type,
        multiple=multiple,
        default=None if multiple or default is None else shown,
        show_default=default is not None and default != (),
        help=spec.help,
    )


eval_options = settings_options(EvalSettings, "eval", "eval_settings")
profile_options = settings_options(ProfileSettings, "profile", "profile_settings")
card_options = settings_options(CardSettings, "card", "card_settings")


def typed_command() -> str:
    """The running command with the options the user gave (defaults left out), for the cards' reproducibility
    section. Rebuilt from Click's parse, not sys.argv, so it is the same however the command was invoked."""
    ctx = click.get_current_context()
    parts = ["hubprune", ctx.info_name or ""]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        value = ctx.params.get(param.name or "")
        if source not in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            continue
        if isinstance(param, click.Argument):
            parts += [] if value is None else [str(value)]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts += [flag] if value else [*param.secondary_opts[:1]]
        elif getattr(param, "multiple", False):
            parts += [word for item in value or () for word in (flag, str(item))]
        elif value is not None:
            parts += [flag, _as_typed(value)]
    return shlex.join(parts)


def _as_typed(value: Any) -> str:
    """A parsed value written back as the user typed it: comma lists joined again."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


# Library messages name a setting by its Python name in backticks (`limit`, `force`); on the command line the
# same message names the option instead. Settings whose option is not --the-name-with-dashes are listed.
OPTION_OF_SETTING = {
    **{name: flag_of(name, spec) for fields in SETTINGS_FIELDS.values() for name, spec in fields.items()},
    **{name: "--" + name.replace("_", "-") for name in ("ratios", "pcts", "sizes", "multiple_of", "revision", "force")},
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "criterion",
            "seed",
            "calibration",
            "calibration_tokens",
            "recover",
            "distill_lr",
            "max_memory",
            "distill_launcher",
        )
    },
    **{name: "--" + name for name in ("members", "collection")},
    "max_shard_bytes": "--max-shard-size",
    "check_first": "--check-criteria",
}


def as_command_line(message: str) -> str:
    """`message` with each backticked setting name replaced by its command-line option."""

    return re.sub(r"`([a-z][a-z_]*)`", lambda m: OPTION_OF_SETTING.get(m.group(1), m.group(0)), message)
