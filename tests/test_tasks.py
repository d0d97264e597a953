"""graphslim.tasks: decoders on hand-built outputs, COCO mAP, classification / dense agreement,
labels, and the pipeline's task gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from graphslim import detect, tasks
from graphslim.contract import Pass, PassResult
from graphslim.detect import Detections
from graphslim.errors import OptionsError
from graphslim.feeds import Letterbox
from graphslim.pipeline import Pipeline
from graphslim.tasks import Task, TaskGate, TaskGateFailed

BOXES = np.array([[10, 20, 50, 80], [100, 100, 180, 140], [300, 50, 340, 90]], np.float32)
CLASSES = [2, 0, 1]


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    return np.stack(
        [(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
         xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1
    )  # fmt: skip


def yolox_output(boxes=BOXES, scores=(0.9, 0.8, 0.7), nc=3, rows=40) -> np.ndarray:
    out = np.zeros((rows, 5 + nc), np.float32)
    out[:, :4] = [400, 400, 4, 4]
    out[: len(boxes), :4] = _xywh(np.asarray(boxes, np.float32))
    out[: len(boxes), 4] = scores
    for i, c in enumerate(CLASSES[: len(boxes)]):
        out[i, 5 + c] = 1.0
    return out[None]


def yolov8_output(boxes=BOXES, scores=(0.9, 0.8, 0.7), nc=3, cols=40) -> np.ndarray:
    out = np.zeros((4 + nc, cols), np.float32)
    out[:4] = np.array([[400, 400, 4, 4]], np.float32).T
    out[:4, : len(boxes)] = _xywh(np.asarray(boxes, np.float32)).T
    for i, (c, s) in enumerate(zip(CLASSES, scores)):
        out[4 + c, i] = s
    return out[None]


def _sorted(d: Detections) -> tuple[np.ndarray, list[int]]:
    order = np.argsort(-d.scores)
    return d.boxes[order], d.classes[order].tolist()


# ----------------------------------------------------------------------------- decoders


def test_guess_decoder_from_the_output_shape():
    assert detect.guess_decoder((1, 8400, 85)) == "yolox"
    assert detect.guess_decoder((1, 3549, 6)) == "yolox"
    assert detect.guess_decoder((1, 84, 8400)) == "yolov8"
    assert detect.guess_decoder([5, 300]) == "yolov8"
    with pytest.raises(ValueError, match="cannot tell"):
        detect.guess_decoder((1, 1000))


@pytest.mark.parametrize("layout", ["yolox", "yolov8"])
def test_known_boxes_in_same_boxes_out(layout):
    out = yolox_output() if layout == "yolox" else yolov8_output()
    dets = detect.decode(out, detect.guess_decoder(out.shape))
    boxes, classes = _sorted(dets)
    np.testing.assert_allclose(boxes, BOXES, atol=1e-4)
    assert classes == CLASSES
    with pytest.raises(ValueError, match="unknown decoder"):
        detect.decode(out, "ssd")


def test_raw_yolox_grid_rows_are_recognised_and_decoded():
    # input 64x64, strides 8/16/32: 64 + 16 + 4 = 84 rows of raw offsets
    rows = np.zeros((84, 6), np.float32)
    rows[19] = [0.5, 0.5, np.log(2.0), np.log(4.0), 0.9, 1.0]  # stride-8 cell (3, 2)
    out = rows[None]
    assert detect.grid_cells((64, 64)) == 84
    assert detect.looks_raw_yolox(out, (64, 64))
    assert not detect.looks_raw_yolox(out, (96, 96))  # row count does not fit the grid
    decoded = out.copy()
    decoded[0, 19, :4] = [28, 20, 16, 32]  # the same box in pixels
    assert not detect.looks_raw_yolox(decoded, (64, 64))
    m = tasks.detect_metrics([{"o": out}], [{"o": out}], input_hw=(64, 64))
    assert m.details["decoder"] == "yolox-grid" and m.details["original_detections"] == 1


def test_match_pairs_report_ious():
    ref = Detections(BOXES, np.array([0.9, 0.8, 0.7], np.float32), np.array(CLASSES))
    shifted = Detections(BOXES + [0, 0, 0, 10], ref.scores, ref.classes)
    pairs = detect.match_pairs(ref, shifted)
    assert sorted(p[0] for p in pairs) == [0, 1, 2]
    assert pairs[0][2] == pytest.approx(40 * 60 / (40 * 70))


# ----------------------------------------------------------------------------- mAP


def test_average_precision_101_point_by_hand():
    # 2 truth boxes; ranked detections TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Monotone envelope: 1 up to recall 0.5 (51 points), 2/3 above (50 points).
    ap = tasks.average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), 2)
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert tasks.average_precision(np.array([0.9]), np.array([1]), 1) == pytest.approx(1.0)
    assert tasks.average_precision(np.array([0.9]), np.array([1]), 2) == pytest.approx(51 / 101)
    assert tasks.average_precision(np.zeros(0), np.zeros(0), 3) == 0.0


def test_map_of_detections_against_themselves_is_one():
    truth = [Detections(BOXES, np.array([0.9, 0.8, 0.7], np.float32), np.array(CLASSES))]
    maps = tasks.mean_average_precision(truth, truth, tasks.COCO_IOUS)
    assert all(v == pytest.approx(1.0) for v in maps.values())
    empty = [Detections.empty()]
    assert tasks.mean_average_precision(empty, empty)[0.5] == 1.0
    assert tasks.mean_average_precision(empty, truth)[0.5] == 0.0


def test_map_is_class_aware_and_drops_with_worse_boxes():
    truth = [Detections(BOXES, np.ones(3, np.float32), np.array(CLASSES))]
    wrong_class = [Detections(BOXES, np.ones(3, np.float32), np.array([0, 1, 2]))]
    assert tasks.mean_average_precision(truth, wrong_class)[0.5] == pytest.approx(0.0)
    # box 0 shifted to IoU 0.6: still a hit at 0.5, a miss from 0.65 up
    moved = BOXES.copy()
    moved[0] += [0, 15, 0, 15]  # IoU = 45 / 75 = 0.6
    cand = [Detections(moved, np.ones(3, np.float32), np.array(CLASSES))]
    maps = tasks.mean_average_precision(truth, cand, tasks.COCO_IOUS)
    assert maps[0.5] == pytest.approx(1.0) and maps[0.6] == pytest.approx(1.0)
    assert maps[0.65] == pytest.approx(2 / 3)  # class 2's AP is 0, the other two 1


def test_detect_metrics_self_one_perturbed_lower():
    out = yolox_output()
    same = tasks.detect_metrics([{"o": out}], [{"o": out.copy()}])
    assert same.metrics["map50"] == 1.0 and same.metrics["map50_95"] == 1.0
    assert same.details["missed"] == same.details["extra"] == 0
    noisy = out.copy()
    noisy[0, 0, 0] += 4  # first box moved by 4 px: IoU 0.82, a hit only up to 0.8
    noisy[0, 1, 4] = 0.1  # second box below conf: missed at 0.25, kept low for mAP
    noisy[0, 10, :] = [250, 250, 20, 20, 0.95, 1, 0, 0]  # an extra high-score box
    m = tasks.detect_metrics([{"o": out}], [{"o": noisy}])
    # class 2: a hit up to IoU 0.8; class 0: the extra box outranks the low one (AP 1/2)
    assert m.metrics["map50"] == pytest.approx((1 + 0.5 + 1) / 3, abs=0.01)
    assert m.metrics["map50_95"] < m.metrics["map50"]
    assert m.details["missed"] >= 1 and m.details["extra"] >= 1
    assert m.metrics["iou_mean"] < 1.0
    v8 = yolov8_output()
    assert tasks.detect_metrics([{"o": v8}], [{"o": v8}], decoder="yolov8").metrics["map50"] == 1
    with pytest.raises(OptionsError, match="unknown decoder"):
        tasks.detect_metrics([{"o": v8}], [{"o": v8}], decoder="ssd")
    short = np.zeros((1, 4, 10), np.float32)  # 4 rows: no class score
    with pytest.raises(OptionsError, match="decoding failed"):
        tasks.detect_metrics([{"o": short}], [{"o": short}], decoder="yolov8")


def test_letterbox_maps_boxes_to_original_pixels_and_yolo_labels(tmp_path):
    out = yolox_output(BOXES[:1], (0.9,))
    lb = Letterbox(0.5, (0.0, 10.0), (400, 800))  # x' = x / 2, y' = y / 2 + 10
    # the label file describes the same box in the original image: xyxy (20, 20, 100, 140)
    (tmp_path / "a.txt").write_text("2 0.075 0.2 0.1 0.3\n")
    files = [tmp_path / "a.jpg"]
    labels = tasks.load_yolo_labels(tmp_path, files, [lb])
    np.testing.assert_allclose(labels[0].boxes, [[20, 20, 100, 140]], atol=1e-4)
    m = tasks.detect_metrics([{"o": out}], [{"o": out}], letterboxes=[lb], labels=labels)
    assert m.metrics["label_map50"] == pytest.approx(1.0)
    assert m.metrics["label_map50_original"] == pytest.approx(1.0)
    nolabel = tasks.load_yolo_labels(tmp_path, [tmp_path / "b.jpg"], [lb])  # no file: no objects
    assert len(nolabel[0]) == 0


# ----------------------------------------------------------------------------- classify, dense


def classifier(weights: np.ndarray) -> onnx.ModelProto:
    """x [N, 4] -> logits [N, 3] = x @ W."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


W = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [1, 1, 1]], np.float32)
X = [{"x": np.eye(4, dtype=np.float32)[:3] + 0.1}, {"x": np.eye(4, dtype=np.float32)[1:] + 0.1}]


def test_classification_agreement_on_a_fixture():
    swapped = W[:, [1, 0, 2]]  # classes 0 and 1 exchanged
    same = tasks.evaluate_models(Task("classify"), classifier(W), classifier(W), X)
    assert same.metrics == {"top1": 1.0, "top5": 1.0}
    m = tasks.evaluate_models(Task("classify", labels=[0, 1, 2, 1, 2, 0]), classifier(W),
                              classifier(swapped), X)  # fmt: skip
    # samples: argmax 0,1,2 then 1,2,0 (a three-way tie: first index, in both models);
    # the swapped model answers 1,0,2,0,2,0
    assert m.metrics["top1"] == pytest.approx(3 / 6)
    assert m.metrics["top5"] == 1.0  # only 3 classes: all are in the top 3
    assert m.metrics["accuracy_original"] == pytest.approx(1.0)
    assert m.metrics["accuracy"] == pytest.approx(3 / 6)


def test_dense_agreement_and_iou():
    a = np.zeros((1, 1, 4, 4), np.float32)
    a[..., :2, :2] = 0.9  # 4 foreground pixels
    b = a.copy()
    b[..., 0, 2] = 0.8  # one more
    m = tasks.dense_metrics([{"m": a}], [{"m": b}])
    assert m.metrics["agreement"] == pytest.approx(15 / 16)
    assert m.metrics["iou"] == pytest.approx(4 / 5)
    empty = np.zeros_like(a)
    assert tasks.dense_metrics([{"m": empty}], [{"m": empty}]).metrics["iou"] == 1.0


def test_labels_from_class_folders_and_csv(tmp_path):
    for cls, name in (("0", "a.png"), ("0", "b.png"), ("1", "c.png")):
        (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "tree" / cls / name)
    pairs = tasks.labeled_images(tmp_path / "tree")
    assert [(p.name, y) for p, y in pairs] == [("a.png", 0), ("b.png", 0), ("c.png", 1)]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nb.png,dog\nsub/a.png,cat\n")
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    assert tasks.csv_labels(csv, files) == [0, 1]  # class names numbered in sorted order
    with pytest.raises(OptionsError, match="no label for c.png"):
        tasks.csv_labels(csv, files + [tmp_path / "c.png"])
    assert tasks.parse_min_metric("map50=0.9") == ("map50", 0.9)
    with pytest.raises(OptionsError, match="NAME=VALUE"):
        tasks.parse_min_metric("map50")
    with pytest.raises(OptionsError, match="unknown task"):
        Task("segment")


# ----------------------------------------------------------------------------- pipeline gate


class SwapClasses(Pass):
    """Lossy on purpose: exchanges the first two logits."""

    name = "swap-classes"
    summary = "swap"
    numerics = "lossy"

    def call(self, model, ctx):
        w = model.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, [1, 0, 2]], w.name))
        return PassResult(model, True)


class Nudge(Pass):
    """Lossy but harmless: scales the logits by 1.01."""

    name = "nudge"
    summary = "nudge"
    numerics = "lossy"

    def call(self, model, ctx):
        w = model.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
        return PassResult(model, True)


def test_gate_stops_the_pipeline():
    gate = TaskGate(Task("classify"), "top1", 0.9, X)
    with pytest.raises(TaskGateFailed, match=r"after 'swap-classes' \(after passes \[nudge\]\)"):
        Pipeline([Nudge(), SwapClasses()]).run(classifier(W), feeds=X, gate=gate)
    assert TaskGateFailed.exit_code == 1


def test_gate_rolls_a_pass_back_and_records_it():
    gate = TaskGate(Task("classify"), "top1", 0.9, X, on_fail="rollback")
    result = Pipeline([Nudge(), SwapClasses(), Nudge()]).run(classifier(W), feeds=X, gate=gate)
    nudge, swap, again = result.records
    assert not nudge.rolled_back and nudge.task["metrics"]["top1"] == 1.0
    assert swap.rolled_back and swap.task["metrics"]["top1"] < 0.9
    assert "rolled back" in swap.notes[0] and swap.after == swap.before
    assert not again.rolled_back
    w = numpy_helper.to_array(result.model.graph.initializer[0])
    np.testing.assert_allclose(w, W * 1.01 * 1.01, rtol=1e-6)  # the swap is undone
    assert result.task["metrics"]["top1"] == 1.0
    d = result.to_dict()
    assert d["passes"][1]["rolled_back"] is True and d["task"]["task"] == "classify"


def test_gate_without_minimum_only_measures():
    gate = TaskGate(Task("classify"), "top1", None, X)
    result = Pipeline([SwapClasses()]).run(classifier(W), feeds=X, gate=gate)
    assert result.records[0].task["metrics"]["top1"] < 1 and not result.records[0].rolled_back
    with pytest.raises(OptionsError, match="on_fail"):
        TaskGate(Task("classify"), "top1", 0.9, X, on_fail="ignore")
    with pytest.raises(OptionsError, match="no metric 'map50'"):
        Pipeline([SwapClasses()]).run(
            classifier(W), feeds=X, gate=TaskGate(Task("classify"), "map50", 0.5, X)
        )


# ----------------------------------------------------------------------------- CLI-style feeds


def colour_classifier() -> onnx.ModelProto:
    """images [1, 3, 8, 8] -> scores [1, 3] = mean of each channel: red 0, green 1, blue 2."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["scores"]),
        ],
        "colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def test_make_task_with_class_folders_and_csv(tmp_path):
    from graphslim.feeds import load_feeds

    model = colour_classifier()
    for k, name in enumerate(COLOURS):
        (tmp_path / "tree" / str(k)).mkdir(parents=True)
        Image.new("RGB", (16, 16), COLOURS[name]).save(tmp_path / "tree" / str(k) / f"{name}.png")
        Image.new("RGB", (16, 16), COLOURS[name]).save(tmp_path / f"{name}.png")
    pre = "resize=8x8,scale=1/255"
    task, feeds = make_task_(model, [], labels=tmp_path / "tree", preprocess=pre)
    assert len(feeds) == 3 and task.labels == [0, 1, 2]
    m = tasks.evaluate_models(task, model, model, feeds)
    assert m.metrics["accuracy"] == 1.0 and m.metrics["top1"] == 1.0
    # a CSV for an image folder (sorted: blue, green, red); one label wrong on purpose
    (tmp_path / "labels.csv").write_text("red.png,0\ngreen.png,1\nblue.png,0\n")
    images = [p for p in tmp_path.iterdir() if p.suffix == ".png"]
    assert len(images) == 3
    feeds = load_feeds(tmp_path, model, preprocess=pre)
    task, feeds = make_task_(
        model, feeds, source=tmp_path, labels=tmp_path / "labels.csv", preprocess=pre
    )
    assert task.labels == [0, 1, 0]
    m = tasks.evaluate_models(task, model, model, feeds)
    assert m.metrics["accuracy"] == pytest.approx(2 / 3)


def make_task_(model, feeds, **kw):
    return tasks.make_task("classify", model, feeds, **kw)


@pytest.mark.zoo
def test_yolox_det_against_itself_and_a_noisier_copy():
    """Real detector, real held-out images: mAP 1.0 against itself, lower with weight noise."""
    from graphslim import zoo
    from graphslim.feeds import Preprocess, preprocess_image

    model = onnx.load_model(str(zoo.fetch("yolox-det")))
    images = zoo.fetch_all(["page", "text"])
    spec = Preprocess.parse("raw-bgr")
    pairs = [preprocess_image(images[k], spec, (416, 416)) for k in ("page", "text")]
    feeds = [{model.graph.input[0].name: x[None]} for x, _ in pairs]
    task = Task("detect", letterboxes=[lb for _, lb in pairs])
    same = tasks.evaluate_models(task, model, model, feeds)
    assert same.metrics["map50"] == 1.0 and same.details["original_detections"] > 10
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    rng = np.random.default_rng(0)
    for t in noisy.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.ndim == 4:
            noise = rng.normal(0, 0.05, w.shape) * np.abs(w).mean()
            t.CopyFrom(numpy_helper.from_array((w + noise).astype(np.float32), t.name))
    worse = tasks.evaluate_models(task, model, noisy, feeds)
    assert worse.metrics["map50_95"] < 1.0


# ----------------------------------------------------------------------------- default gate

TINY_YOLO = (
    __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "tiny_yolo.onnx"
)


class BlindHead(Pass):
    """Kills a YOLOv8 detector: the class convs of the head answer sigmoid(-30) everywhere,
    so not one box passes any score threshold (the box branch is untouched)."""

    name = "blind-head"
    summary = "blind"
    numerics = "lossy"

    def call(self, model, ctx):
        inits = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Conv" and n.name.startswith("/model.11/cv3.") and len(n.input) == 3:
                for name, value in ((n.input[1], 0.0), (n.input[2], -30.0)):
                    a = numpy_helper.to_array(inits[name])
                    inits[name].CopyFrom(numpy_helper.from_array(np.full_like(a, value), name))
        return PassResult(model, True)


@pytest.fixture(scope="module")
def yolo():
    from graphslim.feeds import random_feeds

    model = onnx.load_model(TINY_YOLO)
    return model, random_feeds(model, count=2, seed=0)


def test_default_gate_fails_a_detector_that_loses_every_detection(yolo):
    model, feeds = yolo
    gate = TaskGate.default(Task("detect"), feeds)
    assert (gate.metric, gate.minimum, gate.relative, gate.on_fail) == ("map50", 0.5, True, "final")
    result = Pipeline(["fold-bn", BlindHead(), "cleanup"]).run(model, feeds=feeds, gate=gate)
    v = result.gate
    assert v.passed is False and v.label == "FAIL" and v.stage == "2:blind-head"
    found = result.task["details"]
    assert found["original_detections"] > 0 and found["candidate_detections"] == 0
    assert result.task["metrics"]["map50"] == 0.0 and v.value == 0.0
    assert "every detection lost" in v.message and "broken by pass 2:blind-head" in v.message
    assert [s["stage"] for s in v.trail] == ["1:fold-bn", "2:blind-head"]  # cleanup: unmodified
    assert v.trail[0]["value"] == 1.0  # fold-bn is exact: the detections are all there
    assert not any(r.rolled_back for r in result.records)  # "final" judges, never undoes
    d = result.to_dict()["gate"]
    assert d["verdict"] == "FAIL" and d["stage"] == "2:blind-head" and d["minimum"] == 0.5


def test_recipe_style_gate_rolls_the_killer_back(yolo):
    model, feeds = yolo
    pipe = Pipeline(["fold-bn", BlindHead()])
    pipe.gate = tasks.GateSpec()  # what a recipe's [gate] table gives: auto task, rollback
    result = pipe.run(model, feeds=feeds)  # gate=None: the pipeline's own gate
    fold, blind = result.records
    assert blind.rolled_back and not fold.rolled_back
    assert result.gate.passed is True and result.gate.rolled_back == ["2:blind-head"]
    assert result.task["metrics"]["map50"] == 1.0 and result.task["details"]["decoder"] == "yolov8"
    assert result.final.params == fold.after.params
    off = pipe.run(model, feeds=feeds, gate=False)
    assert off.gate is None and not off.records[1].rolled_back


def test_pipeline_gate_without_feeds_or_task_says_so(yolo, caplog):
    model, _ = yolo
    pipe = Pipeline(["fold-bn"])
    pipe.gate = tasks.GateSpec()
    result = pipe.run(model)
    assert result.gate is None and "WITHOUT it" in caplog.text
    caplog.clear()
    pipe = Pipeline([Nudge()])
    pipe.gate = tasks.GateSpec()
    x = [{"x": np.ones((1, 4, 2), np.float32)}]
    bad = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])],
            [numpy_helper.from_array(np.ones(1, np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    assert pipe.run(bad, feeds=x).gate is None and "cannot tell the task" in caplog.text


def test_verdicts_relative_minimum_and_unjudged_detector():
    gate = TaskGate(Task("classify"), "accuracy", 0.5, X, on_fail="final", relative=True)
    m = tasks.TaskMetrics("classify", {"top1": 0.5, "accuracy": 0.31, "accuracy_original": 0.6})
    assert gate.threshold(m) == pytest.approx(0.3) and gate.holds(m)  # 0.31 >= 0.5 * 0.6
    assert gate.verdict(m, [("1:x", m.to_dict(), False)]).passed is True
    m.metrics["accuracy"] = 0.29
    v = gate.verdict(
        m, [("1:a", {"metrics": {"accuracy": 0.5}}, False), ("2:b", m.to_dict(), False)]
    )
    assert v.passed is False and v.stage == "2:b" and "accuracy 0.500 -> 0.290" in v.message
    nothing = tasks.TaskMetrics(
        "detect", {"map50": 0.0}, {"original_detections": 0, "images": 2, "conf": 0.25}
    )
    det = TaskGate.default(Task("detect"), X)
    assert det.holds(nothing)  # nothing to lose: the gate cannot say the model broke
    v = det.verdict(nothing, [])
    assert v.passed is None and v.label == "NOT JUDGED" and "no detection" in v.message
    nan = tasks.TaskMetrics("detect", {"map50": float("nan")}, {"original_detections": 3})
    assert not det.holds(nan) and det.verdict(nan, []).passed is False


@pytest.mark.parametrize(
    "shape, hw, layout",
    [
        ((1, 84, 8400), (640, 640), "yolov8"),  # YOLOv8n, 80 classes
        ((1, 6, 8400), (640, 640), "yolov8"),  # the fall-detection YOLOv8s, 2 classes
        ((1, 3549, 6), (416, 416), "yolox"),  # yolox-det
        ((1, 25200, 85), (640, 640), "yolox"),  # YOLOv5: 3 anchors per cell
        ((1, 6, 80), (64, 64), "yolov8"),  # tiny_yolo: strides 8 and 16
        ((1, 1000), (224, 224), None),
        ((1, 84, 8100), (640, 640), None),
        ((1, 84, 8400), None, None),
    ],
)
def test_detector_layout_from_the_anchor_count(shape, hw, layout):
    assert tasks.detector_layout(shape, hw) == layout


def test_infer_task_from_outputs():
    rng = np.random.default_rng(0)
    assert tasks.infer_task({"o": rng.random((1, 6, 8400))}, (640, 640)) == ("detect", "o")
    assert tasks.infer_task({"p": rng.random((2, 10))}, (32, 32)) == ("classify", "p")
    assert tasks.infer_task({"m": rng.random((1, 1, 64, 64))}, (64, 64)) == ("dense", "m")
    assert tasks.infer_task({"f": rng.normal(size=(1, 1, 64, 64))}, (64, 64)) is None  # not [0, 1]
    assert tasks.infer_task({"f": rng.random((1, 16, 8, 8))}, (64, 64)) is None


def test_gate_table_in_a_pipeline_file(tmp_path):
    from graphslim.errors import PipelineError
    from graphslim.pipeline import parse_gate

    path = tmp_path / "p.toml"
    path.write_text('[gate]\ntask = "detect"\nminimum = 0.8\n\n[[pass]]\nname = "fold-bn"\n')
    pipe = Pipeline.from_toml(path)
    assert pipe.gate == tasks.GateSpec(task="detect", minimum=0.8, on_fail="rollback")
    path.write_text('[[pass]]\nname = "fold-bn"\n')
    assert parse_gate(path) is None and Pipeline.from_toml(path).gate is None
    for table, message in (
        ("minimun = 0.5", "no key 'minimun'"),
        ('task = "segment"', "task 'segment'"),
        ('task = "detect"\nmetric = "top1"', "metric 'top1'"),
        ('minimum = "half"', "minimum must be a number"),
        ('on_fail = "ignore"', "on_fail 'ignore'"),
    ):
        path.write_text(f'[gate]\n{table}\n\n[[pass]]\nname = "fold-bn"\n')
        with pytest.raises(PipelineError, match=message):
            Pipeline.from_toml(path)
