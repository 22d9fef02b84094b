"""Profile the embedded default model's family on this machine, twice, and report how stable the medians are.

Builds (or reuses) the family of SmolLM2-135M-Instruct (the embedded default, dequantized from its GGUF) at
the paper's 10..60 %, profiles the base and every member with `hubprune.profile.profile_path` (each model in
a fresh process, --rounds processes per model, the models taking turns) at batch sizes 1 and 8, prompt 256,
64 new tokens, and does the whole profile `--repeats` times. It prints, from the first repeat, TTFT, decode throughput, end-to-end latency and peak memory of each
model with its ratio to the base measured in the same run, then the coefficient of variation (sample standard
deviation / mean) of each median across the repeats; the target is below 5 %.

    python bench/profile_family.py                        # the full bench (about 30 minutes on 2 cores)
    python bench/profile_family.py --pcts 50 --prompt-tokens 32 --new-tokens 8 --min-seconds 1   # a quick check

The family is written to --family (kept, and reused by later runs) or to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from hubprune.measure.efficiency import ProfileSettings, parse_batch_sizes
from hubprune.measure.profile import profile_path
from hubprune.progress import Progress
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import parse_targets
from hubprune.pruning.source import open_source
from hubprune.publish.results import BatchFigures, ProfileView

METRICS = ("ttft_s", "decode_tokens_per_s", "e2e_s", "peak_memory_bytes")


def _progress(event: Progress) -> None:
    if event.status != "start":
        where = f"round {event.round}/{event.rounds} [{event.done + 1}/{event.total}]"
        print(f"  {where} {event.item}: {event.status}", flush=True)


def _profile_once(family: Path, settings: ProfileSettings) -> tuple[dict[str, list[BatchFigures]], dict[str, Any]]:
    """Each model's headline figures, and each model's spread between rounds per batch size."""
    results = profile_path(family, settings, force=True, on_progress=_progress)
    done = [r for r in results if r.document is not None and r.status == "done"]
    spreads = {r.name: {b["batch_size"]: b.get("spread_between_rounds") for b in r.document["batches"]} for r in done}
    return {r.name: list(ProfileView.from_document(r.document).batches) for r in done}, spreads


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def _table(runs: list[dict[str, list[BatchFigures]]]) -> tuple[str, float]:
    first = runs[0]
    base_name = next(iter(first))  # profile_path reports the base first
    base = {h.batch_size: h for h in first[base_name]}
    lines = [
        "| model | batch | TTFT ms | decode tok/s | e2e s | peak RSS MB | TTFT vs base | decode vs base | peak vs base "
        "| J/token | other CPUs | CV TTFT | CV decode | CV e2e |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for name, rows in first.items():
        for row in rows:
            medians = {m: [getattr(_row(run, name, row.batch_size), m) for run in runs] for m in METRICS}
            cvs = [_cv(medians[m]) for m in METRICS[:3]]
            worst = max(worst, *cvs)
            ref = base[row.batch_size]
            energy = f"{row.joules_per_token:.3g} ({row.energy_method})" if row.joules_per_token else "n/a"
            lines.append(
                f"| {name} | {row.batch_size} | {row.ttft_s * 1e3:.1f} | {row.decode_tokens_per_s:.1f} | "
                f"{row.e2e_s:.2f} | {(row.peak_memory_bytes or 0) / 1e6:.0f} | {row.ttft_s / ref.ttft_s:.3f} | "
                f"{row.decode_tokens_per_s / ref.decode_tokens_per_s:.3f} | "
                f"{(row.peak_memory_bytes or 0) / (ref.peak_memory_bytes or 1):.3f} | {energy} | "
                f"{max(_row(run, name, row.batch_size).other_cpu_load or 0 for run in runs):.2f} | "
                + " | ".join(f"{cv * 100:.1f}%" for cv in cvs)
                + " |"
            )
    return "\n".join(lines), worst


def _row(run: dict[str, list[BatchFigures]], name: str, batch_size: int) -> BatchFigures:
    return next(h for h in run[name] if h.batch_size == batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", type=Path, help="family folder to build or reuse (default: a temporary one)")
    parser.add_argument("--pcts", default="10,20,30,40,50,60", help="members, as percentages of width removed")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=ProfileSettings.rounds, help="fresh processes per model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every repeat's headline figures here")
    args = parser.parse_args()

    settings = ProfileSettings(
        device="cpu",
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        min_seconds=args.min_seconds,
        min_runs=args.min_runs,
        rounds=args.rounds,
    )
    with tempfile.TemporaryDirectory(prefix="hubprune-bench-") as tmp:
        family = args.family or Path(tmp) / "family"
        checkpoint = open_source(None)
        start = time.perf_counter()
        build_family(checkpoint, family, parse_targets("pct", args.pcts), PruneSettings().paper_method())
        print(f"family: {family} (built or reused in {time.perf_counter() - start:.0f} s)", flush=True)
        runs, spreads = [], []
        for repeat in range(args.repeats):
            print(f"profile {repeat + 1}/{args.repeats}", flush=True)
            start = time.perf_counter()
            headlines, spread = _profile_once(family, settings)
            runs.append(headlines)
            spreads.append(spread)
            print(f"  took {time.perf_counter() - start:.0f} s", flush=True)
        table, worst = _table(runs)
    print(
        f"\nSmolLM2-135M-Instruct family, CPU, {settings.prompt_tokens} prompt + {settings.new_tokens} new tokens, "
        f">= {settings.min_runs} runs and >= {settings.min_seconds:g} s per batch size over {settings.rounds} rounds; "
        "figures from repeat 1, "
        f"CV of the medians over {args.repeats} repeats\n"
    )
    print(table)
    verdict = "met" if worst < 0.05 else "NOT met"
    print(f"\nworst coefficient of variation of a median between repeats: {worst * 100:.1f}% (target < 5%: {verdict})")
    if args.json:
        data = [
            {
                "headlines": {name: [h.__dict__ for h in rows] for name, rows in run.items()},
                "spread_between_rounds": spread,
            }
            for run, spread in zip(runs, spreads, strict=True)
        ]
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
