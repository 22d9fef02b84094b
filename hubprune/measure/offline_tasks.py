"""lm-eval tasks built from the public-domain texts shipped in hubprune/data/texts, so evaluation can run with no network:
perplexity and last-word prediction on the Jargon File (whose other half is the default calibration), and perplexity
on a text of another domain, fiction (Botchan), that no calibration, default or tuning reads.

The task YAMLs need absolute data paths (lm-eval's `dataset_path: json` reads `data_files` as given), so they
are written at run time into hubprune's cache, named by a hash of their content: the same text and code give
the same folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from hubprune.texts import OTHER_DOMAIN_FILE, TEXT_FILE, paragraphs

TASK_VERSION = 2
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
FINAL_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.!?]$")

PPL_YAML = """task: {task}
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
  description: {description}
"""
# task -> (shipped text, description); the task's data is `<task>.jsonl`
PPL_TASKS = {
    "hubprune_jargon_ppl": (
        TEXT_FILE,
        "Perplexity on the paragraphs of the Jargon File 4.4.7, chapters 1-8 (public domain)",
    ),
    "hubprune_botchan_ppl": (
        OTHER_DOMAIN_FILE,
        "Perplexity on passages of Botchan (Natsume Soseki, tr. Morri 1919, public domain), chapters 3-4, fiction, "
        "which no calibration, default or tuning of hubprune reads",
    ),
}

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
        if name in PPL_TASKS:
            found += paragraphs(PPL_TASKS[name][0])[:limit]
        elif name == "hubprune_jargon_lastword":
            found += [f"{item['context']} {item['word']}" for item in last_word_items()[:limit]]
    return found


def task_folder(cache: Path) -> Path:
    """The folder of offline task YAMLs (and their data) for TaskManager(include_path=...), written if missing."""
    ppl = {
        task: "".join(json.dumps({"text": p}) + "\n" for p in paragraphs(text)) for task, (text, _) in PPL_TASKS.items()
    }
    lastword = "".join(json.dumps(item) + "\n" for item in last_word_items())
    content = f"{TASK_VERSION}\n{PPL_YAML}\n{PPL_TASKS}\n{LASTWORD_YAML}\n{ppl}\n{lastword}"
    folder = cache / "tasks" / hashlib.sha256(content.encode()).hexdigest()[:16]
    if (folder / "hubprune_jargon_lastword.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for task, (_, description) in PPL_TASKS.items():
        (folder / f"{task}.jsonl").write_text(ppl[task], encoding="utf-8")
        (folder / f"{task}.yaml").write_text(
            PPL_YAML.format(task=task, data=folder / f"{task}.jsonl", version=TASK_VERSION, description=description),
            encoding="utf-8",
        )
    (folder / "jargon_lastword.jsonl").write_text(lastword, encoding="utf-8")
    # written last: its presence marks the folder complete
    (folder / "hubprune_jargon_lastword.yaml").write_text(
        LASTWORD_YAML.format(data=folder / "jargon_lastword.jsonl", version=TASK_VERSION), encoding="utf-8"
    )
    return folder
