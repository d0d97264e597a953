"""graphslim's mAP (graphslim/tasks/map.py) against the reference implementation,
pycocotools' COCOeval, on a seeded synthetic detection set (3 classes, misses, false
positives, jittered boxes)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from graphslim.detect import Detections
from graphslim.tasks.map import COCO_IOUS, mean_average_precision

pytest.importorskip("pycocotools", reason="pycocotools is a dev extra: pip install -e '.[dev]'")


def _scene(seed: int, images: int = 8):
    rng = np.random.default_rng(seed)
    truth, dets = [], []
    for _ in range(images):
        n = int(rng.integers(1, 7))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(20, 150, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        classes = rng.integers(0, 3, n)
        truth.append(Detections(boxes, np.ones(n, np.float32), classes))
        keep = rng.random(n) > 0.2  # some truth boxes are missed
        jitter = rng.normal(0, 8, (n, 4)).astype(np.float32)
        found = (boxes + jitter)[keep]
        k = int(rng.integers(0, 4))  # false positives
        fxy = rng.uniform(0, 400, (k, 2))
        fake = np.concatenate([fxy, fxy + rng.uniform(20, 100, (k, 2))], axis=1)
        d_boxes = np.concatenate([found, fake.astype(np.float32)])
        d_cls = np.concatenate([classes[keep], rng.integers(0, 3, k)])
        scores = rng.uniform(0.05, 1.0, len(d_boxes)).astype(np.float32)
        dets.append(Detections(d_boxes, scores, d_cls))
    return truth, dets


def _cocoeval(truth, dets) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(3)]}
    results = []
    for i, (t, d) in enumerate(zip(truth, dets)):
        gt["images"].append({"id": i, "width": 640, "height": 640})
        for b, c in zip(t.boxes, t.classes):
            box = xywh(b)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }  # fmt: skip
            )
        results += [
            {"image_id": i, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
            for b, c, s in zip(d.boxes, d.classes, d.scores)
        ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])  # AP@0.5, AP@[0.5:0.95]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_cocoeval(seed):
    truth, dets = _scene(seed)
    ours = mean_average_precision(truth, dets, COCO_IOUS)
    ap50, ap = _cocoeval(truth, dets)
    assert ours[0.5] == pytest.approx(ap50, abs=1e-6)
    assert float(np.mean(list(ours.values()))) == pytest.approx(ap, abs=1e-6)
