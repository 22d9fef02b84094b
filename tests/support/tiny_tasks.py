"""Tiny local lm-eval tasks of all three request types (the `task_dir` fixture in conftest.py writes them), and
suite files that name them."""

from __future__ import annotations

import json
from pathlib import Path

TASKS = {
    "tiny_ppl": ("loglikelihood_rolling", [{"text": "w4 w5 w6 w7 w8 w9 w10 w11 w12"}, {"text": "w20 w21 w22 w23"}]),
    "tiny_mc": (
        "multiple_choice",
        [
            {"q": "w4 w5", "choices": ["w6", "w7", "w8"], "label": 0},
            {"q": "w9 w10", "choices": ["w11", "w12"], "label": 1},
            {"q": "w13", "choices": ["w14", "w15"], "label": 0},
            {"q": "w30 w31", "choices": ["w32", "w33"], "label": 1},
        ],
    ),
    "tiny_gen": ("generate_until", [{"q": "w4 w5", "a": "w6"}, {"q": "w7 w8", "a": "w9"}]),
}
BODY = {
    "loglikelihood_rolling": 'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n',
    "multiple_choice": (
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    ),
    "generate_until": (
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 3\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    ),
}
ALL_THREE = (
    '{task: tiny_ppl, num_fewshot: 0, metric: "word_perplexity,none"}',
    '{task: tiny_mc, num_fewshot: 1, metric: "acc,none"}',
    '{task: tiny_gen, num_fewshot: 0, metric: "exact_match,none"}',
)


def write_tasks(folder: Path) -> Path:
    """Each task of TASKS as its data (JSON lines) and its lm-eval YAML config, in `folder`."""
    for name, (kind, docs) in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\nfewshot_split: test\noutput_type: {kind}\n{BODY[kind]}metadata:\n  version: 1.0\n"
        )
    return folder


def suite_file(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text("name: tiny\ntasks:\n" + "".join(f"  - {e}\n" for e in entries))
    return path
