"""A loopback Hugging Face Hub for tests: the unmodified huggingface_hub client talks to it through HF_ENDPOINT.

Written from scratch on the standard library (http.server), following /work/shared/reference/hub-http-api.md.
It serves downloads (repo info, tree listings, refs, HEAD/GET resolve with Range) and never sends
Xet headers, so the client falls back to plain HTTP. Tests seed repos in-process with `add_commit` / `tag`, read
`requests` to assert what the client asked for, and inject failures with `fail_next`. Not served yet (the
download path of the 2.4 client never calls them): paths-info, Link-header pagination of /tree, auth.

Structure, meant to grow (uploads, commits, collections): `Repo` is the store (content-addressed blobs, commits
that each hold a full file map, branches and tags); `HubServer` owns the repos, the request log and the faults;
`_Handler` routes each request through `ROUTES` (method, regex) -> `HubServer` method taking (handler, match).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub's default .gitattributes stores in LFS (the Hub answers for them with X-Linked-Etag = sha256).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def _now() -> str:
    """The Hub's timestamp format, the one huggingface_hub's parse_datetime accepts: 2024-05-01T12:00:00.000Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    sha256: str
    is_lfs: bool

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob sha1 (of the LFS pointer for LFS files), which is also a regular file's ETag."""
        return _git_sha1(self.pointer if self.is_lfs else self.data)

    def tree_entry(self, path: str) -> dict:
        """One `type: file` entry as /tree and /paths-info return it (never with xetHash)."""
        entry = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.is_lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, str]  # path -> blob sha256
    date: str


@dataclass
class Repo:
    """One repository: blobs by sha256, every commit (so old shas stay resolvable), branches and tags."""

    repo_id: str
    repo_type: str = "model"
    blobs: dict[str, Blob] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    private: bool = False

    def commit(
        self, files: dict[str, bytes], branch: str = "main", message: str = "commit", delete: Iterable[str] = ()
    ) -> str:
        """Apply `files` (added or replaced) and `delete` on top of the branch head; return the new commit sha."""
        parent = self.branches.get(branch)
        tree = dict(self.commits[parent].files) if parent else {}
        for path in delete:
            tree.pop(path, None)
        for path, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            lfs = path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
            self.blobs.setdefault(digest, Blob(data, digest, lfs))
            tree[path] = digest
        listing = json.dumps({"parent": parent, "message": message, "files": sorted(tree.items())})
        sha = hashlib.sha1(listing.encode()).hexdigest()
        self.commits[sha] = Commit(sha, parent, message, tree, _now())
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag or a full commit sha -> the commit, or None."""
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)

    def entries(self, commit: Commit, prefix: str = "", recursive: bool = True) -> list[dict] | None:
        """Tree entries under `prefix` (files, plus directories), or None if `prefix` is neither file nor folder."""
        if prefix in commit.files:
            return [self.blobs[commit.files[prefix]].tree_entry(prefix)]
        base = prefix.rstrip("/") + "/" if prefix else ""
        out: dict[str, dict] = {}
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way to this file
                folder = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    out.setdefault(
                        folder, {"type": "directory", "oid": _git_sha1(folder.encode()), "size": 0, "path": folder}
                    )
            if recursive or len(parts) == 1:
                out[path] = self.blobs[commit.files[path]].tree_entry(path)
        return list(out.values()) if out or not prefix else None


@dataclass
class Fault:
    pattern: re.Pattern
    status: int
    times: int
    headers: dict[str, str]
    method: str | None


class HubServer:
    """The loopback Hub. Use as a context manager (or start()/stop()); point HF_ENDPOINT at `.endpoint`."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, unquoted path without query), in arrival order
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True, name="hub-server").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- seeding and test hooks (in-process, no HTTP) -------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model", create: bool = False) -> Repo | None:
        with self._lock:
            if create:
                self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type))
            return self.repos.get((repo_type, repo_id))

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        branch: str = "main",
        message: str = "commit",
        delete: Iterable[str] = (),
        repo_type: str = "model",
    ) -> str:
        """Commit `files` on top of `branch` (creating the repo if needed); return the 40-hex commit sha."""
        repo = self.repo(repo_id, repo_type, create=True)
        with self._lock:
            return repo.commit(files, branch, message, delete)

    def tag(self, repo_id: str, tag: str, revision: str, repo_type: str = "model") -> None:
        repo = self.repo(repo_id, repo_type)
        commit = repo.resolve(revision) if repo else None
        assert commit is not None, f"no revision {revision!r} in {repo_id}"
        repo.tags[tag] = commit.sha

    def fail_next(
        self,
        path_regex: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `times` requests whose path matches `path_regex` (re.search) with `status`."""
        with self._lock:
            self.faults.append(Fault(re.compile(path_regex), status, times, dict(headers or {}), method))

    def requested(self, method: str | None = None, contains: str = "") -> list[str]:
        """Paths of logged requests, optionally filtered by method and a substring."""
        return [p for m, p in list(self.requests) if (method is None or m == method) and contains in p]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.method in (None, method)) and fault.pattern.search(path):
                    fault.times -= 1
                    return fault
        return None

    # ---- endpoints --------------------------------------------------------------------------------------------
    def _lookup(self, h: "_Handler", m: re.Match) -> tuple[Repo, Commit] | None:
        """The repo and commit a URL names, or None after answering 404 RepoNotFound / RevisionNotFound."""
        groups = m.groupdict()
        repo_type = REPO_TYPES[groups.get("type") or (groups.get("prefix") or "models/").rstrip("/")]
        repo = self.repo(unquote(m.group("repo")), repo_type)
        if repo is None:
            return h.error(404, "RepoNotFound", "Repository not found")
        revision = unquote(groups.get("rev") or "main")  # the client quotes it with safe="" (refs%2Fpr%2F1)
        commit = repo.resolve(revision)
        if commit is None:
            return h.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def repo_info(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}[/revision/{rev}]: HfApi.model_info / repo_info (snapshot_download, resolve_revision)."""
        if not (found := self._lookup(h, m)):
            return
        repo, commit = found
        siblings = []
        for path in sorted(commit.files):
            entry = repo.blobs[commit.files[path]].tree_entry(path)
            sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:
                sibling["lfs"] = {
                    "sha256": entry["lfs"]["oid"],
                    "size": entry["size"],
                    "pointerSize": entry["lfs"]["pointerSize"],
                }
            siblings.append(sibling)
        first = min(repo.commits.values(), key=lambda c: c.date)
        h.send_json(
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": commit.date,
                "createdAt": first.date,
                "siblings": siblings,
            }
        )

    def tree(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}/tree/{rev}[/{path}]?recursive=: list_repo_tree (snapshot_download's file listing).

        One page, no Link header: the Hub pages at 1000 entries, far more than a test repo holds."""
        if not (found := self._lookup(h, m)):
            return
        repo, commit = found
        prefix = unquote(m.group("path") or "")
        entries = repo.entries(commit, prefix, h.query_flag("recursive"))
        if entries is None:
            return h.error(404, "EntryNotFound", f"{prefix} does not exist on {commit.sha}", commit.sha)
        h.send_json(entries)

    def refs(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}/refs: list_repo_refs."""
        if not (found := self._lookup(h, m)):
            return
        repo, _ = found

        def ref(kind, refs):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(refs.items())]

        h.send_json({"branches": ref("heads", repo.branches), "tags": ref("tags", repo.tags), "converts": []})

    def resolve(self, h: "_Handler", m: re.Match) -> None:
        """HEAD and GET /{P}{id}/resolve/{rev}/{path}: hf_hub_download's metadata call and download (Range -> 206)."""
        if not (found := self._lookup(h, m)):
            return
        repo, commit = found
        path = unquote(m.group("path"))
        if path not in commit.files:
            return h.error(404, "EntryNotFound", f"{path} does not exist on {commit.sha}", commit.sha)
        blob = repo.blobs[commit.files[path]]
        size = len(blob.data)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.is_lfs:  # the client prefers X-Linked-Etag: the sha256 it names the cached blob by
            headers.update(ETag=f'"{blob.sha256}"', **{"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(size)})
        status, body = 200, blob.data
        if (wanted := re.fullmatch(r"bytes=(\d*)-(\d*)", h.headers.get("Range", ""))) and any(wanted.groups()):
            first, last = wanted.groups()
            begin, end = (int(first), int(last or size - 1)) if first else (max(size - int(last), 0), size - 1)
            if begin >= size or end < begin:
                return h.send(416, b"", {"Content-Range": f"bytes */{size}", **headers})
            end = min(end, size - 1)
            status, body = 206, blob.data[begin : end + 1]
            headers["Content-Range"] = f"bytes {begin}-{end}/{size}"
        h.send(status, body, headers)


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = r"^/api/(?P<type>models|datasets|spaces)/" + _REPO
_RESOLVE = r"^/(?P<prefix>datasets/|spaces/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
ROUTES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    (("GET",), re.compile(_API + r"(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    (("GET",), re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    (("GET",), re.compile(_API + r"/refs$"), "refs"),
    (("HEAD", "GET"), re.compile(_RESOLVE), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    """Parses one request, logs it, applies a pending fault, then dispatches through ROUTES."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries Content-Length
    hub: HubServer

    def _dispatch(self) -> None:
        self.url = urlsplit(self.path)
        self.query = parse_qs(self.url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        path = unquote(self.url.path)
        self.hub.requests.append((self.command, path))
        if fault := self.hub._take_fault(self.command, path):
            body = json.dumps({"error": f"injected fault {fault.status}"}).encode()
            return self.send(fault.status, body, {"Content-Type": "application/json", **fault.headers})
        for methods, pattern, name in ROUTES:
            if self.command in methods and (match := pattern.match(self.url.path)):
                return getattr(self.hub, name)(self, match)
        self.error(404, None, f"no route for {self.command} {self.url.path}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def query_flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        """An error the client maps from headers: X-Error-Code (RepoNotFound, ...), X-Repo-Commit for .no_exist."""
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self.send_json({"error": message}, status, headers)

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass
