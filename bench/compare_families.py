"""Do two builds of a family agree? For checking that a change of code left the product as it was.

    python bench/compare_families.py OLD_FAMILY NEW_FAMILY

Compares what must not change when the code is reorganised: family.json's member list (every field but the
stage records), the source and settings, each member's kept indices, weights and benchmark values. Then it
renders OLD_FAMILY's cards again with this checkout's code, in a temporary copy, and compares them byte for
byte with the cards OLD_FAMILY holds: the same measurements must give the same card text and plots.
Prints one line per check and exits 1 if any differs. Timings (profile.json) are measurements, so they differ
from run to run and are not compared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from hubprune import CardSettings, load_family, render_cards


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _eval_values(folder: Path) -> dict[str, float]:
    path = folder / "results" / "eval.json"
    tasks = json.loads(path.read_text())["tasks"] if path.exists() else {}
    return {task: record["value"] for task, record in tasks.items()}


def _card_files(family: Path) -> list[Path]:
    return sorted(p.relative_to(family) for p in family.rglob("*") if p.name == "README.md" or p.suffix == ".png")


def main(old: Path, new: Path) -> int:
    checks: list[tuple[str, bool]] = []
    a, b = load_family(old), load_family(new)
    members = [{k: v for k, v in vars(m).items() if k != "stages"} for m in a.members]
    checks.append(("member list", members == [{k: v for k, v in vars(m).items() if k != "stages"} for m in b.members]))
    identity = ("revision", "model_type", "hidden_size", "intermediate_size", "num_layers", "params_total")
    checks.append(("source shape", all(getattr(a.source, k) == getattr(b.source, k) for k in identity)))
    checks.append(
        ("criterion, seed, multiple-of", (a.criterion, a.seed, a.multiple_of) == (b.criterion, b.seed, b.multiple_of))
    )
    for member in a.members:
        x, y = old / member.path, new / member.path
        for name in ("hubprune-kept-indices.json", "model.safetensors", "config.json"):
            checks.append((f"{member.name}/{name}", _sha256(x / name) == _sha256(y / name)))
        checks.append((f"{member.name} benchmark values", _eval_values(x) == _eval_values(y)))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / old.name
        shutil.copytree(old, copy)
        render_cards(copy, CardSettings())
        for path in _card_files(old):
            checks.append((f"card {path} re-rendered", (old / path).read_bytes() == (copy / path).read_bytes()))
    for what, same in checks:
        print(f"{'same' if same else 'DIFFERENT'}  {what}")
    return 0 if all(same for _, same in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
