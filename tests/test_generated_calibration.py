"""Calibration on text the base generates itself (#23, `--calibration generated`): what is read is exactly what the shared
generator samples with the calibration's seed, it is recorded as such, kept in one cache that a second build reads
instead of sampling again, and a family calibrated so refuses to be resumed with another calibration."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from test_cli import assert_clean_error, invoke
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubprune import generated
from hubprune.pruning.calibrate import CALIBRATION_SEED, GENERATED, CalibrationSettings
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.recover.settings import RecoverySettings

TOKENS, WINDOW = 256, 32  # eight sequences of 32 tokens


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("HUBPRUNE_CACHE", str(folder))
    return folder


def build(source, family, calibration=GENERATED):
    settings = PruneSettings(
        "activation", calibration=CalibrationSettings(calibration, TOKENS, WINDOW), recovery=RecoverySettings()
    )
    build_family(open_source(str(source)), family, [Target("size", "40")], settings)
    member = next(p for p in family.iterdir() if p.is_dir())
    provenance = json.loads((member / "hubprune.json").read_text())
    return provenance, (member / "hubprune-kept-indices.json").read_text()


def test_generated_calibration_reads_what_the_base_samples_itself_and_says_so(tmp_path, tiny_dir, cache):
    assert CalibrationSettings().text == "shipped"  # the default: it measured better (docs/recovery.md)
    source = tiny_dir("llama")
    provenance, _ = build(source, tmp_path / "fam")
    record = provenance["calibration"]
    # the same sequences, sampled by this test from the base with the calibration's seed
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    expected = generated.generate(model, tokenizer, TOKENS // WINDOW, WINDOW, CALIBRATION_SEED)
    text = "\n\n".join(tokenizer.batch_decode(expected[:, 1:]))
    assert record["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert record["source"].startswith(generated.SELF_GENERATED) and f"seed {CALIBRATION_SEED}" in record["source"]
    assert record["tokens"] == TOKENS and record["sequences"] == TOKENS // WINDOW and record["seq_len"] == WINDOW
    assert len(list((cache / "generated").glob("*.safetensors"))) == 1
    family = json.loads((tmp_path / "fam" / "family.json").read_text())
    assert family["calibration"] == {"source": GENERATED, "seed": CALIBRATION_SEED, "max_tokens": TOKENS,
                                     "window": WINDOW}  # fmt: skip


def test_a_second_build_reads_the_cache_instead_of_sampling_again(tmp_path, tiny_dir, cache, monkeypatch):
    source = tiny_dir("llama")
    first, kept = build(source, tmp_path / "one")

    def refuse(*args, **kwargs):
        raise AssertionError("sampled again")

    monkeypatch.setattr(generated, "generate", refuse)
    second, kept_again = build(source, tmp_path / "two")
    assert second["calibration"] == first["calibration"] and kept_again == kept


def test_shipped_and_a_file_stay_choices_and_a_family_is_one_calibration(tmp_path, tiny_dir, cache):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    provenance, _ = build(source, tmp_path / "shipped", "shipped")
    assert "paragraphs" in provenance["calibration"]["source"]  # the shipped text's second half, as before
    base = ("build-family", "--skip-eval", "--skip-profile", source, "-o", family, "--sizes", "40")
    given = ("--criterion", "activation", "--calibration-tokens", TOKENS)
    assert invoke(*base, *given, "--calibration", "generated").exit_code == 0
    assert_clean_error(invoke(*base, *given), "calibrated on generated data (256 tokens)")
    assert_clean_error(invoke(*base, *given, "--calibration", tmp_path / "missing.txt"), "missing.txt")
    assert "--calibration SHIPPED|GENERATED|MIXED|FILE" in invoke("prune", "--help").output


@pytest.mark.parametrize("bos", [False, True])
def test_generation_starts_where_a_pretraining_document_starts(tiny_dir, bos):
    """The tokens the tokenizer puts before every text; else the document separator <|endoftext|>, not a chat BOS
    (SmolLM2's BOS is <|im_start|>); else BOS."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir("llama", bos=bos))
    assert generated.start_tokens(tokenizer) == (tokenizer.bos_token_id,)  # <s>: the prefix, or the BOS fallback
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert generated.start_tokens(tokenizer) == ((tokenizer.bos_token_id,) if bos else (separator,))


def test_the_eval_stage_takes_generated_calibration(monkeypatch):
    """The warning about calibration text the benchmarks also score has no text to compare before the base samples
    it: it says nothing then (the member's hubprune.json and card give the overlap once it is sampled)."""
    from hubprune import pipeline

    said = []
    tasks = [("hubprune_jargon_ppl", None)]
    pipeline._warn_if_calibration_is_evaluated(CalibrationSettings(GENERATED), tasks, said.append)
    pipeline._warn_if_calibration_is_evaluated(CalibrationSettings("shipped"), tasks, said.append)
    assert len(said) == 1 and "shares 13-word sequences" in said[0].message


def test_the_card_says_whether_the_benchmarks_score_text_the_calibration_read(tmp_path, tiny_dir):
    from hubprune.publish.recovery_context import calibration_overlap

    assert "text the calibration did not read" in calibration_overlap({"offline_suite_paragraphs_sharing_13_words": 0})
    assert calibration_overlap({}) == ""  # a member calibrated before the count was kept: nothing is claimed
    family = tmp_path / "fam"
    given = ("--calibration", "shipped", "--calibration-tokens", 1600, "--recover", "refit")
    assert invoke("build-family", "--skip-eval", "--skip-profile", tiny_dir("llama"), "-o", family, "--sizes", "40",
                  *given).exit_code == 0  # fmt: skip
    card = " ".join((next(p for p in family.iterdir() if p.is_dir()) / "README.md").read_text().split())
    assert "paragraph(s) of the offline suite's texts share a 13-word sequence" in card and "flatter this model" in card


def test_mixed_calibration_reads_the_shipped_part_then_what_the_base_samples(tmp_path, tiny_dir, cache, monkeypatch):
    import math

    from hubprune.pruning import calibrate

    shipped = ["a paragraph the calibration does not read"] * 65 + ["alpha beta gamma delta epsilon zeta"] * 12
    monkeypatch.setattr(calibrate, "paragraphs", lambda: shipped)  # a short shipped part: generation fills the rest
    source = tiny_dir("llama")
    tokenizer = AutoTokenizer.from_pretrained(source)
    shipped_text = "\n\n".join(shipped[65:])
    read = len(tokenizer(shipped_text, add_special_tokens=False).input_ids)
    assert WINDOW < read < TOKENS - 3 * WINDOW
    provenance, _ = build(source, tmp_path / "fam", calibration=calibrate.MIXED)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    expected = generated.generate(model, tokenizer, math.ceil((TOKENS - read) / WINDOW), WINDOW, CALIBRATION_SEED)
    text = shipped_text + "\n\n" + "\n\n".join(tokenizer.batch_decode(expected[:, 1:]))
    record = provenance["calibration"]
    assert record["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert record["source"].endswith(
        f"paragraphs 66-77, then {generated.SELF_GENERATED}; seed 0; start token {tokenizer.convert_ids_to_tokens(int(expected[0, 0]))}"
    )
    family = json.loads((tmp_path / "fam" / "family.json").read_text())
    assert family["calibration"] == {"source": "mixed", "sha256": hashlib.sha256(shipped_text.encode()).hexdigest(),
                                     "seed": CALIBRATION_SEED, "max_tokens": TOKENS, "window": WINDOW}  # fmt: skip
