"""graphslim.explain: the per-op latency limit (work ratios are exact; times are measured and
never asserted)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.explain import _canonical, explain, node_work
from graphslim.feeds import random_feeds


def _conv_net(cout: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(cout, 8, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, cout, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["r"], name="act"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_node_work_is_macs_or_elements():
    work = node_work(_conv_net(16))
    assert work["c1"] == 16 * 8 * 9 * 32 * 32
    assert work["act"] == 16 * 32 * 32
    assert work["c2"] == 4 * 16 * 32 * 32


def test_limit_scales_each_op_by_its_work():
    original, half = _conv_net(16), _conv_net(8)
    feed = random_feeds(original, count=1, seed=0)[0]
    e = explain(original, half, feed, runs=3, level="basic")
    rows = {r.op_type: r for r in e.rows}
    assert set(rows) == {"Conv", "Relu"}
    assert rows["Relu"].work_ratio == pytest.approx(0.5)  # its output halves
    assert rows["Conv"].work_ratio == pytest.approx(0.5)  # both convs lose half their MACs
    assert rows["Conv"].nodes == 2
    assert sum(r.share for r in e.rows) == pytest.approx(1.0)
    assert e.limit_kernel_ms == pytest.approx(sum(r.limit_ms for r in e.rows))
    d = e.to_dict()
    assert d["limit_ratio"] == pytest.approx(e.limit_kernel_ms / e.kernel_ms_before)
    assert "over_limit" in d and "kernel_ratio" in d


def test_identical_models_have_their_own_time_as_limit():
    m = _conv_net(16)
    e = explain(m, m, random_feeds(m, count=1, seed=0)[0], runs=2)
    assert e.limit_kernel_ms == pytest.approx(e.kernel_ms_before)


def test_at_all_the_runtimes_names_map_back_to_the_model():
    """At ``all`` onnxruntime fuses Relu into the first conv and runs both convs as NCHWc
    nodes named after their output tensors; the time goes to the Convs (their MACs are the
    work), the layout reorders are rows of the runtime's own."""
    original, half = _conv_net(16), _conv_net(8)
    e = explain(original, half, random_feeds(original, count=1, seed=0)[0], runs=3)
    assert e.level == "all" and e.to_dict()["level"] == "all"
    rows = {r.op_type: r for r in e.rows}
    assert rows["Conv"].nodes == 2 and rows["Conv"].work_ratio == pytest.approx(0.5)
    assert "Relu" not in rows  # fused: no time of its own
    own = [r for r in e.rows if r.op_type.endswith("(runtime's)")]
    assert own and all(r.op_type.startswith("Reorder") for r in own)
    assert sum(r.share for r in e.rows) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="level 'fast'"):
        explain(original, half, {}, level="fast")


def test_profiled_names_map_to_nodes():
    m = _conv_net(16)
    m.graph.node[1].op_type = "Mul"  # a stand-in for SiLU's Mul (QuickGelu fusion)
    canon = _canonical(_conv_net(16))
    assert canon("c2") == "c2"
    assert canon("r_nchwc") == "c1"  # Conv + Relu fused: named after the Relu's output
    assert canon("y_nchwc") == "c2"
    assert canon("ReorderOutput_token_7") is None
    assert _canonical(m)("act/QuickGeluFusion/") == "act"
    assert _canonical(m)("r_nchwc") == "act"  # a Mul is not fused into the conv
