"""Publishing: every member of a family becomes a Hub repo (one commit per member) and the family a collection.

Through huggingface_hub's HfApi. Its upload_folder compares each file with what the repo already holds and
sends only what changed, and makes no commit when nothing did, so pushing again is cheap and pushing an
unchanged family changes nothing. huggingface_hub retries its upload requests itself, but not repo creation,
commits or collection calls: those are retried here, with backoff, on 429, 5xx and lost connections.

The token comes from HF_TOKEN or the huggingface_hub login. It is passed to HfApi and nowhere else, and every
message this module raises is scrubbed of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hubprune import manifest
from hubprune._version import __version__
from hubprune.errors import HubpruneError, PushError
from hubprune.export.gguf_metadata import metadata_text
from hubprune.fields import REQUIRED, setting
from hubprune.local_paths import machine_names_in, machine_names_in_folder, machine_needles
from hubprune.measure.base_model import base_label
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.pruning.checkpoint import open_checkpoint
from hubprune.pruning.gguf import cache_root
from hubprune.publish.cards import STAGE as CARD_STAGE
from hubprune.publish.cards import CardOutcome, CardSettings, render_cards
from hubprune.publish.formatting import change_text, fraction_tasks, params_text, score_text
from hubprune.publish.licence import CARD_FILE, front_matter
from hubprune.publish.plots import PLOTS_DIR
from hubprune.publish.results import collect_results

STAGE = "push"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Files never published: the writers' temporary files (hidden dot-files).
IGNORE_PATTERNS = [".*", "**/.*"]
COLLECTION_TITLE_LIMIT = 60  # the Hub's limit on a collection title
NOTE_LIMIT = 500  # ... and on an item's note
BINARY = frozenset({".safetensors", ".png", ".gguf", ".bin"})  # files never read for local paths
T = TypeVar("T")


@dataclass(frozen=True)
class PushSettings:
    namespace: str = setting(REQUIRED, "Hub user or organisation to publish under: repos NS/<member>.")
    private: bool = setting(False, "Make the repos (existing ones too) and a new collection private.")
    collection: str | None = setting(
        None, "Title of the family's collection (default: '<base> width-pruned family')."
    )  # None: "<base> width-pruned family"
    make_collection: bool = setting(True, "Publish the repos without a collection.", flag="--no-collection")
    members: tuple[str, ...] = setting((), "Only these members, comma-separated names.", parse="list")
    revision: str | None = setting(
        None, "Branch to commit to, created if missing (default: the repo's default branch)."
    )
    commit_message: str | None = setting(None, "Message of each member's commit.")
    force: bool = setting(False, "Overwrite repos that exist and were not made by hubprune.")
    dry_run: bool = setting(False, "Print what would be created and uploaded; no network.")
    retries: int = 5  # tries of each call that the client does not retry itself
    backoff_s: float = 1.0  # first wait between tries, doubled each time (a 429's Retry-After wins)

    def __post_init__(self) -> None:
        if self.collection and not self.make_collection:
            raise PushError("give `collection` TITLE or `no_collection`, not both")


@dataclass(frozen=True)
class FileUpload:
    path: str  # relative to the member folder
    size: int


@dataclass(frozen=True)
class MemberPush:
    name: str
    repo_id: str
    status: str  # "pushed" (a new commit), "unchanged" (no commit needed), "planned" (dry run)
    files: tuple[FileUpload, ...]
    commit: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class PushOutcome:
    members: tuple[MemberPush, ...]
    skipped: tuple[tuple[str, str], ...]  # (member, why it was not pushed)
    collection_title: str | None
    collection_url: str | None
    dry_run: bool
    collection_items: tuple[tuple[str, str], ...] = ()  # (repo id, note) in order, reported by a dry run
    cards_rendered: bool = False  # a dry run: the cards would be rendered again for this namespace


def push_family(
    family_dir: Path, settings: PushSettings, *, on_progress: ProgressCallback | None = None
) -> PushOutcome:
    """Publish the family's members as NS/<member> repos and, unless asked not to, one collection of them.

    Everything that can be checked without the network is checked before the first request (the members named,
    each member's files, its card and licence), then every repo is checked before the first write. A dry run
    stops before the network and reports what would be sent.
    """
    family_dir = Path(family_dir)
    family = manifest.open_family(family_dir, PushError)
    chosen, skipped = _select(family_dir, family, settings.members)
    title = _collection_title(family, settings)
    # The cards name the repos: render them again when they were made for another namespace, or never.
    stale = any(
        m.stages.get(CARD_STAGE, {}).get("namespace") != settings.namespace
        or not (family_dir / m.path / CARD_FILE).exists()
        for m in chosen
    )
    cards = render_cards(family_dir, CardSettings(namespace=settings.namespace), write=False) if stale else None
    _check_licence(family_dir, chosen[0], cards)
    needles = _machine_needles(family_dir, family)
    for member in chosen:  # cards about to be rendered again are checked once they are (below)
        _check_no_machine_names(family_dir, member, needles, cards=False)
        if cards is None:
            _check_no_machine_names(family_dir, member, needles, cards=True)
    if settings.dry_run:
        planned = tuple(_plan(family_dir, m, settings.namespace, "planned", cards) for m in chosen)
        items = tuple(_collection_items(family_dir, family, chosen, settings.namespace)) if title else ()
        return PushOutcome(planned, tuple(skipped), title, None, True, items, cards is not None)
    token = _token()
    client = _Client(_api(token), token, settings)
    for member in chosen:  # every repo checked before the first write: a refusal publishes nothing
        client.check_owner(f"{settings.namespace}/{member.name}")
    if cards is not None:
        render_cards(family_dir, CardSettings(namespace=settings.namespace))
        family = manifest.load(family_dir)
        chosen = [family.member(m.name) for m in chosen]  # type: ignore[misc]
        for member in chosen:
            _check_no_machine_names(family_dir, member, needles, cards=True)
    pushed: list[MemberPush] = []
    try:
        for index, member in enumerate(chosen, 1):
            message = f"[push] {index}/{len(chosen)} {settings.namespace}/{member.name}"
            report(on_progress, Progress(STAGE, message, member.name, index, len(chosen)))
            result = client.push_member(family_dir, member, _commit_message(member, settings))
            manifest.record_stage(
                family_dir,
                member.name,
                STAGE,
                status="done",
                repo_id=result.repo_id,
                commit=result.commit,
                url=result.url,
                revision=settings.revision,
            )
            pushed.append(result)
        url = None
        if title is not None:
            report(on_progress, Progress(STAGE, f"[push] collection {title!r}"))
            family = manifest.load(family_dir)
            items = _collection_items(family_dir, family, chosen, settings.namespace)
            url = client.collection(title, _collection_description(family), items)
            manifest.save(replace(family, card={**family.card, "collection": {"title": title, "url": url}}), family_dir)
    except PushError as exc:
        done = ", ".join(p.repo_id for p in pushed) or "nothing"
        missing = [f"{settings.namespace}/{m.name}" for m in chosen[len(pushed) :]]
        if title is not None:  # the collection is made or updated once every member is pushed
            missing.append("the collection")
        left = ", ".join(missing) or "nothing"
        raise PushError(
            f"{exc}; published: {done}; not published: {left}. Run the same command again to finish"
        ) from None
    return PushOutcome(tuple(pushed), tuple(skipped), title, url, False)


# --- checks before any request ----------------------------------------------------------------------------------


def _select(
    family_dir: Path, family: manifest.Family, names: tuple[str, ...]
) -> tuple[list[manifest.MemberRecord], list[tuple[str, str]]]:
    """The members to push, widest first, and those left out with the reason."""
    known = [m.name for m in family.members]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PushError(f"`members` names {', '.join(unknown)}, not in this family: choose from {', '.join(known)}")
    chosen, skipped = [], []
    for member in family.members:
        if names and member.name not in names:
            continue
        problem = _member_problem(family_dir, family, member)
        if problem:
            skipped.append((member.name, problem))
        else:
            chosen.append(member)
    if not chosen:
        reasons = "; ".join(f"{n}: {why}" for n, why in skipped) or "the family has no members"
        raise PushError(f"no member can be pushed ({reasons})")
    return chosen, skipped


def _member_problem(family_dir: Path, family: manifest.Family, member: manifest.MemberRecord) -> str | None:
    """Why this member must not be published, or None. The checkpoint is re-read, since files can change after
    the build verified them."""
    if member not in family.built_members():
        return "it was not built and verified (run build-family again)"
    folder = family_dir / member.path
    try:
        checkpoint = open_checkpoint(folder)
    except HubpruneError as exc:
        return f"its checkpoint no longer verifies ({exc})"
    width = checkpoint.config.get(
        "intermediate_size", checkpoint.config.get("text_config", {}).get("intermediate_size")
    )
    if width != member.intermediate_size:
        return f"its config.json says intermediate_size {width}, family.json {member.intermediate_size}"
    return None


def _check_licence(family_dir: Path, member: manifest.MemberRecord, cards: CardOutcome | None) -> None:
    """A family is not published without the licence its base requires (the cards declare it, or say unknown)."""
    if cards is not None:
        licence = cards.licence
    else:
        text = (family_dir / member.path / CARD_FILE).read_text(encoding="utf-8")
        licence = front_matter(text).get("license")
    if not licence:
        raise PushError(
            "the cards declare no licence (none was found for the base model): render the cards again with the base "
            "model's Hub licence id as `license` (e.g. hubprune card FAMILY --license apache-2.0), then push again"
        )


def _plan(
    family_dir: Path, member: manifest.MemberRecord, namespace: str, status: str, cards: CardOutcome | None = None
) -> MemberPush:
    """The files a push of this member sends (upload_folder skips those the repo already holds unchanged); with
    `cards`, the card and plots about to be rendered replace those on disk."""
    folder = family_dir / member.path
    sizes = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    if cards is not None:
        sizes = {
            path: size for path, size in sizes.items() if path != CARD_FILE and not path.startswith(f"{PLOTS_DIR}/")
        }
        sizes.update(cards.files.get(member.name, {}))
    files = tuple(FileUpload(path, sizes[path]) for path in sorted(sizes))
    return MemberPush(member.name, f"{namespace}/{member.name}", status, files)


def _machine_needles(family_dir: Path, family: manifest.Family) -> list[str]:
    folders = [family_dir, cache_root(), *filter(None, [family.source.folder])]
    if Path(family.source.id).expanduser().exists():  # a local source, not a Hub id
        folders.append(family.source.id)
    return machine_needles(folders)


def _check_no_machine_names(
    family_dir: Path, member: manifest.MemberRecord, needles: list[str], *, cards: bool
) -> None:
    """Refuse to publish a file of the member that names this machine: its card (with `cards`) or every other
    text file. Weights and plots are not read."""

    def wanted(relative: Path) -> bool:
        return (relative == Path(CARD_FILE)) == cards and relative.suffix not in BINARY

    found = machine_names_in_folder(family_dir / member.path, needles, wanted)
    if not found and not cards:  # a GGUF file is binary, but its metadata holds names and paths as text
        found = _machine_names_in_gguf(family_dir / member.path, needles)
    if found:
        raise PushError(
            f"{member.name}/{found[0]} names this machine ({found[1]!r}): nothing was sent; remove the local path "
            "from it (or rebuild with this hubprune, which records sources and results by name)"
        )


def _machine_names_in_gguf(folder: Path, needles: list[str]) -> tuple[Path, str] | None:
    for path in sorted(folder.glob("*.gguf")):
        needle = machine_names_in(metadata_text(path), needles)
        if needle:
            return path.relative_to(folder), needle
    return None


def _commit_message(member: manifest.MemberRecord, settings: PushSettings) -> str:
    if settings.commit_message:
        return settings.commit_message
    return f"hubprune {__version__}: {member.name} (expansion ratio {member.ratio:.2f}, MLP width {member.intermediate_size})"


def _collection_title(family: manifest.Family, settings: PushSettings) -> str | None:
    if not settings.make_collection:
        return None
    title = settings.collection or f"{base_label(family)} width-pruned family"
    if len(title) > COLLECTION_TITLE_LIMIT:
        if settings.collection:
            raise PushError(
                f"`collection` title is {len(title)} characters; the Hub allows {COLLECTION_TITLE_LIMIT}: shorten it"
            )
        title = title[: COLLECTION_TITLE_LIMIT - 1] + "…"
    return title


def _collection_description(family: manifest.Family) -> str:
    ratios = sorted(m.ratio for m in family.members)
    text = f"{base_label(family)} with a narrower MLP, expansion ratio {ratios[-1]:.2f} to {ratios[0]:.2f}, by hubprune"
    return text[:150]  # the Hub's limit on a collection description


def _collection_items(
    family_dir: Path, family: manifest.Family, chosen: list[manifest.MemberRecord], namespace: str
) -> list[tuple[str, str]]:
    """(repo id, note) of every member in the collection, widest first: those pushed now and those pushed to this
    namespace before (so pushing some members keeps the others' places). The note: ratio, width, parameters and
    the headline score's change, formatted as in the cards."""
    names = {m.name for m in chosen} | {
        m.name for m in family.members if m.stages.get(STAGE, {}).get("repo_id") == f"{namespace}/{m.name}"
    }
    base, results = collect_results(family_dir, family)
    measured = {r.name: r for r in results}
    fractions = fraction_tasks([base, *results])
    items = []
    for member in sorted((m for m in family.members if m.name in names), key=lambda m: -m.ratio):
        share = member.params_total / family.source.params_total * 100
        note = (
            f"Expansion ratio {member.ratio:.2f}, MLP width {member.intermediate_size}, "
            f"{params_text(member.params_total)} parameters ({share:.0f} % of the base)"
        )
        mine = measured.get(member.name)
        if mine is not None and mine.scores:
            score = next(iter(mine.scores.values()))  # the suite's first task: the headline score
            fraction = score.task in fractions
            note += f"; {score.task}: {score_text(score.value, fraction)}"
            reference = base.value(score.task)
            if reference is not None:
                note += f" ({change_text(score.value, reference, fraction)} vs the base)"
        items.append((f"{namespace}/{member.name}", note[:NOTE_LIMIT]))
    return items


# --- the network ------------------------------------------------------------------------------------------------


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def _api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="hubprune", library_version=__version__)


class _Client:
    """The calls push makes, each retried on transient failures, each error scrubbed of the token."""

    def __init__(self, api: Any, token: str, settings: PushSettings) -> None:
        self.api, self.token, self.settings = api, token, settings
        self.existing: dict[str, Any] = {}  # repo id -> its model_info, for the repos that exist already

    def check_owner(self, repo_id: str) -> None:
        """Refuse a repo that exists and was not made by hubprune (no hubprune.json), unless --force."""
        info = self._call(f"read {repo_id}", lambda: self.api.model_info(repo_id), missing_ok=True)
        if info is None:
            return
        self.existing[repo_id] = info
        files = {s.rfilename for s in info.siblings or []}
        if files - {".gitattributes"} and "hubprune.json" not in files and not self.settings.force:
            raise PushError(
                f"{repo_id} already exists and was not made by hubprune (it has no hubprune.json): push to another "
                "`namespace`, or pass `force` to overwrite it"
            )

    def push_member(self, family_dir: Path, member: manifest.MemberRecord, message: str) -> MemberPush:
        """One commit with the member's folder as it is: new and changed files sent, files gone from the folder
        deleted from the repo (a stale shard would otherwise stay beside a new index), .gitattributes kept."""
        settings = self.settings
        repo_id = f"{settings.namespace}/{member.name}"
        existing = self.existing.get(repo_id)
        if existing is None:
            self._call(
                f"create {repo_id}",
                lambda: self.api.create_repo(repo_id, private=settings.private, exist_ok=True, repo_type="model"),
            )
        elif settings.private and not existing.private:  # --private means private, for repos made before too
            self._call(f"make {repo_id} private", lambda: self.api.update_repo_settings(repo_id, private=True))
        if settings.revision:
            self._call(
                f"create branch {settings.revision} of {repo_id}",
                lambda: self.api.create_branch(repo_id, branch=settings.revision, exist_ok=True),
            )
        before = self._head(repo_id)
        planned = _plan(family_dir, member, settings.namespace, "pushed")
        info = self._call(
            f"upload {repo_id}",
            lambda: self.api.upload_folder(
                repo_id=repo_id,
                folder_path=family_dir / member.path,
                commit_message=message,
                revision=settings.revision,
                ignore_patterns=IGNORE_PATTERNS,
                delete_patterns=["*"],
            ),
        )
        if info.oid == before:  # upload_folder found nothing to change and made no commit
            return replace(planned, status="unchanged", files=(), commit=info.oid, url=f"{self.api.endpoint}/{repo_id}")
        return replace(planned, commit=info.oid, url=f"{self.api.endpoint}/{repo_id}")

    def collection(self, title: str, description: str, items: list[tuple[str, str]]) -> str:
        """Create the collection if missing, add what it lacks, fix notes and order; touch nothing already right."""
        settings = self.settings
        found = self._call(
            f"create collection {title!r}",
            lambda: self.api.create_collection(
                title, namespace=settings.namespace, description=description, private=settings.private, exists_ok=True
            ),
        )
        slug = found.slug
        current = {item.item_id for item in found.items}
        for repo_id, note in items:
            if repo_id not in current:
                self._call(
                    f"add {repo_id} to the collection",
                    lambda repo_id=repo_id, note=note: self.api.add_collection_item(
                        slug, item_id=repo_id, item_type="model", note=note, exists_ok=True
                    ),
                )
        collection = self._call("read the collection", lambda: self.api.get_collection(slug))
        by_id = {item.item_id: item for item in collection.items}
        for position, (repo_id, note) in enumerate(items):
            item = by_id[repo_id]
            changes: dict[str, Any] = {}
            if item.note != note:
                changes["note"] = note
            if item.position != position:
                changes["position"] = position
            if changes:
                self._call(
                    f"update {repo_id} in the collection",
                    lambda item=item, changes=changes: self.api.update_collection_item(
                        slug, item.item_object_id, **changes
                    ),
                )
        return collection.url

    def _head(self, repo_id: str) -> str | None:
        info = self._call(
            f"read {repo_id}", lambda: self.api.model_info(repo_id, revision=self.settings.revision), missing_ok=True
        )
        return None if info is None else info.sha

    def _call(self, what: str, call: Callable[[], T], *, missing_ok: bool = False) -> T:
        """Run `call`, retrying transient failures (429, 5xx, lost connections) with exponential backoff; raise
        PushError when one keeps failing or a call fails for good. With missing_ok, a 404 returns None."""
        from huggingface_hub.errors import OfflineModeIsEnabled

        wait = self.settings.backoff_s
        for attempt in range(1, self.settings.retries + 1):
            try:
                return call()
            except OfflineModeIsEnabled:
                raise PushError("HF_HUB_OFFLINE=1 forbids network access: unset it to push") from None
            except Exception as exc:  # noqa: BLE001 - sorted below; anything else is a bug and re-raised
                http, transport = _http_error(exc), _transport_error(exc)
                if http is None and transport is None:
                    raise
                status = http.response.status_code if http is not None and http.response is not None else None
                if missing_ok and status == 404:
                    return None  # type: ignore[return-value]
                final = attempt == self.settings.retries
                if http is not None and (status not in RETRY_STATUSES or final):
                    raise PushError(self._scrub(f"{what} failed: {_describe(http)}")) from None
                if http is None and final:
                    raise PushError(
                        self._scrub(f"{what} failed: the Hub did not answer after {attempt} tries ({_describe(exc)})")
                    ) from None
                delay = (_retry_after(http) if http is not None else None) or wait
            time.sleep(delay)
            wait *= 2
        raise AssertionError("unreachable")

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from: huggingface_hub wraps a failed LFS upload in a RuntimeError."""
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return found


def _http_error(exc: BaseException) -> Any:
    from huggingface_hub.errors import HfHubHTTPError

    return next((e for e in _causes(exc) if isinstance(e, HfHubHTTPError)), None)


def _transport_error(exc: BaseException) -> BaseException | None:
    import httpx2

    return next((e for e in _causes(exc) if isinstance(e, (httpx2.TransportError, ConnectionError))), None)


def _retry_after(exc: Any) -> float | None:
    value = exc.response.headers.get("Retry-After") if exc.response is not None else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    """One line: the error's first line and, for the Hub's errors, the reason the server gave."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    reason = getattr(exc, "server_message", None)
    if reason and reason.strip() and reason.strip() not in text:
        text += f" ({' '.join(reason.split())})"
    return text
