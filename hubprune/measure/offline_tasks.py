"""lm-eval tasks built from the public-domain text shipped in hubprune/data/texts, so evaluation can run with no network.

The task YAMLs need absolute data paths (lm-eval's `dataset_path: json` reads `data_files` as given), so they
are written at run time into hubprune's cache, named by a hash of their content: the same text and code give
the same folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from hubprune.texts import paragraphs

TASK_VERSION = 2
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
FINAL_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.!?]$")

PPL_YAML = """task: hubprune_jargon_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: {version}
  description: Perplexity on the paragraphs of the Jargon File 4.4.7, chapters 1-8 (public domain)
"""

LASTWORD_YAML = """task: hubprune_jargon_lastword
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: " {{{{word}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
  description: Greedy prediction of each sentence's last word, given that sentence and the one before it (LAMBADA-style), Jargon File 4.4.7 chapters 1-8
"""


def last_word_items() -> list[dict[str, str]]:
    """One item per sentence that ends in a plain word: the previous sentence and this one up to that word as
    context (short, so a CPU evaluates it in seconds), and the word."""
    items = []
    for paragraph in paragraphs():
        sentences = SENTENCE_END.split(paragraph.strip())
        for i, sentence in enumerate(sentences):
            match = FINAL_WORD.match(sentence)
            if match and len(sentence.split()) >= 8:
                context = " ".join([*sentences[max(0, i - 1) : i], match.group("context")])
                items.append({"context": context, "word": match.group("word")})
    return items


def evaluated_documents(tasks: list[tuple[str, int | None]]) -> list[str]:
    """The texts the offline tasks among `tasks` ((name, limit) pairs) score, for the calibration disjointness
    check: lm-eval reads the first `limit` documents."""
    found: list[str] = []
    for name, limit in tasks:
        if name == "hubprune_jargon_ppl":
            found += paragraphs()[:limit]
        elif name == "hubprune_jargon_lastword":
            found += [f"{item['context']} {item['word']}" for item in last_word_items()[:limit]]
    return found


def task_folder(cache: Path) -> Path:
    """The folder of offline task YAMLs (and their data) for TaskManager(include_path=...), written if missing."""
    ppl = "".join(json.dumps({"text": p}) + "\n" for p in paragraphs())
    lastword = "".join(json.dumps(item) + "\n" for item in last_word_items())
    digest = hashlib.sha256(f"{TASK_VERSION}\n{PPL_YAML}\n{LASTWORD_YAML}\n{ppl}\n{lastword}".encode()).hexdigest()
    folder = cache / "tasks" / digest[:16]
    if (folder / "hubprune_jargon_lastword.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jargon_paragraphs.jsonl").write_text(ppl, encoding="utf-8")
    (folder / "jargon_lastword.jsonl").write_text(lastword, encoding="utf-8")
    (folder / "hubprune_jargon_ppl.yaml").write_text(
        PPL_YAML.format(data=folder / "jargon_paragraphs.jsonl", version=TASK_VERSION), encoding="utf-8"
    )
    # written last: its presence marks the folder complete
    (folder / "hubprune_jargon_lastword.yaml").write_text(
        LASTWORD_YAML.format(data=folder / "jargon_lastword.jsonl", version=TASK_VERSION), encoding="utf-8"
    )
    return folder
