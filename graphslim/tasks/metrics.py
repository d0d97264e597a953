"""Task metrics from the two models' outputs: classification, detection, dense maps.

See :mod:`graphslim.tasks` for what each metric means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphslim import detect
from graphslim.detect import Detections
from graphslim.errors import OptionsError
from graphslim.feeds import Letterbox
from graphslim.tasks.map import COCO_IOUS, mean_average_precision

TASKS = ("classify", "detect", "dense")
METRICS = {
    "classify": ("top1", "top5", "accuracy"),
    "detect": ("map50", "map50_95", "recall", "precision", "iou_mean", "label_map50"),
    "dense": ("agreement", "iou"),
}
Outputs = list[dict[str, np.ndarray]]


@dataclass
class TaskMetrics:
    """Metrics of one candidate on one task: gateable ``metrics`` and descriptive ``details``."""

    task: str
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float:
        if name not in self.metrics:
            raise OptionsError(
                f"task '{self.task}' has no metric '{name}' here (it has: "
                f"{', '.join(self.metrics)})"
            )
        return self.metrics[name]

    def to_dict(self) -> dict:
        return {"task": self.task, "metrics": dict(self.metrics), "details": dict(self.details)}


def _pick(outputs: Outputs, name: str | None) -> list[np.ndarray]:
    names = list(outputs[0])
    key = name or names[0]
    if key not in outputs[0]:
        raise OptionsError(f"the model has no output '{key}' (outputs: {', '.join(names)})")
    return [np.asarray(o[key]) for o in outputs]


def classify_metrics(
    reference: Outputs,
    candidate: Outputs,
    labels: Sequence[int] | None = None,
    *,
    output: str | None = None,
) -> TaskMetrics:
    """Top-1 / top-5 agreement with the original, and accuracy when ``labels`` (one per
    sample, in feed order) are given."""
    ref = np.concatenate([_logits(x) for x in _pick(reference, output)])
    cand = np.concatenate([_logits(x) for x in _pick(candidate, output)])
    k = min(5, ref.shape[1])
    r1, c1 = ref.argmax(1), cand.argmax(1)
    topk = np.argsort(-cand, axis=1, kind="stable")[:, :k]
    metrics = {
        "top1": float((r1 == c1).mean()),
        "top5": float((topk == r1[:, None]).any(1).mean()),
    }
    details: dict[str, Any] = {"samples": int(ref.shape[0]), "classes": int(ref.shape[1])}
    if labels is not None:
        y = np.asarray(labels)
        if y.shape[0] != ref.shape[0]:
            raise OptionsError(f"{y.shape[0]} labels for {ref.shape[0]} samples")
        metrics["accuracy"] = float((c1 == y).mean())
        metrics["accuracy_original"] = float((r1 == y).mean())
    return TaskMetrics("classify", metrics, details)


def _logits(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    return x.reshape(x.shape[0], -1)


def _split_batch(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """One ``[1, ...]`` array per image from per-feed ``[B, ...]`` outputs."""
    return [x[i : i + 1] for x in outputs for i in range(x.shape[0])]


def detect_metrics(
    reference: Outputs,
    candidate: Outputs,
    *,
    input_hw: tuple[int, int] | None = None,
    decoder: str = "auto",
    conf: float = 0.25,
    iou: float = 0.45,
    letterboxes: Sequence[Letterbox] | None = None,
    labels: Sequence[Detections] | None = None,
    output: str | None = None,
    map_conf: float = 0.001,
) -> TaskMetrics:
    """Detection agreement (see the module doc). ``input_hw`` = network input (H, W), needed
    for raw YOLOX heads; ``letterboxes`` and ``labels``: one per image, in feed order.

    The original's detections (the truth) and the matching statistics use ``conf``; for mAP
    the candidate's detections are decoded down to ``map_conf`` (as COCO evaluation does), so
    that a box whose score merely sank below ``conf`` lowers the precision-recall curve
    instead of vanishing. Boxes above ``conf`` are the same either way (a box is suppressed
    only by higher-scoring ones), so a model against itself still scores 1.0."""
    ref = _split_batch(_pick(reference, output))
    cand = _split_batch(_pick(candidate, output))
    if decoder == "auto":
        decoder = detect.guess_decoder(ref[0].shape)
    elif decoder not in detect.DECODERS:
        raise OptionsError(f"unknown decoder '{decoder}' (use auto, {', '.join(detect.DECODERS)})")
    strides = (
        (8, 16, 32) if decoder == "yolox" and detect.looks_raw_yolox(ref[0], input_hw) else None
    )
    try:
        kw = dict(conf=conf, iou=iou, input_hw=input_hw, strides=strides)
        truth = [detect.decode(x, decoder, **kw) for x in ref]
        found = [detect.decode(x, decoder, **kw) for x in cand]
        ranked = [detect.decode(x, decoder, **(kw | {"conf": min(conf, map_conf)})) for x in cand]
    except ValueError as exc:
        raise OptionsError(f"detection decoding failed: {exc}") from None
    if letterboxes is not None:
        if len(letterboxes) != len(truth):
            raise OptionsError(f"{len(letterboxes)} image geometries for {len(truth)} images")
        truth = [_to_original(d, lb) for d, lb in zip(truth, letterboxes)]
        found = [_to_original(d, lb) for d, lb in zip(found, letterboxes)]
        ranked = [_to_original(d, lb) for d, lb in zip(ranked, letterboxes)]
    maps = mean_average_precision(truth, ranked, COCO_IOUS)
    pairs = [detect.match_pairs(t, f, 0.5) for t, f in zip(truth, found)]
    pair_ious = np.array([p[2] for ps in pairs for p in ps])
    n_ref, n_cand, n_match = sum(map(len, truth)), sum(map(len, found)), int(pair_ious.size)
    metrics = {
        "map50": maps[0.5],
        "map50_95": float(np.mean(list(maps.values()))),
        "recall": n_match / n_ref if n_ref else 1.0,
        "precision": n_match / n_cand if n_cand else 1.0,
        "iou_mean": float(pair_ious.mean()) if n_match else float("nan"),
        "iou_min": float(pair_ious.min()) if n_match else float("nan"),
    }
    details = {
        "decoder": decoder + ("-grid" if strides else ""),
        "images": len(truth),
        "original_detections": n_ref,
        "candidate_detections": n_cand,
        "matched": n_match,
        "missed": n_ref - n_match,
        "extra": n_cand - n_match,
        "conf": conf,
        "nms_iou": iou,
        "map_conf": min(conf, map_conf),
    }
    if labels is not None:
        if len(labels) != len(truth):
            raise OptionsError(f"{len(labels)} label files for {len(truth)} images")
        by_iou = mean_average_precision(labels, ranked, COCO_IOUS)
        metrics["label_map50"] = by_iou[0.5]
        metrics["label_map50_95"] = float(np.mean(list(by_iou.values())))
        low = kw | {"conf": min(conf, map_conf)}
        orig = [detect.decode(x, decoder, **low) for x in ref]
        if letterboxes is not None:
            orig = [_to_original(d, lb) for d, lb in zip(orig, letterboxes)]
        by_iou = mean_average_precision(labels, orig, COCO_IOUS)
        metrics["label_map50_original"] = by_iou[0.5]
        metrics["label_map50_95_original"] = float(np.mean(list(by_iou.values())))
        details["label_boxes"] = sum(map(len, labels))
    return TaskMetrics("detect", metrics, details)


def _to_original(d: Detections, lb: Letterbox) -> Detections:
    return Detections(lb.to_original(d.boxes), d.scores, d.classes)


def dense_metrics(
    reference: Outputs, candidate: Outputs, *, threshold: float = 0.5, output: str | None = None
) -> TaskMetrics:
    """Per-pixel agreement and IoU of the maps thresholded at ``threshold``."""
    a = np.concatenate([x.ravel() for x in _pick(reference, output)]) > threshold
    b = np.concatenate([x.ravel() for x in _pick(candidate, output)]) > threshold
    union = int((a | b).sum())
    metrics = {
        "agreement": float((a == b).mean()) if a.size else 1.0,
        "iou": float((a & b).sum() / union) if union else 1.0,
    }
    details = {"pixels": int(a.size), "threshold": threshold, "foreground": float(a.mean())}
    return TaskMetrics("dense", metrics, details)
