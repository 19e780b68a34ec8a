"""The package's layering, read from the source with `ast` (no module is imported for the graph):

- no import cycle, counting every import, also those inside functions (a lazy import back is still
  a cycle: it only moves the failure from import time to call time);
- the front doors (q3tts.cli, q3tts.server, q3tts.demo) sit on top: nothing else imports them,
  the server never imports the CLI, and the CLI imports the server only to start it;
- every user-facing error class derives from `Q3TTSError`, which the front doors map to one line."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from q3tts.errors import Q3TTSError

PACKAGE = Path(__file__).resolve().parents[1] / "q3tts"
FRONT_DOORS = ("q3tts.cli", "q3tts.server", "q3tts.demo")
# `q3tts serve` starts the server; `q3tts demo` the demo job, or with MODEL the web UI alone.
CLI_LAUNCHES = ("q3tts.server.__main__", "q3tts.demo", "q3tts.server.ui")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every q3tts module named by an import anywhere in the file, resolved to absolute names.

    `from .x import y` names q3tts...x.y when that is a module, else q3tts...x."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found.update(subs or [target])
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_names(path, name) for name, path in modules().items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "q3tts.checkpoint" in graph["q3tts.model"]  # top-level relative import
    assert "q3tts.api" in graph["q3tts.cli.synthesis"]  # an import inside a function
    assert "q3tts.server.__main__" in graph["q3tts.cli.launchers"]  # a lazy `from ..server.__main__ import`


def test_find_cycles_reports_a_lazy_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (each group imports itself back, maybe lazily): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_front_doors_are_on_top():
    wrong = []
    for name, targets in import_graph().items():
        for target in targets:
            door = next((d for d in FRONT_DOORS if under(target, d)), None)
            if door is None or under(name, door):
                continue
            if under(name, "q3tts.cli") and target in CLI_LAUNCHES:
                continue  # the CLI starts these front doors through their entry points
            wrong.append(f"{name} imports {target}")
    assert not wrong, "lower layers import a front door: " + "; ".join(sorted(wrong))


def error_classes():
    skip = ("q3tts.server", "q3tts.serving", "q3tts.generate.engine", "q3tts.api")  # mapped by the server itself
    for name in sorted(modules()):
        if any(under(name, s) for s in skip) or name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # an optional extra that is not installed
            pytest.skip(f"{name}: {e}")
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception) and not issubclass(cls, Warning):
                yield f"{name}.{cls_name}", cls


def test_every_error_class_derives_from_q3tts_error():
    classes = dict(error_classes())
    assert "q3tts.checkpoint.CheckpointError" in classes and "q3tts.cli.common.UsageError" in classes
    assert not [n for n, c in classes.items() if not issubclass(c, Q3TTSError)]
