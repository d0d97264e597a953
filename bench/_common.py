"""What every bench script shares: the machine a figure came from, and writing the results.

A figure without its machine is not a figure: :func:`environment` records the CPU model, the
x86 ISA onnxruntime's integer kernels will use (VNNI / AVX-512 / AVX2; see
:mod:`passes._quant_isa`), the CPU flags that decide it, the core count, the load average at
the time, and the versions of python, onnxruntime, onnx, numpy and pillow. :func:`write_results`
writes ``results/STEM.json`` (``{"env": ..., **data}``) and ``results/STEM.md`` atomically (a
temporary file renamed over the old one), so an interrupted run never leaves half a table.

Scripts run as ``python bench/NAME.py``; this file sits next to them on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphslim.machine import machine  # noqa: E402


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", None)


def environment(**extra) -> dict:
    """This machine and the library versions, plus the script's own settings (``extra``)."""
    env = machine()
    env.update(
        {
            "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"),
            "numpy": _version("numpy"),
            "pillow": _version("PIL"),
        }
    )
    env.update(extra)
    return env


def machine_line(env: dict) -> str:
    """One markdown line naming the machine of a results file."""
    load = env.get("loadavg")
    load_text = "/".join(f"{x:.2f}" for x in load) if load else "?"
    flags = ", ".join(env.get("isa_flags") or []) or "none"
    return (
        f"Machine: {env.get('cpu_model')} ({env.get('arch')}), {env.get('cores')} cores, "
        f"x86 ISA **{env.get('isa')}** (flags: {flags}), load average {load_text} at write "
        f"time; python {env.get('python')}, onnxruntime {env.get('onnxruntime')}, "
        f"onnx {env.get('onnx')}, numpy {env.get('numpy')}, pillow {env.get('pillow')}."
    )


def load_cell(loadavg) -> str:
    """A table cell of the load average before / after a measurement (six numbers:
    ``os.getloadavg()`` twice)."""
    return (
        "/".join(f"{x:.1f}" for x in loadavg[:3])
        + " / "
        + "/".join(f"{x:.1f}" for x in loadavg[3:])
    )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(stem: str | Path, env: dict, data: dict, markdown: list[str] | str) -> Path:
    """Write ``results/STEM.json`` and ``results/STEM.md`` (a ``Path`` stem: that path plus
    ``.json`` / ``.md``); the markdown gets the machine line after its title (its first
    line). Returns the markdown path."""
    base = stem if isinstance(stem, Path) else RESULTS / stem
    lines = markdown.splitlines() if isinstance(markdown, str) else list(markdown)
    head, rest = (lines[:1], lines[1:]) if lines and lines[0].startswith("#") else ([], lines)
    body = head + ["", machine_line(env)] + rest
    _atomic_write(
        Path(f"{base}.json"), json.dumps({"env": env, **data}, indent=2, default=float) + "\n"
    )
    md = Path(f"{base}.md")
    _atomic_write(md, "\n".join(body).rstrip("\n") + "\n")
    return md


def load_results(stem: str) -> dict | None:
    path = RESULTS / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


NNCF_SCRIPT = """
import sys, numpy as np, onnx, nncf
src, data, out = sys.argv[1:4]
model = onnx.load(src)
d = np.load(data)
name = model.graph.input[0].name
dataset = nncf.Dataset([{name: d[k]} for k in d.files])
onnx.save(nncf.quantize(model, dataset, subset_size=len(d.files)), out)
print(nncf.__version__)
"""


def run_nncf(python: str, src, data, out):
    """NNCF PTQ with its defaults (``nncf.quantize`` on the ONNX model ``src``, calibration
    samples from the ``.npz`` ``data``) in NNCF's own venv (``python``): a peer, not a
    dependency. Returns the finished process (its last stdout line: NNCF's version)."""
    import subprocess

    return subprocess.run(
        [python, "-c", NNCF_SCRIPT, str(src), str(data), str(out)], capture_output=True, text=True
    )
