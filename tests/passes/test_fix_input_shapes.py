"""fix-input-shapes: symbolic/unknown input dims get fixed values, output shapes follow, the
computation is unchanged; a model it cannot take raises PreconditionError naming the input."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from graphslim.contract import PassContext
from graphslim.errors import OptionsError, PreconditionError
from graphslim.passes.fix_input_shapes import FixInputShapes
from graphslim.pipeline import Pipeline
from graphslim.registry import get_pass

F = TensorProto.FLOAT
BATCH2 = {"images": (2, 3, 32, 32)}


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
        for d in vi.type.tensor_type.shape.dim
    ]


def test_fixture_dynamic_batch(harness):
    """batch "N" plus torch's view(x.size(0), -1): Shape/Gather/Concat/Reshape."""
    model = harness.fixture("dynamic_batch")
    assert _dims(model.graph.input[0]) == ["N", 3, 32, 32]
    assert _dims(model.graph.output[0]) == ["N", 10]
    original, result = harness.run(FixInputShapes(shapes="images:2,3,32,32"), model)
    assert result.modified is True and result.counters == {"dims_fixed": 1}
    assert result.skipped == []
    g = result.model.graph
    assert _dims(g.input[0]) == [2, 3, 32, 32]
    assert _dims(g.output[0]) == [2, 10]
    harness.check_interface(original, result.model)
    harness.compare(original, result.model, shapes=BATCH2, exact=True)
    harness.check_noop(FixInputShapes(shapes="images:2,3,32,32"), result.model)


def test_shapes_already_static_is_a_noop(harness):
    result = harness.check_noop(
        FixInputShapes(shapes="images:1,3,32,32"), harness.fixture("residual_add")
    )
    assert result.counters == {"dims_fixed": 0}


def test_unknown_and_symbolic_dims_of_two_inputs(harness):
    """An unknown (unnamed) dim on one input, a symbolic one on another; one output with
    unknown dims, one with symbols."""
    nodes = [
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Sigmoid", ["b"], ["sb"], name="sigmoid_b"),
    ]
    model = harness.model(
        nodes,
        [
            helper.make_tensor_value_info("a", F, [None, 4]),
            helper.make_tensor_value_info("b", F, ["batch", "width"]),
        ],
        [
            helper.make_tensor_value_info("ra", F, [None, None]),
            helper.make_tensor_value_info("sb", F, ["m", "n"]),
        ],
    )
    shapes = "a:3,4;b:2,5"
    original, result = harness.run(FixInputShapes(shapes=shapes), model)
    assert result.modified and result.counters == {"dims_fixed": 3}
    g = result.model.graph
    assert [_dims(i) for i in g.input] == [[3, 4], [2, 5]]
    assert [_dims(o) for o in g.output] == [[3, 4], [2, 5]]
    harness.check_interface(original, result.model)
    harness.compare(original, result.model, shapes={"a": (3, 4), "b": (2, 5)}, exact=True)
    harness.check_noop(FixInputShapes(shapes=shapes), result.model)


@pytest.mark.parametrize(
    "shapes, words",
    [
        ("images:2,3,32", ["'images'", "rank 4", "3 dims"]),
        ("pixels:1,3,32,32", ["'pixels'", "inputs: images"]),
        ("images:2,4,32,32", ["'images'", "dim 1", "fixed at 3", "re-export"]),
    ],
    ids=["rank-mismatch", "unknown-input", "static-dim-changed"],
)
def test_refused_models_raise_precondition_error(harness, shapes, words):
    model = harness.fixture("dynamic_batch")
    before = model.SerializeToString()
    with pytest.raises(PreconditionError) as info:
        FixInputShapes(shapes=shapes)(model)
    for word in words:
        assert word in str(info.value)
    assert model.SerializeToString() == before  # refused: nothing was touched


def test_empty_options_raise_options_error():
    cls = get_pass("fix-input-shapes")
    assert cls is FixInputShapes
    with pytest.raises(OptionsError, match="shapes="):
        cls()


def test_malformed_shapes_raise_options_error():
    with pytest.raises(OptionsError, match="fix-input-shapes: .*images:a,b"):
        get_pass("fix-input-shapes")(shapes="images:a,b")


def test_pipeline_on_dynamic_batch(harness):
    model = harness.fixture("dynamic_batch")
    out = Pipeline.parse("fix-input-shapes{shapes=images:2,3,32,32}").run(
        model, ctx=PassContext(input_shapes=BATCH2)
    )
    [rec] = out.records
    assert rec.name == "fix-input-shapes" and rec.modified
    assert rec.options == {"shapes": "images:2,3,32,32"}
    assert rec.counters == {"dims_fixed": 1}
    assert rec.after.nodes == rec.before.nodes
    assert out.validation is not None and out.validation.passed
    assert out.validation.worst("max-abs") == 0.0
    assert _dims(out.model.graph.output[0]) == [2, 10]


def test_paddle_minus_one_dims_are_dynamic(harness):
    """Paddle exports write dim_value -1 for a dynamic dim (ppocr-cls: x [-1,3,48,192]);
    found by bench/generality.py: it was refused as 'fixed at -1'."""
    model = harness.model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", F, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [-1, 3, 8, 8])],
    )
    original, result = harness.run(FixInputShapes(shapes="x:2,3,8,8"), model)
    assert result.modified is True and result.counters == {"dims_fixed": 1}
    assert _dims(result.model.graph.input[0]) == [2, 3, 8, 8]
    assert _dims(result.model.graph.output[0]) == [2, 3, 8, 8]
    harness.compare(original, result.model, shapes={"x": (2, 3, 8, 8)}, exact=True)
    with pytest.raises(PreconditionError, match="dim 1 is fixed at 3"):
        harness.run(FixInputShapes(shapes="x:2,4,8,8"), model)
