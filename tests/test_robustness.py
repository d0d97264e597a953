"""Odd graphs people hand us (issue: robustness). Every case runs the full clean-up +
pruning pipeline through the CLI and must end in a correct result or one clear error line,
with the input file byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import cli

PIPELINE = "constants-to-initializers,simplify,fold-bn,cleanup,prune-channels{ratio=0.5}"
RNG = np.random.default_rng(0)


def _w(name, *shape, dtype=np.float32):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.2).astype(dtype), name)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(
    nodes,
    inits,
    *,
    inputs=None,
    out_shape=(1, 8, 16, 16),
    opset=17,
    ir=8,
    dtype=TensorProto.FLOAT,
    extra_opsets=(),
):
    g = helper.make_graph(
        nodes,
        "g",
        inputs or [_vi("x", [1, 3, 16, 16], dtype)],
        [_vi("y", list(out_shape) if out_shape else None, dtype)],
        inits,
    )
    if ir < 4:
        g.input.extend(_vi(t.name, list(t.dims), t.data_type) for t in inits)
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], ir_version=ir
    )


def _residual(opset=17, ir=8, fp16=False):
    """conv-relu -> conv + skip -> relu -> 1x1 conv: one prunable residual group."""
    dt = np.float16 if fp16 else np.float32
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="r1"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "ar"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["sr"], name="r2"),
        helper.make_node("Conv", ["sr", "w3"], ["y"], name="c3"),
    ]
    inits = [
        _w("w1", 16, 3, 3, 3, dtype=dt),
        _w("b1", 16, dtype=dt),
        _w("w2", 16, 16, 3, 3, dtype=dt),
        _w("w3", 8, 16, 1, 1, dtype=dt),
    ]
    return _model(
        nodes, inits, opset=opset, ir=ir, dtype=TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    )


def _run(monkeypatch, capsys, tmp_path, model: onnx.ModelProto, *extra: str):
    src = tmp_path / "in.onnx"
    onnx.save_model(model, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    report = tmp_path / "r.json"
    argv = [
        "graphslim",
        "run",
        src,
        "-P",
        PIPELINE,
        "-o",
        tmp_path / "out.onnx",
        "--json",
        report,
        "--tol",
        "max-rel=100",
        *extra,
    ]
    monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
    monkeypatch.setattr(cli.out, "width", 200)
    monkeypatch.setattr(cli.err, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, "input file was modified"
    assert "Traceback" not in captured.err
    code = exc.value.code or 0
    data = json.loads(report.read_text()) if code == 0 else None
    return code, captured, data


def _prune(data) -> dict:
    return next(p for p in data["passes"] if p["name"] == "prune-channels")


@pytest.mark.parametrize(
    ("opset", "ir"), [(7, 3), (9, 3), (11, 6), (13, 7), (17, 8), (21, 10), (28, 14)]
)
def test_every_opset_from_7(monkeypatch, capsys, tmp_path, opset, ir):
    code, captured, data = _run(monkeypatch, capsys, tmp_path, _residual(opset, ir))
    assert code == 0, captured.err
    assert _prune(data)["counters"]["channels_removed"] > 0
    out = onnx.load_model(tmp_path / "out.onnx")
    assert out.ir_version == ir and out.opset_import[0].version == opset
    onnx.checker.check_model(out)  # IR < 4: initializers still listed as graph inputs


def test_float16_model(monkeypatch, capsys, tmp_path):
    code, captured, data = _run(monkeypatch, capsys, tmp_path, _residual(fp16=True))
    assert code == 0, captured.err
    out = onnx.load_model(tmp_path / "out.onnx")
    assert all(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer)
    assert _prune(data)["counters"]["channels_removed"] > 0


def test_custom_domain_op_is_one_clear_error(monkeypatch, capsys, tmp_path):
    m = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("MyOp", ["a"], ["b"], name="custom", domain="com.acme"),
            helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
        ],
        [_w("w1", 16, 3, 3, 3), _w("w2", 8, 16, 1, 1)],
        extra_opsets=[helper.make_opsetid("com.acme", 1)],
    )
    code, captured, _ = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 2
    (line,) = [x for x in captured.err.splitlines() if x.strip()]
    assert line.startswith("error:") and "com.acme:MyOp" in line
    assert not (tmp_path / "out.onnx").exists()


def test_if_subgraph_is_left_alone_with_a_reason(monkeypatch, capsys, tmp_path):
    branch = [_vi("t", [1, 16, 16, 16])], [_vi("e", [1, 16, 16, 16])]
    then_g = helper.make_graph([helper.make_node("Relu", ["a"], ["t"])], "then", [], branch[0])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["a"], ["e"])], "else", [], branch[1])
    m = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a0"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a0"], ["a"], name="r1"),
            helper.make_node("Conv", ["a", "w3"], ["p"], name="cp", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["p"], ["pr"], name="rp"),
            helper.make_node("Conv", ["pr", "w4"], ["q"], name="cq", pads=[1, 1, 1, 1]),
            helper.make_node(
                "If", ["cond"], ["b"], name="branch", then_branch=then_g, else_branch=else_g
            ),
            helper.make_node("Add", ["b", "q"], ["s"], name="add"),
            helper.make_node("Conv", ["s", "w2"], ["y"], name="c2"),
        ],
        [
            _w("w1", 16, 3, 3, 3),
            _w("w2", 8, 16, 1, 1),
            _w("w3", 16, 16, 3, 3),
            _w("w4", 16, 16, 3, 3),
        ],
        # cond is fed at run time, so simplify cannot fold the If away.
        inputs=[_vi("x", [1, 3, 16, 16]), _vi("cond", [], TensorProto.BOOL)],
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    reasons = dict((s["node"], s["reason"]) for s in _prune(data)["skipped"])
    assert "subgraph of branch" in reasons["c1"]
    assert _prune(data)["counters"]["channels_removed"] > 0  # cp, inside the rest, still pruned
    out = onnx.load_model(tmp_path / "out.onnx")
    assert [n for n in out.graph.node if n.op_type == "If"]


def test_conv_weight_given_as_a_graph_input(monkeypatch, capsys, tmp_path):
    m = _model(
        [
            helper.make_node("Conv", ["x", "wi"], ["a"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["b"], name="r"),
            helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
        ],
        [_w("w2", 8, 16, 1, 1)],
        inputs=[_vi("x", [1, 3, 16, 16]), _vi("wi", [16, 3, 3, 3])],
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    reasons = dict((s["node"], s["reason"]) for s in _prune(data)["skipped"])
    assert "graph input" in reasons["c1"]


def test_nhwc_graph_with_transposes_around_convs(monkeypatch, capsys, tmp_path):
    m = _model(
        [
            helper.make_node("Transpose", ["xh"], ["x"], perm=[0, 3, 1, 2], name="t0"),
            helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["a"], ["ah"], perm=[0, 2, 3, 1], name="t1"),
            helper.make_node("Relu", ["ah"], ["rh"], name="r"),
            helper.make_node("Transpose", ["rh"], ["r"], perm=[0, 3, 1, 2], name="t2"),
            helper.make_node("Conv", ["r", "w2"], ["b"], name="c2"),
            helper.make_node("Transpose", ["b"], ["y"], perm=[0, 2, 3, 1], name="t3"),
        ],
        [_w("w1", 16, 3, 3, 3), _w("w2", 8, 16, 1, 1)],
        inputs=[_vi("xh", [1, 16, 16, 3])],
        out_shape=(1, 16, 16, 8),
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    assert _prune(data)["counters"]["channels_removed"] == 8  # c1 through NHWC Relu
    out = onnx.load_model(tmp_path / "out.onnx")
    w1 = next(t for t in out.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [8, 3, 3, 3]


def test_already_quantized_model_is_declined_with_a_reason(monkeypatch, capsys, tmp_path):
    from graphslim.pipeline import Pipeline

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "residual_add.onnx"
    qdq = (
        Pipeline.parse("quantize-int8{calibration=random}")
        .run(onnx.load_model(fixture), validate=False)
        .model
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, qdq)
    assert code == 0, captured.err
    prune = _prune(data)
    assert not prune["modified"]
    assert all(
        "quantized" in s["reason"] or "graph output" in s["reason"] for s in prune["skipped"]
    )


def test_empty_graph_is_one_clear_error(monkeypatch, capsys, tmp_path):
    g = helper.make_graph([], "g", [_vi("x", [1])], [_vi("x", [1])])
    m = helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    code, captured, _ = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 2
    assert "has no nodes" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_loop_subgraph_is_left_alone(monkeypatch, capsys, tmp_path):
    """A Loop whose body reads an outer conv output: the loop stays, its reads are frozen."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["carry", "a"], ["carry_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _vi("carry", [1, 16, 16, 16]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            _vi("carry_out", [1, 16, 16, 16]),
        ],
    )
    m = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a0"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a0"], ["a"], name="r1"),
            helper.make_node("Loop", ["trips", "", "a"], ["looped"], name="loop", body=body),
            helper.make_node("Conv", ["looped", "w2"], ["y"], name="c2"),
        ],
        [
            _w("w1", 16, 3, 3, 3),
            _w("w2", 8, 16, 1, 1),
        ],
        # trips is fed at run time, so simplify cannot unroll or fold the Loop.
        inputs=[_vi("x", [1, 3, 16, 16]), _vi("trips", [], TensorProto.INT64)],
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    reasons = dict((s["node"], s["reason"]) for s in _prune(data)["skipped"])
    assert "loop" in reasons["c1"].lower()
    out = onnx.load_model(tmp_path / "out.onnx")
    assert [n for n in out.graph.node if n.op_type == "Loop"]


def test_qlinearconv_model_is_declined_with_a_reason(monkeypatch, capsys, tmp_path):
    """An already-quantized QOperator model (QLinearConv) given to float passes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    float_model = tmp_path / "float.onnx"
    onnx.save_model(_residual(13, 7), float_model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": RNG.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantized = tmp_path / "qop.onnx"
    quantize_static(
        str(float_model),
        str(quantized),
        Reader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    m = onnx.load_model(quantized)
    assert any(n.op_type == "QLinearConv" for n in m.graph.node)
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    prune = _prune(data)
    assert not prune["modified"] and prune["counters"]["groups"] == 0
    assert not [n for n in data["passes"] if n["name"] == "fold-bn" and n["modified"]]


def test_scan_subgraph_is_left_alone(monkeypatch, capsys, tmp_path):
    """A Scan over the rows of a conv output whose body also reads another outer tensor."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["state", "row"], ["sum"]),
            helper.make_node("Identity", ["sum"], ["state_out"]),
            helper.make_node("Mul", ["row", "gain"], ["scanned"]),
        ],
        "body",
        [_vi("state", [1, 16, 16]), _vi("row", [1, 16, 16])],
        [_vi("state_out", [1, 16, 16]), _vi("scanned", [1, 16, 16])],
    )
    m = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a0"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a0"], ["a"], name="r1"),
            helper.make_node("Conv", ["a", "w3"], ["g"], name="cg", pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["g"], ["gs"], name="s"),
            helper.make_node(
                "ReduceMean", ["gs"], ["gain"], name="rm", axes=[0, 1, 2, 3], keepdims=0
            ),
            helper.make_node("Transpose", ["a"], ["rows"], perm=[3, 0, 1, 2], name="t"),
            helper.make_node(
                "Scan",
                ["init", "rows"],
                ["final", "stack"],
                name="scan",
                body=body,
                num_scan_inputs=1,
            ),
            helper.make_node("Transpose", ["stack"], ["back"], perm=[1, 2, 3, 0], name="tb"),
            helper.make_node("Conv", ["back", "w2"], ["y"], name="c2"),
        ],
        [
            _w("w1", 16, 3, 3, 3),
            _w("w2", 8, 16, 1, 1),
            _w("w3", 16, 16, 3, 3),
            numpy_helper.from_array(np.zeros((1, 16, 16), np.float32), "init"),
        ],
        opset=13,
        ir=7,
    )
    code, captured, data = _run(monkeypatch, capsys, tmp_path, m)
    assert code == 0, captured.err
    prune = _prune(data)
    reasons = " | ".join(s["reason"] for s in prune["skipped"])
    assert "Scan (scan) has subgraphs" in reasons, reasons
    out = onnx.load_model(tmp_path / "out.onnx")
    assert [n for n in out.graph.node if n.op_type == "Scan"]
