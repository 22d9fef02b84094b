"""The offline suite's text of another domain (fiction, Botchan, shipped in hubprune/data/texts): the passages the
task scores are the shipped ones, a family's cards give every member's figure on it and say which text is the
calibration's domain, and a calibration that read those passages is counted as overlapping the benchmarks."""

from __future__ import annotations

import json
import math

import pytest
from test_cli import invoke

from hubprune.measure.offline_tasks import evaluated_documents, task_folder
from hubprune.texts import OTHER_DOMAIN_FILE, paragraphs, shared_ngrams


def test_the_task_reads_the_shipped_passages_which_share_nothing_with_the_calibration_text(tmp_path):
    folder = task_folder(tmp_path)
    passages = [json.loads(line)["text"] for line in (folder / "hubprune_botchan_ppl.jsonl").read_text().splitlines()]
    assert passages == paragraphs(OTHER_DOMAIN_FILE) and len(passages) >= 16
    assert evaluated_documents([("hubprune_botchan_ppl", 3)]) == passages[:3]
    assert shared_ngrams("\n\n".join(paragraphs()), passages) == 0  # another text: not one 13-word sequence in common


@pytest.mark.parametrize(
    "criterion, read",
    [
        (
            "activation",
            "This family was calibrated on hubprune/data/texts/jargon-file-4.4.7-ch1-8.txt, paragraphs 66-130.",
        ),
        ("maw", "This family read no calibration text."),
    ],
)
def test_a_familys_cards_give_each_member_on_the_text_of_another_domain(tmp_path, tiny_dir, criterion, read):
    family = tmp_path / "fam"
    options = ("--sizes", "48", "--suite", "offline", "--limit", "2", "--skip-profile", "--recover", "none")
    result = invoke("build-family", tiny_dir("llama"), "-o", family, *options, "--criterion", criterion)
    assert result.exit_code == 0, result.output
    for results in (family / "base-results", family / "src-llama0-er1.5" / "results"):
        score = json.loads((results / "eval.json").read_text())["tasks"]["hubprune_botchan_ppl"]
        assert math.isfinite(score["value"]) and score["value"] > 1
    card = " ".join((family / "src-llama0-er1.5" / "README.md").read_text().split())
    assert "hubprune_botchan_ppl scores fiction (Botchan, tr. 1919), another domain, which no calibration" in card
    assert "hubprune_jargon_ppl scores the first paragraphs of the Jargon File, whose second half is" in card
    assert read in card


def test_a_calibration_that_read_the_passages_is_counted_as_overlapping_the_benchmarks(tmp_path, tiny_dir):
    calibration = tmp_path / "fiction.txt"
    calibration.write_text("\n\n".join(paragraphs(OTHER_DOMAIN_FILE)[:20]))
    member = tmp_path / "member"
    options = ("--criterion", "activation", "--recover", "none", "--calibration", calibration)
    result = invoke("prune", tiny_dir("llama"), "-o", member, "--intermediate-size", "48", *options)
    assert result.exit_code == 0, result.output
    record = json.loads((member / "hubprune.json").read_text())["calibration"]
    assert record["offline_suite_paragraphs_sharing_13_words"] >= 20
