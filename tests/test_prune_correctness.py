"""Every supported family, every criterion, several targets: the pruned members load with plain
from_pretrained and equal an independent oracle (the original model with removed neurons zeroed)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from support.oracle import load_tensors, logits, oracle_logits, scores_float64, top_k_tie_lower_index
from support.tiny_models import FAMILIES, LAYERS, VOCAB, WIDTH
from transformers import AutoConfig

from hubprune.pruning import prune as prune_module
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

TARGETS = [Target("ratio", "1.5"), Target("pct", "40"), Target("size", "17")]
EXPECTED_WIDTHS = {"1.5": 48, "40": 39, "17": 17}  # ceil(1.5*32); 64 - floor(0.4*64); as given
CRITERIA = ["maw", "vow", "pon", "l2", "random"]
INPUT_IDS = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def _prefix(name: str) -> str:
    return name.split("layers.")[0]


def _split_gate_up(tensors: dict[str, torch.Tensor], prefix: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    base = f"{prefix}layers.{layer}.mlp."
    if base + "gate_up_proj.weight" in tensors:
        fused = tensors[base + "gate_up_proj.weight"].float().numpy()
        return fused[:WIDTH], fused[WIDTH:]
    return tensors[base + "gate_proj.weight"].float().numpy(), tensors[base + "up_proj.weight"].float().numpy()


def _check_member(source, member_dir, criterion, source_tensors):
    provenance = json.loads((member_dir / "hubprune.json").read_text())
    width = provenance["intermediate_size"]["pruned"]
    kept = json.loads((member_dir / "hubprune-kept-indices.json").read_text())["layers"]
    assert len(kept) == LAYERS
    assert all(len(k) == width and k == sorted(k) for k in kept)

    # config says k, and nothing else changed
    config = json.loads((member_dir / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    text, original_text = (
        (config["text_config"], original["text_config"]) if "text_config" in config else (config, original)
    )
    assert text["intermediate_size"] == width
    text["intermediate_size"] = original_text["intermediate_size"]
    assert config == original
    assert AutoConfig.from_pretrained(member_dir).get_text_config().intermediate_size == width

    # kept indices equal an independent computation of the criterion
    mlp_name = next(n for n in source_tensors if ".mlp." in n and "layers.0." in n and "vision" not in n)
    prefix = _prefix(mlp_name)
    for layer in range(LAYERS):
        gate, up = _split_gate_up(source_tensors, prefix, layer)
        if criterion == "random":
            rng = random.Random(f"hubprune-random:0:{layer}")
            scores = np.array([rng.random() for _ in range(WIDTH)], dtype=np.float32)
            assert kept[layer] == top_k_tie_lower_index(scores, width)
        else:
            scores = scores_float64(criterion, gate, up)
            removed = sorted(set(range(WIDTH)) - set(kept[layer]))
            # float64 re-computation: every kept neuron scores at least every removed one (up to rounding)
            assert scores[kept[layer]].min() >= scores[removed].max() - 1e-5 * abs(scores).max()

    # weights equal the source's rows / columns at the kept indices; everything else is untouched
    pruned = load_tensors(member_dir)
    assert pruned.keys() == source_tensors.keys()
    for name, tensor in pruned.items():
        original_tensor = source_tensors[name]
        assert tensor.dtype == original_tensor.dtype
        if ".mlp." not in name or "vision" in name or name.endswith("down_proj.bias"):
            assert torch.equal(tensor, original_tensor), name
            continue
        layer = int(name.split("layers.")[1].split(".")[0])
        idx = torch.tensor(kept[layer])
        if "down_proj" in name:
            expected = original_tensor[:, idx]
        elif "gate_up_proj" in name:
            expected = original_tensor[torch.cat([idx, idx + WIDTH])]
        else:
            expected = original_tensor[idx]
        assert torch.equal(tensor, expected), name

    # logits equal the original model with the removed neurons' down_proj columns zeroed
    got = logits(member_dir, INPUT_IDS)
    want = oracle_logits(source, kept, INPUT_IDS)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    unpruned = logits(source, INPUT_IDS)
    assert (got - unpruned).abs().max() > 1e-3, "pruning changed nothing: the comparison above proves nothing"


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_family_and_criterion_matches_the_oracle(tmp_path, tiny_dir, model_type, criterion):
    source = tiny_dir(model_type)
    # small shards on some families so the sharded writer and index are exercised too
    shard = 8_000 if model_type in ("phi3", "qwen2") else 10**9
    family = build_family(
        open_source(str(source)),
        tmp_path / "fam",
        TARGETS,
        PruneSettings(criterion=criterion, max_shard_bytes=shard, recovery=RecoverySettings()),
    )
    assert [m.intermediate_size for m in family.members] == [48, 39, 17]
    source_tensors = load_tensors(source)
    for member in family.members:
        member_dir = tmp_path / "fam" / member.path
        assert member.intermediate_size == EXPECTED_WIDTHS[member.target["value"]]
        assert member.stages["prune"]["status"] == "done"
        if shard < 10**9:
            index = json.loads((member_dir / "model.safetensors.index.json").read_text())
            assert len(set(index["weight_map"].values())) > 1
        _check_member(source, member_dir, criterion, source_tensors)


def test_bf16_sharded_source_with_many_ties_follows_the_tie_rule(tmp_path, tiny_dir):
    """bf16 weights drawn from 5 values: MAW scores tie a lot; the lower index must win every tie."""
    source = tiny_dir("llama", dtype=torch.bfloat16, max_shard_size="30KB")
    tensors = load_tensors(source)
    values = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(3)
    from safetensors.torch import save_file

    index = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    for name in list(tensors):
        if "gate_proj" in name or "up_proj" in name:
            tensors[name] = values[torch.randint(0, 5, tensors[name].shape, generator=gen)]
    tied_source = tmp_path / "tied"
    tied_source.mkdir()
    for shard in set(index.values()):
        save_file(
            {n: tensors[n] for n, s in index.items() if s == shard}, tied_source / shard, metadata={"format": "pt"}
        )
    for extra in ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        (tied_source / extra).write_bytes((source / extra).read_bytes())

    build_family(
        open_source(str(tied_source)),
        tmp_path / "fam",
        [Target("size", "40")],
        PruneSettings("maw", recovery=RecoverySettings()),
    )
    member = tmp_path / "fam" / "tied-er1.25"
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    ties_at_cut = 0
    for layer in range(LAYERS):
        gate = tensors[f"model.layers.{layer}.mlp.gate_proj.weight"].float().numpy()
        up = tensors[f"model.layers.{layer}.mlp.up_proj.weight"].float().numpy()
        scores = (gate.max(1) + np.abs(gate.min(1))) + (up.max(1) + np.abs(up.min(1)))
        assert kept[layer] == top_k_tie_lower_index(scores, 40)
        cut = sorted(scores, reverse=True)[39]
        ties_at_cut += int((scores == cut).sum())
    assert ties_at_cut > 4, "the test must exercise ties at the cut"
    _check_member(tied_source, member, "maw", tensors)


def test_random_criterion_is_seeded_and_nested(tmp_path, tiny_dir):
    source = open_source(str(tiny_dir("llama")))
    targets = [Target("size", "48"), Target("size", "24")]

    def kept(seed, folder):
        family = build_family(
            source,
            tmp_path / folder,
            targets,
            PruneSettings(criterion="random", seed=seed, recovery=RecoverySettings()),
        )
        assert family.seed == seed
        return [
            json.loads((tmp_path / folder / m.path / "hubprune-kept-indices.json").read_text())["layers"]
            for m in family.members
        ]

    first, again, other = kept(7, "a"), kept(7, "b"), kept(8, "c")
    assert first == again
    assert first != other
    wide, narrow = first
    assert all(set(n) <= set(w) for w, n in zip(wide, narrow))


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("criterion", ["maw", "random"])
def test_small_chunks_stream_every_tensor_in_pieces_and_still_match_the_oracle(
    tmp_path, tiny_dir, monkeypatch, model_type, criterion
):
    """With 16 MiB chunks every tiny tensor is one chunk at offset 0; 300-byte chunks cut each MLP tensor into
    many pieces (1 or 2 rows), most at a non-zero offset, from a sharded source."""
    monkeypatch.setattr(prune_module, "CHUNK_BYTES", 300)
    real_chunks, chunked = prune_module._row_chunks, []
    monkeypatch.setattr(prune_module, "_row_chunks", lambda *args: chunked.append(real_chunks(*args)) or chunked[-1])
    source = tiny_dir(model_type, max_shard_size="20KB")
    assert len(set(json.loads((source / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    family = build_family(
        open_source(str(source)),
        tmp_path / "fam",
        TARGETS,
        PruneSettings(criterion=criterion, recovery=RecoverySettings()),
    )
    assert max(len(ranges) for ranges in chunked) > 10 and any(start > 0 for ranges in chunked for start, _ in ranges)
    source_tensors = load_tensors(source)
    for member in family.members:
        _check_member(source, tmp_path / "fam" / member.path, criterion, source_tensors)
