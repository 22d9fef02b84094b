"""Training-free compensation: refit each layer's kept down_proj columns so the pruned MLP's output stays close
to the original's on calibration text.

For one layer, h(t) is down_proj's input at calibration token t (width n), W its weight (hidden x n), K the kept
neurons and R the removed ones. The original output is W h = W_K h_K + W_R h_R. The refit W'_K minimises

    sum_t || W h(t) - W'_K h_K(t) ||^2  +  lambda || W'_K - W_K ||^2

a least-squares fit of the original output from the kept inputs, with a ridge toward the original columns (the
layer-wise reconstruction objective SparseGPT also minimises, here solved exactly for a subset of columns). With
the Gram matrix
G = sum_t h(t) h(t)^T, setting the gradient to zero gives

    W'_K = W_K + W_R G_RK (G_KK + lambda I)^-1

so only the n x n Gram matrix of each layer is needed, never the activations themselves, and the update is a
matrix M = G_RK (G_KK + lambda I)^-1 (|R| x |K|) that the streaming pass applies to each row chunk of down_proj:
W'_K[rows] = W_K[rows] + W_R[rows] M.

lambda = alpha x mean(diag G_KK): alpha is scale-free across layers and models. Without the ridge (alpha -> 0)
the fit has |K| unknowns per output row and overfits a few thousand tokens (DESIGN.md); alpha is chosen per layer
from ALPHAS by the reconstruction error on held-out calibration windows (a second Gram matrix), so the choice is
measured, not assumed; the update is then solved again with that alpha on every calibration window. Every solve
is in float64: G's condition number grows with the width.

The statistics are those of the original model: every layer is refit for the inputs the unpruned model gives it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

ALPHAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
HELD_OUT_EVERY = 3  # every third calibration window is held out (see is_held_out)


def is_held_out(window: int) -> bool:
    """Whether calibration window number `window` is held out: the refit chooses alpha on those windows, and the
    steps that run the model (sequential, reconstruct) hold out the same ones."""
    return window % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


@dataclass(frozen=True)
class Grams:
    """Per layer, G = sum_t h(t) h(t)^T (float32, n x n) of down_proj's input over two disjoint sets of windows:
    `fit` (two windows in three) and `held_out` (every third window), with the tokens each holds.

    Under a memory cap (LoadSettings.max_memory) each matrix is a memory map of a file whose name is already
    removed: its pages are read on use and can be dropped again, and the kernel frees the file with the last
    tensor that maps it, so nothing is left to clean up."""

    fit: dict[int, torch.Tensor]
    held_out: dict[int, torch.Tensor]
    fit_tokens: int
    held_out_tokens: int


@dataclass(frozen=True)
class LayerRefit:
    """One layer's compensation: the update matrix and how it was chosen."""

    update: torch.Tensor  # M, |R| x |K| float64: W'_K = W_K + W_R M
    alpha: float  # lambda / mean(diag G_KK)
    held_out_error: float  # relative reconstruction error on held-out tokens with the refit (0 = exact)
    plain_error: float  # the same without the refit (W_K alone)


def _solve(g_kk: torch.Tensor, g_kr: torch.Tensor, alpha: float) -> torch.Tensor:
    ridge = alpha * g_kk.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    system = g_kk + ridge * torch.eye(len(g_kk), dtype=torch.float64)
    # G_KK + lambda I is symmetric positive definite: M^T = (G_KK + lambda I)^-1 G_KR by Cholesky.
    return torch.cholesky_solve(g_kr, torch.linalg.cholesky(system)).T


class _HeldOutError:
    """sum_t ||W h - W'_K h_K||^2 / sum_t ||W h||^2 over the tokens whose Gram matrix is H, for W'_K = W_K + W_R M.

    The difference W - [W'_K in the kept columns, 0 elsewhere] is W_R Q, with Q = [-M in the kept columns, I in the
    removed ones], so the numerator is tr(W_R Q H Q^T W_R^T) = tr(A (M H_KK M^T - M H_KR - H_RK M^T + H_RR)) with
    A = W_R^T W_R: products of |R|-sized blocks, not of the whole n x n matrix, for each alpha tried."""

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor) -> None:
        w, h = weight.double(), gram.double()
        w_removed = w[:, removed]
        self.a = w_removed.T @ w_removed
        self.h_kk, self.h_kr, self.h_rr = h[kept][:, kept], h[kept][:, removed], h[removed][:, removed]
        self.total = float((w @ h * w).sum().clamp_min(1e-300))

    def __call__(self, update: torch.Tensor | None) -> float:
        q = self.h_rr.clone()
        if update is not None:
            cross = update @ self.h_kr
            q += update @ self.h_kk @ update.T - cross - cross.T
        return float((self.a * q).sum()) / self.total


def removed_of(kept: torch.Tensor, width: int) -> torch.Tensor:
    """The ascending indices in [0, width) that are not in `kept`."""
    mask = torch.ones(width, dtype=torch.bool)
    mask[kept] = False
    return torch.arange(width)[mask]


def refit_layer(
    weight: torch.Tensor,
    fit_gram: torch.Tensor,
    held_out_gram: torch.Tensor,
    kept: torch.Tensor,
    alphas: tuple[float, ...] = ALPHAS,
) -> LayerRefit:
    """The update for one layer: alpha chosen from `alphas` by the reconstruction error on the held-out windows
    of a fit on the others, then the update solved with that alpha on all of them (fit + held out). When no alpha
    beats leaving W_K as it is on held-out windows, the update is zero (alpha recorded as inf)."""
    removed = removed_of(kept, weight.shape[1])
    error_of = _HeldOutError(weight, held_out_gram, kept, removed)
    fit = fit_gram.double()
    fit_kk, fit_kr = fit[kept][:, kept], fit[kept][:, removed]
    plain = error_of(None)
    best_alpha, best_error = float("inf"), plain
    for alpha in alphas:
        error = error_of(_solve(fit_kk, fit_kr, alpha))
        if error < best_error:
            best_alpha, best_error = alpha, error
    if best_alpha == float("inf"):
        return LayerRefit(torch.zeros(len(removed), len(kept), dtype=torch.float64), best_alpha, plain, plain)
    every = fit + held_out_gram.double()
    update = _solve(every[kept][:, kept], every[kept][:, removed], best_alpha)
    return LayerRefit(update, best_alpha, best_error, plain)


@dataclass(frozen=True)
class NewColumns:
    """A member's kept down_proj columns computed whole (hidden x |K|, float32): the update of a method whose result
    is not W_K + W_R M for one M (the sequential refit)."""

    columns: torch.Tensor


@dataclass(frozen=True)
class Refits:
    """Every layer's update for one member width, and the record hubprune.json keeps of how it was chosen."""

    updates: dict[int, torch.Tensor | NewColumns]  # layer -> M (float32, |R| x |K|), or the new columns
    record: dict[str, Any]


@dataclass(frozen=True)
class PassInputs:
    """What a pass method computes a member width's updates from: the unpruned down_proj weights, the calibration's
    Gram matrices (refit), and for a method that runs the model, the loaded model, the calibration windows and each
    layer's down_proj module name."""

    down_weights: dict[int, torch.Tensor]
    grams: Grams | None = None
    model: Any = None
    windows: tuple[torch.Tensor, ...] = ()
    down_modules: dict[int, str] = field(default_factory=dict)

    def loaded_downs(self) -> dict[int, torch.nn.Module]:
        from hubprune.model_inputs import loaded_modules

        return loaded_modules(self.model, self.down_modules)


def member_updates(inputs: PassInputs, kept: dict[int, torch.Tensor]) -> Refits:
    """The registry's call of a pass method (methods.py): the refit of one member width."""
    assert inputs.grams is not None, "the refit reads the calibration's Gram matrices"
    return refit_member(inputs.down_weights, inputs.grams, kept)


def refit_member(
    down_weights: dict[int, torch.Tensor],
    grams: Grams,
    kept: dict[int, torch.Tensor],
    alphas: tuple[float, ...] = ALPHAS,
) -> Refits:
    """The updates of every layer for one member (`kept`: layer -> ascending kept indices), with its record."""
    started = time.perf_counter()
    layers = {
        layer: refit_layer(down_weights[layer], grams.fit[layer], grams.held_out[layer], kept[layer], alphas)
        for layer in sorted(kept)
    }
    record = {
        "method": "refit",
        "formula": FORMULA,
        "alphas_tried": list(alphas),
        # None: no alpha beat the plain columns on held-out windows, and the layer was left as pruned
        "alpha": {str(layer): refit.alpha if math.isfinite(refit.alpha) else None for layer, refit in layers.items()},
        "held_out_error": {
            "plain": _mean(refit.plain_error for refit in layers.values()),
            "refit": _mean(refit.held_out_error for refit in layers.values()),
            "meaning": "mean over layers of the relative reconstruction error of the MLP's output on held-out "
            "calibration windows: sum ||W h - W'_K h_K||^2 / sum ||W h||^2",
        },
        "tokens": {"fit": grams.fit_tokens, "held_out": grams.held_out_tokens},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Refits({layer: refit.update.float() for layer, refit in layers.items()}, record)


FORMULA = (
    "W'_K = W_K + W_R G_RK (G_KK + lambda I)^-1, lambda = alpha * mean(diag G_KK), G = sum_t h(t) h(t)^T of "
    "down_proj's input h over the calibration tokens; alpha chosen per layer on held-out windows"
)


def _mean(values: Any) -> float:
    found = list(values)
    return sum(found) / len(found)


def apply_update(
    down_rows: torch.Tensor,
    kept: torch.Tensor,
    removed: torch.Tensor,
    update: torch.Tensor | NewColumns,
    start: int = 0,
) -> torch.Tensor:
    """A row chunk of down_proj (rows `start`.. of it, rows x n, any float dtype) -> its refit kept columns
    (rows x |K|), computed in float64 and returned in the chunk's dtype."""
    if isinstance(update, NewColumns):
        return update.columns[start : start + len(down_rows)].to(down_rows.dtype)
    rows = down_rows.double()
    return (rows[:, kept] + rows[:, removed] @ update.double()).to(down_rows.dtype)
