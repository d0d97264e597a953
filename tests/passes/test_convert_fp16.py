"""convert-fp16: float16 weights and activations, float32 I/O by default, a block list (given
and measured: overflow, per-node error) checked against float32 in onnxruntime CPU."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphslim.contract import PassContext
from graphslim.errors import PreconditionError
from graphslim.feeds import random_feeds
from graphslim.runtime import run_model
from graphslim.validate import Tolerance, compare

pytest.importorskip("onnxconverter_common", reason="the fp16 extra is not installed")

from graphslim.passes.convert_fp16 import ConvertFp16  # noqa: E402

F = TensorProto.FLOAT


def _convnet(harness):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["y"], name="sig"),
    ]
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 4).astype(np.float32),
    }
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 4, 8, 8])],
        inits,
    )


def _overflow(harness):
    """x * 1000 * 1000 / 1e6: the middle tensor reaches 1e6 (> 65504), the output is ~x."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["a"], name="up1"),
        helper.make_node("Mul", ["a", "k"], ["b"], name="up2"),
        helper.make_node("Mul", ["b", "down"], ["c"], name="down"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits = {"k": np.array(1000.0, np.float32), "down": np.array(1e-6, np.float32)}
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [2, 16])],
        [helper.make_tensor_value_info("y", F, [2, 16])],
        inits,
    )


def _feeds(model, count=2):
    return random_feeds(model, count=count, seed=1, low=-1.0, high=1.0)


def _max_rel(a, b, feeds):
    return compare(a, b, feeds, [Tolerance("max-rel", 1e-2)]).worst("max-rel")


def test_converts_weights_keeps_io_float32(harness):
    model = _convnet(harness)
    feeds = _feeds(model)
    original, result = harness.run(ConvertFp16(), model, PassContext(feeds=feeds))
    assert result.modified is True
    harness.check_interface(original, result.model)
    g = result.model.graph
    assert {t.data_type for t in g.initializer} == {TensorProto.FLOAT16}
    assert g.input[0].type.tensor_type.elem_type == F
    assert g.output[0].type.tensor_type.elem_type == F
    assert result.counters["nodes_fp16"] == 4 and result.counters["nodes_fp32"] == 0
    # Measured by the pass and by an independent comparison: float16 rounding only.
    assert 0 < result.counters["max_rel"] <= 1e-2
    assert 0 < _max_rel(original, result.model, _feeds(model, 3)) <= 1e-2
    # A second run finds float16 already there and declines.
    harness.check_noop(ConvertFp16(), result.model)


def test_float16_io_when_asked(harness):
    model = _convnet(harness)
    _, result = harness.run(ConvertFp16(keep_io_types=False, auto_block=False), model)
    g = result.model.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    feed = _feeds(model, 1)[0]
    want = run_model(model, [feed])[0]["y"]
    got = run_model(result.model, [{"x": feed["x"].astype(np.float16)}])[0]["y"]
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - want).max() <= 1e-2 * np.abs(want).max()


def test_overflow_found_by_measurement(harness):
    model = _overflow(harness)
    feeds = _feeds(model)
    # Without the search every node is float16 (a float16 runtime gives inf at up2; onnxruntime
    # CPU computes these Muls in float32, so its output says nothing about overflow).
    _, plain = harness.run(ConvertFp16(auto_block=False), model)
    assert plain.counters["nodes_fp32"] == 0
    original, result = harness.run(ConvertFp16(), model, PassContext(feeds=feeds))
    reasons = dict(result.skipped)
    assert reasons["up2"].startswith("kept in float32: overflow: float32 output reaches 9.")
    assert "up1" not in reasons  # 1000 is within float16's range
    # up2 computes in float32: its multiplier stays a float32 initializer or is Cast to it.
    up2 = next(n for n in result.model.graph.node if n.name == "up2")
    types = {t.name: t.data_type for t in result.model.graph.initializer}
    casts = {n.output[0] for n in result.model.graph.node if n.op_type == "Cast"}
    assert all(types.get(i) == F or i in casts for i in up2.input)
    assert result.counters["auto_blocked"] >= 1
    assert result.counters["max_rel"] <= 1e-2
    assert _max_rel(original, result.model, _feeds(model, 3)) <= 1e-2


def test_block_lists_keep_nodes_in_float32(harness):
    model = _convnet(harness)
    _, result = harness.run(
        ConvertFp16(op_block_list=("Sigmoid",), node_block_list=("conv1",), auto_block=False),
        model,
    )
    reasons = dict(result.skipped)
    assert reasons["conv1"] == "kept in float32: node_block_list"
    assert reasons["sig"] == "kept in float32: op Sigmoid in the op block list"
    assert result.counters["nodes_fp32"] == 2
    g = result.model.graph
    inits = {t.name: t.data_type for t in g.initializer}
    assert inits["w1"] == F and inits["w2"] == TensorProto.FLOAT16
    # Casts sit on the float32/float16 borders; the numbers still match float32.
    assert "Cast" in harness.ops(result.model)
    assert _max_rel(model, result.model, _feeds(model, 2)) <= 1e-2


def test_search_blocks_the_node_with_the_largest_own_error(harness):
    """A model whose output error exceeds a tight tolerance: the search blocks the node that
    makes the most error alone, and keeps the block list of its best round."""
    model = _convnet(harness)
    feeds = _feeds(model)
    _, result = harness.run(
        ConvertFp16(tolerance=1e-7, max_rounds=2), model, PassContext(feeds=feeds)
    )
    by_error = [n for n, r in result.skipped if "own float16 max-rel" in r]
    assert by_error, result.skipped
    assert result.counters["auto_blocked"] == len(by_error)
    assert any("auto_block: best output max-rel" in n for n in result.notes)


def test_unknown_block_node_is_refused(harness):
    model = _convnet(harness)
    with pytest.raises(PreconditionError, match="'nope', which is not a node"):
        ConvertFp16(node_block_list=("nope",))(model)


def test_random_feeds_are_noted(harness):
    model = _convnet(harness)
    _, result = harness.run(ConvertFp16(), model)
    assert any("seeded random inputs" in n for n in result.notes)
