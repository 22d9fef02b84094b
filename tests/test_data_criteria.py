"""The data-aware criteria (activation, hybrid) and check-criteria, on tiny models, against independent
computations: the MLP's own input captured by a hook, the GLU written out by hand, the oracle model."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.oracle import load_tensors, mlp_modules, oracle_logits, top_k_tie_lower_index
from support.tiny_models import FAMILIES, VOCAB, build_tiny
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.check import CheckSettings, check_criteria
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings
from hubprune.texts import shared_ngrams


def words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(4, VOCAB)}" for _ in range(count))


@pytest.fixture
def texts(tmp_path):
    calibration, held_out = tmp_path / "calibration.txt", tmp_path / "held-out.txt"
    calibration.write_text(words(1, 300))
    held_out.write_text("\n\n".join(words(100 + i, 40) for i in range(5)))
    return calibration, held_out


def calibration_inputs(source, calibration, tokens: int, window: int) -> dict[int, torch.Tensor]:
    """glu_inputs over the first `tokens` tokens of the calibration file, in windows as calibration reads it."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(source)(calibration.read_text(), add_special_tokens=False).input_ids
    return glu_inputs(source, torch.tensor(ids[:tokens]), window)


def glu_inputs(source, text_ids: torch.Tensor, window: int) -> dict[int, torch.Tensor]:
    """Each layer's down_proj input, computed by hand from the MLP's input (captured by a hook on the MLP, not
    on down_proj) and the stored weights: silu(G x) * (U x)."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    weights = load_tensors(source)
    captured: dict[int, list[torch.Tensor]] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, a, layer=layer: captured.setdefault(layer, []).append(a[0][0]))
        for layer, module in mlp_modules(model).items()
    ]
    with torch.no_grad():
        for start in range(0, text_ids.numel(), window):
            chunk = text_ids[start : start + window]
            if chunk.numel() > 1:
                model(chunk[None])
    for handle in handles:
        handle.remove()
    found = {}
    for layer, parts in captured.items():
        x = torch.cat(parts).double()
        gate = weights[f"model.layers.{layer}.mlp.gate_proj.weight"].double()
        up = weights[f"model.layers.{layer}.mlp.up_proj.weight"].double()
        found[layer] = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
    return found


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: byte-level BPE, several tokens a word
def test_activation_keeps_what_an_independent_computation_ranks_first(tmp_path, tiny_dir, texts, model_type):
    calibration, _ = texts
    source = tiny_dir(model_type)
    family = tmp_path / "fam"
    settings = PruneSettings(
        "activation",
        calibration=CalibrationSettings(text=calibration, max_tokens=200, window=64),
        recovery=RecoverySettings(),
    )
    build_family(open_source(str(source)), family, [Target("size", "40")], settings)
    member = family / f"src-{model_type}0-er1.25"
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]

    weights = load_tensors(source)
    for layer, h in calibration_inputs(source, calibration, 200, 64).items():
        down = weights[f"model.layers.{layer}.mlp.down_proj.weight"].double()
        expected = h.abs().mean(dim=0) * down.norm(dim=0)
        assert kept[layer] == top_k_tie_lower_index(expected.numpy().astype(np.float32), 40)

    provenance = json.loads((member / "hubprune.json").read_text())
    record = provenance["calibration"]
    assert (
        provenance["criterion"] == "activation" and record["source"] == calibration.name
    )  # the name, never the local path
    assert record["tokens"] == 200 and record["window"] == 64 and len(record["sha256"]) == 64

    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    got = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()(ids).logits
    assert torch.allclose(got, oracle_logits(source, kept, ids), atol=1e-5)


def test_hybrid_is_optipfairs_formula(tmp_path, tiny_dir, texts):
    calibration, _ = texts
    source = tiny_dir("llama")
    family = tmp_path / "fam"
    settings = PruneSettings(
        "hybrid",
        calibration=CalibrationSettings(text=calibration, max_tokens=150, window=50),
        recovery=RecoverySettings(),
    )
    build_family(open_source(str(source)), family, [Target("size", "32")], settings)
    kept = json.loads((family / "src-llama0-er1" / "hubprune-kept-indices.json").read_text())["layers"]

    weights = load_tensors(source)
    for layer, h in calibration_inputs(source, calibration, 150, 50).items():
        g, u, d = (weights[f"model.layers.{layer}.mlp.{p}_proj.weight"].double() for p in ("gate", "up", "down"))
        g_ptp = g.max(dim=1).values + g.min(dim=1).values.abs()
        u_ptp = u.max(dim=1).values + u.min(dim=1).values.abs()
        d_ptp = d.max(dim=0).values + d.min(dim=0).values.abs()
        structural = g_ptp / (g_ptp.max() + 1e-8) + u_ptp / (u_ptp.max() + 1e-8) + d_ptp / (d_ptp.max() + 1e-8)
        expected = structural * h.square().sum(dim=0).sqrt()
        assert kept[layer] == top_k_tie_lower_index(expected.numpy().astype(np.float32), 32)


def test_check_criteria_compares_with_random_and_flags_what_is_worse(tiny_dir, texts):
    calibration, held_out = texts
    settings = CheckSettings(
        text=held_out,
        pcts=("25", "50"),
        criteria=("maw", "activation", "random"),
        seeds=3,
        window=64,
        calibration=CalibrationSettings(text=calibration, max_tokens=200, window=64),
    )
    outcome = check_criteria(open_source(str(tiny_dir("llama"))), settings)
    assert outcome.base_perplexity > 1 and outcome.shared_documents == 0
    assert [(r.criterion, r.pct, r.width) for r in outcome.rows] == [
        ("maw", "25", 48),
        ("activation", "25", 48),
        ("random", "25", 48),
        ("maw", "50", 32),
        ("activation", "50", 32),
        ("random", "50", 32),
    ]
    for pct in ("25", "50"):
        random_row = next(r for r in outcome.rows if r.criterion == "random" and r.pct == pct)
        assert random_row.low <= random_row.perplexity <= random_row.high
        for row in (r for r in outcome.rows if r.pct == pct and r.criterion != "random"):
            assert row.worse_than_random == (row.perplexity > random_row.perplexity)
    flagged = [r for r in outcome.rows if r.worse_than_random]
    assert len(outcome.warnings()) == len(flagged)


def test_the_zeroed_model_check_measures_equals_the_pruned_checkpoint(tmp_path, tiny_dir, texts):
    """check-criteria prunes by zeroing columns; its MAW perplexity must equal that of the written member."""
    _, held_out = texts
    source = tiny_dir("llama")
    settings = CheckSettings(text=held_out, pcts=("50",), criteria=("maw",), seeds=1, window=64)
    [row] = check_criteria(open_source(str(source)), settings).rows
    family = tmp_path / "fam"
    build_family(
        open_source(str(source)), family, [Target("pct", "50")], PruneSettings("maw", recovery=RecoverySettings())
    )
    from transformers import AutoTokenizer

    member = family / "src-llama0-er1"
    model = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    ids = torch.tensor(AutoTokenizer.from_pretrained(member)(held_out.read_text(), add_special_tokens=False).input_ids)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            chunk = ids[start : start + 64]
            if len(chunk) > 1:
                logits = model(chunk[None]).logits[0, :-1]
                nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
                count += len(chunk) - 1
    assert math.exp(nll / count) == pytest.approx(row.perplexity, rel=1e-5)


def test_shared_text_is_reported(tiny_dir, texts):
    calibration, _ = texts
    settings = CheckSettings(
        text=calibration,
        pcts=("25",),
        criteria=("activation",),
        window=64,
        calibration=CalibrationSettings(text=calibration, max_tokens=100, window=64),
    )
    outcome = check_criteria(open_source(str(tiny_dir("llama"))), settings)
    assert outcome.shared_documents == 1
    assert any("shares 13-word sequences with 1 paragraphs" in w for w in outcome.warnings())


def test_shared_ngrams():
    text = " ".join(f"word{i}" for i in range(30))
    assert shared_ngrams(text, [" ".join(f"word{i}" for i in range(10, 23)), "other words entirely"]) == 1
    assert shared_ngrams(text, [" ".join(f"word{i}" for i in range(10, 22))]) == 0  # 12 words: no 13-gram


def test_check_criteria_command_prints_the_table(tiny_dir, texts):
    calibration, held_out = texts
    args = ["check-criteria", str(tiny_dir("llama")), "--text", str(held_out), "--pcts", "25"]
    args += ["--criteria", "maw,random", "--seeds", "2", "--calibration", str(calibration)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "criterion" in result.output and "(base)" in result.output and "maw" in result.output
    assert f"held-out text: {held_out.name}, " in result.output  # by name: the record is published in cards


def test_unknown_criterion_is_one_line(tiny_dir):
    result = CliRunner().invoke(main, ["check-criteria", str(tiny_dir("llama")), "--criteria", "nope"])
    assert result.exit_code == 1 and result.output.startswith("error: unknown criterion 'nope'")


def test_build_family_check_criteria_puts_the_table_in_the_cards(tmp_path, tiny_dir, texts):
    calibration, _ = texts
    out = tmp_path / "fam"
    args = [
        "build-family",
        str(tiny_dir("llama")),
        "-o",
        str(out),
        "--pcts",
        "25,50",
        "--criterion",
        "activation",
        "--recover",
        "none",
    ]
    args += ["--calibration", str(calibration), "--check-criteria", "--skip-eval", "--skip-profile"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    check = json.loads((out / "family.json").read_text())["analysis"]["criteria_check"]
    assert [(r["criterion"], r["pct"]) for r in check["rows"]] == [
        ("activation", "25"),
        ("random", "25"),
        ("activation", "50"),
        ("random", "50"),
    ]
    assert check["calibration"]["source"] == calibration.name
    card = (out / "src-llama0-er1.5" / "README.md").read_text()
    assert "### Against random pruning" in card
    activation_25 = check["rows"][0]
    assert f"| 25 % | activation | {activation_25['perplexity']:.4g} |" in card


def test_calibrating_on_benchmark_text_is_warned_about(tmp_path, tiny_dir):
    from hubprune.texts import paragraphs

    calibration = tmp_path / "overlap.txt"
    calibration.write_text("\n\n".join(paragraphs()[:3]))  # what the offline tasks score first (both of them)
    out = tmp_path / "fam"
    args = [
        "build-family",
        str(tiny_dir("llama")),
        "-o",
        str(out),
        "--sizes",
        "48",
        "--criterion",
        "activation",
        "--recover",
        "none",
    ]
    args += ["--calibration", str(calibration), "--suite", "offline", "--limit", "2", "--skip-profile"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # 2 documents of each of the 3 offline tasks: the Jargon File's 4, not Botchan's 2
    assert "warning: the calibration text shares 13-word sequences with 4 of the 6 offline benchmark documents" in (
        result.output
    )


def test_check_criteria_with_the_random_criterion_is_refused(tmp_path, tiny_dir):
    args = ["build-family", str(tiny_dir("llama")), "-o", str(tmp_path / "fam"), "--pcts", "25"]
    result = CliRunner().invoke(main, [*args, "--criterion", "random", "--check-criteria", "--skip-eval"])
    assert result.exit_code == 1 and result.output.startswith("error: --check-criteria compares the criterion")
    assert not (tmp_path / "fam").exists()


def test_check_criteria_starts_every_window_with_the_tokenizers_bos(tmp_path):
    """A tokenizer that puts BOS before every text (Llama 3, Gemma): each held-out window is BOS and then the next
    window-1 text tokens, and every text token is scored, as the model reads text in use."""
    source = build_tiny(tmp_path / "src", "llama", bos=True)
    ids = [4 + (i * 7) % (VOCAB - 4) for i in range(64)]
    text = tmp_path / "held-out.txt"
    text.write_text(" ".join(f"w{i}" for i in ids))
    settings = CheckSettings(text=text, pcts=("10",), criteria=("maw",), max_tokens=64, window=16)
    outcome = check_criteria(open_source(str(source)), settings)

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float64)
    nll, scored = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 15):
            window = [1, *ids[start : start + 15]]
            logp = model(torch.tensor([window])).logits[0].log_softmax(-1)
            nll -= sum(logp[pos - 1, window[pos]].item() for pos in range(1, len(window)))
            scored += len(window) - 1
    assert scored == 64
    assert outcome.base_perplexity == pytest.approx(math.exp(nll / scored), rel=1e-5)
    assert outcome.text["special_prefix"] == ["<s>"]


def test_a_family_is_one_calibration_another_is_refused_and_nothing_is_written(tiny_dir, texts, tmp_path):
    calibration, held_out = texts
    family = tmp_path / "fam"
    build = ["build-family", str(tiny_dir("llama")), "-o", str(family), "--skip-eval", "--skip-profile"]
    build += ["--criterion", "activation", "--recover", "none", "--calibration", str(calibration)]
    assert CliRunner().invoke(main, [*build, "--sizes", "48"]).exit_code == 0
    recorded = json.loads((family / "family.json").read_text())["calibration"]
    assert recorded["source"] == "calibration.txt" and recorded["max_tokens"] == 4096 and len(recorded["sha256"]) == 64
    before = sorted(p.name for p in family.iterdir())

    other = [*build[:-1], str(held_out)]  # another text
    fewer = [*build, "--calibration-tokens", "100"]  # the same text, read less far
    for args in (other, fewer):
        result = CliRunner().invoke(main, [*args, "--sizes", "48,32"])
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert line.startswith("error: ") and "\n" not in line
        assert "calibrated on calibration.txt (4096 tokens" in line and "--calibration and --calibration-tokens" in line
        assert sorted(p.name for p in family.iterdir()) == before  # the 32-wide member was not written
    assert CliRunner().invoke(main, [*build, "--sizes", "48,32"]).exit_code == 0  # the same calibration resumes


@pytest.mark.parametrize("model_type", FAMILIES)  # qwen2's tiny tokenizer is byte-level BPE (support/tiny_models.py)
def test_data_aware_criteria_and_check_criteria_work_for_every_family(tmp_path, tiny_dir, texts, model_type):
    """Module names come from the loaded model: Gemma 3's multimodal checkpoint names its tensors
    language_model.model.layers.N..., its loaded model model.language_model.layers.N..."""
    calibration, held_out = texts
    source = open_source(str(tiny_dir(model_type)))
    settings = CalibrationSettings(text=calibration, max_tokens=200, window=64)
    for criterion in ("activation", "hybrid"):
        family = build_family(
            source,
            tmp_path / criterion,
            [Target("size", "48")],
            PruneSettings(criterion=criterion, calibration=settings, recovery=RecoverySettings()),
        )
        assert family.members[0].stages["prune"]["status"] == "done"
    check = CheckSettings(
        text=held_out, pcts=("25",), criteria=("activation", "random"), seeds=1, max_tokens=200, calibration=settings
    )
    outcome = check_criteria(source, check)
    assert math.isfinite(outcome.base_perplexity) and [r.criterion for r in outcome.rows] == ["activation", "random"]
