"""Progress of long work, reported to a callback the caller gives: the library never prints (the CLI does)."""

from __future__ import annotations

import logging
import os
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


def quiet_libraries() -> None:
    """For the processes hubprune starts (the command line, launched workers), never for the library: keep the
    terminal for hubprune's own progress: lm-eval and transformers log every task default they
    apply and draw a bar for every weight load. Warnings and errors still show."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("lm_eval", "lm-eval", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
