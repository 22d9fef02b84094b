"""The package's shape, which the next changes build on: the ground floor imports no wing, the wings import each
other in one direction only (no circle), nothing inside imports the package facade, and modules and functions
stay small enough to read."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hubprune"
GROUND = {"_version", "errors", "files", "progress", "local_paths", "manifest", "device", "texts", "fields"}
GROUND |= {"provenance", "model_inputs"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 540, 80


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    return "ground" if parts[1] in GROUND else parts[1]


def imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hubprune":
            found |= {node.module} if node.module != "hubprune" else {f"hubprune.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hubprune"}
    return found


def test_the_ground_floor_imports_no_wing_and_no_module_imports_the_facade():
    wrong = []
    for name, tree in modules().items():
        for target in imports(tree):
            if target == "hubprune.__version__" or (floor(name) == "ground" and floor(target) not in ("ground",)):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_the_wings_import_each_other_in_one_direction():
    edges = collections.defaultdict(set)
    for name, tree in modules().items():
        for target in imports(tree):
            source, destination = floor(name), floor(target)
            if source not in ("ground", "facade") and destination not in ("ground", "facade", source):
                edges[source].add(destination)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start])

    circles = sorted(wing for wing in list(edges) if reaches(wing, wing, {wing}))
    assert not circles, dict(edges)
    assert "pruning" not in edges["recover"] and "recover" in edges["pruning"]  # the build calls recovery's apply


def test_modules_and_functions_stay_small():
    long_modules = [p.name for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    long_functions = [
        f"{name}.{node.name}"
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long_modules and not long_functions, (long_modules, long_functions)
