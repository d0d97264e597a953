"""`graphslim finetune` and `graphslim export` from the command line."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from bridge_helpers import FIXTURES
from PIL import Image

from graphslim import Pipeline, cli


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)
    monkeypatch.setattr(cli.err, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


@pytest.fixture
def setup(tmp_path):
    teacher = FIXTURES / "tiny_yolo.onnx"
    student = tmp_path / "student.onnx"
    onnx.save_model(
        Pipeline.parse("prune-channels{ratio=0.5}").run(onnx.load(teacher)).model, student
    )
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return teacher, student, images


def test_finetune_writes_the_student_and_a_report(monkeypatch, capsys, tmp_path, setup):
    teacher, student, images = setup
    before = student.read_bytes()
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _main(
        monkeypatch,
        capsys,
        "finetune",
        student,
        "--teacher",
        teacher,
        "--images",
        images,
        "-o",
        out,
        "--epochs",
        "1",
        "--batch",
        "4",
        "--preprocess",
        "yolo",
        "--checkpoint",
        tmp_path / "ck.pt",
        "--recalibrate-bn",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0, stdout
    assert "output cosine" in stdout and f"wrote {out}" in stdout
    assert "bridge parity PASS (max-rel=0.0001|max-abs=1e-06)" in stderr
    # Not a terminal: plain lines a log keeps, one per epoch (the rich bar would say nothing
    # until the end).
    assert "epoch 0: " in stderr and "epoch 1: " in stderr
    assert student.read_bytes() == before
    trained = onnx.load_model(out)
    assert [n.name for n in trained.graph.node] == [n.name for n in onnx.load(student).graph.node]
    report = json.loads((tmp_path / "r.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["metric"] == "cosine" and report["parity"]["passed"]
    assert (tmp_path / "ck.pt").exists()


def test_finetune_parity_bound_is_the_tol_and_force_goes_on(monkeypatch, capsys, tmp_path, setup):
    teacher, student, images = setup
    out = tmp_path / "out.onnx"
    args = ["finetune", student, "--teacher", teacher, "--images", images, "-o", out]
    args += ["--epochs", "1", "--batch", "4", "--preprocess", "yolo", "--task", "detect"]
    code, stdout, err = _main(monkeypatch, capsys, *args, "--tol", "max-rel=1e-12")
    assert code == 2 and not out.exists()
    assert "max-rel" in err and "--force" in err and "first diverging node" in err
    code, stdout, err = _main(
        monkeypatch,
        capsys,
        *args,
        "--tol",
        "max-rel=1e-12",
        "--force",
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0 and out.exists()
    assert "FAIL, forced" in err and "map50 vs teacher" in stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["parity"]["forced"] and report["metric"] == "map50"
    assert "map50" in report["history"][1]["task"]


def test_finetune_refuses_to_overwrite_its_input(monkeypatch, capsys, setup):
    teacher, student, images = setup
    code, _, err = _main(
        monkeypatch,
        capsys,
        "finetune",
        student,
        "--teacher",
        teacher,
        "--images",
        images,
        "-o",
        student,
    )
    assert code == 2 and "output path" in err


@pytest.mark.parametrize("command", ["finetune", "export"])
def test_without_torch_the_commands_say_how_to_install_it(monkeypatch, capsys, setup, command):
    teacher, student, images = setup
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    args = (
        [student, "--teacher", teacher, "--images", images, "-o", "x.onnx"]
        if command == "finetune"
        else ["yolov8n.yaml", "-o", "x.onnx"]
    )
    code, _, err = _main(monkeypatch, capsys, command, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'onnx-graphslim[torch]'" in lines[0]
