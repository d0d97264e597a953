"""factorize-conv: kxk Conv -> kx1 + 1xk, spatial-SVD initialised. Exact at full rank for
every stride / padding / dilation / bias / kernel shape; lossy and cheaper below it; declines
(grouped, 1x1, 1x3, small kernels, Constant weights, not cheaper) recorded with reasons."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphslim import zoo
from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.metrics import model_stats
from graphslim.passes.factorize_conv import FactorizeConv
from graphslim.pipeline import Pipeline
from graphslim.validate import Tolerance, compare

F = TensorProto.FLOAT
TOL = [Tolerance("max-rel", 1e-4)]


def conv_model(
    harness,
    *,
    cin=6,
    cout=8,
    k=(3, 3),
    hw=(12, 12),
    bias=True,
    group=1,
    weight=None,
    seed=0,
    **attrs,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
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


def full(**kw) -> FactorizeConv:
    return FactorizeConv(rank_ratio=1.0, only_if_cheaper=False, **kw)


def outputs_error(original, candidate, count=2) -> float:
    feeds = random_feeds(original, count=count, seed=0, low=-1.0, high=1.0)
    cmp = compare(original, candidate, feeds, TOL)
    return cmp.worst("max-rel")


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
    "3x3-nopad": dict(k=(3, 3)),
    "3x3-stride2": dict(k=(3, 3), strides=[2, 2], pads=[1, 1, 1, 1]),
    "3x3-stride2x1": dict(k=(3, 3), strides=[2, 1], pads=[1, 0, 1, 2]),
    "3x3-dilation2": dict(k=(3, 3), dilations=[2, 2], pads=[2, 2, 2, 2]),
    "3x3-dilation2x1-asym-pads": dict(k=(3, 3), dilations=[2, 1], pads=[0, 1, 2, 0]),
    "3x5": dict(k=(3, 5), pads=[1, 2, 1, 2]),
    "5x3-stride2": dict(k=(5, 3), strides=[2, 2], pads=[2, 1, 2, 1]),
    "5x5-nobias": dict(k=(5, 5), pads=[2, 2, 2, 2], bias=False),
    "3x3-same-upper-stride2": dict(k=(3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "3x3-same-lower": dict(k=(3, 3), auto_pad="SAME_LOWER", hw=(11, 13)),
    "3x3-valid": dict(k=(3, 3), auto_pad="VALID"),
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_full_rank_is_exact(harness, geometry):
    model = conv_model(harness, **GEOMETRIES[geometry])
    result = exact(harness, full(), model)
    assert harness.ops(result.model) == ["Conv", "Conv"]
    first, second = result.model.graph.node
    assert (first.name, second.name) == ("conv/kx1", "conv/1xk")
    assert second.output[0] == "y"
    inits = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    kh, kw = GEOMETRIES[geometry]["k"]
    (d,) = result.details
    assert d["rank"] == d["full_rank"] == min(6 * kh, 8 * kw)
    assert inits["conv.weight/kx1"] == (d["rank"], 6, kh, 1)
    assert inits["conv.weight/1xk"] == (8, d["rank"], 1, kw)
    assert (len(second.input) == 3) == GEOMETRIES[geometry].get("bias", True)
    assert d["weight_rel_error"] < 1e-6
    assert result.counters["layers_factorized"] == 1
    # The factorized kernels are 3x1 / 1x3: a second run declines both.
    harness.check_noop(full(), result.model)


@pytest.mark.parametrize(
    "kw,why",
    [
        (dict(k=(1, 3), pads=[0, 1, 0, 1]), "1x3 kernel: a side is below min_kernel=3"),
        (dict(k=(1, 1)), "1x1 (pointwise) Conv"),
        (dict(k=(2, 2)), "2x2 kernel: a side is below min_kernel=3"),
        (dict(group=2, pads=[1, 1, 1, 1]), "grouped Conv (group=2)"),
        (dict(group=6, cin=6, cout=6, pads=[1, 1, 1, 1]), "grouped Conv (group=6)"),
    ],
    ids=["1x3", "1x1", "2x2", "group2", "depthwise"],
)
def test_declined_with_reason(harness, kw, why):
    model = conv_model(harness, **kw)
    result = harness.check_noop(full(), model)
    assert len(result.skipped) == 1
    node, reason = result.skipped[0]
    assert node == "conv" and reason.startswith(why)
    assert result.counters["layers_factorized"] == 0


def test_min_kernel_option(harness):
    model = conv_model(harness, k=(2, 2))
    exact(harness, full(min_kernel=2), model)


def test_constant_weights_declined(harness):
    result = harness.check_noop(full(), harness.fixture("constant_weights"))
    assert result.skipped and all("constants-to-initializers" in r for _, r in result.skipped)


def test_not_cheaper_is_declined(harness):
    model = conv_model(harness, pads=[1, 1, 1, 1])
    result = harness.check_noop(FactorizeConv(rank_ratio=1.0), model)
    assert "not cheaper" in result.skipped[0][1]


def test_error_falls_and_macs_grow_with_rank(harness):
    model = conv_model(harness, cin=16, cout=16, pads=[1, 1, 1, 1])
    base_macs = model_stats(model).macs
    rows = []
    for rank in (2, 4, 8, 16, 48):
        _, result = harness.run(FactorizeConv(rank=rank, only_if_cheaper=False), model)
        (d,) = result.details
        assert d["rank"] == rank
        macs = model_stats(result.model).macs
        assert macs == d["macs_after"] and base_macs == d["macs_before"]
        rows.append((d["weight_rel_error"], outputs_error(model, result.model), macs))
    w_err, out_err, macs = zip(*rows)
    assert list(w_err) == sorted(w_err, reverse=True) and w_err[-1] < 1e-6
    assert list(out_err) == sorted(out_err, reverse=True) and out_err[-1] < 1e-4
    assert list(macs) == sorted(macs)
    assert macs[0] < base_macs and macs[2] < base_macs  # rank 8 of 48: cheaper


def test_energy_picks_the_smallest_rank(harness):
    rng = np.random.default_rng(3)
    # A kernel of spatial rank 4 plus a little noise: energy 0.99 needs about 4 components.
    a, b = rng.normal(size=(4, 8 * 3)), rng.normal(size=(4, 8 * 3))
    m = a.T @ b + 0.01 * rng.normal(size=(24, 24))  # (Cin*kh) x (Cout*kw), Cin = Cout = 8
    w = m.reshape(8, 3, 8, 3).transpose(2, 0, 1, 3)
    model = conv_model(harness, cin=8, cout=8, weight=w, pads=[1, 1, 1, 1])
    _, result = harness.run(FactorizeConv(energy=0.99), model)
    (d,) = result.details
    assert d["rank"] == 4 and d["energy_kept"] >= 0.99
    assert d["weight_rel_error"] == pytest.approx(np.sqrt(1 - d["energy_kept"]))
    assert d["macs_after"] < d["macs_before"]
    assert outputs_error(model, result.model) < 0.05
    assert result.notes and result.notes[0].startswith("conv: rank 4/24, MACs")


def test_include_exclude(harness):
    model = harness.fixture("residual_add")
    _, result = harness.run(full(include="block", exclude="cv2"), model)
    assert [d["node"] for d in result.details] == ["/block/cv1/conv/Conv"]
    reasons = dict(result.skipped)
    assert reasons["/stem/conv/Conv"].startswith("not matched by include")
    assert reasons["/block/cv2/conv/Conv"].startswith("matched by exclude")


@pytest.mark.parametrize(
    "bad",
    [dict(rank=4, energy=0.9), dict(rank=0), dict(energy=1.5), dict(include="(")],
    ids=["two-selectors", "rank0", "energy>1", "bad-regex"],
)
def test_bad_options(bad):
    with pytest.raises(OptionsError):
        FactorizeConv(**bad)


@pytest.mark.parametrize(
    "fixture", ["residual_add", "c2f", "tiny_yolo", "depthwise_grouped", "shared_initializer"]
)
def test_fixtures_full_rank(harness, fixture):
    exact(harness, full(), harness.fixture(fixture))


def test_dynamic_batch(harness):
    model = harness.fixture("dynamic_batch")
    _, result = harness.run(full(), model)
    feeds = random_feeds(model, count=1, seed=0, shapes={"images": (3, 3, 32, 32)})
    assert compare(model, result.model, feeds, TOL).passed


def test_deterministic(harness):
    model = harness.fixture("tiny_yolo")
    a = harness.run(FactorizeConv(rank=3), model)[1].model
    b = harness.run(FactorizeConv(rank=3), model)[1].model
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_pipeline(harness):
    rng = np.random.default_rng(5)
    m = rng.normal(size=(24, 3)) @ rng.normal(size=(3, 24))  # spatial rank 3
    w = m.reshape(8, 3, 8, 3).transpose(2, 0, 1, 3)
    model = conv_model(harness, cin=8, cout=8, weight=w, pads=[1, 1, 1, 1])
    result = Pipeline.parse("factorize-conv{energy=0.99}").run(model, tolerances=TOL)
    (record,) = result.records
    assert record.modified and record.counters["layers_factorized"] == 1
    assert result.validation is not None and result.validation.passed
    assert result.final.macs < result.initial.macs
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passes"][0]["details"][0]["rank"] == 3
    onnx.checker.check_model(result.model)


@pytest.mark.zoo
def test_yolov8n_full_rank():
    model = onnx.load(str(zoo.fetch("yolov8n-640")))
    feeds = random_feeds(model, count=1, seed=0)
    result = FactorizeConv(rank_ratio=1.0, only_if_cheaper=False)(_copy(model), PassContext())
    assert result.counters["layers_factorized"] == 39
    onnx.checker.check_model(result.model)
    assert compare(model, result.model, feeds, TOL).passed


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
