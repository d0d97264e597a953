"""simplify: onnxsim's result is kept only when it runs and matches the input; otherwise the
input stays (modified=False) and the reason is recorded. Model fields onnxsim touches are
restored, so only the graph changes."""

from __future__ import annotations

import numpy as np
import onnxsim
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import PassContext
from graphslim.errors import PreconditionError
from graphslim.feeds import random_feeds
from graphslim.passes.simplify import Simplify
from graphslim.pipeline import Pipeline

F = TensorProto.FLOAT
REAL_SIMPLIFY = onnxsim.simplify


def _conv_bn_relu(harness, *, spatial=(8, 8), with_bn=True):
    """x -> Conv -> [BN] -> Relu; onnxsim fuses the BN, so there is work to do with it."""
    rng = np.random.default_rng(0)
    inits = {"conv.weight": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1] * 4)]
    act_in = "c"
    if with_bn:
        inits |= {
            "bn.weight": rng.uniform(0.5, 1.5, 4).astype(np.float32),
            "bn.bias": rng.uniform(-0.5, 0.5, 4).astype(np.float32),
            "bn.running_mean": rng.uniform(-0.5, 0.5, 4).astype(np.float32),
            "bn.running_var": rng.uniform(0.5, 2.0, 4).astype(np.float32),
        }
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                ["b"],
                name="bn",
            )
        )
        act_in = "b"
    nodes.append(helper.make_node("Relu", [act_in], ["y"], name="relu"))
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, *spatial])],
        [helper.make_tensor_value_info("y", F, [1, 4, *spatial])],
        inits,
        name="conv_bn_relu",
    )


def test_fixture_tiny_yolo(harness):
    model = harness.fixture("tiny_yolo")
    original, result = harness.run(Simplify(), model)
    assert result.modified is True
    removed = result.counters["nodes_removed"]
    assert removed > 0 and len(result.model.graph.node) == len(model.graph.node) - removed
    assert result.counters["check_max_rel"] <= 1e-5
    assert result.skipped == []
    harness.check_interface(original, result.model)  # onnxsim's metadata annotations removed
    harness.compare(original, result.model)
    harness.check_noop(Simplify(), result.model)


def test_nothing_to_simplify(harness):
    model = _conv_bn_relu(harness, with_bn=False)
    result = harness.check_noop(Simplify(), model)
    assert result.counters["nodes_removed"] == 0 and result.skipped == []


def test_node_order_alone_is_no_change(harness):
    """onnxsim reorders the Constant nodes of a Paddle-style model on every run; the second
    run must still report modified=False."""
    model = harness.fixture("constant_weights")
    _, first = harness.run(Simplify(), model)
    assert first.modified is True
    harness.check_noop(Simplify(), first.model)


def test_onnxsim_raising_keeps_the_input(harness, monkeypatch):
    def broken(model, **kwargs):
        raise RuntimeError("unsupported op Foo\nsecond line")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = harness.check_noop(Simplify(), _conv_bn_relu(harness))
    assert result.counters["nodes_removed"] == 0
    [(node, reason)] = result.skipped
    assert node == "<model>"
    assert "onnxsim" in reason and "failed" in reason and "unsupported op Foo" in reason
    assert "second line" not in reason
    assert result.notes == [reason]


def test_onnxsim_changing_the_outputs_keeps_the_input(harness, monkeypatch):
    def perturbing(model, **kwargs):
        out, ok = REAL_SIMPLIFY(model, **kwargs)
        w = next(
            t for t in out.graph.initializer if t.name == "conv.weight" or t.dims == [4, 3, 3, 3]
        )
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
        return out, ok

    monkeypatch.setattr(onnxsim, "simplify", perturbing)
    result = harness.check_noop(Simplify(), _conv_bn_relu(harness))
    [(node, reason)] = result.skipped
    assert node == "<model>"
    assert "changed the outputs" in reason and "max-rel" in reason


def test_model_fields_restored_after_onnxsim(harness, monkeypatch):
    """Whatever onnxsim does to IR version, producer, opsets, graph name and metadata, the
    input's values come back."""

    def annotating(model, **kwargs):
        out, ok = REAL_SIMPLIFY(model, **kwargs)
        out.ir_version = 10
        out.producer_name, out.producer_version = "onnxsim", "9.9"
        out.graph.name = "simplified"
        out.opset_import[0].version = 18
        helper.set_model_props(out, {"onnxsim.note": "x"})
        return out, ok

    monkeypatch.setattr(onnxsim, "simplify", annotating)
    model = _conv_bn_relu(harness)
    model.producer_version = "1.2"
    original, result = harness.run(Simplify(), model)
    assert result.modified is True
    assert result.counters["nodes_removed"] == 1  # BN fused into the Conv
    harness.check_interface(original, result.model)
    assert result.model.producer_version == "1.2"
    harness.compare(original, result.model)


def test_dynamic_spatial_needs_input_shapes(harness):
    model = _conv_bn_relu(harness, spatial=("h", "w"))
    with pytest.raises(PreconditionError, match="--input-shape"):
        Simplify()(model, PassContext())
    ctx = PassContext(input_shapes={"x": (1, 3, 8, 8)})
    original, result = harness.run(Simplify(), model, ctx)
    assert result.modified is True and result.counters["nodes_removed"] == 1
    assert "BatchNormalization" not in harness.ops(result.model)
    harness.check_interface(original, result.model)
    harness.compare(original, result.model, shapes={"x": (1, 3, 8, 8)})
    harness.compare(original, result.model, shapes={"x": (1, 3, 5, 7)})  # still dynamic


def test_dynamic_spatial_with_context_feeds(harness):
    """Feeds in the context are enough: no input shapes needed."""
    model = _conv_bn_relu(harness, spatial=("h", "w"))
    feeds = random_feeds(model, count=1, shapes={"x": (1, 3, 6, 6)})
    _, result = harness.run(Simplify(), model, PassContext(feeds=feeds))
    assert result.modified is True


def test_pipeline_on_tiny_yolo(harness):
    model = harness.fixture("tiny_yolo")
    out = Pipeline.parse("simplify").run(model, ctx=PassContext(seed=4))
    [rec] = out.records
    assert rec.name == "simplify" and rec.modified
    assert rec.counters["nodes_removed"] == rec.before.nodes - rec.after.nodes > 0
    assert out.validation is not None and out.validation.passed
