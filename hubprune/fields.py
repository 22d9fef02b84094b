"""The help beside each settings field: every stage's settings dataclass declares its fields with `setting`, and
the command line generates one option per field from it (cli/options.py), so a setting is named, documented and
defaulted in one place. Nothing here knows about Click: `parse` names how a value is written ("size", "list",
"numbers", "path", "paths", "command", "recovery", or which text file), and the CLI picks the parameter type."""

from __future__ import annotations

import dataclasses
from typing import Any

HELP, FLAG, PARSE, MINIMUM, GROUP = "help", "flag", "parse", "minimum", "group"
REQUIRED = dataclasses.MISSING  # the default of a setting that must be given


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: str | None = None,
    minimum: float | None = None,
) -> Any:
    """A dataclass field with its command-line help; `flag` replaces --the-field-name, `minimum` is the least value
    the option takes (a dataclass whose values matter below it checks them in __post_init__ too). A boolean is a flag that sets the value
    other than its default (`flag="--no-collection"` for a default of True); a REQUIRED one is a required option."""
    metadata = {HELP: help, FLAG: flag, PARSE: parse, MINIMUM: minimum}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(factory: Any, group: str | None = None) -> Any:
    """A field holding another settings dataclass, whose own fields become options too (listed under `group` in
    --help, else under the outer dataclass's)."""
    return dataclasses.field(default_factory=factory, metadata={"nested": True, GROUP: group})


def flag_of(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get(FLAG) or "--" + field.name.replace("_", "-")
