"""A tiny Llama as a real GGUF file (float32 tensors, a character-level tokenizer), written with the gguf package the
way llama.cpp's convert_hf_to_gguf.py writes one, so that transformers' own GGUF loader reads it back: a GGUF source
that takes seconds, not the minute the embedded 135M default takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from support.tiny_models import VOCAB

# the tokenizer: the special tokens, then one token per character (SentencePiece's word marker first), so that any
# ASCII text such as "w4 w5" tokenizes without merges
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = ["\u2581", *(chr(c) for c in range(33, 127))][: VOCAB - len(SPECIAL)]
GLOBAL = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
PER_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of the rotary halves in q_proj and k_proj (convert_hf_to_gguf.py, LlamaModel.permute)."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_tiny_gguf(
    path: Path, llama_folder: Path, *, licence: str | None = "apache-2.0", strings: dict[str, str] | None = None
) -> Path:
    """The float32 Llama checkpoint in `llama_folder` (support/tiny_models.build_tiny) as the GGUF file `path`;
    `strings`: more string keys (e.g. where the file was converted from)."""
    import gguf

    config = json.loads((llama_folder / "config.json").read_text())
    tensors = load_file(llama_folder / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(path.name.split(".")[0])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if licence:
        writer.add_string("general.license", licence)
    for key, value in (strings or {}).items():
        writer.add_string(key, value)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or config
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_tokenizer_model("llama")
    writer.add_token_list([*SPECIAL, *CHARACTERS])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([3, 3, 3, 2] + [1] * len(CHARACTERS))  # control, control, control, unknown, normal...
    writer.add_pad_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(3)
    for name, tensor in tensors.items():
        data = tensor.astype(np.float32)
        if name in GLOBAL:
            target = GLOBAL[name]
        else:
            _, _, layer, *module, _ = name.split(".")
            role = ".".join(module)
            target = f"blk.{layer}.{PER_LAYER[role]}"
            if role == "self_attn.q_proj":
                data = _permute(data, heads)
            elif role == "self_attn.k_proj":
                data = _permute(data, kv_heads)
        writer.add_tensor(f"{target}.weight", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
