"""Distillation losses chosen from the task, for detector heads.

A YOLO head packs box coordinates (pixels, 0..640) and class scores (0..1) into one tensor;
an MSE over it is dominated by the coordinates, while the scores decide the detections.
The ``detect`` loss weighs the two parts apart, per sample ``b`` and anchor ``a``:

* layouts (:func:`graphslim.detect.guess_decoder`): YOLOv8 ``[B, 4 + nc, N]`` (box
  ``cx, cy, w, h`` then class probabilities), YOLOX ``[B, N, 5 + nc]`` (box, objectness,
  class probabilities);
* teacher confidence ``c_a``: YOLOv8 ``max_k p_ak``; YOLOX ``obj_a * max_k p_ak``;
* score term: ``BCE(s_scores, t_scores)`` averaged over anchors and score channels (YOLOX:
  objectness and classes), with the teacher's probabilities as soft targets;
* box term: ``sum_a c_a |s_box_a - t_box_a| / sum_a c_a / mean|t_box|`` (L1 weighted by the
  teacher's confidence, so background anchors whose boxes mean nothing do not steer it, and
  divided by the boxes' mean magnitude so pixels weigh like probabilities);
* GIoU term, when the boxes are decoded ``cx, cy, w, h`` in pixels (every teacher ``w, h`` >
  0: YOLOv8 exports, decoded YOLOX; not a raw YOLOX head, whose ``w, h`` are log offsets):
  ``sum_a c_a (1 - GIoU(s_box_a, t_box_a)) / sum_a c_a``, the overlap the detections are
  judged by (mAP50-95 averages IoU thresholds up to 0.95), which the L1 term weighs the same
  for a small and a large box;
* ``detect = score + box + giou``.

A head whose score channels are not probabilities (values outside [0, 1]) is compared with
``BCE`` on ``sigmoid`` of both sides instead (raw logits).
"""

from __future__ import annotations

import numpy as np

from graphslim.bridge import BridgeError


def detect_layout(shape) -> str:
    """``yolov8`` or ``yolox`` for a head output of ``shape`` (one clear error otherwise)."""
    from graphslim.detect import guess_decoder

    dims = list(shape)
    try:
        return guess_decoder([1, *dims[1:]] if len(dims) == 3 else dims)
    except ValueError as exc:
        raise BridgeError(f"detect loss: {exc}") from None


def split_head(torch, x, layout: str):
    """``(boxes [B, A, 4], scores [B, A, S], confidence-source)`` of a head tensor."""
    rows = x.transpose(1, 2) if layout == "yolov8" else x  # [B, A, C]
    return rows[..., :4], rows[..., 4:]


def teacher_confidence(torch, scores, layout: str):
    """``c_a`` of the module doc from the teacher's score channels ``[B, A, S]``."""
    if layout == "yolox":
        cls = scores[..., 1:] if scores.shape[-1] > 1 else scores[..., :1]
        return scores[..., 0] * cls.amax(dim=-1)
    return scores.amax(dim=-1)


def giou_loss(torch, s_box, t_box, w):
    """``sum c (1 - GIoU) / sum c`` over anchors of ``cx, cy, w, h`` boxes ``[B, A, 4]``,
    ``w`` the confidence weights ``[B, A, 1]`` (module doc)."""

    def corners(b):
        half = b[..., 2:4].clamp(min=0) / 2
        return b[..., 0:2] - half, b[..., 0:2] + half

    (s1, s2), (t1, t2) = corners(s_box), corners(t_box)
    inter = (torch.minimum(s2, t2) - torch.maximum(s1, t1)).clamp(min=0).prod(-1)
    union = (s2 - s1).prod(-1) + (t2 - t1).prod(-1) - inter
    hull = (torch.maximum(s2, t2) - torch.minimum(s1, t1)).prod(-1)
    giou = inter / (union + 1e-7) - (hull - union) / (hull + 1e-7)
    w = w[..., 0]
    return (w * (1 - giou)).sum() / (w.sum() + 1e-8)


def detect_loss(
    torch, s, t, layout: str, box_scale: float, probabilities: bool, giou: bool = False
):
    """The ``detect`` loss of the module doc; ``box_scale`` = mean |teacher box|; ``giou``:
    add the GIoU term (decoded boxes, :func:`boxes_decoded`)."""
    F = torch.nn.functional
    s_box, s_sc = split_head(torch, s, layout)
    t_box, t_sc = split_head(torch, t, layout)
    if probabilities:
        score = F.binary_cross_entropy(s_sc.clamp(1e-6, 1 - 1e-6), t_sc.clamp(0, 1))
        conf = teacher_confidence(torch, t_sc, layout)
    else:
        score = F.binary_cross_entropy_with_logits(s_sc, torch.sigmoid(t_sc))
        conf = teacher_confidence(torch, torch.sigmoid(t_sc), layout)
    w = conf.detach()[..., None]
    box = (w * (s_box - t_box).abs()).sum() / (w.sum() * 4 + 1e-8) / box_scale
    if giou:
        box = box + giou_loss(torch, s_box, t_box, w)
    return score + box


def boxes_decoded(t: np.ndarray, layout: str) -> bool:
    """Whether a teacher head ``[B, ...]`` carries decoded ``cx, cy, w, h`` boxes (every
    ``w, h`` > 0), which the GIoU term needs."""
    rows = np.swapaxes(t, 1, 2) if layout == "yolov8" else t
    wh = rows[..., 2:4]
    return bool(wh.size) and float(wh.min()) > 0


def head_stats(t: np.ndarray, layout: str) -> tuple[float, bool]:
    """(mean |box|, score channels are probabilities) of a teacher head ``[B, ...]``."""
    rows = np.swapaxes(t, 1, 2) if layout == "yolov8" else t
    box, scores = rows[..., :4], rows[..., 4:]
    probs = bool(scores.size) and float(scores.min()) >= -1e-6 and float(scores.max()) <= 1 + 1e-6
    return float(np.mean(np.abs(box))) + 1e-8, probs
