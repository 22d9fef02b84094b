"""hubprune: build a family of width-pruned GLU checkpoints, ready for from_pretrained and the Hub.

The public Python API, one import away::

    from hubprune import run_family, parse_targets, PruneSettings, EvalSettings, ProfileSettings, CardSettings

The names load on first use (as huggingface_hub's do), so `import hubprune` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubprune._version import __version__

# public name -> the module that owns it
_API = {
    # the whole job
    "run_family": "hubprune.pipeline",
    "FamilyOutcome": "hubprune.pipeline",
    # build: sources, widths, pruning
    "open_source": "hubprune.pruning.source",
    "parse_targets": "hubprune.pruning.plan",
    "Target": "hubprune.pruning.plan",
    "PruneSettings": "hubprune.pruning.family",
    "CalibrationSettings": "hubprune.pruning.calibrate",
    "RecoverySettings": "hubprune.recover.settings",
    "DistillSettings": "hubprune.recover.distill",
    "ReconstructSettings": "hubprune.recover.reconstruct",
    "RuntimeSettings": "hubprune.device",
    "make_plan": "hubprune.pruning.family",
    "build_family": "hubprune.pruning.family",
    "prune_one": "hubprune.pruning.family",
    "CheckSettings": "hubprune.pruning.check",
    "check_criteria": "hubprune.pruning.check",
    # measure: benchmarks and efficiency
    "EvalSettings": "hubprune.measure.evaluate",
    "evaluate": "hubprune.measure.evaluate",
    "ProfileSettings": "hubprune.measure.efficiency",
    "profile_path": "hubprune.measure.profile",
    # export: GGUF files for llama.cpp and Ollama
    "export_gguf": "hubprune.export.members",
    # publish: cards and the Hub
    "CardSettings": "hubprune.publish.cards",
    "render_cards": "hubprune.publish.cards",
    "PushSettings": "hubprune.publish.push",
    "push_family": "hubprune.publish.push",
    # family.json, progress, errors
    "load_family": "hubprune.manifest",
    "Progress": "hubprune.progress",
    "HubpruneError": "hubprune.errors",
}
_RENAMED = {"load_family": "load"}  # names that read better from the package than from their module

__all__ = [
    "__version__",
    "run_family",
    "FamilyOutcome",
    "open_source",
    "parse_targets",
    "Target",
    "PruneSettings",
    "CalibrationSettings",
    "RecoverySettings",
    "DistillSettings",
    "ReconstructSettings",
    "RuntimeSettings",
    "make_plan",
    "build_family",
    "prune_one",
    "CheckSettings",
    "check_criteria",
    "EvalSettings",
    "evaluate",
    "ProfileSettings",
    "profile_path",
    "export_gguf",
    "CardSettings",
    "render_cards",
    "PushSettings",
    "push_family",
    "load_family",
    "Progress",
    "HubpruneError",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'hubprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors, which do not run __getattr__
    from hubprune.device import RuntimeSettings
    from hubprune.errors import HubpruneError
    from hubprune.export.members import export_gguf
    from hubprune.manifest import load as load_family
    from hubprune.measure.efficiency import ProfileSettings
    from hubprune.measure.evaluate import EvalSettings, evaluate
    from hubprune.measure.profile import profile_path
    from hubprune.pipeline import FamilyOutcome, run_family
    from hubprune.progress import Progress
    from hubprune.pruning.calibrate import CalibrationSettings
    from hubprune.pruning.check import CheckSettings, check_criteria
    from hubprune.pruning.family import PruneSettings, build_family, make_plan, prune_one
    from hubprune.pruning.plan import Target, parse_targets
    from hubprune.pruning.source import open_source
    from hubprune.publish.cards import CardSettings, render_cards
    from hubprune.publish.push import PushSettings, push_family
    from hubprune.recover.distill import DistillSettings
    from hubprune.recover.reconstruct import ReconstructSettings
    from hubprune.recover.settings import RecoverySettings
