"""fold-bn: BatchNormalization folded into Conv / ConvTranspose / Gemm, and the hazards that
must be declined (shared producer outputs, non-foldable producers, Constant parameters)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import PassContext
from graphslim.passes.fold_bn import FoldBN
from graphslim.pipeline import Pipeline

F = TensorProto.FLOAT


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bn_params(prefix: str, c: int, rng, *, var_low=0.5, var_high=2.0) -> dict[str, np.ndarray]:
    f32 = np.float32
    return {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, c).astype(f32),
        f"{prefix}.bias": rng.uniform(-0.5, 0.5, c).astype(f32),
        f"{prefix}.running_mean": rng.uniform(-0.5, 0.5, c).astype(f32),
        f"{prefix}.running_var": rng.uniform(var_low, var_high, c).astype(f32),
    }


def _bn(x: str, y: str, prefix: str, name: str, **attrs) -> onnx.NodeProto:
    names = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=name, **attrs)


def _conv_bn(harness, *, bias: bool, var_low=0.5, var_high=2.0, eps=1e-5):
    rng = _rng(1)
    inits = {"conv.weight": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)}
    inputs = ["x", "conv.weight"]
    if bias:
        inits["conv.bias"] = rng.normal(0, 0.3, 8).astype(np.float32)
        inputs.append("conv.bias")
    inits |= _bn_params("bn", 8, rng, var_low=var_low, var_high=var_high)
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        _bn("c", "y", "bn", "bn", epsilon=eps),
    ]
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 8, 8, 8])],
        inits,
    )


def _fold(harness, model, *, folded: int, exact_ops: list[str] | None = None):
    """Fold, check numbers, contract and idempotence; return the result."""
    original, result = harness.run(FoldBN(), model)
    assert result.modified is True
    assert result.counters["bn_folded"] == folded
    assert "BatchNormalization" not in harness.ops(result.model)
    if exact_ops is not None:
        assert harness.ops(result.model) == exact_ops
    harness.check_interface(original, result.model)
    harness.compare(original, result.model)
    harness.check_noop(FoldBN(), result.model)
    return result


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_bn(harness, bias):
    model = _conv_bn(harness, bias=bias)
    result = _fold(harness, model, folded=1, exact_ops=["Conv"])
    conv = result.model.graph.node[0]
    assert conv.name == "conv"
    assert conv.output[0] == "y"  # the BN's output name is kept
    assert len(conv.input) == 3 and conv.input[2]  # a bias was made when there was none
    assert conv.input[2] in {t.name for t in result.model.graph.initializer}
    # BN parameters are no longer read (the pipeline's tidy step drops them).
    assert not any(name.startswith("bn.") for name in conv.input)
    if not bias:
        assert conv.input[2] == "conv.bias"  # "<x>.weight" -> "<x>.bias"


def test_extreme_variance_folds_in_float64(harness):
    """var = 1e-6 and eps = 1e-9 give scales ~1000, and beta cancels (b - mean) * s down to
    O(0.1). In float32 the folded bias would be off by thousands of ulps; folded in float64
    and rounded once it is within 1 ulp, and the outputs stay within max-rel 1e-5."""
    model = _conv_bn(harness, bias=True, var_low=1e-6, var_high=1e-6, eps=1e-9)
    g = model.graph
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    eps = float(np.float32(1e-9))
    s = p["bn.weight"] / np.sqrt(p["bn.running_var"] + eps)
    p["bn.running_mean"] = np.random.default_rng(11).uniform(-5, 5, 8)
    rest = np.random.default_rng(12).uniform(-0.5, 0.5, 8)
    p["bn.bias"] = -(p["conv.bias"] - p["bn.running_mean"]) * s + rest  # |beta| up to ~7000
    for t in g.initializer:
        t.CopyFrom(numpy_helper.from_array(p[t.name].astype(np.float32), t.name))
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    s = p["bn.weight"] / np.sqrt(p["bn.running_var"] + eps)
    want_w = (p["conv.weight"] * s[:, None, None, None]).astype(np.float32)
    want_b = ((p["conv.bias"] - p["bn.running_mean"]) * s + p["bn.bias"]).astype(np.float32)

    result = _fold(harness, model, folded=1, exact_ops=["Conv"])
    conv = result.model.graph.node[0]
    got = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_max_ulp(got[conv.input[1]], want_w, maxulp=1)
    np.testing.assert_array_max_ulp(got[conv.input[2]], want_b, maxulp=1)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn(harness, group):
    rng = _rng(2)
    cin, cout = 4, 6
    inits = {
        "up.weight": rng.normal(0, 0.3, (cin, cout // group, 2, 2)).astype(np.float32),
        "up.bias": rng.normal(0, 0.3, cout).astype(np.float32),
    } | _bn_params("bn", cout, rng)
    nodes = [
        helper.make_node(
            "ConvTranspose",
            ["x", "up.weight", "up.bias"],
            ["t"],
            name="up",
            group=group,
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
        _bn("t", "y", "bn", "bn"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, cin, 5, 5])],
        [helper.make_tensor_value_info("y", F, [1, cout, 10, 10])],
        inits,
    )
    _fold(harness, model, folded=1, exact_ops=["ConvTranspose"])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", ["N", "1xN"])
def test_gemm_bn(harness, trans_b, c_shape):
    rng = _rng(3)
    k, n = 8, 5
    b = rng.normal(0, 0.4, (n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.normal(0, 0.4, (n,) if c_shape == "N" else (1, n)).astype(np.float32)
    inits = {"fc.weight": b, "fc.bias": c} | _bn_params("bn", n, rng)
    nodes = [
        # alpha/beta != 1: the fold must carry both (C' uses beta * C, then beta := 1).
        helper.make_node(
            "Gemm",
            ["x", "fc.weight", "fc.bias"],
            ["g"],
            name="fc",
            transB=trans_b,
            alpha=0.5,
            beta=2.0,
        ),
        _bn("g", "y", "bn", "bn"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [3, k])],
        [helper.make_tensor_value_info("y", F, [3, n])],
        inits,
    )
    _fold(harness, model, folded=1, exact_ops=["Gemm"])


def test_shared_weight_keeps_the_other_conv(harness):
    """Two Convs read one weight and bias; only conv_a has a BN. conv_b must keep computing
    with the original values: its output stays bit-identical."""
    rng = _rng(4)
    w = rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.3, 4).astype(np.float32)
    inits = {"shared.weight": w, "shared.bias": bias} | _bn_params("bn", 4, rng)
    kw = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "shared.weight", "shared.bias"], ["a"], name="conv_a", **kw),
        _bn("a", "ya", "bn", "bn"),
        helper.make_node(
            "Conv", ["x", "shared.weight", "shared.bias"], ["yb"], name="conv_b", **kw
        ),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 4, 6, 6])],
        [
            helper.make_tensor_value_info("ya", F, [1, 4, 6, 6]),
            helper.make_tensor_value_info("yb", F, [1, 4, 6, 6]),
        ],
        inits,
    )
    result = _fold(harness, model, folded=1, exact_ops=["Conv", "Conv"])
    g = result.model.graph
    by_name = {n.name: n for n in g.node}
    assert list(by_name["conv_b"].input) == ["x", "shared.weight", "shared.bias"]
    assert by_name["conv_a"].input[1] != "shared.weight"
    assert by_name["conv_a"].input[2] != "shared.bias"
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    np.testing.assert_array_equal(values["shared.weight"], w)
    np.testing.assert_array_equal(values["shared.bias"], bias)
    cmp = harness.compare(model, result.model)
    yb = next(o for o in cmp.outputs if o.name == "yb")
    assert yb.stats["max-abs"] == 0.0


def test_ir3_new_initializers_are_graph_inputs(harness):
    """IR 3 (opset 8): every initializer is a graph input. The folded copy of a shared weight
    and the new bias must be listed too, and a Gemm C edited in place from [1, N] to [N] must
    have its input declaration follow."""
    rng = _rng(9)
    inits = {
        "conv.weight": rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32),
        "fc.weight": rng.normal(0, 0.3, (12, 5)).astype(np.float32),
        "fc.bias": rng.normal(0, 0.3, (1, 5)).astype(np.float32),
    }
    inits |= _bn_params("bn", 4, rng) | _bn_params("bn_fc", 5, rng)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv_a"),
        _bn("c", "ya", "bn", "bn"),
        helper.make_node("Conv", ["x", "conv.weight"], ["yb"], name="conv_b"),
        helper.make_node("Flatten", ["ya"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["g"], name="fc"),
        _bn("g", "yc", "bn_fc", "bn_fc"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 1, 3])],
        [
            helper.make_tensor_value_info("yb", F, [1, 4, 1, 3]),
            helper.make_tensor_value_info("yc", F, [1, 5]),
        ],
        inits,
        opset=8,
        ir_version=3,
    )
    result = _fold(harness, model, folded=2, exact_ops=["Conv", "Conv", "Flatten", "Gemm"])
    g = result.model.graph
    inputs = {i.name: i for i in g.input}
    assert {t.name for t in g.initializer} <= set(inputs)
    for t in g.initializer:
        assert [d.dim_value for d in inputs[t.name].type.tensor_type.shape.dim] == list(t.dims)


def _relu_branch_model(harness):
    """conv's output feeds the BN and a Relu (a second graph output)."""
    rng = _rng(5)
    inits = {"conv.weight": rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)}
    inits |= _bn_params("bn", 4, rng)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        _bn("c", "y", "bn", "bn"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", F, [1, 4, 4, 4]),
            helper.make_tensor_value_info("r", F, [1, 4, 4, 4]),
        ],
        inits,
    )


def test_declines_conv_output_read_elsewhere(harness):
    model = _relu_branch_model(harness)
    result = harness.check_noop(FoldBN(), model)
    assert result.counters["bn_folded"] == 0
    [(node, reason)] = result.skipped
    assert node == "bn"
    assert "'c'" in reason and "read elsewhere" in reason


def test_declines_conv_output_that_is_a_graph_output(harness):
    model = _conv_bn(harness, bias=True)
    model.graph.output.append(helper.make_tensor_value_info("c", F, [1, 8, 8, 8]))
    result = harness.check_noop(FoldBN(), model)
    [(node, reason)] = result.skipped
    assert node == "bn" and "read elsewhere" in reason


def test_declines_bn_after_non_foldable_op(harness):
    rng = _rng(6)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        _bn("r", "y", "bn", "bn"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])],
        _bn_params("bn", 4, rng),
    )
    result = harness.check_noop(FoldBN(), model)
    [(node, reason)] = result.skipped
    assert node == "bn"
    assert "Relu" in reason and "relu" in reason


def test_declines_bn_on_graph_input(harness):
    rng = _rng(6)
    model = harness.model(
        [_bn("x", "y", "bn", "bn")],
        [helper.make_tensor_value_info("x", F, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])],
        _bn_params("bn", 4, rng),
    )
    [(node, reason)] = harness.check_noop(FoldBN(), model).skipped
    assert node == "bn" and "graph input" in reason


def test_declines_bn_params_from_constant_nodes(harness):
    """Paddle style: BN parameters are Constant nodes, not initializers."""
    rng = _rng(7)
    params = _bn_params("bn", 4, rng)
    nodes = [
        helper.make_node(
            "Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(v, k)
        )
        for k, v in params.items()
    ]
    nodes += [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        _bn("c", "y", "bn", "bn"),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])],
        {"conv.weight": rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)},
    )
    [(node, reason)] = harness.check_noop(FoldBN(), model).skipped
    assert node == "bn" and "constants-to-initializers" in reason


def test_declines_training_mode_bn(harness):
    rng = _rng(8)
    params = _bn_params("bn", 4, rng)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        helper.make_node(
            "BatchNormalization",
            ["c", *params],
            ["y", "running_mean_out", "running_var_out"],
            name="bn",
            training_mode=1,
        ),
    ]
    model = harness.model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4, 4, 4])],
        {"conv.weight": rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)} | params,
    )
    [(node, reason)] = harness.check_noop(FoldBN(), model).skipped
    assert node == "bn" and "training mode" in reason


def test_nothing_to_do(harness):
    model = harness.fixture("depthwise_grouped")  # Convs and activations, no BN
    assert "BatchNormalization" not in harness.ops(model)
    result = harness.check_noop(FoldBN(), model)
    assert result.counters == {"bn_folded": 0} and result.skipped == []


def test_fixture_unfused_bn(harness):
    """BN after Conv+bias, Conv without bias, ConvTranspose ([Cin, Cout/g] weight) and Gemm."""
    model = harness.fixture("unfused_bn")
    result = _fold(harness, model, folded=4)
    producers = [n.op_type for n in result.model.graph.node if n.op_type != "Relu"]
    assert producers.count("Conv") == 2
    assert "ConvTranspose" in producers and "Gemm" in producers
    assert result.skipped == []


def test_fixture_tiny_yolo_folds_every_bn(harness):
    model = harness.fixture("tiny_yolo")
    n_bn = harness.ops(model).count("BatchNormalization")
    assert n_bn == 30
    result = _fold(harness, model, folded=n_bn)
    assert len(result.model.graph.node) == len(model.graph.node) - n_bn
    assert result.skipped == []


def test_pipeline_on_unfused_bn(harness):
    model = harness.fixture("unfused_bn")
    out = Pipeline.parse("fold-bn").run(model, ctx=PassContext(seed=3))
    [rec] = out.records
    assert rec.name == "fold-bn" and rec.modified
    assert rec.counters == {"bn_folded": 4}
    assert rec.before.nodes - rec.after.nodes == 4
    assert out.validation is not None and out.validation.passed
    assert harness.ops(model).count("BatchNormalization") == 4  # the caller's model is untouched
