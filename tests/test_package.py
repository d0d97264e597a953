"""Packaging promises: imports stay light, the console script and entry points exist."""

from __future__ import annotations

import subprocess
import sys


def test_import_graphslim_loads_no_extra():
    code = (
        "import sys, graphslim, graphslim.pipeline, graphslim.validate, graphslim.feeds;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ultralytics', 'tensorrt', 'onnx2torch', 'passes', 'cli'));"
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
