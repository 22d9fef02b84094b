"""Nothing `push` sends names the builder's machine.

The job runs as a user would run it, on a machine whose host name and user name the test sets (the real ones may
be too short to tell from ordinary words): a home folder /…/HOST/home/USER, with every input in a project folder
under it (the source as a folder, a GGUF file or a Hub repo, the calibration and distillation texts, the tasks,
the caches). Every byte push sends to the loopback Hub is read: each request as it arrives on the wire (path,
headers, body, and the files a commit carries inside its body), and what the Hub then holds (every commit's files,
message and description, the collection's title, description and item notes)."""

from __future__ import annotations

import base64
import getpass
import json
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import hub_server
from support.hub_server import HubServer, point_client_at
from support.tiny_gguf import write_tiny_gguf
from support.tiny_models import build_tiny
from support.tiny_tasks import ALL_THREE, suite_file
from test_data_criteria import words

from hubprune.cli import main
from hubprune.publish import push as push_module

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

HOST = "buildbox-7f3a"  # socket.gethostname() on the builder's machine
USER = "alice-7f3a"  # getpass.getuser() there
PROJECT = "Private-Project-7f3a"  # the folder the user keeps the job in
REAL_HOME, REAL_USER, REAL_CWD = Path.home(), getpass.getuser(), Path.cwd()  # this machine's, before any patching
NS = "acme"
HUB_SOURCE = f"{NS}/Tiny-Llama"
KINDS = ("folder", "gguf", "hub")
# profile's results are pushed from test_push.py's measured family (its leak test); leaving the stage out here keeps
# this fixture to half a minute
FOLDER_STAGES = ("--recover", "refit+distill", "--skip-profile")
OTHER_STAGES = ("--recover", "distill", "--tasks", "tiny_ppl", "--skip-profile")


def on_the_builders_machine(patch: pytest.MonkeyPatch, home: Path) -> None:
    """Make this process look like the builder's machine: its host name, its user, its home folder (where the
    caches default to)."""
    patch.setattr(socket, "gethostname", lambda: HOST)
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        patch.setenv(name, USER)
    patch.setenv("HOME", str(home))
    patch.delenv("XDG_CACHE_HOME", raising=False)
    patch.delenv("HUBPRUNE_CACHE", raising=False)


@dataclass(frozen=True)
class Machine:
    home: Path
    project: Path
    families: dict[str, Path]


@pytest.fixture(scope="module")
def machine(tmp_path_factory, task_dir) -> Machine:
    """Three families of one member each, built from the command line and carded for NS: from a local folder, from
    a GGUF file and from a Hub repo (on a loopback Hub of this fixture's own). Each: the activation criterion on a
    calibration file, distillation on a distillation file, eval on a tiny local task; the folder's also refit and
    a second task (those records do not depend on the source)."""
    home = tmp_path_factory.mktemp("machine") / HOST / "home" / USER
    project = home / PROJECT
    folder = build_tiny(project / "models" / "Tiny-Llama", "llama")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny-Llama\n")
    # converted from the local folder, as the file's naming keys say (llama.cpp's converter records such keys):
    # the members' GGUF files describe the member instead
    where = {"general.source.url": str(folder)}
    gguf = write_tiny_gguf(project / "models" / "gguf" / "Tiny-Llama.F32.gguf", folder, strings=where)
    texts = project / "texts"
    texts.mkdir()
    (texts / "calibration.txt").write_text(words(5, 1600))
    (texts / "distill.txt").write_text(words(6, 1600))
    tasks = Path(shutil.copytree(task_dir, project / "tasks"))
    for task in tasks.glob("*.yaml"):  # the task files name their data where it now lies
        task.write_text(task.read_text().replace(str(task_dir), str(tasks)))
    suite = suite_file(project, *ALL_THREE[:2])
    families = {}
    with pytest.MonkeyPatch.context() as patch, HubServer(username="tester", orgs=(NS,)) as hub:
        on_the_builders_machine(patch, home)
        point_client_at(hub, patch, home / ".cache" / "huggingface")
        hub.add_commit(HUB_SOURCE, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
        for kind, source in zip(KINDS, (str(folder), str(gguf), HUB_SOURCE)):
            families[kind] = project / "families" / kind
            # every stage once, on the folder; the stages whose records depend on the source, on the other two
            stages = FOLDER_STAGES if kind == "folder" else OTHER_STAGES
            if kind == "gguf":  # its metadata and tokenizer are copied from the source GGUF into the members'
                stages = (*stages, "--gguf", "f16")
            result = CliRunner().invoke(
                main,
                [
                    *("build-family", source, "-o", str(families[kind]), "--sizes", "48", "--namespace", NS),
                    *("--criterion", "activation", "--calibration", str(texts / "calibration.txt")),
                    *("--calibration-tokens", "1600", "--distill-text", str(texts / "distill.txt")),
                    *("--distill-tokens", "2048", "--suite", str(suite), "--include-path", str(tasks)),
                    *("--limit", "2", "--batch-size", "1", "--device", "cpu", *stages),
                ],
            )
            assert result.exit_code == 0, (kind, result.output)
            recorded = json.loads((families[kind] / "family.json").read_text())["source"]
            assert recorded["id"] == source  # as given: family.json stays on this machine
            assert (recorded["origin"] or {}).get("format") == ("gguf" if kind == "gguf" else None), recorded
        assert not hub.errors, hub.errors[0]
    return Machine(home, project, families)


@dataclass(frozen=True)
class Sent:
    what: str  # where it was found: "POST /api/models/acme/x/commit/main", "acme/x@sha:README.md", ...
    data: bytes


def record_the_wire(monkeypatch) -> list[Sent]:
    """Every request the loopback Hub receives from now on: its request line, headers and body."""
    sent: list[Sent] = []
    read_body = hub_server._Handler._read_body

    def recorded(handler) -> bytes:
        body = read_body(handler)
        line = f"{handler.command} {handler.path}"
        sent.append(Sent(line, f"{line}\n{handler.headers}".encode() + body))
        return body

    monkeypatch.setattr(hub_server._Handler, "_read_body", recorded)
    return sent


def inside_commits(sent: list[Sent]) -> list[Sent]:
    """The files that commit requests carry base64-encoded in their NDJSON bodies, decoded."""
    found = []
    for request in sent:
        if "/commit/" not in request.what:
            continue
        for line in request.data.split(b"\n"):
            if line.startswith(b"{"):
                entry = json.loads(line)
                if entry.get("key") == "file":
                    content = base64.b64decode(entry["value"]["content"])
                    found.append(Sent(f"{request.what} file {entry['value']['path']}", content))
    return found


def held_by_the_hub(hub: HubServer) -> list[Sent]:
    """Every file of every commit of every repo, each commit's message and description, and every collection's
    title, description and item notes."""
    found = []
    for repo in hub.repos.values():
        for commit in repo.commits.values():
            found.append(
                Sent(f"{repo.repo_id}@{commit.sha} message", f"{commit.message}\n{commit.description}".encode())
            )
            found += [Sent(f"{repo.repo_id}@{commit.sha}:{path}", blob.data) for path, blob in commit.files.items()]
    for collection in hub.collections.values():
        notes = "\n".join(item.note or "" for item in collection.items)
        found.append(
            Sent(f"collection {collection.slug}", f"{collection.title}\n{collection.description}\n{notes}".encode())
        )
    return found


def machine_names(machine: Machine, *others: Path) -> list[re.Pattern]:
    """What would name the builder's machine: its folders (as given and resolved), the host name, the user name
    (the builder's and this account's), the home folder (the builder's and this account's), the working folder."""
    folders = {machine.home, machine.home.resolve(), *others, *(p.resolve() for p in others)}
    texts = {str(f) for f in folders} | {PROJECT, HOST, USER, socket.gethostname(), getpass.getuser()}
    patterns = [re.compile(re.escape(t.encode())) for t in sorted(texts)]
    # this account's name and folders are short or common words: as whole names only
    for word in (REAL_USER,):
        patterns.append(re.compile(rb"(?<![\w.-])" + re.escape(word.encode()) + rb"(?![\w-])"))
    for folder in (REAL_HOME, REAL_CWD):
        patterns.append(re.compile(re.escape(str(folder).encode()) + rb"(?![\w.-])"))
    return patterns


def push(family: Path, *args: str):
    return CliRunner().invoke(main, ["push", str(family), "--namespace", NS, *args])


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_push_sends_names_the_builders_machine(kind, machine, hub, monkeypatch, tmp_path):
    """A family with calibration, distillation and eval results (and a refit from a folder), pushed:
    no request, file, commit message or collection text names a folder of the builder's machine, the
    user, the home folder or the host."""
    on_the_builders_machine(monkeypatch, machine.home)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setattr(push_module.time, "sleep", lambda seconds: None)
    family = machine.families[kind]
    [member] = [p for p in family.iterdir() if (p / "hubprune.json").exists()]
    provenance = json.loads((member / "hubprune.json").read_text())
    assert provenance["calibration"]["source"] == "calibration.txt"  # the names are published, not the paths
    assert provenance["distillation"]["data"]["source"] == "distill.txt"
    assert str(machine.project) in (family / "family.json").read_text()  # kept locally: resume needs the paths

    sent = record_the_wire(monkeypatch)
    result = push(family)
    assert result.exit_code == 0, result.output

    repo = f"{NS}/{member.name}"
    files = hub.files(repo)
    assert {"README.md", "hubprune.json", "results/eval.json", "results/lm_eval/tiny_ppl.json"} <= set(files)
    assert "results/profile.json" not in files  # profiled families are test_push.py's measured family
    assert (f"{member.name}-F16.gguf" in files) == (kind == "gguf")  # its metadata is read on the wire below
    [collection] = hub.collections.values()
    assert collection.description and [i.item_id for i in collection.items] == [repo] and collection.items[0].note
    assert any("/commit/" in s.what for s in sent) and any("collections" in s.what for s in sent)
    everything = [*sent, *inside_commits(sent), *held_by_the_hub(hub)]
    assert any(s.what.endswith(":results/eval.json") for s in everything)
    for pattern in machine_names(machine, tmp_path):
        for item in everything:
            found = pattern.search(item.data)
            assert found is None, (
                f"{item.what} names the builder's machine: {item.data[max(0, found.start() - 80) : found.end() + 40]!r}"
            )


def test_a_text_named_after_the_machine_stops_the_push(tiny_dir, tmp_path, hub, monkeypatch):
    """The calibration text is recorded by its name, and this one is named after the machine it lies on: push
    refuses to publish the host name (a whole word of a member's file) and sends nothing."""
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    source = Path(shutil.copytree(tiny_dir("llama"), tmp_path / "Tiny-Llama"))
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny-Llama\n")
    text = tmp_path / f"{HOST}.txt"
    text.write_text(words(5, 400))
    family = tmp_path / "family"
    args = ["build-family", str(source), "-o", str(family), "--sizes", "48", "--skip-eval", "--skip-profile"]
    built = CliRunner().invoke(
        main, [*args, "--criterion", "activation", "--recover", "none", "--calibration", str(text)]
    )
    assert built.exit_code == 0, built.output
    assert f'"source": "{HOST}.txt"' in (family / "Tiny-Llama-er1.5" / "hubprune.json").read_text()
    for extra in ((), ("--dry-run",)):
        result = push(family, *extra)
        assert result.exit_code == 1, result.output
        assert f"names this machine ('{HOST}')" in result.output and "nothing was sent" in result.output
    assert hub.requests == [] and not hub.repos
