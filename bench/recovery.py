"""How much does the down_proj refit (`--recover refit`) give back? check-criteria's protocol on one or more
models: held-out token perplexity of the model pruned by each criterion, plain and refit, against random pruning's
median, at several widths, on two held-out texts: the part of the shipped text that calibration does not read
(the same domain as the calibration text: it flatters), and news paragraphs of another domain.

    python bench/recovery.py [SOURCE ...] [--pcts 10,20,40] [--criteria maw,activation] [--news FILE]

SOURCE: what check-criteria takes (default: the embedded default, SmolLM2-135M-Instruct). The news text is
lee_background.cor from the gensim 4.4.0 wheel (300 ABC news paragraphs, 2001-02; LGPL package, no licence of
its own); without --news the bench fetches that wheel from PyPI into a temporary folder and reads it from there:

    pip download gensim==4.4.0 --no-deps --only-binary=:all: -d DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from hubprune.pruning.check import CheckSettings, check_criteria
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"


def news_text(folder: Path) -> Path:
    """lee_background.cor, taken from the gensim wheel (downloaded, not installed)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "gensim==4.4.0",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(folder),
        ],
        check=True,
    )
    wheel = next(folder.glob("gensim-*.whl"))
    target = folder / "lee_background.cor"
    target.write_bytes(zipfile.ZipFile(wheel).read(NEWS_MEMBER))
    return target


def run(source: str | None, text: Path | None, pcts: tuple[str, ...], criteria: tuple[str, ...]) -> None:
    label = "shipped text, held-out paragraphs" if text is None else text.name
    started = time.perf_counter()
    settings = CheckSettings(text=text, pcts=pcts, criteria=(*criteria, "random"), recovery=RecoverySettings("refit"))
    outcome = check_criteria(open_source(source), settings)
    seconds = time.perf_counter() - started
    base = outcome.base_perplexity
    print(f"\n{source or 'embedded default'} on {label} ({outcome.text['tokens']} tokens), {seconds:.0f} s")
    print(f"| removed | criterion | plain | refit | random median | base {base:.2f} |")
    print("|---|---|---|---|---|---|")
    randoms = {r.pct: r.perplexity for r in outcome.rows if r.criterion == "random"}
    for pct in pcts:
        for criterion in criteria:
            found = {r.recovery: r.perplexity for r in outcome.rows if r.criterion == criterion and r.pct == pct}
            plain, refit = found["none"], found["refit"]
            print(
                f"| {pct} % | {criterion} | {plain:.2f} ({plain / base:.2f}x) | {refit:.2f} ({refit / base:.2f}x) "
                f"| {randoms[pct]:.2f} ({randoms[pct] / base:.2f}x) | |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=[None])
    parser.add_argument("--pcts", default="10,20,40")
    parser.add_argument("--criteria", default="maw,activation")
    parser.add_argument("--news", type=Path, help="lee_background.cor (default: fetched from the gensim wheel)")
    args = parser.parse_args()
    pcts, criteria = tuple(args.pcts.split(",")), tuple(args.criteria.split(","))
    with tempfile.TemporaryDirectory() as work:
        news = args.news or news_text(Path(work))
        for source in args.sources:
            for text in (None, news):
                run(source, text, pcts, criteria)


if __name__ == "__main__":
    main()
