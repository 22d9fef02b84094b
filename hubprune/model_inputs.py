"""How text becomes a loaded model's inputs, and where a checkpoint's tensors are in a loaded model: what every
stage that runs the model uses (calibration, the criteria check, distillation)."""

from __future__ import annotations

from typing import Any

import torch

from hubprune.errors import CriterionError


def loaded_modules(model: Any, names: dict[int, str]) -> dict[int, torch.nn.Module]:
    """Each layer's module in the loaded model, from the name of its weight in the checkpoint. A loaded model's
    module names follow its classes and can differ from the tensor names (Gemma 3's multimodal checkpoint stores
    language_model.model.layers.N..., its loaded model names model.language_model.layers.N...), so a name the
    model lacks is found as the one module, outside a vision tower, ending in the same layers.N... path."""
    modules = dict(model.named_modules())
    found = {}
    for layer, name in names.items():
        if name in modules:
            found[layer] = modules[name]
            continue
        tail = name[name.find(f"layers.{layer}.") :]
        matches = [module for path, module in modules.items() if path.endswith(f".{tail}") and "vision" not in path]
        if len(matches) != 1:
            raise CriterionError(
                f"the loaded model has {len(matches) or 'no'} module(s) for {name!r}: this architecture's module names "
                "cannot be matched to its tensor names; use a weight criterion"
            )
        found[layer] = matches[0]
    return found


def token_ids(tokenizer: Any, text: str, max_tokens: int) -> torch.Tensor:
    """The text's own tokens, without the special tokens the tokenizer adds (windows() puts those back per window)."""
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:max_tokens]


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The tokens the tokenizer puts before every text it encodes by default: BOS for Llama 3 and Gemma, none for
    SmolLM2. A model sees them at the start of every input in use, so every window starts with them too (lm-eval
    does the same for each model it scores)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    if len(full) > len(plain) and full[len(full) - len(plain) :] == plain:
        return tuple(full[: len(full) - len(plain)])
    return ()


def windows(ids: torch.Tensor, size: int, prefix: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """The model inputs that cover `ids`: `prefix` (see special_prefix) then the next `size` - len(prefix) tokens,
    so that each input is `size` tokens long; a last input with nothing to predict is dropped."""
    step = size - len(prefix)
    if step < 1:
        raise CriterionError(f"windows of {size} tokens leave no room for the text after {len(prefix)} special tokens")
    head = torch.tensor(prefix, dtype=ids.dtype)
    inputs = (torch.cat([head, ids[s : s + step]]) for s in range(0, ids.numel(), step))
    return [w for w in inputs if w.numel() > first_predicted(prefix)]


def first_predicted(prefix: tuple[int, ...]) -> int:
    """Where a window's scored tokens start: the first text token after a prefix (it is predicted from BOS), else
    the second (the first has no context)."""
    return max(len(prefix), 1)
