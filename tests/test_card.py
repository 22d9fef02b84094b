"""Model cards rendered from a tiny family with real lm-eval results and a real profile, no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard
from support.tiny_models import build_tiny
from support.tiny_tasks import ALL_THREE, suite_file

from hubprune.cli import main
from hubprune.errors import CardError
from hubprune.measure.efficiency import ProfileSettings, measure
from hubprune.measure.evaluate import EvalSettings, evaluate
from hubprune.measure.profile import merge_rounds, round_share
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.publish.cards import CardSettings, render_cards
from hubprune.recover.settings import RecoverySettings

MEMBERS = ["Llama-tiny-er1.5", "Llama-tiny-er1"]
BASE_CARD = "---\nlicense: llama3.2\nlanguage: en\n---\n# The tiny base\n"


@pytest.fixture(scope="module")
def measured_family(tmp_path_factory, task_dir) -> Path:
    """A family of two members of a tiny Llama whose card says llama3.2, evaluated and profiled for real."""
    root = tmp_path_factory.mktemp("card")
    source = build_tiny(root / "Llama-tiny", "llama")
    (source / "README.md").write_text(BASE_CARD)
    (source / "LICENSE").write_text("LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (test copy)")
    family = root / "family"
    build_family(
        open_source(str(source)),
        family,
        [Target("size", "48"), Target("size", "32")],
        PruneSettings("maw", recovery=RecoverySettings()),
    )
    suite = str(suite_file(root, ALL_THREE[0], ALL_THREE[1]))
    evaluate(family, EvalSettings(suite=suite, include_paths=(task_dir,), batch_size="1"))
    settings = ProfileSettings(
        device="cpu",
        batch_sizes=(1,),
        prompt_tokens=8,
        new_tokens=4,
        min_seconds=0,
        min_runs=2,
        warmup_runs=1,
        rounds=2,
    )
    for folder, results in [
        (source, family / "base-results"),
        *((family / m, family / m / "results") for m in MEMBERS),
    ]:
        rounds = [measure(folder, round_share(settings)) for _ in range(settings.rounds)]
        (results / "profile.json").write_text(json.dumps(merge_rounds(rounds, settings)))
    return family


@pytest.fixture
def family(measured_family, tmp_path) -> Path:
    """A fresh copy for each test, so renders never leak between tests."""
    return Path(shutil.copytree(measured_family, tmp_path / "family"))


def card_of(family: Path, member: str) -> ModelCard:
    return ModelCard.load(family / member / "README.md")


def test_metadata_reads_back_and_model_index_equals_eval_json(family):
    render_cards(family)
    for member in MEMBERS:
        card = card_of(family, member)
        data = card.data.to_dict()
        assert data["license"] == "llama3.2"
        assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
        assert data["tags"] == ["pruned", "structured-pruning", "width-pruning", "hubprune", "llama"]
        assert "base_model" not in data  # a local base: no Hub id to name, and none is guessed
        assert "base_model_relation" not in data
        stored = json.loads((family / member / "results" / "eval.json").read_text())["tasks"]
        results = {r.dataset_type: r for r in card.data.eval_results}
        assert set(results) == {"tiny_ppl", "tiny_mc"}
        for task, record in stored.items():
            assert results[task].metric_value == record["value"]
            assert results[task].metric_type == record["metric"].split(",")[0]
        assert card.data.model_name == member


def test_every_card_lists_every_member_and_highlights_its_own(family):
    render_cards(family)
    for member in MEMBERS:
        text = (family / member / "README.md").read_text()
        for other in MEMBERS:
            assert f"| {other} |" in text or f"**{other}** (this model)" in text
        assert f"**{member}** (this model)" in text
    family_card = (family / "README.md").read_text()
    assert all(f"| {m} |" in family_card for m in MEMBERS)


def test_table_shows_measured_values_and_changes(family):
    render_cards(family)
    base = json.loads((family / "base-results" / "eval.json").read_text())["tasks"]["tiny_mc"]["value"]
    mine = json.loads((family / MEMBERS[1] / "results" / "eval.json").read_text())["tasks"]["tiny_mc"]["value"]
    text = (family / MEMBERS[1] / "README.md").read_text()
    assert f"{mine * 100:.1f} % ({(mine - base) * 100:+.1f} pts)" in text
    throughput = json.loads((family / MEMBERS[1] / "results" / "profile.json").read_text())["batches"][0]
    assert f"{throughput['decode_throughput']['median']:.1f} (" in text


def test_efficiency_names_the_rounds_and_says_when_the_machine_drifted(family):
    def set_spreads(member: str, value: float) -> None:
        path = family / member / "results" / "profile.json" if member else family / "base-results" / "profile.json"
        document = json.loads(path.read_text())
        document["batches"][0]["spread_between_rounds"].update(ttft=0.01, decode_throughput=value, e2e_latency=0.01)
        path.write_text(json.dumps(document))

    for member in MEMBERS:
        set_spreads(member, 0.02)
    set_spreads("", 0.02)  # the base
    render_cards(family)
    text = (family / MEMBERS[0] / "README.md").read_text()
    assert "each model in\n2 fresh processes, the models taking turns" in text
    assert "speed drifted" not in text  # every round within 5 % of the others

    set_spreads(MEMBERS[1], 0.123)
    render_cards(family)
    for card in (family / MEMBERS[0] / "README.md", family / "README.md"):
        assert (
            "the rounds' medians of one model differed by up to 12 % (coefficient of variation; decode throughput "
            f"of {MEMBERS[1]} at batch 1)"
        ) in card.read_text().replace("\n", " ")


def test_member_without_results_has_no_model_index_and_says_not_measured(family):
    shutil.rmtree(family / MEMBERS[0] / "results")
    render_cards(family)
    card = card_of(family, MEMBERS[0])
    assert "model-index" not in card.content.split("---")[1]
    assert not card.data.eval_results
    text = card.content
    assert "Benchmarks: not measured" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| **{MEMBERS[0]}**"))
    assert row.count("not measured") == 4  # two benchmarks, throughput, memory
    assert card_of(family, MEMBERS[1]).data.eval_results  # the other member keeps its results


def test_rendering_twice_gives_identical_bytes(family):
    render_cards(family)
    files = sorted(p for p in family.rglob("*") if p.suffix in (".md", ".png") and p.parent.name != "lm_eval")
    first = {p: p.read_bytes() for p in files}
    render_cards(family)
    assert {p: p.read_bytes() for p in files} == first
    assert len([p for p in files if p.suffix == ".png"]) == 6  # benchmarks + efficiency, 2 members + family


def test_plots_are_real_images_referenced_by_the_card(family):
    from PIL import Image

    render_cards(family)
    text = (family / MEMBERS[0] / "README.md").read_text()
    for name in ("benchmarks.png", "efficiency.png"):
        assert f"](plots/{name})" in text
        with Image.open(family / MEMBERS[0] / "plots" / name) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
            assert sum(1 for count in image.convert("L").histogram() if count) > 10  # drawn, not blank


def test_llama_licence_duties_and_files(family):
    outcome = render_cards(family)
    text = (family / MEMBERS[0] / "README.md").read_text()
    assert "**Built with Llama**" in text
    assert "Llama 3.2 is licensed under the Llama 3.2 Community License" in text
    assert "licence files are included unchanged: LICENSE." in text
    assert outcome.warnings == ()  # the names begin with "Llama", as the licence asks


def test_unknown_licence_is_not_guessed_and_can_be_given(family, tmp_path):
    source = Path(json.loads((family / "family.json").read_text())["source"]["id"])
    readme = source / "README.md"  # the fixture's source is shared: restore what this test changes
    readme.write_text("# no metadata\n")
    try:
        render_cards(family)
        assert "license" not in card_of(family, MEMBERS[0]).data.to_dict()
        assert "Not known: hubprune found no licence" in (family / MEMBERS[0] / "README.md").read_text()
        render_cards(family, CardSettings(license="apache-2.0"))
        assert card_of(family, MEMBERS[0]).data.license == "apache-2.0"
        render_cards(family)  # the licence given once is kept in family.json
        assert card_of(family, MEMBERS[0]).data.license == "apache-2.0"
    finally:
        readme.write_text(BASE_CARD)


def test_namespace_sets_repo_ids_and_links_and_is_remembered(family):
    render_cards(family, CardSettings(namespace="acme", base_model="meta-llama/Llama-3.2-1B"))
    render_cards(family)
    text = (family / MEMBERS[1] / "README.md").read_text()
    assert f'from_pretrained("acme/{MEMBERS[1]}")' in text and "placeholder" not in text
    assert f"[{MEMBERS[0]}](https://huggingface.co/acme/{MEMBERS[0]})" in text
    assert card_of(family, MEMBERS[1]).data.base_model == "meta-llama/Llama-3.2-1B"
    assert f"[{MEMBERS[0]}](https://huggingface.co/acme/{MEMBERS[0]})" in (family / "README.md").read_text()


@pytest.mark.parametrize(
    "settings, fragment",
    [
        (CardSettings(license="not-a-licence"), "licence 'not-a-licence' (from `license`) is not an identifier"),
        (CardSettings(namespace="a/b"), "namespace 'a/b' is not a Hub user or organisation name"),
        (CardSettings(base_model="just-a-name"), "base_model 'just-a-name' is not one Hub repo id"),
    ],
)
def test_metadata_the_hub_would_reject_is_refused_before_writing(family, settings, fragment):
    with pytest.raises(CardError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        render_cards(family, settings)
    assert not (family / MEMBERS[0] / "README.md").exists()


@pytest.mark.parametrize(
    "template, fragment",
    [
        ("line one\n{% if %}\n", "member.md.j2 line 2: Expected an expression"),
        ("line one\n\n{{ member.nothing.more }}\n", "member.md.j2 line 3: 'dict object' has no attribute 'nothing'"),
    ],
)
def test_template_errors_name_file_and_line_and_write_nothing(family, tmp_path, template, fragment):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "member.md.j2").write_text(template)
    with pytest.raises(CardError, match=fragment):
        render_cards(family, CardSettings(template_dir=templates))
    assert not list(family.rglob("README.md"))


def test_template_dir_overrides_only_what_it_holds(family, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "license.md.j2").write_text("## License\n\nOURS {{ license.attribution }}\n")
    render_cards(family, CardSettings(template_dir=templates))
    text = (family / MEMBERS[0] / "README.md").read_text()
    assert "OURS Built with Llama" in text and "## Method" in text


def test_not_a_family_is_refused(family, tmp_path):
    with pytest.raises(CardError, match="is not a hubprune family .* give its family folder"):
        render_cards(family / MEMBERS[0])
    with pytest.raises(CardError, match="is not a hubprune family"):
        render_cards(tmp_path)


def test_card_command_and_recorded_commands(family):
    runner = CliRunner()
    result = runner.invoke(main, ["card", str(family), "--namespace", "acme"])
    assert result.exit_code == 0, result.output
    assert f"cards: {family / 'README.md'} and 2 member cards" in result.output
    bad = runner.invoke(main, ["card", str(family), "--license", "nope"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and bad.output.startswith("error: licence 'nope'")


def test_build_family_renders_cards_and_records_its_command(tmp_path, tiny_dir):
    source = shutil.copytree(tiny_dir("llama"), tmp_path / "src")
    out = tmp_path / "fam"
    args = ["build-family", str(source), "-o", str(out), "--ratios", "1.5", "--skip-eval", "--skip-profile"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "family.json").read_text())["commands"]["build-family"]
    assert recorded == f"hubprune build-family {source} --output {out} --ratios 1.5 --skip-eval --skip-profile"
    text = (out / "src-er1.5" / "README.md").read_text()
    # the card shows the command as typed, local paths written as their names: a card is published
    assert "hubprune build-family src --output fam --ratios 1.5 --skip-eval --skip-profile" in text
    assert str(tmp_path) not in text
    assert "Benchmarks: not measured" in text and "## Efficiency\n\nNot measured" in text


def test_licence_other_needs_and_carries_a_name_and_link(family):
    with pytest.raises(CardError, match="licence 'other' .* needs a name and a link: pass `license_name`"):
        render_cards(family, CardSettings(license="other"))
    render_cards(family, CardSettings(license="other", license_name="tiny-licence", license_link="LICENSE"))
    data = card_of(family, MEMBERS[0]).data
    assert (data.license, data.license_name, data.license_link) == ("other", "tiny-licence", "LICENSE")
    assert "[tiny-licence](LICENSE)" in (family / MEMBERS[0] / "README.md").read_text()


def test_a_value_that_is_no_number_shows_as_not_measured(family):
    path = family / MEMBERS[1] / "results" / "eval.json"
    record = json.loads(path.read_text())
    record["tasks"]["tiny_mc"]["value"] = float("nan")
    path.write_text(json.dumps(record))
    render_cards(family)
    card = card_of(family, MEMBERS[1])
    assert {r.dataset_type for r in card.data.eval_results} == {"tiny_ppl"}
    row = next(line for line in card.content.splitlines() if line.startswith(f"| **{MEMBERS[1]}**"))
    assert row.split(" | ")[6] == "not measured"


def test_one_format_per_benchmark_column(family):
    """A metric one model reports above 1 is not a fraction for any model: no '95.0 %' beside '1.3'."""
    for name, value in (("base-results", 0.95), (f"{MEMBERS[0]}/results", 1.3)):
        path = family / name / "eval.json"
        record = json.loads(path.read_text())
        record["tasks"]["tiny_mc"]["value"] = value
        path.write_text(json.dumps(record))
    render_cards(family)
    text = (family / MEMBERS[0] / "README.md").read_text()
    assert "| 0.95 |" in text and "| 1.3 (+36.8 %) |" in text and "95.0 %" not in text


def test_small_counts_are_not_shown_as_zero(family):
    render_cards(family)
    row = next(line for line in (family / "README.md").read_text().splitlines() if line.startswith("| base |"))
    params, weights = row.split(" | ")[3:5]
    assert not params.startswith("0") and not weights.startswith("0"), row
