"""Which task a model's outputs belong to, from their shapes alone.

Used where no task was named: to warn that an element-wise check cannot see detections, and
to give a recipe's task gate its task. The rules are strict so that a guess is rarely wrong,
and a model that matches none gets no task (the caller says so) rather than a wrong one:

* ``detect`` -- a rank-3 output whose box axis holds exactly the anchor points of a YOLO head
  over the input: ``A = k * sum_s (H/s) * (W/s)`` for strides ``s`` in 8/16/32 (8..64 for P6
  models; 8/16 or 16/32 for two-scale tiny heads) and ``k`` in {1, 3} (anchor-free / three anchors per cell), the other axis
  ``>= 5`` attributes. ``[B, 4 + nc, A]`` is the YOLOv8 / YOLO11 layout, ``[B, A, 5 + nc]``
  YOLOX / YOLOv5's (:mod:`graphslim.detect`).
* ``classify`` -- ``[B, C]`` (or ``[B, C, 1, 1]``) with ``C >= 2``.
* ``dense`` -- ``[B, 1, H, W]`` with ``H, W >= 8`` and every value within [0, 1] (a
  probability map, e.g. a DBNet text map).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphslim.detect import grid_cells

# YOLOv5/v8/X and P6 heads; two-scale heads (tiny models) at 8/16 or 16/32.
_STRIDES = ((8, 16, 32), (8, 16, 32, 64), (8, 16), (16, 32))


def detector_layout(shape: Sequence[int], input_hw: tuple[int, int] | None) -> str | None:
    """``"yolov8"`` / ``"yolox"`` when ``shape`` is a known detection head over an input of
    ``input_hw`` (see the module doc), else None."""
    dims = [int(d) for d in shape]
    if len(dims) != 3 or input_hw is None or min(dims) < 1:
        return None
    anchors = {k * grid_cells(input_hw, s) for s in _STRIDES for k in (1, 3)}
    if dims[2] in anchors and dims[1] >= 5:
        return "yolov8"
    if dims[1] in anchors and dims[2] >= 5:
        return "yolox"
    return None


def detection_head(shapes: dict[str, Sequence[int]], feed: dict) -> tuple[str, str] | None:
    """``(output name, layout)`` of the first of ``shapes`` (output name -> shape) that is a
    known detection head over the input size of ``feed``, or None."""
    hw = input_hw(feed)
    for name, shape in shapes.items():
        layout = detector_layout(shape, hw)
        if layout:
            return name, layout
    return None


def infer_task(
    outputs: dict[str, np.ndarray], input_hw: tuple[int, int] | None
) -> tuple[str, str] | None:
    """``(task, output name)`` for the first output whose shape and values match a rule of the
    module doc, or None."""
    for name, x in outputs.items():
        x = np.asarray(x)
        if detector_layout(x.shape, input_hw):
            return "detect", name
    for name, x in outputs.items():
        x = np.asarray(x)
        s = x.shape
        if (len(s) == 2 and s[1] >= 2) or (len(s) == 4 and s[1] >= 2 and s[2:] == (1, 1)):
            return "classify", name
        if (
            len(s) == 4
            and s[1] == 1
            and min(s[2:]) >= 8
            and x.size
            and 0 <= x.min() <= x.max() <= 1
        ):
            return "dense", name
    return None


def input_hw(feed: dict) -> tuple[int, int] | None:
    """(H, W) of the first rank-4 input, NCHW unless the last axis holds 1 or 3 channels."""
    for x in feed.values():
        s = np.shape(x)
        if len(s) == 4:
            return (
                (int(s[1]), int(s[2]))
                if s[3] in (1, 3) and s[1] not in (1, 3)
                else (
                    int(s[2]),
                    int(s[3]),
                )
            )
    return None
