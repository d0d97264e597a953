"""dynamic-conv: K expert Convs mixed by softmax attention (CondConv). At insertion the outputs
are unchanged (within 1e-5), for plain, strided, grouped and depthwise Convs, opset 11 and 17,
any batch; a second run changes nothing; names and attention weights are deterministic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import zoo
from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import Preprocess, preprocess_image, random_feeds
from graphslim.passes.dynamic_conv import DynamicConv
from graphslim.pipeline import Pipeline
from graphslim.validate import Tolerance, compare

F = TensorProto.FLOAT
TOL = [Tolerance("max-rel", 1e-5)]


def conv_model(harness, *, cin=6, cout=8, group=1, bias=True, opset=17, batch=2, **attrs):
    rng = np.random.default_rng(0)
    inits = {"conv.weight": rng.normal(0, 0.3, (cout, cin // group, 3, 3)).astype(np.float32)}
    inputs = ["x", "conv.weight"]
    if bias:
        inits["conv.bias"] = rng.normal(0, 0.3, cout).astype(np.float32)
        inputs.append("conv.bias")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    return harness.model(
        [node],
        [helper.make_tensor_value_info("x", F, [batch, cin, 10, 10])],
        [helper.make_tensor_value_info("y", F, [None] * 4)],
        inits,
        opset=opset,
    )


def unchanged(harness, p, model, shapes=None, ctx=None):
    original, result = harness.run(p, model, ctx)
    assert result.modified is True
    harness.check_interface(original, result.model)
    feeds = random_feeds(original, count=2, seed=0, low=-1.0, high=1.0, shapes=shapes)
    cmp = compare(original, result.model, feeds, TOL)
    assert cmp.passed, cmp.failure_summary()
    return result


@pytest.mark.parametrize(
    "kw",
    [
        dict(pads=[1, 1, 1, 1]),
        dict(strides=[2, 2], pads=[1, 1, 1, 1], bias=False),
        dict(dilations=[2, 2], pads=[2, 2, 2, 2], opset=11),
        dict(group=2, pads=[1, 1, 1, 1]),
        dict(group=6, cin=6, cout=6, auto_pad="SAME_UPPER", opset=11),
    ],
    ids=["plain", "stride2-nobias", "dilation-opset11", "group2", "depthwise-opset11"],
)
def test_unchanged_at_insertion(harness, kw):
    result = unchanged(harness, DynamicConv(experts=3), conv_model(harness, **kw))
    ops = harness.ops(result.model)
    assert ops.count("Conv") == 1 + 3  # attention + experts
    assert ops[:3] == ["GlobalAveragePool", "Conv", "Softmax"] and ops[-1] == "Sum"
    names = [n.name for n in result.model.graph.node]
    assert names[:3] == ["conv/gap", "conv/attention", "conv/softmax"]
    assert {"conv/expert0", "conv/expert2", "conv/gate1", "conv/mix2", "conv/sum"} <= set(names)
    assert result.model.graph.node[-1].output[0] == "y"
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w = inits["conv.weight"]
    for k in range(3):
        np.testing.assert_array_equal(inits[f"conv.weight/expert{k}"], w)
    assert inits["conv.weight/attention"].shape == (3, kw.get("cin", 6), 1, 1)
    assert result.details == [{"node": "conv", "experts": 3}]
    # Idempotent: the experts and the attention Conv are recognised and left alone.
    again = harness.check_noop(DynamicConv(experts=3), result.model)
    assert {r for _, r in again.skipped} == {
        "attention Conv of a dynamic conv",
        "already an expert of a dynamic conv",
    }


def test_zero_attention_and_seeded_random(harness):
    model = conv_model(harness, pads=[1, 1, 1, 1])
    zero = unchanged(harness, DynamicConv(attention_std=0.0), model)
    att = {t.name: numpy_helper.to_array(t) for t in zero.model.graph.initializer}
    assert not att["conv.weight/attention"].any()
    a = harness.run(DynamicConv(), model, PassContext(seed=1))[1].model
    b = harness.run(DynamicConv(), model, PassContext(seed=1))[1].model
    c = harness.run(DynamicConv(), model, PassContext(seed=2))[1].model
    ser = [m.SerializeToString(deterministic=True) for m in (a, b, c)]
    assert ser[0] == ser[1] != ser[2]


def test_attention_varies_per_sample(harness):
    """The softmax really is per sample: probe it as an output."""
    model = conv_model(harness, pads=[1, 1, 1, 1])
    _, result = harness.run(DynamicConv(attention_std=1.0), model)
    probe = result.model
    probe.graph.output.append(helper.make_tensor_value_info("conv/softmax_output", F, None))
    from graphslim.runtime import run_model

    feed = random_feeds(model, count=1, seed=0, low=-1.0, high=1.0)[0]
    att = run_model(probe, [feed])[0]["conv/softmax_output"]
    assert att.shape == (2, 4, 1, 1)
    np.testing.assert_allclose(att.sum(axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(att[0], att[1])


def test_declines(harness):
    result = harness.check_noop(DynamicConv(), harness.fixture("constant_weights"))
    assert all("constants-to-initializers" in r for _, r in result.skipped)
    result = harness.check_noop(DynamicConv(exclude="conv"), conv_model(harness))
    assert result.skipped == [("conv", "matched by exclude 'conv'")]


@pytest.mark.parametrize("bad", [dict(experts=1), dict(attention_std=-1.0)])
def test_bad_options(bad):
    with pytest.raises(OptionsError):
        DynamicConv(**bad)


@pytest.mark.parametrize(
    "fixture", ["residual_add", "c2f", "tiny_yolo", "depthwise_grouped", "se_block"]
)
def test_fixtures(harness, fixture):
    result = unchanged(harness, DynamicConv(), harness.fixture(fixture))
    assert not result.skipped


def test_dynamic_batch(harness):
    unchanged(
        harness, DynamicConv(), harness.fixture("dynamic_batch"), shapes={"images": (3, 3, 32, 32)}
    )


def test_pipeline(harness):
    result = Pipeline.parse("dynamic-conv{experts=2,include=stem}").run(
        harness.fixture("residual_add")
    )
    assert result.validation.passed and result.records[0].counters["layers_made_dynamic"] == 1


@pytest.mark.zoo
def test_yolox_real_images():
    model = onnx.load(str(zoo.fetch("yolox-det")))
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = DynamicConv(experts=2)(work, PassContext())
    assert result.counters["layers_made_dynamic"] == 83
    onnx.checker.check_model(result.model)
    x, _ = preprocess_image(zoo.fetch("bus"), Preprocess.parse("raw-bgr"), (416, 416))
    feeds = [{model.graph.input[0].name: x[None]}]
    assert compare(model, result.model, feeds, TOL).passed


def test_users_gap_conv_softmax_head_is_rewritten(harness):
    """A classifier head GlobalAveragePool -> Conv -> Softmax is not mistaken for an attention."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="gap"),
        helper.make_node("Conv", ["p", "head.weight"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [2, 6, 5, 5])],
        [helper.make_tensor_value_info("y", F, [2, 3, 1, 1])],
        {"head.weight": rng.normal(size=(3, 6, 1, 1)).astype(np.float32)},
    )
    result = unchanged(harness, DynamicConv(experts=2), model)
    assert result.details == [{"node": "head", "experts": 2}]
