"""Small versions of the recovery bench (bench/recovery.py) and the bad inputs of
`graphslim finetune`: tiny models built in code or from fixtures, a few images, one or two
epochs; the loss falls and the task metric moves toward the teacher."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from bridge_helpers import FIXTURES
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from graphslim import Pipeline, cli
from graphslim.bridge.finetune import FinetuneOptions, finetune
from graphslim.feeds import Preprocess, preprocess_image
from graphslim.runtime import run_model


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)
    monkeypatch.setattr(cli.err, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _teacher_labels(teacher: onnx.ModelProto, images: list, spec: str) -> list[int]:
    name = teacher.graph.input[0].name
    feeds = [{name: preprocess_image(im, Preprocess.parse(spec))[0][None]} for im in images]
    return [int(next(iter(o.values())).argmax()) for o in run_model(teacher, feeds)]


@pytest.fixture(scope="module")
def classify_case(tmp_path_factory):
    """flatten_gemm (a 10-class CNN) as the teacher, pruned at 0.5 as the student; images in
    class folders labelled with the teacher's own answer (labels by construction, like the
    bench's turns), a training and a validation folder."""
    root = tmp_path_factory.mktemp("classify")
    teacher = onnx.load(FIXTURES / "flatten_gemm.onnx")
    student = Pipeline.parse("prune-channels{ratio=0.5}").run(teacher).model
    onnx.save_model(student, root / "student.onnx")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("val", 24)):
        images = [
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(count)
        ]
        for i, (image, y) in enumerate(
            zip(images, _teacher_labels(teacher, images, "resize=32x32,scale=1/255"))
        ):
            (root / split / str(y)).mkdir(parents=True, exist_ok=True)
            image.save(root / split / str(y) / f"{i}.png")
    return root


def test_small_classify_recovery_with_class_folder_labels(monkeypatch, capsys, classify_case):
    root = classify_case
    out, report = root / "tuned.onnx", root / "r.json"
    code, stdout, _ = _main(
        monkeypatch, capsys, "finetune", root / "student.onnx",
        "--teacher", FIXTURES / "flatten_gemm.onnx", "--images", root / "train",
        "--labels", root / "train", "--val-images", root / "val", "--val-labels", root / "val",
        "--preprocess", "resize=32x32,scale=1/255", "--epochs", "2", "--batch", "8",
        "--optimizer", "adam", "--lr", "0.01", "--augment", "none", "-o", out, "--json", report,
    )  # fmt: skip
    assert code == 0, stdout
    data = json.loads(report.read_text())
    h = data["history"]
    assert data["metric"] == "accuracy" and "label accuracy" in stdout
    assert h[2]["loss"] < h[1]["loss"]  # the training loss falls
    assert h[data["best_epoch"]]["val_loss"] < h[0]["val_loss"]
    # the labels are the teacher's answers: accuracy is agreement with the teacher, and it rises
    assert data["best_epoch"] > 0 and h[data["best_epoch"]]["value"] > h[0]["value"]


def _dense_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,32,32] -> Conv 3->16 -> Relu -> Conv 16->16 -> Relu -> Conv 16->1 -> Sigmoid: a
    text-map head in miniature (random weights, seeded)."""
    rng = np.random.default_rng(seed)

    def conv(name, cin, cout, x, y):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        )
        return helper.make_node(
            "Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[1, 1, 1, 1]
        )

    inits: list = []
    nodes = [
        conv("c1", 3, 16, "x", "a1"), helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        conv("c2", 16, 16, "r1", "a2"), helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        conv("c3", 16, 1, "r2", "z"), helper.make_node("Sigmoid", ["z"], ["maps"], name="sig"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 1, 32, 32])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_dense_recovery_moves_the_map_iou_toward_the_teacher():
    teacher = _dense_model()
    student = (
        Pipeline.parse("prune-channels{ratio=0.5}")
        .run(teacher, input_shapes={"x": (1, 3, 32, 32)})
        .model
    )
    x = np.random.default_rng(1).standard_normal((48, 3, 32, 32)).astype(np.float32)
    opts = FinetuneOptions(
        epochs=2, batch=8, lr=3e-3, optimizer="adam", augment=(), task="dense", seed=0
    )
    result = finetune(student, teacher, x, opts)
    h = result.history
    assert result.metric == "iou" and result.outputs == {"maps": "bce-logit+dice"}
    assert h[2].loss < h[1].loss and h[result.best_epoch].val_loss < h[0].val_loss
    assert result.best_epoch > 0 and h[result.best_epoch].value > h[0].value


@pytest.fixture
def detect_case(tmp_path):
    teacher = FIXTURES / "tiny_yolo.onnx"
    student = tmp_path / "student.onnx"
    onnx.save_model(
        Pipeline.parse("prune-channels{ratio=0.5}").run(onnx.load(teacher)).model, student
    )
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(8):
        (labels / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n")
    return teacher, student, images, labels


def test_yolo_labels_pick_the_epoch_by_label_map(monkeypatch, capsys, tmp_path, detect_case):
    teacher, student, images, labels = detect_case
    report = tmp_path / "r.json"
    code, stdout, _ = _main(
        monkeypatch, capsys, "finetune", student, "--teacher", teacher, "--images", images,
        "--val-images", images, "--val-labels", labels, "--task", "detect", "--preprocess", "yolo",
        "--epochs", "1", "--batch", "4", "--augment", "none", "-o", tmp_path / "o.onnx",
        "--json", report,
    )  # fmt: skip
    assert code == 0, stdout
    data = json.loads(report.read_text())
    assert data["metric"] == "label_map50_95" and "map50_95 vs labels" in stdout
    for h in data["history"]:
        assert 0.0 <= h["value"] <= 1.0 and h["value"] == h["task"]["label_map50_95"]


# ------------------------------------------------------------------------------ bad input


def test_bad_inputs_are_one_line_exit_2_and_nothing_written(
    monkeypatch, capsys, tmp_path, detect_case
):
    teacher, student, images, labels = detect_case
    out = tmp_path / "never.onnx"
    base = [
        "finetune",
        student,
        "--teacher",
        teacher,
        "-o",
        out,
        "--epochs",
        "1",
        "--preprocess",
        "yolo",
    ]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    (junk / "b.jpg").write_bytes(b"")
    code, _, err = _main(monkeypatch, capsys, *base, "--images", junk)
    assert code == 2 and "no readable image" in _one_error_line(err)

    csv = tmp_path / "labels.csv"
    csv.write_text("0.png,1\n1.png,0\n")
    code, _, err = _main(monkeypatch, capsys, *base, "--images", images, "--labels", csv)
    assert code == 2 and "no label for image 2.png" in _one_error_line(err)

    (labels / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    code, _, err = _main(
        monkeypatch, capsys, *base, "--images", images, "--val-images", images,
        "--val-labels", labels, "--task", "detect",
    )  # fmt: skip
    assert code == 2 and "stray.txt matches no image" in _one_error_line(err)

    other = onnx.load(student)
    other.graph.output[0].name = "boxes"  # the student answers under another name
    other.graph.node[-1].output[0] = "boxes"
    onnx.save_model(other, tmp_path / "other.onnx")
    code, _, err = _main(
        monkeypatch, capsys, "finetune", tmp_path / "other.onnx", "--teacher", teacher,
        "--images", images, "-o", out, "--epochs", "1", "--preprocess", "yolo",
    )  # fmt: skip
    assert code == 2 and "differ from the student's" in _one_error_line(err)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_a_corrupt_image_among_good_ones_is_skipped_with_a_warning_naming_it(
    monkeypatch, capsys, tmp_path, detect_case, caplog
):
    teacher, student, images, _ = detect_case
    good = (images / "0.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])  # the header reads fine
    code, stdout, err = _main(
        monkeypatch, capsys, "finetune", student, "--teacher", teacher, "--images", images,
        "-o", tmp_path / "o.onnx", "--epochs", "1", "--batch", "4", "--preprocess", "yolo",
    )  # fmt: skip
    assert code == 0, stdout + err
    assert "skipping" in caplog.text and "truncated.png" in caplog.text
