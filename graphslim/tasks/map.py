"""COCO-style mean average precision, in numpy.

Per class, detections of all images are ranked by descending score; each takes the unmatched
truth box of its class and image with the highest IoU >= the threshold (a true positive) or
none (a false positive). With ``TP_k`` true positives among the first ``k`` detections and
``n`` truth boxes: ``precision_k = TP_k / k``, ``recall_k = TP_k / n``. The precision is made
monotone (``p(r) = max_{r' >= r} p(r')``) and averaged at the 101 recall points
``0, 0.01, ..., 1`` (0 where a recall is never reached): that is AP. mAP averages AP over the
classes that have truth boxes; mAP@0.5:0.95 averages mAP over IoU 0.5, 0.55, ..., 0.95.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphslim import detect
from graphslim.detect import Detections

COCO_IOUS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))


def average_precision(scores: np.ndarray, true_positive: np.ndarray, n_truth: int) -> float:
    """101-point interpolated AP (COCO): rank detections by descending score, take
    ``precision_k = TP_k / k`` and ``recall_k = TP_k / n_truth``, make precision monotone
    (``p(r) = max_{r' >= r} p(r')``) and average it at recall ``0, 0.01, ..., 1`` (0 where
    the recall is never reached)."""
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(true_positive, dtype=np.float64)[order]
    if tp.size == 0:
        return 0.0
    tps = np.cumsum(tp)
    recall = tps / n_truth
    precision = tps / np.arange(1, tp.size + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    sampled = np.where(idx < recall.size, precision[np.minimum(idx, recall.size - 1)], 0.0)
    return float(sampled.mean())


def mean_average_precision(
    truth: Sequence[Detections],
    detections: Sequence[Detections],
    iou_thresholds: Sequence[float] = (0.5,),
) -> dict[float, float]:
    """mAP of ``detections`` against ``truth`` (one :class:`Detections` per image) at each IoU
    threshold: per class, each detection in descending score takes the unmatched truth box of
    its class and image with the highest IoU >= threshold (a true positive) or none (a false
    positive); AP per class by :func:`average_precision`, averaged over classes that have
    truth boxes. With no truth box at all: 1.0 when there is no detection either, else 0.0."""
    classes = sorted({int(c) for t in truth for c in t.classes})
    if not classes:
        empty = all(len(d) == 0 for d in detections)
        return {float(t): 1.0 if empty else 0.0 for t in iou_thresholds}
    ious = [detect.box_iou(t.boxes, d.boxes) for t, d in zip(truth, detections)]
    result = {}
    for thr in iou_thresholds:
        aps = []
        for c in classes:
            scores, hits, n_truth = [], [], 0
            for t, d, iou in zip(truth, detections, ious):
                gt = np.flatnonzero(t.classes == c)
                n_truth += gt.size
                mine = np.flatnonzero(d.classes == c)
                used = np.zeros(gt.size, dtype=bool)
                for j in mine[np.argsort(-d.scores[mine], kind="stable")]:
                    row = np.where(used, -1.0, iou[gt, j]) if gt.size else np.zeros(0)
                    k = int(row.argmax()) if row.size else -1
                    hit = k >= 0 and row[k] >= thr
                    if hit:
                        used[k] = True
                    scores.append(float(d.scores[j]))
                    hits.append(hit)
            aps.append(average_precision(np.asarray(scores), np.asarray(hits), n_truth))
        result[float(thr)] = float(np.mean(aps))
    return result
