"""Running a model's decoder layers one at a time, on hidden states of our own: what the steps that fit or train
layer by layer on the member's own inputs share (sequential.py, reconstruct.py).

A whole forward pass of the model is recorded once per window: the hidden states entering the first decoder layer
and every layer's other arguments (position embeddings, masks). Those arguments do not depend on the MLP widths,
so the same calls run the unpruned layers and the member's, and a step can then carry the member's hidden states
up the layers one by one, reading each layer's inputs as the member below it gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from hubprune.errors import CriterionError


class Stop(Exception):
    """Raised by a hook to end a forward pass once it has what it records."""


@dataclass
class LayerCall:
    """One decoder layer's call for one window: the arguments after the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def decoder_layers(model: Any, inner_modules: dict[int, torch.nn.Module], step: str) -> dict[int, torch.nn.Module]:
    """Each layer's decoder block: the module whose path is that of a module inside it (down_proj, the MLP) up to
    `layers.N`. `step` names the recovery in the error for an architecture whose layers are not found so."""
    names = {id(module): name for name, module in model.named_modules()}
    found = {}
    for layer, inner in inner_modules.items():
        match = re.match(rf"^(.*layers\.{layer})\.", names.get(id(inner), ""))
        if match is None:
            raise CriterionError(f"{step} cannot find the decoder layers of this architecture: recover with refit")
        found[layer] = model.get_submodule(match.group(1))
    return found


def record_calls(
    model: Any, layers: dict[int, torch.nn.Module], windows: tuple[torch.Tensor, ...]
) -> tuple[list[torch.Tensor], list[dict[int, LayerCall]]]:
    """Per window, the hidden states entering the first layer, and each layer's call (its other arguments)."""
    first, last = min(layers), max(layers)
    hidden: list[torch.Tensor] = []
    calls: list[dict[int, LayerCall]] = []

    def hook(layer: int):  # noqa: ANN202 - a forward pre-hook with keyword arguments
        def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            kwargs = dict(kwargs)
            states = args[0] if args else kwargs.pop("hidden_states")
            if layer == first:
                hidden.append(states.detach())
            calls[-1][layer] = LayerCall(tuple(args[1:]), kwargs)
            if layer == last:
                raise Stop

        return record

    handles = [module.register_forward_pre_hook(hook(layer), with_kwargs=True) for layer, module in layers.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for window in windows:
                calls.append({})
                try:
                    model(window[None].to(device), use_cache=False)
                except Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return hidden, calls


def run_layer(block: torch.nn.Module, states: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """The decoder layer's output hidden states on `states`."""
    out = block(states, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def input_of(inner: torch.nn.Module, block: torch.nn.Module, states: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """The input of `inner`, a module inside the decoder layer `block`, when the layer runs on `states`
    (tokens x features, float32); the layer stops there."""
    caught: list[torch.Tensor] = []

    def pre(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        caught.append(args[0].reshape(-1, args[0].shape[-1]).float())
        raise Stop

    handle = inner.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            run_layer(block, states, call)
    except Stop:
        pass
    finally:
        handle.remove()
    return caught[0]
