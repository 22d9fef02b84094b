"""A member's architecture as llama.cpp reads it: the GGUF architecture name, its hyperparameter keys, and each
safetensors tensor's GGUF name and layout.

What llama.cpp's own converter (convert_hf_to_gguf.py) does that a faithful file must match:
- Llama-style attention (llama, mistral) stores q_proj and k_proj rows with the two rotary halves of each head
  interleaved; Qwen, Gemma and Phi-3 are stored as they are.
- Gemma multiplies hidden states by (1 + weight) in its RMS norms, llama.cpp by weight: Gemma's norm weights are
  written +1.
- Llama 3's long-context RoPE ("llama3" scaling) is not a key but a tensor, rope_freqs, of one divisor per rotary
  frequency pair.
- Gemma 3 multimodal checkpoints hold the language model under a prefix; the vision tower belongs in a separate
  projector file (mmproj), which this does not write.
A configuration llama.cpp would run differently (another RoPE scaling, a Phi-3 with long-RoPE factors) is refused
rather than written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hubprune.errors import ExportError
from hubprune.pruning.arch import resolve

KeyValues = dict[str, Any]  # GGUF key (without the architecture prefix where it starts with ".") -> value
GEMMA_TEXT_PREFIX = re.compile(r"^(?:model\.language_model\.|language_model\.model\.|language_model\.)")
SKIPPED_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.", "model.multi_modal_projector.")


@dataclass(frozen=True)
class ModelLayout:
    """How one model type becomes a GGUF file."""

    arch: str  # general.architecture, and the prefix of every hyperparameter key
    rotary_rows_interleaved: bool  # llama.cpp's order of q/k rows (Llama-style attention)
    norms_plus_one: bool  # Gemma's (1 + weight) RMS norms
    extra_keys: Callable[[dict[str, Any]], KeyValues]  # the hyperparameters beyond the common ones


def _head_dim(text: dict[str, Any]) -> int:
    return int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])


def _rope(text: dict[str, Any], layers: str = "full_attention") -> dict[str, Any]:
    """The RoPE parameters of the full-attention layers (or of `layers`): transformers 5 keeps them in
    rope_parameters, per layer type where those differ (Gemma 3), older configs at the top level."""
    params = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    if "full_attention" in params:
        params = dict(params.get(layers) or {})
    elif layers != "full_attention":
        return {"rope_theta": text.get("rope_local_base_freq") or 10000.0}
    if params.get("rope_theta") is None and text.get("rope_theta") is not None:
        params["rope_theta"] = text["rope_theta"]
    return params


def _rope_type(text: dict[str, Any]) -> str:
    rope = _rope(text)
    return str(rope.get("rope_type") or rope.get("type") or "default")


def _llama_keys(text: dict[str, Any]) -> KeyValues:
    kind = _rope_type(text)
    if kind not in ("default", "llama3"):
        raise _unsupported_rope(text, kind)
    return {".rope.dimension_count": _head_dim(text)}


def _gemma2_keys(text: dict[str, Any]) -> KeyValues:
    keys = _head_dim_keys(text) | {".attention.sliding_window": int(text["sliding_window"])}
    if text.get("attn_logit_softcapping") is not None:
        keys[".attn_logit_softcapping"] = float(text["attn_logit_softcapping"])
    if text.get("final_logit_softcapping") is not None:
        keys[".final_logit_softcapping"] = float(text["final_logit_softcapping"])
    _check_query_scale(text, layers_of_27b=46)
    return keys


def _gemma3_keys(text: dict[str, Any]) -> KeyValues:
    _check_query_scale(text, layers_of_27b=62)
    keys = _head_dim_keys(text) | {
        ".attention.sliding_window": int(text["sliding_window"]),
        ".rope.freq_base_swa": float(_rope(text, "sliding_attention").get("rope_theta", 10000.0)),
    }
    kind = _rope_type(text)
    if kind == "linear":
        keys[".rope.scaling.type"] = "linear"
        keys[".rope.scaling.factor"] = float(_rope(text)["factor"])
    elif kind != "default":
        raise _unsupported_rope(text, kind)
    return keys


def _check_query_scale(text: dict[str, Any], layers_of_27b: int) -> None:
    """llama.cpp scales Gemma's queries by 1/sqrt(head_dim), except for the 27B size (recognised by its layer
    count), by 1/sqrt(hidden / heads); Gemma's config names its own scalar, and another one would silently change
    every attention score."""
    scalar = text.get("query_pre_attn_scalar")
    if scalar is None:
        return
    is_27b = int(text["num_hidden_layers"]) == layers_of_27b
    expected = text["hidden_size"] // text["num_attention_heads"] if is_27b else _head_dim(text)
    if int(scalar) != int(expected):
        raise ExportError(
            f"this Gemma scales queries by 1/sqrt({scalar}) where llama.cpp uses 1/sqrt({expected}): it cannot "
            "be written as a GGUF file that llama.cpp runs faithfully"
        )


def _phi3_keys(text: dict[str, Any]) -> KeyValues:
    if _rope(text).get("long_factor") or _rope_type(text) != "default":
        raise ExportError(
            "this Phi-3 uses long-context RoPE factors (rope_scaling), which this version does not write to GGUF: "
            "use a 4k-context Phi-3, or llama.cpp's convert_hf_to_gguf.py on the member folder"
        )
    partial = _rope(text).get("partial_rotary_factor") or text.get("partial_rotary_factor") or 1.0
    rotary = int(_head_dim(text) * float(partial))
    original = text.get("original_max_position_embeddings") or text["max_position_embeddings"]
    return {
        ".rope.dimension_count": rotary,
        ".rope.scaling.original_context_length": int(original),  # llama.cpp requires it for phi3
        ".attention.sliding_window": int(text.get("sliding_window") or 0),
    }


def _head_dim_keys(text: dict[str, Any]) -> KeyValues:
    head_dim = _head_dim(text)
    return {".attention.key_length": head_dim, ".attention.value_length": head_dim}


def _unsupported_rope(text: dict[str, Any], kind: str) -> ExportError:
    return ExportError(
        f"{text.get('model_type', 'this model')}'s RoPE scaling {kind!r} is not one this version writes to GGUF "
        "(it writes none, llama3 and Gemma 3's linear): convert the member with llama.cpp's convert_hf_to_gguf.py"
    )


LAYOUTS: dict[str, ModelLayout] = {
    "llama": ModelLayout("llama", True, False, _llama_keys),
    "mistral": ModelLayout("llama", True, False, _llama_keys),  # llama.cpp runs Mistral as its llama arch
    "qwen2": ModelLayout("qwen2", False, False, lambda text: {}),
    "qwen3": ModelLayout("qwen3", False, False, _head_dim_keys),
    "gemma2": ModelLayout("gemma2", False, True, _gemma2_keys),
    "gemma3_text": ModelLayout("gemma3", False, True, _gemma3_keys),
    "gemma3": ModelLayout("gemma3", False, True, _gemma3_keys),
    "phi3": ModelLayout("phi3", False, False, _phi3_keys),
}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config, where the architecture's data file says it is (Gemma 3 multimodal keeps it
    under text_config)."""
    return resolve(config).text_config(config)


def layout(config: dict[str, Any]) -> ModelLayout:
    model_type = config.get("model_type")
    if model_type not in LAYOUTS:
        raise ExportError(
            f"model type {model_type!r} has no GGUF conversion here (supported: {', '.join(sorted(LAYOUTS))})"
        )
    return LAYOUTS[model_type]


def hyperparameters(config: dict[str, Any]) -> KeyValues:
    """Every `{arch}.*` key llama.cpp reads for this model, full names."""
    spec, text = layout(config), text_config(config)
    rope = _rope(text)
    keys: KeyValues = {
        ".vocab_size": int(text["vocab_size"]),
        ".context_length": int(text["max_position_embeddings"]),
        ".embedding_length": int(text["hidden_size"]),
        ".block_count": int(text["num_hidden_layers"]),
        ".feed_forward_length": int(text["intermediate_size"]),
        ".attention.head_count": int(text["num_attention_heads"]),
        ".attention.head_count_kv": int(text.get("num_key_value_heads") or text["num_attention_heads"]),
        ".attention.layer_norm_rms_epsilon": float(text["rms_norm_eps"]),
        ".rope.freq_base": float(rope.get("rope_theta", 10000.0)),
    }
    keys |= spec.extra_keys(text)
    return {spec.arch + key: value for key, value in keys.items()}


class TensorNames:
    """Safetensors name -> GGUF name and data, for one model."""

    def __init__(self, config: dict[str, Any]):
        import gguf

        self.spec = layout(config)
        self.text = text_config(config)
        arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == self.spec.arch)
        self._names = gguf.get_tensor_name_map(arch, int(self.text["num_hidden_layers"]))

    def target(self, name: str) -> str | None:
        """The GGUF name of a safetensors tensor, or None for one the GGUF file does not hold (the vision tower,
        which llama.cpp reads from a separate projector file, and cached RoPE frequencies)."""
        if name.startswith(SKIPPED_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
            return None
        if self.spec.norms_plus_one and name == "lm_head.weight":
            return None  # Gemma ties its output layer to the embeddings; llama.cpp's gemma2 refuses an extra tensor
        target = self._names.get_name(GEMMA_TEXT_PREFIX.sub("model.", name), try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ExportError(f"tensor {name} has no GGUF name for {self.spec.arch}: the member cannot be converted")
        return target

    def convert(self, name: str, data: np.ndarray) -> tuple[str, np.ndarray] | None:
        """The GGUF name and float32 data of one tensor, or None for a tensor the GGUF file does not hold."""
        target = self.target(name)
        if target is None:
            return None
        data = data.astype(np.float32, copy=False)
        heads = int(self.text["num_attention_heads"])
        kv_heads = int(self.text.get("num_key_value_heads") or heads)
        if self.spec.rotary_rows_interleaved and target.endswith(("attn_q.weight", "attn_q.bias")):
            data = interleave_rotary_rows(data, heads)
        elif self.spec.rotary_rows_interleaved and target.endswith(("attn_k.weight", "attn_k.bias")):
            data = interleave_rotary_rows(data, kv_heads)
        elif self.spec.norms_plus_one and target.endswith("norm.weight"):
            data = data + 1.0
        return target, data

    def reorders_rows(self, target: str) -> bool:
        """Whether converting the tensor moves rows within a head (so it must be converted whole)."""
        return self.spec.rotary_rows_interleaved and target.split(".")[-2] in ("attn_q", "attn_k")

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors llama.cpp needs that the checkpoint has none of: Llama 3's RoPE frequency divisors."""
        if self.spec.arch == "llama" and _rope_type(self.text) == "llama3":
            return [("rope_freqs.weight", llama3_rope_divisors(self.text))]
        return []


def interleave_rotary_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """transformers keeps each head's rotary dimensions as two halves ([x0..x(d/2-1)], [x(d/2)..]); llama.cpp as
    pairs (x0, x(d/2)), (x1, x(d/2+1)), ...: reorder each head's rows from halves to pairs."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_rope_divisors(text: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent RoPE scaling as llama.cpp applies it: one divisor per rotary pair (1 for
    high frequencies, `factor` for low ones, a smooth blend between), as transformers' llama3 rope computes."""
    rope = _rope(text)
    dim = _head_dim(text)
    base, factor = float(rope.get("rope_theta", 10000.0)), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelength, high_wavelength = context / low, context / high
    divisors = []
    for pair in range(0, dim, 2):
        wavelength = 2 * math.pi * base ** (pair / dim)
        if wavelength < high_wavelength:
            divisors.append(1.0)
        elif wavelength > low_wavelength:
            divisors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(divisors, dtype=np.float32)
