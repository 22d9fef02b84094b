"""Resolve a config.json to the architecture spec that says how its GLU MLP tensors are named.

The facts live in hubprune/data/architectures/*.json (one file per family), so supporting a new family means
adding a file, not a branch here. Optional key "bias_flag": the config key that says the MLP projections carry
biases (default "mlp_bias", Llama's); a family whose configs lack it has no MLP biases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from hubprune.errors import TargetError, UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """How one model family names its GLU MLP tensors and where its width lives in config.json."""

    name: str
    model_types: tuple[str, ...]
    config_path: tuple[str, ...]  # keys leading to the dict holding hidden_size / intermediate_size
    mlp_prefix: re.Pattern[str]  # matches "<...>layers.<layer>.mlp." in a tensor name
    down: str
    gate: str | None = None
    up: str | None = None
    gate_up: str | None = None  # fused [gate; up] rows, as in Phi-3
    bias_flag: str | None = "mlp_bias"  # the config key that gives the MLP biases (transformers' name for Llama)

    def has_bias(self, config: dict[str, Any]) -> bool:
        """True when the config says the MLP projections carry biases (Llama's `mlp_bias`); without the key a
        checkpoint of this family has none, and a bias tensor in it is unexpected."""
        return bool(self.bias_flag) and self.text_config(config).get(self.bias_flag) is True

    def text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The (sub)dict of config.json that holds hidden_size and intermediate_size."""
        node = config
        for key in self.config_path:
            node = node[key]
        return node

    def widths(self, config: dict[str, Any]) -> tuple[int, int]:
        """(hidden_size, intermediate_size) from the config, refusing per-layer widths."""
        text = self.text_config(config)
        hidden, inter = text.get("hidden_size"), text.get("intermediate_size")
        if isinstance(inter, list):
            if len(set(inter)) != 1:
                raise TargetError(
                    f"config.json has per-layer intermediate sizes {sorted(set(inter))}; hubprune needs one width for "
                    "all layers (plain from_pretrained cannot load anything else): prune a uniform-width model"
                )
            inter = inter[0]
        if not isinstance(hidden, int) or not isinstance(inter, int):
            raise UnsupportedArchitectureError(
                f"config.json lacks integer hidden_size/intermediate_size (got {hidden!r}/{inter!r}) under "
                f"{'.'.join(self.config_path) or 'the top level'}: is this a complete {self.name} config?"
            )
        return hidden, inter


def _load_spec(name: str, data: dict[str, Any]) -> ArchSpec:
    return ArchSpec(
        name=name,
        model_types=tuple(data["model_types"]),
        config_path=tuple(data.get("config_path", [])),
        mlp_prefix=re.compile(data["mlp_prefix_pattern"]),
        down=data["down"],
        gate=data.get("gate"),
        up=data.get("up"),
        gate_up=data.get("gate_up"),
        bias_flag=data.get("bias_flag", "mlp_bias"),
    )


def all_specs() -> dict[str, ArchSpec]:
    """Every shipped spec, keyed by model_type."""
    specs: dict[str, ArchSpec] = {}
    folder = resources.files("hubprune") / "data" / "architectures"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            spec = _load_spec(entry.name[: -len(".json")], json.loads(entry.read_text()))
            for model_type in spec.model_types:
                specs[model_type] = spec
    return specs


def resolve(config: dict[str, Any]) -> ArchSpec:
    """The spec for a config.json, or a clear error naming the model type and the supported ones."""
    specs = all_specs()
    model_type = config.get("model_type")
    if model_type not in specs:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported: hubprune prunes the GLU MLP (gate/up/down projections) "
            f"of {', '.join(sorted(specs))}; a model without GLU MLP blocks cannot be width-pruned this way "
            "(to add a GLU family, add a file to hubprune/data/architectures/)"
        )
    return specs[model_type]
