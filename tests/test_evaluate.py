"""Benchmarks through lm-eval on tiny models with local tasks of all three request types, no network."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support.tiny_tasks import ALL_THREE, TASKS, suite_file

from hubprune.errors import EvaluationError
from hubprune.measure import evaluate as evaluate_module
from hubprune.measure.evaluate import EvalSettings, correlations, evaluate, vllm_model_args
from hubprune.measure.suites import SuiteTask, load_suite
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings


def direct_lm_eval(model_dir: Path, task: str, shots: int, task_dir: Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=1)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, task_manager=manager)["results"][task]


def test_builtin_suites_carry_the_papers_settings():
    paper = load_suite("paper")
    assert len(paper.tasks) == 13
    shots = {t.task: t.num_fewshot for t in paper.tasks}
    assert shots["mmlu"] == 5 and shots["gsm8k"] == 5 and shots["hellaswag"] == 0
    assert {t.task: t.metric for t in paper.tasks}["gsm8k"] == "exact_match,flexible-extract"
    assert [t.task for t in load_suite("offline").tasks] == [
        "hubprune_jargon_ppl",
        "hubprune_botchan_ppl",
        "hubprune_jargon_lastword",
    ]


def test_results_equal_lm_eval_called_directly(tmp_path, tiny_dir, task_dir):
    model = tmp_path / "model"  # a copy: results/ must not land in the checkpoint other tests share
    shutil.copytree(tiny_dir("llama"), model)
    settings = EvalSettings(suite=str(suite_file(tmp_path, *ALL_THREE)), include_paths=(task_dir,), batch_size="1")
    evaluate(model, settings)
    stored = json.loads((model / "results" / "eval.json").read_text())
    assert stored["dtype"] == "float32" and stored["device"] == "cpu"
    for task, metric, shots in (
        ("tiny_ppl", "word_perplexity,none", 0),
        ("tiny_mc", "acc,none", 1),
        ("tiny_gen", "exact_match,none", 0),
    ):
        result = stored["tasks"][task]
        assert result["metric"] == metric and result["num_fewshot"] == shots
        assert result["value"] == direct_lm_eval(model, task, shots, task_dir)[metric]
        assert result["n_samples"]["effective"] == len(TASKS[task][1])
        raw = json.loads((model / "results" / "lm_eval" / f"{task}.json").read_text())
        assert raw["n-shot"] == {task: shots}
        assert "git_hash" not in raw and "upper_git_hash" not in raw  # the working directory is no provenance
    assert stored["tasks"]["tiny_ppl"]["value"] > 1.0  # a real perplexity, not a placeholder
    assert stored["tasks"]["tiny_mc"]["stderr"] > 0


def test_finished_tasks_are_not_run_again_unless_settings_change(tmp_path, tiny_dir, task_dir, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir("llama"), model)
    suite = str(suite_file(tmp_path, ALL_THREE[1]))
    evaluate(model, EvalSettings(suite=suite, include_paths=(task_dir,)))
    first = json.loads((model / "results" / "eval.json").read_text())["tasks"]["tiny_mc"]

    calls = []
    real = evaluate_module._run_lm_eval
    monkeypatch.setattr(evaluate_module, "_run_lm_eval", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    evaluate(model, EvalSettings(suite=suite, include_paths=(task_dir,)))
    assert calls == []
    evaluate(model, EvalSettings(suite=suite, include_paths=(task_dir,), limit=2))
    assert [[t.task for t in group] for group in calls] == [["tiny_mc"]]
    second = json.loads((model / "results" / "eval.json").read_text())["tasks"]["tiny_mc"]
    assert second["limit"] == 2 and second["n_samples"]["effective"] == 2
    assert second["settings_key"] != first["settings_key"]


def test_family_gets_base_and_members_with_stage_status_and_correlations(tmp_path, tiny_dir, task_dir):
    family_dir = tmp_path / "fam"
    targets = [Target("size", "48"), Target("size", "32")]
    build_family(
        open_source(str(tiny_dir("llama"))), family_dir, targets, PruneSettings("maw", recovery=RecoverySettings())
    )
    suite = str(suite_file(tmp_path, ALL_THREE[0], ALL_THREE[1]))
    outcome = evaluate(family_dir, EvalSettings(suite=suite, include_paths=(task_dir,)))
    assert list(outcome.results) == ["base", "src-llama0-er1.5", "src-llama0-er1"]
    assert [t.task for t in outcome.tasks] == ["tiny_ppl", "tiny_mc"]
    assert (family_dir / "base-results" / "eval.json").exists()
    manifest = json.loads((family_dir / "family.json").read_text())
    assert [m["stages"]["eval"]["status"] for m in manifest["members"]] == ["done", "done"]
    assert manifest["analysis"]["base_eval"]["status"] == "done"
    (pair,) = manifest["analysis"]["correlations"]
    assert pair["n"] == 3 and {pair["x"], pair["y"]} == {"tiny_ppl:word_perplexity,none", "tiny_mc:acc,none"}


def test_correlation_matches_a_hand_computed_case():
    table = {"a": {"x": 1.0, "y": 2.0}, "b": {"x": 2.0, "y": 4.5}, "c": {"x": 3.0, "y": 5.0}, "d": {"x": 4.0}}
    (pair,) = correlations(table)
    xs, ys = [1.0, 2.0, 3.0], [2.0, 4.5, 5.0]
    mx, my = sum(xs) / 3, sum(ys) / 3
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    r = sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    t = r * math.sqrt(1 / (1 - r * r))  # n - 2 = 1 degree of freedom: Student t with 1 df is Cauchy
    p = 1 - 2 * math.atan(abs(t)) / math.pi
    assert pair["n"] == 3
    assert pair["r"] == pytest.approx(r, rel=1e-12)
    assert pair["p"] == pytest.approx(p, rel=1e-9)


def test_a_single_model_gets_no_correlations():
    assert correlations({"only": {"x": 1.0, "y": 2.0}}) == []


def test_vllm_arguments():
    settings = EvalSettings(backend="vllm", tensor_parallel_size=2, data_parallel_size=4, batch_size="16")
    assert vllm_model_args(Path("/m/member"), settings, "bfloat16") == (
        "pretrained=/m/member,dtype=bfloat16,tensor_parallel_size=2,data_parallel_size=4,"
        "gpu_memory_utilization=0.9,batch_size=16"
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--tasks", "tiny_mcq"], "unknown lm-eval task 'tiny_mcq': did you mean tiny_mc"),
        (["--suite", "nonsense"], "unknown suite 'nonsense'"),
        (["--limit", "0"], "--limit 0"),
        (["--batch-size", "zero"], "--batch-size 'zero'"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),
    ],
)
def test_bad_eval_input_gives_one_line(tiny_dir, task_dir, tmp_path, args, fragment):
    from hubprune.cli import main

    model = tiny_dir("llama")
    suite = str(suite_file(tmp_path, ALL_THREE[1]))
    base = ["eval", str(model), "--include-path", str(task_dir)]
    if "--suite" not in args:
        base += ["--suite", suite]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and fragment in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_suite_file_field_is_named(tmp_path):
    bad = suite_file(tmp_path, "{task: tiny_mc, fewshot: 2}")
    with pytest.raises(EvaluationError, match="unknown field.*fewshot"):
        load_suite(str(bad))


def test_path_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(EvaluationError, match="neither a hubprune family"):
        evaluate(tmp_path, EvalSettings(suite="offline"))


def test_network_task_offline_gives_a_clear_error(tiny_dir, tmp_path, monkeypatch):
    """arc_easy's data comes from the Hub: offline, the run stops with a message, not a hang or traceback."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    suite = suite_file(tmp_path, '{task: arc_easy, num_fewshot: 0, metric: "acc,none", limit: 2}')
    with pytest.raises(EvaluationError, match="download their datasets from the Hub"):
        evaluate(tiny_dir("llama"), EvalSettings(suite=str(suite)))


def test_build_family_runs_the_eval_stage_and_prints_the_headline(tmp_path, tiny_dir, task_dir):
    from hubprune.cli import main

    family = tmp_path / "fam"
    result = CliRunner().invoke(
        main,
        [
            "build-family",
            str(tiny_dir("llama")),
            "-o",
            str(family),
            "--sizes",
            "48",
            *("--suite", "offline", "--tasks", "tiny_ppl"),  # a task outside the suite: its metric is in the results
            "--include-path",
            str(task_dir),
            *("--batch-sizes", "1", "--prompt-tokens", "6", "--new-tokens", "3", "--min-seconds", "0"),
            *("--rounds", "1"),  # rounds are test_profile.py's: one fresh process per model here
        ],
    )
    assert result.exit_code == 0, result.output
    profiled = json.loads((family / "src-llama0-er1.5" / "results" / "profile.json").read_text())
    assert profiled["status"] == "done" and [b["batch_size"] for b in profiled["batches"]] == [1]
    assert "decode tok/s" in result.output
    base = json.loads((family / "base-results" / "eval.json").read_text())["tasks"]["tiny_ppl"]["value"]
    member = json.loads((family / "src-llama0-er1.5" / "results" / "eval.json").read_text())
    value = member["tasks"]["tiny_ppl"]["value"]
    assert "tiny_ppl (word_perplexity)" in result.output
    change = f"{value / base:,.1f}× base" if value / base >= 2 else f"{(value - base) / base * 100:+.1f} %"
    assert f"{value:.4g} ({change})" in result.output  # as the cards write it
    assert (family / "src-llama0-er1.5" / "README.md").exists()


def test_bad_eval_option_stops_build_family_before_anything_is_written(tmp_path, tiny_dir):
    from hubprune.cli import main

    family = tmp_path / "fam"
    result = CliRunner().invoke(
        main,
        ["build-family", "--skip-profile", str(tiny_dir("llama")), "-o", str(family), "--sizes", "48", "--limit", "0"],
    )
    assert result.exit_code == 1 and "--limit 0" in result.output
    assert not family.exists()


def test_ifeval_without_punkt_tab_says_how_to_provide_it(monkeypatch, tmp_path):
    """IFEval needs nltk's punkt_tab: without it, a clear error, never a silent download."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # an empty data folder: punkt_tab is not there
    with pytest.raises(EvaluationError, match="nltk.downloader punkt_tab"):
        evaluate_module._check_task_requirements([SuiteTask("ifeval", 0, "prompt_level_strict_acc,none")])
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_stops_build_family_before_anything_is_written(tmp_path, tiny_dir, task_dir):
    from hubprune.cli import main

    family = tmp_path / "fam"
    suite = str(suite_file(tmp_path, ALL_THREE[1]))
    args = ["build-family", "--skip-profile", str(tiny_dir("llama")), "-o", str(family), "--sizes", "48"]
    result = CliRunner().invoke(main, [*args, "--suite", suite, "--include-path", str(task_dir), "--tasks", "tiny_mcq"])
    assert result.exit_code == 1 and "unknown lm-eval task 'tiny_mcq'" in result.output
    assert not family.exists()
