"""Hub sources end to end against the loopback Hub in support/hub_server.py: the real huggingface_hub client downloads
over HTTP, so these tests check which files hubprune asks for, which commit it pins, and how Hub errors read."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from hubprune.cli import main
from hubprune.errors import SourceError
from hubprune.pruning.source import open_source

EXCLUDED = {
    "README.md": b"---\nlicense: mit\n---\n# tiny\n",
    "pytorch_model.bin": b"PICKLE" * 10,
    "original/consolidated.pth": b"PTH" * 10,
}


@pytest.fixture(scope="session")
def llama_files(tiny_dir):
    """The files of two different tiny Llamas (different weights and initializer_range), as {path: bytes}."""

    def read(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

    return read(tiny_dir("llama")), read(tiny_dir("llama", seed=1, initializer_range=0.05))


def downloaded(checkpoint) -> set[str]:
    return {str(p.relative_to(checkpoint.folder)) for p in checkpoint.folder.rglob("*") if p.is_file()}


def test_downloads_only_the_member_files_at_the_resolved_commit(hub, llama_files, tmp_path):
    base, _ = llama_files
    sha = hub.add_commit("acme/tiny", {**base, **EXCLUDED, "LICENSE": b"license text\n"})
    checkpoint = open_source("acme/tiny", cache_dir=tmp_path / "cache")

    assert checkpoint.revision == sha and checkpoint.source == "acme/tiny"
    assert checkpoint.folder.is_relative_to(tmp_path / "cache") and checkpoint.folder.name == sha
    assert downloaded(checkpoint) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "LICENSE",
        "README.md",  # the base's card, read for its licence; copied_files below shows it is not copied
    }
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (checkpoint.folder / name).read_bytes() == base[name]
    assert checkpoint.config == json.loads(base["config.json"])
    assert set(checkpoint.copied_files) == {
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "LICENSE",
    }
    assert checkpoint.tensors["model.embed_tokens.weight"].shape == (96, 32)

    # Files were fetched at the pinned sha, and the excluded ones were never asked for, not even with HEAD.
    gets = hub.requested("GET", "/acme/tiny/resolve/")
    assert sorted(gets) == sorted(f"/acme/tiny/resolve/{sha}/{name}" for name in downloaded(checkpoint))
    for name in set(EXCLUDED) - {"README.md"}:
        assert not hub.requested(contains=name), hub.requests
    assert not hub.requested(contains="original")


@pytest.mark.parametrize("revision", ["v1", "first-sha"])
def test_revision_pins_an_older_commit(hub, llama_files, tmp_path, revision):
    old, new = llama_files
    first = hub.add_commit("acme/tiny", old, message="first")
    hub.tag("acme/tiny", "v1", first)
    second = hub.add_commit("acme/tiny", new, message="second")
    assert first != second

    checkpoint = open_source(
        "acme/tiny", revision=first if revision == "first-sha" else revision, cache_dir=tmp_path / "cache"
    )
    assert checkpoint.revision == first
    assert checkpoint.config["initializer_range"] == 0.02
    assert (checkpoint.folder / "model.safetensors").read_bytes() == old["model.safetensors"]
    assert not hub.requested(contains=second)

    latest = open_source("acme/tiny", cache_dir=tmp_path / "cache")
    assert latest.revision == second and latest.config["initializer_range"] == 0.05
    assert (latest.folder / "model.safetensors").read_bytes() == new["model.safetensors"]


def test_pickle_only_repo_is_refused_before_any_download(hub, llama_files, tmp_path):
    base, _ = llama_files
    hub.add_commit("acme/pickled", {"config.json": base["config.json"], "pytorch_model.bin": b"PICKLE" * 10})
    with pytest.raises(SourceError, match="pickled") as error:
        open_source("acme/pickled", cache_dir=tmp_path / "cache")
    assert "acme/pickled" in str(error.value)
    assert hub.requested(contains="/resolve/") == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.bin"))


def test_unknown_repo_and_unknown_revision(hub, llama_files, tmp_path):
    base, _ = llama_files
    hub.add_commit("acme/tiny", base)
    with pytest.raises(SourceError, match="not found") as error:
        open_source("acme/missing", cache_dir=tmp_path / "cache")
    assert "acme/missing" in str(error.value)
    for revision in ("no-such-branch", "0" * 40):
        with pytest.raises(SourceError, match="does not exist") as error:
            open_source("acme/tiny", revision=revision, cache_dir=tmp_path / "cache")
        assert repr(revision) in str(error.value) and "acme/tiny" in str(error.value)


def test_hub_outage_is_one_clear_error(hub, llama_files, tmp_path):
    hub.add_commit("acme/tiny", llama_files[0])
    hub.fail_next(r"^/api/models/acme/tiny$", 503, times=10)
    with pytest.raises(SourceError, match="HTTP 503"):
        open_source("acme/tiny", cache_dir=tmp_path / "cache")
    assert hub.requested(contains="/resolve/") == []


def test_build_family_from_the_hub_records_the_commit(hub, llama_files, tmp_path):
    base, _ = llama_files
    sha = hub.add_commit("acme/tiny", {**base, **EXCLUDED})
    out = tmp_path / "family"
    result = CliRunner().invoke(
        main,
        ["build-family", "--skip-eval", "--skip-profile", "acme/tiny", "-o", str(out), "--ratios", "1.5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output

    family = json.loads((out / "family.json").read_text())
    assert family["source"]["id"] == "acme/tiny" and family["source"]["revision"] == sha
    [member] = family["members"]
    provenance = json.loads((out / member["path"] / "hubprune.json").read_text())
    assert provenance["source"]["id"] == "acme/tiny" and provenance["source"]["revision"] == sha
    assert json.loads((out / member["path"] / "config.json").read_text())["intermediate_size"] == 48
    # The CLI passes no cache_dir: the download went to the patched HF_HUB_CACHE, not the user's cache.
    assert (tmp_path / "hf-home" / "hub" / "models--acme--tiny" / "snapshots" / sha / "config.json").exists()
    # The base's own card is downloaded with the weights, for its licence; it is not copied into the member.
    assert hub.requested("GET", contains="README.md") == [f"/acme/tiny/resolve/{sha}/README.md"]
    card = ModelCard.load(out / member["path"] / "README.md")
    assert card.data.license == "mit" and card.data.base_model == "acme/tiny" and "\n# tiny\n" not in card.content


def test_server_speaks_the_resolve_protocol(hub):
    """The server itself: HEAD metadata headers, LFS etags, Range -> 206, error codes, and fail_next."""
    sha = hub.add_commit("acme/raw", {"a.txt": b"0123456789", "w.safetensors": b"x" * 100})
    connection = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc, timeout=5)

    def call(method, path, **headers):
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()

    status, headers, body = call("HEAD", "/acme/raw/resolve/main/a.txt")
    assert status == 200 and body == b"" and headers["X-Repo-Commit"] == sha
    assert headers["Content-Length"] == "10" and "X-Linked-Etag" not in headers
    _, headers, _ = call("HEAD", f"/acme/raw/resolve/{sha}/w.safetensors")
    assert headers["X-Linked-Size"] == "100" and len(headers["X-Linked-Etag"].strip('"')) == 64
    status, headers, body = call("GET", "/acme/raw/resolve/main/a.txt", Range="bytes=4-")
    assert (status, body, headers["Content-Range"]) == (206, b"456789", "bytes 4-9/10")
    status, headers, _ = call("HEAD", "/acme/raw/resolve/main/nope.txt")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    assert call("HEAD", "/acme/raw/resolve/v9/a.txt")[1]["X-Error-Code"] == "RevisionNotFound"
    assert call("GET", "/api/models/acme/none")[1]["X-Error-Code"] == "RepoNotFound"
    hub.fail_next(r"/a\.txt$", 500, headers={"Retry-After": "0"})
    status, headers, _ = call("GET", "/acme/raw/resolve/main/a.txt")
    assert status == 500 and headers["Retry-After"] == "0"
    assert call("GET", "/acme/raw/resolve/main/a.txt")[2] == b"0123456789"
    connection.close()
