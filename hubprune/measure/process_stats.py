"""What the process and the machine did while a model was measured: peak memory, and the CPUs that other
work kept busy. Linux /proc readings (proc(5)) on the CPU, torch's allocator counters on a GPU; each figure
says how it was obtained, and is None with method "unavailable" where the reading is refused."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import torch

RSS_SAMPLE_SECONDS = 0.005


def figure(value: Any, unit: str, how: str, method: str = "measured") -> dict[str, Any]:
    return {"value": value, "unit": unit, "method": method if value is not None else "unavailable", "how": how}


class MemoryWatch:
    """Peak memory over one batch size's warm-up and timed runs.

    CPU: the resident set size (/proc/self/statm) sampled every RSS_SAMPLE_SECONDS on a thread, and the
    kernel's high-water mark VmHWM, reset through /proc/self/clear_refs (Linux proc(5)) so it excludes loading.
    GPU: torch.cuda.max_memory_allocated (tensors) and max_memory_reserved (the caching allocator's pool).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_rss = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemoryWatch:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.hwm_reset = _resethwm()
            self.peak_rss = rss() or 0
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak_rss = max(self.peak_rss, rss() or 0)

    def figures(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            return {
                "peak_memory": figure(
                    torch.cuda.max_memory_allocated(self.device), "bytes", "torch.cuda.max_memory_allocated"
                ),
                "peak_memory_reserved": figure(
                    torch.cuda.max_memory_reserved(self.device), "bytes", "torch.cuda.max_memory_reserved"
                ),
            }
        since = "since reset before the warm-up" if self.hwm_reset else "since the process started (reset refused)"
        return {
            "peak_memory": figure(
                self.peak_rss or None,
                "bytes",
                f"maximum process RSS sampled every {RSS_SAMPLE_SECONDS * 1000:g} ms during warm-up and timed runs",
            ),
            "peak_rss_hwm": figure(hwm(), "bytes", f"kernel high-water mark VmHWM {since}"),
        }


def rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def hwm() -> int | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _resethwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # 5: reset the peak RSS (proc(5))
        return True
    except OSError:
        return False


def cpu_times() -> tuple[float, float] | None:
    """(CPU seconds used by the whole machine, CPU seconds used by this process), from /proc/stat and os.times.

    The machine's busy time is user + nice + system + irq + softirq + steal of the aggregate "cpu" line
    (Linux proc(5)); steal is time the hypervisor gave to other guests.
    """
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_cpu_load(
    before: tuple[float, float] | None, after: tuple[float, float] | None, window: float
) -> dict[str, Any]:
    """How many CPUs other processes (and the hypervisor) kept busy during the timed window, on average."""
    how = (
        "machine CPU time (/proc/stat, steal included) minus this process's CPU time, over the timed window; "
        "near 0 means nothing competed with the measurement, and clock-tick granularity (10 ms) limits short windows"
    )
    if before is None or after is None or window <= 0:
        return figure(None, "CPUs", how)
    other = (after[0] - before[0]) - (after[1] - before[1])
    return figure(max(other, 0.0) / window, "CPUs", how)
