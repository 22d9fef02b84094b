"""Distillation in the processes a launcher starts: `accelerate launch` (with its config: processes, GPUs, DDP,
DeepSpeed, FSDP, mixed precision) or torchrun.

hubprune's own process prunes, then writes a job into the member's work folder (where the member, the base and
the data are, and the settings) and runs `LAUNCHER -m hubprune.recover.worker JOB`. Every process loads the
base and the member and trains its share of each step (distill.distill_member, as in one process), the gradients
averaged across them; the main process writes the trained tensors into the member and the record beside the job.
The prune pass, the benchmarks and the cards stay in hubprune's process, so nothing else has to know how many
processes trained.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hubprune import errors
from hubprune.errors import LaunchError
from hubprune.files import write_json_atomic
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.recover.distill import DistillRun, DistillSettings, distill_member
from hubprune.recover.distill_data import Teacher, load_data, save_data

WORKER = "hubprune.recover.worker"  # the module each launched process runs
JOB = "job.json"
JOB_DATA = "job-data.safetensors"
RECORD = "record.json"  # written by the main process once the member holds the trained tensors
EVENTS_FILE = "progress.jsonl"  # the workers' progress reports, one JSON line each, shown by hubprune's process
ERROR_FILE = "error.json"  # an expected error of a worker, raised again by hubprune's process
POLL_SECONDS = 0.5


# where launchers say how many processes they started: torchrun and accelerate launch, then the MPI runtimes
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> tuple[str, int] | None:
    """The variable and count, when a launcher started this process as one of several; else None."""
    for variable in WORLD_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 1:
            return variable, int(value)
    return None


def parse_launcher(text: str) -> list[str]:
    """The words of a launcher command, or LaunchError when it cannot be run."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise LaunchError(
            f"`distill_launcher` cannot be read as a command ({exc}): quote it as a shell would"
        ) from None
    if not words:
        raise LaunchError('`distill_launcher` is empty: give a command such as "accelerate launch", or leave it out')
    # on PATH, else beside this Python: `accelerate` and `torchrun` of hubprune's own environment, not activated
    found = shutil.which(words[0]) or shutil.which(words[0], path=str(Path(sys.executable).parent))
    if found is None:
        raise LaunchError(
            f"`distill_launcher` starts with {words[0]}, which is not found: install it (accelerate, torchrun) or "
            "give its full path"
        )
    return [found, *words[1:]]


def distill_launched(
    folder: Path,
    teacher: Teacher,
    settings: DistillSettings,
    roles: dict[str, tuple[int, str]],
    run: DistillRun,
    launcher: list[str],
) -> dict[str, Any]:
    """Distil the member checkpoint in `folder` in the processes `launcher` starts (they write its MLP tensors
    back in place), and return the record for its hubprune.json, as distill.distill_member does in this process.
    run.state holds the job, and the state a stopped run resumes from."""
    state, item = run.state, run.item
    assert state is not None, "a launched distillation needs a work folder"
    state.mkdir(parents=True, exist_ok=True)
    save_data(teacher.data, state / JOB_DATA)
    record = state / RECORD
    for stale in (RECORD, EVENTS_FILE, ERROR_FILE):
        (state / stale).unlink(missing_ok=True)
    job = {
        "student": str(folder.resolve()),
        "teacher": str(teacher.folder.resolve()),
        "data": str((state / JOB_DATA).resolve()),
        "settings": {**asdict(settings), "text": None if settings.text is None else str(Path(settings.text).resolve())},
        "roles": roles,
        "state": str(state.resolve()),
        "member": run.member,
        "device": run.device,
        "record": str(record.resolve()),
        "item": item,
    }
    write_json_atomic(state / JOB, job)
    message = f"[distill] {item}: in the processes `{shlex.join(launcher)}` starts"
    report(run.on_progress, Progress("distill", message))
    process = subprocess.Popen([*launcher, "-m", WORKER, str((state / JOB).resolve())])
    returncode = follow_events(process, state / EVENTS_FILE, run.on_progress)
    _raise_worker_error(state / ERROR_FILE)
    if returncode != 0 or not record.exists():
        raise LaunchError(
            f"distilling {item} in the launched processes failed (exit status {returncode}): their output above "
            "says why"
        )
    found = json.loads(record.read_text(encoding="utf-8"))
    for done in (JOB, JOB_DATA, RECORD, EVENTS_FILE):
        (state / done).unlink(missing_ok=True)
    return found


def follow_events(process: subprocess.Popen[bytes], events: Path, on_progress: ProgressCallback | None) -> int:
    """Report the workers' progress (the JSON lines they append to `events`) as it comes, until `process` ends;
    its exit status. A stop here stops the launched processes too."""
    shown = 0
    try:
        while True:
            returncode = process.poll()
            lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
            complete = lines if returncode is not None else lines[:-1]  # the last line may be half-written
            for line in complete[shown:]:
                report(on_progress, Progress(**json.loads(line)))
            shown = max(shown, len(complete))
            if returncode is not None:
                return returncode
            time.sleep(POLL_SECONDS)
    except BaseException:
        process.terminate()
        process.wait()
        raise


def _raise_worker_error(path: Path) -> None:
    """Raise again, in hubprune's process, the expected error a worker wrote (see worker.py)."""
    if not path.exists():
        return
    found = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    error = getattr(errors, found["class"], None)
    if not (isinstance(error, type) and issubclass(error, errors.HubpruneError)):
        error = errors.LaunchError
    raise error(found["message"])


def run_job(job_file: Path, on_progress: ProgressCallback | None = None) -> None:
    """In each launched process: distil the job in `job_file` (see distill_launched); the main process writes the
    trained tensors into the member, then the record beside the job."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    job = json.loads(job_file.read_text(encoding="utf-8"))
    settings = DistillSettings(**{**job["settings"], "text": job["settings"]["text"] and Path(job["settings"]["text"])})
    roles = {name: (int(layer), role) for name, (layer, role) in job["roles"].items()}
    base = Path(job["teacher"])
    teacher = Teacher(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), load_data(Path(job["data"])), base
    )
    record = distill_member(
        Path(job["student"]),
        teacher,
        settings,
        roles,
        DistillRun(Path(job["state"]), job["member"], job["device"], True, job["item"], on_progress),
    )
    if PartialState().is_main_process:
        write_json_atomic(Path(job["record"]), record)
