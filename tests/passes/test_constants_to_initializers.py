"""constants-to-initializers: top-level Constant nodes become initializers of the same name and
value (outputs bit-identical); subgraph and sparse constants are declined with a reason."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import PassContext
from graphslim.passes.constants_to_initializers import ConstantsToInitializers
from graphslim.pipeline import Pipeline
from graphslim.validate import compare

F = TensorProto.FLOAT


def _convert(harness, model, *, converted: int):
    original, result = harness.run(ConstantsToInitializers(), model)
    assert result.modified is True
    assert result.counters == {"constants_converted": converted}
    harness.check_interface(original, result.model)
    harness.compare(original, result.model, exact=True)
    harness.check_noop(ConstantsToInitializers(), result.model)
    return result


def test_fixture_constant_weights(harness):
    """Paddle style: every weight and shape is a Constant node."""
    model = harness.fixture("constant_weights")
    constants = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant"
    }
    assert len(constants) == 10 and not model.graph.initializer
    result = _convert(harness, model, converted=10)
    g = result.model.graph
    assert "Constant" not in harness.ops(result.model)
    assert [t.name for t in g.initializer] == list(constants)
    for t in g.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), constants[t.name])
        assert numpy_helper.to_array(t).dtype == constants[t.name].dtype
    # Every other node is untouched, in order.
    assert [n for n in g.node] == [n for n in model.graph.node if n.op_type != "Constant"]


def test_value_float_and_value_ints(harness):
    nodes = [
        helper.make_node("Constant", [], ["scale"], name="c_scale", value_float=0.25),
        helper.make_node("Constant", [], ["shape"], name="c_shape", value_ints=[2, 6]),
        helper.make_node("Mul", ["x", "scale"], ["m"], name="mul"),
        helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [3, 4])],
        [helper.make_tensor_value_info("y", F, [2, 6])],
    )
    result = _convert(harness, model, converted=2)
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["scale"].dtype == np.float32 and inits["scale"].shape == ()
    assert float(inits["scale"]) == 0.25
    assert inits["shape"].dtype == np.int64
    np.testing.assert_array_equal(inits["shape"], [2, 6])
    assert harness.ops(result.model) == ["Mul", "Reshape"]


def _if_model(harness, *, top_level_constant: bool):
    """An If whose branches each hold a Constant; optionally one top-level Constant too."""

    def branch(name: str, value: float) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("Constant", [], [f"{name}_c"], value_float=value),
                helper.make_node("Add", ["x", f"{name}_c"], [f"{name}_out"]),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", F, [2])],
        )

    nodes = [
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="branch",
            then_branch=branch("then", 1.0),
            else_branch=branch("else", -1.0),
        )
    ]
    outputs = [helper.make_tensor_value_info("y", F, [2])]
    if top_level_constant:
        nodes.insert(
            0, helper.make_node("Constant", [], ["k"], name="c_k", value_floats=[3.0, 4.0])
        )
        nodes.append(helper.make_node("Mul", ["x", "k"], ["z"], name="mul"))
        outputs.append(helper.make_tensor_value_info("z", F, [2]))
    return harness.model(
        nodes,
        [
            helper.make_tensor_value_info("x", F, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        outputs,
    )


def test_constants_inside_if_subgraphs_are_left_with_a_reason(harness):
    model = _if_model(harness, top_level_constant=False)
    result = harness.check_noop(ConstantsToInitializers(), model)
    assert result.counters == {"constants_converted": 0}
    [(node, reason)] = result.skipped
    assert node == "branch"
    assert "2 Constant" in reason and "subgraph" in reason


def test_top_level_converted_subgraph_constants_kept(harness):
    model = _if_model(harness, top_level_constant=True)
    original, result = harness.run(ConstantsToInitializers(), model)
    assert result.modified and result.counters == {"constants_converted": 1}
    assert [n for n, _ in result.skipped] == ["branch"]
    g = result.model.graph
    assert [t.name for t in g.initializer] == ["k"]
    for sub in (a.g for a in g.node[0].attribute):
        assert [n.op_type for n in sub.node] == ["Constant", "Add"]
    harness.check_interface(original, result.model)
    for cond in (True, False):  # one feed per branch, so both branches run
        feeds = [{"x": np.array([0.5, -2.0], np.float32), "cond": np.array(cond)}]
        cmp = compare(original, result.model, feeds)
        assert cmp.passed and cmp.worst("max-abs") == 0.0


def test_sparse_constant_is_declined(harness):
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("values", F, [1], [5.0]),
        helper.make_tensor("indices", TensorProto.INT64, [1], [1]),
        [3],
    )
    nodes = [
        helper.make_node("Constant", [], ["s"], name="c_sparse", sparse_value=sparse),
        helper.make_node("Add", ["x", "s"], ["y"], name="add"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [3])],
        [helper.make_tensor_value_info("y", F, [3])],
    )
    [(node, reason)] = harness.check_noop(ConstantsToInitializers(), model).skipped
    assert node == "c_sparse" and "sparse" in reason


def test_ir3_initializers_are_also_graph_inputs(harness):
    """Before IR 4 every initializer must be listed as a graph input as well. onnxruntime
    runs IR 3 / opset 8 models, so the numbers are checked too."""
    w = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    nodes = [
        helper.make_node("Constant", [], ["w"], name="c_w", value=numpy_helper.from_array(w)),
        helper.make_node("Add", ["x", "w"], ["y"], name="add"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [2, 4])],
        [helper.make_tensor_value_info("y", F, [2, 4])],
        opset=8,
        ir_version=3,
    )
    result = _convert(harness, model, converted=1)
    g = result.model.graph
    assert result.model.ir_version == 3
    assert [t.name for t in g.initializer] == ["w"]
    assert [i.name for i in g.input] == ["x", "w"]
    w_in = g.input[1].type.tensor_type
    assert w_in.elem_type == F and [d.dim_value for d in w_in.shape.dim] == [2, 4]


def test_ir8_initializers_are_not_graph_inputs(harness):
    nodes = [
        helper.make_node("Constant", [], ["w"], name="c_w", value_floats=[1.0, 2.0]),
        helper.make_node("Add", ["x", "w"], ["y"], name="add"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, [2])],
    )
    result = _convert(harness, model, converted=1)
    assert [i.name for i in result.model.graph.input] == ["x"]


def test_nothing_to_do(harness):
    result = harness.check_noop(ConstantsToInitializers(), harness.fixture("unfused_bn"))
    assert result.counters == {"constants_converted": 0} and result.skipped == []


def test_pipeline_then_fold_bn_on_constant_weights(harness):
    """constants-to-initializers is what lets fold-bn see Paddle-style BN parameters."""
    model = harness.fixture("constant_weights")
    out = Pipeline.parse("constants-to-initializers,fold-bn").run(model, ctx=PassContext(seed=2))
    c2i, fold = out.records
    assert c2i.modified and c2i.counters == {"constants_converted": 10}
    assert c2i.after.nodes == c2i.before.nodes - 10
    assert fold.modified and fold.counters == {"bn_folded": 1} and fold.skipped == []
    assert out.validation is not None and out.validation.passed
    assert "Constant" not in harness.ops(out.model)
