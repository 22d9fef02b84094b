"""Each layer's output Fisher: how much the model's predictions care about each direction of its MLP's output.

F_l = sum_t g(t) g(t)^T, with g(t) the gradient of -log p(y_t) with respect to layer l's down_proj output at
calibration token t, where y_t is drawn from the model's own next-token distribution (one draw per position,
seeded). Its expectation is the Gauss-Newton Hessian of KL(base || member) in the layer's output at member = base:
the curvature the output-weighted OBS criterion (`obs-fisher`, importance.obs) weighs a removal's error by, as
LLM-Surgeon's Kronecker factor does (van der Ouderaa et al. 2024) and SDMPrune weighs by the distillation loss's
gradients (2025). Drawing y_t from the model, not reading the text's next token, makes it the KL's curvature rather
than the text's (the "empirical" Fisher), so a calibration text's domain weighs in only through the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

FISHER_SEED = 0  # the draws of y_t; recorded with the calibration


def output_fishers(
    model: Any, windows: Sequence[torch.Tensor], down_modules: dict[int, torch.nn.Module], *, device: str = "cpu"
) -> dict[int, torch.Tensor]:
    """F_l (hidden x hidden, float32, on the CPU) for every layer l of `down_modules` (layer -> its down_proj module),
    summed over every position of `windows` (1-D token ids). One forward and one backward pass per window, with every
    position's logits; no parameter's gradient is kept."""
    fishers: dict[int, torch.Tensor] = {}

    def watch(layer: int):  # noqa: ANN202 - a forward hook
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if not output.requires_grad:  # the lowest watched layer: nothing below it asks for gradients
                output.requires_grad_(True)

            def add(grad: torch.Tensor) -> None:
                g = grad.detach().float().reshape(-1, grad.shape[-1])
                if layer not in fishers:
                    fishers[layer] = torch.zeros(g.shape[1], g.shape[1], device=g.device)
                fishers[layer].addmm_(g.T, g)  # in place: one hidden x hidden sum a layer, beside the model

            output.register_hook(add)

        return hook

    generator = torch.Generator().manual_seed(FISHER_SEED)
    wanted = [p.requires_grad for p in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    handles = [module.register_forward_hook(watch(layer)) for layer, module in down_modules.items()]
    try:
        for window in windows:
            with torch.enable_grad():
                logits = model(window[None].to(device)).logits[0].float()
                probabilities = logits.detach().softmax(-1).cpu()
                drawn = torch.multinomial(probabilities, 1, generator=generator)[:, 0].to(logits.device)
                torch.nn.functional.cross_entropy(logits, drawn, reduction="sum").backward()
    finally:
        for handle in handles:
            handle.remove()
        for parameter, asked in zip(model.parameters(), wanted, strict=True):
            parameter.requires_grad_(asked)
    return {layer: fisher.cpu() for layer, fisher in fishers.items()}
