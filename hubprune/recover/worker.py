"""What each process a distillation launcher starts runs: `python -m hubprune.recover.worker JOB`. Not a command for
people: `prune` and `build-family` write the job and start the processes (launch.py).

The worker prints nothing of its own: it appends its progress reports to a file beside the job, which hubprune's
process reads and shows as it shows its own, and on an expected error it writes the error there too, so that
hubprune's process raises it as the one-line error it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hubprune.errors import HubpruneError
from hubprune.progress import Progress, quiet_libraries
from hubprune.recover.launch import ERROR_FILE, EVENTS_FILE, run_job


class EventFile:
    """A progress callback that appends each report as one JSON line (read by launch.follow_events)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: Progress) -> None:
        with self.path.open("a", encoding="utf-8") as lines:
            lines.write(json.dumps(event.__dict__) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("error: give one job file (hubprune's distillation launcher starts this, not a person)\n")
        return 2
    quiet_libraries()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # hubprune's process says what loads; nothing is downloaded here
    job = Path(args[0])
    try:
        run_job(job, EventFile(job.parent / EVENTS_FILE))  # distill.train reports from the main process only
    except HubpruneError as exc:
        error = {"class": type(exc).__name__, "message": str(exc)}
        (job.parent / ERROR_FILE).write_text(json.dumps(error), encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
