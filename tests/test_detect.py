"""graphslim.detect: decoders on hand-built head outputs, NMS, matching."""

from __future__ import annotations

import numpy as np
import pytest

from graphslim import detect

BOXES = np.array([[10, 20, 50, 80], [100, 100, 180, 140], [300, 50, 340, 90]], np.float32)


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    return np.stack(
        [(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
         xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1
    )  # fmt: skip


def test_decode_yolox_known_boxes_round_trip():
    nc = 3
    rows = np.zeros((20, 5 + nc), np.float32)
    rows[:, :4] = [200, 200, 10, 10]
    rows[:3, :4] = _xywh(BOXES)
    rows[:3, 4] = [0.9, 0.8, 0.7]  # objectness
    rows[0, 5 + 2] = rows[1, 5 + 0] = rows[2, 5 + 1] = 1.0
    rows[3:, 4] = 0.1  # below conf after obj * cls
    rows[3:, 5] = 0.5
    dets = detect.decode_yolox(rows[None], conf=0.25)
    order = np.argsort(-dets.scores)
    np.testing.assert_allclose(dets.boxes[order], BOXES, atol=1e-4)
    np.testing.assert_allclose(dets.scores[order], [0.9, 0.8, 0.7], atol=1e-6)
    assert dets.classes[order].tolist() == [2, 0, 1]


def test_decode_yolov8_known_boxes_round_trip():
    nc = 2
    cols = np.zeros((4 + nc, 10), np.float32)
    cols[:4, :] = np.array([[200, 200, 10, 10]], np.float32).T
    cols[:4, :3] = _xywh(BOXES).T
    cols[4, 0], cols[5, 1], cols[4, 2] = 0.95, 0.6, 0.3
    dets = detect.decode_yolov8(cols[None], conf=0.25)
    order = np.argsort(-dets.scores)
    np.testing.assert_allclose(dets.boxes[order], BOXES, atol=1e-4)
    assert dets.classes[order].tolist() == [0, 1, 0]


def test_yolox_grid_decode_places_boxes_on_the_grid():
    # input 64x64, strides 8 and 16: an 8x8 grid then a 4x4 grid = 80 rows
    rows = np.zeros((80, 6), np.float32)
    rows[:, 4] = rows[:, 5] = 0.0
    # cell (x=3, y=2) of the stride-8 grid: row 2*8 + 3 = 19, offsets 0.5 -> centre (28, 20)
    rows[19] = [0.5, 0.5, np.log(2.0), np.log(4.0), 0.9, 1.0]
    # cell (x=1, y=1) of the stride-16 grid: row 64 + 1*4 + 1 = 69 -> centre (16, 16)
    rows[69] = [0.0, 0.0, 0.0, 0.0, 0.8, 1.0]
    dets = detect.decode_yolox(rows[None], input_hw=(64, 64), strides=(8, 16))
    order = np.argsort(-dets.scores)
    np.testing.assert_allclose(
        dets.boxes[order], [[28 - 8, 20 - 16, 28 + 8, 20 + 16], [8, 8, 24, 24]], atol=1e-4
    )
    with pytest.raises(ValueError, match="grid cells"):
        detect.yolox_grid_decode(rows[:70], (64, 64), (8, 16))


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    # box 1 overlaps box 0 (IoU ~0.68) in the same class: suppressed; box 2 is another class
    assert detect.nms(boxes, scores, classes, iou=0.45).tolist() == [0, 2, 3]
    assert detect.nms(boxes, scores, None, iou=0.45).tolist() == [0, 3]
    assert detect.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_box_iou():
    iou = detect.box_iou(
        np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    )
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def _dets(boxes, scores, classes) -> detect.Detections:
    return detect.Detections(
        np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(classes)
    )


def test_match_same_class_iou_and_one_to_one():
    ref = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 1, 0])
    cand = _dets(
        [[0, 0, 10, 11], [20, 20, 30, 30], [0, 0, 10, 10], [44, 44, 54, 54]],
        [0.9, 0.8, 0.5, 0.7],
        [0, 0, 0, 0],  # the second box has the wrong class; the last has IoU 0.22
    )
    r = detect.match(ref, cand, iou=0.5)
    assert (r.matched, r.reference, r.candidate) == (1, 3, 4)
    assert r.recall == pytest.approx(1 / 3) and r.precision == pytest.approx(1 / 4)
    # the duplicate candidate cannot match the same reference twice
    assert detect.match(_dets([[0, 0, 10, 10]], [0.9], [0]), cand).matched == 1
    total = r + detect.match(ref, ref)
    assert (total.matched, total.reference) == (4, 6)
    assert detect.match(detect.Detections.empty(), cand).recall == 1.0
