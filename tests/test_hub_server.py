"""The loopback Hub's publishing side, driven by the real huggingface_hub client (HfApi) over HTTP without Xet:
repos, uploads through LFS, commits, card metadata, auth, collections and injected faults."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from support.hub_server import HubServer, LfsUpload, point_datasets_at

# The client streams LFS files with httpx's deprecated `data=<file>`; that is its business, not these tests'.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "tester/pruned"
CARD = """---
license: apache-2.0
base_model: acme/base
base_model_relation: finetune
library_name: transformers
pipeline_tag: text-generation
tags: [hubprune, pruned]
---
# Pruned

A pruned model.
"""
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=hub.token)


@pytest.fixture(scope="module")
def weights() -> bytes:
    """Just over 10 MB, so LFS by size as well as by name."""
    return random.Random(0).randbytes(10 * 1024 * 1024 + 4096)


@pytest.fixture
def folder(tmp_path, weights) -> Path:
    out = tmp_path / "member"
    out.mkdir()
    (out / "README.md").write_text(CARD)
    (out / "config.json").write_bytes(CONFIG)
    (out / "model.safetensors").write_bytes(weights)
    return out


def publish(api: HfApi, folder: Path, message: str = "Publish"):
    return api.upload_folder(repo_id=REPO, folder_path=folder, commit_message=message)


def routes_since(hub: HubServer, start: int) -> list[str | None]:
    return [request.route for request in hub.requests[start:]]


def raw(hub: HubServer, method: str, path: str, body=b"", token: str | None = None, **headers) -> tuple[int, dict]:
    """One request without the client (an iterable body goes chunked); the status and the JSON answer, if any."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc, timeout=5)
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        content = response.read()
        return response.status, json.loads(content) if content else {}
    finally:
        connection.close()


def test_upload_folder_publishes_one_commit_with_the_weights_in_lfs(hub, api, folder, weights, tmp_path):
    assert api.create_repo(REPO) == f"{hub.endpoint}/{REPO}"
    info = publish(api, folder)

    initial, published = hub.commits(REPO)
    assert initial.message == "initial commit" and set(initial.files) == {".gitattributes"}
    assert published.parent == initial.sha and published.message == "Publish" and published.author == "tester"
    assert published.added == ("README.md", "config.json", "model.safetensors")
    assert info.oid == published.sha and info.commit_url == f"{hub.endpoint}/{REPO}/commit/{published.sha}"
    assert published.files["model.safetensors"].is_lfs and not published.files["config.json"].is_lfs

    # The weights went up once, by LFS PUT (which carries no token) then verify; the rest rode inline in the commit.
    assert hub.lfs_uploads == [LfsUpload(REPO, hashlib.sha256(weights).hexdigest(), len(weights))]
    assert hub.uploaded_bytes == len(weights)
    [put] = hub.calls("lfs_upload")
    assert put.status == 200 and put.token is None
    assert len(hub.calls("lfs_verify", status=200)) == 1
    [commit] = hub.calls("commit")
    assert commit.token == hub.token and commit.headers["Content-Type"] == "application/x-ndjson"

    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    for name, data in (("model.safetensors", weights), ("config.json", CONFIG)):
        assert Path(hf_hub_download(REPO, name, cache_dir=tmp_path / "downloads")).read_bytes() == data
    assert [c.title for c in api.list_repo_commits(REPO)] == ["Publish", "initial commit"]


def test_model_info_and_model_card_read_the_front_matter(hub, api, folder, weights):
    api.create_repo(REPO)
    sha = publish(api, folder).oid

    info = api.model_info(REPO)
    assert info.sha == sha and info.private is False and info.author == "tester"
    assert info.card_data.license == "apache-2.0" and info.card_data.base_model == "acme/base"
    assert info.card_data.get("base_model_relation") == "finetune" and info.card_data.tags == ["hubprune", "pruned"]
    assert info.library_name == "transformers" and info.pipeline_tag == "text-generation"
    assert {"hubprune", "safetensors", "llama", "license:apache-2.0", "base_model:finetune:acme/base"} <= set(info.tags)
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["README.md"].lfs is None and siblings["README.md"].size == len(CARD.encode())

    card = ModelCard.load(REPO)
    assert card.data.license == "apache-2.0" and "# Pruned" in card.text


def test_an_identical_upload_makes_no_commit_and_no_lfs_upload(hub, api, folder):
    api.create_repo(REPO)
    first = publish(api, folder)
    start = len(hub.requests)

    second = publish(api, folder)
    assert second.oid == first.oid and len(hub.commits(REPO)) == 2
    routes = routes_since(hub, start)
    assert (
        "commit" not in routes
        and "lfs_upload" not in routes
        and hub.uploaded_bytes == len(hub.files(REPO)["model.safetensors"])
    )
    # The client still validates the card (twice), asks preupload and the LFS batch (answered without actions),
    # then reads the head sha it returns instead of a commit.
    assert routes == ["validate_yaml", "validate_yaml", "preupload", "lfs_batch", "repo_info"]


def test_changing_only_the_card_commits_only_the_card(hub, api, folder):
    api.create_repo(REPO)
    publish(api, folder)
    start = len(hub.requests)

    (folder / "README.md").write_text(CARD.replace("apache-2.0", "mit"))
    info = publish(api, folder, "Relicense")
    *_, previous, latest = hub.commits(REPO)
    assert latest.sha == info.oid and latest.parent == previous.sha and latest.added == ("README.md",)
    assert "lfs_upload" not in routes_since(hub, start) and len(hub.lfs_uploads) == 1
    assert api.model_info(REPO).card_data.license == "mit"


def test_writes_need_a_valid_token_for_the_namespace(hub, api, folder):
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    for client, status in ((anonymous, 401), (HfApi(endpoint=hub.endpoint, token="hf_wrong"), 401), (api, 403)):
        with pytest.raises(HfHubHTTPError) as error:
            client.create_repo("someone/else")
        assert error.value.response.status_code == status
    assert hub.repo("someone/else") is None
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(endpoint=hub.endpoint, token="hf_wrong").whoami()

    api.create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as error:
        anonymous.upload_folder(repo_id=REPO, folder_path=folder)
    assert error.value.response.status_code == 401
    assert [r.status for r in hub.calls("preupload")] == [401]
    assert hub.calls("commit") == [] and hub.lfs_uploads == [] and len(hub.commits(REPO)) == 1


def test_create_repo_exist_ok_and_private_repos(hub, api, monkeypatch, tmp_path):
    url = api.create_repo("acme/secret", private=True)
    assert api.create_repo("acme/secret", exist_ok=True) == url  # read from the 409's body
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("acme/secret")
    assert error.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="acme/secret")
    assert api.model_info("acme/secret").private is True

    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("acme/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/secret", "config.json", cache_dir=tmp_path / "dl")
    monkeypatch.setenv("HF_TOKEN", hub.token)  # the implicit token, as a logged-in user has
    assert Path(hf_hub_download("acme/secret", "config.json", cache_dir=tmp_path / "dl")).read_bytes() == b"{}"

    api.update_repo_settings("acme/secret", private=False)
    assert anonymous.model_info("acme/secret").private is False


@pytest.mark.parametrize(
    "front, reason",
    [("base_model: acme/base\nbase_model_relation: pruned\n", "base_model_relation"), ("- a\n- list\n", "mapping")],
)
def test_invalid_card_metadata_stops_the_upload_before_preupload(hub, api, folder, front, reason):
    api.create_repo(REPO)
    (folder / "README.md").write_text(f"---\n{front}---\n# Pruned\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md") as error:
        publish(api, folder)
    assert reason in str(error.value)
    assert hub.calls("preupload") == [] and len(hub.commits(REPO)) == 1


def test_deletions_parent_commit_and_lfs_objects_must_exist(hub, api):
    api.create_repo(REPO)
    for name in ("logs/a.txt", "logs/b.txt"):
        api.upload_file(path_or_fileobj=name.encode(), path_in_repo=name, repo_id=REPO)
    stale, head = [c.sha for c in hub.commits(REPO)[-2:]]

    with pytest.raises(HfHubHTTPError) as error:
        api.create_commit(REPO, [CommitOperationDelete("logs/a.txt")], commit_message="m", parent_commit=stale)
    assert error.value.response.status_code == 412
    operations = [CommitOperationDelete("logs/"), CommitOperationAdd("keep.txt", b"kept")]
    api.create_commit(REPO, operations, commit_message="Tidy", parent_commit=head)
    assert hub.files(REPO) == {".gitattributes": hub.files(REPO)[".gitattributes"], "keep.txt": b"kept"}
    assert hub.commits(REPO)[-1].deleted == ("logs/",) and hub.commits(REPO)[-1].added == ("keep.txt",)
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("nope.txt", repo_id=REPO)

    # A commit naming an LFS object that was never uploaded is refused whole (what a partial push would send).
    lines = [
        {"key": "header", "value": {"summary": "Sneaky"}},
        {"key": "file", "value": {"path": "ok.txt", "content": "b2s=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 5}},
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    status, answer = raw(hub, "POST", f"/api/models/{REPO}/commit/main", body, hub.token)
    assert status == 422 and "does not exist" in answer["error"]
    assert hub.commits(REPO)[-1].message == "Tidy" and "ok.txt" not in hub.files(REPO)


def test_lfs_batch_put_and_verify_by_hand(hub, api):
    """The LFS wire protocol without the client: batch -> PUT (chunked here, and without a token) -> verify."""
    api.create_repo(REPO)
    data = b"\0weights" * 1000
    oid = hashlib.sha256(data).hexdigest()
    request = {"operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": oid, "size": len(data)}]}
    batch = f"/{REPO}.git/info/lfs/objects/batch"
    assert raw(hub, "POST", batch, json.dumps(request))[0] == 401
    status, answer = raw(hub, "POST", batch, json.dumps(request), hub.token)
    [entry] = answer["objects"]
    assert status == 200 and answer["transfer"] == "basic" and set(entry["actions"]) == {"upload", "verify"}

    put = urlsplit(entry["actions"]["upload"]["href"]).path
    assert raw(hub, "PUT", put, b"tampered")[0] == 400
    assert raw(hub, "PUT", put, iter([data[:3000], data[3000:]]))[0] == 200
    assert hub.calls("lfs_upload")[-1].headers["Transfer-Encoding"] == "chunked"
    verify = urlsplit(entry["actions"]["verify"]["href"]).path
    assert raw(hub, "POST", verify, json.dumps({"oid": oid, "size": len(data)}), hub.token)[0] == 200
    assert hub.repo(REPO).lfs_objects[oid].data == data and hub.uploaded_bytes == len(data)

    status, answer = raw(hub, "POST", batch, json.dumps(request), hub.token)
    assert answer["objects"] == [{"oid": oid, "size": len(data)}]  # stored: no actions, nothing to upload


def test_datasets_paths_info_settings_and_deletion(hub, api, tmp_path):
    url = api.create_repo("acme/evals", repo_type="dataset")
    assert url == f"{hub.endpoint}/datasets/acme/evals"
    with pytest.warns(UserWarning, match="empty or missing yaml metadata"):  # the Hub's warning for a bare card
        api.upload_file(
            path_or_fileobj=b"# Evals\n", path_in_repo="README.md", repo_id="acme/evals", repo_type="dataset"
        )
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="data/scores.csv", repo_id="acme/evals", repo_type="dataset")
    path = hf_hub_download("acme/evals", "data/scores.csv", repo_type="dataset", cache_dir=tmp_path / "dl")
    assert Path(path).read_bytes() == b"a,b\n"
    infos = api.get_paths_info("acme/evals", ["data", "data/scores.csv", "missing"], repo_type="dataset")
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFolder", "data"), ("RepoFile", "data/scores.csv")]

    api.update_repo_settings("acme/evals", repo_type="dataset", gated="auto")
    assert api.dataset_info("acme/evals").gated == "auto"
    api.delete_repo("acme/evals", repo_type="dataset")
    api.delete_repo("acme/evals", repo_type="dataset", missing_ok=True)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("acme/evals", repo_type="dataset")


def test_collection_keeps_items_in_order_with_notes(hub, api):
    members = ["acme/tiny-25", "acme/tiny-50", "acme/tiny-75"]
    for repo_id in members:
        api.create_repo(repo_id)
    collection = api.create_collection("Tiny family", description="Pruned members")  # namespace from whoami
    slug = collection.slug
    assert slug.startswith("tester/tiny-family-") and collection.items == [] and collection.owner["name"] == "tester"
    for repo_id in members:
        api.add_collection_item(slug, repo_id, "model", note=f"{repo_id[-2:]}% pruned")

    got = api.get_collection(slug)
    assert [(i.item_id, i.item_type, i.position, i.note) for i in got.items] == [
        ("acme/tiny-25", "model", 0, "25% pruned"),
        ("acme/tiny-50", "model", 1, "50% pruned"),
        ("acme/tiny-75", "model", 2, "75% pruned"),
    ]
    assert len(api.add_collection_item(slug, "acme/tiny-25", "model", exists_ok=True).items) == 3
    for item_id, status in (("acme/tiny-25", 409), ("acme/ghost", 404)):
        with pytest.raises(HfHubHTTPError) as error:
            api.add_collection_item(slug, item_id, "model")
        assert error.value.response.status_code == status

    api.update_collection_item(slug, got.items[2].item_object_id, position=0, note="smallest")
    api.delete_collection_item(slug, got.items[1].item_object_id)
    assert [(i.item_id, i.position, i.note) for i in api.get_collection(slug).items] == [
        ("acme/tiny-75", 0, "smallest"),
        ("acme/tiny-25", 1, "25% pruned"),
    ]

    assert api.create_collection("Tiny family", exists_ok=True).slug == slug  # the 409 names the existing slug
    with pytest.raises(HfHubHTTPError) as error:
        api.create_collection("Tiny family")
    assert error.value.response.status_code == 409
    [listed] = api.list_collections(owner="tester")
    assert listed.slug == slug and len(listed.items) == 2
    assert list(api.list_collections(owner="acme")) == []

    renamed = api.update_collection_metadata(slug, title="Tiny family v2", private=True)
    assert renamed.slug.startswith("tester/tiny-family-v2-") and renamed.slug[-24:] == slug[-24:]
    assert api.get_collection(slug).title == "Tiny family v2"  # the Hub resolves a slug by its id tail
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(endpoint=hub.endpoint, token=False).get_collection(slug)
    assert error.value.response.status_code == 404  # private now
    api.delete_collection(slug)
    api.delete_collection(slug, missing_ok=True)
    assert hub.collections == {}


def test_a_failed_commit_is_not_retried_and_a_rerun_reuses_the_upload(hub, api, folder):
    api.create_repo(REPO)
    hub.fail_next(r"/commit/main$", 500)
    with pytest.raises(HfHubHTTPError) as error:
        publish(api, folder)
    assert error.value.response.status_code == 500
    assert [r.status for r in hub.calls("commit")] == [500]  # create_commit posts once: no backoff on commits
    assert len(hub.commits(REPO)) == 1 and len(hub.lfs_uploads) == 1  # the weights went up before the commit

    publish(api, folder)
    assert [r.status for r in hub.calls("commit")] == [500, 200]
    assert len(hub.commits(REPO)) == 2 and len(hub.lfs_uploads) == 1  # the rerun's batch found the object stored


def test_a_rate_limited_preupload_is_retried(hub, api, folder):
    api.create_repo(REPO)
    hub.fail_next(r"/preupload/", 429, headers={"Retry-After": "0"})  # the client waits Retry-After + 1 s
    publish(api, folder)
    assert [r.status for r in hub.calls("preupload")] == [429, 200]
    assert len(hub.commits(REPO)) == 2


def test_whoami(hub, api):
    me = api.whoami()
    assert me["name"] == "tester" and me["type"] == "user" and [org["name"] for org in me["orgs"]] == ["acme"]
    assert me["auth"]["accessToken"]["role"] == "write"
    assert [r.token for r in hub.calls("whoami")] == [hub.token]


def test_transformers_loads_a_pushed_model(hub, api, tiny_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source = tiny_dir("llama")
    api.create_repo("acme/tiny-llama")
    api.upload_folder(repo_id="acme/tiny-llama", folder_path=source)

    model = AutoModelForCausalLM.from_pretrained("acme/tiny-llama")
    expected = load_file(source / "model.safetensors")
    state = model.state_dict()
    assert expected and all(torch.equal(state[name], tensor) for name, tensor in expected.items())
    info = api.model_info("acme/tiny-llama")
    assert info.safetensors.total == sum(tensor.numel() for tensor in expected.values())
    assert "llama" in info.tags and info.card_data is None  # no README.md pushed


# ---- dataset repos, as the datasets library writes and reads them ---------------------------------------------------
@pytest.fixture
def datasets_hub(hub, tmp_path, monkeypatch):
    """The loopback Hub with the datasets library pointed at it too, caching under tmp_path."""
    point_datasets_at(hub, monkeypatch, tmp_path / "hf-home")
    return hub


def test_push_to_hub_then_load_dataset_by_config_and_revision(datasets_hub, api, monkeypatch):
    """The unmodified datasets client both ways: push_to_hub writes two configs (parquet files and the README's
    `configs:` and `dataset_info`), load_dataset reads each back by name, at a tag, with its features."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_dataset
    from datasets.exceptions import DatasetNotFoundError

    monkeypatch.setenv("HF_TOKEN", datasets_hub.token)
    features = Features(
        {"question": Value("string"), "choices": List(Value("string")), "answer": ClassLabel(names=list("ABCD"))}
    )

    def subject(name: str, rows: int) -> DatasetDict:
        row = {"question": f"about {name}?", "choices": ["a", "b", "c", "d"], "answer": 2}
        return DatasetDict({split: Dataset.from_list([row] * rows, features=features) for split in ("test", "dev")})

    subject("anatomy", 3).push_to_hub("acme/exams", config_name="anatomy")
    datasets_hub.tag("acme/exams", "v1", "main", repo_type="dataset")
    subject("astronomy", 2).push_to_hub("acme/exams", config_name="astronomy")

    files = datasets_hub.files("acme/exams", repo_type="dataset")
    assert {"anatomy/test-00000-of-00001.parquet", "astronomy/dev-00000-of-00001.parquet"} <= set(files)
    info = api.dataset_info("acme/exams")
    assert [c["config_name"] for c in info.card_data.configs] == ["anatomy", "astronomy"]
    assert "format:parquet" in info.tags and not hasattr(info, "safetensors")

    loaded = load_dataset("acme/exams", "astronomy")
    assert {split: len(rows) for split, rows in loaded.items()} == {"test": 2, "dev": 2}
    assert loaded["dev"].features == features and loaded["dev"][0]["question"] == "about astronomy?"
    assert len(load_dataset("acme/exams", "anatomy", split="test")) == 3
    with pytest.raises(ValueError, match="astronomy"):  # the tag predates the second config
        load_dataset("acme/exams", "astronomy", revision="v1")
    with pytest.raises(ValueError, match="anatomy"):  # an unknown config: the error lists the known ones
        load_dataset("acme/exams", "geology")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("acme/missing")
    with pytest.raises(DatasetNotFoundError, match="Revision"):
        load_dataset("acme/exams", "anatomy", revision="v9")


def test_load_dataset_reads_jsonl_without_configs_and_csv_splits_named_in_the_card(datasets_hub):
    """The two layouts of the paper suite's datasets that are not push_to_hub's: one JSON Lines file and no
    `configs:` (the reader infers a train split: IFEval), and one CSV per split named in `configs:` (MuSR)."""
    from datasets import load_dataset
    from support.paper_datasets import STAND_INS, seed

    ifeval, musr = [s for s in STAND_INS if s.repo_id in ("google/IFEval", "TAUR-Lab/MuSR")]
    shas = seed(datasets_hub, (ifeval, musr))
    rows = load_dataset("google/IFEval")
    assert list(rows) == ["train"] and rows["train"][0]["kwargs"][0] == {"relation": "less than", "num_sentences": 5}
    splits = load_dataset("TAUR-Lab/MuSR", revision=shas["TAUR-Lab/MuSR"])
    assert list(splits) == ["murder_mysteries", "object_placements", "team_allocation"]
    assert splits["object_placements"][0]["choices"] == "['drawer', 'shelf', 'table']"  # a list in a string
    # Every file came over HTTP from the loopback Hub, at the commit the README was read from.
    assert datasets_hub.requested("GET", "/datasets/TAUR-Lab/MuSR/resolve/")
    assert all(shas["TAUR-Lab/MuSR"] in p for p in datasets_hub.requested("GET", "/datasets/TAUR-Lab/MuSR/resolve/"))
