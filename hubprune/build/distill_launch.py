"""Distillation in the processes a launcher starts: `accelerate launch` (with its config: processes, GPUs, DDP,
DeepSpeed, FSDP, mixed precision) or torchrun.

hubprune's own process prunes, then writes a job into the member's work folder (where the member, the base and
the data are, and the settings) and runs `LAUNCHER -m hubprune.cli.distill_worker JOB`. Every process loads the
base and the member and trains its share of each step with distill.train, which averages the gradients across
them; the main process writes the trained tensors and the record beside the job. hubprune's process then writes
the tensors into the member (distill.write_back). The prune pass, the write-back, the benchmarks and the cards stay
in one process, so nothing else has to know how many processes trained.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hubprune.build.distill import DistillSettings, Teacher, mlp_parameters, train, write_back
from hubprune.build.distill_data import load_data, save_data
from hubprune.errors import LaunchError
from hubprune.files import write_json_atomic
from hubprune.progress import Progress, ProgressCallback, report

WORKER = "hubprune.cli.distill_worker"  # the module each launched process runs
JOB = "job.json"
JOB_DATA = "job-data.safetensors"
RESULT = "result.safetensors"


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
    *,
    launcher: list[str],
    state: Path,
    member: str = "",
    device: str = "cpu",
    item: str = "",
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Distil the member checkpoint in `folder` in the processes `launcher` starts, write its MLP tensors back in
    place, and return the record for its hubprune.json, as distill.distill_member does in this process. `state`
    holds the job, and the state a stopped run resumes from; `member`: see distill.train; `item`: the member's name
    in messages."""
    state.mkdir(parents=True, exist_ok=True)
    save_data(teacher.data, state / JOB_DATA)
    result = state / RESULT
    result.unlink(missing_ok=True)
    job = {
        "student": str(folder.resolve()),
        "teacher": str(teacher.folder.resolve()),
        "data": str((state / JOB_DATA).resolve()),
        "settings": {**asdict(settings), "text": None if settings.text is None else str(Path(settings.text).resolve())},
        "roles": roles,
        "state": str(state.resolve()),
        "member": member,
        "device": device,
        "result": str(result.resolve()),
        "item": item,
    }
    write_json_atomic(state / JOB, job)
    report(on_progress, Progress("distill", f"[distill] {item}: in the processes `{shlex.join(launcher)}` starts"))
    completed = subprocess.run([*launcher, "-m", WORKER, str((state / JOB).resolve())], check=False)
    if completed.returncode != 0 or not result.exists():
        raise LaunchError(
            f"distilling {item} in the launched processes failed (exit status {completed.returncode}): their "
            "output above says why"
        )
    tensors, record = _read_result(result)
    write_back(folder, tensors)
    for done in (JOB, JOB_DATA, RESULT):
        (state / done).unlink(missing_ok=True)
    return record


def run_job(job_file: Path, on_progress: ProgressCallback | None = None) -> None:
    """In each launched process: distil the job in `job_file` (see distill_launched); the main process writes the
    trained tensors and the record to the job's result file, whole or not at all."""
    from accelerate import PartialState
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    job = json.loads(job_file.read_text(encoding="utf-8"))
    settings = DistillSettings(**{**job["settings"], "text": job["settings"]["text"] and Path(job["settings"]["text"])})
    roles = {name: (int(layer), role) for name, (layer, role) in job["roles"].items()}
    teacher = AutoModelForCausalLM.from_pretrained(job["teacher"], dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(job["student"], dtype=torch.float32)
    done = train(
        student,
        teacher,
        load_data(Path(job["data"])),
        settings,
        mlp_parameters(student, roles),
        state=Path(job["state"]),
        member=job["member"],
        device=job["device"],
        launched=True,
        item=job["item"],
        on_progress=on_progress,
    )
    if PartialState().is_main_process:
        result = Path(job["result"])
        temporary = result.with_name(f".{result.name}.tmp")
        tensors = {name: tensor.contiguous() for name, tensor in done.tensors.items()}
        save_file(tensors, str(temporary), metadata={"record": json.dumps(done.record)})
        temporary.replace(result)


def _read_result(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, json.loads(f.metadata()["record"])
