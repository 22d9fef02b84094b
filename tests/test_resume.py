"""Resume and failure (#14): a build killed hard, stopped between its renames, or failing in one member's eval or
profile stage is finished by running the same command again; the result equals a clean build, family.json stays
consistent, and nothing that succeeded is done twice."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from support.tiny_tasks import suite_file
from test_cli import assert_clean_error, invoke

from hubprune import files as files_module
from hubprune.errors import SourceError
from hubprune.measure import evaluate as evaluate_module
from hubprune.measure import profile as profile_module
from hubprune.pruning import family as build_module
from hubprune.pruning import gguf as gguf_module
from hubprune.pruning.gguf import DEFAULT_INSTALL, embedded_default

FAST_PROFILE = ("--batch-sizes", "1", "--prompt-tokens", "6", "--new-tokens", "3", "--min-seconds", "0")
FAST_PROFILE += ("--rounds", "1", "--energy", "off")
PRUNE_ONLY = ("--skip-eval", "--skip-profile", "--criterion", "maw", "--recover", "none")  # weights alone
A, B = "src-llama0-er1.5", "src-llama0-er1"  # the members of sizes 48 and 32 of the tiny llama


def assert_stage_failed(result, *fragments):
    """Exit status 1 and one error line, the last, after the progress lines of the stages that ran."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert "Traceback" not in result.output


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: its modification time and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def finished_results(family: Path) -> dict[str, dict[str, tuple[int, bytes]]]:
    """The results of the base and of member A, which the failing runs below finish: what a rerun must not touch."""
    return {name: snapshot(family / folder) for name, folder in (("base", "base-results"), (A, f"{A}/results"))}


def assert_a_rerun_redoes_only_b(args, family: Path, models_run: list[str], stage: str) -> None:
    """The same command again, its failure gone: only member B goes through `stage` (`models_run` records the
    models it runs), what the first run finished keeps its bytes and mtimes, and B ends done like A."""
    kept = finished_results(family)
    models_run.clear()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert models_run == [B], f"a model the first run finished went through {stage} again"
    assert finished_results(family) == kept
    assert member_stage(family, B, stage) == member_stage(family, A, stage)  # done, the failure forgotten
    assert member_stage(family, B, stage)["status"] == "done"


def member_files(family: Path) -> dict[str, bytes]:
    """The bytes of what the prune stage writes into each member (the cards are rendered later)."""
    members = json.loads((family / "family.json").read_text())["members"]
    return {
        f"{m['path']}/{p.name}": p.read_bytes()
        for m in members
        for p in sorted((family / m["path"]).iterdir())
        if p.is_file() and p.name != "README.md"
    }


def prune_statuses(family: Path) -> list[tuple[str, str]]:
    return [
        (m["name"], m["stages"]["prune"]["status"]) for m in json.loads((family / "family.json").read_text())["members"]
    ]


@pytest.fixture(scope="module")
def clean(tiny_dir, tmp_path_factory) -> Path:
    """The family of sizes 48 and 32 built in one uninterrupted run: what every resumed build must equal."""
    family = tmp_path_factory.mktemp("clean") / "fam"
    assert invoke("build-family", *PRUNE_ONLY, tiny_dir("llama"), "-o", family, "--sizes", "48,32").exit_code == 0
    return family


# --- 1. a hard kill ----------------------------------------------------------------------------------------------

KILLED_MID_WRITE = """
import os, signal, sys
from hubprune.pruning import family

real_pass = family.prune_pass

def killed_half_way(*args, **kwargs):
    def on_progress(event):
        if event.done > event.total / 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no except, no finally: as the OOM killer or a power cut
    kwargs["on_progress"] = on_progress
    return real_pass(*args, **kwargs)

family.prune_pass = killed_half_way
from hubprune.cli import main
main(sys.argv[1:])
"""


def test_a_build_killed_while_writing_is_finished_by_the_rerun_and_equals_a_clean_build(tiny_dir, tmp_path, clean):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_MID_WRITE)
    args = ["build-family", *PRUNE_ONLY, str(source), "-o", str(family), "--sizes", "48,32"]
    killed = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    partials = sorted(p.name for p in family.glob(".partial-*"))
    assert len(partials) == 2 and all(any((family / p).iterdir()) for p in partials)  # half-written members
    assert prune_statuses(family) == [(A, "pending"), (B, "pending")]

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert not list(family.glob(".partial-*"))
    assert prune_statuses(family) == [(A, "done"), (B, "done")]
    assert member_files(family) == member_files(clean)


def test_a_build_killed_while_first_writing_family_json_resumes_without_force(tiny_dir, tmp_path, clean):
    """Killed between family.json's temporary file and its rename, a new family folder holds only that temporary
    file: it is the build's own leftover, not someone else's files that need --force."""
    family = tmp_path / "fam"
    family.mkdir()
    (family / ".family.json.tmp").write_text('{"format": 1, "hubprune_ver')
    result = invoke("build-family", *PRUNE_ONLY, tiny_dir("llama"), "-o", family, "--sizes", "48,32")
    assert result.exit_code == 0, result.output
    assert prune_statuses(family) == [(A, "done"), (B, "done")]
    assert member_files(family) == member_files(clean)


# --- 2. a stop between the renames -------------------------------------------------------------------------------


def test_a_stop_after_a_member_is_renamed_but_before_family_json_records_it(tiny_dir, tmp_path, monkeypatch, clean):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    real_save, saves = build_module.manifest.save, []

    def stop_at_the_second_save(*args, **kwargs):  # the first save lists the members pending; the second, after
        saves.append(1)  # the first rename, records the first member done
        if len(saves) == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(build_module.manifest, "save", stop_at_the_second_save)
    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 130 and "run the same command again" in result.output
    assert (family / A / "hubprune.json").exists()  # renamed into place...
    assert prune_statuses(family) == [(A, "pending"), (B, "pending")]  # ...not recorded
    assert sorted(p.name for p in family.iterdir()) == ["family.json", A]  # no partial folder kept
    monkeypatch.setattr(build_module.manifest, "save", real_save)

    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 0, result.output
    assert prune_statuses(family) == [(A, "done"), (B, "done")]
    assert member_files(family) == member_files(clean)
    assert sorted(p.name for p in family.iterdir()) == ["README.md", "family.json", B, A]  # nothing twice


def test_a_stop_at_the_second_rename_keeps_the_first_member_and_builds_the_second(
    tiny_dir, tmp_path, monkeypatch, clean
):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    real_rename, renames = Path.rename, []

    def stop_at_the_second_rename(self, target):
        if self.name.startswith(build_module.PARTIAL_PREFIX):
            renames.append(self.name)
            if len(renames) == 2:
                raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", stop_at_the_second_rename)
    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 130
    assert prune_statuses(family) == [(A, "done"), (B, "pending")]
    assert sorted(p.name for p in family.iterdir()) == ["family.json", A]
    first = snapshot(family / A)
    monkeypatch.setattr(Path, "rename", real_rename)

    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 0, result.output
    assert prune_statuses(family) == [(A, "done"), (B, "done")]
    assert {k: v for k, v in snapshot(family / A).items() if k != "README.md"} == {
        k: v for k, v in first.items() if k != "README.md"
    }, "the member finished before the stop was written again"
    assert member_files(family) == member_files(clean)


def test_a_stop_inside_the_atomic_write_of_family_json_leaves_the_old_manifest(tiny_dir, tmp_path, monkeypatch, clean):
    """Stopped between family.json's temporary file and its rename: the old manifest stands, no temporary file is
    left behind, and the rerun finishes."""
    source, family = tiny_dir("llama"), tmp_path / "fam"
    real_replace, replaces = os.replace, []

    def stop_at_the_second_manifest_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "family.json":
            replaces.append(dst)
            if len(replaces) == 2:
                raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "replace", stop_at_the_second_manifest_replace)
    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 130
    monkeypatch.setattr(files_module.os, "replace", real_replace)
    assert prune_statuses(family) == [(A, "pending"), (B, "pending")]
    assert not list(family.glob(".*"))  # neither a temporary manifest nor a partial member

    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--sizes", "48,32")
    assert result.exit_code == 0, result.output
    assert prune_statuses(family) == [(A, "done"), (B, "done")]
    assert member_files(family) == member_files(clean)


# --- 3. a stage that fails for one member ------------------------------------------------------------------------


def member_stage(family: Path, name: str, stage: str) -> dict:
    members = json.loads((family / "family.json").read_text())["members"]
    return next(m for m in members if m["name"] == name)["stages"].get(stage, {})


def test_an_eval_that_fails_for_one_member_is_recorded_and_only_that_member_is_redone(
    tiny_dir, task_dir, tmp_path, monkeypatch
):
    family = tmp_path / "fam"
    suite = suite_file(tmp_path, '{task: tiny_ppl, num_fewshot: 0, metric: "word_perplexity,none"}')
    args = ["build-family", "--skip-profile", tiny_dir("llama"), "-o", family, "--sizes", "48,32"]
    args += ["--suite", suite, "--include-path", task_dir, "--limit", "2", "--batch-size", "1"]
    real_load, real_run, loads, failing = evaluate_module._load_model, evaluate_module._run_lm_eval, [], [B]

    def load(folder, *rest):
        loads.append(Path(folder).name)
        return real_load(folder, *rest)

    def run(*args, **kwargs):
        if loads[-1] in failing:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB\n(a second line of detail)")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_load_model", load)
    monkeypatch.setattr(evaluate_module, "_run_lm_eval", run)
    assert_stage_failed(invoke(*args), f"eval of member {B} failed", "RuntimeError: CUDA out of memory", "run the same")
    assert loads == ["src-llama0", A, B]
    assert member_stage(family, A, "eval")["status"] == "done"
    failed = member_stage(family, B, "eval")
    assert (
        failed["status"] == "failed"
        and failed["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB"
    )
    assert not (family / "README.md").exists()  # the stages after eval did not run
    failing.clear()
    assert_a_rerun_redoes_only_b(args, family, loads, "eval")
    assert json.loads((family / B / "results" / "eval.json").read_text())["tasks"]["tiny_ppl"]["value"] > 1


def test_a_profile_that_fails_for_one_member_is_recorded_and_only_that_member_is_redone(
    tiny_dir, tmp_path, monkeypatch
):
    family = tmp_path / "fam"
    args = ["build-family", "--skip-eval", tiny_dir("llama"), "-o", family, "--sizes", "48,32", *FAST_PROFILE]
    measured, failing = [], [B]

    def run(command, **kwargs):
        """The fresh process of each measurement, run in this one (importing torch anew takes seconds); the
        failing one's process dies as an out-of-memory process does."""
        folder = Path(json.loads(Path(command[-2]).read_text())["folder"]).name
        measured.append(folder)
        if folder in failing:
            command = [sys.executable, "-c", "import sys; sys.exit('torch.OutOfMemoryError: CPU out of memory')"]
            return subprocess.run(command, **kwargs)
        return subprocess.CompletedProcess(command, profile_module._child_main(command[-2:]), "", "")

    monkeypatch.setattr(profile_module, "subprocess", types.SimpleNamespace(run=run))
    assert_stage_failed(
        invoke(*args), f"profile of member {B} failed", "exited with status 1: torch.OutOfMemoryError", "run the same"
    )
    assert measured == ["src-llama0", A, B]
    assert member_stage(family, A, "profile")["status"] == "done"
    assert member_stage(family, B, "profile") == {
        "status": "failed",
        "error": "its process exited with status 1: torch.OutOfMemoryError: CPU out of memory",
    }
    assert not (family / B / "results" / "profile.json").exists()
    failing.clear()
    assert_a_rerun_redoes_only_b(args, family, measured, "profile")
    assert json.loads((family / B / "results" / "profile.json").read_text())["status"] == "done"


# --- 4. the GGUF conversion cache --------------------------------------------------------------------------------

try:
    DEFAULT_GGUF = embedded_default()
except SourceError:
    DEFAULT_GGUF = None


@pytest.mark.skipif(DEFAULT_GGUF is None, reason=f"embedded default not installed: {DEFAULT_INSTALL}")
def test_the_second_build_from_the_default_gguf_reuses_the_conversion(tiny_dir, tmp_path, monkeypatch):
    """The embedded default's GGUF is converted once into the cache; the next build reads the cache. Loading the
    real 135M model takes most of a minute here, so transformers' GGUF loader hands back the tiny llama instead:
    the conversion around it (cache folder, partial folder, provenance, rename) is hubprune's own and runs."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, tiny = tmp_path / "cache", tiny_dir("llama")
    monkeypatch.setenv("HUBPRUNE_CACHE", str(cache))
    loaded = []
    for auto in (AutoModelForCausalLM, AutoTokenizer):

        def from_tiny(cls, folder, *, gguf_file, real=auto.from_pretrained, **kwargs):
            assert Path(folder, gguf_file) == DEFAULT_GGUF
            loaded.append(cls.__name__)
            return real(tiny, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(from_tiny))
    # gguf's reader parses all 49k vocabulary entries in Python (seconds) for the two fields hubprune reads
    # (file type, licence): parse the file once in this test
    read_once = functools.lru_cache(maxsize=1)(gguf.GGUFReader)
    monkeypatch.setattr(gguf, "GGUFReader", lambda path: read_once(str(path)))
    stale = cache / "gguf" / "0123.partial"  # a conversion killed long ago (another file's): left alone
    stale.mkdir(parents=True)
    first = tmp_path / "first"
    assert invoke("build-family", *PRUNE_ONLY, "-o", first, "--sizes", "48").exit_code == 0
    assert loaded == ["AutoTokenizer", "AutoModelForCausalLM"]
    converted = cache / "gguf" / gguf_module.sha256_of(DEFAULT_GGUF)
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == ["0123.partial", converted.name]
    cached = snapshot(converted)

    def no_second_conversion(*args):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(gguf_module, "_convert", no_second_conversion)
    second = tmp_path / "second"
    result = invoke("build-family", *PRUNE_ONLY, "-o", second, "--sizes", "48")
    assert result.exit_code == 0, result.output
    assert snapshot(converted) == cached  # read, not rewritten
    assert member_files(second) == member_files(first)
    manifests = [json.loads((f / "family.json").read_text()) for f in (first, second)]
    assert manifests[0]["source"] == manifests[1]["source"]
    assert manifests[0]["source"]["origin"]["file"] == DEFAULT_GGUF.name
    assert manifests[0]["source"]["folder"] == str(converted)


# --- 5. --multiple-of end to end ---------------------------------------------------------------------------------


def test_multiple_of_rounds_every_member_is_recorded_and_cannot_change_on_a_rerun(tiny_dir, tmp_path):
    source, family = tiny_dir("llama"), tmp_path / "fam"
    result = invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--pcts", "10,30,60", "--multiple-of", "8")
    assert result.exit_code == 0, result.output
    manifest = json.loads((family / "family.json").read_text())
    assert manifest["multiple_of"] == 8
    widths = [m["intermediate_size"] for m in manifest["members"]]
    assert widths == [56, 48, 24]  # 57.6, 44.8 and 25.6 rounded to the nearest multiple of 8
    for member in manifest["members"]:
        folder = family / member["path"]
        provenance = json.loads((folder / "hubprune.json").read_text())
        assert provenance["multiple_of"] == 8
        assert provenance["intermediate_size"]["pruned"] == member["intermediate_size"]
        assert json.loads((folder / "config.json").read_text())["intermediate_size"] == member["intermediate_size"]
    before = snapshot(family)

    for other in (["--multiple-of", "16"], []):
        assert_clean_error(
            invoke("build-family", *PRUNE_ONLY, source, "-o", family, "--pcts", "10,30,60", *other),
            "multiple-of 8",
            "--multiple-of 8",
        )
        assert snapshot(family) == before
