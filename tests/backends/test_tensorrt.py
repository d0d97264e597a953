"""TensorRT backend (through Polygraphy): engines build, time and match onnxruntime where
TensorRT, Polygraphy and a CUDA GPU are present; those tests skip elsewhere with the reason.
The checks that say *why* it cannot run, and that nothing imports it eagerly, run everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from graphslim import cli
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
def test_build_bench_compare(model, precision, cosine, tmp_path):
    cache = tmp_path / "timing.cache"
    engine = T.build(model, precision, workspace_mb=256, timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0  # written after the build
    again = T.build(model, precision, workspace_mb=256, timing_cache=cache)  # reads it
    assert len(again) > 0
    feeds = random_feeds(model, count=2, seed=0)
    timing = T.bench(engine, feeds[0], precision, runs=10, warmup=2)
    assert timing.median_ms > 0 and timing.throughput > 0
    c = T.compare_with_onnxruntime(model, engine, feeds)
    assert c.worst("cosine") >= cosine


@needs_trt
def test_int8_from_qdq(model):
    from graphslim.contract import PassContext
    from graphslim.passes.quantize_int8 import QuantizeInt8

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


def test_unavailable_names_what_is_missing(monkeypatch):
    """Each missing piece gives its own reason: TensorRT, then Polygraphy, then the GPU."""
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert T.unavailable().startswith(
        "TensorRT is not installed (pip install 'onnx-graphslim[trt]'"
    )
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    assert T.unavailable().startswith("Polygraphy is not installed")
    monkeypatch.delitem(sys.modules, "polygraphy")
    pytest.importorskip("polygraphy", reason="polygraphy is not installed here")
    monkeypatch.setattr(T, "_gpu_count", lambda: None)
    assert "libcudart" in T.unavailable()
    monkeypatch.setattr(T, "_gpu_count", lambda: 0)
    assert T.unavailable() == "no CUDA GPU is available (cudaGetDeviceCount found none)"
    monkeypatch.setattr(T, "_gpu_count", lambda: 1)
    assert T.unavailable() is None
    with pytest.raises(T.BackendUnavailable):  # build still refuses bad precision first
        monkeypatch.setattr(T, "_gpu_count", lambda: 0)
        T.build(onnx.ModelProto(), "fp32")


def test_default_timing_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert T.default_timing_cache() == tmp_path / "graphslim" / "trt" / "timing.cache"


def test_import_graphslim_does_not_import_tensorrt():
    import subprocess

    code = (
        "import sys, graphslim, graphslim.backends, graphslim.bench;"
        "assert 'tensorrt' not in sys.modules and 'polygraphy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_trt
@pytest.mark.zoo
@pytest.mark.slow
def test_yolox_det_three_precisions(tmp_path):
    """The real detector at FP32, FP16 and explicit-Q/DQ INT8 (quantize-int8{target=tensorrt},
    calibrated on zoo photos) builds and matches onnxruntime."""
    from graphslim import zoo
    from graphslim.contract import PassContext
    from graphslim.feeds import load_feeds
    from graphslim.passes.quantize_int8 import QuantizeInt8

    model = onnx.load_model(zoo.fetch("yolox-det"))
    images = tmp_path / "images"
    images.mkdir()
    for name in ("bus", "zidane", "astronaut", "coffee"):
        src = zoo.fetch(name)
        (images / src.name).write_bytes(src.read_bytes())
    feeds = load_feeds(images, model, preprocess="raw-bgr")
    cache = tmp_path / "timing.cache"
    work = onnx.ModelProto()
    work.CopyFrom(model)
    qdq = QuantizeInt8(target="tensorrt")(work, PassContext(feeds=feeds)).model
    for precision, m, cosine in (
        ("fp32", model, 0.9999),
        ("fp16", model, 0.999),
        ("int8", qdq, 0.99),
    ):
        engine = T.build(m, precision, workspace_mb=1024, timing_cache=cache)
        timing = T.bench(engine, feeds[0], precision, runs=20, warmup=5)
        assert timing.median_ms > 0
        # Each engine against its own ONNX graph in onnxruntime (INT8: the QDQ graph).
        c = T.compare_with_onnxruntime(m, engine, feeds[:2])
        assert c.worst("cosine") >= cosine, (precision, c.to_dict())
