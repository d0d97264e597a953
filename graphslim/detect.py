"""Detection-head decoding, class-aware NMS and detection matching, in numpy.

Used to judge a compressed detector by what it detects rather than by raw tensor error: decode
both models' raw outputs, run NMS, and count how many of the original's detections the
candidate reproduces.

Decoders (one image; a leading batch axis of 1 is dropped):

* :func:`decode_yolox` -- YOLOX / YOLOv5 layout ``[N, 5 + nc]`` per row
  ``(cx, cy, w, h, obj, p_1..p_nc)`` with probabilities already passed through a sigmoid;
  ``score = obj * max_c p_c``, ``class = argmax_c p_c``. Boxes are taken as pixels (exports
  with ``decode_in_inference``) unless ``strides`` is given: then the rows are raw grid
  offsets of a YOLOX head (e.g. ddddocr's detector), ordered stride by stride, row-major over
  each ``(H/s) x (W/s)`` grid, and decoded as ``cx, cy = (raw_xy + grid_xy) * s``,
  ``w, h = exp(raw_wh) * s`` (:func:`yolox_grid_decode`).
* :func:`decode_yolov8` -- YOLOv8 / YOLO11 layout ``[4 + nc, N]`` per column
  ``(cx, cy, w, h, p_1..p_nc)`` (no objectness); ``score = max_c p_c``.

Boxes come out as ``xyxy = (cx - w/2, cy - h/2, cx + w/2, cy + h/2)`` in the network-input
pixels the model uses (map them to the original image with
:meth:`graphslim.feeds.Letterbox.to_original`).

:func:`nms` is greedy and class-aware: a box suppresses only boxes of its own class whose
``IoU = area(a & b) / area(a | b)`` exceeds the threshold. :func:`match_pairs` pairs candidate
detections with reference detections greedily in descending reference score: a pair needs
the same class and ``IoU >= iou``, and every candidate box is used at most once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections of one image: ``boxes`` [M, 4] xyxy, ``scores`` [M], ``classes`` [M]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.classes[index])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class MatchResult:
    """``matched`` of ``reference`` reference detections found among ``candidate`` ones."""

    matched: int
    reference: int
    candidate: int

    @property
    def recall(self) -> float:
        """Share of reference detections matched (1.0 when the reference has none)."""
        return self.matched / self.reference if self.reference else 1.0

    @property
    def precision(self) -> float:
        """Share of candidate detections that match a reference one (1.0 when none)."""
        return self.matched / self.candidate if self.candidate else 1.0

    def __add__(self, other: MatchResult) -> MatchResult:
        return MatchResult(
            self.matched + other.matched,
            self.reference + other.reference,
            self.candidate + other.candidate,
        )


def _rows(output: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError(f"{what}: decode one image at a time, got batch {out.shape[0]}")
        out = out[0]
    if out.ndim != 2:
        raise ValueError(
            f"{what}: expected [1, ...] or a 2-D output, got shape {list(output.shape)}"
        )
    return out


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = (xywh[..., i] for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def yolox_grid_decode(
    rows: np.ndarray, input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)
) -> np.ndarray:
    """Raw YOLOX head rows ``[N, 5 + nc]`` -> rows with ``(cx, cy, w, h)`` in input pixels."""
    rows = np.array(_rows(rows, "yolox_grid_decode"), dtype=np.float32, copy=True)
    grids, scales = [], []
    for s in strides:
        gh, gw = input_hw[0] // s, input_hw[1] // s
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        scales.append(np.full((gh * gw, 1), s, np.float32))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(scales)
    if grid.shape[0] != rows.shape[0]:
        raise ValueError(
            f"yolox_grid_decode: {rows.shape[0]} rows, but input {input_hw} with strides "
            f"{strides} gives {grid.shape[0]} grid cells"
        )
    rows[:, :2] = (rows[:, :2] + grid) * stride
    rows[:, 2:4] = np.exp(np.clip(rows[:, 2:4], -20, 20)) * stride
    return rows


def decode_yolox(
    output: np.ndarray,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    *,
    input_hw: tuple[int, int] | None = None,
    strides: tuple[int, ...] | None = None,
) -> Detections:
    """``[1, N, 5 + nc]`` rows ``(cx, cy, w, h, obj, p...)`` -> detections after NMS; with
    ``strides`` (and ``input_hw``) the boxes are raw grid offsets, decoded first."""
    rows = _rows(output, "decode_yolox")
    if rows.shape[1] < 6:
        raise ValueError(f"decode_yolox: rows need 5 + nc >= 6 values, got {rows.shape[1]}")
    if strides is not None:
        if input_hw is None:
            raise ValueError("decode_yolox: strides need input_hw (the network input H, W)")
        rows = yolox_grid_decode(rows, input_hw, strides)
    cls_prob = rows[:, 5:]
    classes = cls_prob.argmax(axis=1)
    scores = rows[:, 4] * cls_prob[np.arange(len(rows)), classes]
    return _select(xywh_to_xyxy(rows[:, :4]), scores, classes, conf, iou, max_det)


def decode_yolov8(
    output: np.ndarray, conf: float = 0.25, iou: float = 0.45, max_det: int = 300
) -> Detections:
    """``[1, 4 + nc, N]`` columns ``(cx, cy, w, h, p...)`` -> detections after NMS."""
    cols = _rows(output, "decode_yolov8")
    if cols.shape[0] < 5:
        raise ValueError(f"decode_yolov8: need 4 + nc >= 5 rows, got {cols.shape[0]}")
    rows = cols.T
    cls_prob = rows[:, 4:]
    classes = cls_prob.argmax(axis=1)
    scores = cls_prob[np.arange(len(rows)), classes]
    return _select(xywh_to_xyxy(rows[:, :4]), scores, classes, conf, iou, max_det)


def _select(boxes, scores, classes, conf: float, iou: float, max_det: int) -> Detections:
    keep = scores >= conf
    dets = Detections(
        boxes[keep].astype(np.float32),
        scores[keep].astype(np.float32),
        classes[keep].astype(np.int64),
    )
    return dets.take(nms(dets.boxes, dets.scores, dets.classes, iou)[:max_det])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a`` [M, 4] and ``b`` [K, 4] -> [M, K]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None, iou: float = 0.45
) -> np.ndarray:
    """Indices of kept boxes, highest score first; boxes of different classes never suppress
    each other (``classes=None``: one class)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    if order.size == 0:
        return order.astype(np.int64)
    cls = np.zeros(len(scores), np.int64) if classes is None else np.asarray(classes)
    ious = box_iou(boxes, boxes)
    suppressed = np.zeros(len(scores), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (ious[i] > iou) & (cls == cls[i])
    return np.asarray(keep, dtype=np.int64)


def match_pairs(
    reference: Detections, candidate: Detections, iou: float = 0.5
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one pairs ``(reference index, candidate index, IoU)`` (same class,
    IoU >= iou); reference detections taken in descending score, each paired with its best
    free candidate."""
    if len(reference) == 0 or len(candidate) == 0:
        return []
    ious = box_iou(reference.boxes, candidate.boxes)
    same = reference.classes[:, None] == candidate.classes[None, :]
    ious = np.where(same, ious, -1.0)
    used = np.zeros(len(candidate), dtype=bool)
    pairs = []
    for r in np.argsort(-reference.scores, kind="stable"):
        row = np.where(used, -1.0, ious[r])
        best = int(row.argmax())
        if row[best] >= iou:
            used[best] = True
            pairs.append((int(r), best, float(row[best])))
    return pairs


def match(reference: Detections, candidate: Detections, iou: float = 0.5) -> MatchResult:
    """How many ``reference`` detections :func:`match_pairs` finds among ``candidate``."""
    return MatchResult(len(match_pairs(reference, candidate, iou)), len(reference), len(candidate))


DECODERS = ("yolov8", "yolox")


def guess_decoder(shape: tuple[int, ...] | list[int]) -> str:
    """The decoder for an output of ``shape``: ``[1, N, 5 + nc]`` (rows longer than wide
    axis) -> ``yolox``; ``[1, 4 + nc, N]`` -> ``yolov8``. Anchors outnumber attributes in
    every real head (8400 vs 84, 3549 vs 6), so the longer axis holds the boxes."""
    dims = [int(d) for d in shape]
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 2 or min(dims) < 5:
        raise ValueError(
            f"cannot tell the detection layout of an output of shape {list(shape)}; expected "
            "[1, N, 5 + nc] (yolox) or [1, 4 + nc, N] (yolov8)"
        )
    return "yolox" if dims[0] > dims[1] else "yolov8"


def grid_cells(input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)) -> int:
    """Rows of a YOLOX head over ``input_hw``: ``sum (H/s) * (W/s)``."""
    return sum((input_hw[0] // s) * (input_hw[1] // s) for s in strides)


def looks_raw_yolox(output: np.ndarray, input_hw: tuple[int, int] | None) -> bool:
    """True when YOLOX rows are raw grid offsets rather than pixels: the row count equals
    the grid cells at strides 8/16/32 and every centre is within 8 (raw offsets are a cell or
    two; decoded centres sit on their grid cells, spread over the whole input)."""
    if input_hw is None:
        return False
    rows = _rows(output, "looks_raw_yolox")
    if rows.shape[0] != grid_cells(input_hw):
        return False
    return bool(np.abs(rows[:, :2]).max(initial=0.0) < 8)


def decode(
    output: np.ndarray,
    decoder: str,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    *,
    input_hw: tuple[int, int] | None = None,
    strides: tuple[int, ...] | None = None,
) -> Detections:
    """Decode with ``decoder`` (one of :data:`DECODERS`) and run class-aware NMS."""
    if decoder == "yolox":
        return decode_yolox(output, conf, iou, max_det, input_hw=input_hw, strides=strides)
    if decoder == "yolov8":
        return decode_yolov8(output, conf, iou, max_det)
    raise ValueError(f"unknown decoder '{decoder}' (use one of {', '.join(DECODERS)})")


__all__ = [
    "DECODERS",
    "Detections",
    "MatchResult",
    "box_iou",
    "decode",
    "decode_yolov8",
    "decode_yolox",
    "grid_cells",
    "guess_decoder",
    "looks_raw_yolox",
    "match",
    "match_pairs",
    "nms",
    "xywh_to_xyxy",
    "yolox_grid_decode",
]
