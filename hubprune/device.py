"""Which torch device a stage runs on, and what hardware that is: one rule shared by evaluation and profiling."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from hubprune.errors import HubpruneError


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
