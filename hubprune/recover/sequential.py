"""Sequential refit: each layer's kept down_proj columns fitted, in layer order, on the inputs the member's own
already pruned and refit layers below give it.

The refit (refit.py) fits every layer on the unpruned model's inputs: each layer is right for a model it is not
part of, and the errors of the layers below add up. Here layer l is fitted after layers 0..l-1 are pruned and
refit, on the down_proj inputs ã(t) the member itself gives it, toward what the layer's unpruned weights W give on
those inputs (the sequential scheme of SparseGPT, Frantar & Alistarh 2023, and OBC, here with the closed-form ridge
of one layer's kept columns; K the kept neurons, R the removed ones):

    W'_K = argmin sum_t || W ã(t) - W'_K ã_K(t) ||^2 + lambda || W'_K - W_K ||^2
         = (W G~_:K + lambda W_K) (G~_KK + lambda I)^-1 = W_K + W_R G~_RK (G~_KK + lambda I)^-1

with G~ = sum_t ã(t) ã(t)^T and lambda = alpha x mean(diag G~_KK). alpha is chosen per layer from ALPHAS on every
third calibration window, held out from a fit on the others, then solved again on every window; in float64. Where
no alpha beats the plain kept columns on the held-out windows, the layer keeps them (alpha recorded as None).

Fitted toward the unpruned model's outputs on the unpruned model's inputs instead (W a), the same scheme was much
worse on SmolLM2 (docs/recovery.md): one layer's kept columns then try to undo the drift every layer below left in
the residual stream, and over-fit it.

How it runs: the model is loaded once, every decoder layer's call is recorded once per window (the hidden states
entering the first layer and each layer's other arguments: position embeddings, masks), and then the member's
hidden states are run through one layer at a time: once up to down_proj to take the layer's statistics, and once
whole with the refit columns to give the next layer its inputs. Per member width that costs about two forward
passes of the model over the calibration windows, plus one solve per layer and alpha; memory: the model, the
member's hidden states (windows x tokens x hidden floats) and one layer's sums (n x n).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from hubprune.recover.layer_calls import decoder_layers, input_of, record_calls, run_layer
from hubprune.recover.refit import (
    ALPHAS,
    NewColumns,
    PassInputs,
    Refits,
    apply_update,
    is_held_out,
    refit_layer,
    removed_of,
)

FORMULA = (
    "W'_K = (W G~_:K + lambda W_K) (G~_KK + lambda I)^-1, G~ = sum_t ã(t) ã(t)^T of down_proj's input ã in the "
    "member, whose layers below are already pruned and refit; lambda = alpha * mean(diag G~_KK); layers in order; "
    "alpha chosen per layer on held-out windows"
)


def member_updates(inputs: PassInputs, kept: dict[int, torch.Tensor], alphas: tuple[float, ...] = ALPHAS) -> Refits:
    """The kept down_proj columns of every layer of one member width (`kept`: layer -> ascending kept indices),
    fitted in layer order, and the record of how. The model in `inputs` is left as it was."""
    started = time.perf_counter()
    downs = inputs.loaded_downs()
    layers = decoder_layers(inputs.model, downs, "the sequential refit")
    member, calls = record_calls(inputs.model, layers, inputs.windows)
    updates: dict[int, NewColumns] = {}
    chosen: dict[str, float | None] = {}
    errors: list[tuple[float, float]] = []
    tokens = (0, 0)
    with torch.no_grad():
        for layer in sorted(layers):
            down, block, weight = downs[layer], layers[layer], downs[layer].weight.data
            grams: list[Any] = [0.0, 0.0]  # G~ over the fitting and the held-out windows, float64
            counts = [0, 0]
            for i, window in enumerate(calls):
                member_in = input_of(down, block, member[i], window[layer]).double()
                held_out = is_held_out(i)
                grams[held_out] = grams[held_out] + member_in.T @ member_in
                counts[held_out] += len(member_in)
            # toward W ã on the member's own inputs, the fit is the refit's, with the member's Gram matrices
            fitted = refit_layer(weight, grams[0], grams[1], kept[layer], alphas)
            removed = removed_of(kept[layer], weight.shape[1])
            columns = apply_update(weight.double(), kept[layer], removed, fitted.update).float()
            chosen[str(layer)], tokens = fitted.alpha if math.isfinite(fitted.alpha) else None, (counts[0], counts[1])
            errors.append((fitted.plain_error, fitted.held_out_error))
            updates[layer] = NewColumns(columns)
            pruned = torch.zeros_like(weight)
            pruned[:, kept[layer]] = columns.to(weight.dtype)
            down.weight.data = pruned  # the member's layer, to give the layer above the member's inputs
            try:
                for i, window in enumerate(calls):
                    member[i] = run_layer(block, member[i], window[layer])
            finally:
                down.weight.data = weight
    record = {
        "method": "sequential",
        "formula": FORMULA,
        "alphas_tried": list(alphas),
        "alpha": chosen,
        "held_out_error": {
            "plain": _mean(e[0] for e in errors),
            "refit": _mean(e[1] for e in errors),
            "meaning": "mean over layers of the relative error of the MLP's output on held-out calibration windows, "
            "on the member's own inputs: sum ||W ã - W'_K ã_K||^2 / sum ||W ã||^2 (plain: W'_K = W_K)",
        },
        "tokens": {"fit": tokens[0], "held_out": tokens[1]},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Refits(updates, record)  # type: ignore[arg-type]


def _mean(values: Any) -> float:
    found = list(values)
    return sum(found) / len(found) if found else math.nan
