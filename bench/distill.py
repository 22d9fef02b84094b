"""What does distillation (`--recover distill`) give back, and at what cost? The curve of held-out perplexity
against distillation tokens for one pruned model, on two texts: the shipped text's held-out paragraphs (the
calibration text's domain) and news paragraphs of another domain.

    python bench/distill.py [SOURCE] [--pct 20] [--criterion activation] [--refit] [--tokens 65536] [--every 8192]

The pruned model is built as check-criteria builds it (in memory, every layer pruned; with --refit, down_proj
refit first) and distilled exactly as `--recover distill` distils a member (distill.train, on sequences the base
generates itself). Every --every tokens, training pauses and both perplexities are measured (the time they take
is not counted). SOURCE and the news text are as in bench/recovery.py.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from other_texts import news as fetch_news
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.model_inputs import special_prefix, token_ids
from hubprune.pruning.calibrate import CalibrationSettings, collect_activations
from hubprune.pruning.check import CheckSettings, _perplexity, _scores, held_out_text, prune_in_memory
from hubprune.pruning.importance import FISHER_CRITERIA, GRAM_CRITERIA, keep, rank
from hubprune.pruning.plan import Target, plan_family
from hubprune.pruning.prune import analyse, down_modules, model_shape
from hubprune.pruning.source import open_source
from hubprune.recover.distill import DistillSettings, mlp_parameters, train
from hubprune.recover.distill_data import prepare_data
from hubprune.recover.refit import refit_member

EVAL_TOKENS = 4096
WINDOW = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=None)
    parser.add_argument("--pct", default="20")
    parser.add_argument("--criterion", default="activation")
    parser.add_argument("--refit", action="store_true", help="refit down_proj before distilling")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--every", type=int, default=8_192)
    parser.add_argument("--lr", type=float, default=DistillSettings().learning_rate)
    parser.add_argument("--news", type=Path, default=None, help="lee_background.cor (default: fetched from PyPI)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    checkpoint = open_source(args.source)
    layout = analyse(checkpoint)
    width = plan_family(checkpoint.base_name, model_shape(checkpoint, layout), [Target("pct", args.pct)]).members[0]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.folder, dtype=torch.float32).eval()
    prefix = special_prefix(tokenizer)
    news = args.news or fetch_news()
    texts = {
        "shipped": token_ids(tokenizer, held_out_text(CheckSettings())[0], EVAL_TOKENS),
        "news": token_ids(tokenizer, news.read_text(encoding="utf-8"), EVAL_TOKENS),
    }
    base = {name: _perplexity(model, ids, WINDOW, prefix) for name, ids in texts.items()}

    names = down_modules(layout)
    stats = collect_activations(
        model, tokenizer, names, CalibrationSettings("shipped"),
        grams=args.refit or args.criterion in GRAM_CRITERIA, fishers=args.criterion in FISHER_CRITERIA,
    )  # fmt: skip
    scores = _scores(checkpoint, layout, args.criterion, stats)
    kept = {layer: keep(rank(s), width.intermediate_size) for layer, s in scores.items()}
    updates = None
    if args.refit:
        downs = dict(model.named_modules())
        weights = {layer: downs[name].weight.data.float() for layer, name in names.items()}
        updates = refit_member(weights, stats.grams, kept).updates  # type: ignore[arg-type]
    student = copy.deepcopy(model)
    prune_in_memory(student, layout, kept, updates)

    settings = DistillSettings(tokens=args.tokens, learning_rate=args.lr)
    started = time.perf_counter()
    data = prepare_data(
        model, tokenizer, settings, on_progress=lambda e: print(f"[data] {e.done:,} tokens, {e.message}")
    )
    generation = time.perf_counter() - started
    label = f"{args.criterion}{' + refit' if args.refit else ''}, {args.pct} % removed"
    print(
        f"{checkpoint.source}: {label}; lr {args.lr:g}; data generated in {generation:.0f} s "
        f"({data.train.numel() + data.held_out.numel()} tokens)"
    )
    print(f"base: shipped {base['shipped']:.4g}, news {base['news']:.4g} ({EVAL_TOKENS} tokens each)")
    print("| distillation tokens | training s | shipped held-out | news |")
    print("|---|---|---|---|")
    paused = [0.0]
    began = time.perf_counter()

    def row(tokens: int) -> None:
        start = time.perf_counter()
        student.eval()
        measured = {name: _perplexity(student, ids, WINDOW, prefix) for name, ids in texts.items()}
        student.train()
        cells = [f"{measured[n]:.4g} ({measured[n] / base[n]:.2f}x)" for n in texts]
        print(f"| {tokens:,} | {start - began - paused[0]:.0f} | {cells[0]} | {cells[1]} |", flush=True)
        paused[0] += time.perf_counter() - start

    row(0)
    per_step = settings.batch * settings.seq_len
    every_steps = max(1, args.every // per_step)

    def on_step(step: int, tokens: int) -> None:
        if step % every_steps == 0 or step == settings.planned_steps:
            row(tokens)

    record = train(student, model, data, settings, mlp_parameters(student, layout.roles), on_step=on_step).record
    kl = record["held_out_kl"]
    print(f"held-out KL {kl['before']:.4f} -> {kl['after']:.4f}; {record['seconds']:.0f} s in train() with the pauses")


if __name__ == "__main__":
    main()
