"""A loopback Hugging Face Hub for tests: the unmodified huggingface_hub client talks to it through HF_ENDPOINT.

Written from scratch on the standard library (http.server) and PyYAML, following /work/shared/reference/hub-http-api.md
and the request/response shapes huggingface_hub 2.4 sends and parses. It never sends Xet headers, so downloads use plain
HTTP; uploads need the client to run with HF_HUB_DISABLE_XET=1 (a 2.x client cannot be made to fall back to LFS by the
server), and then take the legacy path: validate-yaml -> preupload -> LFS batch -> PUT -> verify -> NDJSON commit.

Served: downloads (repo info with cardData, tree, refs, commits, paths-info, HEAD/GET resolve with Range), the home
page, auth (whoami, tokens), repos (create with exist_ok's 409, delete, settings, private repos hidden as 404), uploads
(validate-yaml, preupload, LFS basic transfer, commit with file/lfsFile/deletedFile/deletedFolder and parentCommit)
and collections (create, get, list, update, delete, items add/update/delete). Dataset repos are served the way
`datasets.load_dataset` reads them (dataset_info, pinned revisions, tree listings, paths-info, resolve downloads of the
README with its `configs:` and of parquet, JSON Lines or CSV data files), and `push_to_hub` writes them. Not served:
Xet, LFS multipart (never offered), pull requests (create_pr answers 501), Link-header pagination (one page holds any
test repo), the dataset viewer (datasets-server: point_datasets_at turns the client's lookup off).

Tests seed repos in-process with `add_commit` / `tag` (no .gitattributes, no initial commit, unlike `create_repo`
over HTTP), read the log (`requests`, `requested`, `calls`) and the store (`commits`, `files`, `lfs_uploads`,
`uploaded_bytes`, `collections`), and inject failures with `fail_next`. `point_client_at` aims the client at a server,
`point_datasets_at` the datasets library as well.

Structure: `Repo` is the store (commits that each hold a full path -> `Blob` map, branches, tags, and the LFS
objects uploaded to it); `HubServer` owns the repos, collections, tokens, request log and faults, and its endpoint
methods take (handler, match) and raise `HubError` for any error answer; `_Handler` reads and logs each request,
applies a pending fault and the token check, then dispatches through `ROUTES` (methods, regex, endpoint name).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import math
import re
import secrets
import struct
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The Hub's default .gitattributes (plus .gguf): what create_repo's initial commit holds, and the LFS rule for repos
# without one (seeded in-process). Files over 10 MB and binary files (a NUL byte in the first 512) are LFS anyway.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl",
    "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
NOTE_MAX, DESCRIPTION_MAX = 500, 150  # collection limits, as huggingface_hub documents them
DEFAULT_TOKEN = "hf_loopback_write_token"
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)^---[ \t]*\r?$", re.DOTALL | re.MULTILINE)


def _now() -> str:
    """The Hub's timestamp format, the one huggingface_hub's parse_datetime accepts: 2024-05-01T12:00:00.000Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _object_id(seed: str) -> str:
    """A 24-hex id in the style of the Hub's database ids."""
    return hashlib.md5(seed.encode()).hexdigest()[:24]


def _lfs_patterns(gitattributes: bytes | None) -> tuple[str, ...]:
    """The patterns a .gitattributes sends to LFS (`filter=lfs`), or the Hub's defaults when there is none."""
    if gitattributes is None:
        return LFS_PATTERNS
    lines = (line.split() for line in gitattributes.decode("utf-8", "replace").splitlines())
    return tuple(parts[0] for parts in lines if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:])


def _wants_lfs(path: str, size: int, sample: bytes, patterns: Iterable[str]) -> bool:
    """The Hub's choice of LFS over a regular git blob: big, binary, or matched by .gitattributes.

    A pattern without "/" matches the file name at any depth, as in git; one with "/" matches the whole path."""
    name = path.rsplit("/", 1)[-1]
    matched = any(fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in patterns)
    return size >= LFS_MIN_SIZE or b"\0" in sample or matched


def _front_matter(text: str) -> str | None:
    """The YAML between the leading `---` lines of a model card, or None when it has none."""
    match = _FRONT_MATTER.match(text)
    return match.group(1) if match else None


def _card_data(text: str) -> dict | None:
    """A README's metadata as model_info's `cardData`, or None (no front matter, bad YAML, not a mapping)."""
    front = _front_matter(text)
    try:
        data = yaml.safe_load(front) if front is not None else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _card_errors(text: str) -> list[str]:
    """What /api/validate-yaml rejects in a README: the checks a hubprune model card could plausibly fail."""
    front = _front_matter(text)
    if front is None:
        return []
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in the metadata block: {' '.join(str(exc).split())}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return [f"YAML metadata must be a mapping of keys to values, not a {type(data).__name__}"]

    def strings(value) -> bool:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    errors = []
    relation = data.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)}, got {relation!r}')
    if relation is not None and not data.get("base_model"):
        errors.append('"base_model_relation" needs a "base_model"')
    for key in ("base_model", "tags", "datasets", "language", "metrics"):
        if key in data and data[key] is not None and not strings(data[key]):
            errors.append(f'"{key}" must be a string or a list of strings')
    for key in ("license", "library_name", "pipeline_tag"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    return errors


def _card_tags(card: dict | None, files: Iterable[str], config: dict | None) -> list[str]:
    """model_info's `tags` the way the Hub derives them: card tags, library, task, languages, license, lineage."""
    card = card or {}

    def listed(key: str) -> list[str]:
        value = card.get(key)
        return [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]

    tags = [*listed("library_name"), *listed("tags"), *listed("pipeline_tag")]
    if any(path.endswith(".safetensors") for path in files):
        tags.append("safetensors")
    if config and isinstance(config.get("model_type"), str):
        tags.append(config["model_type"])
    tags += listed("language") + [f"license:{v}" for v in listed("license")]
    for base in listed("base_model"):
        tags.append(f"base_model:{base}")
        tags += [f"base_model:{relation}:{base}" for relation in listed("base_model_relation")]
    return list(dict.fromkeys(tags))


DATA_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}


def _dataset_tags(card: dict | None, files: Iterable[str]) -> list[str]:
    """dataset_info's `tags` the way the Hub derives them: card tags, `key:value` tags of the card's task
    categories, languages, licence and size, and the formats of the data files (README.md is not data)."""
    card = card or {}
    tags = [value for value in card.get("tags") or [] if isinstance(value, str)]
    for key in ("task_categories", "task_ids", "language", "license", "size_categories"):
        values = card.get(key)
        tags += [f"{key}:{v}" for v in ([values] if isinstance(values, str) else values or []) if isinstance(v, str)]
    suffixes = {"." + path.rsplit(".", 1)[-1] for path in files if "." in path and not path.startswith(".")}
    formats = sorted({DATA_FORMATS[s] for s in suffixes if s in DATA_FORMATS})
    tags += [f"format:{f}" for f in formats] + (["library:datasets"] if formats else [])
    return list(dict.fromkeys(tags))


def _safetensors_parameters(data: bytes) -> dict[str, int] | None:
    """Parameter counts by dtype from a safetensors header (model_info's `safetensors`), None if not one."""
    try:
        (length,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + length]) if length <= len(data) - 8 else None
        counts: dict[str, int] = {}
        for name, tensor in header.items():
            if name != "__metadata__":
                counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + math.prod(tensor["shape"])
        return counts
    except (struct.error, ValueError, KeyError, TypeError, AttributeError):
        return None


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "collection"


class HubError(Exception):
    """An error answer; endpoints raise it and the handler sends it. The client maps `code` (X-Error-Code:
    RepoNotFound, RevisionNotFound, EntryNotFound) to its exception types; `extra` adds keys to the JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


@dataclass(frozen=True)
class Blob:
    data: bytes
    sha256: str
    is_lfs: bool

    @classmethod
    def of(cls, data: bytes, lfs: bool) -> "Blob":
        return cls(data, hashlib.sha256(data).hexdigest(), lfs)

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
    files: dict[str, Blob]  # the whole tree at this commit: path -> blob
    date: str
    description: str = ""
    author: str = "system"
    added: tuple[str, ...] = ()  # paths this commit sent as file/lfsFile (added or replaced), sorted
    deleted: tuple[str, ...] = ()  # paths it deleted; folders end with "/"


@dataclass
class Repo:
    """One repository: every commit (so old shas stay resolvable), branches, tags, and its LFS objects by sha256
    (uploaded ones count before any commit references them, as on the Hub)."""

    repo_id: str
    repo_type: str = "model"
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, Blob] = field(default_factory=dict)
    private: bool = False
    gated: bool | str = False

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def lfs_patterns(self, commit: Commit | None) -> tuple[str, ...]:
        attributes = commit.files.get(".gitattributes") if commit else None
        return _lfs_patterns(attributes.data if attributes else None)

    def commit(
        self, files: dict[str, bytes], branch: str = "main", message: str = "commit", delete: Iterable[str] = ()
    ) -> str:
        """Seed `files` (LFS or not by the Hub's rule) and `delete` on top of the branch head; return the commit sha."""
        head = self.commits.get(self.branches.get(branch, ""))
        gitattributes = files.get(".gitattributes")
        patterns = _lfs_patterns(gitattributes) if gitattributes is not None else self.lfs_patterns(head)
        added = {path: Blob.of(data, _wants_lfs(path, len(data), data[:512], patterns)) for path, data in files.items()}
        return self.apply(branch, added, delete, message).sha

    def apply(
        self,
        branch: str,
        added: dict[str, Blob],
        deleted: Iterable[str] = (),
        message: str = "commit",
        description: str = "",
        author: str = "system",
    ) -> Commit:
        """Make one commit on `branch`: deletions first (a path ending in "/" is a folder), then additions."""
        parent = self.branches.get(branch)
        tree = dict(self.commits[parent].files) if parent else {}
        deleted = tuple(deleted)
        for path in deleted:
            for existing in [p for p in tree if p == path or (path.endswith("/") and p.startswith(path))]:
                del tree[existing]
        tree.update(added)
        for blob in added.values():
            if blob.is_lfs:
                self.lfs_objects.setdefault(blob.sha256, blob)
        listing = {"parent": parent, "message": message, "description": description}
        listing["files"] = sorted((path, blob.oid) for path, blob in tree.items())
        sha = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
        commit = Commit(sha, parent, message, tree, _now(), description, author, tuple(sorted(added)), deleted)
        self.commits[sha] = commit
        self.branches[branch] = sha
        return commit

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag or a full commit sha -> the commit, or None."""
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)

    def history(self, commit: Commit) -> list[Commit]:
        """`commit` and its ancestors, newest first."""
        out = [commit]
        while out[-1].parent:
            out.append(self.commits[out[-1].parent])
        return out

    def entries(self, commit: Commit, prefix: str = "", recursive: bool = True) -> list[dict] | None:
        """Tree entries under `prefix` (files, plus directories), or None if `prefix` is neither file nor folder."""
        if prefix in commit.files:
            return [commit.files[prefix].tree_entry(prefix)]
        base = prefix.rstrip("/") + "/" if prefix else ""
        out: dict[str, dict] = {}
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way to this file
                folder = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    out.setdefault(folder, _folder_entry(folder))
            if recursive or len(parts) == 1:
                out[path] = commit.files[path].tree_entry(path)
        return list(out.values()) if out or not prefix else None


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "oid": _git_sha1(path.encode()), "size": 0, "path": path}


@dataclass
class CollectionItem:
    object_id: str  # the item's own id in the collection (what update/delete_collection_item take)
    item_id: str  # repo id, paper id, ...
    item_type: str
    note: str | None = None


@dataclass
class Collection:
    object_id: str  # the 24-hex tail of the slug: the slug's title part may change, this does not
    namespace: str
    title: str
    description: str | None = None
    private: bool = False
    items: list[CollectionItem] = field(default_factory=list)
    last_updated: str = field(default_factory=_now)

    @property
    def slug(self) -> str:
        return f"{self.namespace}/{_slugify(self.title)}-{self.object_id}"


@dataclass
class Fault:
    pattern: re.Pattern
    status: int
    times: int
    headers: dict[str, str]
    method: str | None
    message: str | None = None  # the error text the fault answers with (the Hub's reason)


@dataclass
class Request:
    """One logged request: what the client sent, which endpoint it reached and how it was answered."""

    method: str
    path: str  # unquoted, without the query
    query: dict[str, list[str]]
    headers: Message  # case-insensitive: headers.get("authorization")
    route: str | None  # the endpoint ROUTES matched (set even when a fault answered), None if none did
    status: int | None = None

    @property
    def token(self) -> str | None:
        """The bearer token sent, if any."""
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None


class LfsUpload(NamedTuple):
    repo_id: str
    oid: str  # sha256
    size: int


class HubServer:
    """The loopback Hub. Use as a context manager (or start()/stop()); point the client at it with point_client_at.

    `tokens` are valid write tokens of the user `username`, who may write to its own namespace and to `orgs`.
    Reads of public repos need no token; an invalid token is refused (401) everywhere, as on the Hub."""

    def __init__(
        self, tokens: Iterable[str] = (DEFAULT_TOKEN,), username: str = "tester", orgs: Iterable[str] = ()
    ) -> None:
        self.tokens = tuple(tokens)
        self.username = username
        self.orgs = tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.collections: dict[str, Collection] = {}  # by object id, in creation order
        self.requests: list[Request] = []  # in arrival order
        self.faults: list[Fault] = []
        self.lfs_uploads: list[LfsUpload] = []  # every accepted LFS PUT
        self.errors: list[str] = []  # tracebacks of endpoint bugs (answered 500): a test can assert it stays empty
        self._tickets: dict[str, tuple[str, str, str, int]] = {}  # upload URL id -> (repo type, repo id, oid, size)
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

    @property
    def token(self) -> str:
        """A valid write token (the first one given)."""
        return next(iter(self.tokens))

    @property
    def namespaces(self) -> set[str]:
        """Where the token's user may write: its own namespace and its orgs."""
        return {self.username, *self.orgs}

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

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """The history of `revision`, oldest first (a repo made by create_repo starts with its "initial commit")."""
        repo = self.repo(repo_id, repo_type)
        commit = repo.resolve(revision) if repo else None
        return list(reversed(repo.history(commit))) if commit else []

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The repo's content at `revision`: path -> bytes."""
        repo = self.repo(repo_id, repo_type)
        commit = repo.resolve(revision) if repo else None
        assert commit is not None, f"no revision {revision!r} in {repo_id}"
        return {path: blob.data for path, blob in commit.files.items()}

    @property
    def uploaded_bytes(self) -> int:
        """Bytes received through LFS PUTs, all repos together."""
        return sum(upload.size for upload in self.lfs_uploads)

    def fail_next(
        self,
        path_regex: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        method: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `times` requests whose unquoted path matches `path_regex` (re.search) with `status`.

        LFS content goes to PUT /_lfs/upload/<ticket>; e.g. fail_next(r"/commit/", 500) or
        fail_next(r"/preupload/", 429, headers={"Retry-After": "0"})."""
        with self._lock:
            self.faults.append(Fault(re.compile(path_regex), status, times, dict(headers or {}), method, message))

    def requested(self, method: str | None = None, contains: str = "") -> list[str]:
        """Paths of logged requests, optionally filtered by method and a substring."""
        return [r.path for r in list(self.requests) if (method is None or r.method == method) and contains in r.path]

    def calls(self, route: str, status: int | None = None) -> list[Request]:
        """Logged requests that reached endpoint `route` ("commit", "preupload", "lfs_upload", ...), by status."""
        return [r for r in list(self.requests) if r.route == route and (status is None or r.status == status)]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.method in (None, method)) and fault.pattern.search(path):
                    fault.times -= 1
                    return fault
        return None

    # ---- access -------------------------------------------------------------------------------------------------
    def _authorize(self, h: "_Handler", namespace: str) -> None:
        """Writes need a valid token (else 401) whose user may write to `namespace` (else 403)."""
        if h.user is None:
            raise HubError(401, "You must be authenticated to write: send Authorization: Bearer <token>")
        if namespace not in self.namespaces:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r}")

    def _repo(self, h: "_Handler", m: re.Match, write: bool = False) -> Repo:
        """The repo a URL names. Private repos are 404 to anyone who may not write to their namespace, as if absent."""
        groups = m.groupdict()
        repo_type = REPO_TYPES[groups.get("type") or (groups.get("prefix") or "models/").rstrip("/")]
        repo_id = unquote(m.group("repo"))
        if write:
            self._authorize(h, repo_id.split("/")[0])
        repo = self.repo(repo_id, repo_type)
        if repo is None or (repo.private and (h.user is None or repo.namespace not in self.namespaces)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _lookup(self, h: "_Handler", m: re.Match, write: bool = False) -> tuple[Repo, Commit]:
        """The repo and commit a URL names, else 404 RepoNotFound / RevisionNotFound."""
        repo = self._repo(h, m, write)
        revision = unquote(m.groupdict().get("rev") or "main")  # the client quotes it with safe="" (refs%2Fpr%2F1)
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ---- endpoints: downloads ------------------------------------------------------------------------------------
    def repo_info(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}[/revision/{rev}]: model_info / repo_info (snapshot_download, the no-op commit's sha).

        Card-derived fields (cardData, tags, library_name, pipeline_tag, model-index) come from README.md's front
        matter at that revision, `config` and `safetensors` from config.json and the safetensors headers. A dataset
        repo answers dataset_info's shape: cardData (with the `configs:` and `dataset_info` that the datasets library
        reads from the README itself) and tags, no model fields."""
        repo, commit = self._lookup(h, m)
        siblings, parameters = [], {}
        for path in sorted(commit.files):
            blob = commit.files[path]
            sibling = {"rfilename": path, "size": len(blob.data), "blobId": blob.oid}
            if blob.is_lfs:
                sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
            if path.endswith(".safetensors"):
                for dtype, count in (_safetensors_parameters(blob.data) or {}).items():
                    parameters[dtype] = parameters.get(dtype, 0) + count
        readme = commit.files.get("README.md")
        card = _card_data(readme.data.decode("utf-8", "replace")) if readme else None
        config = self._json_file(commit, "config.json")
        first = repo.history(commit)[-1]
        info = {
            "_id": _object_id(repo.repo_id),
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.sha,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": _card_tags(card, commit.files, config),
            "lastModified": commit.date,
            "createdAt": first.date,
            "siblings": siblings,
        }
        if repo.repo_type != "model":  # dataset_info / space_info: the card's metadata, none of the model fields
            info["tags"] = _dataset_tags(card, commit.files) if repo.repo_type == "dataset" else []
            if card is not None:
                info["cardData"] = card
            return h.send_json(info)
        info["modelId"] = repo.repo_id
        if card is not None:
            info["cardData"] = card
            info.update({key: card[key] for key in ("library_name", "pipeline_tag", "model-index") if key in card})
        if config is not None:
            info["config"] = {key: config[key] for key in ("architectures", "model_type") if key in config}
        if parameters:
            info["safetensors"] = {"parameters": parameters, "total": sum(parameters.values())}
        h.send_json(info)

    @staticmethod
    def _json_file(commit: Commit, path: str) -> dict | None:
        try:
            data = json.loads(commit.files[path].data) if path in commit.files else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def tree(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}/tree/{rev}[/{path}]?recursive=: list_repo_tree / list_repo_files (snapshot_download).

        One page, no Link header: the Hub pages at 1000 entries, far more than a test repo holds."""
        repo, commit = self._lookup(h, m)
        prefix = unquote(m.group("path") or "")
        entries = repo.entries(commit, prefix, h.query_flag("recursive"))
        if entries is None:
            raise HubError(404, f"{prefix} does not exist on {commit.sha}", "EntryNotFound", commit.sha)
        h.send_json(entries)

    def paths_info(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/{T}/{id}/paths-info/{rev} (form paths=...): get_paths_info; unknown paths are left out."""
        _, commit = self._lookup(h, m)
        out = []
        for path in parse_qs(h.body.decode()).get("paths", []):
            if path in commit.files:
                out.append(commit.files[path].tree_entry(path))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                out.append(_folder_entry(path.rstrip("/")))
        h.send_json(out)

    def refs(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}/refs: list_repo_refs."""
        repo = self._repo(h, m)

        def ref(kind, refs):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(refs.items())]

        h.send_json({"branches": ref("heads", repo.branches), "tags": ref("tags", repo.tags), "converts": []})

    def list_commits(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/{T}/{id}/commits/{rev}: list_repo_commits, newest first, one page."""
        repo, commit = self._lookup(h, m)
        h.send_json(
            [
                {
                    "id": c.sha,
                    "title": c.message,
                    "message": c.description,
                    "authors": [{"user": c.author, "avatar": ""}],
                    "date": c.date,
                }
                for c in repo.history(commit)
            ]
        )

    def resolve(self, h: "_Handler", m: re.Match) -> None:
        """HEAD and GET /{P}{id}/resolve/{rev}/{path}: hf_hub_download's metadata call and download (Range -> 206).

        A gated repo's files, as on the Hub, go only to callers with access (here: members of its namespace):
        401 GatedRepo without a token, 403 GatedRepo with one. Its info and file list stay public."""
        repo, commit = self._lookup(h, m)
        if repo.gated and (h.user is None or repo.namespace not in self.namespaces):
            status, why = (401, "Please log in.") if h.user is None else (403, "You are not in the authorized list.")
            raise HubError(status, f"Access to {repo.repo_type} {repo.repo_id} is restricted. {why}", "GatedRepo")
        path = unquote(m.group("path"))
        if path not in commit.files:
            raise HubError(404, f"{path} does not exist on {commit.sha}", "EntryNotFound", commit.sha)
        blob = commit.files[path]
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

    # ---- endpoints: account and repos -----------------------------------------------------------------------------
    def home(self, h: "_Handler", m: re.Match) -> None:
        """HEAD and GET /: the Hub's home page, which answers whoever asks (hubprune's `--suite auto` probes it)."""
        h.send(200, b"<!doctype html><title>Loopback Hub</title>\n", {"Content-Type": "text/html; charset=utf-8"})

    def whoami(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/whoami-v2: the token's user (create_collection without a namespace asks it for `name`)."""
        if h.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [
            {"type": "org", "id": _object_id(org), "name": org, "fullname": org, "avatarUrl": "", "roleInOrg": "write"}
            for org in self.orgs
        ]
        token = {"displayName": "loopback", "role": "write", "createdAt": _now()}
        h.send_json(
            {
                "type": "user",
                "id": _object_id(self.username),
                "name": self.username,
                "fullname": self.username,
                "email": f"{self.username}@example.invalid",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": token},
            }
        )

    def _target(self, h: "_Handler", body: dict) -> tuple[str, str]:
        """(repo type, repo id) from a create/delete body {"name", "organization", "type"}, after the write check."""
        name, namespace = body.get("name"), body.get("organization") or self.username
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if not isinstance(name, str) or not _REPO_NAME.fullmatch(name) or ".." in name or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name {name!r}")
        self._authorize(h, namespace)
        return repo_type, f"{namespace}/{name}"

    def create_repo(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/repos/create: a new repo with the Hub's "initial commit" (.gitattributes); 409 if it exists
        (create_repo(exist_ok=True) swallows exactly that 409)."""
        body = h.json_body()
        repo_type, repo_id = self._target(h, body)
        private = body.get("visibility") == "private" or body.get("private") is True
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                repo = self.repos[(repo_type, repo_id)]
                raise HubError(409, f"You already created this {repo_type} repo", url=self._url(repo))
            repo = Repo(repo_id, repo_type, private=private)
            repo.apply("main", {".gitattributes": Blob.of(GITATTRIBUTES, False)}, message="initial commit")
            self.repos[(repo_type, repo_id)] = repo
        h.send_json({"url": self._url(repo), "name": repo_id, "id": _object_id(repo_id)})

    def delete_repo(self, h: "_Handler", m: re.Match) -> None:
        """DELETE /api/repos/delete: delete_repo (404 RepoNotFound is what missing_ok=True swallows)."""
        key = self._target(h, h.json_body())
        with self._lock:
            if self.repos.pop(key, None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        h.send_json({})

    def repo_settings(self, h: "_Handler", m: re.Match) -> None:
        """PUT /api/{T}/{id}/settings {"visibility"?, "private"?, "gated"?}: update_repo_settings."""
        repo = self._repo(h, m, write=True)
        body = h.json_body()
        if "visibility" in body:
            repo.private = body["visibility"] == "private"
        if isinstance(body.get("private"), bool):
            repo.private = body["private"]
        if "gated" in body:
            if body["gated"] not in ("auto", "manual", False):
                raise HubError(400, f"Invalid gated value {body['gated']!r}")
            repo.gated = body["gated"]
        h.send_json({})

    def create_branch(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/{T}/{id}/branch/{branch} {"startingPoint"?}: a new branch at that revision (default: main's
        head); 409 when it exists, which create_branch(exist_ok=True) swallows."""
        repo = self._repo(h, m, write=True)
        branch = unquote(m["branch"])
        if branch in repo.branches:
            raise HubError(409, f"Reference {branch} already exists")
        start = h.json_body().get("startingPoint") or "main"
        sha = repo.branches.get(start) or (start if start in repo.commits else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {start}")
        repo.branches[branch] = sha
        h.send_json({})

    # ---- endpoints: uploads -----------------------------------------------------------------------------------------
    def validate_yaml(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/validate-yaml {"content", "repoType"}: 200, or 400 {"errors": [{"message"}]} which the client
        raises as ValueError("Invalid metadata in README.md ..."). No token needed. A card without metadata gets the
        Hub's warning, which the client turns into a UserWarning."""
        content = h.json_body().get("content")
        if not isinstance(content, str):
            raise HubError(400, '"content" must be the README text')
        errors = _card_errors(content)
        warnings = [] if _front_matter(content) else [{"message": "empty or missing yaml metadata in repo card"}]
        h.send_json({"errors": [{"message": e} for e in errors], "warnings": warnings}, 400 if errors else 200)

    def preupload(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/{T}/{id}/preupload/{rev} {"files": [{"path", "sample", "size"}]}: each file's upload mode.

        `oid` names the file already at that path, in the form the client compares with its own file: the sha256
        when answering "lfs", the git sha1 of the content when answering "regular". Equal oids make the client drop
        the file from the commit, and a commit left empty is not sent at all."""
        repo, commit = self._lookup(h, m, write=True)
        files = h.json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, '"files" must be a list')
        patterns = repo.lfs_patterns(commit)
        answer = []
        for entry in files:
            if not (
                isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size"), int)
            ):
                raise HubError(400, f"Invalid file entry {entry!r}")
            path, size = entry["path"], entry["size"]
            try:
                sample = base64.b64decode(entry.get("sample") or "", validate=True)
            except binascii.Error:
                raise HubError(400, f"Invalid base64 sample for {path}") from None
            mode = "lfs" if _wants_lfs(path, size, sample[:512], patterns) else "regular"
            existing = commit.files.get(path)
            oid = None if existing is None else existing.sha256 if mode == "lfs" else _git_sha1(existing.data)
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        h.send_json({"files": answer, "commitOid": commit.sha})

    def lfs_batch(self, h: "_Handler", m: re.Match) -> None:
        """POST /{P}{id}.git/info/lfs/objects/batch: basic transfer only. Objects the repo already holds get no
        `actions` (the client skips their upload); others get a one-off PUT URL on this server and a verify URL."""
        repo = self._repo(h, m, write=True)
        body = h.json_body()
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(422, "Only the upload operation with the basic transfer is served")
        objects = []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not (
                isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0
            ):
                error = {"code": 422, "message": "oid must be a sha256 and size a non-negative integer"}
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
                continue
            stored = repo.lfs_objects.get(oid)
            if stored is not None and len(stored.data) == size:
                objects.append({"oid": oid, "size": size})
                continue
            ticket = secrets.token_hex(16)  # stands for the Hub's pre-signed S3 URL: no auth header comes with the PUT
            with self._lock:
                self._tickets[ticket] = (repo.repo_type, repo.repo_id, oid, size)
            verify = f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"
            actions = {"upload": {"href": f"{self.endpoint}/_lfs/upload/{ticket}"}, "verify": {"href": verify}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        h.send_json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, h: "_Handler", m: re.Match) -> None:
        """PUT /_lfs/upload/{ticket}: the content of one object, checked against the oid and size it was issued for."""
        with self._lock:
            ticket = self._tickets.get(m.group("ticket"))
        if ticket is None:
            raise HubError(403, "Unknown or already used upload URL")
        repo_type, repo_id, oid, size = ticket
        if len(h.body) != size or hashlib.sha256(h.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid} and size {size}")
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        with self._lock:
            repo.lfs_objects.setdefault(oid, Blob(h.body, oid, True))
            self._tickets.pop(m.group("ticket"), None)
            self.lfs_uploads.append(LfsUpload(repo_id, oid, size))
        h.send(200, b"", {"ETag": f'"{hashlib.md5(h.body).hexdigest()}"'})

    def lfs_verify(self, h: "_Handler", m: re.Match) -> None:
        """POST /{P}{id}.git/info/lfs/objects/verify {"oid", "size"}: 200 once the object is stored."""
        repo = self._repo(h, m, write=True)
        body = h.json_body()
        stored = repo.lfs_objects.get(body.get("oid"))
        if stored is None or len(stored.data) != body.get("size"):
            raise HubError(404, f"Object {body.get('oid')} of size {body.get('size')} was not uploaded")
        h.send_json({"success": True})

    def commit(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/{T}/{id}/commit/{branch} (NDJSON): header, then file / lfsFile / deletedFile / deletedFolder.

        All-or-nothing: any bad line fails the whole commit. An lfsFile must name an object this repo holds (422),
        a deletion an existing path (404 EntryNotFound), and `parentCommit` the branch head (412)."""
        repo = self._repo(h, m, write=True)
        branch = unquote(m.group("rev"))
        if h.query_flag("create_pr"):
            raise HubError(501, "create_pr is not served by the loopback Hub")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound")
        try:
            lines = [json.loads(line) for line in h.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "The commit payload is not NDJSON") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(400, "A commit payload starts with its header line")
        header = lines[0].get("value") or {}
        if not isinstance(header.get("summary"), str) or not header["summary"].strip():
            raise HubError(400, "The commit needs a summary")
        added, deleted = self._operations(repo, lines[1:])
        with self._lock:
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and not (isinstance(parent, str) and head.sha.startswith(parent.lower())):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            for path in deleted:
                if path.endswith("/") and not any(p.startswith(path) for p in head.files):
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound", head.sha)
                if not path.endswith("/") and path not in head.files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound", head.sha)
            new = repo.apply(branch, added, deleted, header["summary"], header.get("description") or "", h.user)
        url = f"{self._url(repo)}/commit/{new.sha}"
        h.send_json({"success": True, "commitOid": new.sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None})

    @staticmethod
    def _operations(repo: Repo, lines: list) -> tuple[dict[str, Blob], list[str]]:
        """The blobs a commit adds and the paths it deletes (folders with a trailing "/"), from its operation lines."""
        added: dict[str, Blob] = {}
        deleted: list[str] = []
        for line in lines:
            key, value = (line.get("key"), line.get("value")) if isinstance(line, dict) else (None, None)
            path = value.get("path") if isinstance(value, dict) else None
            if not isinstance(path, str) or not path.strip("/"):
                raise HubError(400, f"Invalid commit operation {line!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')!r}")
                try:
                    added[path] = Blob.of(base64.b64decode(value.get("content") or "", validate=True), lfs=False)
                except binascii.Error:
                    raise HubError(400, f"Invalid base64 content for {path}") from None
            elif key == "lfsFile":
                stored = repo.lfs_objects.get(value.get("oid"))
                size = len(stored.data) if stored else None
                if value.get("algo", "sha256") != "sha256" or stored is None or value.get("size", size) != size:
                    message = "Your push was rejected because an LFS pointer pointed to a file that does not exist"
                    raise HubError(422, f"{message}: {path} (oid {value.get('oid')})")
                added[path] = stored
            elif key == "deletedFile":
                deleted.append(path)
            elif key == "deletedFolder":
                deleted.append(path.rstrip("/") + "/")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        return added, deleted

    # ---- endpoints: collections -------------------------------------------------------------------------------------
    def _collection_json(self, collection: Collection, listed: bool = False) -> dict:
        """The Collection JSON huggingface_hub parses (all keys but description are mandatory). Listings carry at
        most 4 items and no `position`: list_collections numbers them itself, and a second one is a TypeError."""
        kind = "user" if collection.namespace == self.username else "org"
        items = collection.items[:4] if listed else collection.items
        data = {
            "slug": collection.slug,
            "title": collection.title,
            "description": collection.description,
            "owner": {"name": collection.namespace, "type": kind, "fullname": collection.namespace, "avatarUrl": ""},
            "items": [self._item_json(item, position) for position, item in enumerate(items)],
            "lastUpdated": collection.last_updated,
            "private": collection.private,
            "theme": "default",
            "upvotes": 0,
            "isUpvotedByUser": False,
        }
        if not listed:
            owned = [c for c in self.collections.values() if c.namespace == collection.namespace]
            data["position"] = owned.index(collection)
        return data

    @staticmethod
    def _item_json(item: CollectionItem, position: int) -> dict:
        data = {"_id": item.object_id, "id": item.item_id, "type": item.item_type, "position": position}
        if item.item_type in URL_PREFIXES:
            data["repoType"] = item.item_type
        if item.note is not None:
            data["note"] = {"text": item.note, "html": item.note}
        return data

    def _visible(self, h: "_Handler", collection: Collection) -> bool:
        return not collection.private or (h.user is not None and collection.namespace in self.namespaces)

    def _collection(self, h: "_Handler", m: re.Match, write: bool = False) -> Collection:
        """The collection a slug names: found by its 24-hex tail and namespace, as the Hub resolves slugs."""
        namespace, _, rest = unquote(m.group("slug")).partition("/")
        if write:
            self._authorize(h, namespace)
        collection = self.collections.get(rest[-24:])
        if collection is None or collection.namespace != namespace or not self._visible(h, collection):
            raise HubError(404, "Collection not found")
        return collection

    def list_collections(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/collections?owner=&item=&limit=: list_collections, one page, creation order."""
        owners, wanted = h.query.get("owner"), h.query.get("item")
        found = []
        for c in list(self.collections.values()):
            keys = {f"{i.item_type}s/{i.item_id}" for i in c.items}  # the filter's form: models/ns/name, papers/id
            if self._visible(h, c) and (not owners or c.namespace in owners) and (not wanted or keys & set(wanted)):
                found.append(self._collection_json(c, listed=True))
        limit = int(h.query.get("limit", [len(found)])[0])
        h.send_json(found[:limit])

    def create_collection(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/collections {"title", "namespace", "private", "description"?}: 409 with the existing `slug`
        when the namespace already has that title (create_collection(exists_ok=True) then fetches it)."""
        body = h.json_body()
        title, namespace, description = body.get("title"), body.get("namespace"), body.get("description")
        if not isinstance(title, str) or not title.strip() or not isinstance(namespace, str):
            raise HubError(400, "A collection needs a title and a namespace")
        if description is not None and (not isinstance(description, str) or len(description) > DESCRIPTION_MAX):
            raise HubError(400, f"The description must be a string of at most {DESCRIPTION_MAX} characters")
        self._authorize(h, namespace)
        with self._lock:
            for existing in self.collections.values():
                if existing.namespace == namespace and existing.title == title:
                    raise HubError(409, "A collection with this title already exists", slug=existing.slug)
            object_id = _object_id(f"{namespace}/{title}/{len(self.collections)}/{secrets.token_hex(4)}")
            collection = Collection(object_id, namespace, title, description, bool(body.get("private")))
            self.collections[object_id] = collection
        h.send_json(self._collection_json(collection))

    def get_collection(self, h: "_Handler", m: re.Match) -> None:
        """GET /api/collections/{slug}: get_collection (all items, in position order)."""
        h.send_json(self._collection_json(self._collection(h, m)))

    def update_collection(self, h: "_Handler", m: re.Match) -> None:
        """PATCH /api/collections/{slug} {"title"?, "description"?, "private"?, ...}: answered as {"data": ...}."""
        collection = self._collection(h, m, write=True)
        body = h.json_body()
        description = body.get("description", collection.description)
        if description is not None and (not isinstance(description, str) or len(description) > DESCRIPTION_MAX):
            raise HubError(400, f"The description must be a string of at most {DESCRIPTION_MAX} characters")
        with self._lock:
            collection.title = body.get("title") or collection.title
            collection.description = description
            collection.private = bool(body.get("private", collection.private))
            collection.last_updated = _now()
        h.send_json({"success": True, "data": self._collection_json(collection)})

    def delete_collection(self, h: "_Handler", m: re.Match) -> None:
        """DELETE /api/collections/{slug} (404 is what missing_ok=True swallows)."""
        collection = self._collection(h, m, write=True)
        with self._lock:
            self.collections.pop(collection.object_id, None)
        h.send_json({"success": True})

    def add_collection_item(self, h: "_Handler", m: re.Match) -> None:
        """POST /api/collections/{slug}/items {"item": {"id", "type"}, "note"?}: appended last. A repo item must
        exist (404); an item already there is 409 (add_collection_item(exists_ok=True) then fetches the collection)."""
        collection = self._collection(h, m, write=True)
        body = h.json_body()
        item, note = body.get("item") or {}, body.get("note")
        item_id, item_type = item.get("id"), item.get("type")
        if not isinstance(item_id, str) or item_type not in (*URL_PREFIXES, "paper", "collection", "bucket"):
            raise HubError(400, f"Invalid item {item!r}")
        if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX):
            raise HubError(400, f"The note must be a string of at most {NOTE_MAX} characters")
        repo = self.repo(item_id, item_type) if item_type in URL_PREFIXES else None
        if item_type in URL_PREFIXES and (repo is None or (repo.private and repo.namespace not in self.namespaces)):
            raise HubError(404, f"{item_type} {item_id} not found")
        with self._lock:
            if any(i.item_id == item_id and i.item_type == item_type for i in collection.items):
                raise HubError(409, f"{item_type} {item_id} is already in the collection")
            object_id = _object_id(f"{collection.object_id}/{item_type}/{item_id}/{secrets.token_hex(4)}")
            collection.items.append(CollectionItem(object_id, item_id, item_type, note))
            collection.last_updated = _now()
        h.send_json(self._collection_json(collection))

    def _item(self, collection: Collection, m: re.Match) -> CollectionItem:
        for item in collection.items:
            if item.object_id == m.group("item"):
                return item
        raise HubError(404, f"No item {m.group('item')} in the collection")

    def update_collection_item(self, h: "_Handler", m: re.Match) -> None:
        """PATCH /api/collections/{slug}/items/{item object id} {"note"?, "position"?}: a new position moves the
        item there and renumbers the others, so positions stay 0..n-1 in list order."""
        collection = self._collection(h, m, write=True)
        item = self._item(collection, m)
        body = h.json_body()
        note, position = body.get("note"), body.get("position")
        if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX):
            raise HubError(400, f"The note must be a string of at most {NOTE_MAX} characters")
        if position is not None and (not isinstance(position, int) or position < 0):
            raise HubError(400, "position must be a non-negative integer")
        with self._lock:
            if note is not None:
                item.note = note
            if position is not None:
                collection.items.remove(item)
                collection.items.insert(min(position, len(collection.items)), item)
            collection.last_updated = _now()
        h.send_json({"success": True})

    def delete_collection_item(self, h: "_Handler", m: re.Match) -> None:
        """DELETE /api/collections/{slug}/items/{item object id} (404 is what missing_ok=True swallows)."""
        collection = self._collection(h, m, write=True)
        item = self._item(collection, m)
        with self._lock:
            collection.items.remove(item)
            collection.last_updated = _now()
        h.send_json({"success": True})


def point_client_at(server: HubServer, monkeypatch, home: Path) -> None:
    """Aim huggingface_hub (and transformers through it) at `server`: online, without Xet, with a private HF_HOME
    and cache, and no token unless a test passes one (or sets HF_TOKEN itself).

    huggingface_hub reads its settings into `constants` at import (conftest has already made it offline), so the
    constants are patched as well as the environment."""
    from huggingface_hub import constants

    env = {
        "HF_ENDPOINT": server.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    patched = {
        "ENDPOINT": server.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)


def point_datasets_at(server: HubServer, monkeypatch, home: Path) -> None:
    """Aim the datasets library (and lm-eval's tasks through it) at `server`, online, caching under `home`: call it
    after point_client_at, which it relies on for the Hub client underneath.

    datasets copies HF_ENDPOINT, the offline flags and its cache folders into `datasets.config` at import, so those
    are patched as well as the environment. Two lookups that would leave this machine are switched off: the
    dataset viewer's (the Hub's parquet export and infos, asked of datasets-server.<endpoint host>; the loopback
    Hub has no viewer, and the client then reads the README's `configs:` and `dataset_info`, as it does for a repo
    the viewer has not processed yet) and the download counter (a HEAD to s3.amazonaws.com per load_dataset)."""
    import datasets.config

    cache = home / "datasets"
    downloads = cache / datasets.config.DOWNLOADED_DATASETS_DIR
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")
    patched = {
        "HF_ENDPOINT": server.endpoint,
        "HUB_DATASETS_URL": server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "USE_PARQUET_EXPORT": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
        "HF_DATASETS_CACHE": cache,
        "DOWNLOADED_DATASETS_PATH": downloads,
        "EXTRACTED_DATASETS_PATH": downloads / datasets.config.EXTRACTED_DATASETS_DIR,
    }
    for name, value in patched.items():
        monkeypatch.setattr(datasets.config, name, value)


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = r"^/api/(?P<type>models|datasets|spaces)/" + _REPO
_GIT = r"^/(?P<prefix>datasets/|spaces/)?" + _REPO + r"\.git/info/lfs/objects/"
_RESOLVE = r"^/(?P<prefix>datasets/|spaces/)?" + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
_COLLECTION = r"^/api/collections/(?P<slug>[^/]+/[^/]+)"
ROUTES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    # downloads
    (("GET",), re.compile(_API + r"(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    (("GET",), re.compile(_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    (("POST",), re.compile(_API + r"/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    (("GET",), re.compile(_API + r"/refs$"), "refs"),
    (("GET",), re.compile(_API + r"/commits/(?P<rev>[^/]+)$"), "list_commits"),
    (("HEAD", "GET"), re.compile(_RESOLVE), "resolve"),
    # account and repos
    (("HEAD", "GET"), re.compile(r"^/$"), "home"),
    (("GET",), re.compile(r"^/api/whoami-v2$"), "whoami"),
    (("POST",), re.compile(r"^/api/repos/create$"), "create_repo"),
    (("DELETE",), re.compile(r"^/api/repos/delete$"), "delete_repo"),
    (("PUT",), re.compile(_API + r"/settings$"), "repo_settings"),
    (("POST",), re.compile(_API + r"/branch/(?P<branch>[^/]+)$"), "create_branch"),
    # uploads
    (("POST",), re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    (("POST",), re.compile(_API + r"/preupload/(?P<rev>[^/]+)$"), "preupload"),
    (("POST",), re.compile(_GIT + r"batch$"), "lfs_batch"),
    (("PUT",), re.compile(r"^/_lfs/upload/(?P<ticket>[0-9a-f]+)$"), "lfs_upload"),
    (("POST",), re.compile(_GIT + r"verify$"), "lfs_verify"),
    (("POST",), re.compile(_API + r"/commit/(?P<rev>[^/]+)$"), "commit"),
    # collections
    (("GET",), re.compile(r"^/api/collections$"), "list_collections"),
    (("POST",), re.compile(r"^/api/collections$"), "create_collection"),
    (("GET",), re.compile(_COLLECTION + "$"), "get_collection"),
    (("PATCH",), re.compile(_COLLECTION + "$"), "update_collection"),
    (("DELETE",), re.compile(_COLLECTION + "$"), "delete_collection"),
    (("POST",), re.compile(_COLLECTION + r"/items$"), "add_collection_item"),
    (("PATCH",), re.compile(_COLLECTION + r"/items/(?P<item>[^/]+)$"), "update_collection_item"),
    (("DELETE",), re.compile(_COLLECTION + r"/items/(?P<item>[^/]+)$"), "delete_collection_item"),
]


class _Handler(BaseHTTPRequestHandler):
    """Reads and logs one request, applies a pending fault, checks the token, then dispatches through ROUTES."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out as two writes: without it each answer waits ~40 ms
    hub: HubServer
    user: str | None  # the token's user, None without a token

    def _dispatch(self) -> None:
        self.url = urlsplit(self.path)
        self.query = parse_qs(self.url.query)
        self.body = self._read_body()
        path = unquote(self.url.path)
        route = next(((n, m) for ms, p, n in ROUTES if self.command in ms and (m := p.match(self.url.path))), None)
        self.record = Request(self.command, path, self.query, self.headers, route[0] if route else None)
        self.hub.requests.append(self.record)
        if fault := self.hub._take_fault(self.command, path):
            body = json.dumps({"error": fault.message or f"injected fault {fault.status}"}).encode()
            return self.send(fault.status, body, {"Content-Type": "application/json", **fault.headers})
        try:
            token = self.record.token
            if token is not None and token not in self.hub.tokens:  # the Hub refuses a bad token even on public reads
                raise HubError(401, "Invalid credentials in Authorization header")
            self.user = self.hub.username if token else None
            if route is None:
                raise HubError(404, f"no route for {self.command} {self.url.path}")
            getattr(self.hub, route[0])(self, route[1])
        except HubError as error:
            self.error(error.status, error.code, error.message, error.commit, error.extra)
        except Exception as exc:  # a server bug: answer it (not a dropped connection the client would retry)
            self.hub.errors.append(traceback.format_exc())
            self.error(500, None, f"loopback Hub bug: {exc!r}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (httpx streams file uploads of unknown length chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self) -> dict:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "The request body is not JSON") from None
        if not isinstance(data, dict):
            raise HubError(400, "The request body must be a JSON object")
        return data

    def query_flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.record.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def error(
        self, status: int, code: str | None, message: str, commit: str | None = None, extra: dict | None = None
    ) -> None:
        """An error the client maps from headers: X-Error-Code (RepoNotFound, ...), X-Repo-Commit for .no_exist."""
        one_line = " ".join(message.split()).encode("latin-1", "replace").decode("latin-1")  # header-safe
        headers = {"X-Error-Message": one_line}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self.send_json({"error": message, **(extra or {})}, status, headers)

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass
