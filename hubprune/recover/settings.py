"""What recovery a build asks for: the steps in order and each step's own settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubprune.errors import LaunchError
from hubprune.fields import nested, setting
from hubprune.recover import methods
from hubprune.recover.distill import DistillSettings
from hubprune.recover.launch import parse_launcher
from hubprune.recover.reconstruct import ReconstructSettings

LAUNCHED = ("distill",)  # the steps that can run in the processes a launcher starts


@dataclass(frozen=True)
class RecoverySettings:
    steps: tuple[str, ...] = setting((), methods.help_text(), flag="--recover", parse="recovery")
    distill: DistillSettings = nested(DistillSettings)  # used when `steps` distil
    reconstruct: ReconstructSettings = nested(ReconstructSettings)  # used when `steps` reconstruct
    launcher: str | None = setting(
        None,
        'Distil in the processes COMMAND starts, e.g. "accelerate launch --config_file fsdp.yaml" (its config sets '
        'processes, GPUs, DeepSpeed or FSDP, mixed precision) or "torchrun --standalone --nproc_per_node 4"; '
        "hubprune adds `-m hubprune.recover.worker JOB`. Default: in this process, on --device.",
        flag="--distill-launcher",
        parse="command",
    )

    def __post_init__(self) -> None:
        steps = methods.parse_steps(self.steps) if isinstance(self.steps, str) else methods.check_steps(self.steps)
        object.__setattr__(self, "steps", tuple(steps))
        if self.launcher is not None:
            if not any(step in LAUNCHED for step in self.steps):
                raise LaunchError(
                    f"`distill_launcher` is given, but `recover` {self.label} does not distil: recover with distill "
                    "or refit+distill, or leave the launcher out"
                )
            parse_launcher(self.launcher)  # refused before anything is read or written

    @property
    def label(self) -> str:
        """As family.json and the tables name it: 'none', 'refit', 'refit+distill'."""
        return methods.label(self.steps)

    @property
    def reads_calibration(self) -> bool:
        return any(methods.METHODS[step].reads_calibration for step in self.steps)

    @property
    def reads_grams(self) -> bool:
        """Whether a step reads the calibration's Gram matrices (the refit), rather than running the model."""
        return any(m.reads_calibration and not m.runs_model for m in methods.of_phase(self.steps, "pass"))

    @property
    def pass_runs_model(self) -> bool:
        """Whether a pass step runs the loaded model over the calibration windows (the sequential refit); member
        steps that do (reconstruct) load their own (keeps_windows covers both)."""
        return any(m.runs_model for m in methods.of_phase(self.steps, "pass"))

    @property
    def keeps_windows(self) -> bool:
        """Whether a step runs a model over the calibration windows (sequential, reconstruct): calibration keeps
        them."""
        return any(methods.METHODS[step].runs_model for step in self.steps)

    @property
    def refits(self) -> bool:
        return bool(methods.of_phase(self.steps, "pass"))

    @property
    def trains(self) -> bool:
        return bool(methods.of_phase(self.steps, "member"))

    def distill_identity(self) -> dict[str, Any] | None:
        """What family.json keeps of the distillation (None without one): every setting, a text by name and sha256."""
        return self.distill.identity() if "distill" in self.steps else None

    def reconstruct_identity(self) -> dict[str, Any] | None:
        """What family.json keeps of the local reconstruction (None without one): every setting."""
        return self.reconstruct.identity() if "reconstruct" in self.steps else None
