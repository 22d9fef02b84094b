"""Efficiency profiling on tiny models: what is counted, how it is divided, and where it is written.

Nothing here asserts on wall-clock speed (house rule 9): only on counts, on the arithmetic between the raw
samples and the reported figures, and on the files and manifest entries a run leaves behind.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from support.tiny_models import HIDDEN, LAYERS, VOCAB, WIDTH

from hubprune import manifest
from hubprune.errors import EnergyError, HubpruneError, ProfileError, ProfileSettingsError
from hubprune.measure import energy as energy_module
from hubprune.measure.base_model import BASE_RESULTS
from hubprune.measure.efficiency import ProfileSettings, measure, parse_batch_sizes, percentile, resolved
from hubprune.measure.energy import EnergySource, open_energy
from hubprune.measure.profile import PROFILE_FILE, merge_rounds, profile_model, profile_path, round_share
from hubprune.pruning.family import PruneSettings, build_family
from hubprune.pruning.plan import Target
from hubprune.publish.results import ProfileView
from hubprune.recover.settings import RecoverySettings

FAST = dict(prompt_tokens=6, new_tokens=4, min_seconds=0.0, min_runs=3, warmup_runs=1, rounds=1)
NO_GPU = not torch.cuda.is_available()
RAPL_READABLE = any(p.is_file() for p in Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"))


class FakeCounter:
    """An energy counter that gains exactly 60 J between consecutive reads: enough to check how rounds add up
    and how a figure is labelled; which window the joules span is checked on a fake clock (test_profile_timing)."""

    def __init__(self) -> None:
        self.reads = 0

    def read_joules(self) -> float:
        self.reads += 1
        return 1000.0 + 60.0 * self.reads


def fake_energy(method: str = "measured") -> EnergySource:
    return EnergySource("fake", method, "a test counter", FakeCounter())


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        (dict(batch_sizes=(0,)), ProfileSettingsError, "batch size 0"),
        (dict(batch_sizes=(1, "8")), ProfileSettingsError, "batch size '8'"),
        (dict(batch_sizes=(True,)), ProfileSettingsError, "batch size True"),
        (dict(batch_sizes=()), ProfileSettingsError, "at least one"),
        (dict(batch_sizes=(2, 2)), ProfileSettingsError, "repeat"),
        (dict(new_tokens=1), ProfileSettingsError, "excludes the first token"),
        (dict(min_seconds=-1), ProfileSettingsError, "min seconds -1"),
        (dict(min_seconds="10"), ProfileSettingsError, "min seconds '10'"),
        (dict(dtype="int8"), ProfileSettingsError, "unknown dtype 'int8'"),
        (dict(device="tpu"), ProfileSettingsError, "unknown device 'tpu'"),
        (dict(energy="watts"), EnergyError, "unknown energy source 'watts'"),
        (dict(device="cpu", energy="nvml"), EnergyError, "nvml measures NVIDIA GPUs"),
    ],
)
def test_bad_settings_raise_one_clear_error(overrides, error, words):
    with pytest.raises(error) as info:
        resolved(ProfileSettings(**overrides))
    message = str(info.value)
    assert words in message and "\n" not in message
    assert isinstance(info.value, HubpruneError) and isinstance(info.value, ValueError)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_and_nvml_on_a_machine_without_a_gpu():
    with pytest.raises(ProfileSettingsError, match="device cuda requested but torch sees no CUDA GPU.*`device` cpu"):
        resolved(ProfileSettings(device="cuda"))
    with pytest.raises(EnergyError, match="nvml measures NVIDIA GPUs but the device is cpu"):
        resolved(ProfileSettings(device="auto", energy="nvml"))
    assert resolved(ProfileSettings()).device == "cpu"


@pytest.mark.skipif(RAPL_READABLE, reason="this machine exposes RAPL")
def test_rapl_asked_for_explicitly_without_rapl_is_an_error():
    with pytest.raises(EnergyError, match="`energy` rapl: no RAPL package counters"):
        resolved(ProfileSettings(device="cpu", energy="rapl"))


def test_parse_batch_sizes():
    assert parse_batch_sizes("1, 8") == (1, 8)
    with pytest.raises(ProfileSettingsError, match="'x' is not a whole number"):
        parse_batch_sizes("1,x")
    with pytest.raises(ProfileSettingsError, match="batch size 0"):
        parse_batch_sizes("0")
    with pytest.raises(ProfileSettingsError, match="'-2' is not a whole number"):
        parse_batch_sizes("-2")


def test_percentile_matches_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)  # position 3.6 between 4 and 5
    assert percentile([7.0], 90) == 7.0


# --- measuring ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tiny_dir):
    """One in-process profile of a tiny Llama at batch sizes 1 and 3, with a fake energy counter injected."""
    folder = tiny_dir("llama")
    settings = ProfileSettings(device="cpu", batch_sizes=(1, 3), energy="off", **FAST)
    return folder, settings, measure(folder, settings, energy=fake_energy())


def test_every_figure_is_there_with_its_unit_and_method(measured):
    folder, settings, document = measured
    assert document["status"] == "done" and document["format"] == 2
    model = document["model"]
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    assert model["params_total"]["value"] == sum(torch.Size(s).numel() for s in shapes.values())
    assert model["params_mlp"]["value"] == LAYERS * 3 * HIDDEN * WIDTH
    assert model["intermediate_size"] == WIDTH
    files = [p for p in folder.rglob("*") if p.is_file() and "results" not in p.relative_to(folder).parts]
    assert model["size_on_disk"]["value"] == sum(p.stat().st_size for p in files)
    assert model["load_time"]["value"] > 0 and model["load_time"]["unit"] == "s"
    for figure in (model["params_total"], model["size_on_disk"], model["load_time"]):
        assert figure["method"] in ("measured", "counted") and figure["how"]
    env = document["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["cpu_model"] and env["torch_threads"] >= 1 and env["hubprune"]
    assert [b["batch_size"] for b in document["batches"]] == [1, 3]
    for batch in document["batches"]:
        for key, unit in (("ttft", "s"), ("decode_throughput", "tokens/s"), ("e2e_latency", "s")):
            figure = batch[key]
            assert figure["unit"] == unit and figure["method"] == "measured"
            assert 0 < figure["median"] <= figure["p90"] <= max(figure["samples"])
        assert batch["peak_memory"]["unit"] == "bytes" and batch["peak_memory"]["value"] > 10 * 2**20
        assert batch["peak_rss_hwm"]["value"] >= batch["peak_memory"]["value"] * 0.9
        assert batch["timed_runs"] == len(batch["runs"]) >= settings.min_runs
        assert batch["other_cpu_load"]["unit"] == "CPUs" and batch["other_cpu_load"]["value"] >= 0
    assert json.loads(json.dumps(document)) == document  # plain JSON


def test_a_real_generate_streams_the_tokens_the_timing_tests_assume(measured):
    # test_profile_timing.py checks which moments each figure spans with a fake generate(); this checks that
    # transformers' generate() streams as that fake does: the prompt once, then one token per sequence per step.
    _, settings, document = measured
    new = settings.new_tokens
    for batch in document["batches"]:
        size = batch["batch_size"]
        for run in batch["runs"]:
            assert run["generated_tokens"] == size * new  # counted as the tokens arrived, not computed
            assert run["decode_tokens"] == size * (new - 1)  # the first token's latency is excluded
            assert 0 < run["ttft_s"] < run["e2e_s"]
        assert batch["energy_per_token"]["tokens"] == sum(r["generated_tokens"] for r in batch["runs"])
    assert [h.decode_tokens_per_s for h in ProfileView.from_document(document).batches] == [
        b["decode_throughput"]["median"] for b in document["batches"]
    ]


def test_an_estimated_source_stays_labelled_an_estimate(tiny_dir):
    settings = ProfileSettings(device="cpu", batch_sizes=(2,), energy="off", **FAST)
    document = measure(tiny_dir("llama"), settings, energy=fake_energy("estimated"))
    assert document["batches"][0]["energy_per_token"]["method"] == "estimated"
    assert document["energy"]["method"] == "estimated"


@pytest.mark.skipif(RAPL_READABLE or not NO_GPU, reason="this machine can measure energy")
def test_energy_is_null_with_a_reason_on_this_machine(tiny_dir):
    settings = ProfileSettings(device="auto", batch_sizes=(1,), **FAST)
    document = measure(tiny_dir("llama"), settings)
    energy = document["batches"][0]["energy_per_token"]
    assert energy["value"] is None and energy["method"] == "unavailable"
    assert "RAPL" in energy["reason"]
    assert document["energy"] == {"source": None, "method": "unavailable", "detail": energy["reason"]}


def test_a_prompt_longer_than_the_context_is_refused(tiny_dir):
    settings = ProfileSettings(device="cpu", batch_sizes=(1,), energy="off", **{**FAST, "prompt_tokens": 5000})
    with pytest.raises(ProfileError, match="exceed its context of 2048: use fewer `prompt_tokens`"):
        measure(tiny_dir("llama"), settings)


def test_rapl_counters_are_summed_over_packages_and_unwrapped(tmp_path, monkeypatch):
    def zone(name: str, label: str, value: int, top: int = 1000) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "name").write_text(label + "\n")
        (folder / "energy_uj").write_text(f"{value}\n")
        (folder / "max_energy_range_uj").write_text(f"{top}\n")
        return folder

    pkg0, pkg1 = zone("intel-rapl:0", "package-0", 900), zone("intel-rapl:1", "package-1", 100)
    zone("intel-rapl:0:0", "core", 5)  # a sub-zone of package 0: already counted in it
    zone("intel-rapl:2", "psys", 7)  # the platform: includes the packages
    monkeypatch.setattr(energy_module, "RAPL_ROOT", tmp_path)
    source = open_energy("rapl", "cpu")
    assert (source.kind, source.method) == ("rapl", "measured") and "package-0, package-1" in source.detail
    start = source.counter.read_joules()
    (pkg0 / "energy_uj").write_text("50\n")  # wrapped: 900 -> 1000 -> 0 -> 50 is 150 uJ
    (pkg1 / "energy_uj").write_text("400\n")  # 300 uJ
    assert source.counter.read_joules() - start == pytest.approx(450e-6)


# --- fresh processes, families, family.json --------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_dir(tiny_dir, tmp_path_factory):
    source = tmp_path_factory.mktemp("profiled-source") / "llama"
    shutil.copytree(tiny_dir("llama"), source)
    out = tmp_path_factory.mktemp("profiled") / "family"
    build_family(
        _open(source),
        out,
        [Target("size", "48"), Target("size", "32")],
        PruneSettings("maw", recovery=RecoverySettings()),
    )
    return out


def _open(folder: Path):
    from hubprune.pruning.source import open_source

    return open_source(str(folder))


def test_a_family_gets_a_profile_per_model_and_its_stage_in_family_json(family_dir):
    settings = ProfileSettings(device="cpu", batch_sizes=(1, 2), energy="auto", **FAST)
    events = []
    results = profile_path(family_dir, settings, on_progress=events.append)
    family = manifest.load(family_dir)
    assert [r.role for r in results] == ["base", "member", "member"]
    assert all(r.status == "done" for r in results)
    assert [(e.item, e.status) for e in events][:2] == [("llama (base)", "start"), ("llama (base)", "done")]
    assert len(events) == 6 and {e.total for e in events} == {3}
    base = json.loads((family_dir / BASE_RESULTS / "profile.json").read_text())
    assert base["model"]["params_total"]["value"] == family.source.params_total
    assert base["model"]["intermediate_size"] == WIDTH
    for member in family.members:
        document = json.loads((family_dir / member.path / PROFILE_FILE).read_text())
        assert document["status"] == "done"
        assert document["model"]["params_total"]["value"] == member.params_total
        assert document["model"]["params_mlp"]["value"] == member.params_mlp
        assert document["model"]["intermediate_size"] == member.intermediate_size
        assert document["prompt"]["ids_sha256"] == base["prompt"]["ids_sha256"]  # the same input for everyone
        assert [b["batch_size"] for b in document["batches"]] == [1, 2]
        assert document["batches"][1]["runs"][0]["decode_tokens"] == 2 * (FAST["new_tokens"] - 1)
        stage = member.stages["profile"]
        assert stage == {
            "status": "done",
            "file": "results/profile.json",
            "device": "cpu",
            "dtype": "float32",
            "batch_sizes": [1, 2],
        }
        assert member.stages["prune"]["status"] == "done"  # the other stages are left alone

    again = profile_path(family_dir, settings)  # nothing changed: every profile is kept, nothing runs
    assert [r.status for r in again] == ["reused"] * 3

    one = family.members[-1]
    only = profile_path(family_dir / one.path, settings, force=True)
    assert [(r.name, r.role, r.status) for r in only] == [(one.name, "member", "done")]
    assert only[0].document["created"] >= results[-1].document["created"]


def test_a_base_that_is_not_on_this_machine_is_skipped_with_the_reason(family_dir):
    settings = ProfileSettings(device="cpu", batch_sizes=(1, 2), energy="auto", **FAST)
    profile_path(family_dir, settings)  # make sure every member is profiled with these settings
    family = manifest.load(family_dir)
    source = Path(family.source.id)
    moved = source.with_name("moved-away")
    source.rename(moved)
    (family_dir / BASE_RESULTS / "profile.json").unlink()
    try:
        results = profile_path(family_dir, settings)
    finally:
        moved.rename(source)
    assert [r.status for r in results] == ["skipped", "reused", "reused"]
    assert f"the base {source} is not on this machine" in results[0].reason
    written = json.loads((family_dir / BASE_RESULTS / "profile.json").read_text())
    assert written["status"] == "skipped" and written["reason"] == results[0].reason


def test_rounds_pool_every_run_and_add_up_the_energy(tiny_dir):
    settings = ProfileSettings(device="cpu", batch_sizes=(1, 2), energy="off", **{**FAST, "rounds": 2})
    share = round_share(settings)
    assert (share.rounds, share.min_runs, share.min_seconds) == (1, 2, 0.0)  # 3 runs over 2 rounds: 2 each
    rounds = [measure(tiny_dir("llama"), share, energy=fake_energy()) for _ in range(2)]
    merged = merge_rounds(rounds, settings)
    assert merged["settings"]["rounds"] == 2 and merged["settings"]["min_runs"] == 3
    assert merged["rounds"]["count"] == 2 and merged["rounds"]["min_runs_per_round"] == 2
    load = merged["model"]["load_time"]
    assert load["samples"] == [r["model"]["load_time"]["value"] for r in rounds]
    assert load["value"] == statistics.median(load["samples"])
    for index, batch in enumerate(merged["batches"]):
        parts = [r["batches"][index] for r in rounds]
        assert batch["runs"] == [{**run, "round": n} for n, part in enumerate(parts, 1) for run in part["runs"]]
        assert batch["timed_runs"] == len(batch["runs"]) == sum(p["timed_runs"] for p in parts) >= 4
        assert batch["ttft"]["median"] == pytest.approx(statistics.median(r["ttft_s"] for r in batch["runs"]))
        rates = [r["decode_tokens"] / r["decode_s"] for r in batch["runs"]]
        assert batch["decode_throughput"]["samples"] == pytest.approx(rates)
        assert batch["peak_memory"]["value"] == max(p["peak_memory"]["value"] for p in parts)
        energy = batch["energy_per_token"]
        assert energy["joules"] == 120.0  # the fake counter gains 60 J over each round's timed runs
        assert energy["tokens"] == sum(r["generated_tokens"] for r in batch["runs"])
        assert energy["value"] == pytest.approx(120.0 / energy["tokens"])
        medians = [p["ttft"]["median"] for p in parts]
        assert [r["ttft_median_s"] for r in batch["rounds"]] == medians
        spread = batch["spread_between_rounds"]["ttft"]
        assert spread == pytest.approx(statistics.stdev(medians) / statistics.mean(medians))
        windows = [p["timed_window_s"] for p in parts]
        loads = [p["other_cpu_load"]["value"] for p in parts]
        mean_load = sum(load * window for load, window in zip(loads, windows)) / sum(windows)
        assert batch["other_cpu_load"]["value"] == pytest.approx(mean_load)
    unmeasured = merge_rounds([measure(tiny_dir("llama"), share) for _ in range(2)], settings)
    assert unmeasured["batches"][0]["energy_per_token"]["value"] is None
    assert unmeasured["batches"][0]["energy_per_token"]["method"] == "unavailable"


def test_a_family_takes_turns_round_by_round_and_a_stopped_run_resumes(tiny_dir, tmp_path):
    settings = ProfileSettings(device="cpu", batch_sizes=(1,), energy="off", **{**FAST, "rounds": 2})
    source = tmp_path / "llama"
    shutil.copytree(tiny_dir("llama"), source)
    family_dir = tmp_path / "family"  # the base and one member: two models are enough to take turns
    build_family(_open(source), family_dir, [Target("size", "48")], PruneSettings("maw", recovery=RecoverySettings()))
    family = manifest.load(family_dir)

    class Stop(Exception):
        pass

    seen = []

    def stop_before_the_first_members_second_round(event):
        seen.append((event.done, event.round, event.status))
        if seen[-1] == (1, 2, "start"):
            raise Stop

    with pytest.raises(Stop):
        profile_path(family_dir, settings, force=True, on_progress=stop_before_the_first_members_second_round)
    assert seen == [(0, 1, "start"), (1, 1, "start"), (0, 2, "start"), (0, 2, "done"), (1, 2, "start")]
    kept = family_dir / family.members[0].path / "results" / ".profile-rounds" / "profile-round-1.json"
    first_round = json.loads(kept.read_text())["document"]["batches"][0]["runs"]

    events = []
    results = profile_path(family_dir, settings, on_progress=events.append)
    assert [(e.done, e.round, e.status) for e in events] == [
        (0, 1, "reused"),  # the base finished both rounds before the stop
        (1, 1, "resumed"),
        (1, 2, "start"),
        (1, 2, "done"),
    ]
    assert [r.status for r in results] == ["reused", "done"]
    for member in manifest.load(family_dir).members:
        folder = family_dir / member.path
        document = json.loads((folder / PROFILE_FILE).read_text())
        assert document["rounds"]["count"] == 2 and len(document["batches"][0]["rounds"]) == 2
        assert {run["round"] for run in document["batches"][0]["runs"]} == {1, 2}
        assert not (folder / "results" / ".profile-rounds").exists()  # cleaned up once pooled
        assert member.stages["profile"]["status"] == "done"
    pooled = json.loads((family_dir / family.members[0].path / PROFILE_FILE).read_text())["batches"][0]["runs"]
    assert [run for run in pooled if run["round"] == 1] == [{**run, "round": 1} for run in first_round]


def test_a_checkpoint_that_cannot_load_fails_in_its_process_with_one_line(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir("llama"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    settings = ProfileSettings(device="cpu", batch_sizes=(1,), energy="off", **FAST)
    with pytest.raises(ProfileError, match="model.safetensors is truncated") as info:
        profile_model(broken, settings)
    assert "\n" not in str(info.value)
    assert not (broken / PROFILE_FILE).exists()


def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ProfileError, match="neither a hubprune family"):
        profile_path(tmp_path, ProfileSettings(device="cpu", energy="off"))


def test_the_synthetic_prompt_avoids_special_tokens(measured):
    # The tiny tokenizer's specials are ids 0..3; the prompt is drawn from the other VOCAB - 4 ids.
    from hubprune.measure.efficiency import _synthetic_prompt

    folder, settings, document = measured

    class Stub:
        config = type("C", (), {"get_text_config": lambda self: self})()

        @staticmethod
        def get_input_embeddings():
            return torch.nn.Embedding(VOCAB, 1)

    first = _synthetic_prompt(folder, Stub(), 200)
    assert torch.equal(first, _synthetic_prompt(folder, Stub(), 200))
    assert int(first.min()) >= 4 and int(first.max()) < VOCAB


def test_nvml_millijoules_become_joules(monkeypatch):
    class FakeNvml:
        class NVMLError(Exception):
            pass

        millijoules = 5_000_000

        def nvmlInit(self):
            pass

        def nvmlDeviceGetHandleByUUID(self, uuid):
            raise self.NVMLError("unknown uuid")

        def nvmlDeviceGetHandleByIndex(self, index):
            return ("gpu", index)

        def nvmlDeviceGetTotalEnergyConsumption(self, handle):
            assert handle == ("gpu", 0)
            return self.millijoules

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = open_energy("auto", "cuda")
    assert (source.kind, source.method) == ("nvml", "measured")
    before = source.counter.read_joules()
    fake.millijoules += 2_500
    assert before == 5000.0 and source.counter.read_joules() - before == pytest.approx(2.5)


def test_codecarbon_kwh_become_joules_and_stay_an_estimate(monkeypatch):
    # CodeCarbon's stop() returns kg CO2; the energy is final_emissions_data.energy_consumed, in kWh, set by stop().
    trackers = []

    class FakeTracker:
        def __init__(self, **options):
            self.options = options
            self.kwh = 0.001 * (len(trackers) + 1)  # 1, 2, 3 Wh for the 1st, 2nd, 3rd tracker
            self.started = self.stopped = False
            trackers.append(self)

        def start(self):
            self.started = True

        def stop(self):
            assert self.started and not self.stopped
            self.stopped = True
            self.final_emissions_data = SimpleNamespace(energy_consumed=self.kwh, emissions=0.37 * self.kwh)
            return 0.37 * self.kwh  # kg CO2 at 0.37 kg/kWh: not energy

    fake = ModuleType("codecarbon")
    fake.OfflineEmissionsTracker = FakeTracker
    monkeypatch.setitem(sys.modules, "codecarbon", fake)
    energy_module.check_energy("codecarbon", "cpu")
    source = open_energy("codecarbon", "cpu")
    assert (source.kind, source.method) == ("codecarbon", "estimated")
    assert source.counter.read_joules() == pytest.approx(0.001 * 3.6e6)  # the first tracker's 1 Wh is 3600 J
    assert source.counter.read_joules() == pytest.approx(0.003 * 3.6e6)  # a running total: + the second's 2 Wh
    assert [(t.started, t.stopped) for t in trackers] == [(True, True), (True, True), (True, False)]
    assert all(t.options["country_iso_code"] and t.options["save_to_file"] is False for t in trackers)
