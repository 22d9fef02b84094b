"""Every error hubprune raises on purpose.

Each class subclasses a builtin so callers can catch it the usual way, and HubpruneError so the CLI can tell
an expected problem (one clear line, non-zero exit) from a bug (a traceback). Messages say what was wrong,
the value received, and how to fix it.
"""


class HubpruneError(Exception):
    """Marker base class: an expected, user-facing error with a one-line message."""


class UnsupportedArchitectureError(HubpruneError, ValueError):
    """The checkpoint's model type has no GLU MLP that hubprune knows how to prune."""


class CheckpointError(HubpruneError, OSError):
    """The source checkpoint is missing, unreadable, truncated or inconsistent."""


class TargetError(HubpruneError, ValueError):
    """A requested width (ratio, percentage or size) is invalid for this model."""


class CriterionError(HubpruneError, ValueError):
    """An unknown importance criterion, or weights it cannot score."""


class LaunchError(HubpruneError, RuntimeError):
    """hubprune was started by a launcher, or the distillation launcher it was given cannot run or failed."""


class OutputError(HubpruneError, OSError):
    """The output folder exists, is not a hubprune family, or cannot be written."""


class SourceError(HubpruneError, ValueError):
    """The SOURCE argument is neither a usable local folder nor a reachable Hub repository."""


class EvaluationError(HubpruneError, ValueError):
    """A suite, task or evaluation setting is invalid, or a task cannot run here (e.g. its data needs the network)."""


class ProfileSettingsError(HubpruneError, ValueError):
    """A profiling setting is invalid or cannot be honoured on this machine (e.g. cuda without a GPU)."""


class ProfileError(HubpruneError, RuntimeError):
    """Profiling a model failed (its fresh process died, or the model cannot be profiled as asked)."""


class EnergyError(HubpruneError, ValueError):
    """An energy source was asked for explicitly and cannot measure on this machine."""


class CardError(HubpruneError, ValueError):
    """A card cannot be rendered: not a family, a broken template, or metadata the Hub would reject."""


class PushError(HubpruneError, RuntimeError):
    """Publishing failed or was refused: no token, a foreign repo in the way, or a Hub that keeps failing."""


class ExportError(HubpruneError, ValueError):
    """A member cannot be written as a GGUF file faithfully (its architecture, tokenizer or type), or a type is
    unknown."""
