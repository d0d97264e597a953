"""End to end on real third-party models: `graphslim run` with the exact clean-up pipeline,
then `graphslim validate` of the result against the original (max-rel <= 1e-4).

Real images feed the models that have a real task (a DBNet's probability map on random
noise is ~2e-5 everywhere, where any relative error is noise); calibration-free, so any
image set will do, kept apart from nothing here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphslim import zoo

pytestmark = pytest.mark.zoo

PIPELINE = "constants-to-initializers,simplify,fold-bn,cleanup"
GRAPHSLIM = [sys.executable, "-m", "graphslim.cli"]  # the installed console script's module

# id -> (--input-shape, image ids, --preprocess); None images: seeded random feeds.
CASES = {
    "yolox-det": (None, ["bus", "zidane"], "raw-bgr"),
    "pplcnet-cls": ("x:1,3,224,224", ["chelsea", "coffee", "page"], "imagenet"),
    "ppocr-det": (
        "x:1,3,640,640",
        ["text", "page"],
        "resize=640x640,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,bgr",
    ),
    "ppocr-cls": ("x:1,3,48,192", ["text"], "resize=48x192,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,bgr"),
    "yolov8n-640": (None, None, None),
    "yolo11n-640": (None, None, None),
    "resnet18-224": (None, None, None),
}


def _graphslim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GRAPHSLIM, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.parametrize("model_id", sorted(CASES))
def test_exact_pipeline_keeps_outputs(model_id, tmp_path):
    shape, images, preprocess = CASES[model_id]
    src = zoo.fetch(model_id)
    before = src.read_bytes()
    feed_args: list[str] = []
    if images:
        folder = tmp_path / "images"
        folder.mkdir()
        for image_id, path in zoo.fetch_all(images).items():
            shutil.copy(path, folder / f"{image_id}{path.suffix}")
        feed_args = ["--feeds", str(folder), "--preprocess", preprocess]
    if shape:
        feed_args += ["--input-shape", shape]
    out = tmp_path / "slim.onnx"
    report = tmp_path / "run.json"
    r = _graphslim(
        "run", str(src), "-P", PIPELINE, "-o", str(out), "--json", str(report), *feed_args
    )
    assert r.returncode == 0, r.stderr
    assert "final validation" in r.stdout and "PASS" in r.stdout
    data = json.loads(report.read_text())
    assert [p["name"] for p in data["passes"]] == PIPELINE.split(",")
    assert data["validation"]["passed"] is True
    assert data["final"]["macs"] == data["initial"]["macs"]  # exact passes keep the compute
    assert data["final"]["nodes"] <= data["initial"]["nodes"]

    v = _graphslim(
        "validate",
        str(src),
        str(out),
        "--tol",
        "max-rel=1e-4",
        "--json",
        str(tmp_path / "v.json"),
        *feed_args,
    )
    assert v.returncode == 0, v.stdout + v.stderr
    checked = json.loads((tmp_path / "v.json").read_text())
    assert checked["passed"] and checked["feeds"] >= 1
    assert all(o["stats"]["max-rel"] <= 1e-4 for o in checked["outputs"])
    assert src.read_bytes() == before  # the input file is never touched


def test_paddle_constant_weights_become_initializers(tmp_path):
    """PP-OCR stores weights as Constant nodes; after the pipeline they are initializers."""
    from graphslim.model_io import load_model

    src = zoo.fetch("ppocr-cls")
    original = load_model(src)
    assert sum(n.op_type == "Constant" for n in original.graph.node) > 50
    out = tmp_path / "slim.onnx"
    r = _graphslim(
        "run",
        str(src),
        "-P",
        "constants-to-initializers,cleanup",
        "-o",
        str(out),
        "--input-shape",
        "x:1,3,48,192",
    )
    assert r.returncode == 0, r.stderr
    slim = load_model(out)
    assert not any(n.op_type == "Constant" for n in slim.graph.node)
    assert len(slim.graph.initializer) > 50
