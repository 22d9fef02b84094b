"""The one way a build and check-criteria recover a pruned member: prepare once per family, then apply each step
to each member, in the order RecoverySettings gives.

- before the streaming pass, `pass_updates` computes the pass steps' change to the kept down_proj columns of one
  member width (refit), from the calibration's Gram matrices;
- `start` loads what the member steps learn from, once for every member (the base model and its data);
- `recover_folder` runs the member steps on a member written to disk (the family build) and returns their records
  for its hubprune.json; `recover_model` runs them on a pruned model in memory (check-criteria).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hubprune import provenance
from hubprune.progress import Progress, ProgressCallback, report
from hubprune.recover import methods
from hubprune.recover.distill import DistillRun
from hubprune.recover.distill_data import Teacher, check_text, load_teacher, prepare_data
from hubprune.recover.refit import PassInputs, Refits
from hubprune.recover.settings import RecoverySettings

DATA_CACHE = "data.safetensors"  # in the work folder: the generated data every member learns from


class Recovery:
    """One family's recovery on `device`: what it needs is prepared once, then applied to each member."""

    def __init__(self, settings: RecoverySettings, device: str = "cpu") -> None:
        self.settings = settings
        self.device = device
        self.teacher: Teacher | None = None

    def check_inputs(self, base_folder: Path) -> None:
        """Refuse, with the tokenizer alone and before calibration runs, a text a step cannot learn from."""
        if "distill" in self.settings.steps:
            check_text(base_folder, self.settings.distill)

    def pass_updates(self, inputs: PassInputs, kept: dict[int, torch.Tensor]) -> Refits | None:
        """The pass step's updates of one member width (layer -> M or new columns, see refit.py) and its record;
        None without one."""
        found = methods.of_phase(self.settings.steps, "pass")
        return found[0].load().member_updates(inputs, kept) if found else None

    def start(
        self,
        base_folder: Path,
        work: Path,
        source: str,
        on_progress: ProgressCallback | None,
        announce: str,
        windows: tuple[torch.Tensor, ...] = (),
    ) -> None:
        """Load what the member steps learn from: the base model, the distillation's data (generated data cached
        in `work`, made again for another `source`, an identity of the base) and the calibration `windows` local
        reconstruction trains on. With a launcher, the launched processes load their own model for distillation:
        it is loaded here only to make the data, or for local reconstruction."""
        if not self.settings.trains:
            return
        steps = self.settings.steps
        announce = f"{announce}: loading the base model{' and its distillation data' if 'distill' in steps else ''}"
        if "distill" not in steps:
            from transformers import AutoModelForCausalLM

            report(on_progress, Progress(steps[-1], announce))
            model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
            self.teacher = Teacher(model, None, base_folder, windows)
            return
        teacher = load_teacher(
            base_folder,
            self.settings.distill,
            cache=work / DATA_CACHE,
            source=source,
            device=self.device,
            keep_model=self.settings.launcher is None or "reconstruct" in steps,
            announce=lambda: report(on_progress, Progress("distill", announce)),
            on_progress=on_progress,
        )
        if self.settings.launcher is not None and teacher.model is not None:
            teacher.model.to("cpu")  # kept for local reconstruction, which moves it back while it runs
        self.teacher = dataclasses.replace(teacher, windows=windows)

    def start_in_memory(
        self, base: Any, tokenizer: Any, on_progress: ProgressCallback | None, windows: tuple[torch.Tensor, ...] = ()
    ) -> None:
        """As `start`, for a base model already loaded (check-criteria)."""
        if self.settings.trains:
            data = None
            if "distill" in self.settings.steps:
                data = prepare_data(base, tokenizer, self.settings.distill, on_progress=on_progress)
            self.teacher = Teacher(base, data, Path("."), windows)

    def recover_folder(
        self,
        folder: Path,
        roles: dict[str, tuple[int, str]],
        state: Path,
        item: str,
        on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        """Run the member steps on the member in `folder` (written back in place); their records by the key of
        hubprune.json each is kept under. A state saved in `state` by a stopped run resumes only for the same
        member: same source, kept neurons and pass step."""
        written = provenance.read(folder)
        assert written is not None and self.teacher is not None, "a member written by the pass, and start() run"
        alpha = written.refit.alpha if written.refit else None
        member = json.dumps([written.source, written.raw["kept_indices"]["sha256"], alpha], sort_keys=True)
        records = {}
        for method in methods.of_phase(self.settings.steps, "member"):
            module = method.load()
            run = DistillRun(state, member, self.device, False, item, on_progress)
            report(on_progress, Progress(method.name, f"[{method.name}] {item}: {module.describe(self.settings)}"))
            records[method.record_key] = module.recover_folder(folder, self.teacher, self.settings, roles, run)
        return records

    def recover_model(
        self, student: Any, roles: dict[str, tuple[int, str]], item: str, on_progress: ProgressCallback | None
    ) -> Iterator[tuple[str, Any]]:
        """Run the member steps on `student`, a pruned model in memory, one at a time: after each, yield the label
        of the steps so far ('refit+reconstruct') and the model, on the CPU and in eval mode (check-criteria
        measures every step)."""
        assert self.teacher is not None, "start_in_memory() loads what the member steps learn from"
        done = [m.name for m in methods.of_phase(self.settings.steps, "pass")]
        for method in methods.of_phase(self.settings.steps, "member"):
            run = DistillRun(device=self.device, item=item, on_progress=on_progress)
            method.load().recover_model(student, self.teacher, self.settings, roles, run)
            done.append(method.name)
            self.teacher.model.to("cpu")
            yield methods.label(tuple(done)), student.to("cpu").eval()
