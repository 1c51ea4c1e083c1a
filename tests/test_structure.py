"""The package's shape, read from its source with `ast`: no import cycle, no upward import from features/ into
data/, components never import the jobs, small job files, and every subcommand registered explicitly.

The import graph: one node per module of ser_lightning (a package's `__init__.py` is the package's node), one
edge per `import ser_lightning.x` / `from ser_lightning.x import y` (and relative imports), at module level or
inside functions. `from ser_lightning.x import y` is an edge to `ser_lightning.x.y` when that is a module or
package, else to `ser_lightning.x` (y is an attribute of it).

Left out of the graph (each never runs an import at a time it could go round in a circle):
- imports under `if TYPE_CHECKING:` (annotations only; never executed);
- a FUNCTION-LEVEL import, by a module, of one of its own ancestor packages (e.g. data/corpora/base.py's
  `get_loader` importing `ser_lightning.data.corpora` to register every corpus): Python has imported every
  ancestor package before the module itself, so by the time the function runs the import is a lookup. The
  same import at module level still counts (it would read a half-initialised package).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ser_lightning"
NAME = PACKAGE.name
MAX_RUN_FILE_LINES = 350
SUBCOMMANDS = {"train", "cv", "cache", "config", "data", "sweep", "report", "predict", "bench", "export", "probe"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(name: str) -> Optional[str]:
    """The module a dotted name refers to: itself when it is a module, else its longest module prefix."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def _function_level_nodes(tree: ast.AST) -> Set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    return inside


def _imports(module: str) -> Set[str]:
    """The ser_lightning modules `module` imports (see the module docstring for what is left out)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    skip = _type_checking_nodes(tree)
    deferred = _function_level_nodes(tree)
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import y
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                targets.append(full if full in MODULES else source)
        for target in targets:
            if target != NAME and not target.startswith(NAME + "."):
                continue
            resolved = _resolve(target)
            if resolved is None or resolved == module:
                continue
            if id(node) in deferred and module.startswith(resolved + "."):
                continue  # function-level import of an own ancestor package: already imported (docstring)
            found.add(resolved)
    return found


GRAPH: Dict[str, Set[str]] = {m: _imports(m) for m in MODULES}


def _find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a path [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def _offenders(prefixes, forbidden) -> Dict[str, List[str]]:
    """Modules under `prefixes` (dotted) and the forbidden modules each imports."""
    under = lambda m, p: m == p or m.startswith(p + ".")  # noqa: E731
    return {
        m: sorted(d for d in deps if any(under(d, f) for f in forbidden))
        for m, deps in sorted(GRAPH.items())
        if any(under(m, p) for p in prefixes) and any(under(d, f) for f in forbidden for d in deps)
    }


def test_the_graph_sees_the_package():
    """Guard against a graph that is silently empty (a test of nothing)."""
    assert {f"{NAME}.cli", f"{NAME}.config", f"{NAME}.run", f"{NAME}.features", f"{NAME}.data"} <= set(MODULES)
    assert f"{NAME}.config" in GRAPH[f"{NAME}.cli"]
    assert sum(len(d) for d in GRAPH.values()) > len(MODULES)


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_features_never_import_data():
    bad = _offenders([f"{NAME}.features"], [f"{NAME}.data"])
    assert not bad, f"no upward import from features into data (audio decoding is {NAME}.audio): {bad}"


def test_components_never_import_the_jobs():
    bad = _offenders([f"{NAME}.models", f"{NAME}.features", f"{NAME}.data"], [f"{NAME}.run", f"{NAME}.cli"])
    assert not bad, f"components (models/, features/, data/) import the jobs (run/, cli): {bad}"


def test_job_files_are_small():
    for package in ("bench", "sweep", "report"):
        assert (PACKAGE / "run" / package / "__init__.py").is_file(), f"run/{package}/ is expected to be a package"
    files = sorted((PACKAGE / "run").rglob("*.py"))
    assert any(p.parent.name == "bench" for p in files) and any(p.parent.name == "sweep" for p in files)
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in files}
    big = {p: n for p, n in sizes.items() if n > MAX_RUN_FILE_LINES}
    assert not big, f"files under run/ over {MAX_RUN_FILE_LINES} lines: {big}"


def _subcommands(parser) -> Set[str]:
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def test_every_subcommand_is_registered():
    from ser_lightning.cli import build_parser

    assert _subcommands(build_parser()) == SUBCOMMANDS


def test_a_broken_job_module_is_an_error_not_a_missing_command(monkeypatch):
    from ser_lightning import cli

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == f"{NAME}.run.probe":
            raise ImportError("simulated: a dependency of `ser probe` is missing")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="simulated"):
        cli.build_parser()
