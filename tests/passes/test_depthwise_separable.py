"""depthwise-separable: kxk Conv -> depthwise kxk (multiplier M) + 1x1, SVD-initialised per
input channel. Exact at M = min(Cout, kh*kw); cheaper and lossy below; declines recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphslim import graph as G
from graphslim import zoo
from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.metrics import model_stats
from graphslim.passes.depthwise_separable import DepthwiseSeparable
from graphslim.pipeline import Pipeline
from graphslim.validate import Tolerance, compare

F = TensorProto.FLOAT
TOL = [Tolerance("max-rel", 1e-4)]


def conv_model(
    harness, *, cin=6, cout=8, k=(3, 3), hw=(12, 12), bias=True, group=1, weight=None, **attrs
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = weight if weight is not None else rng.normal(0, 0.3, (cout, cin // group, *k))
    inits = {"conv.weight": w.astype(np.float32)}
    inputs = ["x", "conv.weight"]
    if bias:
        inits["conv.bias"] = rng.normal(0, 0.3, cout).astype(np.float32)
        inputs.append("conv.bias")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    return harness.model(
        [node],
        [helper.make_tensor_value_info("x", F, [1, cin, *hw])],
        [helper.make_tensor_value_info("y", F, [None] * 4)],
        inits,
    )


def full(**kw) -> DepthwiseSeparable:
    return DepthwiseSeparable(multiplier=10**6, only_if_cheaper=False, **kw)


def outputs_error(original, candidate) -> float:
    feeds = random_feeds(original, count=2, seed=0, low=-1.0, high=1.0)
    return compare(original, candidate, feeds, TOL).worst("max-rel")


def exact(harness, p, model):
    original, result = harness.run(p, model)
    assert result.modified is True
    harness.check_interface(original, result.model)
    feeds = random_feeds(original, count=2, seed=0, low=-1.0, high=1.0)
    cmp = compare(original, result.model, feeds, TOL)
    assert cmp.passed, cmp.failure_summary()
    return result


GEOMETRIES = {
    "3x3": dict(k=(3, 3), pads=[1, 1, 1, 1]),
    "3x3-stride2-nobias": dict(k=(3, 3), strides=[2, 2], pads=[1, 1, 1, 1], bias=False),
    "3x3-dilation2": dict(k=(3, 3), dilations=[2, 2], pads=[2, 2, 2, 2]),
    "3x5-asym-pads": dict(k=(3, 5), pads=[0, 2, 1, 1]),
    "5x5-cout-below-k2": dict(k=(5, 5), pads=[2, 2, 2, 2], cout=4),
    "3x3-same-upper-stride2": dict(k=(3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_full_multiplier_is_exact(harness, geometry):
    spec = GEOMETRIES[geometry]
    model = conv_model(harness, **spec)
    result = exact(harness, full(), model)
    assert harness.ops(result.model) == ["Conv", "Conv"]
    dw, pw = result.model.graph.node
    assert (dw.name, pw.name) == ("conv/dw", "conv/pw")
    assert G.attr(dw, "group") == 6 and G.attr(pw, "group", 1) == 1  # depthwise: group = Cin
    (d,) = result.details
    kh, kw = spec["k"]
    cout = spec.get("cout", 8)
    assert d["multiplier"] == d["full_multiplier"] == min(cout, kh * kw)
    inits = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert inits["conv.weight/dw"] == (6 * d["multiplier"], 1, kh, kw)
    assert inits["conv.weight/pw"] == (cout, 6 * d["multiplier"], 1, 1)
    assert d["weight_rel_error"] < 1e-6
    harness.check_noop(full(), result.model)  # depthwise + 1x1: nothing left to do


@pytest.mark.parametrize(
    "kw,why",
    [
        (dict(k=(1, 3), pads=[0, 1, 0, 1]), "1x3 kernel: a side is below min_kernel=3"),
        (dict(k=(1, 1)), "1x1 (pointwise) Conv"),
        (dict(group=2, pads=[1, 1, 1, 1]), "grouped Conv (group=2)"),
    ],
    ids=["1x3", "1x1", "group2"],
)
def test_declined_with_reason(harness, kw, why):
    result = harness.check_noop(full(), conv_model(harness, **kw))
    assert result.skipped[0][0] == "conv" and result.skipped[0][1].startswith(why)


def test_error_falls_and_macs_grow_with_multiplier(harness):
    model = conv_model(harness, cin=8, cout=16, pads=[1, 1, 1, 1])
    base = model_stats(model).macs
    rows = []
    for m in (1, 2, 4, 9):
        _, result = harness.run(DepthwiseSeparable(multiplier=m, only_if_cheaper=False), model)
        (d,) = result.details
        assert model_stats(result.model).macs == d["macs_after"] and d["macs_before"] == base
        rows.append((d["weight_rel_error"], outputs_error(model, result.model), d["macs_after"]))
    w_err, out_err, macs = zip(*rows)
    assert list(w_err) == sorted(w_err, reverse=True) and w_err[-1] < 1e-6
    assert list(out_err) == sorted(out_err, reverse=True) and out_err[-1] < 1e-4
    assert list(macs) == sorted(macs) and macs[1] < base


def test_energy_and_only_if_cheaper(harness):
    rng = np.random.default_rng(2)
    # Every input channel's C_out x 9 slice has rank 2: energy 0.999 needs M = 2.
    w = np.einsum("oim,imk->oik", rng.normal(size=(16, 8, 2)), rng.normal(size=(8, 2, 9)))
    model = conv_model(harness, cin=8, cout=16, weight=w.reshape(16, 8, 3, 3), pads=[1, 1, 1, 1])
    _, result = harness.run(DepthwiseSeparable(energy=0.999), model)
    (d,) = result.details
    assert d["multiplier"] == 2 and d["weight_rel_error"] < 1e-6
    assert outputs_error(model, result.model) < 1e-4
    result = harness.check_noop(DepthwiseSeparable(multiplier=9), model)
    assert "not cheaper" in result.skipped[0][1]


@pytest.mark.parametrize("bad", [dict(multiplier=2, energy=0.9), dict(multiplier=0)])
def test_bad_options(bad):
    with pytest.raises(OptionsError):
        DepthwiseSeparable(**bad)


@pytest.mark.parametrize("fixture", ["residual_add", "c2f", "tiny_yolo", "depthwise_grouped"])
def test_fixtures_full_multiplier(harness, fixture):
    result = exact(harness, full(), harness.fixture(fixture))
    if fixture == "depthwise_grouped":
        reasons = dict(result.skipped)
        assert reasons["/dw/conv/Conv"].startswith("grouped Conv (group=16)")
        assert reasons["/grouped/conv/Conv"].startswith("grouped Conv (group=2)")


def test_pipeline_records_details(harness):
    model = harness.fixture("tiny_yolo")
    result = Pipeline.parse("depthwise-separable{multiplier=2,include=model\\.1/}").run(model)
    (record,) = result.records
    assert record.modified and result.final.macs < result.initial.macs
    data = json.loads(json.dumps(result.to_dict()))
    assert [d["node"] for d in data["passes"][0]["details"]] == ["/model.1/conv/Conv"]
    onnx.checker.check_model(result.model)


@pytest.mark.zoo
def test_yolov8n_full_multiplier():
    model = onnx.load(str(zoo.fetch("yolov8n-640")))
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = DepthwiseSeparable(multiplier=9, only_if_cheaper=False)(work, PassContext())
    assert result.counters["layers_separated"] == 39
    onnx.checker.check_model(result.model)
    feeds = random_feeds(model, count=1, seed=0)
    assert compare(model, result.model, feeds, TOL).passed
