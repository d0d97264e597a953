"""prune-channels on real graphs: validity, cost, latency, error with reconstruction, tool speed.

Everything goes through the project's API: models from :func:`graphslim.zoo.fetch` (PyPI
models with real weights; ``*-640`` / ``*-224`` structure models with RANDOM weights: they
prove structure, never accuracy), passes through :class:`graphslim.pipeline.Pipeline`.

(a) ``prune-channels{ratio=0.5}`` on every model (YOLOv8n as ultralytics' default export and
    unsimplified, each also after ``simplify``; YOLOv8s likewise; YOLO11n; yolox-det,
    pplcnet-cls, ppocr-det; torchvision ResNet-18/50, MobileNetV2/V3-Large, EfficientNet-B0):
    ONNX checker, one onnxruntime run on a seeded random feed, output shapes equal to the
    original's and finite values, MACs and parameter ratios (graphslim.metrics), groups
    pruned / frozen.
(b) YOLOv8n at ratio 0.5: Conv MACs ratio (goal <= 0.40), output shape and the frozen
    (head) groups with their reasons, and onnxruntime CPU latency of original and pruned
    timed alternately in one :func:`graphslim.bench.bench` call.
(c) yolox-det (real weights) at ratio 0.2: plain removal, with mean compensation, and with
compensation plus ``reconstruct=true``:
    calibration feeds (given to the pass through ``PassContext(feeds=...)``) from astronaut,
    coffee, chelsea, rocket, china, flower; output error (graphslim.validate.compare) on the
    held-out bus, zidane, motorcycle-left, page, text; preprocessing ``raw-bgr`` at 416.
(d) tool speed on the filled YOLOv8x (~273 MB): ``onnx.load`` + ``onnx.save`` of the file vs
    ``load_model`` + ``Pipeline.run(validate=False)`` (analysis, pruning, the pipeline's
    tidy/checker/metrics) + ``save_model``; best of N, alternating.
(e) onnxsim's ``apply_structured_pruning(model, sparsity=0.5)`` on the same inputs as (a),
    with the same checks.

    python bench/prune_channels.py [--quick] [--runs 30]

``--quick`` (under ~3 minutes): a subset of (a)/(e), (b) with 10 timed runs, (c) calibrated
on the first 3 calibration images only, (d) once. Writes bench/results/prune_channels.md and .json next to this file.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import Preprocess, preprocess_image, random_feeds  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.model_io import load_model, save_model  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402
from graphslim.runtime import Session  # noqa: E402
from graphslim.validate import compare, reference_outputs  # noqa: E402

PRUNE = "prune-channels{ratio=0.5}"
CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
SPEED_MODEL = "yolov8x-640"
LATENCY_MODEL = "yolov8n-640"


@dataclass(frozen=True)
class Case:
    label: str
    model_id: str
    prefix: str = ""  # passes run before pruning (the pruned model's input)
    shapes: str = ""  # input shape overrides for dynamic inputs
    quick: bool = False


CASES = [
    Case("yolov8n (export)", "yolov8n-640", quick=True),
    Case("yolov8n (export) +simplify", "yolov8n-640", "simplify"),
    Case("yolov8n (unsimplified)", "yolov8n-640-raw", quick=True),
    Case("yolov8n (unsimplified) +simplify", "yolov8n-640-raw", "simplify"),
    Case("yolov8s (export)", "yolov8s-640"),
    Case("yolov8s (export) +simplify", "yolov8s-640", "simplify"),
    Case("yolo11n", "yolo11n-640"),
    Case("yolox-det", "yolox-det", quick=True),
    Case("pplcnet-cls", "pplcnet-cls", shapes="x:1,3,224,224", quick=True),
    Case("ppocr-det", "ppocr-det", shapes="x:1,3,640,640"),
    Case(
        "ppocr-det +constants-to-initializers",
        "ppocr-det",
        "constants-to-initializers",
        "x:1,3,640,640",
    ),
    Case("resnet18", "resnet18-224", quick=True),
    Case("resnet50", "resnet50-224"),
    Case("mobilenetv2", "mobilenetv2-224"),
    Case("mobilenetv3-large", "mobilenetv3-224"),
    Case("mobilenetv3-large +simplify", "mobilenetv3-224", "simplify"),
    Case("efficientnet-b0", "efficientnet-b0-224"),
    Case("efficientnet-b0 +simplify", "efficientnet-b0-224", "simplify"),
]


def _shapes(text: str) -> dict[str, tuple[int, ...]] | None:
    from graphslim.feeds import parse_shape_overrides

    return parse_shape_overrides(text) or None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 320 else line[:317] + "..."


def validity(original_shapes, candidate, feed, shapes, base) -> dict:
    """Checker, one onnxruntime run, output shapes, MACs / params ratios of ``candidate``."""
    row: dict = {}
    try:
        onnx.checker.check_model(candidate)
        row["checker"] = "ok"
    except Exception as exc:  # the checker's error is the result
        row["checker"] = _one_line(exc)
    try:
        with Session(candidate, label="candidate") as s:
            got = s.run({k: v for k, v in feed.items() if k in s.input_names})
        row["ort"] = "ok"
        row["output_shapes"] = {k: list(np.shape(v)) for k, v in got.items()}
        row["shapes_kept"] = row["output_shapes"] == original_shapes
        row["finite"] = all(bool(np.isfinite(v).all()) for v in got.values())
    except Exception as exc:
        row["ort"] = _one_line(exc)
        row["shapes_kept"] = False
    try:
        st = model_stats(candidate, shapes)
        row["macs_ratio"] = st.macs / base.macs if st.macs and base.macs else None
        row["conv_macs_ratio"] = (
            st.macs_by_op.get("Conv", 0) / base.macs_by_op["Conv"]
            if base.macs_by_op.get("Conv")
            else None
        )
        row["params_ratio"] = st.params / base.params if base.params else None
    except Exception as exc:
        row["metrics"] = _one_line(exc)
    row["valid"] = (
        row["checker"] == "ok" and row["ort"] == "ok" and row["shapes_kept"] and row["finite"]
    )
    return row


def run_validity(cases: list[Case]) -> tuple[list[dict], list[dict]]:
    """(a) ours and (e) onnxsim's pruner on each case."""
    try:
        import onnxsim

        onnxsim_prune = getattr(onnxsim, "apply_structured_pruning", None)
        onnxsim_version = getattr(onnxsim, "__version__", "?")
    except ImportError:
        onnxsim_prune, onnxsim_version = None, None
    ours, theirs = [], []
    for case in cases:
        shapes = _shapes(case.shapes)
        original = onnx.load(str(zoo.fetch(case.model_id)))
        base = model_stats(original, shapes)
        feed = random_feeds(original, count=1, seed=0, shapes=shapes)[0]
        original_shapes = {
            k: list(np.shape(v)) for k, v in reference_outputs(original, [feed])[0].items()
        }
        prep = original
        if case.prefix:
            prep = (
                Pipeline.parse(case.prefix).run(original, validate=False, input_shapes=shapes).model
            )
        row = {"case": case.label, "model": case.model_id, "pipeline": _pipeline(case)}
        t0 = time.perf_counter()
        try:
            result = Pipeline.parse(PRUNE).run(prep, validate=False, input_shapes=shapes)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rec = result.records[-1]
            row |= {
                k: rec.counters.get(k)
                for k in ("groups", "groups_pruned", "groups_frozen", "channels_removed")
            }
            row["modified"] = rec.modified
            row["frozen"] = [f"{n}: {r}" for n, r in rec.skipped]
            row |= validity(original_shapes, result.model, feed, shapes, base)
        except Exception as exc:
            row |= {"valid": False, "error": _one_line(exc), "traceback": traceback.format_exc()}
        ours.append(row)
        print(_line("ours", row), flush=True)

        other = {"case": case.label, "model": case.model_id, "onnxsim": onnxsim_version}
        if onnxsim_prune is None:
            other |= {"valid": None, "error": "apply_structured_pruning not in installed onnxsim"}
        else:
            t0 = time.perf_counter()
            try:
                pruned = onnxsim_prune(copy.deepcopy(prep), sparsity=0.5)
                other["seconds"] = round(time.perf_counter() - t0, 2)
                other |= validity(original_shapes, pruned, feed, shapes, base)
            except Exception as exc:
                other |= {"valid": False, "error": _one_line(exc)}
        theirs.append(other)
        print(_line("onnxsim", other), flush=True)
    return ours, theirs


def _pipeline(case: Case) -> str:
    return f"{case.prefix},{PRUNE}" if case.prefix else PRUNE


def _line(who: str, r: dict) -> str:
    if "error" in r:
        return f"  {who:8s} {r['case']}: FAILED {r['error']}"
    macs = r.get("macs_ratio")
    return (
        f"  {who:8s} {r['case']}: valid={r['valid']} checker={r['checker']} ort={r['ort']} "
        f"shapes_kept={r['shapes_kept']} MACs x{macs if macs is None else round(macs, 3)}"
    )


def run_latency(runs: int) -> dict:
    """(b) YOLOv8n at ratio 0.5: conv MACs, head layout, latency side by side."""
    original = onnx.load(str(zoo.fetch(LATENCY_MODEL)))
    result = Pipeline.parse(PRUNE).run(original, validate=False)
    pruned = result.model
    base, st = model_stats(original), model_stats(pruned)
    feed = random_feeds(original, count=1, seed=0)[0]
    ref = reference_outputs(original, [feed])[0]
    got = reference_outputs(pruned, [feed], label="pruned")[0]
    timing = bench([("original", original), ("pruned", pruned)], feed, warmup=5, runs=runs)
    rec = result.records[-1]
    return {
        "model": LATENCY_MODEL,
        "conv_macs_original": base.macs_by_op["Conv"],
        "conv_macs_pruned": st.macs_by_op["Conv"],
        "conv_macs_ratio": st.macs_by_op["Conv"] / base.macs_by_op["Conv"],
        "macs_ratio": st.macs / base.macs,
        "params_ratio": st.params / base.params,
        "output_shapes_original": {k: list(v.shape) for k, v in ref.items()},
        "output_shapes_pruned": {k: list(v.shape) for k, v in got.items()},
        "frozen": [f"{n}: {r}" for n, r in rec.skipped],
        "groups_pruned": rec.counters.get("groups_pruned"),
        "groups": rec.counters.get("groups"),
        "latency": [t.to_dict() for t in timing],
        "latency_ratio": timing[1].ratio,
    }


def _image_feeds(model: onnx.ModelProto, ids: list[str]) -> list[dict]:
    spec = Preprocess.parse("raw-bgr")
    name = model.graph.input[0].name
    paths = zoo.fetch_all(ids)
    return [{name: preprocess_image(paths[i], spec, (416, 416))[0][None]} for i in ids]


def run_reconstruct(calibration_ids: list[str]) -> list[dict]:
    """(c) yolox-det at ratio 0.2, with and without reconstruct, on held-out images."""
    original = onnx.load(str(zoo.fetch("yolox-det")))
    calibration = _image_feeds(original, calibration_ids)
    evaluation = _image_feeds(original, EVALUATION)
    reference = reference_outputs(original, evaluation)
    base = model_stats(original)
    rows = []
    # Mean compensation (default since it was added) and least-squares reconstruction, each
    # against the plain removal, so the value of both shows.
    variants = ((False, False), (True, False), (True, True))
    for compensate, reconstruct in variants:
        text = (
            f"prune-channels{{ratio=0.2,compensate={str(compensate).lower()},"
            f"reconstruct={str(reconstruct).lower()}}}"
        )
        ctx = PassContext(feeds=calibration)
        t0 = time.perf_counter()
        result = Pipeline.parse(text).run(original, ctx=ctx, validate=False)
        seconds = time.perf_counter() - t0
        cmp = compare(original, result.model, evaluation, [], reference=reference)
        rec = result.records[-1]
        layer = _layer_errors(rec.notes)
        rows.append(
            {
                "pipeline": text,
                "seconds": round(seconds, 1),
                "macs_ratio": model_stats(result.model).macs / base.macs,
                "max_rel": cmp.worst("max-rel"),
                "mean_abs": cmp.worst("mean-abs"),
                "cosine": cmp.worst("cosine"),
                "layers_reconstructed": rec.counters.get("layers_reconstructed", 0),
                "layer_rel_error_mean_before": layer[0],
                "layer_rel_error_mean_after": layer[1],
            }
        )
        print(
            f"  yolox-det {text}: max-rel {cmp.worst('max-rel'):.4g}, mean-abs "
            f"{cmp.worst('mean-abs'):.4g}, cosine {cmp.worst('cosine'):.5f} ({seconds:.0f} s)",
            flush=True,
        )
    return rows


def _layer_errors(notes: list[str]) -> tuple[float | None, float | None]:
    """Mean per-layer relative error before/after from 'reconstruct X: rel error a -> b'."""
    pairs = []
    for note in notes:
        if note.startswith("reconstruct ") and "rel error" in note:
            a, _, b = note.rpartition("rel error ")[2].partition(" -> ")
            pairs.append((float(a), float(b)))
    if not pairs:
        return None, None
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def run_speed(repeats: int) -> dict:
    """(d) onnx.load + onnx.save vs graphslim load + prune + save on the filled YOLOv8x."""
    path = zoo.fetch(SPEED_MODEL)
    plain, ours, parts = [], [], []
    with tempfile.TemporaryDirectory(prefix="graphslim-bench-") as tmp:
        for _ in range(repeats):
            t0 = time.perf_counter()
            m = onnx.load(str(path))
            onnx.save(m, str(Path(tmp) / "plain.onnx"))
            plain.append(time.perf_counter() - t0)
            del m

            t0 = time.perf_counter()
            m = load_model(path)
            t1 = time.perf_counter()
            result = Pipeline.parse(PRUNE).run(m, validate=False)
            t2 = time.perf_counter()
            save_model(result.model, Path(tmp) / "pruned.onnx")
            t3 = time.perf_counter()
            ours.append(t3 - t0)
            parts.append(
                {
                    "load": t1 - t0,
                    "pipeline": t2 - t1,
                    "pass": result.records[-1].seconds,
                    "save": t3 - t2,
                }
            )
            macs = result.final.macs / result.initial.macs
            del m, result
        best = int(np.argmin(ours))
    return {
        "model": SPEED_MODEL,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "repeats": repeats,
        "onnx_load_save_s": min(plain),
        "graphslim_s": ours[best],
        "graphslim_parts_s": parts[best],
        "ratio": ours[best] / min(plain),
        "macs_ratio": macs,
        "all_onnx_s": plain,
        "all_graphslim_s": ours,
    }


# ------------------------------------------------------------------------------ output


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _status(r: dict) -> tuple[str, str, str]:
    if r.get("valid") is None:
        return "n/a", "n/a", "n/a"
    if "error" in r:
        return "-", "-", "-"
    checker = "ok" if r["checker"] == "ok" else "FAIL"
    ort = "ok" if r["ort"] == "ok" else "FAIL"
    return checker, ort, _fmt(r["shapes_kept"])


def tables(ours, theirs, latency, recon, speed, calibration) -> list:
    out = []
    if ours:
        rows = []
        for r in ours:
            c, o, s = _status(r)
            rows.append(
                [
                    r["case"],
                    r["model"],
                    _fmt(r.get("valid")),
                    c,
                    o,
                    s,
                    _fmt(r.get("macs_ratio")),
                    _fmt(r.get("params_ratio")),
                    f"{_fmt(r.get('groups_pruned'))}/{_fmt(r.get('groups'))}",
                    _fmt(r.get("groups_frozen")),
                    _fmt(r.get("seconds"), 2),
                    _problem(r),
                ]
            )
        out.append(
            (
                f"(a) {PRUNE} (prefix passes in the case name run first)",
                ["case", "zoo id", "valid", "checker", "ort run", "shapes kept", "MACs ratio",
                 "params ratio", "groups pruned", "frozen", "s", "problem"],
                rows,
            )
        )  # fmt: skip
    if theirs:
        rows = []
        for r in theirs:
            c, o, s = _status(r)
            rows.append(
                [
                    r["case"],
                    _fmt(r.get("valid")),
                    c,
                    o,
                    s,
                    _fmt(r.get("macs_ratio")),
                    _fmt(r.get("params_ratio")),
                    _fmt(r.get("seconds"), 2),
                    _problem(r),
                ]
            )
        version = theirs[0].get("onnxsim") or "not installed"
        out.append(
            (
                f"(e) onnxsim {version} apply_structured_pruning(sparsity=0.5), same inputs",
                ["case", "valid", "checker", "ort run", "shapes kept", "MACs ratio",
                 "params ratio", "s", "problem"],
                rows,
            )
        )  # fmt: skip
    if latency:
        t0, t1 = latency["latency"]
        shape0 = latency["output_shapes_original"]
        shape1 = latency["output_shapes_pruned"]
        out.append(
            (
                f"(b) {latency['model']} at ratio 0.5: cost and onnxruntime CPU latency",
                ["conv MACs (orig -> pruned)", "conv MACs ratio", "goal", "params ratio",
                 "output shape", "latency ms median (orig -> pruned)", "latency ratio"],
                [[
                    f"{latency['conv_macs_original']:,} -> {latency['conv_macs_pruned']:,}",
                    _fmt(latency["conv_macs_ratio"]),
                    "<= 0.40 " + ("met" if latency["conv_macs_ratio"] <= 0.40 else "MISSED"),
                    _fmt(latency["params_ratio"]),
                    f"{shape1}" + (" (kept)" if shape0 == shape1 else f" != {shape0}"),
                    f"{t0['median_ms']:.1f} -> {t1['median_ms']:.1f}",
                    _fmt(latency["latency_ratio"]),
                ]],
            )
        )  # fmt: skip
        out.append(
            (
                f"(b) {latency['model']}: frozen groups ({len(latency['frozen'])} of "
                f"{latency['groups']}; {latency['groups_pruned']} pruned)",
                ["frozen group (first source: reason)"],
                [[f] for f in latency["frozen"]],
            )
        )
    if recon:
        out.append(
            (
                "(c) yolox-det (real weights) at ratio 0.2: error on held-out images "
                f"({', '.join(EVALUATION)}); calibration: {', '.join(calibration)}",
                ["pipeline", "MACs ratio", "max-rel", "mean-abs", "cosine",
                 "layers refit", "layer rel err before -> after", "s"],
                [
                    [
                        r["pipeline"],
                        _fmt(r["macs_ratio"]),
                        f"{r['max_rel']:.4g}",
                        f"{r['mean_abs']:.4g}",
                        f"{r['cosine']:.5f}",
                        _fmt(r["layers_reconstructed"]),
                        "-"
                        if r["layer_rel_error_mean_before"] is None
                        else f"{r['layer_rel_error_mean_before']:.4f} -> "
                        f"{r['layer_rel_error_mean_after']:.4f}",
                        _fmt(r["seconds"], 1),
                    ]
                    for r in recon
                ],
            )
        )  # fmt: skip
    if speed:
        p = speed["graphslim_parts_s"]
        out.append(
            (
                f"(d) tool speed on {speed['model']} ({speed['file_mb']} MB filled), best of "
                f"{speed['repeats']}",
                ["onnx.load + onnx.save s", "graphslim load + prune + save s",
                 "of which load / pipeline (pass) / save s", "ratio", "goal"],
                [[
                    f"{speed['onnx_load_save_s']:.2f}",
                    f"{speed['graphslim_s']:.2f}",
                    f"{p['load']:.2f} / {p['pipeline']:.2f} ({p['pass']:.2f}) / {p['save']:.2f}",
                    f"{speed['ratio']:.2f}",
                    "<= 5x " + ("met" if speed["ratio"] <= 5 else "MISSED"),
                ]],
            )
        )  # fmt: skip
    return out


def _problem(r: dict) -> str:
    if "error" in r:
        return r["error"]
    for key in ("checker", "ort"):
        if r.get(key) not in (None, "ok"):
            return f"{key}: {r[key]}"
    if r.get("shapes_kept") is False:
        return f"output shapes {r.get('output_shapes')}"
    if r.get("finite") is False:
        return "NaN/Inf in the outputs"
    if r.get("modified") is False:
        return "nothing pruned (no prunable group)"
    return ""


def markdown(blocks, meta: dict) -> str:
    parts = ["# prune-channels\n"]
    for title, head, rows in blocks:
        parts.append(f"### {title}\n")
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "---|" * len(head))
        for row in rows:
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        parts.append("")
    parts.append(
        f"{meta['machine']}; onnxruntime {meta['onnxruntime']}, onnx {meta['onnx']}; "
        f"{meta['mode']} run, {meta['seconds']} s. Structure models (`*-640`, `*-224`) have "
        "RANDOM weights (filled from seed 0): they prove structure and cost, never accuracy; "
        "yolox-det, pplcnet-cls, ppocr-det are the real PyPI models. Validity: ONNX checker, "
        "one onnxruntime CPU run on a seeded random feed, every output's shape equal to the "
        "original's and every value finite. MACs and params from graphslim.metrics "
        "(Conv/ConvTranspose/Gemm/MatMul; ratio to the original before any prefix pass). "
        "Latency: graphslim.bench.bench, original and pruned alternating, median of "
        f"{meta['runs']} runs, "
        f"{meta['threads']} threads. Tool speed: wall-clock of the whole call sequence, "
        "file already materialized.\n"
    )
    return "\n".join(parts)


def render(blocks) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        for title, head, rows in blocks:
            print(f"\n{title}\n" + " | ".join(head))
            for row in rows:
                print(" | ".join(row))
        return
    console = Console(width=200)
    for title, head, rows in blocks:
        table = Table(title=title, title_justify="left", show_lines=False)
        for h in head:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset, under ~3 minutes")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds for (b)")
    ap.add_argument("--only", default="abcde", help="which parts to run, e.g. 'ae' (default: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime

    runs = args.runs or (10 if args.quick else 30)
    cases = [c for c in CASES if c.quick] if args.quick else CASES
    calibration = CALIBRATION[:3] if args.quick else CALIBRATION
    t0 = time.perf_counter()
    ours = theirs = recon = []
    latency = speed = None
    if "a" in args.only or "e" in args.only:
        print(f"(a)/(e) {len(cases)} models", flush=True)
        ours, theirs = run_validity(cases)
        ours = ours if "a" in args.only else []
        theirs = theirs if "e" in args.only else []
    if "b" in args.only:
        print(f"(b) {LATENCY_MODEL} latency, {runs} runs", flush=True)
        latency = run_latency(runs)
    if "c" in args.only:
        print("(c) yolox-det reconstruct", flush=True)
        recon = run_reconstruct(calibration)
    if "d" in args.only:
        print(f"(d) tool speed on {SPEED_MODEL}", flush=True)
        speed = run_speed(1 if args.quick else 2)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "threads": os.cpu_count(),
        "runs": runs,
        "mode": "quick" if args.quick else "full",
        "calibration": calibration,
        "evaluation": EVALUATION,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    blocks = tables(ours, theirs, latency, recon, speed, calibration)
    render(blocks)
    stem = "prune_channels" if not args.quick else "prune_channels.quick"
    data = {
        "meta": meta,
        "validity": ours,
        "onnxsim": theirs,
        "latency": latency,
        "reconstruct": recon,
        "tool_speed": speed,
    }
    md = write_results(stem, environment(), data, markdown(blocks, meta))
    print(f"wrote {md} and .json in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
