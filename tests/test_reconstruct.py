"""Local reconstruction (`--recover ...+reconstruct`, #23) on tiny models, against an independent implementation of
the documented method: the refit member (test_recovery proves it) is taken as the start; layer by layer, each MLP's
inputs are captured by whole forward passes of the member as reconstructed so far (not by replaying layers, as the
product does), the targets are the unpruned MLP's outputs on them, and Adam runs on the documented batches (drawn
from the fitting windows with the documented per-layer seed), keeping the weights of the best held-out check. The
written member must carry those MLP tensors, and nothing else of it may change."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from support.oracle import mlp_modules
from test_cli import assert_clean_error, invoke
from test_data_criteria import words
from test_recovery import TOKENS, WIDTH_KEPT, WINDOW
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune.pruning.calibrate import CalibrationSettings
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover import reconstruct
from hubprune.recover.reconstruct import ReconstructSettings
from hubprune.recover.settings import RecoverySettings

SETTINGS = ReconstructSettings(tokens=24 * 32, batch=32, learning_rate=3e-4)  # 24 steps: checks at 16 and 24


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(words(7, 400))
    return path


def build(tmp_path, source, calibration, recover: str, name: str = "fam"):
    settings = PruneSettings(
        "activation",
        calibration=CalibrationSettings(text=calibration, max_tokens=TOKENS, window=WINDOW),
        recovery=RecoverySettings(recover, reconstruct=SETTINGS),
    )
    family = tmp_path / name
    build_family(open_source(str(source)), family, [Target("size", str(WIDTH_KEPT))], settings)
    return next(p for p in family.iterdir() if p.is_dir() and not p.name.startswith("."))


def mlp_inputs(model, layer: int, windows: list[list[int]]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    handle = mlp_modules(model)[layer].register_forward_pre_hook(lambda m, a: found.append(a[0][0].detach()))
    with torch.no_grad():
        for window in windows:
            model(torch.tensor([window]))
    handle.remove()
    return found


def oracle(source, refit_member, text: str) -> dict[str, torch.Tensor]:
    """The reconstructed MLP tensors, by the loaded module's parameter names (the member's 'mlp.' suffixes)."""
    ids = AutoTokenizer.from_pretrained(source)(text, add_special_tokens=False).input_ids[:TOKENS]
    windows = [ids[start : start + WINDOW] for start in range(0, len(ids), WINDOW)]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    member = AutoModelForCausalLM.from_pretrained(refit_member, dtype=torch.float32).eval()
    dense, mlps = mlp_modules(base), mlp_modules(member)
    for parameter in member.parameters():
        parameter.requires_grad_(False)
    found = {}
    for layer in sorted(mlps):
        x = mlp_inputs(member, layer, windows)
        with torch.no_grad():
            y = [dense[layer](w) for w in x]
        fit_x = torch.cat([w for i, w in enumerate(x) if i % 3 != 2])
        fit_y = torch.cat([w for i, w in enumerate(y) if i % 3 != 2])
        held = [(a, b) for i, (a, b) in enumerate(zip(x, y, strict=True)) if i % 3 == 2]
        scale = fit_y.pow(2).sum(-1).mean()
        params = list(mlps[layer].parameters())

        def held_out_error(mlp=mlps[layer], held=held) -> float:
            with torch.no_grad():
                return sum(float((mlp(a) - b).pow(2).sum()) for a, b in held) / sum(
                    float(b.pow(2).sum()) for _, b in held
                )

        best, best_weights = held_out_error(), [p.clone() for p in params]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=SETTINGS.learning_rate)
        generator = torch.Generator().manual_seed(layer)  # seed 0: 0 * 100003 + layer
        for step in range(1, SETTINGS.planned_steps + 1):
            rows = torch.randint(len(fit_x), (SETTINGS.batch,), generator=generator)
            loss = (mlps[layer](fit_x[rows]) - fit_y[rows]).pow(2).sum(-1).mean() / scale
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 16 == 0 or step == SETTINGS.planned_steps:
                error = held_out_error()
                if error < best:
                    best, best_weights = error, [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, w in zip(params, best_weights, strict=True):
                p.requires_grad_(False)
                p.copy_(w)
        for name, p in mlps[layer].named_parameters():
            found[f"{layer}.{name}"] = p.detach().clone()
    return found


def member_mlps(folder) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {f"{layer}.{n}": p.detach() for layer, mlp in mlp_modules(model).items() for n, p in mlp.named_parameters()}


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma3"])  # plain, fused gate_up, multimodal nesting
def test_reconstructed_mlps_equal_an_independent_implementation(tmp_path, tiny_dir, calibration, model_type):
    source = tiny_dir(model_type)
    refit = build(tmp_path, source, calibration, "refit", "refit")
    member = build(tmp_path, source, calibration, "refit+reconstruct")
    expected, written = oracle(source, refit, calibration.read_text()), member_mlps(member)
    assert expected.keys() == written.keys()
    for name, tensor in expected.items():
        assert torch.allclose(written[name], tensor, atol=2e-5), (name, (written[name] - tensor).abs().max())
    moved = [name for name, tensor in member_mlps(refit).items() if not torch.equal(tensor, written[name])]
    assert moved  # it trained: a layer's held-out check kept weights other than the refit's
    # nothing but the MLP tensors differs from the refit member
    refit_tensors, member_tensors = load_file(refit / "model.safetensors"), load_file(member / "model.safetensors")
    assert refit_tensors.keys() == member_tensors.keys()
    for name, tensor in refit_tensors.items():
        if "mlp" not in name:
            assert torch.equal(tensor, member_tensors[name]), name
    record = json.loads((member / "hubprune.json").read_text())["reconstruction"]
    assert record["steps_per_layer"] == 24 and record["tokens_per_layer"] == 24 * 32
    assert record["calibration_tokens"] == {"fit": 200, "held_out": 100}
    errors = record["held_out_error"]
    assert errors["after"] < errors["before"]
    assert all(r["held_out_error"]["after"] <= r["held_out_error"]["before"] for r in record["layers"].values())


def test_a_stopped_reconstruction_resumes_at_the_next_layer(tmp_path, tiny_dir, calibration, monkeypatch):
    source = tiny_dir("llama")
    whole = build(tmp_path, source, calibration, "reconstruct", "whole")
    real = reconstruct._train_layer
    trained: list[int] = []

    def stop_at_layer_one(part, inputs, settings, layer):
        if layer == 1:
            raise KeyboardInterrupt
        trained.append(layer)
        return real(part, inputs, settings, layer)

    monkeypatch.setattr(reconstruct, "_train_layer", stop_at_layer_one)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, source, calibration, "reconstruct", "stopped")
    assert trained == [0]
    assert (tmp_path / "stopped" / ".distill" / f"{whole.name}" / "reconstruct" / "layer-0.safetensors").exists()
    monkeypatch.setattr(reconstruct, "_train_layer", lambda *args: trained.append(args[-1]) or real(*args))
    resumed = build(tmp_path, source, calibration, "reconstruct", "stopped")
    assert trained == [0, 1]  # layer 0 was read back, not trained again
    for name, tensor in member_mlps(whole).items():
        assert torch.equal(member_mlps(resumed)[name], tensor), name
    layers = json.loads((resumed / "hubprune.json").read_text())["reconstruction"]["layers"]
    assert layers["0"].get("resumed") is True and "resumed" not in layers["1"]
    assert not (tmp_path / "stopped" / ".distill").exists()  # the state goes once the member is in place


def test_cli_reconstructs_records_it_in_the_card_and_refuses_other_settings_on_resume(tmp_path, tiny_dir):
    source, out, calibration = tiny_dir("llama"), tmp_path / "family", tmp_path / "long.txt"
    calibration.write_text(words(7, 1600))  # three windows of the command line's 512 tokens
    common = ["--pcts", "25", "--calibration", calibration, "--calibration-tokens", "1536", "--skip-eval"]
    result = invoke(
        "build-family", source, "-o", out, *common, "--skip-profile", "--criterion", "activation",
        "--recover", "refit+reconstruct", "--reconstruct-steps", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[refit+reconstruct]" in result.output or "[reconstruct]" in result.output
    family = json.loads((out / "family.json").read_text())
    assert family["recovery"] == "refit+reconstruct" and family["reconstruct"]["steps"] == 4
    member = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert json.loads((member / "hubprune.json").read_text())["reconstruction"]["steps_per_layer"] == 4
    card = (member / "README.md").read_text()
    assert "### Recovery: local reconstruction" in card and "After the refit, each pruned MLP" in card
    again = invoke(
        "build-family", source, "-o", out, *common, "--skip-profile", "--criterion", "activation",
        "--recover", "refit+reconstruct", "--reconstruct-steps", "8",
    )  # fmt: skip
    assert_clean_error(again, "local reconstruction", "steps 4 (this run: 8)")


def test_reconstruct_is_offered_and_explained_in_help():
    for command in ("prune", "build-family", "check-criteria"):
        text = " ".join(invoke(command, "--help").output.split())
        assert "reconstruct = train each pruned MLP" in text, command
    assert "--reconstruct-tokens" in invoke("build-family", "--help").output


def test_a_calibration_too_short_to_hold_windows_out_is_refused_before_the_model_loads(tmp_path, tiny_dir, calibration):
    out = tmp_path / "member"  # the text gives one window of the command line's 512 tokens: none to hold out
    result = invoke(
        "prune", tiny_dir("llama"), "-o", out, "--pct", "25", "--recover", "reconstruct", "--calibration", calibration
    )
    assert_clean_error(result, "hold out every 3rd calibration window", "1 window(s)")
    assert "[calibrate]" not in result.output and not out.exists()


def test_check_criteria_measures_each_step_and_its_reconstruction_is_the_written_members(
    tmp_path, tiny_dir, calibration
):
    from hubprune.model_inputs import special_prefix, token_ids
    from hubprune.pruning.check import CheckSettings, _perplexity, check_criteria
    from hubprune.recover.distill import DistillSettings

    source = tiny_dir("llama")
    recovery = RecoverySettings(
        "refit+reconstruct+distill", reconstruct=SETTINGS, distill=DistillSettings(tokens=64, batch=2, seq_len=16)
    )
    settings = CheckSettings(
        text=calibration,
        targets=(Target("size", str(WIDTH_KEPT)),),
        criteria=("activation",),
        max_tokens=TOKENS,
        window=WINDOW,
        calibration=CalibrationSettings(text=calibration, max_tokens=TOKENS, window=WINDOW),
        recovery=recovery,
    )
    rows = {r.recovery: r.perplexity for r in check_criteria(open_source(str(source)), settings).rows}
    assert list(rows) == ["none", "refit", "refit+reconstruct", "refit+reconstruct+distill"]
    member = build(tmp_path, source, calibration, "refit+reconstruct")
    tokenizer = AutoTokenizer.from_pretrained(member)
    model = AutoModelForCausalLM.from_pretrained(member, dtype=torch.float32).eval()
    written = _perplexity(
        model, token_ids(tokenizer, calibration.read_text(), TOKENS), WINDOW, special_prefix(tokenizer)
    )
    assert rows["refit+reconstruct"] == pytest.approx(written, rel=1e-4)
    assert rows["refit+reconstruct"] != rows["refit"]


class Stopped(Exception):
    """A stop the test makes, as Ctrl-C would, but one that fails only this test if it escapes."""


def test_a_stopped_prune_does_not_resume_from_layers_of_another_calibration(tmp_path, tiny_dir, monkeypatch):
    from hubprune.pruning.family import prune_one

    source, out = open_source(str(tiny_dir("llama"))), tmp_path / "member"
    real, trained = reconstruct._train_layer, []

    def run(text: str) -> None:
        path = tmp_path / f"{text[:3]}.txt"
        path.write_text(text)
        settings = PruneSettings(
            "maw",  # a weight criterion: the same neurons whatever the calibration
            calibration=CalibrationSettings(text=path, max_tokens=TOKENS, window=WINDOW),
            recovery=RecoverySettings("reconstruct", reconstruct=SETTINGS),
        )
        prune_one(source, out, Target("size", str(WIDTH_KEPT)), settings)

    def stop_the_first_run_at_layer_one(part, inputs, settings, layer):
        if layer == 1 and trained == [0]:
            raise Stopped
        trained.append(layer)
        return real(part, inputs, settings, layer)

    monkeypatch.setattr(reconstruct, "_train_layer", stop_the_first_run_at_layer_one)
    with pytest.raises(Stopped):
        run(words(7, 400))
    run(words(11, 400))  # another text: layer 0's saved tensors are not this run's
    assert trained == [0, 0, 1]
