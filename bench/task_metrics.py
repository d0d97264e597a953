"""Task metrics on a real detector: mAP of compressed yolox-det against the original.

Model: zoo ``yolox-det`` (ddddocr's YOLOX character detector, real weights, raw-BGR 0..255
input, letterbox 416, pad 114). Evaluation images (held out): bus, zidane, motorcycle-left,
page, text. Calibration images (for pruning's importance/reconstruction and INT8 ranges):
astronaut, coffee, chelsea, rocket, china, flower -- disjoint from the evaluation set.

Variants, each run through :class:`graphslim.pipeline.Pipeline` with a measuring
:class:`graphslim.tasks.TaskGate` (no minimum):

* ``original`` -- the model against itself (must give mAP 1.0);
* ``prune-channels{ratio=0.1|0.2|0.3,reconstruct=true}`` and the same without
  ``reconstruct`` (``importance=l1``);
* ``quantize-int8{target=cpu-x86}`` calibrated on the calibration images.

Metrics (:func:`graphslim.tasks.detect_metrics`, the original's detections at score >= 0.25
after class-aware NMS taken as ground truth, boxes mapped back to original-image pixels):
mAP@0.5 and mAP@0.5:0.95 (COCO 101-point; the candidate's boxes down to score 0.001), recall
and precision of one-to-one matches at IoU >= 0.5 (score >= 0.25 both sides), mean IoU of the
matched pairs, missed / extra detections; plus MACs relative to the original and the raw
output's cosine.

    python bench/task_metrics.py

writes bench/results/task_metrics.md and .json next to this file.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import load_feeds  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402
from graphslim.tasks import TaskGate, make_task  # noqa: E402

CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
PREPROCESS = "raw-bgr"


def variants(cal_dir: Path) -> list[tuple[str, str]]:
    int8 = f"quantize-int8{{target=cpu-x86,calibration={cal_dir},preprocess={PREPROCESS}}}"
    rows = [("original", "cleanup")]
    rows += [
        (f"prune {r} + reconstruct", f"prune-channels{{ratio={r},reconstruct=true}}")
        for r in (0.1, 0.2, 0.3)
    ]
    rows += [(f"prune {r}", f"prune-channels{{ratio={r}}}") for r in (0.1, 0.2, 0.3)]
    rows.append(("int8 cpu-x86", int8))
    return rows


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs to root
    images = zoo.fetch_all(CALIBRATION + EVALUATION)
    model_path = zoo.fetch("yolox-det")
    model = onnx.load_model(str(model_path))
    print(f"calibration images: {', '.join(CALIBRATION)}")
    print(f"evaluation images:  {', '.join(EVALUATION)}  (disjoint)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-task-") as tmp:
        cal_dir, eval_dir = Path(tmp) / "cal", Path(tmp) / "eval"
        for d, keys in ((cal_dir, CALIBRATION), (eval_dir, EVALUATION)):
            d.mkdir()
            for k in keys:
                shutil.copy(images[k], d / f"{k}{Path(images[k]).suffix}")
        feeds = load_feeds(eval_dir, model, preprocess=PREPROCESS)
        calib = load_feeds(cal_dir, model, preprocess=PREPROCESS)
        task, feeds = make_task("detect", model, feeds, source=eval_dir, preprocess=PREPROCESS)
        print(
            "| variant | pipeline | MACs | cosine | mAP@0.5 | mAP@0.5:0.95 | recall | precision | IoU mean | missed | extra |"
        )
        for label, text in variants(cal_dir):
            gate = TaskGate(task, "map50", None, feeds)
            t0 = time.perf_counter()
            result = Pipeline.parse(text).run(
                model, ctx=PassContext(feeds=calib), feeds=feeds, gate=gate
            )
            seconds = time.perf_counter() - t0
            metrics = result.task or gate.measure(model, result.model).to_dict()
            cosine = min(o.stats["cosine"] for o in result.validation.outputs)
            row = {
                "variant": label,
                "pipeline": text.replace(str(cal_dir), "CALIBRATION_IMAGES"),
                "macs_ratio": result.final.macs / result.initial.macs,
                "cosine": cosine,
                "seconds": round(seconds, 1),
                **metrics["metrics"],
                **{
                    k: metrics["details"][k]
                    for k in (
                        "original_detections",
                        "candidate_detections",
                        "matched",
                        "missed",
                        "extra",
                    )
                },
            }
            rows.append(row)
            print(_line(row), flush=True)
    write(rows)


def _line(r: dict) -> str:
    return (
        f"| {r['variant']} | `{r['pipeline']}` | {r['macs_ratio']:.3f} | {r['cosine']:.4f} | "
        f"{r['map50']:.3f} | {r['map50_95']:.3f} | {r['recall']:.3f} | {r['precision']:.3f} | "
        f"{_f(r['iou_mean'])} | {r['missed']} | {r['extra']} |"
    )


def _f(v: float) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:.3f}"


def write(rows: list[dict]) -> None:
    env = environment(
        model="yolox-det",
        preprocess=PREPROCESS,
        calibration_images=CALIBRATION,
        evaluation_images=EVALUATION,
    )
    lines = [
        "# Task metrics: yolox-det, compressed variants against the original",
        "",
        f"`python bench/task_metrics.py`; onnxruntime {env['onnxruntime']} CPU. Ground truth: "
        "the original's detections (score >= 0.25, class-aware NMS at 0.45) on the held-out "
        f"images {', '.join(EVALUATION)}; calibration (pruning importance/reconstruction, INT8 "
        f"ranges): {', '.join(CALIBRATION)}. mAP: COCO 101-point, candidate boxes down to score "
        "0.001; recall / precision / IoU: one-to-one matches at IoU >= 0.5, score >= 0.25.",
        "",
        "| variant | pipeline | MACs | cosine | mAP@0.5 | mAP@0.5:0.95 | recall | precision | IoU mean | missed | extra |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_line(r) for r in rows),
        "",
    ]
    md = write_results("task_metrics", env, {"rows": rows}, lines)
    print(f"wrote {md} and .json")


if __name__ == "__main__":
    main()
