"""Refusals a user can meet, each through the command line as a user meets it (#14): one line that names the
problem and the fix, exit status 1, and nothing written: no output folder, or an existing family left
byte-identical. (Sources that are truncated, corrupt, pickled, unsupported or of uneven width, and bad width
targets, are in test_cli.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from support.oracle import load_tensors, logits, oracle_logits
from support.tiny_models import build_tiny
from test_cli import assert_clean_error, invoke

BUILD = ("build-family", "--skip-eval", "--skip-profile")


def edited(tiny_dir, folder: Path, edit=None, **config) -> Path:
    """A copy of the tiny Llama with its tensors changed by `edit(tensors)` and its config updated by `config`."""
    shutil.copytree(tiny_dir("llama"), folder)
    if edit is not None:
        tensors = load_tensors(folder)
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if config:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def assert_both_commands_refuse(source, tmp_path, *fragments, options=()) -> None:
    """build-family and prune refuse `source` in one line naming `fragments`, and write no folder."""
    family, member = tmp_path / "fam", tmp_path / "one"
    assert_clean_error(invoke(*BUILD, source, "-o", family, "--ratios", "1.5", *options), *fragments)
    assert not family.exists()
    assert_clean_error(invoke("prune", source, "-o", member, "--ratio", "1.5", *options), *fragments)
    assert not member.exists()
    assert not list(tmp_path.glob(".partial-*"))


def mlp(layer: int, part: str) -> str:
    return f"model.layers.{layer}.mlp.{part}"


# --- weights that are not float MLP weights -----------------------------------------------------------------------


def _int8(tensors):
    name = mlp(0, "gate_proj.weight")
    tensors[name] = (tensors[name] * 40).to(torch.int8)


def _packed_uint8(tensors):  # two 4-bit values per byte, as bitsandbytes stores them: the shape is packed too
    name = mlp(1, "up_proj.weight")
    tensors[name] = torch.zeros(tensors[name].numel() // 2, 1, dtype=torch.uint8)


def _float8(tensors):
    name = mlp(0, "down_proj.weight")
    tensors[name] = tensors[name].to(torch.float8_e4m3fn)


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (_int8, ["gate_proj.weight is stored as I8", "prune the unquantized model"]),
        (_packed_uint8, ["up_proj.weight is stored as U8", "prune the unquantized model"]),
        (_float8, ["down_proj.weight is stored as F8_E4M3", "prune the unquantized model"]),
    ],
)
def test_quantized_mlp_weights_are_refused(tmp_path, tiny_dir, edit, fragments):
    assert_both_commands_refuse(edited(tiny_dir, tmp_path / "src", edit), tmp_path, *fragments)


# --- NaN and inf -------------------------------------------------------------------------------------------------


def _nan_in_up(tensors):
    tensors[mlp(1, "up_proj.weight")][5, 3] = float("nan")


def _inf_in_gate(tensors):
    tensors[mlp(0, "gate_proj.weight")][7, 1] = float("-inf")


NON_FINITE = [(_nan_in_up, "layer 1"), (_inf_in_gate, "layer 0")]


@pytest.mark.parametrize("criterion", ["maw", "l2"])
@pytest.mark.parametrize("edit, layer", NON_FINITE)
def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path, tiny_dir, edit, layer, criterion):
    """Sorting NaN scores gives an order, not an error: the tool must stop instead, before any folder is made."""
    source = edited(tiny_dir, tmp_path / "src", edit)
    assert_both_commands_refuse(
        source, tmp_path, layer, "non-finite scores", "re-download it", options=("--criterion", criterion)
    )


# --- MLP tensors the architecture file does not know, or lacks ---------------------------------------------------


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda t: t.update({mlp(0, "act_fn.scale"): torch.ones(64)}), ["'model.layers.0.mlp.act_fn.scale'"]),
        (lambda t: t.update({mlp(1, "gate_proj.bias"): torch.ones(64)}), ["'model.layers.1.mlp.gate_proj.bias'"]),
        (lambda t: t.update({mlp(0, "up_proj.weight_scale"): torch.ones(64)}), ["up_proj.weight_scale"]),
    ],
    ids=["extra", "bias-without-mlp_bias", "quantization-scale"],
)
def test_unexpected_mlp_tensors_are_refused(tmp_path, tiny_dir, edit, fragments):
    source = edited(tiny_dir, tmp_path / "src", edit)
    assert_both_commands_refuse(source, tmp_path, "unexpected MLP tensor", *fragments, "prune the original model")


@pytest.mark.parametrize(
    "edit, config, fragment",
    [
        (lambda t: t.pop(mlp(1, "up_proj.weight")), {}, "layer 1 lacks its MLP tensor(s) up_proj.weight"),
        (lambda t: t.pop(mlp(0, "down_proj.weight")), {}, "layer 0 lacks its MLP tensor(s) down_proj.weight"),
        (None, {"mlp_bias": True}, "layer 0 lacks its MLP tensor(s) gate_proj.bias, up_proj.bias, down_proj.bias"),
    ],
    ids=["up", "down", "biases-of-mlp_bias"],
)
def test_missing_mlp_tensors_are_refused(tmp_path, tiny_dir, edit, config, fragment):
    source = edited(tiny_dir, tmp_path / "src", edit, **config)
    assert_both_commands_refuse(source, tmp_path, fragment, "re-download it")


def test_a_llama_with_mlp_bias_is_pruned_with_its_biases(tmp_path):
    """The other side of the two tests above: biases the config announces are known, and pruned with their rows."""
    source = build_tiny(tmp_path / "src", "llama", mlp_bias=True)
    out = tmp_path / "one"
    result = invoke("prune", source, "-o", out, "--ratio", "1.5", "--recover", "none")  # the oracle: no refit
    assert result.exit_code == 0, result.output
    pruned = load_tensors(out)
    assert pruned[mlp(0, "gate_proj.bias")].shape == (48,) and pruned[mlp(0, "down_proj.bias")].shape == (32,)
    kept = json.loads((out / "hubprune-kept-indices.json").read_text())["layers"]
    ids = torch.tensor([[5, 9, 17, 33, 40, 41]])
    assert torch.allclose(logits(out, ids), oracle_logits(source, kept, ids), atol=1e-4, rtol=1e-4)


# --- config.json and the tensors disagree on the number of layers --------------------------------------------------


def _drop_layer_1(tensors):
    for name in [n for n in tensors if n.startswith("model.layers.1.")]:
        del tensors[name]


@pytest.mark.parametrize(
    "edit, layers, fragments",
    [
        (None, 3, ["num_hidden_layers 3", "MLP tensors for 2 layer(s) (0-1)"]),
        (None, 1, ["num_hidden_layers 1", "MLP tensors for 2 layer(s) (0-1)"]),
        (_drop_layer_1, 2, ["num_hidden_layers 2", "MLP tensors for 1 layer(s) (0)"]),
    ],
    ids=["config-says-more", "config-says-fewer", "a-layer-missing"],
)
def test_layer_count_mismatch_is_refused(tmp_path, tiny_dir, edit, layers, fragments):
    source = edited(tiny_dir, tmp_path / "src", edit, num_hidden_layers=layers)
    assert_both_commands_refuse(source, tmp_path, *fragments, "restore its original config.json")


# --- a damaged family.json ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_family(tiny_dir, tmp_path_factory) -> Path:
    family = tmp_path_factory.mktemp("built") / "fam"
    result = invoke(*BUILD, tiny_dir("llama"), "-o", family, "--sizes", "48")
    assert result.exit_code == 0, result.output
    return family


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _manifest_with(built_family, **changes) -> bytes:
    return json.dumps({**json.loads((built_family / "family.json").read_text()), **changes}).encode()


DAMAGE = {
    "not-json": (lambda good: b'{"format": 1, "members": [', "not valid JSON"),
    "not-utf8": (lambda good: b"\xff\xfe{}", "not UTF-8 text"),
    "a-list": (lambda good: b"[1, 2]", "it is a list, not an object"),
    "no-members": (lambda good: _manifest_with(good, members=None), "members is null, not a list"),
    "member-lacks-path": (
        lambda good: _manifest_with(good, members=[{"name": "x", "intermediate_size": 48}]),
        "members[0] lacks 'path'",
    ),
    "size-a-string": (
        lambda good: _manifest_with(
            good, members=[{**json.loads((good / "family.json").read_text())["members"][0], "intermediate_size": "48"}]
        ),
        "members[0].intermediate_size is a string, not a whole number",
    ),
    "source-a-list": (lambda good: _manifest_with(good, source=[]), "source is a list, not an object"),
}
COMMANDS = {
    "build-family": lambda family, source: [*BUILD, source, "-o", family, "--sizes", "48"],
    "eval": lambda family, source: ["eval", family, "--suite", "offline", "--limit", "1"],
    "profile": lambda family, source: ["profile", family, "--rounds", "1", "--batch-sizes", "1"],
    "card": lambda family, source: ["card", family],
    "push": lambda family, source: ["push", family, "--namespace", "acme", "--dry-run"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_family_json_is_refused_and_left_as_it_is(tmp_path, tiny_dir, built_family, damage, command):
    family = shutil.copytree(built_family, tmp_path / "fam")
    make, fragment = DAMAGE[damage]
    (family / "family.json").write_bytes(make(built_family))
    before = _snapshot(family)
    result = invoke(*COMMANDS[command](family, tiny_dir("llama")))
    assert_clean_error(result, "family.json", fragment, "rebuild the family in a new folder")
    assert _snapshot(family) == before


# --- a .gguf source that is no GGUF file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, fragments",
    [
        (lambda src: b"just some text\n", ["bad.gguf is not a GGUF file", "b'just'", "give a real .gguf file"]),
        (lambda src: b"", ["bad.gguf is not a GGUF file (it is empty)"]),
        (lambda src: (src / "model.safetensors").read_bytes(), ["bad.gguf is not a GGUF file"]),
        (lambda src: b"GGUF\x03\x00\x00\x00" + b"\x00" * 8, ["bad.gguf is truncated or corrupt", "download"]),
        (lambda src: b"GGUF\x03", ["bad.gguf is truncated", "download"]),
    ],
    ids=["text", "empty", "safetensors", "header-cut", "magic-only"],
)
def test_a_gguf_source_that_is_no_gguf_file_is_refused(tmp_path, tiny_dir, monkeypatch, content, fragments):
    monkeypatch.setenv("HUBPRUNE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "in" / "bad.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(content(tiny_dir("llama")))
    assert_both_commands_refuse(gguf, tmp_path, *fragments)
    assert_clean_error(invoke("plan", gguf, "--ratios", "1.5"), *fragments)
    assert not (tmp_path / "cache").exists()  # nothing was converted or cached


# --- calibration text of the data-aware criteria -------------------------------------------------------------------


def _calibration(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "texts" / f"{kind}.txt"
    path.parent.mkdir(exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"w4 w5 \xff\xfe\x00\x81 w6")
    elif kind == "empty":
        path.write_text("  \n\n ")
    elif kind == "one-word":
        path.write_text("w5\n")
    return path  # "missing": never created


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("missing", ["missing.txt does not exist", "give a UTF-8 text file"]),
        ("folder", ["folder.txt is a folder, not a file", "give a UTF-8 text file"]),
        ("binary", ["binary.txt is not UTF-8 text (byte 0xff at offset 6)", "give a UTF-8 text file"]),
        ("empty", ["empty.txt holds 0 word(s), too short", "give a longer text"]),
        ("one-word", ["one-word.txt holds 1 word(s), too short", "give a longer text"]),
    ],
)
def test_unusable_calibration_text_is_refused_before_anything_is_loaded(tmp_path, tiny_dir, kind, fragments):
    text = _calibration(tmp_path, kind)
    source, family, member = tiny_dir("llama"), tmp_path / "fam", tmp_path / "one"
    data_aware = ["--criterion", "activation", "--calibration", text]
    for args, out in [
        ([*BUILD, source, "-o", family, "--ratios", "1.5", *data_aware], family),
        (["prune", source, "-o", member, "--ratio", "1.5", *data_aware], member),
        (["check-criteria", source, "--criteria", "activation,random", "--seeds", "1", "--calibration", text], None),
    ]:
        assert_clean_error(invoke(*args), "--calibration", "the calibration text", *fragments)
        assert out is None or not out.exists()
    assert not list(tmp_path.glob(".partial-*"))


def test_unusable_held_out_text_is_refused(tmp_path, tiny_dir):
    text = _calibration(tmp_path, "binary")
    result = invoke("check-criteria", tiny_dir("llama"), "--criteria", "maw,random", "--seeds", "1", "--text", text)
    assert_clean_error(result, "--text", "the held-out text", "is not UTF-8 text", "give a UTF-8 text file")


# --- prune makes one member ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--ratio", "1.5,1.25"], ["prune writes one checkpoint", "use build-family for several"]),
        (["--ratio", "1.5", "--ratio", "1.25"], ["--ratio is given 2 times", "use build-family for several"]),
        (["--pct", "10", "--pct", "20"], ["--pct is given 2 times"]),
        (["--intermediate-size", "48,32"], ["prune writes one checkpoint"]),
        (["--ratio", "1.5", "--pct", "10"], ["give exactly one of --ratio, --pct or --intermediate-size"]),
        (["--ratios", "1.5,2"], ["No such option '--ratios'", "'--ratio'"]),
    ],
)
def test_prune_refuses_two_widths(tmp_path, tiny_dir, args, fragments):
    out = tmp_path / "one"
    assert_clean_error(invoke("prune", tiny_dir("llama"), "-o", out, *args), *fragments)
    assert not out.exists()


# --- --max-shard-size ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, fragment",
    [
        ("0", "'0' is not a positive size"),
        ("0GB", "'0GB' is not a positive size"),
        ("0.5", "'0.5' is not a positive size"),
        ("-1", "'-1' is not a positive size"),
        ("abc", "'abc' is not a size"),
        ("10XB", "'10XB' is not a size"),
    ],
)
def test_bad_max_shard_size_is_refused(tmp_path, tiny_dir, size, fragment):
    source, family, member = tiny_dir("llama"), tmp_path / "fam", tmp_path / "one"
    fix = "use e.g. 5GB, 500MB or 2GiB"
    result = invoke(*BUILD, source, "-o", family, "--ratios", "1.5", "--max-shard-size", size)
    assert_clean_error(result, "--max-shard-size", fragment, fix)
    assert not family.exists()
    result = invoke("prune", source, "-o", member, "--ratio", "1.5", "--max-shard-size", size)
    assert_clean_error(result, "--max-shard-size", fragment, fix)
    assert not member.exists()


# --- a gated Hub repository ------------------------------------------------------------------------------------------


def test_a_gated_hub_repo_says_how_to_get_access(hub, tiny_dir, tmp_path):
    files = {p.name: p.read_bytes() for p in tiny_dir("llama").iterdir() if p.is_file()}
    hub.add_commit("meta/gated-tiny", files)
    hub.repo("meta/gated-tiny").gated = "manual"
    assert_both_commands_refuse(
        "meta/gated-tiny", tmp_path, "meta/gated-tiny is gated", "accept its licence", "HF_TOKEN"
    )
    assert hub.calls("resolve", 401), "the server did not refuse the download"
    assert not list((tmp_path / "hf-home" / "hub").rglob("*.safetensors"))  # no weights were downloaded
