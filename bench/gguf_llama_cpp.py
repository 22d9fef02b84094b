"""GGUF members checked by llama.cpp itself: for a member of SmolLM2-135M-Instruct (the embedded default) and, with
--gemma FILE, of Gemma-3-270M (both GGUF sources), at --pct removed, in each --types:

- the time and peak memory of writing the file (`hubprune gguf`, one process per file);
- llama.cpp's tokenization of the text against the member's own tokenizer (transformers);
- llama-perplexity on the text against transformers' perplexity of the safetensors member on the same tokens,
  scored the way llama-perplexity scores (512-token chunks, the second half of each, BOS over the first token
  when the model adds one);
- greedy generations of llama.cpp (llama-simple) and of transformers from one prompt.

Each member is also written once by the safetensors route (metadata converted from its config.json and
tokenizer.json instead of copied from the source GGUF), F16, to check that conversion under llama.cpp too.

    python bench/gguf_llama_cpp.py [--gemma gemma-3-270m-q4_k_m.gguf] [--types F16,Q8_0,Q4_0] [--pct 20]

llama.cpp is built once into the cache by bench/llama_cpp.py (about 11 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import llama_cpp  # noqa: E402
from other_texts import fiction  # noqa: E402

PROMPT = "The capital of France is"


def transformers_perplexity(member: Path, ids: list[int], bos: int | None, ctx: int = 512) -> float:
    """Perplexity scored as llama-perplexity scores it (see llama_cpp.perplexity), on the same token ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    first, nll, count = ctx // 2, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) // ctx * ctx, ctx):
            chunk = torch.tensor([ids[start : start + ctx]])
            if bos is not None:
                chunk[0, 0] = bos
            logits = model(chunk).logits[0, first:-1].float()
            targets = chunk[0, first + 1 :]
            nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
    return math.exp(nll / count)


def transformers_greedy(member: Path, prompt: str, n_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(member)
    model = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def write_timed(member: Path, kind: str, source: str | None) -> tuple[float, float, str]:
    """Seconds to write the file (as hubprune.json records them) and the peak RSS in GB of the whole
    `hubprune gguf MEMBER --types KIND` process, measured by /usr/bin/time: a fresh process's own figure (a child
    of this one would inherit the high-water mark of the models this bench has loaded); and where the metadata
    came from. `source`: the GGUF the member was pruned from (the embedded default is found without it)."""
    command = ["/usr/bin/time", "-f", "peak-kb %M", "hubprune", "gguf", str(member), "--types", kind]
    command += ["--source", source] if source else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    peak_kb = int(done.stderr.rsplit("peak-kb ", 1)[1].split()[0])
    record = json.loads((member / "hubprune.json").read_text())["gguf"][kind]
    return float(record["seconds"]), peak_kb / 1e6, record["metadata_from"]


def safetensors_route(member: Path, work: Path) -> Path:
    """The member's F16 file with metadata converted from its own config.json and tokenizer.json."""
    from hubprune.export.gguf import Naming, write_member_gguf

    copy = work / f"{member.name}-converted"
    shutil.copytree(member, copy, ignore=shutil.ignore_patterns("*.gguf"))
    made = write_member_gguf(copy, "F16", Naming(member.name, "base"))
    return copy / made.file


def first_difference(a: list[int], b: list[int]) -> str:
    if a == b:
        return "same"
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"differ at token {at} of {len(a)}/{len(b)}"


def bench_model(source: str | None, label: str, args: argparse.Namespace, text: str, work: Path) -> None:
    from transformers import AutoTokenizer

    member = work / f"{label}-member"
    command = ["hubprune", "prune", *([source] if source else []), "-o", str(member), "--pct", str(args.pct)]
    command += ["--criterion", args.criterion, "--recover", "none"]  # the member its docs measured
    subprocess.run(command, check=True, capture_output=True)
    text_file = work / "text.txt"
    text_file.write_text(text, encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(member)
    ids = tokenizer(text).input_ids
    bos = tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None
    reference = transformers_perplexity(member, ids, bos)
    greedy = transformers_greedy(member, PROMPT, 24)
    print(
        f"\n## {label}, {args.pct} % removed ({args.criterion}): {len(ids)} tokens of fiction; transformers perplexity {reference:.3f}"
    )
    print(f"transformers greedy: {greedy!r}\n")
    print("| file | route | write s | write peak RSS | size | tokens | llama.cpp ppl | vs transformers |")
    print("|---|---|---|---|---|---|---|---|")
    files = []
    for kind in args.types.split(","):
        seconds, peak, route = write_timed(member, kind, source)
        files.append((member / f"{member.name}-{kind}.gguf", route, f"{seconds:.1f}", f"{peak:.2f} GB"))
    files.append((safetensors_route(member, work), "safetensors", "-", "-"))
    generations = []
    for path, route, seconds, peak in files:
        tokens = first_difference(llama_cpp.tokenize(path, text, bos=True), ids)
        ppl = llama_cpp.perplexity(path, text_file)
        size = f"{path.stat().st_size / 1e6:.1f} MB"
        print(
            f"| {path.name} | {route} | {seconds} | {peak} | {size} | {tokens} | {ppl:.3f} | {ppl / reference - 1:+.2%} |"
        )
        generations.append((path.name, llama_cpp.generate(path, PROMPT, 24)))
    print()
    for name, generated in generations:
        print(f"llama.cpp greedy, {name}: {generated!r}")
    recorded = json.loads((member / "hubprune.json").read_text())["gguf"]
    print("\nkept in F16:", {kind: len(r["kept_f16"]) for kind, r in recorded.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemma", type=Path, help="Gemma-3-270M as a .gguf file (also benched when given)")
    parser.add_argument("--types", default="F16,Q8_0,Q4_0")
    parser.add_argument("--pct", type=int, default=20)
    # a member that still writes sentences (MAW alone leaves SmolLM2 at 40x its perplexity), for the generations
    parser.add_argument("--criterion", default="activation")
    parser.add_argument("--chars", type=int, default=40_000, help="characters of the text (about 4 per token)")
    args = parser.parse_args()
    print(f"llama.cpp {llama_cpp.version()} (llama-cpp-python {llama_cpp.LLAMA_CPP_PYTHON} sdist)")
    text = fiction().read_text(encoding="utf-8")[: args.chars].rstrip("\n")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench_model(None, "SmolLM2-135M-Instruct", args, text, Path(tmp))
        if args.gemma:
            bench_model(str(args.gemma), "gemma-3-270m", args, text, Path(tmp))
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
