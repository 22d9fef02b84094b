"""What each recovery step gives back, on text of the calibration's domain and on texts of other domains.

For each source, criterion and width: token perplexity of the pruned model (the base with the removed neurons'
down_proj columns zeroed, which computes what the written member computes) with no recovery and with each recovery
asked for (`refit`, `sequential`, or steps joined by `+` such as `refit+reconstruct`, whose member steps train a
pruned copy in memory as check-criteria does), as a ratio to the base's, on four texts:
- shipped: the held-out paragraphs of the text hubprune ships (the shipped calibration's own domain);
- news, fiction, faq: English texts of other domains from registry packages (bench/other_texts.py names them and
  their licences). No calibration reads them; news was read by the probe that chose generated data, and the default
  method (activation + refit) was chosen on all three. The cards' fiction task scores chapters III-IV of the same
  book, which this bench never reads (it reads the first 4,096 tokens).
It also gives each step's time and the process's peak memory after it. The calibration is hubprune's default
(the shipped text's second half) unless --calibration says otherwise (generated: sequences the base samples itself;
mixed: the shipped half, then generated sequences up to --calibration-tokens).

    python bench/recovery.py [SOURCE ...] [--pcts 10,20,40] [--criteria maw,activation] [--tokens 4096]
        [--recoveries none,refit,sequential,refit+reconstruct] [--calibration shipped|generated|mixed|FILE]
        [--calibration-tokens 4096] [--reconstruct-tokens 32768] [--reconstruct-lr 1e-4] [--reconstruct-batch 512]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch
from other_texts import all_texts
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.model_inputs import loaded_modules, special_prefix, token_ids
from hubprune.pruning.calibrate import CalibrationSettings, collect_activations
from hubprune.pruning.check import CheckSettings, _perplexity, _pruned_perplexity, held_out_text, prune_in_memory
from hubprune.pruning.importance import DATA_CRITERIA, FISHER_CRITERIA, GRAM_CRITERIA, keep, rank
from hubprune.pruning.plan import Target, plan_family
from hubprune.pruning.prune import analyse, data_scores, down_modules, model_shape, weight_scores
from hubprune.pruning.source import open_source, source_identity
from hubprune.recover import methods
from hubprune.recover.apply import Recovery
from hubprune.recover.reconstruct import ReconstructSettings
from hubprune.recover.refit import PassInputs
from hubprune.recover.settings import RecoverySettings


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(source: str | None, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    checkpoint = open_source(source)
    layout = analyse(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.folder, dtype=torch.float32).eval()
    prefix = special_prefix(tokenizer)
    texts = {"shipped": held_out_text(CheckSettings())[0]} | {
        name: path.read_text(encoding="utf-8") for name, path in all_texts().items()
    }
    ids = {name: token_ids(tokenizer, text, args.tokens) for name, text in texts.items()}
    base = {name: _perplexity(model, i, 512, prefix) for name, i in ids.items()}
    names = down_modules(layout)
    downs = loaded_modules(model, names)
    calibration = CalibrationSettings(
        args.calibration if args.calibration in ("generated", "shipped", "mixed") else Path(args.calibration),
        args.calibration_tokens,
    )
    criteria = args.criteria.split(",")
    reconstruct = ReconstructSettings(
        tokens=args.reconstruct_tokens, learning_rate=args.reconstruct_lr, batch=args.reconstruct_batch
    )
    recoveries = {r: RecoverySettings(steps=r, reconstruct=reconstruct) for r in args.recoveries.split(",")}
    began = time.perf_counter()
    stats = collect_activations(
        model, tokenizer, names, calibration,
        grams=any(r.reads_grams for r in recoveries.values()) or any(c in GRAM_CRITERIA for c in criteria),
        source=json.dumps(source_identity(checkpoint), sort_keys=True),
        keep_inputs=any(r.keeps_windows for r in recoveries.values()),
        fishers=any(c in FISHER_CRITERIA for c in criteria),
    )  # fmt: skip
    print(
        f"\n## {checkpoint.source if source else 'embedded default'}\n\ncalibration: {stats.record['source']}, "
        f"{stats.record['tokens']} tokens, {time.perf_counter() - began:.0f} s; evaluation: first {args.tokens} "
        "tokens of each text, 512-token windows; ratio to the base\n"
    )
    print("base: " + ", ".join(f"{name} {value:.2f}" for name, value in base.items()))
    print(f"\n| removed | criterion | recovery | {' | '.join(texts)} | seconds | peak RSS |")
    print("|---|---|---|" + "---|" * len(texts) + "---|---|")
    weights = {layer: module.weight.data.float().clone() for layer, module in downs.items()}
    inputs = PassInputs(weights, stats.grams, model, stats.inputs, names)
    targets = [Target("pct", p) for p in args.pcts.split(",")]
    plan = plan_family(checkpoint.base_name, model_shape(checkpoint, layout), targets)
    for criterion in criteria:
        if criterion in DATA_CRITERIA:
            scores = data_scores(checkpoint, layout, stats, criterion)
        else:
            scores = {
                layer: weight_scores(checkpoint, layout, layer, criterion, 0) for layer in range(layout.num_layers)
            }
        for member in plan.members:
            kept = {layer: keep(rank(s), member.intermediate_size) for layer, s in scores.items()}
            for recovery, settings in recoveries.items():
                began = time.perf_counter()
                updates, passes = None, methods.of_phase(settings.steps, "pass")
                if passes:
                    updates = passes[0].load().member_updates(inputs, kept).updates
                if settings.trains:  # a pruned copy
                    student = copy.deepcopy(model)
                    prune_in_memory(student, layout, kept, updates)
                    found = Recovery(settings)
                    found.start_in_memory(model, tokenizer, None, stats.inputs)
                    *_, (_, student) = found.recover_model(student, layout.roles, recovery, None)
                    seconds = time.perf_counter() - began
                    ratios = [_perplexity(student, i, 512, prefix) / base[name] for name, i in ids.items()]
                    del student
                else:
                    seconds = time.perf_counter() - began
                    ratios = [
                        _pruned_perplexity(model, downs, kept, updates, i, 512, prefix) / base[name]
                        for name, i in ids.items()
                    ]
                cells = " | ".join(f"{r:.3f}x" for r in ratios)
                print(
                    f"| {member.target.value} % | {criterion} | {recovery} | {cells} | {seconds:.0f} | "
                    f"{peak_gb():.2f} GB |",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - started:.0f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=[None])
    parser.add_argument("--pcts", default="10,20,40")
    parser.add_argument("--criteria", default="maw,activation")
    parser.add_argument("--recoveries", default="none,refit,sequential")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of each evaluation text")
    parser.add_argument("--calibration", default="shipped")
    parser.add_argument("--calibration-tokens", type=int, default=4096)
    parser.add_argument("--reconstruct-tokens", type=int, default=ReconstructSettings.tokens)
    parser.add_argument("--reconstruct-lr", type=float, default=ReconstructSettings.learning_rate)
    parser.add_argument("--reconstruct-batch", type=int, default=ReconstructSettings.batch)
    args = parser.parse_args()
    for source in args.sources:
        run(source, args)


if __name__ == "__main__":
    main()
