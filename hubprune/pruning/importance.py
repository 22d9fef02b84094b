"""Neuron importance criteria for GLU MLPs and the deterministic ranking built on them. Pure: no I/O.

Neuron i of a GLU block is row i of gate_proj.weight G and of up_proj.weight U (shape [intermediate, hidden])
and column i of down_proj.weight. Every score is computed in float32 from the stored weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from hubprune.errors import CriterionError


def maw(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """MAW ("PPM" since v3): (max_j G_ij + |min_j G_ij|) + (max_j U_ij + |min_j U_ij|).

    Martra 2025, arXiv 2512.22671, and optipfair/pruning/mlp_glu.py. Not max|w|: for a row holding both signs
    it is the row's peak-to-peak range. down_proj is not used.
    """

    # max and min are exact in any float dtype, so they are taken in the stored dtype (no full-size float32
    # copy of the weights) and only the per-row sums are done in float32.
    return peak_to_peak(gate, 1) + peak_to_peak(up, 1)


def vow(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """VOW: var(G_i) + var(U_i), unbiased variance of each row (arXiv 2512.22671, Table 9)."""
    return gate.float().var(dim=1, unbiased=True) + up.float().var(dim=1, unbiased=True)


def pon(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """PON: ||G_i||_1 · ||U_i||_1 (arXiv 2512.22671, Table 9)."""
    return gate.float().abs().sum(dim=1) * up.float().abs().sum(dim=1)


def l2(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """L2: ||G_i||_2 + ||U_i||_2 (optipfair's L2 option)."""
    return torch.linalg.vector_norm(gate.float(), dim=1) + torch.linalg.vector_norm(up.float(), dim=1)


WEIGHT_CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "maw": maw,
    "ppm": maw,  # the paper's v3 name for the same criterion
    "vow": vow,
    "pon": pon,
    "l2": l2,
}
# Criteria that need activations from a calibration text (hubprune/calibrate.py) as well as the weights.
DATA_CRITERIA = ("activation", "hybrid", "obs", "obs-fisher")
GRAM_CRITERIA = ("obs", "obs-fisher")  # those that read the calibration's Gram matrices, not only per-neuron statistics
FISHER_CRITERIA = ("obs-fisher",)  # those that read each layer's output Fisher (fisher.py): a backward pass a window
CRITERIA = (*WEIGHT_CRITERIA, *DATA_CRITERIA, "random")


def activation(abs_mean: torch.Tensor, down_column_l2: torch.Tensor) -> torch.Tensor:
    """activation: mean_t |h_i(t)| · ||D_:,i||_2, where h = act(G·x) ⊙ (U·x) is the input of down_proj over the
    calibration tokens t and D_:,i the column of down_proj that neuron i writes with.

    The expected magnitude of what neuron i adds to the residual stream, up to the direction of D_:,i: a
    neuron with small weights that fires often scores high, unlike under MAW.
    """
    return abs_mean.float() * down_column_l2.float()


def hybrid(
    gate_ptp: torch.Tensor, up_ptp: torch.Tensor, down_ptp: torch.Tensor, activation_l2: torch.Tensor
) -> torch.Tensor:
    """optipfair's hybrid score (optipfair/pruning/mlp_glu.py, after CFSP): (g_i/max g + u_i/max u + d_i/max d)
    · ||h_i||_2, where g, u are the MAW peak-to-peak of each gate and up row, d that of each down_proj column, and
    ||h_i||_2 the L2 norm of neuron i's down_proj input over every calibration token (not a mean: it grows with
    the number of tokens, which changes no ranking). optipfair adds 1e-8 to each max; hubprune does the same."""
    structural = gate_ptp / (gate_ptp.max() + 1e-8) + up_ptp / (up_ptp.max() + 1e-8)
    return (structural + down_ptp / (down_ptp.max() + 1e-8)) * activation_l2.float()


OBS_DAMP = 0.01  # lambda = OBS_DAMP * mean(diag G): keeps G invertible, as SparseGPT's dampening does


def obs_group(width: int) -> int:
    """Neurons removed together per step: 8, or more for wide layers (at most 256 steps per layer)."""
    return max(8, -(-width // 256))


def obs(
    down: torch.Tensor, gram: torch.Tensor, group: int | None = None, fisher: torch.Tensor | None = None
) -> torch.Tensor:
    """obs: structured Optimal Brain Surgeon with compensation (ZipLM, Kurtic et al. 2023; SlimGPT; OSSCAR): the
    order in which greedy removal takes the neurons out, the last removed scoring highest.

    With W = down_proj's weight (hidden x n) and G = sum_t h(t) h(t)^T of its input, damped to G + lambda I, removing
    the set S of neurons and re-solving the others' columns optimally costs tr(W_S [(G + lambda I)^-1_SS]^-1 W_S^T).
    Each step removes the `group` neurons with the smallest single-neuron cost ||W_:,j||^2 / [(G + lambda I)^-1]_jj
    under the weights and inverse as the earlier removals left them, then updates both exactly:
    W <- W - W_:,S (Ginv_SS)^-1 Ginv_S,: and Ginv <- Ginv - Ginv_:,S (Ginv_SS)^-1 Ginv_S,:. The order is nested, so
    one run ranks the neurons for every width of a family. Cost: about n / group steps of O(n^2 group), in float64.

    obs-fisher, with `fisher` F (hidden x hidden, the layer's output Fisher, fisher.py): the error is measured as the
    model's predictions feel it, E[(g^T dW h)^2] ~ tr(dW^T F dW G) (LLM-Surgeon's Kronecker-factored curvature, van der
    Ouderaa et al. 2024), so a neuron costs W_:,j^T F W_:,j / [(G + lambda I)^-1]_jj. The compensation that minimises
    it is the same as without F (F factors out of the solve for the other columns), so only the costs change: obs
    runs on S W, with S^T S = F.
    """
    w = down.double().clone()
    width = w.shape[1]
    group = group or obs_group(width)
    g = gram.double()
    g = g + OBS_DAMP * g.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny) * torch.eye(width, dtype=g.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(g))
    alive = torch.ones(width, dtype=torch.bool)
    scores = torch.empty(width, dtype=torch.float32)
    removed = 0
    if fisher is not None:  # W_:,j^T F W_:,j = ||S W_:,j||^2 with S^T S = F; every update multiplies W on the right
        values, vectors = torch.linalg.eigh(fisher.double())
        w = (values.clamp_min(0).sqrt()[:, None] * vectors.T) @ w
    while removed < width:
        cost = w.square().sum(dim=0) / inverse.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
        cost[~alive] = torch.inf
        chosen = torch.sort(cost, stable=True).indices[: min(group, width - removed)]
        block = torch.linalg.inv(inverse[chosen][:, chosen])
        w -= w[:, chosen] @ block @ inverse[chosen]
        inverse -= inverse[:, chosen] @ block @ inverse[chosen]
        scores[chosen] = torch.arange(removed, removed + len(chosen), dtype=torch.float32)
        alive[chosen] = False
        removed += len(chosen)
    return scores


def peak_to_peak(w: torch.Tensor, dim: int) -> torch.Tensor:
    """max + |min| along `dim` in float32 (MAW's per-row term)."""
    return w.amax(dim=dim).float() + w.amin(dim=dim).float().abs()


def random_scores(width: int, *, seed: int, layer: int) -> torch.Tensor:
    """Seeded uniform scores for the random baseline, identical on every machine and Python version.

    Python's random.Random with a str seed and its random() method are the stream the standard library
    promises to keep stable, unlike torch's or numpy's samplers.
    """
    rng = random.Random(f"hubprune-random:{seed}:{layer}")
    return torch.tensor([rng.random() for _ in range(width)], dtype=torch.float32)


def check_criterion(name: str) -> str:
    """The criterion's canonical name, or a clear error listing the known ones."""
    if name not in CRITERIA:
        raise CriterionError(f"unknown criterion {name!r}: choose one of {', '.join(CRITERIA)}")
    return "maw" if name == "ppm" else name


def score_rows(criterion: str, gate: torch.Tensor, up: torch.Tensor, *, layer: int) -> torch.Tensor:
    """float32 importance of the neurons whose gate and up rows are given, under a weight criterion.

    Every weight criterion is a function of each neuron's own rows, so a layer can be scored in row chunks.
    """
    name = check_criterion(criterion)
    if name not in WEIGHT_CRITERIA:
        raise CriterionError(f"criterion {name!r} does not score weights")
    scores = WEIGHT_CRITERIA[name](gate, up)
    if not bool(torch.isfinite(scores).all()):
        raise CriterionError(
            f"layer {layer}: criterion {name!r} gives non-finite scores (NaN or inf weights in gate/up): "
            "the checkpoint is damaged; re-download it"
        )
    return scores


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Neuron indices from most to least important: higher score first; equal scores keep the lower index first.

    A stable ascending sort of the negated scores gives exactly that order (ties keep their index order),
    and is the same on every machine, unlike topk, whose choice among ties is unspecified.
    """
    return torch.sort(-scores, stable=True).indices


def keep(ranking: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` most important neurons, in ascending index order (as they are written)."""
    return torch.sort(ranking[:width]).values
