"""TensorRT backend: runs where TensorRT and a CUDA GPU are present, skips elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

import cli
from graphslim.backends import tensorrt as T
from graphslim.feeds import random_feeds

TINY_YOLO = Path(__file__).resolve().parents[2] / "fixtures" / "tiny_yolo.onnx"
WHY = T.unavailable()
needs_trt = pytest.mark.skipif(WHY is not None, reason=f"TensorRT backend unavailable: {WHY}")


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load_model(TINY_YOLO)


@needs_trt
@pytest.mark.parametrize("precision,cosine", [("fp32", 0.9999), ("fp16", 0.99)])
def test_build_bench_compare(model, precision, cosine):
    engine = T.build(model, precision, workspace_mb=256)
    feeds = random_feeds(model, count=2, seed=0)
    timing = T.bench(engine, feeds[0], precision, runs=10, warmup=2)
    assert timing.median_ms > 0 and timing.throughput > 0
    c = T.compare_with_onnxruntime(model, engine, feeds)
    assert c.worst("cosine") >= cosine


@needs_trt
def test_int8_from_qdq(model):
    from graphslim.contract import PassContext
    from passes.quantize_int8 import QuantizeInt8

    qdq = QuantizeInt8(calibration="random", target="tensorrt")(model, PassContext()).model
    engine = T.build(qdq, "int8", workspace_mb=256)
    feeds = random_feeds(model, count=1, seed=0)
    assert T.compare_with_onnxruntime(qdq, engine, feeds).worst("cosine") > 0.9


def test_int8_needs_qdq(model):
    with pytest.raises(Exception, match="QDQ"):
        T.build(model, "int8")


@pytest.mark.skipif(WHY is None, reason="TensorRT is available here")
def test_cli_without_trt_says_why(monkeypatch, capsys, tmp_path):
    for args in (
        ["trt", "build", TINY_YOLO, "-o", tmp_path / "e.plan"],
        ["trt", "bench", TINY_YOLO],
    ):
        monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        err = capsys.readouterr().err
        assert exc.value.code == 2
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "TensorRT backend unavailable" in lines[0]
