"""Recovery by refitting down_proj (#15), on tiny models of every family, against an independent float64 solve of
the documented formula: the least-squares fit of the original MLP output from the kept neurons, with a ridge of
lambda = alpha * mean(diag G_KK) toward the original columns, solved as one stacked least-squares problem."""

from __future__ import annotations

import json

import pytest
import torch
from support.oracle import mlp_modules
from support.tiny_models import FAMILIES
from test_cli import assert_clean_error, invoke
from test_data_criteria import words
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.check import CheckSettings, check_criteria
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

TOKENS, WINDOW, WIDTH_KEPT = 300, 50, 40  # six windows: four fit the refit, two (every third) choose alpha


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(words(7, 400))
    return path


def down_projs(model) -> dict[int, torch.nn.Module]:
    """Each layer's down_proj in a loaded model (the text model's, not a vision tower's)."""
    return {layer: mlp.down_proj for layer, mlp in mlp_modules(model).items()}


def down_inputs(
    source, text: str, tokens: int = TOKENS, window: int = WINDOW, dtype: torch.dtype = torch.float32
) -> list[dict[int, torch.Tensor]]:
    """Per calibration window (the text's first `tokens` tokens in windows of `window`, no BOS: the tiny tokenizers
    add none), each layer's down_proj input, captured in float64 by this test's own hooks on the base loaded in
    `dtype`."""
    ids = AutoTokenizer.from_pretrained(source)(text, add_special_tokens=False).input_ids[:tokens]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).eval()
    per_window: list[dict[int, torch.Tensor]] = []
    handles = [
        module.register_forward_pre_hook(lambda m, a, layer=layer: per_window[-1].update({layer: a[0][0].double()}))
        for layer, module in down_projs(model).items()
    ]
    with torch.no_grad():
        for start in range(0, len(ids), window):
            per_window.append({})
            model(torch.tensor([ids[start : start + window]]))
    for handle in handles:
        handle.remove()
    return per_window


def ridge_solve(h: torch.Tensor, weight: torch.Tensor, kept: list[int], alpha: float) -> torch.Tensor:
    """argmin_X sum_t ||W h(t) - X h_K(t)||^2 + lambda ||X - W_K||^2 as the stacked least-squares problem
    [H_K; sqrt(lambda) I] X^T = [H W^T; sqrt(lambda) W_K^T], solved by torch.linalg.lstsq in float64."""
    h_kept = h[:, kept]
    lam = alpha * (h_kept * h_kept).sum(dim=0).mean()
    eye = torch.eye(len(kept), dtype=torch.float64)
    a = torch.cat([h_kept, lam.sqrt() * eye])
    b = torch.cat([h @ weight.T, lam.sqrt() * weight[:, kept].T])
    return torch.linalg.lstsq(a, b).solution.T


def held_out_error(h: torch.Tensor, weight: torch.Tensor, kept: list[int], refit: torch.Tensor) -> float:
    return float(((h @ weight.T - h[:, kept] @ refit.T) ** 2).sum() / ((h @ weight.T) ** 2).sum())


def build_refit_member(tmp_path, source, calibration, criterion="maw", recover="refit"):
    settings = PruneSettings(
        criterion,
        calibration=CalibrationSettings(text=calibration, max_tokens=TOKENS, window=WINDOW),
        recovery=RecoverySettings(recover),
    )
    family = tmp_path / "fam"
    build_family(open_source(str(source)), family, [Target("size", str(WIDTH_KEPT))], settings)
    return next(p for p in family.iterdir() if p.is_dir())


def assert_member_is_the_base_with(pruned, base, kept, written) -> None:
    """The member's logits equal the base's with each layer's down_proj kept columns set to `written` and the removed
    ones zeroed (the oracle; `base` is changed)."""
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        for layer, module in down_projs(base).items():
            removed = sorted(set(range(module.weight.shape[1])) - set(kept[layer]))
            module.weight[:, kept[layer]] = written[layer].float()
            module.weight[:, removed] = 0
        assert torch.allclose(pruned(ids).logits, base(ids).logits, atol=1e-5)


# How far the written columns may be from the float64 solve: the product sums its Gram matrices in float32, and the
# solve carries that rounding times the condition number of G_KK + lambda I. Qwen2's attention biases give its tiny
# model's down_proj inputs one dominant direction (condition ~1e5, against ~1e2 for the others): 1.05e-4 was measured
# on an AVX-512/AMX CPU, whose float32 sums round differently from others'.
SOLVE_ATOL = {"qwen2": 3e-4}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_refit_down_proj_equals_an_independent_ridge_solve(tmp_path, tiny_dir, calibration, model_type):
    source = tiny_dir(model_type)
    member = build_refit_member(tmp_path, source, calibration)
    provenance = json.loads((member / "hubprune.json").read_text())
    recovery = provenance["recovery"]
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    pruned = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    weights = {layer: module.weight.detach().double() for layer, module in down_projs(base).items()}
    written = {layer: module.weight.detach().double() for layer, module in down_projs(pruned).items()}

    windows = down_inputs(source, calibration.read_text())
    assert len(windows) == 6 and recovery["tokens"] == {"fit": 4 * WINDOW, "held_out": 2 * WINDOW}
    changed = 0
    for layer, weight in weights.items():
        every = torch.cat([w[layer] for w in windows])
        fit = torch.cat([w[layer] for i, w in enumerate(windows) if i % 3 != 2])
        held = torch.cat([w[layer] for i, w in enumerate(windows) if i % 3 == 2])
        # alpha is the one of those tried whose fit on two windows in three best predicts the third
        errors = {
            a: held_out_error(held, weight, kept[layer], ridge_solve(fit, weight, kept[layer], a))
            for a in recovery["alphas_tried"]
        }
        plain = held_out_error(held, weight, kept[layer], weight[:, kept[layer]])
        best = min(errors, key=errors.get)
        alpha = recovery["alpha"][str(layer)]
        assert alpha == (best if errors[best] < plain else None), (layer, errors, plain)
        # the written columns are the solve with that alpha on every window, in the source dtype (float32 here)
        expected = weight[:, kept[layer]] if alpha is None else ridge_solve(every, weight, kept[layer], alpha)
        assert torch.allclose(written[layer], expected, rtol=1e-4, atol=SOLVE_ATOL.get(model_type, 1e-6)), layer
        changed += not torch.allclose(expected, weight[:, kept[layer]], atol=1e-4)
    assert changed > 0  # the refit changed something: the test would notice plain kept columns

    # the member computes exactly the base with that down_proj: refit kept columns, removed ones zeroed
    assert_member_is_the_base_with(pruned, base, kept, written)
    assert provenance["recovery"]["method"] == "refit" and "G_KK + lambda I" in recovery["formula"]


def test_the_refit_brings_the_held_out_error_down_and_the_member_closer_to_the_base(tmp_path, tiny_dir, calibration):
    source = tiny_dir("llama")
    member = build_refit_member(tmp_path, source, calibration)
    error = json.loads((member / "hubprune.json").read_text())["recovery"]["held_out_error"]
    assert error["refit"] < error["plain"]

    held_out = tmp_path / "held-out.txt"
    held_out.write_text(words(99, 300))
    outcome = check_criteria(
        open_source(str(source)),
        CheckSettings(
            text=held_out,
            targets=(Target("size", str(WIDTH_KEPT)),),
            criteria=("maw",),
            calibration=CalibrationSettings(text=calibration, max_tokens=TOKENS, window=WINDOW),
            recovery=RecoverySettings("refit"),
        ),
    )
    rows = {row.recovery: row.perplexity for row in outcome.rows}
    assert set(rows) == {"none", "refit"}
    assert abs(rows["refit"] - outcome.base_perplexity) < abs(rows["none"] - outcome.base_perplexity)


def test_a_family_is_one_recovery_and_a_short_text_is_refused(tmp_path, tiny_dir, calibration):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    base = ("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "40")
    long = tmp_path / "long.txt"
    long.write_text(words(5, 1600))  # the command line's windows are 512 tokens: three of them
    text = ("--calibration", long, "--calibration-tokens", "1600")
    assert invoke(*base, "--recover", "refit", *text).exit_code == 0
    member = family / "src-llama0-er1.25"
    record = json.loads((member / "hubprune.json").read_text())["recovery"]
    card = (member / "README.md").read_text()  # says what ran: the formula, the text and this member's figures
    assert "### Recovery: down_proj refit" in card and "W'_K = W_K + W_R G_RK (G_KK + lambda I)^-1" in card
    assert f"{record['held_out_error']['plain']:.3g} pruned" in card and "long.txt" in card
    assert f"{record['held_out_error']['refit']:.3g} refit" in card
    before = (family / "family.json").read_bytes()
    assert_clean_error(invoke(*base, "--recover", "none", *text), "recovery refit", "--recover refit")
    assert (family / "family.json").read_bytes() == before

    short = tmp_path / "short.txt"
    short.write_text(words(3, 90))  # over the 64 tokens calibration needs, but two windows of 50: none held out
    out = tmp_path / "one"
    result = invoke(
        "prune", source, "-o", out, "--intermediate-size", "40", "--recover", "refit", "--calibration", short
    )
    assert_clean_error(result, "every 3rd calibration window", "give a longer text")
    assert not out.exists()


def test_check_criteria_refits_at_every_width(tmp_path, tiny_dir, calibration):
    """Each width's rows come with and without the refit: recovery is applied again for every width (bench/recovery.py
    and `build-family --check-criteria` ask for several at once)."""
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(words(99, 300))
    outcome = check_criteria(
        open_source(str(tiny_dir("llama"))),
        CheckSettings(
            text=held_out,
            pcts=("25", "50"),
            criteria=("maw",),
            calibration=CalibrationSettings(text=calibration, max_tokens=TOKENS, window=WINDOW),
            recovery=RecoverySettings("refit"),
        ),
    )
    assert sorted((row.pct, row.recovery) for row in outcome.rows) == [
        ("25", "none"), ("25", "refit"), ("50", "none"), ("50", "refit")
    ]  # fmt: skip
