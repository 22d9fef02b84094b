"""Distillation after pruning (#15, `--recover distill`): on tiny models, a distilled member is closer to its base
than the plain member on sequences neither saw, reloads with plain from_pretrained as the same uniform-width
checkpoint with only its MLP tensors changed, resumes a stopped run to the same weights, and check-criteria's
in-memory pruning computes what the written member computes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from test_cli import assert_clean_error, invoke
from test_data_criteria import words
from test_recovery import calibration  # noqa: F401 - a fixture
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.errors import CriterionError, OutputError
from hubprune.generated import generate
from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.check import CheckSettings, check_criteria, prune_in_memory
from hubprune.pruning.family import DISTILL_WORK, PruneSettings, build_family, prune_one
from hubprune.pruning.importance import keep, rank
from hubprune.pruning.plan import Target
from hubprune.pruning.prune import analyse, weight_layer_scores
from hubprune.pruning.source import open_source
from hubprune.recover import distill as distill_module
from hubprune.recover import distill_data as distill_data_module
from hubprune.recover.distill import DistillSettings, token_kl
from hubprune.recover.distill_data import prepare_data
from hubprune.recover.settings import RecoverySettings
from hubprune.texts import offline_suite_paragraphs

# Small enough for seconds on the CPU: 8 steps of 4 sequences of 32 tokens; a high learning rate, since a tiny
# random model learns little in 8 steps at the default.
SMALL = DistillSettings(tokens=1024, batch=4, seq_len=32, learning_rate=3e-3)


def kl_to_base(base, member, sequences: torch.Tensor) -> float:
    """Mean per-position KL(p_base || p_member) over `sequences` (each starts with the start token), computed
    here from the two loaded models."""
    with torch.no_grad():
        total = token_kl(member(sequences).logits[:, :-1], base(sequences).logits[:, :-1]).item()
    return total / (sequences.shape[0] * (sequences.shape[1] - 1))


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def tensors(folder) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            found.update({name: f.get_tensor(name) for name in f.keys()})
    return found


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma3"])
def test_a_distilled_member_is_closer_to_its_base_on_unseen_sequences(tiny_dir, tmp_path, model_type):
    source = tiny_dir(model_type, dtype=torch.bfloat16)
    checkpoint = open_source(str(source))
    target = Target("pct", "50")
    prune_one(checkpoint, tmp_path / "plain", target, PruneSettings("maw", recovery=RecoverySettings()))
    prune_one(
        checkpoint,
        tmp_path / "distilled",
        target,
        PruneSettings("maw", recovery=RecoverySettings("distill", distill=SMALL)),
    )

    base, plain, distilled = (load(f) for f in (source, tmp_path / "plain", tmp_path / "distilled"))
    fresh = generate(base, AutoTokenizer.from_pretrained(source), 8, 32, seed=1234)  # seeds the training never used
    assert kl_to_base(base, distilled, fresh) < 0.9 * kl_to_base(base, plain, fresh)

    record = json.loads((tmp_path / "distilled" / "hubprune.json").read_text())["distillation"]
    assert record["held_out_kl"]["after"] < record["held_out_kl"]["before"]
    assert record["steps"] == 8 and record["tokens"] == 1024
    # the tiny model's words (w4 ... w95) share nothing with the suite; that a shared run is counted is
    # test_the_data_record_counts_the_offline_paragraphs_it_shares_13_words_with
    assert record["data"]["offline_suite_paragraphs_sharing_13_words"] == 0
    assert json.loads((tmp_path / "plain" / "hubprune.json").read_text())["distillation"] is None

    # the same plain checkpoint: same tensors, names, shapes and dtypes; only the MLP tensors were trained
    before, after = tensors(tmp_path / "plain"), tensors(tmp_path / "distilled")
    assert before.keys() == after.keys()
    mlp = set(analyse(checkpoint).roles)
    for name in before:
        assert after[name].dtype == before[name].dtype == torch.bfloat16
        assert after[name].shape == before[name].shape
        assert torch.equal(after[name], before[name]) != (name in mlp), name
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no work folder left


def shared_13_words(text: str, paragraph: str) -> bool:
    """Whether `paragraph` and `text` have a run of 13 words in common (lower-cased, punctuation dropped)."""

    def runs(of: str) -> set[tuple[str, ...]]:
        found = re.findall(r"[a-z0-9']+", of.lower())
        return {tuple(found[i : i + 13]) for i in range(len(found) - 12)}

    return bool(runs(text) & runs(paragraph))


def test_the_data_record_counts_the_offline_paragraphs_it_shares_13_words_with(tiny_dir, tmp_path, monkeypatch):
    """The overlap of the distillation data with the offline suite is counted over the data itself: a text that
    holds suite paragraphs, and sequences the base generates once the suite holds a run of 13 of their words."""
    source = tiny_dir("llama")
    base, tokenizer = load(source), AutoTokenizer.from_pretrained(source)
    suite = offline_suite_paragraphs()  # both texts the offline suite scores
    text = tmp_path / "distill.txt"
    text.write_text(f"{words(5, 100)} {suite[0]}\n\n{words(6, 100)} {' '.join(suite[3].split()[:13])} {words(7, 50)}")
    with_text = DistillSettings(tokens=128, batch=4, seq_len=32, text=text)
    counted = prepare_data(base, tokenizer, with_text).record["offline_suite_paragraphs_sharing_13_words"]
    expected = sum(shared_13_words(text.read_text(), paragraph) for paragraph in suite)
    assert counted == expected >= 2

    generated = DistillSettings(tokens=128, batch=4, seq_len=32)
    data = prepare_data(base, tokenizer, generated)
    assert data.record["offline_suite_paragraphs_sharing_13_words"] == 0  # w4 ... w95 are no English
    run = tokenizer.decode(data.train[1, 5:18])  # 13 words the base generated (for training)
    held_out = tokenizer.decode(data.held_out[0, 9:22])  # and 13 it generated to hold out
    short = tokenizer.decode(data.train[2, 3:15])  # only 12
    assert len(run.split()) == len(held_out.split()) == 13 and len(short.split()) == 12
    fake_suite = [f"Before {run} after.", short, words(9, 40), held_out]
    monkeypatch.setattr(distill_data_module, "offline_suite_paragraphs", lambda: fake_suite)
    assert prepare_data(base, tokenizer, generated).record["offline_suite_paragraphs_sharing_13_words"] == 2


def test_a_stopped_distillation_resumes_to_the_same_weights(tiny_dir, tmp_path, monkeypatch):
    source = tiny_dir("llama")
    checkpoint = open_source(str(source))
    settings = PruneSettings("maw", recovery=RecoverySettings("distill", distill=SMALL))
    build_family(checkpoint, tmp_path / "whole", [Target("pct", "50")], settings)

    monkeypatch.setattr(distill_module, "SAVE_EVERY_SECONDS", 0.0)  # save after every step

    def stop_after_five_steps(event):
        if event.stage == "distill" and event.item != "data" and event.done == 5 * 4 * 32:
            raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        build_family(checkpoint, stopped, [Target("pct", "50")], settings, on_progress=stop_after_five_steps)
    assert (stopped / DISTILL_WORK).is_dir()
    build_family(checkpoint, stopped, [Target("pct", "50")], settings)

    name = next(p.name for p in stopped.iterdir() if p.is_dir())
    record = json.loads((stopped / name / "hubprune.json").read_text())["distillation"]
    assert record["resumed_at_step"] == 4  # the stop came as step 5 reported, before its state was saved
    whole, resumed = tensors(tmp_path / "whole" / name), tensors(stopped / name)
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    assert not (stopped / DISTILL_WORK).exists()


def test_a_family_is_one_distillation(tiny_dir, tmp_path):
    checkpoint = open_source(str(tiny_dir("llama")))
    build_family(
        checkpoint,
        tmp_path,
        [Target("pct", "50")],
        PruneSettings("maw", recovery=RecoverySettings("distill", distill=SMALL)),
    )
    other = DistillSettings(tokens=2048, batch=4, seq_len=32, learning_rate=3e-3)
    with pytest.raises(OutputError, match="distilled with tokens 1024 \\(this run: 2048\\)"):
        build_family(
            checkpoint,
            tmp_path,
            [Target("pct", "30")],
            PruneSettings("maw", recovery=RecoverySettings("distill", distill=other)),
        )


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma3"])
def test_check_criteria_prunes_in_memory_what_the_pass_writes(tiny_dir, tmp_path, model_type):
    source = tiny_dir(model_type)
    checkpoint = open_source(str(source))
    prune_one(checkpoint, tmp_path / "member", Target("size", "40"), PruneSettings("maw", recovery=RecoverySettings()))
    layout = analyse(checkpoint)
    scores = weight_layer_scores(checkpoint, layout, "maw", 0)
    model = load(source)
    prune_in_memory(model, layout, {layer: keep(rank(s), 40) for layer, s in scores.items()}, None)
    ids = torch.tensor([[5, 9, 17, 4, 33, 21, 8, 60]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, load(tmp_path / "member")(ids).logits, atol=1e-5)


def test_check_criteria_reports_the_distilled_rows(tiny_dir, calibration):  # noqa: F811
    settings = CheckSettings(
        text=calibration,
        pcts=("50",),
        criteria=("maw", "random"),
        seeds=2,
        max_tokens=300,
        window=50,
        calibration=CalibrationSettings(text=calibration, max_tokens=300, window=50),
        recovery=RecoverySettings("refit+distill", distill=SMALL),
    )
    outcome = check_criteria(open_source(str(tiny_dir("llama"))), settings)
    rows = {r.recovery: r.perplexity for r in outcome.rows if r.criterion == "maw"}
    assert rows.keys() == {"none", "refit", "refit+distill"}
    assert rows["refit+distill"] != rows["refit"]


def test_distillation_options_are_checked_before_anything_is_written(tiny_dir, tmp_path):
    source = str(tiny_dir("llama"))
    missing = tmp_path / "nowhere.txt"
    result = invoke(
        "prune", source, "--pct", "50", "--recover", "distill", "--distill-text", missing, "-o", tmp_path / "m"
    )
    assert_clean_error(result, "does not exist")
    short = tmp_path / "short.txt"
    short.write_text("w4 w5 w6")
    out = tmp_path / "m"
    result = invoke("prune", source, "--pct", "50", "--recover", "distill", "--distill-text", short, "-o", out)
    assert_clean_error(result, "gives 0 window(s) of 256 tokens")
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_build_family_distils_and_the_card_says_how(tiny_dir, tmp_path):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    long = tmp_path / "long.txt"
    long.write_text(words(5, 1600))
    result = invoke(
        *("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "40"),
        *("--recover", "refit+distill", "--distill-tokens", "2048", "--distill-lr", "0.001"),
        *("--calibration", long, "--calibration-tokens", "1600"),
    )
    assert result.exit_code == 0, result.output
    (member,) = (p for p in family.iterdir() if p.is_dir())
    provenance = json.loads((member / "hubprune.json").read_text())
    assert provenance["recovery"]["method"] == "refit"  # the refit ran first, then the distillation
    record = provenance["distillation"]
    assert (record["steps"], record["tokens"], record["device"]) == (1, 2048, "cpu")
    assert json.loads((family / "family.json").read_text())["distill"]["learning_rate"] == 0.001
    card = (member / "README.md").read_text()
    assert "### Recovery: down_proj refit" in card and "### Recovery: distillation" in card
    assert "After the refit, the model was trained" in card and "learning rate 0.001" in card
    assert f"{record['held_out_kl']['before']:.4g} before, {record['held_out_kl']['after']:.4g} after" in card
    assert "sequences the base model generated itself" in card
    assert (
        "Only the MLP width was reduced, then down_proj's kept columns refit without training and the MLPs distilled from "
        "the base (see Method)" in card
    )  # the limitations
    assert not (family / DISTILL_WORK).exists()


def test_the_budget_is_tokens_capped_by_steps_and_the_schedule_warms_up_then_decays():
    assert DistillSettings(tokens=4096, batch=4, seq_len=32).planned_steps == 32
    assert DistillSettings(tokens=4096, batch=4, seq_len=32, steps=3).planned_steps == 3
    assert DistillSettings(tokens=10, batch=4, seq_len=32).planned_steps == 1  # at least one step
    factors = [distill_module._warmup_then_decay(40)(step) for step in range(40)]
    assert factors[:2] == [0.5, 1.0]  # two warm-up steps (5 % of 40), the peak reached once
    assert all(a > b > 0 for a, b in zip(factors[1:], factors[2:]))  # then down every step, never to 0 early


def test_a_diverged_distillation_is_refused_and_nothing_is_written(tiny_dir, tmp_path):
    checkpoint = open_source(str(tiny_dir("llama")))
    wild = DistillSettings(
        tokens=256, batch=4, seq_len=32, learning_rate=1e30
    )  # the weights overflow float32 within a step
    with pytest.raises(CriterionError, match="distillation diverged .* lower `distill_lr`"):
        prune_one(
            checkpoint,
            tmp_path / "m",
            Target("pct", "50"),
            PruneSettings("maw", recovery=RecoverySettings("distill", distill=wild)),
        )
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".partial-*"))
