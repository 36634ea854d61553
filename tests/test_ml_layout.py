"""The rooms of app.ml and the arrows between them (app/ml/__init__.py says why).

Every import under ``app/ml`` is read from the source (module level, inside functions and
under ``TYPE_CHECKING`` alike), so a lazy import cannot hide an arrow or a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ML = Path(__file__).resolve().parents[1] / "app" / "ml"

SHARED = {"app.ml.images", "app.ml.transforms"}
"""The only loose modules: the one image loader and the preprocessing."""

ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "models": set(),
    "data": {"shared"},
    "retrieval": set(),
    "infer": {"models", "shared"},
    "bundle": {"infer", "models", "shared"},
    "train": {"data", "models", "infer", "bundle", "retrieval", "shared"},
    "evaluation": {"data", "models", "infer", "bundle", "retrieval", "train", "shared"},
}
"""Room -> rooms it may import (besides itself)."""

OUTSIDE_ALLOWED = {"app.errors", "app.index.idset"}
"""Modules outside app.ml that app.ml may import (the errors and pure numpy id sets)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ML.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ml_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ML.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> Iterator[str]:
    """Every ``app.*`` module ``path`` imports; ``from P import m`` names module ``P.m`` when
    that is a module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("app"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            if node.level:
                raise AssertionError(f"{path}: relative import; write app.ml... in full")
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found = [s for s in subs if s in known]
            yield from found or [node.module]


def room(module: str) -> str:
    if module in SHARED or module == "app.ml":
        return "shared"
    parts = module.split(".")
    assert len(parts) >= 4, f"{module}: a loose module in app/ml; put it in a room"
    return parts[2]


def arrows() -> list[tuple[str, str]]:
    modules = ml_modules()
    return [(m, t) for m, p in modules.items() for t in imports_of(p, set(modules))]


def test_no_loose_modules_beside_the_shared_ones() -> None:
    loose = {module_name(p) for p in ML.glob("*.py")} - SHARED - {"app.ml"}
    assert not loose, f"loose modules in app/ml: {sorted(loose)}"
    assert {p.name for p in ML.iterdir() if p.is_dir() and p.name != "__pycache__"} == (
        set(ALLOWED) - {"shared"}
    ), "every folder of app/ml is a room named in ALLOWED"


def test_every_room_opens_with_a_docstring() -> None:
    for init in [ML / "__init__.py", *ML.glob("*/__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init}: say what the room holds and may import"


def forbidden(edges: list[tuple[str, str]]) -> list[str]:
    bad = []
    for source, target in edges:
        if not target.startswith("app.ml"):
            if target not in OUTSIDE_ALLOWED:
                bad.append(f"{source} -> {target} (outside app.ml)")
            continue
        a, b = room(source), room(target)
        if a != b and b not in ALLOWED[a]:
            bad.append(f"{source} -> {target} ({a} may not import {b})")
    return bad


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if b.startswith("app.ml"):
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_follow_the_allowed_arrows() -> None:
    assert forbidden(arrows()) == []


def test_no_import_cycles_between_modules() -> None:
    assert cycles(arrows()) == []


def test_the_rooms_themselves_form_no_cycle() -> None:
    edges = [(a, b) for a, targets in ALLOWED.items() for b in targets]
    assert cycles([(f"app.ml.{a}.x", f"app.ml.{b}.x") for a, b in edges]) == []


@pytest.mark.parametrize(
    ("source", "target", "why"),
    [
        ("app.ml.infer.embedder", "app.ml.evaluation.metrics", "infer may not import evaluation"),
        ("app.ml.infer.batching", "app.ml.bundle.store", "infer may not import bundle"),
        ("app.ml.train.reid", "app.ml.evaluation.testset", "train may not import evaluation"),
        ("app.ml.retrieval.rerank", "app.services.search", "outside app.ml"),
        ("app.ml.bundle.store", "app.db.models", "outside app.ml"),
        ("app.ml.data.pku", "app.ml.models.resnet_cifar", "data may not import models"),
    ],
)
def test_a_forbidden_arrow_is_reported(source: str, target: str, why: str) -> None:
    assert forbidden([(source, target)]), why


def test_a_cycle_is_reported() -> None:
    edges = [("app.ml.bundle.a", "app.ml.bundle.b"), ("app.ml.bundle.b", "app.ml.bundle.a")]
    assert cycles(edges) == [["app.ml.bundle.a", "app.ml.bundle.b"]]
