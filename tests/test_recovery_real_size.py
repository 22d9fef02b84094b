"""Recovery (#15) on the code paths that real model sizes take and the tiny test models do not: a down_proj larger
than one CHUNK_BYTES row chunk (every real model), distillation micro-batches smaller than a process's share of a
step (Gemma's 262k vocabulary), self-generated data sampled in several GENERATION_BATCH batches. Each is forced
here by shrinking the product's constant, and the member compared with an independent float64 computation or with
the member the unforced path writes. The KL and the refit's recorded errors are checked against float64
computations written out here. End-to-end runs go through the command line."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from support.oracle import load_tensors, mlp_modules
from support.tiny_models import VOCAB
from test_cli import invoke
from test_recovery import SOLVE_ATOL, down_inputs, held_out_error, ridge_solve  # this test's own hooks and solves
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune import generated as data_module
from hubprune.generated import generate
from hubprune.pruning import prune as prune_module
from hubprune.recover import distill as distill_module
from hubprune.recover.distill import DistillSettings, held_out_kl, micro_batch_size, token_kl
from hubprune.recover.distill_data import HELD_OUT_EVERY, prepare_data

CALIBRATION_TOKENS = 1536  # three of the command line's 512-token windows: two fit the refit, the third is held out
DISTILL = ("--recover", "distill", "--distill-lr", "1e-3", "--device", "cpu")


def words(seed: int, count: int) -> str:
    """`count` words of the tiny word-level vocabulary (w4 ... w95)."""
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(4, VOCAB)}" for _ in range(count))


def prune(source, out, *options):
    result = invoke("prune", source, "-o", out, "--pct", 50, "--criterion", "maw", *options)
    assert result.exit_code == 0, result.output
    return out


def provenance(member) -> dict:
    return json.loads((member / "hubprune.json").read_text())


def load(folder, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def down_weights(folder) -> dict[int, torch.Tensor]:
    """Each layer's down_proj weight in float64."""
    return {layer: mlp.down_proj.weight.detach().double() for layer, mlp in mlp_modules(load(folder)).items()}


def refit_member(tmp_path, source, name="refit"):
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(words(3, 2 * CALIBRATION_TOKENS))
    member = prune(
        source, tmp_path / name, "--recover", "refit",
        "--calibration", calibration, "--calibration-tokens", CALIBRATION_TOKENS,
    )  # fmt: skip
    record = provenance(member)
    window = record["calibration"]["window"]
    assert record["calibration"]["special_prefix"] == [] and record["calibration"]["tokens"] == CALIBRATION_TOKENS
    assert record["recovery"]["tokens"] == {"fit": 2 * window, "held_out": window}  # windows 0, 1 fit; 2 held out
    return member, down_inputs(source, calibration.read_text(), CALIBRATION_TOKENS, window, torch.float64)


# --- the refit, with down_proj streamed in many chunks ----------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_down_proj_of_many_chunks_is_refit_in_every_chunk(tmp_path, tiny_dir, monkeypatch, model_type):
    """Real down_proj weights are larger than one 16 MiB chunk, so the refit update is applied chunk by chunk:
    with three rows a chunk, every row of the written down_proj must still be the refit's, as an independent
    float64 ridge solve (with the recorded alpha) gives it, and as the member written in one chunk holds it."""
    source = tiny_dir(model_type)
    weights = down_weights(source)
    hidden, width = weights[0].shape
    one_chunk, _ = refit_member(tmp_path, source, "one-chunk")
    assert hidden * width * 4 <= prune_module.CHUNK_BYTES  # unforced, the tiny down_proj is one chunk
    monkeypatch.setattr(prune_module, "CHUNK_BYTES", 3 * width * 4)  # 3 float32 rows: 11 chunks of 32 rows
    member, windows = refit_member(tmp_path, source)

    record = provenance(member)["recovery"]
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    written, whole = down_weights(member), down_weights(one_chunk)
    for layer, weight in weights.items():
        alpha = record["alpha"][str(layer)]
        assert alpha is not None  # the refit moved every layer: a chunk left as plain columns would show
        expected = ridge_solve(torch.cat([w[layer] for w in windows]), weight, kept[layer], alpha)
        tolerance = SOLVE_ATOL.get(model_type, 1e-6)
        assert torch.allclose(written[layer], expected, rtol=1e-4, atol=tolerance), layer
        assert torch.allclose(written[layer], whole[layer], rtol=0, atol=1e-6), layer
        plain = weight[:, kept[layer]]
        moved = (expected - plain).abs().amax(dim=1)
        assert bool((moved[3:] > 1e-3).all()), (layer, moved)  # every row past the first chunk is refit


# --- the refit's recorded errors -------------------------------------------------------------------------------


def test_the_recorded_held_out_errors_are_relative_to_the_layers_output(tmp_path, tiny_dir):
    """hubprune.json's held-out errors (plain and refit) are the mean over layers of the relative reconstruction
    error on the held-out window, as computed here from the base's own down_proj inputs; the refit's columns are
    the fit on the other windows with the recorded alpha. The normaliser sum ||W h||^2 is far from 1 here, so an
    error left unnormalised (or normalised wrongly) shows."""
    source = tiny_dir("llama")
    member, windows = refit_member(tmp_path, source)
    record = provenance(member)["recovery"]
    kept = json.loads((member / "hubprune-kept-indices.json").read_text())["layers"]
    plain, refit = [], []
    for layer, weight in down_weights(source).items():
        fit = torch.cat([windows[0][layer], windows[1][layer]])
        held = windows[2][layer]
        normaliser = float(((held @ weight.T) ** 2).sum())
        assert not 0.1 < normaliser < 10, normaliser
        plain.append(held_out_error(held, weight, kept[layer], weight[:, kept[layer]]))
        alpha = record["alpha"][str(layer)]
        columns = weight[:, kept[layer]] if alpha is None else ridge_solve(fit, weight, kept[layer], alpha)
        refit.append(held_out_error(held, weight, kept[layer], columns))
    assert record["held_out_error"]["plain"] == pytest.approx(sum(plain) / len(plain), rel=1e-4)
    assert record["held_out_error"]["refit"] == pytest.approx(sum(refit) / len(refit), rel=1e-4)
    assert 0 < record["held_out_error"]["refit"] < record["held_out_error"]["plain"] < 1


# --- distillation in micro-batches ------------------------------------------------------------------------------


def test_micro_batches_smaller_than_a_steps_share_train_what_whole_shares_train(tmp_path, tiny_dir, monkeypatch):
    """With a vocabulary as large as Gemma's, a step's share is trained in several micro-batches whose gradients
    add up to the step's: the member equals the one trained on whole shares, and differs from the undistilled
    one."""
    source = tiny_dir("llama")
    text = tmp_path / "distill.txt"
    text.write_text(words(13, 9 * 256))  # nine windows of 256 tokens: eight to learn from, one held out
    distil = (*DISTILL, "--distill-text", text, "--distill-tokens", 4096)  # two steps of eight sequences
    plain = prune(source, tmp_path / "plain", "--recover", "none")
    whole = prune(source, tmp_path / "whole", *distil)
    record = provenance(whole)["distillation"]
    batch, seq_len = record["batch"], record["seq_len"]
    assert record["steps"] == 2 and record["data"]["sequences"] == {"train": 8, "held_out": 1}
    assert micro_batch_size(batch, seq_len, VOCAB) == batch
    monkeypatch.setattr(distill_module, "LOGITS_PER_MICRO_BATCH", 2 * seq_len * VOCAB)
    assert micro_batch_size(batch, seq_len, VOCAB) == 2  # four micro-batches a step
    micro = prune(source, tmp_path / "micro", *distil)

    before, one, several = load_tensors(plain), load_tensors(whole), load_tensors(micro)
    changed = {name for name in one if not torch.allclose(one[name], before[name], rtol=0, atol=1e-4)}
    assert changed and all(".mlp." in name for name in changed), changed
    for name in one:
        # float32 sums in another order, through two Adam steps (which divide by the gradients' size): 1.4e-6 measured;
        # far below the 1e-4 the training moved the MLP by
        assert torch.allclose(several[name], one[name], rtol=0, atol=1e-5), name
    kl = provenance(micro)["distillation"]["held_out_kl"]
    assert kl["after"] == pytest.approx(record["held_out_kl"]["after"], rel=1e-5)
    assert kl["before"] == pytest.approx(record["held_out_kl"]["before"], rel=1e-5)


# --- self-generated data in several batches ---------------------------------------------------------------------


def test_sequences_generated_in_many_batches_are_all_different(tiny_dir, monkeypatch):
    """Each generation batch is sampled with its own seed: sequences of different batches never repeat, and the
    held-out sequences are not training ones."""
    source = tiny_dir("llama")
    model, tokenizer = load(source), AutoTokenizer.from_pretrained(source)
    monkeypatch.setattr(data_module, "GENERATION_BATCH", 3)
    sequences = generate(model, tokenizer, 10, 16, seed=0)  # four batches, the last of one sequence
    assert sequences.shape == (10, 16) and bool((sequences[:, 0] == tokenizer.bos_token_id).all())
    assert len({tuple(row) for row in sequences.tolist()}) == 10

    data = prepare_data(model, tokenizer, DistillSettings(tokens=256, batch=4, seq_len=16))  # 16 + 3 sequences
    train, held_out = data.train.tolist(), data.held_out.tolist()
    assert (len(train), len(held_out)) == (16, 3)
    assert len({tuple(row) for row in train}) == 16
    assert not {tuple(row) for row in held_out} & {tuple(row) for row in train}


# --- the KL's direction -----------------------------------------------------------------------------------------


def kl_float64(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """sum over positions of KL(p_teacher || p_student) = sum_v p_teacher (log p_teacher - log p_student)."""
    log_p = teacher_logits.double().log_softmax(-1)
    log_q = student_logits.double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def test_token_kl_is_the_kl_from_the_base_to_the_member():
    generator = torch.Generator().manual_seed(0)
    teacher, student = (3 * torch.randn(3, 5, 11, generator=generator) for _ in range(2))
    forward, reverse = kl_float64(teacher, student), kl_float64(student, teacher)
    assert abs(forward - reverse) > 0.1 * forward  # the two directions differ clearly here
    assert token_kl(student, teacher).item() == pytest.approx(forward, rel=1e-5)


class Sharpened(torch.nn.Module):
    """A model whose logits are another's times `factor` (its distributions sharper): far enough from the original
    for KL(p || q) and KL(q || p) to differ clearly, which two random tiny models are not (their distributions are
    nearly flat)."""

    def __init__(self, model, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.model(ids).logits * self.factor)


def test_held_out_kl_is_the_mean_kl_per_predicted_position(tiny_dir):
    """held_out_kl(student, teacher, ...) is the mean over the held-out sequences' predicted positions of
    KL(p_teacher || p_student)."""
    source = tiny_dir("llama")
    teacher = load(source)
    data = prepare_data(
        teacher, AutoTokenizer.from_pretrained(source), DistillSettings(tokens=128, batch=4, seq_len=16)
    )
    assert data.held_out.shape == (2, 16) and data.start == 1  # from BOS: positions 1..15 are predicted
    with torch.no_grad():
        p = load(source, torch.float64)(data.held_out).logits[:, :-1]
    forward, reverse = kl_float64(p, 4 * p) / (2 * 15), kl_float64(4 * p, p) / (2 * 15)
    assert abs(forward - reverse) > 0.1 * forward
    got = held_out_kl(Sharpened(load(source), 4.0), teacher, data, 1)  # in micro-batches of one sequence
    assert got == pytest.approx(forward, rel=1e-5)


def test_the_recorded_held_out_kl_is_the_kl_from_the_base_on_the_held_out_windows(tiny_dir, tmp_path):
    """A distillation on a text: its held-out windows are every HELD_OUT_EVERY-th window of seq_len tokens (the
    last when there are fewer); the recorded KL before and after equals the float64 KL from the base to the
    undistilled and to the distilled member on them."""
    source = tiny_dir("llama")
    text = tmp_path / "distill.txt"
    text.write_text(words(11, 3 * 256 + 20))  # three windows of 256 tokens (and a rest too short for a window)
    plain = prune(source, tmp_path / "plain", "--recover", "none")
    member = prune(source, tmp_path / "distilled", *DISTILL, "--distill-text", text, "--distill-tokens", 2048)
    record = provenance(member)["distillation"]
    seq_len = record["seq_len"]
    assert record["data"]["sequences"] == {"train": 2, "held_out": 1}

    ids = AutoTokenizer.from_pretrained(source)(text.read_text(), add_special_tokens=False).input_ids
    found = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    held = [i for i in range(len(found)) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1] or [len(found) - 1]
    sequences = torch.tensor([found[i] for i in held])
    positions = sequences.shape[0] * (seq_len - 1)
    with torch.no_grad():
        teacher = load(source, torch.float64)(sequences).logits[:, :-1]
        kl = {
            when: kl_float64(teacher, load(folder, torch.float64)(sequences).logits[:, :-1]) / positions
            for when, folder in (("before", plain), ("after", member))
        }
    with torch.no_grad():
        reverse = kl_float64(load(plain, torch.float64)(sequences).logits[:, :-1], teacher) / positions
    assert abs(reverse - kl["before"]) > 1e-3 * kl["before"]  # KL(member || base) would show
    assert record["held_out_kl"]["before"] == pytest.approx(kl["before"], rel=1e-4)
    assert record["held_out_kl"]["after"] == pytest.approx(kl["after"], rel=1e-4)
    assert kl["after"] < kl["before"]
