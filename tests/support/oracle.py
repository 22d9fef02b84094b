"""Independent re-computations that pruned checkpoints are checked against."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

MLP_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp$")


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def maw_numpy(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The paper's formula, written out in numpy float32: (max + |min|) of each gate row plus the same for up."""
    g, u = gate.astype(np.float32), up.astype(np.float32)
    return (g.max(axis=1) + np.abs(g.min(axis=1))) + (u.max(axis=1) + np.abs(u.min(axis=1)))


def scores_float64(criterion: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g, u = gate.astype(np.float64), up.astype(np.float64)
    if criterion == "maw":
        return (g.max(1) + np.abs(g.min(1))) + (u.max(1) + np.abs(u.min(1)))
    if criterion == "vow":
        return g.var(axis=1, ddof=1) + u.var(axis=1, ddof=1)
    if criterion == "pon":
        return np.abs(g).sum(1) * np.abs(u).sum(1)
    if criterion == "l2":
        return np.sqrt((g**2).sum(1)) + np.sqrt((u**2).sum(1))
    raise ValueError(criterion)


def top_k_tie_lower_index(scores: np.ndarray, k: int) -> list[int]:
    """The documented rule written the slow, obvious way: sort by (-score, index), keep k, ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def mlp_modules(model) -> dict[int, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        match = MLP_MODULE.search(name)
        if match and hasattr(module, "down_proj") and "vision" not in name:
            found[int(match.group(1))] = module
    return found


def oracle_logits(source: Path, kept: list[list[int]], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the ORIGINAL model with the removed neurons' down_proj columns zeroed."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer, module in mlp_modules(model).items():
            width = module.down_proj.weight.shape[1]
            removed = sorted(set(range(width)) - set(kept[layer]))
            module.down_proj.weight[:, removed] = 0
        return model(input_ids).logits


def logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids).logits
