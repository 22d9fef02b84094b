"""Each command-line option reaches what it sets: given on the command line, its value is found where the library
puts it (the member's provenance, a results file, a card's front matter, the Hub's commit, lm-eval's model
arguments, the printed outcome), not merely accepted with exit status 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from lm_eval.utils import simple_parse_args_string
from support.oracle import load_tensors
from support.tiny_models import LAYERS, WIDTH
from support.tiny_tasks import suite_file
from test_cli import invoke
from test_data_criteria import words
from test_push import MEMBERS, REPOS, built_family, family, pushed_commits, token_and_no_backoff  # noqa: F401
from test_push import push as push_to

from hubprune.measure.evaluate import EvalSettings

TINY_PPL = '{task: tiny_ppl, num_fewshot: 0, metric: "word_perplexity,none"}'
PROFILE_FAST = (
    "--batch-sizes",
    "1",
    "--prompt-tokens",
    "8",
    "--new-tokens",
    "4",
    "--min-seconds",
    "0",
    "--rounds",
    "1",
)


@pytest.fixture
def model(tiny_dir, tmp_path) -> Path:
    """A copy of the tiny Llama (float32), for commands that write results/ into the checkpoint they measure."""
    return Path(shutil.copytree(tiny_dir("llama"), tmp_path / "Tiny-Llama"))


def kept(member: Path) -> list[list[int]]:
    return json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]


# --- prune ------------------------------------------------------------------------------------------------------


def test_seed_chooses_which_neurons_random_pruning_keeps(tiny_dir, tmp_path):
    """--seed: the same seed keeps the same neurons, another seed others; the member holds the base's rows of the
    neurons its kept-indices file names, and its provenance the seed. No --seed is seed 0, as --help says."""
    source = tiny_dir("llama")
    runs = {
        "one": ["--seed", "1"],
        "two": ["--seed", "2"],
        "again": ["--seed", "1"],
        "default": [],
        "zero": ["--seed", "0"],
    }
    for name, args in runs.items():
        result = invoke("prune", source, "-o", tmp_path / name, "--pct", "50", "--criterion", "random", *args)
        assert result.exit_code == 0, result.output
    one, two, again, default, zero = (tmp_path / name for name in runs)
    assert kept(one) == kept(again) and kept(one) != kept(two)
    assert kept(default) == kept(zero) and kept(zero) not in (kept(one), kept(two))
    assert [json.loads((m / "hubprune.json").read_text())["seed"] for m in (one, two, zero)] == [1, 2, 0]
    base, member = load_tensors(source), load_tensors(two)
    for layer, indices in enumerate(kept(two)):
        assert len(indices) == WIDTH // 2 and indices == sorted(set(indices))
        name = f"model.layers.{layer}.mlp.gate_proj.weight"
        assert torch.equal(member[name], base[name][indices])
    assert len(kept(two)) == LAYERS


def test_distill_steps_stops_the_distillation_at_that_step(tiny_dir, tmp_path):
    """--distill-steps 2 with a budget of 4 steps (8192 tokens of 8 x 256 a step): the member's provenance records
    2 steps and the tokens they took."""
    text = tmp_path / "distill.txt"
    text.write_text(words(6, 5000))
    out = tmp_path / "member"
    result = invoke(
        *("prune", tiny_dir("llama"), "-o", out, "--pct", "25", "--device", "cpu", "--recover", "distill"),
        *("--distill-text", text, "--distill-tokens", "8192", "--distill-steps", "2"),
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "hubprune.json").read_text())["distillation"]
    assert (record["steps"], record["tokens"], record["batch"], record["seq_len"]) == (2, 2 * 8 * 256, 8, 256)


# --- check-criteria ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [300, 1000])
def test_check_criteria_tokens_is_the_held_out_length_read(tiny_dir, tmp_path, tokens):
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(words(3, 3000))  # 3000 tokens: more than either
    result = invoke(
        *("check-criteria", tiny_dir("llama"), "--text", held_out, "--tokens", tokens),
        *("--criteria", "maw,random", "--seeds", "1", "--pcts", "25"),
    )
    assert result.exit_code == 0, result.output
    assert f"held-out text: held-out.txt, {tokens} tokens" in result.output


# --- eval and profile -------------------------------------------------------------------------------------------


def test_eval_dtype_is_the_dtype_evaluated_in(model, task_dir, tmp_path):
    """--dtype bfloat16 on the CPU, where auto means float32: eval.json and the settings key say bfloat16, and the
    perplexity differs from float32's."""
    suite = suite_file(tmp_path, TINY_PPL)
    common = ("eval", model, "--suite", suite, "--include-path", task_dir, "--device", "cpu", "--batch-size", "1")
    values = {}
    for dtype in ("bfloat16", "auto"):
        result = invoke(*common, "--dtype", dtype)
        assert result.exit_code == 0, result.output
        stored = json.loads((model / "results" / "eval.json").read_text())
        values[stored["dtype"]] = stored["tasks"]["tiny_ppl"]["value"]
    assert list(values) == ["bfloat16", "float32"] and values["bfloat16"] != values["float32"]


def test_build_family_dtype_reaches_the_eval_of_base_and_members(tiny_dir, task_dir, tmp_path):
    built = tmp_path / "built"
    result = invoke(
        *("build-family", tiny_dir("llama"), "-o", built, "--sizes", "48", "--skip-profile", "--device", "cpu"),
        *("--dtype", "bfloat16", "--suite", suite_file(tmp_path, TINY_PPL), "--include-path", task_dir),
    )
    assert result.exit_code == 0, result.output
    [member] = [p for p in built.iterdir() if (p / "hubprune.json").exists()]
    for results in (built / "base-results", member / "results"):
        assert json.loads((results / "eval.json").read_text())["dtype"] == "bfloat16", results


@pytest.mark.parametrize("tensor_parallel, data_parallel", [(2, 1), (1, 3)])
def test_vllm_options_become_lm_evals_vllm_model_arguments(
    model, task_dir, tmp_path, monkeypatch, tensor_parallel, data_parallel
):
    """--backend vllm with its parallel sizes (vLLM is not installed here): lm-eval's registry is asked for its
    vllm model, whose arguments, parsed by lm-eval's own parser, carry the sizes, the dtype and the batch size; the
    stand-in it gets back runs the tasks with transformers, and eval.json records the backend."""
    from lm_eval.api import registry
    from lm_eval.models.huggingface import HFLM

    asked: list[dict] = []

    class VLLMStandIn:
        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            args = simple_parse_args_string(arg_string)
            asked.append(args)
            return HFLM(pretrained=args["pretrained"], device="cpu", dtype=args["dtype"], batch_size=1)

    real = registry.get_model
    monkeypatch.setattr(registry, "get_model", lambda name: VLLMStandIn if name == "vllm" else real(name))
    result = invoke(
        *("eval", model, "--suite", suite_file(tmp_path, TINY_PPL), "--include-path", task_dir, "--limit", "2"),
        *("--device", "cpu", "--dtype", "bfloat16", "--batch-size", "2", "--backend", "vllm"),
        *("--tensor-parallel-size", tensor_parallel, "--data-parallel-size", data_parallel),
    )
    assert result.exit_code == 0, result.output
    [args] = asked
    assert args["tensor_parallel_size"] == tensor_parallel and args["data_parallel_size"] == data_parallel
    assert args["dtype"] == "bfloat16" and args["batch_size"] == 2 and Path(args["pretrained"]) == model
    stored = json.loads((model / "results" / "eval.json").read_text())
    assert stored["backend"] == "vllm" and stored["dtype"] == "bfloat16"
    assert EvalSettings().tensor_parallel_size == EvalSettings().data_parallel_size == 1  # the values given differ


def test_profile_from_the_command_line_measures_in_the_dtype_asked(model):
    """`hubprune profile` on one checkpoint, the shortest settings, --dtype bfloat16 (auto would keep the stored
    float32): exit 0, a table, and a profile.json with measured figures, the settings given and the dtype used."""
    result = invoke("profile", model, "--device", "cpu", "--dtype", "bfloat16", "--energy", "off", *PROFILE_FAST)
    assert result.exit_code == 0, result.output
    assert "decode tok/s" in result.output
    document = json.loads((model / "results" / "profile.json").read_text())
    assert document["status"] == "done"
    assert document["settings"]["dtype"] == document["environment"]["dtype"] == "bfloat16"
    assert document["settings"]["prompt_tokens"] == 8 and document["settings"]["new_tokens"] == 4
    [batch] = document["batches"]
    assert batch["batch_size"] == 1 and batch["timed_runs"] == len(batch["runs"]) >= 1
    for key in ("ttft", "decode_throughput", "e2e_latency"):
        figure = batch[key]
        assert figure["method"] == "measured" and 0 < figure["median"] <= figure["p90"], (key, figure)
        assert len(figure["samples"]) == batch["timed_runs"]
    assert all(run["generated_tokens"] == 4 for run in batch["runs"])
    params = sum(t.numel() for t in load_tensors(model).values())
    assert document["model"]["params_total"]["value"] == params


# --- card and push ----------------------------------------------------------------------------------------------


@pytest.fixture
def local_family(tiny_dir, tmp_path) -> Path:
    """A family of one member from a local folder whose base declares no licence (no card, none in config.json)."""
    out = tmp_path / "family"
    result = invoke("build-family", "--skip-eval", "--skip-profile", tiny_dir("llama"), "-o", out, "--sizes", "48")
    assert result.exit_code == 0, result.output
    return out


def test_card_licence_other_with_its_name_and_link_and_the_base_model(local_family):
    result = invoke(
        *("card", local_family, "--license", "other", "--license-name", "tiny-licence-1.0"),
        *("--license-link", "https://example.com/tiny/LICENSE", "--base-model", "acme/Tiny-Llama"),
    )
    assert result.exit_code == 0, result.output
    [member] = [p for p in local_family.iterdir() if (p / "hubprune.json").exists()]
    data = ModelCard.load(member / "README.md").data
    assert (data.license, data.license_name, data.license_link) == (
        "other",
        "tiny-licence-1.0",
        "https://example.com/tiny/LICENSE",
    )
    assert data.base_model == "acme/Tiny-Llama"


@pytest.mark.usefixtures("token_and_no_backoff")
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
def test_push_commit_message_is_each_members_commit_message(hub, family):  # noqa: F811 - test_push's fixture
    result = push_to(family, "--no-collection", "--commit-message", "Narrower MLPs, measured")
    assert result.exit_code == 0, result.output
    for repo in REPOS:
        [commit] = pushed_commits(hub, repo)
        assert commit.message == "Narrower MLPs, measured"
    assert len(MEMBERS) == len(REPOS) == 2
