"""The package's shape, read from its source with `ast`: no import circle, components never import the jobs, no
upward import from features/ into data/, small job files, and every subcommand registered explicitly."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ser_lightning"
MAX_RUN_FILE_LINES = 350


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str:
    """The module a dotted import names: itself when it is a module, else its longest module prefix (an
    attribute imported from a module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set:
    """Every ser_lightning module `module` imports, at the top or inside functions (not the annotation-only
    imports under `if TYPE_CHECKING:`, which never run)."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for child in node.body for n in ast.walk(child)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.startswith("ser_lightning")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ser_lightning") and node.level == 0:
            found |= {_resolve(f"{node.module}.{a.name}") for a in node.names}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycle():
    """A package's __init__ re-exporting its own submodules is not a cycle (ser_lightning.run.sweep ->
    ser_lightning.run.sweep.agent); every other edge counts."""
    edges = {m: {n for n in deps if not _is_parent_package(m, n) and not _is_parent_package(n, m)} for m, deps in GRAPH.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_features_never_import_data():
    bad = {m: sorted(d for d in deps if d.startswith("ser_lightning.data")) for m, deps in GRAPH.items()
           if m.startswith("ser_lightning.features")}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}, "features/ must not import data/ (audio decoding is ser_lightning.audio)"


def test_components_never_import_the_jobs():
    components = ("ser_lightning.models", "ser_lightning.features", "ser_lightning.data", "ser_lightning.audio")
    bad = {m: sorted(d for d in deps if d.startswith(("ser_lightning.run", "ser_lightning.cli")))
           for m, deps in GRAPH.items() if m.startswith(components)}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}


def test_job_files_are_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in (PACKAGE / "run").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_RUN_FILE_LINES} == {}


def test_every_subcommand_is_registered_explicitly():
    from ser_lightning.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "cv", "cache", "config", "data", "sweep", "report", "predict", "bench",
                                "export", "probe"}  # fmt: skip


def test_a_broken_job_module_is_an_error_not_a_missing_command(monkeypatch):
    from ser_lightning import cli

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "ser_lightning.run.probe":
            raise ImportError("simulated: a dependency of ser probe is missing")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="simulated"):
        cli.build_parser()
