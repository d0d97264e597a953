"""cleanup: Identity / inference Dropout bypassed, dead nodes and unused initializers dropped;
interface names never change and outputs are bit-identical."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphslim.contract import PassContext
from graphslim.passes.cleanup import Cleanup
from graphslim.pipeline import Pipeline

F = TensorProto.FLOAT
SHAPE = [1, 4, 3, 3]


def _vi(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, SHAPE)


def _clean(harness, model, **counters):
    """Run cleanup: modified, counters, bit-identical outputs, contract, idempotence."""
    original, result = harness.run(Cleanup(), model)
    assert result.modified is True
    for key, value in counters.items():
        assert result.counters[key] == value, (key, result.counters)
    harness.check_interface(original, result.model)
    harness.compare(original, result.model, exact=True)
    harness.check_noop(Cleanup(), result.model)
    return result


def test_identity_in_the_middle(harness):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["b"], name="id"),
        helper.make_node("Sigmoid", ["b"], ["y"], name="sigmoid"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y")])
    result = _clean(harness, model, identities_removed=1, dead_nodes_removed=0)
    assert harness.ops(result.model) == ["Relu", "Sigmoid"]
    assert list(result.model.graph.node[1].input) == ["a"]
    assert result.skipped == []


def test_identity_feeding_a_graph_output_keeps_the_output_name(harness):
    """relu -> a -> Identity -> y (output); a is also read by sigmoid."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["y"], name="id"),
        helper.make_node("Sigmoid", ["a"], ["z"], name="sigmoid"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y"), _vi("z")])
    result = _clean(harness, model, identities_removed=1)
    relu, sigmoid = result.model.graph.node
    assert (relu.name, list(relu.output)) == ("relu", ["y"])  # the producer writes "y" itself
    assert list(sigmoid.input) == ["y"]  # the other reader follows


def test_identity_chain_to_output(harness):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["b"], name="id1"),
        helper.make_node("Identity", ["b"], ["y"], name="id2"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y")])
    result = _clean(harness, model, identities_removed=2)
    assert harness.ops(result.model) == ["Relu"]
    assert list(result.model.graph.node[0].output) == ["y"]


def test_identity_from_graph_input_to_graph_output_is_kept(harness):
    nodes = [
        helper.make_node("Identity", ["x"], ["y"], name="passthrough"),
        helper.make_node("Relu", ["x"], ["z"], name="relu"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y"), _vi("z")])
    result = harness.check_noop(Cleanup(), model)
    assert result.counters["identities_removed"] == 0
    [(node, reason)] = result.skipped
    assert node == "passthrough"
    assert "graph input" in reason and "graph output" in reason


def test_identity_between_two_graph_outputs_is_kept(harness):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["y"], name="copy"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("a"), _vi("y")])
    [(node, reason)] = harness.check_noop(Cleanup(), model).skipped
    assert node == "copy" and "graph output" in reason


def test_dropout_without_mask_in_inference(harness):
    ratio = {"ratio": np.array(0.5, dtype=np.float32)}
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Dropout", ["a", "ratio"], ["b"], name="dropout"),
        helper.make_node("Sigmoid", ["b"], ["y"], name="sigmoid"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y")], ratio)
    result = _clean(harness, model, identities_removed=1, initializers_removed=1)
    assert harness.ops(result.model) == ["Relu", "Sigmoid"]
    assert len(result.model.graph.initializer) == 0  # the ratio went with the Dropout


def test_dropout_with_an_unused_mask_output(harness):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Dropout", ["a"], ["y", "mask"], name="dropout"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y")])
    result = _clean(harness, model, identities_removed=1)
    assert harness.ops(result.model) == ["Relu"]
    assert list(result.model.graph.node[0].output) == ["y"]


def test_dropout_whose_mask_is_read_stays(harness):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Dropout", ["a"], ["y", "mask"], name="dropout"),
    ]
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, SHAPE)
    model = harness.model(nodes, [_vi("x")], [_vi("y"), mask])
    harness.check_noop(Cleanup(), model)


def test_dead_branch_and_unused_initializer(harness):
    inits = {
        "dead.weight": np.ones((4, 4, 1, 1), np.float32),
        "unused.weight": np.ones((2, 2), np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Conv", ["a", "dead.weight"], ["d1"], name="dead_conv"),
        helper.make_node("Sigmoid", ["d1"], ["d2"], name="dead_sigmoid"),
        helper.make_node("Sigmoid", ["a"], ["y"], name="sigmoid"),
    ]
    model = harness.model(nodes, [_vi("x")], [_vi("y")], inits)
    model.graph.value_info.append(_vi("d1"))  # shape annotation of a tensor that goes away
    result = _clean(
        harness, model, identities_removed=0, dead_nodes_removed=2, initializers_removed=2
    )
    g = result.model.graph
    assert [n.name for n in g.node] == ["relu", "sigmoid"]
    assert len(g.initializer) == 0 and len(g.value_info) == 0


def test_nothing_to_do(harness):
    model = harness.fixture("residual_add")
    result = harness.check_noop(Cleanup(), model)
    assert result.skipped == []
    assert set(result.counters.values()) == {0}


def test_fixture_identity_dead(harness):
    """Identity mid-graph and before "output0", a dead conv block, an unused initializer."""
    model = harness.fixture("identity_dead")
    result = _clean(
        harness, model, identities_removed=2, dead_nodes_removed=2, initializers_removed=3
    )
    g = result.model.graph
    assert "Identity" not in harness.ops(result.model)
    assert not any(n.name.startswith("/dead/") for n in g.node)
    assert "unused.weight" not in {t.name for t in g.initializer}
    assert [o.name for o in g.output] == ["output0"]
    assert len(g.node) == len(model.graph.node) - 4


def test_pipeline_on_identity_dead(harness):
    model = harness.fixture("identity_dead")
    out = Pipeline.parse("cleanup").run(model, ctx=PassContext(seed=1))
    [rec] = out.records
    assert rec.name == "cleanup" and rec.modified
    assert rec.counters == {
        "identities_removed": 2,
        "dead_nodes_removed": 2,
        "initializers_removed": 3,
    }
    assert rec.after.nodes == rec.before.nodes - 4
    assert rec.after.params < rec.before.params
    assert out.validation is not None and out.validation.passed
    assert out.validation.worst("max-abs") == 0.0
