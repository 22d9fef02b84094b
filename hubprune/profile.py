"""Efficiency profiling: measured latency, throughput, memory and energy of a checkpoint, in results/profile.json.

What is measured, per model and batch size B, with a fixed synthetic prompt of P tokens and N new tokens:
- time to first token (TTFT): from calling generate() to the moment the first generated token of every
  sequence is on the host (prefill plus one argmax; the prompt is not padded);
- decode throughput: the B*(N-1) tokens generated after the first ones, divided by the time from the first
  token to the end of generate(): the first token's latency is excluded, and only generated tokens count;
- end-to-end latency: the whole generate() call;
- peak memory: on CPU the process's resident set size, sampled on a thread, plus the kernel's high-water mark
  (VmHWM); on a GPU torch's allocator peak (max_memory_allocated);
- energy per generated token: see energy.py and _energy_per_token.
Decoding is greedy with a fresh GenerationConfig (the model's own generation defaults are ignored, so every
member decodes the same way), no EOS and min_new_tokens = max_new_tokens, so no sequence stops early.
Warm-up runs are not counted; timed runs repeat until there are at least min_runs of them AND min_seconds have
passed; medians and p90s are reported with every raw run kept.

Each model is profiled in a fresh Python process (`python -m hubprune.profile REQUEST RESULT`) so that memory,
allocator caches and page-cache-warm imports of one model never flatter or burden the next one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__, manifest
from .base_model import BASE_RESULTS, base_label, locate_base
from .device import cpu_model, resolve_device
from .energy import EnergySource, check_energy, open_energy
from .errors import HubpruneError, ProfileError, ProfileSettingsError

FORMAT = 1
STAGE = "profile"
RESULTS_DIR = "results"
PROFILE_FILE = f"{RESULTS_DIR}/profile.json"  # inside a member (or checkpoint) folder
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
PROMPT_SEED = 0
RSS_SAMPLE_SECONDS = 0.005
REUSED = "profile.json already holds a completed run with these settings (force to measure again)"


@dataclass(frozen=True)
class ProfileSettings:
    device: str = "auto"  # auto | cpu | cuda (auto: cuda when torch sees a GPU)
    dtype: str = "auto"  # auto (as stored in config.json) | float32 | bfloat16 | float16
    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 256
    new_tokens: int = 64  # >= 2: decode throughput excludes the first token
    min_seconds: float = 10.0  # timed runs last at least this long in total...
    min_runs: int = 5  # ...and number at least this many
    warmup_runs: int = 2  # per batch size, not counted
    energy: str = "auto"  # auto | nvml | rapl | codecarbon | off


@dataclass(frozen=True)
class ProfileEvent:
    """Progress: `name` (index of total) is starting, or ended as done / reused / skipped / failed."""

    name: str
    index: int
    total: int
    status: str


ProgressCallback = Callable[[ProfileEvent], None]


@dataclass(frozen=True)
class ModelProfile:
    """The outcome for one model of a profile_path call.

    status: "done" (measured now), "reused" (an up-to-date profile.json was kept), "skipped" (reason says why).
    """

    name: str
    role: str  # "base" | "member" | "checkpoint"
    status: str
    report: Path  # the profile.json written or kept (for a skipped base: the file saying why)
    reason: str | None = None
    document: dict[str, Any] | None = None


@dataclass(frozen=True)
class Headline:
    """The figures a summary table shows for one batch size (see headline())."""

    batch_size: int
    ttft_s: float
    decode_tokens_per_s: float
    e2e_s: float
    peak_memory_bytes: int | None
    joules_per_token: float | None
    energy_method: str
    other_cpu_load: float | None  # CPUs kept busy by other work meanwhile: near 0 for trustworthy figures


# --- settings -------------------------------------------------------------------------------------------------


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,8' -> (1, 8); anything but positive whole numbers raises ProfileSettingsError."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+", part):
            raise ProfileSettingsError(
                f"batch sizes {text!r}: {part!r} is not a whole number: give positive integers separated by commas, "
                "e.g. 1,8"
            )
        sizes.append(int(part))
    return check_settings(ProfileSettings(device="cpu", batch_sizes=tuple(sizes), energy="off")).batch_sizes


def check_settings(settings: ProfileSettings) -> ProfileSettings:
    """The settings validated, with device auto resolved to cpu or cuda; raises ProfileSettingsError (or
    EnergyError for an energy source that cannot measure here)."""
    device = resolve_device(settings.device, ProfileSettingsError)
    if settings.dtype not in DTYPE_CHOICES:
        raise ProfileSettingsError(f"unknown dtype {settings.dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    sizes = tuple(settings.batch_sizes) if isinstance(settings.batch_sizes, (list, tuple)) else None
    if not sizes:
        raise ProfileSettingsError(f"batch sizes {settings.batch_sizes!r}: give at least one, e.g. 1,8")
    for size in sizes:
        if not _is_int(size) or size < 1:
            raise ProfileSettingsError(f"batch size {size!r} is not allowed: give positive integers, e.g. 1,8")
    if len(set(sizes)) != len(sizes):
        raise ProfileSettingsError(f"batch sizes {list(sizes)} repeat a value: give each batch size once")
    _check_int("prompt tokens", settings.prompt_tokens, 1)
    _check_int("new tokens", settings.new_tokens, 2, "decode throughput excludes the first token, so at least 2")
    _check_int("min runs", settings.min_runs, 1)
    _check_int("warm-up runs", settings.warmup_runs, 0)
    seconds = settings.min_seconds
    if _is_int(seconds) or isinstance(seconds, float):
        seconds = float(seconds)
    if not isinstance(seconds, float) or not math.isfinite(seconds) or seconds < 0:
        raise ProfileSettingsError(f"min seconds {settings.min_seconds!r}: give a number of seconds >= 0, e.g. 10")
    check_energy(settings.energy, device)
    return replace(settings, device=device, batch_sizes=sizes, min_seconds=seconds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(what: str, value: Any, minimum: int, why: str = "") -> None:
    if not _is_int(value) or value < minimum:
        because = f" ({why})" if why else ""
        raise ProfileSettingsError(f"{what} {value!r}: give a whole number >= {minimum}{because}")


# --- one model, in a fresh process -----------------------------------------------------------------------------


def profile_model(folder: Path, settings: ProfileSettings, *, out: Path | None = None) -> dict[str, Any]:
    """Profile the checkpoint in `folder` in a fresh Python process; write the document to `out` (default
    FOLDER/results/profile.json) atomically, and return it. Raises ProfileError if the run fails."""
    settings = check_settings(settings)
    folder = Path(folder).resolve()
    document = _in_fresh_process(folder, settings)
    out = Path(out) if out is not None else folder / PROFILE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_json_atomic(out, document)
    return document


def _in_fresh_process(folder: Path, settings: ProfileSettings) -> dict[str, Any]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])  # so the child imports this very hubprune
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="hubprune-profile-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"folder": str(folder), "settings": asdict(settings)}), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "hubprune.profile", str(request), str(result)],
            capture_output=True,  # the library never prints: the child's warnings stay here
            text=True,
            env=env,
        )
        answer = json.loads(result.read_text(encoding="utf-8")) if result.exists() else None
    if answer is not None and "error" in answer:
        raise ProfileError(answer["error"])
    if proc.returncode != 0 or answer is None:
        raise ProfileError(f"profiling {folder} failed: {_death(proc)}")
    return answer


def _death(proc: subprocess.CompletedProcess[str]) -> str:
    """One line on how the child process ended."""
    if proc.returncode < 0:
        return f"its process was killed by signal {-proc.returncode} (out of memory?): try smaller batch sizes"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else "no error output"
    return f"its process exited with status {proc.returncode}: {last}"


def _child_main(argv: Sequence[str]) -> int:
    """The fresh process: read the request, measure, write the document (or {"error": message})."""
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text(encoding="utf-8"))
    raw = request["settings"]
    settings = ProfileSettings(**{**raw, "batch_sizes": tuple(raw["batch_sizes"])})
    try:
        document = measure(Path(request["folder"]), settings)
    except HubpruneError as exc:
        manifest.write_json_atomic(result_path, {"error": str(exc)})
        return 1
    manifest.write_json_atomic(result_path, document)
    return 0


# --- measuring, in this process --------------------------------------------------------------------------------


def measure(folder: Path, settings: ProfileSettings, *, energy: EnergySource | None = None) -> dict[str, Any]:
    """Profile the checkpoint in `folder` in THIS process and return the profile.json document.

    This is what the fresh process of profile_model runs. Call it directly only to inject an energy source
    (tests), or in a process you start yourself; `energy` defaults to open_energy(settings.energy, device).
    """
    settings = check_settings(settings)
    folder = Path(folder).resolve()
    energy = energy or open_energy(settings.energy, settings.device)
    params = _count_params(folder)
    model, dtype, load = _load(folder, settings)
    prompt = _synthetic_prompt(folder, model, settings.prompt_tokens)
    limit = _context_length(model)
    if limit is not None and settings.prompt_tokens + settings.new_tokens > limit:
        raise ProfileError(
            f"{folder.name}: prompt {settings.prompt_tokens} + new {settings.new_tokens} tokens exceed its context "
            f"of {limit}: use fewer --prompt-tokens or --new-tokens"
        )
    batches = [_profile_batch(model, prompt, size, settings, energy) for size in settings.batch_sizes]
    return {
        "format": FORMAT,
        "status": "done",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"folder": str(folder), **params, "load_time": load, "size_on_disk": _size_on_disk(folder)},
        "settings": {
            **asdict(settings),
            "batch_sizes": list(settings.batch_sizes),
            "dtype": str(dtype).removeprefix("torch."),
        },
        "prompt": {
            "tokens": settings.prompt_tokens,
            "ids_sha256": hashlib.sha256(json.dumps(prompt.tolist()).encode()).hexdigest(),
            "how": f"token ids drawn uniformly (torch.Generator seed {PROMPT_SEED}) from the vocabulary without "
            "special tokens; the batch repeats it, no padding; the same for every model sharing a vocabulary",
        },
        "generation": {
            "decoding": "greedy",
            "new_tokens": settings.new_tokens,
            "how": "fresh GenerationConfig (model defaults ignored), no EOS, min_new_tokens = max_new_tokens",
        },
        "energy": energy.describe(),
        "batches": batches,
        "environment": _environment(settings.device, dtype),
    }


def _load(folder: Path, settings: ProfileSettings) -> tuple[Any, torch.dtype, dict[str, Any]]:
    """The model on its device, and its load time. The model's class is imported before the clock starts:
    transformers imports modeling code lazily (about 1.5 s here), the same for every member, not loading."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM, GenerationConfig

    dtype = DTYPES[settings.dtype] if settings.dtype != "auto" else _stored_dtype(folder)
    try:
        config = AutoConfig.from_pretrained(folder)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), AutoModelForCausalLM)
        _sync(settings.device)
        start = time.perf_counter()
        model = model_class.from_pretrained(folder, config=config, dtype=dtype).to(settings.device).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ProfileError(
            f"transformers cannot load {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "check that it is a complete checkpoint"
        ) from None
    _sync(settings.device)
    seconds = time.perf_counter() - start
    model.generation_config = GenerationConfig()  # the same decoding for every model
    load = _figure(
        seconds,
        "s",
        "from_pretrained + move to the device, in a fresh process, model code already imported (the files are "
        "usually in the page cache)",
    )
    return model, dtype, load


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype config.json records (transformers 5 writes "dtype", older versions "torch_dtype")."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or {}
    name = next((c.get(k) for c in (config, text) for k in ("dtype", "torch_dtype") if c.get(k)), "float32")
    return DTYPES.get(str(name), torch.float32)


def _context_length(model: Any) -> int | None:
    config = model.config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return value if _is_int(value) else None


def _synthetic_prompt(folder: Path, model: Any, length: int) -> torch.Tensor:
    """`length` token ids, seeded and without special tokens, so every member gets exactly the same input."""
    vocab = model.get_input_embeddings().num_embeddings
    special: set[int] = set()
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        vocab = min(vocab, len(tokenizer))  # embedding tables are often padded past the real vocabulary
        special.update(tokenizer.all_special_ids)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no tokenizer: fall back to the ids config.json names
    config = model.config.get_text_config()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, key, None)
        special.update(value if isinstance(value, list) else [value] if _is_int(value) else [])
    candidates = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    generator = torch.Generator().manual_seed(PROMPT_SEED)
    return candidates[torch.randint(len(candidates), (length,), generator=generator)]


class _TokenClock:
    """A generate() streamer that timestamps each decoding step and counts the tokens it produced.

    generate() first hands over the prompt, then each step's new tokens (one per sequence) right after they
    are copied to the host, which also waits for the device: the first step's time is the time to first token.
    """

    def __init__(self) -> None:
        self.prompt_seen = False
        self.times: list[float] = []
        self.counts: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(now)
        self.counts.append(int(value.numel()))

    def end(self) -> None:
        pass


def _one_run(model: Any, prompt: torch.Tensor, batch_size: int, new_tokens: int, device: str) -> dict[str, Any]:
    from transformers import GenerationConfig

    input_ids = prompt.unsqueeze(0).repeat(batch_size, 1).to(device)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None
    )
    clock = _TokenClock()
    _sync(device)
    start = time.perf_counter()
    output = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=clock
    )
    _sync(device)
    end = time.perf_counter()
    generated = output.shape[1] - input_ids.shape[1]
    if generated != new_tokens or len(clock.times) != new_tokens:
        raise ProfileError(
            f"generate() produced {generated} new tokens in {len(clock.times)} steps, not {new_tokens}: this "
            "model's generation cannot be profiled with a fixed output length"
        )
    return {
        "ttft_s": clock.times[0] - start,
        "decode_s": end - clock.times[0],
        "e2e_s": end - start,
        "generated_tokens": sum(clock.counts),
        "decode_tokens": sum(clock.counts[1:]),
    }


def _profile_batch(
    model: Any, prompt: torch.Tensor, batch_size: int, settings: ProfileSettings, energy: EnergySource
) -> dict[str, Any]:
    device = settings.device
    memory = _MemoryWatch(device)
    with memory:
        for _ in range(settings.warmup_runs):
            _one_run(model, prompt, batch_size, settings.new_tokens, device)
        joules_before = energy.counter.read_joules() if energy.counter else None
        cpu_before = _cpu_times()
        start = time.perf_counter()
        runs: list[dict[str, Any]] = []
        while len(runs) < settings.min_runs or time.perf_counter() - start < settings.min_seconds:
            runs.append(_one_run(model, prompt, batch_size, settings.new_tokens, device))
        window = time.perf_counter() - start
        cpu_after = _cpu_times()
        joules_after = energy.counter.read_joules() if energy.counter else None
    joules = None if joules_before is None or joules_after is None else joules_after - joules_before
    generated = sum(run["generated_tokens"] for run in runs)
    return {
        "batch_size": batch_size,
        "warmup_runs": settings.warmup_runs,
        "timed_runs": len(runs),
        "timed_window_s": window,
        "ttft": _distribution([r["ttft_s"] for r in runs], "s", "generate() call to first token of every sequence"),
        "decode_throughput": _distribution(
            [r["decode_tokens"] / r["decode_s"] for r in runs],
            "tokens/s",
            "per run: decode_tokens / decode_s, i.e. tokens generated after the first ones (batch x (new - 1)) over "
            "the time from the first token to the end of generate()",
        ),
        "e2e_latency": _distribution([r["e2e_s"] for r in runs], "s", "the whole generate() call"),
        **memory.figures(),
        "other_cpu_load": _other_cpu_load(cpu_before, cpu_after, window),
        "energy_per_token": _energy_per_token(energy, joules, generated, window),
        "runs": runs,
    }


def _energy_per_token(energy: EnergySource, joules: float | None, generated: int, window: float) -> dict[str, Any]:
    """J/token = (counter after the last timed run - counter before the first) / every token generated by the
    timed runs (runs x batch x new_tokens, first tokens included); the window is prefill + decode of all timed
    runs and the negligible gaps between them, warm-up runs excluded."""
    how = (
        "device energy over the timed window (all timed runs, prefill and decode, warm-up excluded) divided by "
        "all tokens those runs generated"
    )
    if joules is None:
        return {"value": None, "unit": "J/token", "method": "unavailable", "reason": energy.detail}
    return {
        "value": joules / generated,
        "unit": "J/token",
        "method": energy.method,
        "source": energy.kind,
        "how": how,
        "joules": joules,
        "tokens": generated,
        "window_s": window,
        "mean_power_w": joules / window if window > 0 else None,
    }


class _MemoryWatch:
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

    def __enter__(self) -> _MemoryWatch:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.hwm_reset = _reset_hwm()
            self.peak_rss = _rss() or 0
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak_rss = max(self.peak_rss, _rss() or 0)

    def figures(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            return {
                "peak_memory": _figure(
                    torch.cuda.max_memory_allocated(self.device), "bytes", "torch.cuda.max_memory_allocated"
                ),
                "peak_memory_reserved": _figure(
                    torch.cuda.max_memory_reserved(self.device), "bytes", "torch.cuda.max_memory_reserved"
                ),
            }
        since = "since reset before the warm-up" if self.hwm_reset else "since the process started (reset refused)"
        return {
            "peak_memory": _figure(
                self.peak_rss or None,
                "bytes",
                f"maximum process RSS sampled every {RSS_SAMPLE_SECONDS * 1000:g} ms during warm-up and timed runs",
            ),
            "peak_rss_hwm": _figure(_hwm(), "bytes", f"kernel high-water mark VmHWM {since}"),
        }


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _hwm() -> int | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # 5: reset the peak RSS (proc(5))
        return True
    except OSError:
        return False


def _cpu_times() -> tuple[float, float] | None:
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


def _other_cpu_load(
    before: tuple[float, float] | None, after: tuple[float, float] | None, window: float
) -> dict[str, Any]:
    """How many CPUs other processes (and the hypervisor) kept busy during the timed window, on average."""
    how = (
        "machine CPU time (/proc/stat, steal included) minus this process's CPU time, over the timed window; "
        "near 0 means nothing competed with the measurement, and clock-tick granularity (10 ms) limits short windows"
    )
    if before is None or after is None or window <= 0:
        return _figure(None, "CPUs", how)
    other = (after[0] - before[0]) - (after[1] - before[1])
    return _figure(max(other, 0.0) / window, "CPUs", how)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _figure(value: Any, unit: str, how: str, method: str = "measured") -> dict[str, Any]:
    return {"value": value, "unit": unit, "method": method if value is not None else "unavailable", "how": how}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (Hyndman & Fan 1996, definition 7,
    numpy's default): position (n - 1) * q / 100 in the sorted values."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _distribution(samples: list[float], unit: str, how: str) -> dict[str, Any]:
    return {
        "median": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "unit": unit,
        "method": "measured",
        "how": how,
        "samples": samples,
    }


def _count_params(folder: Path) -> dict[str, Any]:
    """Parameter counts from the safetensors headers, as family.json counts them (tied weights stored once)."""
    from .checkpoint import open_checkpoint
    from .prune import analyse, model_shape

    checkpoint = open_checkpoint(folder)
    total = sum(t.numel for t in checkpoint.tensors.values())
    how = "elements of every tensor in the safetensors files"
    try:
        layout = analyse(checkpoint)
        shape = model_shape(checkpoint, layout)
        mlp = _figure(shape.params_mlp, "parameters", "elements of the GLU MLP tensors (gate, up, down)", "counted")
        width: int | None = layout.intermediate_size
    except HubpruneError as exc:  # not a GLU model hubprune knows: profile it all the same
        mlp = {"value": None, "unit": "parameters", "method": "unavailable", "reason": str(exc)}
        width = None
    return {
        "model_type": checkpoint.config.get("model_type"),
        "intermediate_size": width,
        "params_total": _figure(total, "parameters", how, "counted"),
        "params_mlp": mlp,
    }


def _size_on_disk(folder: Path) -> dict[str, Any]:
    total = sum(
        p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and RESULTS_DIR not in p.relative_to(folder).parts[:1]
    )
    return _figure(total, "bytes", f"sizes of every file in the folder except {RESULTS_DIR}/ (links followed)")


def _environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    gpu = device.startswith("cuda")
    return {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": _meminfo_total(),
        "gpu": torch.cuda.get_device_name(device) if gpu else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(device).total_memory if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hubprune": __version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
    }


def _meminfo_total() -> int | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(encoding="ascii"), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


# --- a family, a member or a checkpoint folder ----------------------------------------------------------------


def profile_path(
    path: Path,
    settings: ProfileSettings,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> tuple[ModelProfile, ...]:
    """Profile what `path` holds, each model in a fresh process, and write the results.

    - a family folder (has family.json): the base model, then every built member. The base goes to
      FAMILY/base-results/profile.json; it is profiled when a local copy of it exists (the source folder, the
      dequantized GGUF in hubprune's cache, or the Hub cache at the recorded revision), otherwise that file
      records status "skipped" and the reason. Each member gets MEMBER/results/profile.json and its
      "profile" stage in family.json: {"status": "done", "file", "device", "dtype", "batch_sizes"}, or
      {"status": "failed", "error"} before the error is raised.
    - a member folder of a family: that member alone, its stage recorded in the parent's family.json.
    - any other checkpoint folder: FOLDER/results/profile.json only.
    A model whose profile.json already holds a completed run with the same settings is kept ("reused") unless
    `force`. Raises ProfileSettingsError / EnergyError for bad settings (before anything runs) and
    ProfileError when a model fails (the models before it keep their results).
    """
    settings = check_settings(settings)
    path = Path(path)
    if (path / manifest.MANIFEST).exists():
        return _profile_family(path, settings, force, on_progress)
    parent = path.resolve().parent
    if (parent / manifest.MANIFEST).exists():
        family = manifest.load(parent)
        record = next((m for m in family.members if (parent / m.path).resolve() == path.resolve()), None)
        if record is not None:
            return (_profile_member(parent, record.name, settings, force, 0, 1, on_progress),)
    if not (path / "config.json").exists():
        raise ProfileError(
            f"{path} is neither a family folder (family.json) nor a checkpoint folder (config.json): give one of them"
        )
    return (_profile_one(path.name, "checkpoint", path, path / PROFILE_FILE, settings, force, 0, 1, on_progress),)


def _profile_family(
    family_dir: Path, settings: ProfileSettings, force: bool, on_progress: ProgressCallback | None
) -> tuple[ModelProfile, ...]:
    family = manifest.load(family_dir)
    members = [m for m in family.members if m.stages.get("prune", {}).get("status") == "done"]
    total = 1 + len(members)
    results = [_profile_base(family_dir, family, settings, force, total, on_progress)]
    for index, member in enumerate(members, start=1):
        results.append(_profile_member(family_dir, member.name, settings, force, index, total, on_progress))
    return tuple(results)


def _profile_base(
    family_dir: Path,
    family: manifest.Family,
    settings: ProfileSettings,
    force: bool,
    total: int,
    on_progress: ProgressCallback | None,
) -> ModelProfile:
    name = f"{base_label(family)} (base)"
    report = family_dir / BASE_RESULTS / "profile.json"
    existing = None if force else _reusable(report, settings)
    if existing is not None:  # checked first: a base measured earlier is kept even if it has gone since
        _emit(on_progress, name, 0, total, "reused")
        return ModelProfile(name, "base", "reused", report, REUSED, existing)
    folder, reason = locate_base(family)
    if folder is None:
        _emit(on_progress, name, 0, total, "skipped")
        document = {"format": FORMAT, "status": "skipped", "reason": reason, "model": {"source": family.source.id}}
        report.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_json_atomic(report, document)
        return ModelProfile(name, "base", "skipped", report, reason, document)
    return _profile_one(name, "base", folder, report, settings, True, 0, total, on_progress)


def _profile_member(
    family_dir: Path,
    name: str,
    settings: ProfileSettings,
    force: bool,
    index: int,
    total: int,
    on_progress: ProgressCallback | None,
) -> ModelProfile:
    record = manifest.load(family_dir).member(name)
    if record is None:
        raise ProfileError(f"{family_dir}/family.json no longer lists member {name}: run the command again")
    folder = family_dir / record.path
    try:
        result = _profile_one(name, "member", folder, folder / PROFILE_FILE, settings, force, index, total, on_progress)
    except ProfileError as exc:
        manifest.record_stage(family_dir, name, STAGE, status="failed", error=str(exc))
        raise
    manifest.record_stage(
        family_dir,
        name,
        STAGE,
        status="done",
        file=PROFILE_FILE,
        device=settings.device,
        dtype=result.document["settings"]["dtype"] if result.document else settings.dtype,
        batch_sizes=list(settings.batch_sizes),
    )
    return result


def _profile_one(
    name: str,
    role: str,
    folder: Path,
    report: Path,
    settings: ProfileSettings,
    force: bool,
    index: int,
    total: int,
    on_progress: ProgressCallback | None,
) -> ModelProfile:
    existing = None if force else _reusable(report, settings)
    if existing is not None:
        _emit(on_progress, name, index, total, "reused")
        return ModelProfile(name, role, "reused", report, REUSED, existing)
    _emit(on_progress, name, index, total, "start")
    try:
        document = profile_model(folder, settings, out=report)
    except ProfileError:
        _emit(on_progress, name, index, total, "failed")
        raise
    _emit(on_progress, name, index, total, "done")
    return ModelProfile(name, role, "done", report, None, document)


def _reusable(report: Path, settings: ProfileSettings) -> dict[str, Any] | None:
    """The document in `report` if it is a completed run of these settings (dtype auto matches any dtype)."""
    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("status") != "done":
        return None
    stored = dict(document.get("settings", {}))
    wanted = asdict(settings)
    if settings.dtype == "auto":
        stored.pop("dtype", None)
        wanted.pop("dtype")
    stored["batch_sizes"] = tuple(stored.get("batch_sizes", ()))
    return document if all(stored.get(k) == v for k, v in wanted.items()) else None


def _emit(on_progress: ProgressCallback | None, name: str, index: int, total: int, status: str) -> None:
    if on_progress is not None:
        on_progress(ProfileEvent(name, index, total, status))


def headline(document: dict[str, Any]) -> list[Headline]:
    """The figures of a profile.json document that a summary table shows, one per batch size ([] if skipped)."""
    rows = []
    for batch in document.get("batches", []):
        energy = batch["energy_per_token"]
        rows.append(
            Headline(
                batch_size=batch["batch_size"],
                ttft_s=batch["ttft"]["median"],
                decode_tokens_per_s=batch["decode_throughput"]["median"],
                e2e_s=batch["e2e_latency"]["median"],
                peak_memory_bytes=batch["peak_memory"]["value"],
                joules_per_token=energy["value"],
                energy_method=energy["method"],
                other_cpu_load=batch["other_cpu_load"]["value"],
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
