"""Energy counters: how many joules a device has used so far, read before and after a timed window.

A counter is anything with `read_joules() -> float` returning a running total; the profiler reads it at the
start and the end of a window and uses the difference. The counters measure a whole device (a GPU board, the
CPU packages), not this process alone, and idle power is not subtracted: profile on an otherwise quiet machine.

- NVML (NVIDIA GPUs, Volta and later): nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver
  loaded (NVML API reference, "Device Queries"). Needs the nvidia-ml-py package. Method: measured.
- RAPL (Intel, and AMD on Linux >= 5.8): /sys/class/powercap/intel-rapl:N/energy_uj of every package zone,
  microjoules, wrapping to 0 after max_energy_range_uj (Linux Documentation/power/powercap/powercap.rst).
  Often readable by root only (Linux >= 5.10, CVE-2020-8694). Method: measured.
- CodeCarbon, only when asked: its energy figure (EmissionsData.energy_consumed, kWh), never the kg CO2 that
  tracker.stop() returns. Without RAPL or NVML it models power from TDP and load. Method: estimated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hubprune.errors import EnergyError

ENERGY_CHOICES = ("auto", "nvml", "rapl", "codecarbon", "off")
RAPL_ROOT = Path("/sys/class/powercap")
JOULES_PER_KWH = 3.6e6
NVML_INSTALL = "pip install nvidia-ml-py"
CODECARBON_INSTALL = "pip install codecarbon"


class EnergyCounter(Protocol):
    def read_joules(self) -> float:
        """Energy used so far, in joules, from an arbitrary origin; only differences between reads matter."""
        ...


@dataclass(frozen=True)
class EnergySource:
    """The energy counter a run uses, or why there is none.

    kind: "nvml" | "rapl" | "codecarbon", or None when unavailable.
    method: "measured" | "estimated" | "unavailable".
    detail: what the counter covers, or the reason nothing is measured.
    """

    kind: str | None
    method: str
    detail: str
    counter: EnergyCounter | None = field(default=None, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"source": self.kind, "method": self.method, "detail": self.detail}


class _Unavailable(Exception):
    """Internal: why a counter cannot be opened (a reason for auto, an error when asked for explicitly)."""


def open_energy(kind: str, device: str) -> EnergySource:
    """The energy source for `kind` (one of ENERGY_CHOICES) on `device` ("cpu" or "cuda[:N]").

    auto picks NVML on a GPU and RAPL on a CPU, and falls back to "unavailable" with the reason; it never picks
    CodeCarbon, whose figures are estimates. An explicit kind that cannot measure raises EnergyError.
    """
    if kind not in ENERGY_CHOICES:
        raise EnergyError(f"unknown energy source {kind!r}: choose one of {', '.join(ENERGY_CHOICES)}")
    if kind == "off":
        return EnergySource(None, "unavailable", "energy measurement turned off (energy=off)")
    on_gpu = device.startswith("cuda")
    if kind == "nvml" and not on_gpu:
        raise _nvml_without_gpu(device)
    wanted = kind if kind != "auto" else ("nvml" if on_gpu else "rapl")
    try:
        if wanted == "nvml":
            return EnergySource("nvml", "measured", NVML_DETAIL, _nvml_counter(device))
        if wanted == "rapl":
            counter, zones = _rapl_counter(RAPL_ROOT)
            return EnergySource("rapl", "measured", f"{RAPL_DETAIL} ({', '.join(zones)})", counter)
        return EnergySource("codecarbon", "estimated", CODECARBON_DETAIL, CodeCarbonCounter())
    except _Unavailable as exc:
        if kind == "auto":
            return EnergySource(None, "unavailable", str(exc))
        raise EnergyError(f"`energy` {kind}: {exc}") from None


def check_energy(kind: str, device: str) -> None:
    """Raise EnergyError now if an explicitly requested source cannot work here. Cheap, and opens no GPU
    context, so the parent process can check before each model's fresh process opens the real counter."""
    if kind not in ENERGY_CHOICES:
        raise EnergyError(f"unknown energy source {kind!r}: choose one of {', '.join(ENERGY_CHOICES)}")
    if kind == "nvml":
        if not device.startswith("cuda"):
            raise _nvml_without_gpu(device)
        try:
            import pynvml

            pynvml.nvmlInit()
        except ImportError:
            raise EnergyError(f"`energy` nvml: NVML bindings are not installed: {NVML_INSTALL}") from None
        except pynvml.NVMLError as exc:
            raise EnergyError(f"`energy` nvml: NVML cannot start ({exc}): check the NVIDIA driver") from None
    elif kind == "rapl":
        try:
            _rapl_counter(RAPL_ROOT)
        except _Unavailable as exc:
            raise EnergyError(f"`energy` rapl: {exc}") from None
    elif kind == "codecarbon":
        try:
            import codecarbon  # noqa: F401
        except ImportError:
            raise EnergyError(f"`energy` codecarbon: CodeCarbon is not installed: {CODECARBON_INSTALL}") from None


def _nvml_without_gpu(device: str) -> EnergyError:
    return EnergyError(
        f"energy source nvml measures NVIDIA GPUs but the device is {device}: use `device` cuda on a GPU machine, "
        "or `energy` auto"
    )


NVML_DETAIL = "NVML total energy counter of the whole GPU board (nvmlDeviceGetTotalEnergyConsumption, mJ)"
RAPL_DETAIL = "RAPL energy counters of the CPU packages, whole sockets (powercap energy_uj)"
CODECARBON_DETAIL = (
    "CodeCarbon's energy_consumed (kWh); an estimate: without RAPL or NVML it models power from the CPU's TDP"
)


class RaplCounter:
    """The sum of several RAPL zones' energy_uj, each unwrapped: a zone's counter returns to 0 after
    max_energy_range_uj (Linux Documentation/power/powercap/powercap.rst), so a read lower than the last one
    means it wrapped once. Reads must come at least once per wrap period (minutes to hours at package power).
    """

    def __init__(self, zones: list[Path]) -> None:
        self._zones = zones
        self._ranges = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        self._last = [self._raw(zone) for zone in zones]
        self._total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read_joules(self) -> float:
        for i, zone in enumerate(self._zones):
            now = self._raw(zone)
            delta = now - self._last[i]
            if delta < 0:
                delta += self._ranges[i]
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


def _rapl_counter(root: Path) -> tuple[RaplCounter, list[str]]:
    """A counter over every package zone under `root` (not psys, which would count the packages twice)."""
    zones = [
        zone
        for zone in sorted(root.glob("intel-rapl:*"))
        if re.fullmatch(r"intel-rapl:\d+", zone.name) and _zone_name(zone).startswith("package")
    ]
    if not zones:
        raise _Unavailable(f"no RAPL package counters under {root} (this CPU or kernel does not expose RAPL)")
    try:
        return RaplCounter(zones), [_zone_name(z) for z in zones]
    except PermissionError as exc:
        raise _Unavailable(
            f"RAPL counter {exc.filename} is readable by root only (Linux >= 5.10): run as root or grant read "
            "access to energy_uj"
        ) from None
    except (OSError, ValueError) as exc:
        raise _Unavailable(f"cannot read the RAPL counters under {root} ({exc})") from None


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


class NvmlCounter:
    """One GPU's NVML total-energy counter, in joules."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    def read_joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0  # mJ -> J


def _nvml_counter(device: str) -> NvmlCounter:
    try:
        import pynvml  # the nvidia-ml-py package
    except ImportError:
        raise _Unavailable(f"NVML bindings are not installed: {NVML_INSTALL}") from None
    import torch

    try:
        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        try:
            # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES; the UUID names the same board for both.
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        except Exception:  # an older torch without .uuid, or NVML not finding it: NVML's own numbering
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        counter = NvmlCounter(pynvml, handle)
        counter.read_joules()  # NotSupported on GPUs older than Volta
        return counter
    except pynvml.NVMLError as exc:
        raise _Unavailable(f"NVML cannot read the GPU's energy counter ({exc})") from None


class CodeCarbonCounter:
    """A running total of CodeCarbon's energy estimate. CodeCarbon reports energy once a tracker stops, so
    each read stops the current tracker, adds its energy_consumed (kWh, converted to J) and starts the next.
    The offline tracker never contacts a server; its country only affects CO2, which is not used.
    """

    def __init__(self) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            raise _Unavailable(f"CodeCarbon is not installed: {CODECARBON_INSTALL}") from None
        self._make = lambda: OfflineEmissionsTracker(
            country_iso_code="USA", save_to_file=False, log_level="error", allow_multiple_runs=True
        )
        self._total_joules = 0.0
        self._tracker = self._make()
        self._tracker.start()

    def read_joules(self) -> float:
        self._tracker.stop()  # returns kg CO2: deliberately ignored
        self._total_joules += self._tracker.final_emissions_data.energy_consumed * JOULES_PER_KWH
        self._tracker = self._make()
        self._tracker.start()
        return self._total_joules
