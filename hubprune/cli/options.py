"""Command-line options, generated from the library's settings dataclasses.

Every settings field declared with fields.setting (its help beside it) becomes an option through one decorator,
settings_options, which gives the command a ready settings object instead of loose keyword arguments; the
defaults shown in --help are the dataclasses' own, and their __post_init__ is the one place values are checked. Options carry the stage they belong to, and StagedCommand groups
--help by stage. Sizes and comma lists are Click parameter types, so bad values are refused by Click itself.
(The same shape as mergekit's options.py and huggingface_hub's cli/_cli_utils.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from hubprune import fields
from hubprune.errors import HubpruneError
from hubprune.pruning.calibrate import GENERATED, MIXED, SHIPPED, CalibrationSettings, calibration_text
from hubprune.recover import methods
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

    def __getnewargs__(self) -> tuple[int, str]:  # copies and pickles (settings are deep-copied) keep the text
        return int(self), self.text


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

    def __init__(self, check: Callable[[Path], object], words: tuple[str, ...] = ()) -> None:
        self.check = check
        self.words = words  # values that name data other than a file, passed on as they are
        if words:
            self.name = f"{'|'.join(words)}|FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if value in self.words:
            return str(value)
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


CALIBRATION_FILE = TextFile(_calibration_file, (SHIPPED, GENERATED, MIXED))
DISTILL_FILE = TextFile(_distill_file)
HELD_OUT_FILE = TextFile(_held_out_file)


class RecoverySteps(click.ParamType):
    """'refit+distill' -> ('refit', 'distill'); 'none' -> ()."""

    name = "steps"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return methods.parse_steps(str(value))
        except HubpruneError as exc:
            self.fail(str(exc), param, ctx)


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
    "calibration": "Calibration (data-aware criteria and the refit)",
    "recovery": "Recovery",
    "check": "Criteria check",
    "gguf": "GGUF files (llama.cpp, Ollama)",
    "runtime": "Runtime (calibration with --max-memory, distillation, eval, profile)",
    "eval": "Benchmarks (eval stage)",
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

# How a field's value is written (fields.setting's `parse`) -> its Click type. A field without one takes the type its
# annotation names (int, float, str, Path; an optional one the type it is when given), with its `minimum`.
PARSE_TYPES: dict[str, Any] = {
    "size": ByteSize(),
    "list": CommaList("names"),
    "numbers": CommaList("sizes", whole_numbers=True),
    "path": click.Path(path_type=Path),
    "paths": click.Path(path_type=Path),
    "command": click.STRING,
    "recovery": RecoverySteps(),
    "calibration-file": CALIBRATION_FILE,
    "distill-file": DISTILL_FILE,
    "held-out-file": HELD_OUT_FILE,
}


def settings_options(
    cls: type, stage: str, into: str, *, only: tuple[str, ...] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option for every documented field of the settings dataclass `cls` (fields.setting), and of the settings
    dataclasses nested in it, listed under `stage` in --help; the command gets one `cls` instance as the keyword
    argument `into`. `only`: the names of the fields to expose (the others keep their defaults). A value the
    dataclass refuses (its __post_init__) is a one-line error like any other."""
    options = list(_field_options(cls, only, stage))  # (parameter name, field, its dataclass, its stage)

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[into] = _build(cls, {name: kwargs.pop(name) for name, *_ in options})
            return func(*args, **kwargs)

        for name, spec, owner, group, default in reversed(options):
            wrapper = _option_of(name, spec, group, owner, default)(wrapper)
        return wrapper

    return decorator


def _field_options(
    cls: type, only: tuple[str, ...] | None, stage: str, defaults: Any = None
) -> Iterator[tuple[str, dataclasses.Field[Any], type, str, Any]]:
    """(parameter name, field, its dataclass, its --help group, its default) of every documented field, nested ones
    included; the parameter is named after the flag, so that a library message's `name` is the option's. A nested
    field's defaults are those of the instance its factory makes (PruneSettings' recovery is the refit, while
    RecoverySettings() alone is none)."""
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("nested"):
            inner = spec.default_factory() if defaults is None else getattr(defaults, spec.name)  # type: ignore[misc]
            yield from _field_options(inner.__class__, only, spec.metadata.get(fields.GROUP) or stage, inner)
        elif fields.HELP in spec.metadata and (only is None or spec.name in only):
            default = spec.default if defaults is None else getattr(defaults, spec.name)
            yield _parameter(spec), spec, cls, stage, default


def _parameter(spec: dataclasses.Field[Any]) -> str:
    return fields.flag_of(spec).removeprefix("--").replace("-", "_")


def _build(cls: type, given: dict[str, Any], defaults: Any = None) -> Any:
    """`cls` from the parsed option values: a field whose option was not given keeps its default (for a nested
    dataclass, the value in the instance its factory makes, as `_field_options` shows it)."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.metadata.get("nested"):
            inner = spec.default_factory() if defaults is None else getattr(defaults, spec.name)  # type: ignore[misc]
            values[spec.name] = _build(inner.__class__, given, inner)
            continue
        name = _parameter(spec)
        value = given.get(name)
        # an empty tuple is "not given", except for recovery steps, where it is what `none` parses to
        not_given = value is None or (value == () and spec.metadata.get(fields.PARSE) != "recovery")
        if name in given and not not_given:
            values[spec.name] = tuple(value) if isinstance(value, list) else value
        elif defaults is not None:
            values[spec.name] = getattr(defaults, spec.name)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            values[spec.name] = value  # a required field whose option is not exposed: the dataclass refuses it
    return cls(**values)


def _option_of(name: str, spec: dataclasses.Field[Any], stage: str, cls: type, default: Any) -> Callable[..., Any]:
    default = None if default is dataclasses.MISSING else default
    if isinstance(default, bool):  # a flag sets the value other than the default
        return option(fields.flag_of(spec), name, stage=stage, is_flag=True, flag_value=not default, default=default,
                      help=spec.metadata[fields.HELP])  # fmt: skip
    parse = spec.metadata.get(fields.PARSE)
    minimum = spec.metadata.get(fields.MINIMUM)
    kind = PARSE_TYPES.get(parse) if parse else _type_of(cls, spec)
    if minimum is not None and kind in (click.INT, click.FLOAT):
        kind = click.IntRange(min=int(minimum)) if kind is click.INT else click.FloatRange(min=minimum)
    if parse == "recovery":
        shown: Any = methods.label(default)
    elif isinstance(default, tuple):
        shown = ",".join(str(v) for v in default) if default else None
    elif parse == "size" and default is not None:
        shown = _size_text(default)
    else:
        shown = default
    multiple = parse == "paths"
    return option(
        fields.flag_of(spec),
        name,
        stage=stage,
        type=kind,
        multiple=multiple,
        required=spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING,
        default=None if multiple else shown,
        show_default=shown is not None,
        metavar={"command": "COMMAND", "recovery": "STEPS"}.get(parse or ""),
        help=spec.metadata[fields.HELP],
    )


def _type_of(cls: type, spec: dataclasses.Field[Any]) -> Any:
    """The Click type of a field from its annotation (an optional one from the type it is when given)."""
    hint = typing.get_type_hints(cls)[spec.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return {int: click.INT, float: click.FLOAT, str: click.STRING, Path: click.Path(path_type=Path)}.get(hint)


def _size_text(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


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
            parts += [flag] if value != param.default else []
        elif getattr(param, "multiple", False):
            parts += [word for item in value or () for word in (flag, str(item))]
        elif value is not None:
            parts += [flag, _as_typed(value, param.type)]
    return shlex.join(parts)


def _as_typed(value: Any, kind: Any = None) -> str:
    """A parsed value written back as the user typed it: comma lists joined again, recovery steps by their label
    (`none` for no step, which parses to an empty tuple)."""
    if isinstance(kind, RecoverySteps):
        return methods.label(value)
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def as_command_line(message: str, commands: Iterable[click.Command]) -> str:
    """`message` with each backticked setting name (the library's words, `limit`, `max_memory`) replaced by the
    option of that name among the `commands`' parameters (every generated option is named after its flag)."""
    flags = {}
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                flags[param.name] = max(param.opts, key=len)
    return re.sub(r"`([a-z][a-z_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message)
