"""The tree shows the architecture (docs/architecture.md): commands alone at the top of src/, imports only down
the layers (function-level imports included), no import circle, no private name used outside its module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src"
LAYERS = ["app", "training", "reports", "evaluation", "live", "models", "rl", "envs", "data", "optim", "core"]
COMMANDS = {"train", "evaluate", "walk_forward", "suite", "predict", "paper", "export"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``src`` import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("src")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
            out.append((node.module, [a.name for a in node.names]))
    return out


def _layer(module: str) -> int:
    """0 for the commands, then the packages' rank in LAYERS."""
    parts = module.split(".")
    return 0 if len(parts) < 3 and parts[-1] in COMMANDS | {"src"} else 1 + LAYERS.index(parts[1])


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for mod, names in _imports(path):
            for target in [f"{mod}.{n}" for n in names] + [mod]:
                if target in files and target != name:
                    deps.add(target)
                    break
        graph[name] = deps
    return graph


def test_only_the_commands_sit_at_the_top_of_src():
    top = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    assert top == COMMANDS
    assert {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


def test_imports_only_run_down_the_layers_and_commands_import_no_command():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if _layer(b) < _layer(a) or (_layer(a) == _layer(b) == 0)]  # fmt: skip
    assert bad == []


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(v, path):
        state[v] = "open"
        for w in graph[v]:
            if state.get(w) == "open":
                circles.append([*path[path.index(w) :], w])
            elif w not in state:
                visit(w, [*path, w])
        state[v] = "done"

    for v in graph:
        if v not in state:
            visit(v, [v])
    assert circles == []


def test_no_private_name_is_imported_from_another_module():
    used = [f"{_module(p)}: from {mod} import {n}" for p in SRC.rglob("*.py") for mod, names in _imports(p)
            for n in names if n.startswith("_")]  # fmt: skip
    assert used == []


def test_no_file_in_src_is_over_400_lines():
    assert [p.name for p in SRC.rglob("*.py") if len(p.read_text().splitlines()) > 400] == []
