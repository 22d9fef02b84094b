"""Each layer's output Fisher (pruning/fisher.py, read by the obs-fisher criterion) against an independent
computation: a zero tensor added to every down_proj output as a leaf of its own, the same next tokens drawn from
the model, and each position's gradient on those probes summed as g g^T in float64."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from hubprune.model_inputs import loaded_modules
from hubprune.pruning.fisher import FISHER_SEED, output_fishers


def independent_fishers(model, windows, modules) -> dict[int, torch.Tensor]:
    found = {layer: torch.zeros(model.config.hidden_size, model.config.hidden_size, dtype=torch.float64)
             for layer in modules}  # fmt: skip
    generator = torch.Generator().manual_seed(FISHER_SEED)
    for window in windows:
        probes = {layer: torch.zeros(len(window), model.config.hidden_size, requires_grad=True) for layer in modules}
        handles = [
            module.register_forward_hook(lambda m, i, out, probe=probes[layer]: out + probe)
            for layer, module in modules.items()
        ]
        try:
            logits = model(window[None]).logits[0]
        finally:
            for handle in handles:
                handle.remove()
        drawn = torch.multinomial(logits.detach().softmax(-1), 1, generator=generator)[:, 0]
        torch.nn.functional.cross_entropy(logits, drawn, reduction="sum").backward()
        for layer, probe in probes.items():
            g = probe.grad.double()
            found[layer] += g.T @ g
    return found


def test_output_fishers_equal_an_independent_computation(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"), dtype=torch.float32).eval()
    names = {layer: f"model.layers.{layer}.mlp.down_proj" for layer in range(model.config.num_hidden_layers)}
    modules = loaded_modules(model, names)
    generator = torch.Generator().manual_seed(5)
    windows = [torch.randint(4, model.config.vocab_size, (24,), generator=generator) for _ in range(3)]
    got = output_fishers(model, windows, modules)
    assert all(p.requires_grad for p in model.parameters())  # as they were: only the pass itself did without
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    expected = independent_fishers(model, windows, modules)
    assert sorted(got) == sorted(expected)
    for layer in expected:
        assert torch.allclose(got[layer].double(), expected[layer], rtol=1e-4, atol=1e-6 * expected[layer].abs().max())
    # a real curvature: not zero, and the lower layer's differs (its gradient passes through the layer above)
    assert float(expected[0].diagonal().min()) > 0
    assert not torch.allclose(expected[0], expected[1], rtol=0.1)
