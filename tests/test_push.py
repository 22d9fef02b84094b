"""`hubprune push` against the loopback Hub (support/hub_server.py), with the unmodified huggingface_hub client."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi
from support.hub_server import HubServer
from support.tiny_models import build_tiny
from support.tiny_tasks import ALL_THREE, suite_file
from transformers import AutoModelForCausalLM

from hubprune.cli import main
from hubprune.errors import PushError
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.pruning.source import open_source
from hubprune.publish import push as hub_module
from hubprune.publish.licence import front_matter
from hubprune.publish.push import PushSettings, push_family
from hubprune.recover.settings import RecoverySettings

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
    pytest.mark.usefixtures("token_and_no_backoff"),  # every test here pushes to conftest's `hub`
]
NS = "acme"
MEMBERS = ["Llama-tiny-er1.5", "Llama-tiny-er1"]
REPOS = [f"{NS}/{m}" for m in MEMBERS]


@pytest.fixture(scope="module")
def built_family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push")
    source = build_tiny(root / "Llama-tiny", "llama")
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    family = root / "family"
    build_family(
        open_source(str(source)),
        family,
        [Target("size", "48"), Target("size", "32")],
        PruneSettings("maw", recovery=RecoverySettings()),
    )
    return family


@pytest.fixture
def family(built_family, tmp_path) -> Path:
    return Path(shutil.copytree(built_family, tmp_path / "family"))


@pytest.fixture
def token_and_no_backoff(hub, monkeypatch):
    """conftest's `hub` (whose user may write to NS), with its token in HF_TOKEN and push's retries unslowed."""
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr(hub_module.time, "sleep", lambda seconds: None)  # backoff without the wait


def push(family: Path, *args: str):
    return CliRunner().invoke(main, ["push", str(family), "--namespace", NS, *args])


def pushed_commits(hub: HubServer, repo_id: str) -> list:
    return [c for c in hub.commits(repo_id) if c.message != "initial commit"]


def test_push_publishes_each_member_in_one_commit_and_a_collection(hub, family):
    result = push(family)
    assert result.exit_code == 0, result.output
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    recorded = {m["name"]: m["stages"]["push"] for m in json.loads((family / "family.json").read_text())["members"]}
    for name, repo_id in zip(MEMBERS, REPOS):
        [commit] = pushed_commits(hub, repo_id)
        local = {str(p.relative_to(family / name)): p.read_bytes() for p in (family / name).rglob("*") if p.is_file()}
        remote = {path: data for path, data in hub.files(repo_id).items() if path != ".gitattributes"}
        assert remote == local and "README.md" in remote and "model.safetensors" in remote
        assert recorded[name]["commit"] == commit.sha and recorded[name]["repo_id"] == repo_id
        data = api.model_info(repo_id).card_data
        assert data.license == "apache-2.0" and "hubprune" in data.tags and data.base_model is None
        assert f'from_pretrained("{repo_id}")' in remote["README.md"].decode()
    [collection] = hub.collections.values()
    listed = api.get_collection(collection.slug)
    assert [item.item_id for item in listed.items] == REPOS  # widest first
    assert listed.items[0].note.startswith("Expansion ratio 1.50, MLP width 48,")
    assert listed.title == "Llama-tiny width-pruned family"
    assert "collection: " in result.output and f'from_pretrained("{REPOS[0]}")' in result.output


def test_pushed_member_loads_through_the_hub_with_the_local_logits(hub, family):
    assert push(family, "--no-collection").exit_code == 0
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        remote = AutoModelForCausalLM.from_pretrained(REPOS[1]).eval()(ids).logits
        local = AutoModelForCausalLM.from_pretrained(family / MEMBERS[1]).eval()(ids).logits
    assert torch.equal(remote, local)
    assert not hub.collections


def test_second_push_makes_no_commit_and_uploads_nothing(hub, family):
    assert push(family).exit_code == 0
    commits, uploads, collection_writes = len(hub.calls("commit")), len(hub.lfs_uploads), _collection_writes(hub)
    result = push(family)
    assert result.exit_code == 0, result.output
    assert len(hub.calls("commit")) == commits and len(hub.lfs_uploads) == uploads
    assert _collection_writes(hub) == collection_writes
    assert result.output.count("unchanged") == 2


def _collection_writes(hub: HubServer) -> int:
    return sum(1 for r in hub.requests if r.route and r.route.startswith("collection") and r.method != "GET")


def test_a_changed_card_makes_one_small_commit_per_member(hub, family):
    assert push(family).exit_code == 0
    uploads = len(hub.lfs_uploads)
    assert CliRunner().invoke(main, ["card", str(family), "--license", "mit"]).exit_code == 0
    assert push(family).exit_code == 0
    for repo_id in REPOS:
        first, second = pushed_commits(hub, repo_id)
        assert list(second.added) == ["README.md"]
    assert len(hub.lfs_uploads) == uploads


def test_a_500_on_the_first_commit_and_a_429_are_survived(hub, family):
    hub.fail_next(r"/commit/", 500, times=1)
    hub.fail_next(r"^/api/repos/create$", 429, times=1, headers={"Retry-After": "1"})
    result = push(family)
    assert result.exit_code == 0, result.output
    assert [len(pushed_commits(hub, r)) for r in REPOS] == [1, 1]
    assert len(hub.lfs_uploads) == len({u.oid for u in hub.lfs_uploads})  # the weights went up once


def test_a_hub_that_stays_down_names_what_was_and_was_not_published(hub, family):
    assert push(family, "--members", MEMBERS[0], "--no-collection").exit_code == 0
    hub.fail_next(r"/commit/", 503, times=100)
    with pytest.raises(PushError) as caught:
        push_family(family, PushSettings(namespace=NS, backoff_s=0))
    message = str(caught.value)
    assert "HTTP 503" in message or "503" in message
    assert f"published: {REPOS[0]}" in message and f"not published: {REPOS[1]}" in message
    result = push(family)
    assert result.exit_code == 1 and result.output.count("error:") == 1
    assert result.output.splitlines()[-1].startswith(f"error: upload {REPOS[1]} failed: ")


def test_a_push_stopped_part_way_is_finished_by_a_rerun_once_the_hub_is_back(hub, family):
    """The first member's commit lands, the second's keeps failing (every retry): one line says which members are
    published. Once the Hub answers again the same command publishes the rest, leaves the first member's repo
    as it is, and makes the collection of all members in order."""
    hub.fail_next(rf"^/api/models/{re.escape(REPOS[1])}/commit/", 503, times=100)
    failed = push(family)
    assert failed.exit_code == 1 and failed.output.count("error:") == 1, failed.output
    line = failed.output.splitlines()[-1]
    assert line.startswith(f"error: upload {REPOS[1]} failed: ") and "503" in line
    assert f"; published: {REPOS[0]}; not published: {REPOS[1]}, the collection. Run the same command" in line
    assert len(hub.calls("commit", status=503)) == PushSettings(namespace=NS).retries  # retried, then given up
    [landed] = pushed_commits(hub, REPOS[0])
    assert pushed_commits(hub, REPOS[1]) == [] and not hub.collections
    recorded = {m["name"]: m["stages"].get("push") for m in json.loads((family / "family.json").read_text())["members"]}
    assert recorded[MEMBERS[0]]["commit"] == landed.sha and recorded[MEMBERS[1]] is None

    hub.faults.clear()  # the Hub is back
    result = push(family)
    assert result.exit_code == 0, result.output
    assert pushed_commits(hub, REPOS[0]) == [landed]  # no new commit for the member already published
    [commit] = pushed_commits(hub, REPOS[1])
    assert "model.safetensors" in commit.added and "README.md" in commit.added
    assert [line.split()[:2] for line in result.output.splitlines() if line.startswith(f"{NS}/")] == [
        [REPOS[0], "unchanged"],
        [REPOS[1], "pushed"],
    ]
    [collection] = hub.collections.values()
    listed = HfApi(endpoint=hub.endpoint, token=hub.token).get_collection(collection.slug)
    assert [item.item_id for item in listed.items] == REPOS  # widest first
    assert all(item.note.startswith("Expansion ratio ") for item in listed.items)


def test_the_token_never_appears_in_output_files_or_errors(hub, family):
    outputs = [push(family).output, push(family, "--dry-run").output]
    hub.fail_next(r"/commit/", 503, times=100)
    assert CliRunner().invoke(main, ["card", str(family), "--license", "mit"]).exit_code == 0
    failed = push(family)
    assert failed.exit_code == 1
    outputs.append(failed.output)
    assert all(hub.token not in text for text in outputs)
    for path in family.rglob("*"):
        if path.is_file():
            assert hub.token.encode() not in path.read_bytes(), path


def test_dry_run_makes_no_request_and_lists_files_and_sizes(hub, family, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # it needs no token either
    result = push(family, "--dry-run")
    assert result.exit_code == 0, result.output
    assert hub.requests == []
    size = (family / MEMBERS[0] / "model.safetensors").stat().st_size
    assert f"  model.safetensors  {size / 1e3:.4g} kB\n" in result.output  # the cards' byte format
    assert all(repo in result.output for repo in REPOS)
    assert "collection 'Llama-tiny width-pruned family', in this order:" in result.output
    assert f"  {REPOS[0]}: Expansion ratio 1.50, MLP width 48," in result.output
    assert "  README.md  " in result.output and "would first be rendered again" in result.output
    assert not (family / MEMBERS[0] / "README.md").exists()  # nothing written either


def test_a_foreign_repo_is_not_overwritten_without_force(hub, family):
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(REPOS[1])
    api.upload_file(path_or_fileobj=b"# someone else's model\n", path_in_repo="README.md", repo_id=REPOS[1])
    commits = len(hub.calls("commit"))
    result = push(family)
    assert result.exit_code == 1
    assert f"{REPOS[1]} already exists and was not made by hubprune" in result.output and "--force" in result.output
    assert len(hub.calls("commit")) == commits and not hub.collections  # refused before anything was published
    assert push(family, "--force").exit_code == 0
    assert "model.safetensors" in hub.files(REPOS[1])


def test_unverified_members_are_skipped_and_others_pushed(hub, family):
    weights = family / MEMBERS[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    result = push(family)
    assert result.exit_code == 0, result.output
    assert f"skipped {MEMBERS[1]}: its checkpoint no longer verifies" in result.output
    assert hub.files(REPOS[0]) and REPOS[1] not in {r.repo_id for r in hub.repos.values()}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--members", "nope"],
            "--members names nope, not in this family: choose from Llama-tiny-er1.5, Llama-tiny-er1",
        ),
        (["--collection", "x", "--no-collection"], "give --collection TITLE or --no-collection, not both"),
        (["--collection", "x" * 61], "--collection title is 61 characters; the Hub allows 60"),
    ],
)
def test_bad_push_input_gives_one_line_and_sends_nothing(hub, family, args, fragment):
    result = push(family, *args)
    assert result.exit_code == 1 and result.output.startswith(f"error: {fragment}") and result.output.count("\n") == 1
    assert hub.requests == []


def test_no_token_is_a_clear_error(hub, family, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = push(family)
    assert result.exit_code == 1 and "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in result.output
    assert hub.requests == []


def test_not_a_family_is_refused(hub, tmp_path):
    result = CliRunner().invoke(main, ["push", str(tmp_path), "--namespace", NS])
    assert result.exit_code == 1 and "is not a hubprune family" in result.output


def test_a_failed_weights_upload_is_retried_then_reported_in_one_line(hub, family):
    hub.fail_next(r"^/_lfs/upload/", 500, times=1)
    assert push(family, "--no-collection").exit_code == 0  # a 500 on the weights' PUT is retried
    other = family.parent / "other"
    shutil.copytree(family, other)
    (other / MEMBERS[0] / "extra.safetensors").write_bytes(b"\0" * 1024)  # a new LFS file to send
    hub.fail_next(r"^/_lfs/upload/", 403, times=1)
    result = push(other, "--no-collection")
    assert result.exit_code == 1 and result.output.count("error:") == 1
    assert f"error: upload {REPOS[0]} failed: " in result.output and "403" in result.output


def test_the_hubs_reason_is_part_of_the_error(hub, family):
    hub.fail_next(r"^/api/repos/create$", 400, message="You have reached your storage limit")
    result = push(family)
    assert result.exit_code == 1 and "You have reached your storage limit" in result.output.splitlines()[-1]


def test_offline_mode_is_named_at_once(hub, family, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = push(family)
    assert result.exit_code == 1 and "HF_HUB_OFFLINE=1 forbids network access: unset it to push" in result.output


def test_files_removed_locally_are_removed_from_the_repo(hub, family):
    extra = family / MEMBERS[0] / "notes.txt"
    extra.write_text("temporary")
    assert push(family, "--no-collection").exit_code == 0
    assert "notes.txt" in hub.files(REPOS[0])
    extra.unlink()
    assert push(family, "--no-collection").exit_code == 0
    assert "notes.txt" not in hub.files(REPOS[0]) and ".gitattributes" in hub.files(REPOS[0])


def test_pushing_some_members_keeps_the_collection_order(hub, family):
    assert push(family).exit_code == 0
    assert push(family, "--members", MEMBERS[1]).exit_code == 0
    [collection] = hub.collections.values()
    listed = HfApi(endpoint=hub.endpoint, token=hub.token).get_collection(collection.slug)
    assert [item.item_id for item in listed.items] == REPOS


def test_private_makes_existing_repos_private(hub, family):
    assert push(family, "--no-collection").exit_code == 0
    assert not hub.repo(REPOS[0]).private
    assert push(family, "--no-collection", "--private").exit_code == 0
    assert hub.repo(REPOS[0]).private and hub.repo(REPOS[1]).private


def test_revision_pushes_to_a_branch(hub, family):
    result = push(family, "--no-collection", "--revision", "pruned")
    assert result.exit_code == 0, result.output
    assert pushed_commits(hub, REPOS[0]) == []  # main keeps only the initial commit
    [commit] = [c for c in hub.commits(REPOS[0], revision="pruned") if c.message != "initial commit"]
    assert "model.safetensors" in commit.files


def test_cards_from_a_template_dir_survive_a_push(hub, family, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "license.md.j2").write_text("## License\n\nOUR OWN LICENCE SECTION\n")
    args = ["card", str(family), "--template-dir", str(templates), "--namespace", "elsewhere"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert push(family).exit_code == 0  # another namespace: the cards are rendered again, with the same templates
    card = hub.files(REPOS[0])["README.md"].decode()
    assert "OUR OWN LICENCE SECTION" in card and f'from_pretrained("{REPOS[0]}")' in card


MARK = "Builder-Private-Folder-7f3a"  # a folder name no published byte may contain


@pytest.fixture(scope="module")
def measured_build(tmp_path_factory, task_dir) -> Path:
    """The whole job under a recognisable folder (source, family, tasks and hubprune's cache all in it): a family
    built with eval (two tiny local tasks, their first 2 documents) and profile (one short round) results."""
    root = tmp_path_factory.mktemp("measured") / MARK
    source = build_tiny(root / "models" / "Llama-tiny", "llama")
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    tasks = Path(shutil.copytree(task_dir, root / "tasks"))
    suite = suite_file(root, *ALL_THREE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HUBPRUNE_CACHE", str(root / "cache"))
        built = CliRunner().invoke(
            main,
            [
                *("build-family", str(source), "-o", str(root / "family"), "--sizes", "48,32"),
                *("--suite", str(suite), "--tasks", "tiny_ppl,tiny_mc", "--limit", "2", "--include-path", str(tasks)),
                *("--batch-size", "1", "--device", "cpu", "--batch-sizes", "1", "--prompt-tokens", "8"),
                *("--new-tokens", "4", "--min-seconds", "0", "--rounds", "1", "--energy", "off"),
            ],
        )
    assert built.exit_code == 0, built.output
    return root


@pytest.fixture
def measured_family(measured_build, tmp_path, monkeypatch) -> Path:
    """A copy of measured_build's family, still under a folder named MARK, with hubprune's cache where it was."""
    monkeypatch.setenv("HUBPRUNE_CACHE", str(measured_build / "cache"))
    return Path(shutil.copytree(measured_build / "family", tmp_path / MARK / "family"))


def test_nothing_published_names_the_builders_machine(hub, measured_family):
    """A family with eval and profile results, pushed: no byte on the Hub names the folder the job ran in or the
    home folder."""
    family = measured_family
    assert (family / MEMBERS[0] / "results" / "eval.json").exists()
    assert (family / MEMBERS[0] / "results" / "profile.json").exists()
    assert MARK in (family / "family.json").read_text()  # the manifest keeps local paths: resume needs them

    assert push(family).exit_code == 0
    for repo in REPOS:
        files = hub.files(repo)
        assert "results/eval.json" in files and "results/lm_eval/tiny_ppl.json" in files and "hubprune.json" in files
        for path, data in files.items():
            assert MARK.encode() not in data, f"{repo}/{path} names the builder's folder"
            assert f"{Path.home()}/".encode() not in data, f"{repo}/{path} names the home folder"


def test_a_measured_family_publishes_its_results_as_the_cards_and_notes_state_them(hub, measured_family):
    """Each member's repo gets its results/ (eval.json, profile.json, lm-eval's outputs) but not the rounds a
    stopped profile keeps; its card's model-index holds exactly eval.json's scores; its collection note carries the
    headline score and its change against the base as the card states them."""
    family = measured_family
    rounds = family / MEMBERS[0] / "results" / ".profile-rounds"  # as a stopped `profile --rounds 2` leaves them
    rounds.mkdir()
    profile = json.loads((family / MEMBERS[0] / "results" / "profile.json").read_text())
    (rounds / "profile-round-1.json").write_text(json.dumps({"settings": {}, "round": 1, "document": profile}))
    base = json.loads((family / "base-results" / "eval.json").read_text())["tasks"]

    result = push(family)
    assert result.exit_code == 0, result.output
    [collection] = hub.collections.values()
    notes = {
        i.item_id: i.note for i in HfApi(endpoint=hub.endpoint, token=hub.token).get_collection(collection.slug).items
    }
    assert list(notes) == REPOS
    for name, repo in zip(MEMBERS, REPOS):
        files = hub.files(repo)
        local = family / name / "results"
        sent = {
            str(p.relative_to(family / name))
            for p in local.rglob("*")
            if p.is_file() and ".profile-rounds" not in p.parts
        }
        assert {"results/eval.json", "results/profile.json", "results/lm_eval/tiny_ppl.json"} <= sent
        assert {p for p in files if p.startswith("results/")} == sent
        assert all(files[p] == (family / name / p).read_bytes() for p in sent)
        assert not any(".profile-rounds" in path for c in hub.commits(repo) for path in c.files)

        scores = json.loads(files["results/eval.json"])["tasks"]
        assert list(scores) == ["tiny_ppl", "tiny_mc"]
        card = files["README.md"].decode()
        [entry] = front_matter(card)["model-index"]
        assert entry["name"] == name
        indexed = {}
        for found in entry["results"]:
            assert found["dataset"]["name"] == found["dataset"]["type"]
            [metric] = found["metrics"]
            indexed[found["dataset"]["type"]] = (metric["type"], metric["value"], metric["name"])
        assert indexed == {
            task: (
                s["metric"].split(",")[0],
                s["value"],
                f"{s['metric'].split(',')[0]} ({s['num_fewshot']}-shot, first {s['limit']} samples)",
            )
            for task, s in scores.items()
        }

        # the headline: the first task's row of the card's own results table
        row = next(line for line in card.splitlines() if line.startswith("| tiny_ppl | word_perplexity,none |"))
        *_, value, _, change = [cell.strip() for cell in row.strip("|").split("|")]
        member, reference = scores["tiny_ppl"]["value"], base["tiny_ppl"]["value"]
        assert value == f"{member:.4g}"
        expected = (
            f"{member / reference:,.1f}× base"
            if member / reference >= 2
            else f"{(member - reference) / reference * 100:+.1f} %"
        )
        assert change == expected
        assert notes[repo].endswith(f"; tiny_ppl: {value} ({change} vs the base)"), notes[repo]


def test_push_refuses_a_member_file_that_names_the_machine(hub, family):
    assert CliRunner().invoke(main, ["card", str(family), "--license", "mit"]).exit_code == 0
    leak = family / MEMBERS[1] / "results" / "notes.txt"
    leak.parent.mkdir(exist_ok=True)
    leak.write_text(f"built in {family.resolve()}\n")
    for args in ((), ("--dry-run",)):
        result = push(family, *args)
        assert result.exit_code == 1 and hub.requests == []
        assert f"error: {MEMBERS[1]}/results/notes.txt names this machine" in result.output


def test_a_family_without_a_licence_is_refused_before_any_request(hub, tmp_path):
    """The base declares no licence (no card, none in config.json): push names the option that sets one and sends
    nothing, whether the cards are yet to be rendered or were rendered saying the licence is not known."""
    source = build_tiny(tmp_path / "Llama-tiny", "llama")
    assert not (source / "README.md").exists() and "license" not in json.loads((source / "config.json").read_text())
    family = tmp_path / "family"
    build_family(
        open_source(str(source)), family, [Target("size", "48")], PruneSettings("maw", recovery=RecoverySettings())
    )
    for rendered in (False, True):
        if rendered:
            assert CliRunner().invoke(main, ["card", str(family)]).exit_code == 0
            assert "Not known: hubprune found no licence" in (family / MEMBERS[0] / "README.md").read_text()
        for args in ((), ("--dry-run",)):
            result = push(family, *args)
            assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
            assert result.output.startswith("error: the cards declare no licence")
            assert "render the cards again with the base model's Hub licence id as --license (e.g. hubprune card " in (
                result.output
            )
            assert hub.requests == [] and not hub.repos
    assert CliRunner().invoke(main, ["card", str(family), "--license", "mit"]).exit_code == 0  # the fix it names
    fixed = push(family)
    assert fixed.exit_code == 0, fixed.output
    assert HfApi(endpoint=hub.endpoint, token=hub.token).model_info(REPOS[0]).card_data.license == "mit"
