"""Task-aware distillation losses: the detect loss on YOLOv8 / YOLOX heads, chosen by task."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from graphslim.bridge import BridgeError
from graphslim.bridge.finetune import Distiller, FinetuneOptions, finetune
from graphslim.bridge.task_losses import boxes_decoded, detect_loss, giou_loss, head_stats

OPTS = FinetuneOptions(epochs=1, batch=8, lr=1e-2, seed=3, augment=("flip", "color"))


def _head(layout: str, boxes: np.ndarray, scores: np.ndarray) -> torch.Tensor:
    rows = np.concatenate([boxes, scores], axis=-1)[None].astype(np.float32)  # [1, A, C]
    return torch.from_numpy(np.swapaxes(rows, 1, 2).copy() if layout == "yolov8" else rows)


@pytest.mark.parametrize("layout", ["yolov8", "yolox"])
def test_box_error_counts_only_where_the_teacher_is_confident(layout):
    boxes = np.array([[100.0, 100, 50, 50], [300, 300, 40, 40]])
    # anchor 0 confident, anchor 1 background (YOLOX: objectness first)
    scores = np.array([[0.9, 0.9], [0.0, 0.0]]) if layout == "yolox" else np.array([[0.9], [0.0]])
    t = _head(layout, boxes, scores)
    scale, probs = head_stats(t.numpy(), layout)
    assert probs and scale == pytest.approx(np.abs(boxes).mean(), rel=1e-6)
    same = detect_loss(torch, t, t, layout, scale, probs)
    off_background = boxes.copy()
    off_background[1] += 80  # a background box moves: no box loss
    moved_bg = detect_loss(torch, _head(layout, off_background, scores), t, layout, scale, probs)
    off_object = boxes.copy()
    off_object[0] += 80
    moved_obj = detect_loss(torch, _head(layout, off_object, scores), t, layout, scale, probs)
    assert float(moved_bg) == pytest.approx(float(same), abs=1e-6)
    assert float(moved_obj) > float(same) + 0.1


def test_giou_term_follows_the_overlap_of_confident_boxes():
    """1 - GIoU: 0 for the same box, 0.5 for half the overlap, > 1 for disjoint boxes;
    weighted by the teacher's confidence, so a background anchor adds nothing."""
    t = torch.tensor([[[100.0, 100, 40, 40], [300, 300, 40, 40]]])
    w = torch.tensor([[[1.0], [0.0]]])
    assert float(giou_loss(torch, t, t, w)) == pytest.approx(0.0, abs=1e-6)
    half = t.clone()
    half[0, 0, 2] = 20  # half the width, same centre: IoU 0.5, the hull is the teacher box
    assert float(giou_loss(torch, half, t, w)) == pytest.approx(0.5, abs=1e-4)
    apart = t.clone()
    apart[0, 0, 0] += 80  # no overlap: GIoU < 0
    assert float(giou_loss(torch, apart, t, w)) > 1.0
    background = t.clone()
    background[0, 1, :2] += 80
    assert float(giou_loss(torch, background, t, w)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("layout", ["yolov8", "yolox"])
def test_giou_only_for_decoded_boxes(layout):
    scores = np.array([[0.9, 0.9], [0.2, 0.1]]) if layout == "yolox" else np.array([[0.9], [0.1]])
    decoded = _head(layout, np.array([[100.0, 100, 50, 50], [30, 30, 4, 4]]), scores)
    raw = _head(layout, np.array([[0.3, 0.2, -1.5, 0.4], [0.1, 0.7, 0.2, -0.3]]), scores)
    assert boxes_decoded(decoded.numpy(), layout) and not boxes_decoded(raw.numpy(), layout)
    scale, probs = head_stats(decoded.numpy(), layout)
    moved = decoded.clone()
    if layout == "yolov8":
        moved[0, 2, 0] = 25  # the confident box's width halves
    else:
        moved[0, 0, 2] = 25
    plain = detect_loss(torch, moved, decoded, layout, scale, probs)
    with_giou = detect_loss(torch, moved, decoded, layout, scale, probs, giou=True)
    assert float(with_giou) > float(plain) + 0.3  # 1 - GIoU = 0.5 at the confident anchor


def test_detect_task_picks_the_detect_loss_and_it_falls(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    opts = dataclasses.replace(OPTS, task="detect")
    d = Distiller(student, teacher, x, opts, check_parity=False)
    (name,) = d.output_names
    assert d.kinds[name] == ["detect"] and d.heads[name][0] == "yolov8"
    result = finetune(student, teacher, x, dataclasses.replace(opts, epochs=2))
    assert result.outputs[name] == "detect" and result.metric == "map50"
    assert min(h.val_loss for h in result.history[1:]) < result.history[0].val_loss


def test_detect_loss_on_a_non_detector_output_is_refused():
    from bridge_helpers import fixture_model, stacked_feeds

    from graphslim import Pipeline

    teacher = fixture_model("flatten_gemm")
    student = Pipeline.parse("prune-channels{ratio=0.5}").run(teacher).model
    x = stacked_feeds(teacher, 8, seed=2)
    with pytest.raises(BridgeError, match="loss 'detect' on output"):
        Distiller(student, teacher, x, dataclasses.replace(OPTS, loss="detect"))


def test_classify_task_distils_with_temperature_kl_only():
    from bridge_helpers import fixture_model, stacked_feeds

    from graphslim import Pipeline

    teacher = fixture_model("flatten_gemm")
    student = Pipeline.parse("prune-channels{ratio=0.5}").run(teacher).model
    x = stacked_feeds(teacher, 16, seed=2)
    d = Distiller(student, teacher, x, dataclasses.replace(OPTS, task="classify"))
    (name,) = d.output_names
    assert d.kinds[name] == ["kl"] and d.metric == "top1"
    scores = d.evaluate()
    assert scores.task is not None and scores.value == scores.task["top1"]
