"""Conv rewrites on real detectors: what the SVD initialisation buys, and what it costs on CPU.

For YOLOv8n (zoo ``yolov8n-640``: ultralytics structure, RANDOM weights: it proves structure,
never accuracy) and yolox-det (zoo ``yolox-det``: real trained weights), run

* factorize-conv at energy 0.9 / 0.95 / 0.99 (kxk -> kx1 + 1xk, spatial SVD init);
* depthwise-separable at multiplier 1 / 2 / 4 (per-channel SVD init);

and the same structures with the naive (seed-style) initialisation instead of the SVD:
random Kaiming-uniform factorized kernels (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, PyTorch's
Conv2d default), and for depthwise-separable random depthwise kernels with an identity-like
pointwise (output ``o`` reads mid channel ``o mod (Cin*M)``). Biases are kept in both.

Per variant: the MACs and parameter ratio to the original (graphslim.metrics), the output
error on held-out real images (graphslim.validate statistics: max-rel, mean-abs, cosine, worst output),
and onnxruntime CPU latency timed alternately with the original in one graphslim.bench.bench
call (naive variants have the SVD variant's exact structure, so they are not timed again).
The SVD init is data-free, so every image is held out (none is used to build a variant).

    python bench/conv_rewrites.py [--runs 15] [--models yolov8n-640,yolox-det]

writes bench/results/conv_rewrites.md and .json next to this file.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import graph as G  # noqa: E402
from graphslim import zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import Preprocess, preprocess_image  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.passes.depthwise_separable import DepthwiseSeparable  # noqa: E402
from graphslim.passes.factorize_conv import FactorizeConv  # noqa: E402
from graphslim.validate import compare_outputs, reference_outputs  # noqa: E402

IMAGES = ["bus", "zidane", "astronaut", "coffee", "chelsea", "motorcycle-left", "rocket"]
MODELS = {
    # id -> (preprocessing, input size, what the weights are)
    "yolov8n-640": ("yolo", (640, 640), "random weights (structure only)"),
    "yolox-det": ("raw-bgr", (416, 416), "real weights"),
}
SCORE = 0.25  # a detection: an anchor whose score (yolox: obj * cls; yolov8: best class) >= this


def _detections(model_id: str, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [A, 4] in the model's raw units, scores [A]) of one image's output."""
    if model_id == "yolox-det":  # [1, A, 6]: x, y, w, h (raw), obj, cls
        return out[0, :, :4], out[0, :, 4] * out[0, :, 5]
    return out[0, :4].T, out[0, 4:].max(axis=0)  # ultralytics [1, 4 + classes, A]


VARIANTS = [
    ("factorize-conv", {"energy": 0.9}),
    ("factorize-conv", {"energy": 0.95}),
    ("factorize-conv", {"energy": 0.99}),
    ("depthwise-separable", {"multiplier": 1}),
    ("depthwise-separable", {"multiplier": 2}),
    ("depthwise-separable", {"multiplier": 4}),
]
PASSES = {"factorize-conv": FactorizeConv, "depthwise-separable": DepthwiseSeparable}


def naive_init(model: onnx.ModelProto, details: list[dict], seed: int = 0) -> onnx.ModelProto:
    """The same structure with seed-style weights in place of the SVD factors."""
    out = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in out.graph.initializer}
    for d in details:
        first, second = (inits[n] for n in d["initializers"])
        a, b = numpy_helper.to_array(first), numpy_helper.to_array(second)
        a = _kaiming(rng, a.shape).astype(a.dtype)
        if "rank" in d:  # factorize-conv: both kernels random
            b = _kaiming(rng, b.shape).astype(b.dtype)
        else:  # depthwise-separable: identity-like pointwise [Cout, Cin*M, 1, 1]
            cout, mid = b.shape[:2]
            b = np.zeros_like(b)
            b[np.arange(cout), np.arange(cout) % mid] = 1
        first.CopyFrom(numpy_helper.from_array(a, first.name))
        second.CopyFrom(numpy_helper.from_array(b, second.name))
    return out


def _kaiming(rng, shape) -> np.ndarray:
    bound = 1.0 / np.sqrt(int(np.prod(shape[1:])))
    return rng.uniform(-bound, bound, shape)


def image_feeds(model: onnx.ModelProto, preprocessing: str, size) -> list[dict]:
    spec = Preprocess.parse(preprocessing)
    name = model.graph.input[0].name
    paths = zoo.fetch_all(IMAGES)
    return [{name: preprocess_image(paths[i], spec, size)[0][None]} for i in IMAGES]


def measure(model_id, original, variant, feeds, reference, stats0) -> dict:
    """Size ratios, output error (compare) and detection agreement on the held-out images:
    of the original's detections (anchors with score >= SCORE), the fraction the variant keeps
    and the mean |box difference| there, plus the mean |score difference| over all anchors."""
    st = model_stats(variant)
    got = reference_outputs(variant, feeds, label="variant")
    cmp = compare_outputs(reference, got, [])
    kept, found, box_err, score_err = 0, 0, [], []
    for ref, out in zip(reference, got):
        b0, s0 = _detections(model_id, next(iter(ref.values())))
        b1, s1 = _detections(model_id, next(iter(out.values())))
        det = s0 >= SCORE
        found += int(det.sum())
        kept += int((s1[det] >= SCORE).sum())
        box_err.append(np.abs(b1[det] - b0[det]).ravel())
        score_err.append(np.abs(s1 - s0))
    boxes = np.concatenate(box_err)
    return {
        "macs_ratio": st.macs / stats0.macs,
        "params_ratio": st.params / stats0.params,
        "max_rel": cmp.worst("max-rel"),
        "mean_abs": cmp.worst("mean-abs"),
        "cosine": cmp.worst("cosine"),
        "detections": found,
        "det_kept": kept / found if found else float("nan"),
        "det_box_mae": float(boxes.mean()) if boxes.size else float("nan"),
        "score_mae": float(np.concatenate(score_err).mean()),
    }


def run(models: list[str], runs: int) -> list[dict]:
    rows = []
    for model_id in models:
        preprocessing, size, weights = MODELS[model_id]
        original = onnx.load(str(zoo.fetch(model_id)))
        feeds = image_feeds(original, preprocessing, size)
        reference = reference_outputs(original, feeds)
        stats0 = model_stats(original)
        print(f"{model_id}: {stats0.macs:,} MACs, {len(feeds)} images", flush=True)
        stem = next(n for n in original.graph.node if n.op_type == "Conv")
        stem_name = stem.name or stem.output[0]
        variants = VARIANTS + [(p, dict(o, exclude=f"^{stem_name}$")) for p, o in VARIANTS]
        for pass_name, opts in variants:
            t0 = time.perf_counter()
            result = PASSES[pass_name](**opts)(copy.deepcopy(original), PassContext())
            seconds = time.perf_counter() - t0
            G.remove_unused_initializers(result.model.graph)  # as the pipeline's tidy step does
            setting = ",".join(f"{k}={v}" for k, v in opts.items())
            base = {
                "model": model_id,
                "weights": weights,
                "pass": pass_name,
                "setting": setting,
                "layers": len(result.details),
                "declined": len(result.skipped),
                "pass_seconds": round(seconds, 2),
                "weight_rel_error_max": result.counters.get("weight_rel_error_max", 0.0),
            }
            svd = dict(
                base,
                init="svd",
                **measure(model_id, original, result.model, feeds, reference, stats0),
            )
            timing = bench(
                [("original", original), (f"{pass_name}{{{setting}}}", result.model)],
                feeds[0],
                warmup=3,
                runs=runs,
            )
            svd |= {
                "latency_original_ms": timing[0].median_ms,
                "latency_ms": timing[1].median_ms,
                "latency_ratio": timing[1].ratio,
            }
            rows.append(svd)
            if result.details:
                naive = naive_init(result.model, result.details)
                m = measure(model_id, original, naive, feeds, reference, stats0)
                rows.append(dict(base, init="naive", **m))
            print(_line(svd), flush=True)
    return rows


def _line(r: dict) -> str:
    return (
        f"  {r['pass']}{{{r['setting']}}} {r['init']}: {r['layers']} layers, MACs "
        f"x{r['macs_ratio']:.3f}, max-rel {r['max_rel']:.3g}, cosine {r['cosine']:.5f}, "
        f"dets kept {r['det_kept']:.2f}, box mae {r['det_box_mae']:.3g}, "
        f"latency x{r.get('latency_ratio') or float('nan'):.2f}"
    )


def markdown(rows: list[dict], meta: dict) -> str:
    head = (
        "| model | variant | init | layers | MACs ratio | params ratio | max-rel | mean-abs "
        "| cosine | dets kept | box MAE | score MAE | latency ms (orig -> variant) "
        "| latency ratio |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    dets = ", ".join(f"{m}: {n}" for m, n in {r["model"]: r["detections"] for r in rows}.items())
    for r in rows:
        lat = (
            f"{r['latency_original_ms']:.1f} -> {r['latency_ms']:.1f}"
            if "latency_ms" in r
            else "(same structure as svd)"
        )
        ratio = f"{r['latency_ratio']:.2f}" if "latency_ratio" in r else ""
        lines.append(
            f"| {r['model']} | {r['pass']}{{{r['setting']}}} | {r['init']} | {r['layers']} "
            f"| {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | {r['max_rel']:.3g} "
            f"| {r['mean_abs']:.3g} | {r['cosine']:.4f} | {r['det_kept']:.2f} "
            f"| {r['det_box_mae']:.3g} | {r['score_mae']:.3g} | {lat} | {ratio} |"
        )
    notes = (
        f"\n{meta['machine']}; onnxruntime {meta['onnxruntime']}, {meta['threads']} threads, "
        f"median of {meta['runs']} alternating runs; images: {', '.join(IMAGES)} "
        "(all held out: the SVD init uses no data). yolov8n-640 has RANDOM weights (structure "
        "only: its errors do not speak to accuracy); yolox-det has real weights. 'layers' = "
        "Convs rewritten (the rest declined: 1x1, grouped, or not cheaper at that setting). "
        "'exclude' rows keep the first Conv (the stem, which reads the raw input) "
        "as it is. max-rel = max|c-o| / max|o| over all images, worst output. Detections: anchors whose "
        f"score (yolox: obj*cls; yolov8: best class) is >= {SCORE} in the original "
        f"({dets} over the images); 'dets kept' = the fraction still >= that in the variant, 'box MAE' = "
        "mean |box difference| there in the model's raw output units (yolox: grid-relative "
        "xywh before decoding; yolov8: pixels), 'score MAE' over all anchors.\n"
    )
    return head + "\n".join(lines) + "\n" + notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12, help="timed rounds per latency comparison")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo ids")
    args = ap.parse_args()
    import onnxruntime

    t0 = time.perf_counter()
    rows = run([m for m in args.models.split(",") if m], args.runs)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "onnxruntime": onnxruntime.__version__,
        "threads": os.cpu_count(),
        "runs": args.runs,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = markdown(rows, meta)
    md = write_results(
        "conv_rewrites", environment(), {"meta": meta, "rows": rows}, "# conv rewrites\n\n" + text
    )
    print()
    print(text)
    print(f"wrote {md} and .json in {meta['seconds']} s")


if __name__ == "__main__":
    main()
