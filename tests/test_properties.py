"""Property tests: every pass over random small CNN graphs (hypothesis).

The strategy :func:`cnn_models` builds a random, valid, shape-consistent CNN with
``onnx.helper`` from the ops the passes support: Conv (1x1 / 3x3, stride 1 / 2, group 1 or
depthwise) with optional BatchNormalization and an activation (Relu, SiLU as Sigmoid*Mul,
HardSwish, LeakyRelu); residual blocks (Add); two-branch Concat on channels; C2f-style Split on
channels; FPN-style Resize x2 (nearest) + Concat; MaxPool (2x2 / SPPF-style 3x3) and
GlobalAveragePool; an SE gate (GlobalAveragePool -> 1x1 -> Relu -> 1x1 -> Sigmoid -> Mul); and
a head: Flatten -> Gemm, a 1x1 Conv map, or a YOLO-style detect head (box and class convs,
Sigmoid, Concat, Reshape to [N, 4 + classes, H*W]). The batch dim is sometimes symbolic.

Properties:

* every exact pass (``numerics == "exact"`` in the registry; default options,
  fix-input-shapes given the model's own shape) keeps outputs within max-rel 1e-5
  (or max-abs 1e-6 where the output is all near zero);
* every lossy pass (and dynamic-conv; factorize-conv and depthwise-separable also with
  settings that rewrite every 3x3 Conv) yields a model that passes the ONNX checker, runs in
  onnxruntime and keeps output names and shapes;
* prune-channels at ratio 0 reports ``modified`` False;
* the same input and options give byte-identical saved files.

``derandomize=True``: the examples are a fixed function of the test, so CI is deterministic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphslim.feeds import random_feeds
from graphslim.model_io import save_model
from graphslim.pipeline import Pipeline
from graphslim.registry import default_registry
from graphslim.runtime import Session
from graphslim.validate import Tolerance, compare

TOLERANCE = Tolerance("max-rel", 1e-5, alternatives=(("max-abs", 1e-6),))
LOSSY = [
    "prune-channels{ratio=0.5}",
    "factorize-conv",
    "depthwise-separable",
    "quantize-int8{calibration=random}",
    "dynamic-conv",
    # at these widths (4..48 channels) the defaults rarely find a layer worth rewriting;
    # these settings rewrite every 3x3 Conv they can
    "factorize-conv{rank_ratio=0.5,only_if_cheaper=false}",
    "depthwise-separable{multiplier=1,only_if_cheaper=false}",
]
EXACT = sorted(c.name for c in default_registry() if c.numerics == "exact")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
INPUT = "images"


# ----------------------------------------------------------------------------- the strategy


@dataclass
class Builder:
    """Appends nodes to a graph that tracks the current tensor, its channels and side."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    counter: int = 0
    constant_nodes: bool = False  # Paddle-style: Conv weights as Constant nodes

    def name(self, op: str) -> str:
        self.counter += 1
        return f"{op.lower()}_{self.counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        if self.constant_nodes and prefix in ("w", "b"):
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=f"{name}/c", value=tensor)
            )
        else:
            self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, depthwise=False):
        group = cin if depthwise else 1
        fan_in = (cin // group) * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        w /= np.sqrt(fan_in)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        p = k // 2
        return self.node(
            "Conv", [x, self.const("w", w), self.const("b", b)],
            kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p], group=group,
        )  # fmt: skip

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [
            r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)
        ]  # fmt: skip
        names = [self.const(n, v.astype(np.float32)) for n, v in zip("sbmv", params)]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-5)

    def act(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "hardswish":
            return self.node("HardSwish", [x])
        if kind == "leakyrelu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        return x

    def cba(self, x, cin, cout, k=1, stride=1, depthwise=False, bn=True, act="relu"):
        y = self.conv(x, cin, cout, k, stride, depthwise)
        if bn:
            y = self.bn(y, cout)
        return self.act(y, act)


ACTS = st.sampled_from(["relu", "silu", "hardswish", "leakyrelu", "none"])
WIDTHS = st.sampled_from([4, 8, 12, 16])
BLOCKS = ["conv", "residual", "concat", "split", "shuffle", "fpn", "pool", "se", "noop"]


@st.composite
def cnn_models(draw) -> onnx.ModelProto:
    """A random small CNN (see the module docstring); every tensor's shape is static except,
    sometimes, the batch dim."""
    seed = draw(st.integers(0, 2**16))
    b = Builder(np.random.default_rng(seed), constant_nodes=draw(st.integers(0, 3)) == 3)
    side = size = draw(st.sampled_from([8, 16]))
    c = draw(WIDTHS)
    x = b.cba(INPUT, 3, c, k=3, bn=draw(st.booleans()), act=draw(ACTS))
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5)):
        act = draw(ACTS)
        if kind == "conv":
            depthwise = draw(st.booleans())
            cout = c if depthwise else draw(WIDTHS)
            stride = 2 if side >= 8 and draw(st.booleans()) else 1
            x = b.cba(x, c, cout, draw(st.sampled_from([1, 3])), stride, depthwise,
                      draw(st.booleans()), act)  # fmt: skip
            c, side = cout, side // stride
        elif kind == "residual":
            hidden = draw(WIDTHS)
            y = b.cba(x, c, hidden, 1, act=act)
            y = b.cba(y, hidden, c, 3, act="none", bn=draw(st.booleans()))
            x = b.node("Add", [x, y])
        elif kind == "concat":
            c1, c2 = draw(WIDTHS), draw(WIDTHS)
            y1 = b.cba(x, c, c1, 1, act=act)
            y2 = b.cba(x, c, c2, 3, act=act)
            x, c = b.node("Concat", [y1, y2], axis=1), c1 + c2
        elif kind == "split":  # C2f: conv -> split -> conv on one half -> concat all
            half = draw(st.sampled_from([2, 4, 8]))
            y = b.cba(x, c, 2 * half, 1, act=act)
            split = b.const("split", np.array([half, half], dtype=np.int64))
            a1, a2 = b.name("split_a"), b.name("split_b")
            split_node = helper.make_node(
                "Split", [y, split], [a1, a2], name=b.name("Split"), axis=1
            )
            b.nodes.append(split_node)
            z = b.cba(a2, half, half, 3, act=act)
            cat = b.node("Concat", [a1, a2, z], axis=1)
            cout = draw(WIDTHS)
            x, c = b.cba(cat, 3 * half, cout, 1, act=act), cout
        elif kind == "shuffle":  # split the current tensor anywhere (maybe across a
            # Concat's parts), convolve one part, concatenate in swapped order (ShuffleNet)
            k = draw(st.integers(1, c - 1))
            sizes = b.const("split", np.array([k, c - k], dtype=np.int64))
            a1, a2 = b.name("part_a"), b.name("part_b")
            b.nodes.append(
                helper.make_node("Split", [x, sizes], [a1, a2], name=b.name("Split"), axis=1)
            )
            y = b.cba(a2, c - k, c - k, 3, depthwise=draw(st.booleans()), act=act)
            x = b.node("Concat", [y, a1], axis=1)
        elif kind == "fpn" and side >= 4:  # down, up x2 (nearest), concat with the skip
            cd = draw(WIDTHS)
            down = b.cba(x, c, cd, 3, stride=2, act=act)
            scales = b.const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
            up = b.node("Resize", [down, "", scales], mode="nearest")
            x, c = b.node("Concat", [x, up], axis=1), c + cd
        elif kind == "pool":
            if side >= 4 and draw(st.booleans()):
                x, side = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), side // 2
            else:  # SPPF-style, size-preserving
                x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
        elif kind == "noop":  # what exporters leave behind: Identity, inference Dropout
            x = b.node(draw(st.sampled_from(["Identity", "Dropout"])), [x])
        elif kind == "se":
            r = max(2, c // 4)
            g = b.node("GlobalAveragePool", [x])
            g = b.act(b.conv(g, c, r, 1), "relu")
            g = b.node("Sigmoid", [b.conv(g, r, c, 1)])
            x = b.node("Mul", [x, g])
    extra = []
    if draw(st.integers(0, 3)) == 3:  # an inner tensor is an output too (YOLOv8-seg's protos)
        extra = [(x, ["N", c, side, side])]
    head = draw(st.sampled_from(["gemm", "conv", "detect", "flatten"]))
    if head in ("gemm", "flatten"):
        pooled = head == "gemm" or side > 8
        g = b.node("Flatten", [b.node("GlobalAveragePool", [x]) if pooled else x], axis=1)
        features = c if pooled else c * side * side
        classes = draw(st.sampled_from([3, 10]))
        w = (b.rng.standard_normal((classes, features)) / np.sqrt(features)).astype(np.float32)
        bias = b.rng.standard_normal(classes).astype(np.float32) * 0.1
        y = b.node("Gemm", [g, b.const("fc_w", w), b.const("fc_b", bias)], transB=1)
        outs = [(y, ["N", classes])]
    elif head == "conv":
        y = b.conv(x, c, 2, 1)
        outs = [(y, ["N", 2, side, side])]
    else:  # YOLO-ish: box (4) + class (nc) maps, concatenated and flattened per cell
        nc = draw(st.sampled_from([1, 3]))
        box = b.conv(b.cba(x, c, c, 3, act="silu"), c, 4, 1)
        cls = b.node("Sigmoid", [b.conv(b.cba(x, c, c, 3, act="silu"), c, nc, 1)])
        cat = b.node("Concat", [box, cls], axis=1)
        shape = b.const("shape", np.array([0, 4 + nc, -1], dtype=np.int64))
        y = b.node("Reshape", [cat, shape])
        outs = [(y, ["N", 4 + nc, side * side])]
    dynamic = draw(st.booleans())
    batch = "N" if dynamic else 1
    graph = helper.make_graph(
        b.nodes, "random_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch if d == "N" else d for d in s])
         for n, s in outs + extra],
        b.inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def static_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The input's shape with a symbolic batch fixed to 1."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)


def spec_of(name: str, model: onnx.ModelProto) -> str:
    if name == "fix-input-shapes":
        return f"fix-input-shapes{{shapes={INPUT}:{','.join(map(str, static_shape(model)))}}}"
    return name


def run_pass(spec: str, model: onnx.ModelProto):
    shapes = {INPUT: static_shape(model)}
    return Pipeline.parse(spec).run(copy.deepcopy(model), validate=False, input_shapes=shapes)


def feeds_for(model: onnx.ModelProto):
    shapes = {INPUT: static_shape(model)}
    return random_feeds(model, count=2, seed=1, shapes=shapes, low=-1.0, high=1.0)


def output_signature(model: onnx.ModelProto, feeds) -> list[tuple[str, tuple[int, ...]]]:
    with Session(model, label="model") as s:
        out = s.run(feeds[0])
    return [(name, tuple(np.shape(v))) for name, v in out.items()]


# ----------------------------------------------------------------------------- properties


def test_the_strategy_builds_valid_varied_models():
    """The generator itself: checked models that run, covering every block kind."""
    ops: set[str] = set()

    @settings(max_examples=30, **SETTINGS)
    @given(cnn_models())
    def collect(model):
        ops.update(n.op_type for n in model.graph.node)
        assert all(np.isfinite(v).all() for v in Session(model).run(feeds_for(model)[0]).values())

    collect()
    assert ops >= {
        "Conv", "BatchNormalization", "Relu", "Sigmoid", "Mul", "HardSwish", "LeakyRelu", "Add",
        "Concat", "Split", "Resize", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Reshape",
    }  # fmt: skip


@pytest.mark.parametrize("name", EXACT)
def test_exact_passes_preserve_outputs(name):
    @settings(max_examples=6 if name == "simplify" else 12, **SETTINGS)
    @given(cnn_models())
    def prop(model):
        result = run_pass(spec_of(name, model), model)
        feeds = feeds_for(model)
        cmp = compare(model, result.model, feeds, [TOLERANCE])
        assert cmp.passed, f"{name}: {cmp.failure_summary()}"

    prop()


@pytest.mark.parametrize("spec", LOSSY)
def test_lossy_passes_give_valid_models(spec):
    @settings(max_examples=8 if spec.startswith("quantize") else 12, **SETTINGS)
    @given(cnn_models())
    def prop(model):
        result = run_pass(spec, model)
        candidate = result.model
        onnx.checker.check_model(candidate, full_check=True)
        feeds = feeds_for(model)
        assert output_signature(candidate, feeds) == output_signature(model, feeds)

    prop()


@settings(max_examples=25, **SETTINGS)
@given(cnn_models())
def test_prune_at_ratio_zero_changes_nothing(model):
    result = run_pass("prune-channels{ratio=0}", model)
    assert not result.records[0].modified
    assert result.model.SerializeToString() == model.SerializeToString()


@settings(max_examples=3, **SETTINGS)
@given(cnn_models())
def test_same_input_and_options_give_identical_files(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("same")
    for spec in [*(spec_of(n, model) for n in EXACT), *LOSSY]:
        files = []
        for i in range(2):
            path = tmp / f"{i}.onnx"
            save_model(run_pass(spec, model).model, path)
            files.append(path.read_bytes())
        assert files[0] == files[1], f"{spec}: two runs gave different files"
