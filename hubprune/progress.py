"""Progress of long work, reported to a callback the caller gives: the library never prints (the CLI does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One report from a stage. `message` is a line for people; `done` of `total` says how far the stage is
    (bytes of the source for prune, models for profile: `done` is then the model's index); `status` says what happened to the item
    (profile: start, resumed, done, reused, skipped, failed; any stage: warning)."""

    stage: str  # prune | check | eval | profile | card | push
    message: str = ""
    item: str = ""  # the model or member the report is about, where there is one
    done: int = 0
    total: int = 0
    unit: str = ""  # what done and total count: "B" for bytes, "" for items
    status: str = ""
    round: int = 1  # profile: the round of `rounds` this report belongs to
    rounds: int = 1


ProgressCallback = Callable[[Progress], None]


def report(on_progress: ProgressCallback | None, event: Progress) -> None:
    if on_progress is not None:
        on_progress(event)
