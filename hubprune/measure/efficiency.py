"""Measuring one model in THIS process: latency, throughput, memory and energy at each batch size.

What is measured, per batch size B, with a fixed synthetic prompt of P tokens and N new tokens:
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

profile.py runs this in fresh processes, several rounds per model, and pools the rounds.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hubprune._version import __version__
from hubprune.device import cpu_model, meminfo_bytes, resolve_device
from hubprune.errors import HubpruneError, ProfileError, ProfileSettingsError
from hubprune.fields import setting
from hubprune.measure.energy import EnergySource, check_energy, open_energy
from hubprune.measure.process_stats import MemoryWatch, cpu_times, figure, other_cpu_load

FORMAT = 2  # profile.json format: 2 pools rounds of fresh processes (profile.py); 1 was one process
RESULTS_DIR = "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
PROMPT_SEED = 0

# The clock every time here is read from. One module-level name, so tests can drive the profiler with a fake
# clock and check exactly which moments each figure spans (tests/test_profile_timing.py).
_now = time.perf_counter


@dataclass(frozen=True)
class ProfileSettings:
    device: str = "auto"  # the runtime's (device.RuntimeSettings): auto | cpu | cuda
    dtype: str = "auto"  # auto (as stored in config.json) | float32 | bfloat16 | float16
    batch_sizes: tuple[int, ...] = setting((1, 8), "Batch sizes to profile, comma-separated.", parse="numbers")
    prompt_tokens: int = setting(256, "Prompt length (tokens).")
    new_tokens: int = setting(64, "Generated tokens per sequence.")  # >= 2: decode throughput excludes the first
    # timed runs last at least this long in total (over all rounds)...
    min_seconds: float = setting(10.0, "Least timed seconds per batch size, all rounds together.")
    min_runs: int = 5  # ...and number at least this many
    # Fresh processes per model, interleaved across a family's models (profile.py): on a shared or virtual
    # machine one process's median can sit 10-20 % off another's, so one process per model is not repeatable.
    rounds: int = setting(3, "Fresh processes per model, the models taking turns; the figures pool them.")
    # Per batch size and round, not counted. One is enough here: on SmolLM2 the first generate() of a process
    # was about 5 % slower than the rest, the second no different from the third.
    warmup_runs: int = 1
    energy: str = setting("auto", "auto, nvml, rapl, codecarbon (an estimate) or off.")

    def __post_init__(self) -> None:
        _check_profile_settings(self)


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
    return ProfileSettings(device="cpu", batch_sizes=tuple(sizes), energy="off").batch_sizes


def resolved(settings: ProfileSettings) -> ProfileSettings:
    """The settings on this machine: device auto resolved to cpu or cuda, a GPU asked for where there is none
    refused (ProfileSettingsError), and an energy source that cannot measure here refused (EnergyError). The
    values themselves were checked when the settings were made (ProfileSettings.__post_init__)."""
    device = resolve_device(settings.device, ProfileSettingsError)
    check_energy(settings.energy, device)
    return replace(settings, device=device)


def _check_profile_settings(settings: ProfileSettings) -> None:
    """ProfileSettings.__post_init__: every value in range; batch sizes as a tuple, seconds as a float."""
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
    _check_int("rounds", settings.rounds, 1)
    seconds = settings.min_seconds
    if _is_int(seconds) or isinstance(seconds, float):
        seconds = float(seconds)
    if not isinstance(seconds, float) or not math.isfinite(seconds) or seconds < 0:
        raise ProfileSettingsError(f"min seconds {settings.min_seconds!r}: give a number of seconds >= 0, e.g. 10")
    object.__setattr__(settings, "batch_sizes", sizes)
    object.__setattr__(settings, "min_seconds", seconds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(what: str, value: Any, minimum: int, why: str = "") -> None:
    if not _is_int(value) or value < minimum:
        because = f" ({why})" if why else ""
        raise ProfileSettingsError(f"{what} {value!r}: give a whole number >= {minimum}{because}")


# --- measuring, in this process --------------------------------------------------------------------------------


def measure(folder: Path, settings: ProfileSettings, *, energy: EnergySource | None = None) -> dict[str, Any]:
    """Profile the checkpoint in `folder` in THIS process, once: one round's document.

    This is what each fresh process of profile.py runs, with its round's share of the runs and seconds
    (settings.rounds is not used here). Call it directly only to inject an energy source (tests), or in a
    process you start yourself; `energy` defaults to open_energy(settings.energy, device).
    """
    settings = resolved(settings)
    folder = Path(folder).resolve()
    energy = energy or open_energy(settings.energy, settings.device)
    params = _count_params(folder)
    model, dtype, load = _load(folder, settings)
    prompt = _synthetic_prompt(folder, model, settings.prompt_tokens)
    limit = _context_length(model)
    if limit is not None and settings.prompt_tokens + settings.new_tokens > limit:
        raise ProfileError(
            f"{folder.name}: prompt {settings.prompt_tokens} + new {settings.new_tokens} tokens exceed its context "
            f"of {limit}: use fewer `prompt_tokens` or `new_tokens`"
        )
    batches = [_profile_batch(model, prompt, size, settings, energy) for size in settings.batch_sizes]
    return {
        "format": FORMAT,
        "status": "done",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": folder.resolve().name, **params, "load_time": load, "size_on_disk": _size_on_disk(folder)},
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
        start = _now()
        model = model_class.from_pretrained(folder, config=config, dtype=dtype).to(settings.device).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ProfileError(
            f"transformers cannot load {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "check that it is a complete checkpoint"
        ) from None
    _sync(settings.device)
    seconds = _now() - start
    model.generation_config = GenerationConfig()  # the same decoding for every model
    load = figure(
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
        now = _now()
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
    start = _now()
    output = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=clock
    )
    _sync(device)
    end = _now()
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
    memory = MemoryWatch(device)
    with memory:
        for _ in range(settings.warmup_runs):
            _one_run(model, prompt, batch_size, settings.new_tokens, device)
        joules_before = energy.counter.read_joules() if energy.counter else None
        cpu_before = cpu_times()
        start = _now()
        runs: list[dict[str, Any]] = []
        while len(runs) < settings.min_runs or _now() - start < settings.min_seconds:
            runs.append(_one_run(model, prompt, batch_size, settings.new_tokens, device))
        window = _now() - start
        cpu_after = cpu_times()
        joules_after = energy.counter.read_joules() if energy.counter else None
    joules = None if joules_before is None or joules_after is None else joules_after - joules_before
    generated = sum(run["generated_tokens"] for run in runs)
    return {
        "batch_size": batch_size,
        "warmup_runs": settings.warmup_runs,
        "timed_runs": len(runs),
        "timed_window_s": window,
        "ttft": distribution([r["ttft_s"] for r in runs], "s", "generate() call to first token of every sequence"),
        "decode_throughput": distribution(
            [r["decode_tokens"] / r["decode_s"] for r in runs],
            "tokens/s",
            "per run: decode_tokens / decode_s, i.e. tokens generated after the first ones (batch x (new - 1)) over "
            "the time from the first token to the end of generate()",
        ),
        "e2e_latency": distribution([r["e2e_s"] for r in runs], "s", "the whole generate() call"),
        **memory.figures(),
        "other_cpu_load": other_cpu_load(cpu_before, cpu_after, window),
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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (Hyndman & Fan 1996, definition 7,
    numpy's default): position (n - 1) * q / 100 in the sorted values."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(samples: list[float], unit: str, how: str) -> dict[str, Any]:
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
    from hubprune.pruning.checkpoint import open_checkpoint
    from hubprune.pruning.prune import analyse, model_shape

    checkpoint = open_checkpoint(folder)
    total = sum(t.numel for t in checkpoint.tensors.values())
    how = "elements of every tensor in the safetensors files"
    try:
        layout = analyse(checkpoint)
        shape = model_shape(checkpoint, layout)
        mlp = figure(shape.params_mlp, "parameters", "elements of the GLU MLP tensors (gate, up, down)", "counted")
        width: int | None = layout.intermediate_size
    except HubpruneError as exc:  # not a GLU model hubprune knows: profile it all the same
        mlp = {"value": None, "unit": "parameters", "method": "unavailable", "reason": str(exc)}
        width = None
    return {
        "model_type": checkpoint.config.get("model_type"),
        "intermediate_size": width,
        "params_total": figure(total, "parameters", how, "counted"),
        "params_mlp": mlp,
    }


def _size_on_disk(folder: Path) -> dict[str, Any]:
    total = sum(
        p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and RESULTS_DIR not in p.relative_to(folder).parts[:1]
    )
    return figure(total, "bytes", f"sizes of every file in the folder except {RESULTS_DIR}/ (links followed)")


def _environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    gpu = device.startswith("cuda")
    return {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": meminfo_bytes("MemTotal"),
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
