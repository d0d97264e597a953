"""MAC and parameter counting against hand counts (fixtures/build.py HAND_COUNTED_MACS),
tiny models built here, and YOLOv8n's published figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.metrics import model_stats, node_costs, param_count
from graphslim.model_io import load_model
from graphslim.summary import summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _build_module():
    spec = importlib.util.spec_from_file_location("fixtures_build", FIXTURES / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HAND = _build_module().HAND_COUNTED_MACS


@pytest.mark.parametrize("name", sorted(HAND))
def test_macs_match_hand_count(name):
    stats = model_stats(load_model(FIXTURES / f"{name}.onnx"))
    assert stats.unknown == []
    assert stats.macs == HAND[name]


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, *shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_matmul_and_gemm_macs():
    m = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
            helper.make_node("Reshape", ["y", "s"], ["y2"], name="r"),
            helper.make_node("Gemm", ["y2", "g"], ["z"], name="gemm", transB=1),
        ],
        [_vi("x", [2, 4, 8])],
        [_vi("z", None)],
        [_w("w", 8, 16), numpy_helper.from_array(np.array([8, 16], np.int64), "s"), _w("g", 5, 16)],
    )
    costs = {c.name: c.macs for c in node_costs(m)}
    assert costs == {"mm": 2 * 4 * 16 * 8, "gemm": 8 * 5 * 16}


def test_conv_transpose_and_depthwise_kinds():
    m = _model(
        [
            helper.make_node("Conv", ["x", "dw"], ["a"], name="dw", group=4, pads=[1, 1, 1, 1]),
            helper.make_node("ConvTranspose", ["a", "up"], ["b"], name="up", strides=[2, 2]),
        ],
        [_vi("x", [1, 4, 8, 8])],
        [_vi("b", None)],
        [_w("dw", 4, 1, 3, 3), _w("up", 4, 6, 2, 2)],
    )
    costs = {c.name: (c.macs, c.kind) for c in node_costs(m)}
    # depthwise: N*C*H*W * 1*3*3; ConvTranspose: N*Cin*H*W * Cout*kh*kw
    assert costs["dw"] == (1 * 4 * 8 * 8 * 1 * 3 * 3, "depthwise 3x3")
    assert costs["up"] == (1 * 4 * 8 * 8 * 6 * 2 * 2, "2x2")


def test_shapes_onnx_cannot_infer_come_from_one_runtime_run():
    # Slice ends come from ReduceMax of a constant: ONNX data propagation does not follow
    # ReduceMax, so the Conv's input width is unknown until onnxruntime runs the graph.
    m = _model(
        [
            helper.make_node("ReduceMax", ["c"], ["end"], name="rmax", keepdims=1),
            helper.make_node("Slice", ["x", "zero", "end", "axis"], ["xs"], name="slice"),
            helper.make_node("Conv", ["xs", "w"], ["y"], name="conv"),
        ],
        [_vi("x", [1, 3, 16, 16])],
        [_vi("y", None)],
        [
            numpy_helper.from_array(np.array([4, 10], np.int64), "c"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([3], np.int64), "axis"),
            _w("w", 8, 3, 1, 1),
        ],
    )
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    conv_out = [v for v in inferred.graph.value_info if v.name == "xs"]
    assert not conv_out or not all(
        d.HasField("dim_value") for d in conv_out[0].type.tensor_type.shape.dim
    )
    (cost,) = node_costs(m)
    assert cost.macs == 1 * 8 * 16 * 10 * 3


def test_unknown_macs_are_reported_not_guessed():
    m = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [_vi("x", ["N", 3, "H", "W"])],
        [_vi("y", None)],
        [_w("w", 8, 3, 3, 3)],
    )
    stats = model_stats(m)
    assert stats.macs is None and stats.unknown == ["conv"]
    assert model_stats(m, {"x": (1, 3, 10, 10)}).macs == 1 * 8 * 8 * 8 * 27


def test_params_count_constant_node_weights():
    # Paddle-style Constant weights count as parameters, the same as initializers.
    const = load_model(FIXTURES / "constant_weights.onnx")
    assert not const.graph.initializer
    expected = sum(
        int(np.prod(a.t.dims))
        for n in const.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT
    )
    assert param_count(const) == expected > 1000


def test_yolov8n_conv_macs_match_ultralytics():
    """ultralytics reports 8.7 GFLOPs for YOLOv8n at 640 (FLOPs = 2 x MACs)."""
    from graphslim import zoo

    path = zoo.fetch("yolov8n-640")
    s = summarize(load_model(path), path)
    assert s.macs == 4_371_993_600
    assert round(2 * s.macs / 1e9, 1) == 8.7
    assert s.unknown_macs == []
    # Every float initializer counts, the export's anchor/stride tables included.
    assert s.params == 3_193_781
    assert s.top_nodes[0]["macs"] >= s.top_nodes[-1]["macs"]
    assert s.op_histogram["Conv"] == 64


def test_weightless_copy_keeps_everything_but_the_big_payloads():
    """Built field by field (no whole-model copy): the structure, metadata and small
    tensors are the input's; big initializers keep name, dims and type without data; the
    input is not touched."""
    from graphslim.metrics import weightless_copy

    model = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    model.doc_string = "kept"
    model.metadata_props.add(key="imgsz", value="[64, 64]")
    before = model.SerializeToString()
    light = weightless_copy(model, keep_elements=100)
    assert model.SerializeToString() == before
    assert light.doc_string == "kept" and list(light.metadata_props) == list(model.metadata_props)
    assert list(light.opset_import) == list(model.opset_import)
    assert list(light.graph.node) == list(model.graph.node)
    assert list(light.graph.input) == list(model.graph.input)
    assert list(light.graph.output) == list(model.graph.output)
    big = 0
    for a, b in zip(model.graph.initializer, light.graph.initializer):
        assert (a.name, list(a.dims), a.data_type) == (b.name, list(b.dims), b.data_type)
        if np.prod(a.dims) > 100:
            big += 1
            assert not b.raw_data and not b.float_data
        else:
            assert a == b
    assert big > 0
    inferred = onnx.shape_inference.infer_shapes(light)
    assert len(inferred.graph.value_info) > 0
