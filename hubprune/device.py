"""Where and how the stages that run the model run (calibration, distillation, eval, profile): one RuntimeSettings
for all of them, which torch device that is, and what hardware."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from hubprune.errors import HubpruneError
from hubprune.fields import setting

DEVICE_HELP = "auto (cuda when torch sees a GPU, else cpu), cpu or cuda"


@dataclass(frozen=True)
class RuntimeSettings:
    """One runtime for every stage that runs the model. The prune pass itself always streams on the CPU."""

    device: str = setting(
        "auto", f"Where calibration (with --max-memory), distillation, eval and profile run: {DEVICE_HELP}."
    )
    dtype: str = setting(
        "auto",
        "auto, bfloat16 or float32. auto: eval in bfloat16 on GPU and float32 on CPU; profile in the dtype the "
        "checkpoint stores.",
    )
    max_memory: int | None = setting(
        None,
        "Calibration (activation, hybrid, refit) keeps at most SIZE of the weights in memory and reads the rest from "
        "disk as each layer runs, in the source dtype: for models larger than memory.",
        parse="size",
    )


DEFAULT_RUNTIME = RuntimeSettings()
S = TypeVar("S")


def on_runtime(settings: S, runtime: RuntimeSettings | None) -> S:
    """A measuring stage's settings (eval's, profile's: they keep the device and dtype they run on) on the runtime's
    device and dtype; as they are when no runtime is given."""
    return settings if runtime is None else replace(settings, device=runtime.device, dtype=runtime.dtype)  # type: ignore[type-var]


def resolve_device(device: str, error: type[HubpruneError]) -> str:
    """auto: cuda when torch sees a GPU, else cpu. cpu, cuda and cuda:N are taken as given, but a GPU asked for
    where torch sees none is refused with `error` (each stage reports its own kind of settings error)."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise error(f"unknown device {device!r}: choose auto, cpu or cuda (or cuda:N)")
    has_cuda = torch.cuda.is_available()  # counts devices; creates no CUDA context in this process
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise error(
            f"device {device} requested but torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): use `device` cpu or auto, or install a CUDA build of torch"
        )
    return device


def hardware(device: str) -> str:
    """The GPU's name for a CUDA device, else the CPU's model and how many CPUs this process may use."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {usable} CPUs"


def cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^(?:model name|Hardware|Processor)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_bytes(field: str) -> int | None:
    """A field of Linux's /proc/meminfo (MemTotal, MemAvailable, ...) in bytes; None where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new process can use without swapping (Linux's MemAvailable); None where
    the system does not say."""
    return meminfo_bytes("MemAvailable")
