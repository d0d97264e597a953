"""OpenVINO backend: sessions with the onnxruntime Session interface, side-by-side timing
across runtimes, IR conversion checked against onnxruntime, QDQ models run as INT8 kernels.
Runs where the openvino extra is installed (the dev extra has it); skips with the reason
elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphslim import cli
from graphslim.backends import BackendUnavailable
from graphslim.backends import openvino as OV
from graphslim.backends import openvino_ir as OV_IR
from graphslim.bench import bench
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.runtime import Session, open_session, run_model
from graphslim.validate import Tolerance, compare_outputs

TINY_YOLO = Path(__file__).resolve().parents[2] / "fixtures" / "tiny_yolo.onnx"
WHY = OV.unavailable()
needs_ov = pytest.mark.skipif(WHY is not None, reason=f"OpenVINO runtime unavailable: {WHY}")
EXACT = [Tolerance("max-rel", 1e-4, alternatives=(("max-abs", 1e-6),))]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load_model(TINY_YOLO)


@pytest.fixture(scope="module")
def feeds(model):
    return random_feeds(model, count=2, seed=0)


def main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)
    monkeypatch.setattr(cli.err, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    cap = capsys.readouterr()
    return (0 if exc.value.code is None else exc.value.code), cap.out, cap.err


@needs_ov
def test_session_matches_onnxruntime(model, feeds):
    ref = run_model(model, feeds)
    with open_session(model, runtime="openvino", threads=1, label="tiny") as s:
        assert isinstance(s, OV.OpenVINOSession)
        assert s.input_names == ["images"] and s.threads == 1 and s.precision == "f32"
        got = [s.run(f) for f in feeds]
        # Feeds are copied out: a second run does not overwrite the first result.
        assert not np.shares_memory(got[0][s.output_names[0]], got[1][s.output_names[0]])
    c = compare_outputs(ref, got, EXACT)
    assert c.passed, c.failure_summary()
    assert c.worst("max-abs") > 0 or c.worst("cosine") == 1.0  # computed, not copied


@needs_ov
def test_bad_feed_names_the_input(model):
    with OV.OpenVINOSession(model, label="tiny") as s:
        with pytest.raises(Exception, match="tiny: feed has 'nope', which is not a model input"):
            s.run({"nope": np.zeros(1, np.float32)})


@needs_ov
def test_bench_mixes_runtimes_alternating(model, feeds, monkeypatch):
    calls = []
    real_ort, real_ov = Session.run, OV.OpenVINOSession.run

    def spy_ort(self, f, output_names=None):
        calls.append(("ort", self.label))
        return real_ort(self, f, output_names)

    def spy_ov(self, f, output_names=None):
        calls.append(("openvino", self.label))
        return real_ov(self, f, output_names)

    monkeypatch.setattr(Session, "run", spy_ort)
    monkeypatch.setattr(OV.OpenVINOSession, "run", spy_ov)
    timings = bench(
        [("a", model, "ort"), ("b", model, "openvino")], feeds[0], warmup=1, runs=3, threads=1
    )
    assert calls == [("ort", "a"), ("openvino", "b")] + [("ort", "a"), ("openvino", "b")] * 3
    assert [t.runtime for t in timings] == ["ort", "openvino"]
    assert timings[0].ratio == 1.0 and timings[1].median_ms > 0 and timings[1].threads == 1
    # runtime= applies to every 2-tuple entry
    (t,) = bench([("b", model)], feeds[0], warmup=0, runs=1, runtime="openvino")
    assert t.runtime == "openvino"


def test_unknown_runtime_is_an_options_error(model, feeds):
    with pytest.raises(OptionsError, match="runtime 'tflite': use one of ort, openvino"):
        bench([("a", model)], feeds[0], runs=1, runtime="tflite")


def test_missing_openvino_says_how_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert "pip install 'onnx-graphslim[openvino]'" in OV.unavailable()
    with pytest.raises(BackendUnavailable, match=r"OpenVINO runtime unavailable: .*\[openvino\]"):
        open_session(model, runtime="openvino")


def test_import_graphslim_does_not_import_openvino():
    code = (
        "import sys, graphslim, graphslim.bench, graphslim.runtime, graphslim.backends;"
        "assert 'openvino' not in sys.modules, 'openvino imported';"
        "assert 'onnxconverter_common' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_ov
def test_convert_to_ir_and_check(model, feeds, tmp_path):
    xml = OV_IR.convert(model, tmp_path / "tiny.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.bin", "tiny.xml"]  # no temp left
    c = OV_IR.check(model, xml, feeds, EXACT)
    assert c.passed, c.failure_summary()
    with pytest.raises(ValueError, match="must end in .xml"):
        OV_IR.convert(model, tmp_path / "tiny.onnx")


@needs_ov
@pytest.mark.parametrize("target", ["cpu-x86", "openvino"])
def test_qdq_model_runs_int8_kernels(model, target):
    """A QDQ model (quantize-int8, onnxruntime's placement or the OpenVINO one) runs its
    convolutions as u8 kernels in OpenVINO and stays close to onnxruntime's result of the same
    QDQ model and to FP32."""
    from graphslim.contract import PassContext
    from graphslim.passes.quantize_int8 import QuantizeInt8

    calib = random_feeds(model, count=4, seed=1)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    # latency_guard off: this is about OpenVINO running a QDQ model, not about whether INT8
    # beats FP32 on this tiny model here (timing-dependent)
    qdq = QuantizeInt8(target=target, latency_guard="off")(work, PassContext(feeds=calib)).model
    with OV.OpenVINOSession(qdq, label="qdq") as s:
        convs = s.executed_precisions()["Convolution"]
        assert set(convs) == {"u8"}, convs
        got = [s.run(f) for f in calib[:2]]
    c = compare_outputs(run_model(qdq, calib[:2]), got, [Tolerance("cosine", 0.99)])
    assert c.passed, c.failure_summary()
    c = compare_outputs(run_model(model, calib[:2]), got, [Tolerance("cosine", 0.99)])
    assert c.passed, c.failure_summary()


@needs_ov
def test_openvino_placement_leaves_no_standalone_requantization(model):
    """target=openvino: OpenVINO executes fewer separate element-wise subgraphs (standalone
    FakeQuantize / requantization) than with onnxruntime's placement, all convolutions u8."""
    from graphslim.contract import PassContext
    from graphslim.passes.quantize_int8 import QuantizeInt8

    calib = random_feeds(model, count=4, seed=1)
    counts = {}
    for target in ("cpu-x86", "openvino"):
        work = onnx.ModelProto()
        work.CopyFrom(model)
        q = QuantizeInt8(target=target, latency_guard="off")(work, PassContext(feeds=calib))
        with OV.OpenVINOSession(q.model, label=target) as s:
            assert set(s.executed_precisions()["Convolution"]) == {"u8"}
            counts[target] = sum(
                s.executed_precisions(layer_types=("Subgraph",)).get("Subgraph", {}).values()
            )
    assert counts["openvino"] < counts["cpu-x86"], counts


@needs_ov
def test_openvino_target_latency_guard_times_in_openvino(model, monkeypatch):
    import graphslim.passes.quantize_int8 as Q
    from graphslim.contract import PassContext

    seen = []

    def fake(fp32, int8, feed, runs, runtime="ort"):
        seen.append(runtime)
        return 2.0, 1.0

    monkeypatch.setattr(Q, "_latency", fake)
    calib = random_feeds(model, count=2, seed=1)
    r = Q.QuantizeInt8(target="openvino")(model, PassContext(feeds=calib))
    assert seen == ["openvino"] and r.modified
    assert any("alternating OpenVINO CPU runs" in n for n in r.notes)
    Q.QuantizeInt8(target="openvino", runtime="ort")(model, PassContext(feeds=calib))
    Q.QuantizeInt8(target="cpu-x86", runtime="openvino")(model, PassContext(feeds=calib))
    assert seen == ["openvino", "ort", "openvino"]


# ----------------------------------------------------------------------------- CLI


@needs_ov
def test_cli_bench_two_runtimes(monkeypatch, capsys, tmp_path):
    report = tmp_path / "b.json"
    code, out, err = main(
        monkeypatch, capsys, "bench", TINY_YOLO, "--runtime", "ort", "--runtime", "openvino",
        "--runs", "2", "--warmup", "1", "--threads", "1", "--json", report,
    )  # fmt: skip
    assert code == 0, err
    assert "onnxruntime + OpenVINO CPU latency" in out
    assert "tiny_yolo.onnx (ort)" in out and "tiny_yolo.onnx (openvino)" in out
    data = json.loads(report.read_text())
    assert [t["runtime"] for t in data["timings"]] == ["ort", "openvino"]
    assert data["machine"]["cores"] >= 1 and "openvino" in data["machine"]["versions"]


@needs_ov
def test_cli_validate_in_openvino(monkeypatch, capsys, tmp_path):
    report = tmp_path / "v.json"
    code, out, err = main(
        monkeypatch, capsys, "validate", TINY_YOLO, TINY_YOLO, "--runtime", "openvino",
        "--json", report,
    )  # fmt: skip
    assert code == 0, err
    assert "validation (candidate in openvino): PASS" in out
    assert json.loads(report.read_text())["runtime"] == "openvino"


@needs_ov
def test_cli_convert_to_openvino(monkeypatch, capsys, tmp_path):
    xml = tmp_path / "tiny.xml"
    code, out, err = main(monkeypatch, capsys, "convert", TINY_YOLO, "--to", "openvino", "-o", xml)
    assert code == 0, err
    assert "OpenVINO IR" in out and "PASS" in out and xml.with_suffix(".bin").is_file()
    code, _, err = main(
        monkeypatch, capsys, "convert", TINY_YOLO, "--to", "openvino", "-o", tmp_path / "x.ir"
    )
    assert code == 2 and "end -o in .xml" in err and "Traceback" not in err


@pytest.mark.parametrize("target,name", [("ort", "m.ort"), ("openvino", "m.xml")])
def test_cli_convert_into_a_missing_folder(monkeypatch, capsys, tmp_path, target, name):
    if target == "openvino" and WHY is not None:
        pytest.skip(f"OpenVINO runtime unavailable: {WHY}")
    out = tmp_path / "missing" / name
    code, _, err = main(monkeypatch, capsys, "convert", TINY_YOLO, "--to", target, "-o", out)
    assert code == 2 and f"folder {out.parent} does not exist" in err


def test_cli_unknown_runtime(monkeypatch, capsys):
    code, _, err = main(monkeypatch, capsys, "bench", TINY_YOLO, "--runtime", "tflite")
    assert code == 2 and "runtime 'tflite': use one of ort, openvino" in err


def test_cli_run_runtime_needs_bench(monkeypatch, capsys, tmp_path):
    code, _, err = main(
        monkeypatch, capsys, "run", TINY_YOLO, "-P", "cleanup", "-o", tmp_path / "o.onnx",
        "--runtime", "openvino",
    )  # fmt: skip
    assert code == 2 and "--runtime times the stages: give it with --bench" in err


@needs_ov
def test_cli_run_bench_in_openvino(monkeypatch, capsys, tmp_path):
    code, out, err = main(
        monkeypatch, capsys, "run", TINY_YOLO, "-P", "cleanup,fold-bn", "-o", tmp_path / "o.onnx",
        "--bench", "--bench-runs", "2", "--runtime", "openvino",
    )  # fmt: skip
    assert code == 0, err
    assert "OpenVINO CPU latency" in out
