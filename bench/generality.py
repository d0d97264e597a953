"""Generality matrix: every registered pass, default options, over many architectures.

For each model x pass the pass runs alone through :class:`graphslim.pipeline.Pipeline`
(which tidies the graph and runs the ONNX checker after a pass that modified it) and the
cell is one of

* ``valid``: the pass modified the model; the ONNX checker accepts the result, it runs in
  onnxruntime on one seeded random feed, its output names and shapes are the original's and
  its values finite where the original's are; an ``exact`` pass must also stay within the
  pipeline's default tolerance (``max-rel=1e-4|max-abs=1e-6``) of the original;
* ``declined``: ``modified`` is False; the reason is the pass's first ``skipped`` entry (or
  its note / "nothing to do" when it lists none);
* ``failed``: an exception, or a result that misses one of the checks above (one-line error).

Options: the defaults, except ``prune-channels{ratio=0.5}`` (its default ratio 0 prunes
nothing), ``quantize-int8{calibration=random}`` (it needs calibration data) and
``fix-input-shapes{shapes=INPUT:<the shape the model is run at>}``.

Models: the zoo's real models (yolox-det, pplcnet-cls, ppocr-det at 1x3x320x320, ppocr-cls at
1x3x48x192) and every structure entry (random weights: structure only) except yolov8x-640.

    python bench/generality.py [--jobs 2] [--models ID ...] [--passes NAME ...]

Writes bench/results/generality.md and .json (unless ``--models`` / ``--passes`` narrow the
run; then ``--out`` names where to write).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# one BLAS thread per process: the SVDs of factorize-conv / depthwise-separable ran 8x slower
# with OpenBLAS threads fighting the worker processes (and onnxruntime) for 2 cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.feeds import random_feeds  # noqa: E402
from graphslim.model_io import load_model  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402
from graphslim.registry import default_registry  # noqa: E402
from graphslim.validate import DEFAULT_TOLERANCES, compare_outputs, reference_outputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEFT_OUT = {"yolov8x-640"}  # ~273 MB filled: bench/prune_channels.py's tool-speed case
# zoo models with dynamic input dims: the shape they are run at
SHAPES = {"ppocr-det": (1, 3, 320, 320), "ppocr-cls": (1, 3, 48, 192)}
OPTIONS = {"prune-channels": "{ratio=0.5}", "quantize-int8": "{calibration=random}"}


@dataclass
class Cell:
    status: str  # valid | declined | failed
    detail: str = ""
    seconds: float = 0.0
    max_rel: float | None = None


@dataclass
class Row:
    model: str
    source: str
    shape: list[int]
    nodes: int
    cells: dict[str, Cell] = field(default_factory=dict)


def model_ids() -> list[str]:
    catalog = zoo.load_catalog()
    return [e.id for e in catalog.values() if e.kind == "model" and e.id not in LEFT_OUT]


def run_shape(entry: zoo.ZooEntry) -> tuple[int, ...]:
    if entry.id in SHAPES:
        return SHAPES[entry.id]
    return tuple(d if isinstance(d, int) else 1 for d in entry.input_shape)


def spec_for(name: str, input_name: str, shape: tuple[int, ...]) -> str:
    if name == "fix-input-shapes":
        return f"fix-input-shapes{{shapes={input_name}:{','.join(map(str, shape))}}}"
    return name + OPTIONS.get(name, "")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 240 else line[:237] + "..."


def run_cell(model, spec, numerics, shapes, feeds, reference) -> Cell:
    t0 = time.perf_counter()
    try:
        result = Pipeline.parse(spec).run(model, validate=False, input_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - every failure is a cell of the matrix
        return Cell("failed", one_line(exc), time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    (rec,) = result.records
    if not rec.modified:
        if rec.skipped:
            node, reason = rec.skipped[0]
            more = f" (+{len(rec.skipped) - 1} more)" if len(rec.skipped) > 1 else ""
            detail = f"{node}: {reason}{more}"
        else:
            detail = rec.notes[0] if rec.notes else "nothing to do"
        return Cell("declined", detail, seconds)
    candidate = result.model
    try:
        onnx.checker.check_model(candidate)
        got = reference_outputs(candidate, feeds, label="candidate")
    except Exception as exc:  # noqa: BLE001
        return Cell("failed", one_line(exc), seconds)
    names = list(reference[0])
    if list(got[0]) != names:
        return Cell("failed", f"output names {list(got[0])} != {names}", seconds)
    tolerances = DEFAULT_TOLERANCES if numerics == "exact" else ()
    cmp = compare_outputs(reference, got, tolerances)
    worst = cmp.worst("max-rel")
    if not cmp.passed:
        return Cell("failed", cmp.failure_summary(), seconds, worst)
    parts = []
    if rec.before.macs and rec.after.macs and rec.after.macs != rec.before.macs:
        parts.append(f"MACs {rec.after.macs / rec.before.macs:.2f}x")
    if rec.skipped:
        parts.append(f"{len(rec.skipped)} node(s) declined")
    return Cell("valid", ", ".join(parts), seconds, worst)


def run_model(model_id: str, pass_names: list[str]) -> Row:
    logging.disable(logging.WARNING)  # the passes' warnings (random calibration, ...) are known
    entry = zoo.load_catalog()[model_id]
    model = load_model(zoo.fetch(model_id))
    shape = run_shape(entry)
    shapes = {entry.input_name: shape}
    feeds = random_feeds(model, count=1, seed=0, shapes=shapes)
    reference = reference_outputs(model, feeds)
    row = Row(model_id, entry.source, list(shape), len(model.graph.node))
    registry = default_registry()
    for name in pass_names:
        numerics = registry.get(name).numerics
        row.cells[name] = run_cell(
            model, spec_for(name, entry.input_name, shape), numerics, shapes, feeds, reference
        )
        c = row.cells[name]
        print(f"  {model_id:28s} {name:26s} {c.status:9s} {c.seconds:6.1f}s {c.detail[:90]}",
              flush=True)  # fmt: skip
    return row


# ----------------------------------------------------------------------------- reporting

ABBREV = {"valid": "ok", "declined": "-", "failed": "FAIL"}


def markdown(rows: list[Row], pass_names: list[str], seconds: float) -> str:
    short = {
        "constants-to-initializers": "c2i",
        "depthwise-separable": "dw-sep",
        "fix-input-shapes": "fix-shapes",
        "factorize-conv": "factorize",
        "quantize-int8": "int8",
        "prune-channels": "prune 0.5",
    }
    head = ["model", *[short.get(n, n) for n in pass_names]]
    lines = [
        "# Generality: every pass, default options, over many architectures",
        "",
        f"`python bench/generality.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"{seconds / 60:.1f} min. ok = valid (checker, onnxruntime run, output names/shapes "
        "kept, exact passes within max-rel 1e-4); - = declined (modified False, reason below); "
        "FAIL = exception or invalid output. Options: defaults, except "
        "`prune-channels{ratio=0.5}`, `quantize-int8{calibration=random}`, "
        "`fix-input-shapes{shapes=<the run shape>}`. Structure models have random weights.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [ABBREV[r.cells[n].status] if n in r.cells else "" for n in pass_names]
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    counts = {s: sum(c.status == s for r in rows for c in r.cells.values()) for s in ABBREV}
    lines += ["", "Cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    for status, title in (("failed", "Failed cells"), ("declined", "Declined cells")):
        found = [(r.model, n, c) for r in rows for n, c in r.cells.items() if c.status == status]
        idle = [(m, n) for m, n, c in found if c.detail == "nothing to do"]
        found = [(m, n, c) for m, n, c in found if c.detail != "nothing to do"]
        if found or idle:
            lines += [f"## {title}", ""]
            lines += [f"- {m} x {n}: {c.detail}" for m, n, c in found]
        if idle:
            by_pass: dict[str, list[str]] = {}
            for m, n in idle:
                by_pass.setdefault(n, []).append(m)
            lines += [
                f"- {n}: nothing to do on {', '.join(ms)}" for n, ms in sorted(by_pass.items())
            ]
        if found or idle:
            lines.append("")
    lines += [
        "## Valid cells: output error (max-rel vs the original, one random feed) and MACs",
        "",
        "Random weights and random inputs: for the lossy passes these say the graph runs, not"
        " how accurate it is (see bench/prune_channels.py, quantize_int8.py, conv_rewrites.py).",
        "",
    ]
    lines += ["| model | " + " | ".join(short.get(n, n) for n in pass_names) + " |"]
    lines += ["|" + "---|" * (len(pass_names) + 1)]
    for r in rows:
        vals = []
        for n in pass_names:
            c = r.cells.get(n)
            text = f"{c.max_rel:.1e}" if c and c.max_rel is not None else ""
            if c and c.detail.startswith("MACs "):
                text += f" ({c.detail.split(',')[0].removeprefix('MACs ')})"
            vals.append(text)
        lines.append(f"| {r.model} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="zoo ids (default: all)")
    parser.add_argument("--passes", nargs="+", default=None, help="pass names (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="models run in parallel processes")
    parser.add_argument(
        "--out", type=Path, default=None, help="results stem (default: results/generality)"
    )
    args = parser.parse_args(argv)
    ids = args.models or model_ids()
    pass_names = args.passes or default_registry().names()
    t0 = time.perf_counter()
    rows: dict[str, Row] = {}
    catalog = zoo.load_catalog()
    # the largest inputs first, so the two workers finish together
    by_cost = sorted(ids, key=lambda i: -int(np.prod(run_shape(catalog[i]))))
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_model, i, pass_names): i for i in by_cost}
        for fut in cf.as_completed(futures):
            model_id = futures[fut]
            try:
                rows[model_id] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a model that cannot even load
                row = Row(model_id, "?", [], 0)
                row.cells = {n: Cell("failed", f"model: {one_line(exc)}") for n in pass_names}
                rows[model_id] = row
    ordered = [rows[i] for i in ids]
    seconds = time.perf_counter() - t0
    text = markdown(ordered, pass_names, seconds)
    print(text)
    full = args.models is None and args.passes is None
    stem = args.out or (RESULTS / "generality" if full else None)
    if stem is not None:
        payload = {
            "seconds": round(seconds, 1),
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "passes": pass_names,
            "rows": [asdict(r) for r in ordered],
        }
        write_results(Path(stem).with_suffix(""), environment(), payload, text)
    failed = sum(c.status == "failed" for r in ordered for c in r.cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
