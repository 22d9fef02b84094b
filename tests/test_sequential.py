"""The sequential refit (`--recover sequential`, #23) on tiny models of every family, against an independent float64
implementation: layer by layer, the member's own down_proj inputs are captured by full forward passes of the member
as refit so far (not by replaying layers, as the product does), the kept columns are solved as one stacked
least-squares problem per alpha, alpha is chosen on the held-out windows, and the member written to disk must compute
what the base computes with those columns and the removed ones zeroed."""

from __future__ import annotations

import json

import pytest
import torch
from support.tiny_models import FAMILIES
from test_cli import assert_clean_error, invoke
from test_data_criteria import words
from test_recovery import (
    TOKENS,
    WIDTH_KEPT,
    WINDOW,
    assert_member_is_the_base_with,
    build_refit_member,
    down_projs,
    held_out_error,
    ridge_solve,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.device import RuntimeSettings
from hubprune.errors import CriterionError
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

SOLVE_ATOL = {"qwen2": 1e-4}  # as test_recovery's: qwen2's tiny down_proj inputs are ~1e5-conditioned


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(words(7, 400))
    return path


def build_member(tmp_path, source, calibration):
    return build_refit_member(tmp_path, source, calibration, recover="sequential")


def member_inputs(model, layer: int, windows: list[list[int]]) -> list[torch.Tensor]:
    """Per window, `layer`'s down_proj input in `model`, by a whole forward pass of the model."""
    found: list[torch.Tensor] = []
    handle = down_projs(model)[layer].register_forward_pre_hook(lambda m, a: found.append(a[0][0].double()))
    with torch.no_grad():
        for window in windows:
            model(torch.tensor([window]))
    handle.remove()
    return found


def oracle(source, text: str, kept: dict[int, list[int]], alphas: list[float]) -> dict[int, tuple]:
    """Per layer, in order: (alpha, columns) as the documented method gives them, in float64."""
    ids = AutoTokenizer.from_pretrained(source)(text, add_special_tokens=False).input_ids[:TOKENS]
    windows = [ids[start : start + WINDOW] for start in range(0, len(ids), WINDOW)]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float64).eval()
    member = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float64).eval()
    weights = {layer: module.weight.detach().clone() for layer, module in down_projs(base).items()}
    found = {}
    for layer in sorted(weights):
        weight, keep = weights[layer], kept[layer]
        h = member_inputs(member, layer, windows)
        fit = torch.cat([w for i, w in enumerate(h) if i % 3 != 2])
        held = torch.cat([w for i, w in enumerate(h) if i % 3 == 2])
        errors = {a: held_out_error(held, weight, keep, ridge_solve(fit, weight, keep, a)) for a in alphas}
        plain = held_out_error(held, weight, keep, weight[:, keep])
        best = min(errors, key=errors.get)
        alpha = best if errors[best] < plain else None
        columns = weight[:, keep] if alpha is None else ridge_solve(torch.cat(h), weight, keep, alpha)
        found[layer] = (alpha, columns)
        with torch.no_grad():  # this layer as the member has it, for the inputs of the layers above
            written = torch.zeros_like(weight)
            written[:, keep] = columns
            down_projs(member)[layer].weight.copy_(written)
    return found


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_layer_is_refit_on_the_members_own_inputs_as_an_independent_solve_gives(
    tmp_path, tiny_dir, calibration, model_type
):
    source = tiny_dir(model_type)
    member = build_member(tmp_path, source, calibration)
    record = json.loads((member / "hubprune.json").read_text())["recovery"]
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    expected = oracle(source, calibration.read_text(), dict(enumerate(kept)), record["alphas_tried"])

    pruned = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    written = {layer: module.weight.detach().double() for layer, module in down_projs(pruned).items()}
    assert record["method"] == "sequential" and record["tokens"] == {"fit": 4 * WINDOW, "held_out": 2 * WINDOW}
    changed = 0
    for layer, (alpha, columns) in expected.items():
        assert record["alpha"][str(layer)] == alpha, (layer, record["alpha"])
        assert torch.allclose(written[layer], columns, rtol=1e-4, atol=SOLVE_ATOL.get(model_type, 1e-5)), layer
        changed += alpha is not None
    assert changed > 0  # some layer was refit: plain kept columns would not pass

    # the member computes exactly the base with those columns and the removed ones zeroed (the oracle)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert_member_is_the_base_with(pruned, base, kept, written)


def test_the_layers_below_change_what_each_layer_is_fitted_on(tmp_path, tiny_dir, calibration):
    """Not the refit under another name: fitted on the unpruned model's inputs, the upper layers' columns differ."""
    source = tiny_dir("llama")
    member = build_member(tmp_path, source, calibration)
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    record = json.loads((member / "hubprune.json").read_text())["recovery"]
    pruned = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    last = max(range(len(kept)))
    alpha = record["alpha"][str(last)]
    assert alpha is not None
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float64).eval()
    ids = AutoTokenizer.from_pretrained(source)(calibration.read_text(), add_special_tokens=False).input_ids[:TOKENS]
    unpruned_inputs = torch.cat(member_inputs(base, last, [ids[s : s + WINDOW] for s in range(0, TOKENS, WINDOW)]))
    weight = down_projs(base)[last].weight.detach()
    independent = ridge_solve(unpruned_inputs, weight, kept[last], alpha)
    assert not torch.allclose(down_projs(pruned)[last].weight.double(), independent, atol=1e-3)


def test_sequential_is_a_recover_value_and_one_pass_step_at_a_time(tmp_path, tiny_dir, calibration):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    result = invoke("prune", "--help")
    assert "sequential = the refit done layer by layer" in " ".join(result.output.split())
    base = ("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "40")
    assert_clean_error(invoke(*base, "--recover", "refit+sequential"), "two steps that change the pass")
    assert not family.exists()
    with pytest.raises(CriterionError, match="recovery sequential runs the whole model in memory"):
        build_family(
            open_source(str(source)),
            family,
            [Target("size", str(WIDTH_KEPT))],
            PruneSettings("activation", recovery=RecoverySettings("sequential")),
            RuntimeSettings(max_memory=10**9),
        )
    assert not family.exists()
