"""The paper's benchmarks the way a user runs them, against the loopback Hub: a tiny model repo and tiny stand-ins of
every dataset the `paper` and `quick` suites' lm-eval tasks read (support/paper_datasets.py), served over HTTP to the
unmodified huggingface_hub, datasets and lm-eval. `--suite auto` where no Hub answers, too.

One build carries most of it (README's "Real-world use"): `build-family OWNER/NAME` from the loopback Hub with the
default suite, `--limit 2`, through the cards, then `push` to the same Hub and `from_pretrained` back. Two members and
the base make the three models that correlations need; the paper's six widths would evaluate seven models for
nothing more."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import socket

import nltk
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import constants
from support.hub_server import point_datasets_at
from support.paper_datasets import STAND_INS, punkt_tab, seed
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.measure import suites
from hubprune.measure.suites import choose_suite, load_suite

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

PAPER = load_suite("paper")
IFEVAL_EXTRA = all(importlib.util.find_spec(name) for name in ("langdetect", "immutabledict"))
# Without the ifeval extra, IFEval is refused before anything runs (tested below); the rest of the suite still runs.
TASKS = [t for t in PAPER.tasks if IFEVAL_EXTRA or t.task != "ifeval"]
MEMBERS = ["tiny-llama-er1.5", "tiny-llama-er1"]
LOWER_IS_BETTER = {"wikitext", "lambada_openai"}  # perplexities


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A tiny model gains nothing from a second thread, and on a shared machine (CI runners, a busy laptop) two
    threads that wait on each other make lm-eval's 1280-token IFEval generation several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def paper_hub(hub, monkeypatch, tmp_path):
    """conftest's `hub` holding every stand-in dataset, with the datasets library pointed at it, and a stand-in of
    nltk's punkt_tab data (IFEval's) on nltk's path instead of the real download."""
    seed(hub)
    point_datasets_at(hub, monkeypatch, tmp_path / "hf-home")
    monkeypatch.setattr(nltk.data, "path", [str(punkt_tab(tmp_path / "nltk_data"))])
    suites._probe.cache_clear()  # `auto` asks each endpoint once per process: count this test's asking from zero
    return hub


@pytest.fixture
def model_repo(paper_hub, tiny_dir):
    """A tiny Llama as the Hub repo acme/tiny-llama, with a card that declares its licence, as a base model's does."""
    files = {path.name: path.read_bytes() for path in tiny_dir("llama").iterdir() if path.is_file()}
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n# tiny-llama\n"
    return "acme/tiny-llama", paper_hub.add_commit("acme/tiny-llama", files)


def task_args(tasks) -> list[str]:
    return [] if len(tasks) == len(PAPER.tasks) else ["--tasks", ",".join(t.task for t in tasks)]


def stand_in(repo_id: str):
    return next(s for s in STAND_INS if s.repo_id == repo_id)


def leaf_configs(family, tasks):
    """(lm-eval record, subtask) for every subtask that read documents, in the base's results."""
    for task in tasks:
        raw = json.loads((family / "base-results" / "lm_eval" / f"{task.task}.json").read_text())
        yield from ((raw, name) for name in raw["configs"] if not raw["group_subtasks"].get(name))


def check_lm_eval_record(raw: dict, task: str, shots: int, metric: str) -> None:
    """lm-eval's own record of one suite task: the metric is there, every subtask ran 2 documents at the suite's
    few-shot count, from a stand-in's config and splits (so the stand-ins name what the installed lm-eval reads)."""
    assert isinstance(raw["results"][task][metric], (int, float)), raw["results"][task]
    leaves = [name for name, config in raw["configs"].items() if not raw["group_subtasks"].get(name)]
    assert leaves and set(leaves) <= set(raw["n-shot"]) | {task}
    for leaf in leaves:
        config = raw["configs"][leaf]
        assert config["num_fewshot"] == shots and raw["n-shot"][leaf] == shots, (leaf, config["num_fewshot"])
        assert raw["n-samples"][leaf]["effective"] == 2, (leaf, raw["n-samples"][leaf])
        data = stand_in(config["dataset_path"])
        splits = data.configs[config.get("dataset_name") or "default"]
        for role in ("test_split", "validation_split", "fewshot_split", "training_split"):
            assert config.get(role) in (None, *splits), (leaf, role, config.get(role))
        source = config.get("metadata", {}).get("config_source")  # the task's YAML, not where it lies on this machine
        assert source is None or source.startswith("lm_eval/tasks/"), source


def test_the_paper_suite_from_a_hub_source_through_cards_push_and_from_pretrained(
    paper_hub, model_repo, tmp_path, monkeypatch
):
    repo_id, sha = model_repo
    family = tmp_path / "family"
    args = ["build-family", repo_id, "-o", str(family), "--sizes", "48,32", "--limit", "2", "--skip-profile"]
    result = CliRunner().invoke(main, [*args, "--namespace", "acme", *task_args(TASKS)])
    assert result.exit_code == 0, result.output

    # auto asked the Hub once, and said in one line what it picked and why
    assert len(paper_hub.calls("home")) == 1
    picked = f"suite auto: paper, because the Hub at {paper_hub.endpoint} answers"
    assert result.output.count("suite auto:") == 1 and picked in result.output, result.output
    manifest = json.loads((family / "family.json").read_text())
    assert manifest["source"]["id"] == repo_id and manifest["source"]["revision"] == sha
    assert [m["name"] for m in manifest["members"]] == MEMBERS
    assert {m["stages"]["eval"]["suite"] for m in manifest["members"]} == {"paper"}
    names = [t.task for t in TASKS]
    for results in [family / "base-results", *(family / m / "results" for m in MEMBERS)]:
        stored = json.loads((results / "eval.json").read_text())
        assert stored["suite"] == "paper" and list(stored["tasks"]) == names  # every task, in the suite's order
        for task in TASKS:
            record = stored["tasks"][task.task]
            assert record["metric"] == task.metric and math.isfinite(record["value"])
            assert record["num_fewshot"] == task.num_fewshot and record["limit"] == 2
            assert record["higher_is_better"] is (task.task not in LOWER_IS_BETTER), task.task
            assert record["n_samples"]["effective"] >= 2, task.task  # a group sums its subtasks' documents
            raw = json.loads((results / "lm_eval" / f"{task.task}.json").read_text())
            check_lm_eval_record(raw, task.task, task.num_fewshot, task.metric)
    mmlu = json.loads((family / "base-results" / "lm_eval" / "mmlu.json").read_text())
    assert len([name for name in mmlu["configs"] if name.startswith("mmlu_")]) == 57
    counted = json.loads((family / "base-results" / "eval.json").read_text())["tasks"]["mmlu"]["n_samples"]
    assert counted == {"original": 57 * 3, "effective": 57 * 2}  # 2 of each subject's 3 test questions
    # the data came from the loopback Hub: every stand-in that a task reads was downloaded from it
    read = {stand_in(raw["configs"][leaf]["dataset_path"]).repo_id for raw, leaf in leaf_configs(family, TASKS)}
    assert read == {s.repo_id for s in STAND_INS if set(s.tasks) & set(names)}
    assert all(paper_hub.requested("GET", f"/datasets/{repo}/resolve/") for repo in read)

    correlations = manifest["analysis"]["correlations"]
    assert correlations and {pair["n"] for pair in correlations} == {3}
    metrics = {f"{t.task}:{t.metric}" for t in TASKS}
    assert {pair["x"] for pair in correlations} | {pair["y"] for pair in correlations} == metrics

    for card in [family / "README.md", *(family / m / "README.md" for m in MEMBERS)]:
        text = card.read_text()
        for task in TASKS:
            arrow = "↓" if task.task in LOWER_IS_BETTER else "↑"
            assert f"{task.task} ({task.metric.split(',')[0]} {arrow})" in text, (card, task.task)

    # push to the same Hub, and load a member back from it
    monkeypatch.setenv("HF_TOKEN", paper_hub.token)
    pushed = CliRunner().invoke(main, ["push", str(family), "--namespace", "acme"])
    assert pushed.exit_code == 0, pushed.output
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        remote = AutoModelForCausalLM.from_pretrained(f"acme/{MEMBERS[1]}").eval()(ids).logits
        local = AutoModelForCausalLM.from_pretrained(family / MEMBERS[1]).eval()(ids).logits
    assert torch.equal(remote, local)
    assert paper_hub.files(f"acme/{MEMBERS[1]}")["README.md"] == (family / MEMBERS[1] / "README.md").read_bytes()


def test_the_quick_suite_runs_on_the_stand_ins(paper_hub, tiny_dir, tmp_path):
    model = shutil.copytree(tiny_dir("llama"), tmp_path / "model")
    result = CliRunner().invoke(main, ["eval", str(model), "--suite", "quick", "--limit", "2"])
    assert result.exit_code == 0, result.output
    stored = json.loads((model / "results" / "eval.json").read_text())
    quick = load_suite("quick")
    assert list(stored["tasks"]) == [t.task for t in quick.tasks]
    for task in quick.tasks:
        raw = json.loads((model / "results" / "lm_eval" / f"{task.task}.json").read_text())
        check_lm_eval_record(raw, task.task, task.num_fewshot, task.metric)
    assert len(paper_hub.calls("home")) == 1  # a named suite whose data is on the Hub is checked by the same probe


@pytest.mark.parametrize("extra", [True, False], ids=["with-the-ifeval-extra", "without-it"])
def test_ifeval_without_its_data_stops_before_any_pruning(paper_hub, model_repo, tmp_path, monkeypatch, extra):
    """IFEval needs nltk's punkt_tab data (and the ifeval extra): a one-line error naming the command that gets
    it, after the suite was picked and before anything is written."""
    import sys

    if extra and not IFEVAL_EXTRA:
        pytest.skip("the ifeval extra (langdetect, immutabledict) is not installed")
    if not extra:
        monkeypatch.setitem(sys.modules, "langdetect", None)  # import langdetect now raises ImportError
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    family = tmp_path / "family"
    result = CliRunner().invoke(main, ["build-family", model_repo[0], "-o", str(family), "--sizes", "48"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "`python -m nltk.downloader punkt_tab`" in error[0], result.output
    assert ("pip install 'hubprune[ifeval]'" in error[0]) is not extra
    assert not family.exists()


@pytest.fixture
def no_hub(monkeypatch):
    """A Hub endpoint nothing listens on (a port just closed), with the Hub client online: a machine whose Hub
    does not answer. Returns the endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    suites._probe.cache_clear()
    return endpoint


def test_auto_without_a_hub_picks_offline_once_and_says_why(no_hub, tiny_dir, tmp_path):
    family = tmp_path / "family"
    args = ["build-family", str(tiny_dir("llama")), "-o", str(family), "--sizes", "48", "--skip-profile"]
    result = CliRunner().invoke(main, [*args, "--limit", "2"])
    assert result.exit_code == 0, result.output
    line = f"suite auto: offline, because the Hub at {no_hub} does not answer (ConnectError"
    assert result.output.count("suite auto:") == 1 and line in result.output, result.output
    assert suites._probe.cache_info().misses == 1  # asked once, for the check before pruning and the eval after
    manifest = json.loads((family / "family.json").read_text())
    assert manifest["members"][0]["stages"]["eval"]["suite"] == "offline"

    again = CliRunner().invoke(main, ["eval", str(family), "--limit", "2"])  # `eval` says it the same way
    assert again.exit_code == 0 and again.output.count("suite auto:") == 1 and line in again.output, again.output
    assert suites._probe.cache_info().misses == 1  # the same process asks the same endpoint once


def test_a_named_hub_suite_without_a_hub_names_that_first(no_hub, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])  # IFEval's data is missing too
    family = tmp_path / "family"
    args = ["build-family", str(tiny_dir("llama")), "-o", str(family), "--sizes", "48", "--suite", "paper"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(
        f"error: suite 'paper' reads its datasets from the Hub, and the Hub at {no_hub} does not answer (ConnectError"
    )
    assert "use --suite offline, or set HF_HUB_OFFLINE=1" in result.output
    assert result.output.index("--suite offline") < result.output.index("nltk.downloader punkt_tab")
    assert not family.exists()


def test_auto_decides_without_a_request_when_told_offline_or_the_source_is_the_embedded_default(hub, monkeypatch):
    suites._probe.cache_clear()
    assert choose_suite(True).name == "offline"  # the embedded default's job runs without the network
    assert hub.requests == []
    assert choose_suite(False) == choose_suite(False) and choose_suite(False).name == "paper"
    assert len(hub.calls("home")) == 1  # asked once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert choose_suite(False) == suites.SuiteChoice("offline", "HF_HUB_OFFLINE is set")
    assert len(hub.requests) == 1


def test_a_hub_that_never_answers_is_given_up_on(monkeypatch):
    """A server that takes the connection and never replies (a stalled proxy): no answer, after the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody reads the request or replies
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(suites, "HUB_PROBE_TIMEOUT_S", 0.2)
        suites._probe.cache_clear()
        choice = choose_suite(False)
    assert choice.name == "offline" and "does not answer" in choice.reason
    assert "Timeout" in choice.reason or "no answer within 0.2 s" in choice.reason, choice.reason
