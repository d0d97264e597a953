"""Packaging promises: imports stay light, the console script and entry points exist."""

from __future__ import annotations

import subprocess
import sys


def test_import_graphslim_loads_no_extra():
    code = (
        "import sys, graphslim, graphslim.pipeline, graphslim.validate, graphslim.feeds;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ultralytics', 'tensorrt', 'onnx2torch', 'passes', 'cli')"
        " or m.startswith(('graphslim.passes', 'graphslim.cli')));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_builtin_passes_are_entry_points():
    from graphslim.registry import default_registry

    names = set(default_registry().names())
    assert {
        "cleanup",
        "constants-to-initializers",
        "fix-input-shapes",
        "fold-bn",
        "simplify",
        "prune-channels",
    } <= names


def _import_graph():
    """Project modules and the project modules each imports, read from the source (every
    import statement, at module level or inside a function; not ``if TYPE_CHECKING:``)."""
    import ast
    from pathlib import Path

    import networkx as nx

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("graphslim/**/*.py"), *root.glob("passes/*.py"), root / "cli.py"]
    mods = {}
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[0] == "passes":  # installed as graphslim.passes (package-dir mapping)
            parts.insert(0, "graphslim")
        if parts == ["cli"]:  # the checkout's thin shim; the commands are graphslim.cli
            parts = ["cli_shim"]
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def imported(tree):
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # typing only: never executed
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                yield from (f"{node.module}.{a.name}" for a in node.names)
            else:
                yield from imported(node)

    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for target in imported(ast.parse(path.read_text(encoding="utf-8"))):
            while target and target not in mods:  # `from pkg import name` -> pkg
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.add_edge(name, target)
    return graph


def test_no_import_cycles():
    import networkx as nx

    graph = _import_graph()
    assert "graphslim.pruning.prune" in graph and "graphslim.sensitivity" in graph
    assert list(nx.simple_cycles(graph)) == []
    # Dependency direction: cli -> passes -> core, never back.
    outer = ("graphslim.passes", "graphslim.cli", "cli_shim")
    for src, dst in graph.edges:
        if not src.startswith(outer):
            assert not dst.startswith(outer), f"{src} imports {dst}"
        if src.startswith("graphslim.passes"):
            assert not dst.startswith(("graphslim.cli", "cli_shim")), f"{src} imports {dst}"
    assert ("cli_shim", "graphslim.cli") in graph.edges


def test_nothing_generic_installed_at_top_level():
    """The wheel installs only the `graphslim` namespace: `passes/` maps to `graphslim.passes`,
    the commands are `graphslim.cli`, and the package list names every package directory (a new
    subpackage left out of pyproject would be missing from a wheel but present in a checkout)."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    tool = conf["tool"]["setuptools"]
    assert "py-modules" not in tool
    assert tool["package-dir"] == {"graphslim.passes": "passes"}
    on_disk = {
        ".".join(p.parent.relative_to(root).parts) for p in root.glob("graphslim/**/__init__.py")
    } | {"graphslim.passes"}
    assert set(tool["packages"]) == on_disk
    assert {name.split(".")[0] for name in tool["packages"]} == {"graphslim"}
    assert conf["project"]["scripts"]["graphslim"] == "graphslim.cli:main"
    for target in conf["project"]["entry-points"]["graphslim.passes"].values():
        assert target.startswith("graphslim.passes."), target
