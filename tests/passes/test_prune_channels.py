"""prune-channels: the hazard matrix of structured channel pruning, checked in onnxruntime.

Most numeric checks use a *zeroed reference*: the original model with the removed filters
(and their biases) set to zero. Where every op between a removed channel and its readers
maps 0 to 0 (Relu, SiLU, PRelu, pooling, Resize, Concat, Split/Slice, Flatten), the pruned
model must answer exactly like that reference; this checks every consumer's input columns,
offsets and sizes at once. Removed channels are recognised by their bias values, which the
pass only slices (never changes) without ``reconstruct``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import graph as G
from graphslim.channels import analyze
from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.metrics import model_stats
from graphslim.passes.prune_channels import PruneChannels
from graphslim.runtime import run_model
from graphslim.validate import Tolerance, compare

F = TensorProto.FLOAT
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))
NO_BN = [
    "c2f",
    "concat",
    "flatten_gemm",
    "fpn",
    "identity_dead",
    "se_block",
    "silu",
    "sppf",
    "two_outputs",
]


# ---------------------------------------------------------------- helpers


class Net:
    """A tiny NCHW model under construction: convs with distinct random biases (so kept
    channels are recognisable), activations, and whatever raw nodes a test needs."""

    def __init__(self, cin: int = 3, size: int = 8, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.input = helper.make_tensor_value_info("x", F, [1, cin, size, size])

    def add(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outs = [f"{name}_out{k}" if k else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def const(self, name: str, value, dtype=np.float32) -> str:
        self.inits[name] = np.asarray(value, dtype=dtype)
        return name

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int = 3,
        *,
        group: int = 1,
        weak: Sequence[int] = (),
        dead: Sequence[int] = (),
        weight: str | None = None,
        bias: str | None = None,
    ) -> str:
        """Conv with N(0, 1/fan_in) weights; ``weak`` filters scaled by 1e-3 (least
        important by any norm), ``dead`` filters and biases exactly zero."""
        if weight is None:
            w = self.rng.normal(0, (cin // group * k * k) ** -0.5, (cout, cin // group, k, k))
            w[list(weak)] *= 1e-3
            w[list(dead)] = 0
            weight = self.const(f"{name}.weight", w)
        if bias is None:
            b = self.rng.uniform(-0.5, 0.5, cout)
            b[list(dead)] = 0
            bias = self.const(f"{name}.bias", b)
        pads = [k // 2] * 4
        return self.add(
            "Conv", [x, weight, bias], name, kernel_shape=[k, k], pads=pads, group=group
        )

    def relu(self, x: str, name: str) -> str:
        return self.add("Relu", [x], name)

    def silu(self, x: str, name: str) -> str:
        return self.add("Mul", [x, self.add("Sigmoid", [x], f"{name}/sig")], name)

    def model(self, harness, outputs: dict[str, list[int]]) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(n, F, s) for n, s in outputs.items()]
        return harness.model(self.nodes, [self.input], outs, self.inits)


def prune(harness, model: onnx.ModelProto, ctx: PassContext | None = None, **options):
    """Prune a copy; check the checker, interface and output shapes; return (orig, result).

    Mean compensation is off unless asked for: these tests check which indices go, against
    references built from the original weights and biases (see test_mean_compensation_*)."""
    options.setdefault("compensate", False)
    original, result = harness.run(PruneChannels(**options), model, ctx)
    harness.check_interface(original, result.model)
    assert _output_shapes(result.model) == _output_shapes(original)
    return original, result


def _output_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    feeds = random_feeds(model, count=1, seed=0)
    return {k: v.shape for k, v in run_model(model, feeds)[0].items()}


def _feeds(model: onnx.ModelProto, count: int = 2, seed: int = 0):
    return random_feeds(model, count=count, seed=seed, low=-1.0, high=1.0)


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(G.initializers(model.graph)[name])


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def param(model: onnx.ModelProto, node_name: str, k: int) -> np.ndarray:
    """Input ``k`` of a node, as the initializer it reads."""
    return init(model, node(model, node_name).input[k])


def kept(original: onnx.ModelProto, result: onnx.ModelProto, node_name: str) -> np.ndarray:
    """Positions of the original output channels of ``node_name`` that survived (by bias)."""
    b0, b1 = param(original, node_name, 2), param(result, node_name, 2)
    pos = [int(np.flatnonzero(b0 == v)[0]) for v in b1]
    assert len(set(pos)) == len(pos) == len(b1)
    return np.asarray(pos)


def _out_axis(n: onnx.NodeProto) -> int:
    if n.op_type == "ConvTranspose":
        return 1
    if n.op_type == "Gemm":
        return 0 if G.attr(n, "transB", 0) else 1
    return 0


def zeroed_reference(original: onnx.ModelProto, pruned: onnx.ModelProto) -> onnx.ModelProto:
    """The original with every removed output channel's filter and bias set to zero."""
    ref = copy.deepcopy(original)
    inits = G.initializers(ref.graph)
    for n in ref.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(n.input) < 3:
            continue
        b0 = numpy_helper.to_array(inits[n.input[2]]).copy()
        b1 = param(pruned, n.name, 2)
        removed = np.flatnonzero(~np.isin(b0, b1))
        if not len(removed):
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).copy()
        np.moveaxis(w, _out_axis(n), 0)[removed] = 0
        b0[removed] = 0
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
        inits[n.input[2]].CopyFrom(numpy_helper.from_array(b0, n.input[2]))
    return ref


def assert_matches_reference(original, pruned, tol: float = 1e-5) -> None:
    ref = zeroed_reference(original, pruned)
    cmp = compare(ref, pruned, _feeds(original), [Tolerance("max-rel", tol)])
    assert cmp.passed, cmp.failure_summary()


def assert_close(original, candidate, atol: float) -> None:
    cmp = compare(original, candidate, _feeds(original), [Tolerance("max-abs", atol)])
    assert cmp.passed, cmp.failure_summary()


def macs(model: onnx.ModelProto) -> int:
    m = model_stats(model).macs
    assert m is not None
    return m


def conv_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    inits = G.initializers(model.graph)
    return {
        n.name: tuple(inits[n.input[1]].dims)
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm") and n.input[1] in inits
    }


# ---------------------------------------------------------------- ratio 0, idempotence


@pytest.mark.parametrize("name", ["residual_add", "c2f", "tiny_yolo", "flatten_gemm"])
def test_ratio_zero_is_a_noop(harness, name):
    model = harness.fixture(name)
    result = harness.check_noop(PruneChannels(ratio=0.0), model)
    assert result.counters["channels_removed"] == 0
    assert result.counters["dead_channels_removed"] == 0
    harness.compare(model, result.model, exact=True)


def test_second_run_at_ratio_zero_after_pruning_is_a_noop(harness):
    _, first = prune(harness, harness.fixture("tiny_yolo"), ratio=0.5)
    assert first.modified is True and first.counters["channels_removed"] > 0
    second = harness.check_noop(PruneChannels(ratio=0.0), first.model)
    assert second.counters["channels_removed"] == 0
    assert second.counters["groups_pruned"] == 0


def test_same_input_same_bytes(harness):
    model = harness.fixture("c2f")
    _, a = prune(harness, model, ratio=0.5)
    _, b = prune(harness, model, ratio=0.5)
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(
        deterministic=True
    )


# ---------------------------------------------------------------- dead channels


def _dead_model(harness, act: str, dead=(1, 5), partner_dead=None):
    """x -> c1 (8, ``dead`` filters zero) -> act -> c2 -> y; ``partner_dead``: a residual
    Add of c1 with a second conv c1b whose filters ``partner_dead`` are zero."""
    net = Net()
    y = net.conv("x", "c1", 3, 8, dead=list(dead))
    if partner_dead is not None:
        z = net.conv("x", "c1b", 3, 8, dead=list(partner_dead))
        y = net.add("Add", [y, z], "add")
    if act == "relu":
        y = net.relu(y, "act")
    elif act == "silu":
        y = net.silu(y, "act")
    elif act == "bn":
        bn = [
            net.const(f"bn.{k}", v)
            for k, v in [
                ("scale", net.rng.uniform(0.5, 1.5, 8)),
                ("bias", net.rng.uniform(0.1, 0.5, 8)),
                ("mean", net.rng.uniform(-0.5, 0.5, 8)),
                ("var", net.rng.uniform(0.5, 2, 8)),
            ]
        ]
        y = net.relu(net.add("BatchNormalization", [y, *bn], "bn"), "act")
    elif act == "sigmoid":
        y = net.add("Sigmoid", [y], "act")
    y = net.conv(y, "c2", 8, 4)
    return net.model(harness, {y: [1, 4, 8, 8]})


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_dead_channels_removed_at_ratio_zero(harness, act):
    model = _dead_model(harness, act)
    original, result = prune(harness, model, ratio=0.0)
    assert result.modified is True
    assert result.counters["dead_channels_removed"] == 2
    assert result.counters["channels_removed"] == 2
    assert list(kept(original, result.model, "c1")) == [0, 2, 3, 4, 6, 7]
    w2 = param(original, "c2", 1)
    np.testing.assert_array_equal(param(result.model, "c2", 1), w2[:, [0, 2, 3, 4, 6, 7]])
    assert_close(original, result.model, 1e-6)
    harness.check_noop(PruneChannels(ratio=0.0), result.model)


def test_dead_channels_through_residual_add_need_a_dead_partner(harness):
    # Channel 5 is dead in both operands of the Add; channel 1 only in c1.
    model = _dead_model(harness, "relu", dead=(1, 5), partner_dead=(5,))
    original, result = prune(harness, model, ratio=0.0)
    assert result.counters["dead_channels_removed"] == 1
    expect = [0, 1, 2, 3, 4, 6, 7]
    assert list(kept(original, result.model, "c1")) == expect
    assert list(kept(original, result.model, "c1b")) == expect
    assert_close(original, result.model, 1e-6)


def test_dead_channels_through_pools_and_concat(harness):
    # SPPF-like: a dead channel stays zero through chained MaxPools and the Concat of all.
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 8, dead=[2, 6]), "c1/act")
    pool = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    p1 = net.add("MaxPool", [t], "mp1", **pool)
    p2 = net.add("MaxPool", [p1], "mp2", **pool)
    y = net.conv(net.add("Concat", [t, p1, p2], "cat", axis=1), "c2", 24, 4, 1)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.0)
    assert result.counters["dead_channels_removed"] == 2
    keep = [0, 1, 3, 4, 5, 7]
    cols = keep + [8 + c for c in keep] + [16 + c for c in keep]
    np.testing.assert_array_equal(param(result.model, "c2", 1), param(original, "c2", 1)[:, cols])
    assert_close(original, result.model, 1e-6)


@pytest.mark.parametrize("act", ["bn", "sigmoid"], ids=["bn-shift", "sigmoid-0.5"])
def test_zero_filters_that_do_not_give_zeros_are_kept(harness, act):
    # BN with a nonzero shift maps 0 to beta - mean*gamma/std; Sigmoid maps 0 to 0.5: the
    # next conv reads nonzero values, so removing the filter would change the outputs.
    model = _dead_model(harness, act)
    result = harness.check_noop(PruneChannels(ratio=0.0), model)
    assert result.counters["dead_channels_removed"] == 0


def test_remove_dead_off_keeps_dead_channels(harness):
    result = harness.check_noop(
        PruneChannels(ratio=0.0, remove_dead=False), _dead_model(harness, "relu")
    )
    assert result.counters["dead_channels_removed"] == 0


def test_all_dead_group_keeps_min_channels(harness):
    model = _dead_model(harness, "relu", dead=range(8))
    original, result = prune(harness, model, ratio=0.0)
    assert result.counters["dead_channels_removed"] == 7  # min_channels=1: never empty
    assert conv_shapes(result.model)["c1"][0] == 1
    assert_close(original, result.model, 1e-6)
    _, four = prune(harness, model, ratio=0.0, min_channels=4)
    assert four.counters["dead_channels_removed"] == 4
    assert conv_shapes(four.model)["c1"][0] == 4


# ---------------------------------------------------------------- residual Add


def test_residual_add_fixture_couples_the_skip(harness):
    model = harness.fixture("residual_add")
    cg = analyze(model)
    grp = next(g for g in cg.groups if "/stem/conv/Conv" in g.sources)
    assert grp.sources == ["/stem/conv/Conv", "/block/cv2/conv/Conv"]
    assert grp.frozen == "reaches graph output 'output0'"
    original, result = prune(harness, model, ratio=0.5, round_to=1)
    shapes = conv_shapes(result.model)
    assert shapes["/stem/conv/Conv"][0] == shapes["/block/cv2/conv/Conv"][0] == 16
    assert shapes["/block/cv1/conv/Conv"][0] == 8
    assert shapes["/block/cv2/conv/Conv"][1] == 8


def test_residual_add_members_lose_the_same_indices(harness):
    weak = [1, 4, 6, 9, 11, 13, 14, 15]
    net = Net()
    a = net.relu(net.conv("x", "a", 3, 16, weak=weak), "a/act")
    b = net.conv(a, "b", 16, 16, weak=weak)
    y = net.relu(net.add("Add", [a, b], "add"), "add/act")
    y = net.conv(y, "head", 16, 4)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    grp = next(g for g in analyze(model).groups if "a" in g.sources)
    assert grp.sources == ["a", "b"] and grp.frozen is None and grp.channels == 16

    original, result = prune(harness, model, ratio=0.5)
    keep = [i for i in range(16) if i not in weak]
    assert list(kept(original, result.model, "a")) == keep
    assert list(kept(original, result.model, "b")) == keep
    np.testing.assert_array_equal(param(result.model, "a", 1), param(original, "a", 1)[keep])
    wb = param(original, "b", 1)[keep][:, keep]
    np.testing.assert_array_equal(param(result.model, "b", 1), wb)
    np.testing.assert_array_equal(
        param(result.model, "head", 1), param(original, "head", 1)[:, keep]
    )
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- concat, split, slice


def test_concat_offsets(harness):
    model = harness.fixture("concat")
    original, result = prune(harness, model, ratio=0.5)
    ka = kept(original, result.model, "/branch_a/conv/Conv")
    kb = kept(original, result.model, "/branch_b/conv/Conv")
    assert (len(ka), len(kb)) == (4, 8)
    cols = np.concatenate([ka, 8 + kb])
    head = param(original, "/head/conv/Conv", 1)[:, cols]
    np.testing.assert_array_equal(param(result.model, "/head/conv/Conv", 1), head)
    assert_matches_reference(original, result.model)


def test_concat_with_an_unprunable_input(harness):
    # The graph input's 3 channels are frozen; they keep their columns after the offset.
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 16), "c1/act")
    y = net.conv(net.add("Concat", [t, "x"], "cat", axis=1), "c2", 19, 4)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.5)
    k = kept(original, result.model, "c1")
    cols = np.concatenate([k, [16, 17, 18]])
    np.testing.assert_array_equal(param(result.model, "c2", 1), param(original, "c2", 1)[:, cols])
    assert_matches_reference(original, result.model)


def test_c2f_split_sizes(harness):
    model = harness.fixture("c2f")
    original, result = prune(harness, model, ratio=0.5)
    k = kept(original, result.model, "/model.1/cv1/conv/Conv")
    split = node(result.model, "/model.1/Split")
    sizes = init(result.model, split.input[1])
    assert list(sizes) == [int(np.sum(k < 16)), int(np.sum(k >= 16))]
    assert len(k) == 16 and min(sizes) >= 4  # both halves keep channels
    # The bottlenecks' residual Adds tie cv1's second half to both m.i/cv2 convs.
    for m in ("m.0", "m.1"):
        km = kept(original, result.model, f"/model.1/{m}/cv2/conv/Conv")
        assert list(km) == list(k[k >= 16] - 16)
    assert_matches_reference(original, result.model)


@pytest.mark.parametrize("name", ["c2f", "tiny_yolo"])
def test_no_tensor_loses_all_channels(harness, name):
    # At 0.95 the group-level choice could empty one half of a C2f split.
    original, result = prune(harness, harness.fixture(name), ratio=0.95, round_to=1)
    assert not [t.name for t in result.model.graph.initializer if 0 in t.dims]
    inits = G.initializers(result.model.graph)
    for n in result.model.graph.node:
        if n.op_type == "Split":
            assert min(numpy_helper.to_array(inits[n.input[1]])) >= 1, n.name
    assert macs(result.model) < 0.2 * macs(original)


@pytest.mark.parametrize("opset", [11, 13, 18], ids=["split-attr", "split-equal", "num-outputs"])
def test_split_forms(harness, opset):
    weak = [0, 2, 3, 4, 6, 9, 10, 11]
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 16, weak=weak), "c1/act")
    attrs = {"split": [8, 8]} if opset == 11 else {"num_outputs": 2} if opset == 18 else {}
    s0 = net.add("Split", [t], "split", 2, axis=1, **attrs)
    a, b = net.conv(s0, "c2", 8, 4), net.conv("split_out1", "c3", 8, 4)
    y = net.add("Add", [a, b], "add")
    model = harness.model(
        net.nodes,
        [net.input],
        [helper.make_tensor_value_info(y, F, [1, 4, 8, 8])],
        net.inits,
        opset=opset,
    )
    original, result = prune(harness, model, ratio=0.5)
    split = node(result.model, "split")
    sizes = G.attr(split, "split") if opset == 11 else list(init(result.model, split.input[1]))
    assert list(sizes) == [3, 5]  # kept 1 5 7 | 8 12 13 14 15
    assert_matches_reference(original, result.model)


def test_slice_on_channel_axis_updates_bounds(harness):
    weak = [0, 1, 5, 6, 9, 13, 14, 15]
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 16, weak=weak), "c1/act")
    s1 = net.add(
        "Slice",
        [
            t,
            net.const("s1.starts", [4], np.int64),
            net.const("s1.ends", [12], np.int64),
            net.const("s1.axes", [1], np.int64),
        ],
        "s1",
    )
    s2 = net.add(
        "Slice",
        [
            t,
            net.const("s2.starts", [-4], np.int64),
            net.const("s2.ends", [2**63 - 1], np.int64),
            net.const("s2.axes", [1], np.int64),
        ],
        "s2",
    )
    y1 = net.conv(s1, "c2", 8, 4)
    y2 = net.conv(s2, "c3", 4, 4)
    y = net.add("Add", [y1, y2], "add")
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.5)
    keep = [2, 3, 4, 7, 8, 10, 11, 12]
    assert list(kept(original, result.model, "c1")) == keep
    assert (init(result.model, "s1.starts")[0], init(result.model, "s1.ends")[0]) == (2, 7)
    assert init(result.model, "s2.starts")[0] == 7  # -4 of 16 = 12: 7 kept positions before
    w2 = param(original, "c2", 1)[:, [0, 3, 4, 6, 7]]  # 4, 7, 8, 10, 11 within [4, 12)
    np.testing.assert_array_equal(param(result.model, "c2", 1), w2)
    np.testing.assert_array_equal(param(result.model, "c3", 1), param(original, "c3", 1)[:, [0]])
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- depthwise, grouped


def test_grouped_conv_is_pruned_by_whole_groups(harness):
    """stem (16) -> depthwise -> grouped Conv (group=2: 8 in / 16 out per group) -> pw: a
    class is one whole group (8 stem channels, 16 grouped outputs); ratio 0.5 drops one."""
    model = harness.fixture("depthwise_grouped")
    cg = analyze(model)
    stem = next(g for g in cg.groups if "/stem/conv/Conv" in g.sources)
    assert stem.frozen is None and len(stem.classes) == 2 and stem.width == 8
    original, result = prune(harness, model, ratio=0.5)
    assert G.attr(node(result.model, "/grouped/conv/Conv"), "group") == 1
    assert param(result.model, "/grouped/conv/Conv", 1).shape == (16, 8, 3, 3)
    assert param(result.model, "/stem/conv/Conv", 1).shape[0] == 8
    assert_matches_reference(original, result.model)


def test_grouped_conv_with_an_odd_input_stays_frozen(harness):
    """A grouped Conv whose input channels are not on a slot (a graph input) is left alone."""
    net = Net(cin=4)
    t = net.relu(net.conv("x", "g", 4, 8, group=2), "g/act")
    y = net.conv(t, "pw", 8, 4, 1)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    result = harness.check_noop(PruneChannels(ratio=0.5), model)
    assert "grouped Conv (g, group=2) is not pruned" in dict(result.skipped)["g"]


def _same_as_after(harness, model, prepare, **options):
    """Pruning ``model`` as exported gives the very model that pruning it after the exact
    ``prepare`` pass gives (the pass sees through what ``prepare`` removes)."""
    options.setdefault("compensate", False)
    original, plain = prune(harness, model, **options)
    prepared = prepare(copy.deepcopy(model), PassContext()).model
    _, reference = prune(harness, prepared, **options)
    assert plain.modified and reference.modified
    assert plain.counters["channels_removed"] == reference.counters["channels_removed"] > 0
    cmp = compare(reference.model, plain.model, _feeds(original), [Tolerance("max-abs", 0.0)])
    assert cmp.passed, cmp.failure_summary()
    return original, plain


def test_constant_node_weights_are_pruned_as_initializers(harness):
    from graphslim.passes.constants_to_initializers import ConstantsToInitializers

    model = harness.fixture("constant_weights")
    original, result = _same_as_after(harness, model, ConstantsToInitializers(), ratio=0.5)
    assert result.counters["canonical_constants_converted"] > 0
    assert macs(result.model) < 0.5 * macs(original)
    assert not any("Constant" in why for _, why in result.skipped)


def test_deduplicated_biases_behind_identity_are_pruned(harness):
    """Plain torch.onnx export: one zero bias initializer read by every Conv through its own
    Identity (the pattern that froze every group: 'bias is not an initializer')."""
    from graphslim.passes.cleanup import Cleanup

    model = harness.fixture("dedup_identity")
    # As exported, the three Convs are not even sources: their bias is an Identity's output.
    assert [g.sources for g in analyze(model).groups] == [["/head/conv/Conv"]]
    original, result = _same_as_after(harness, model, Cleanup(), ratio=0.5)
    assert result.counters["canonical_identities_bypassed"] == 3
    assert result.counters["groups_pruned"] == 3
    assert macs(result.model) / macs(original) < 0.35
    assert "macs_missed" not in result.counters


def test_input_model_is_not_edited_by_canonicalization(harness):
    model = harness.fixture("dedup_identity")
    before = model.SerializeToString(deterministic=True)
    PruneChannels(ratio=0.5)(model, PassContext())
    assert model.SerializeToString(deterministic=True) == before


def _lrn_net(harness) -> onnx.ModelProto:
    """conv1 -> LRN (no channel rule: freezes conv1's group, most of the MACs) -> conv2 -> out."""
    net = Net()
    t = net.add("LRN", [net.conv("x", "c1", 3, 64)], "lrn", size=3)
    t = net.relu(net.conv(t, "c2", 64, 16), "c2/act")
    y = net.conv(t, "c3", 16, 4, 1)
    return net.model(harness, {y: [1, 4, 8, 8]})


def test_a_missed_target_is_reported_with_its_freeze_reasons(harness):
    original, result = prune(harness, _lrn_net(harness), ratio=0.5, round_to=1)
    assert result.modified
    assert 0.25 < result.counters["macs_asked"] < 0.5  # c1 reads the input: one side only
    assert result.counters["macs_reached"] > result.counters["macs_asked"] * 1.1
    assert result.counters["macs_missed"] == 1
    assert any("LRN has no channel rule (" in n and "of the MACs" in n for n in result.notes)
    assert result.details[0]["freeze_reason"] == "LRN has no channel rule"


def test_strict_makes_a_missed_target_an_error(harness):
    from graphslim.errors import PreconditionError

    model = _lrn_net(harness)
    with pytest.raises(
        PreconditionError,
        match=r"reached .* of the MACs, asked 0\.\d+: frozen groups hold \d+% of the MACs: LRN",
    ):
        PruneChannels(ratio=0.5, round_to=1, strict=True)(copy.deepcopy(model), PassContext())


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_follows_its_input(harness, mult):
    weak = [0, 2, 3, 7, 8, 10, 12, 15]
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 16, weak=weak), "c1/act")
    t = net.relu(net.conv(t, "dw", 16, 16 * mult, group=16), "dw/act")
    y = net.conv(t, "pw", 16 * mult, 4, 1)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.5)
    keep = [i for i in range(16) if i not in weak]
    rows = [mult * c + j for c in keep for j in range(mult)]
    assert list(kept(original, result.model, "c1")) == keep
    assert G.attr(node(result.model, "dw"), "group") == 8
    np.testing.assert_array_equal(param(result.model, "dw", 1), param(original, "dw", 1)[rows])
    np.testing.assert_array_equal(param(result.model, "dw", 2), param(original, "dw", 2)[rows])
    np.testing.assert_array_equal(param(result.model, "pw", 1), param(original, "pw", 1)[:, rows])
    assert_matches_reference(original, result.model)
    assert result.counters["macs_estimate_ratio"] == pytest.approx(
        macs(result.model) / macs(original), abs=1e-6
    )


# ---------------------------------------------------------------- SE, Flatten->Gemm


def test_se_block(harness):
    model = harness.fixture("se_block")
    grp = next(g for g in analyze(model).groups if "/layer1/conv/Conv" in g.sources)
    assert grp.sources == ["/layer1/conv/Conv", "/se/fc2/Conv"] and grp.frozen is None
    original, result = prune(harness, model, ratio=0.5)
    k1 = kept(original, result.model, "/layer1/conv/Conv")
    assert list(kept(original, result.model, "/se/fc2/Conv")) == list(k1) and len(k1) == 16
    kf = kept(original, result.model, "/se/fc1/Conv")
    w = param(original, "/se/fc2/Conv", 1)[k1][:, kf]
    np.testing.assert_array_equal(param(result.model, "/se/fc2/Conv", 1), w)
    assert_matches_reference(original, result.model)


def test_flatten_gemm_expands_columns_by_spatial_size(harness):
    model = harness.fixture("flatten_gemm")
    original, result = prune(harness, model, ratio=0.5)
    kc = kept(original, result.model, "/features.2/conv/Conv")
    kf = kept(original, result.model, "/classifier/fc1/Gemm")
    assert len(kc) == 8 and len(kf) == 16
    cols = (16 * kc[:, None] + np.arange(16)).ravel()  # one channel = 16 columns (4x4)
    w1 = param(original, "/classifier/fc1/Gemm", 1)[kf][:, cols]  # transB=1: [N, K]
    np.testing.assert_array_equal(param(result.model, "/classifier/fc1/Gemm", 1), w1)
    w2 = param(original, "/classifier/fc2/Gemm", 1)[kf]  # transB=0: [K, N]
    np.testing.assert_array_equal(param(result.model, "/classifier/fc2/Gemm", 1), w2)
    assert_matches_reference(original, result.model)


def test_reshape_into_gemm_expands_columns(harness):
    # Paddle writes flatten as Reshape([1, C*H*W]); one channel = H*W columns.
    weak = [1, 2, 4, 7]
    net = Net(size=4)
    t = net.relu(net.conv("x", "c1", 3, 8, weak=weak), "c1/act")
    t = net.add("Reshape", [t, net.const("shape", [1, 128], np.int64)], "flatten")
    w = net.const("fc.weight", net.rng.normal(0, 0.1, (128, 5)))
    y = net.add("Gemm", [t, w, net.const("fc.bias", net.rng.uniform(-0.5, 0.5, 5))], "fc")
    model = net.model(harness, {y: [1, 5]})
    original, result = prune(harness, model, ratio=0.5)
    cols = (16 * np.array([0, 3, 5, 6])[:, None] + np.arange(16)).ravel()
    np.testing.assert_array_equal(
        init(result.model, "fc.weight"), init(original, "fc.weight")[cols]
    )
    assert list(init(result.model, "shape")) == [1, 64]
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- ConvTranspose, PRelu


def test_conv_transpose_as_source_and_consumer(harness):
    net = Net()
    t = net.relu(net.conv("x", "c1", 3, 16), "c1/act")
    w = net.const("up.weight", net.rng.normal(0, 0.25, (16, 16, 2, 2)))  # [Cin, Cout, k, k]
    b = net.const("up.bias", net.rng.uniform(-0.5, 0.5, 16))
    t = net.relu(
        net.add("ConvTranspose", [t, w, b], "up", kernel_shape=[2, 2], strides=[2, 2]), "up/act"
    )
    y = net.conv(t, "c2", 16, 4)
    model = net.model(harness, {y: [1, 4, 16, 16]})
    grp = next(g for g in analyze(model).groups if "up" in g.sources)
    assert grp.frozen is None
    original, result = prune(harness, model, ratio=0.5)
    k1, ku = kept(original, result.model, "c1"), kept(original, result.model, "up")
    assert len(k1) == len(ku) == 8
    np.testing.assert_array_equal(param(result.model, "up", 1), param(original, "up", 1)[k1][:, ku])
    np.testing.assert_array_equal(param(result.model, "c2", 1), param(original, "c2", 1)[:, ku])
    assert_matches_reference(original, result.model)
    assert result.counters["macs_estimate_ratio"] == pytest.approx(
        macs(result.model) / macs(original), abs=1e-6
    )


def test_prelu_slope_and_per_channel_constants_are_sliced(harness):
    net = Net()
    t = net.conv("x", "c1", 3, 16)
    slope = net.const("prelu.slope", net.rng.uniform(0.05, 0.3, (16, 1, 1)))
    t = net.add("PRelu", [t, slope], "prelu")
    t = net.add("Mul", [t, net.const("scale", net.rng.uniform(0.5, 2, (1, 16, 1, 1)))], "mul")
    y = net.conv(t, "c2", 16, 4)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.5)
    k = kept(original, result.model, "c1")
    assert len(k) == 8
    np.testing.assert_array_equal(
        init(result.model, "prelu.slope"), init(original, "prelu.slope")[k]
    )
    np.testing.assert_array_equal(init(result.model, "scale"), init(original, "scale")[:, k])
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- shared initializer


def test_shared_initializer_fixture_is_one_group(harness):
    model = harness.fixture("shared_initializer")
    (grp,) = analyze(model).groups
    assert grp.sources == ["/stem/conv/Conv", "/block1/conv/Conv", "/block2/conv/Conv"]
    assert grp.frozen == "reaches graph output 'output0'"
    harness.check_noop(PruneChannels(ratio=0.5), model)


def test_shared_initializer_stays_shared(harness):
    net = Net()
    t = net.relu(net.conv("x", "stem", 3, 16), "stem/act")
    w = net.const("shared.weight", net.rng.normal(0, 1 / 12, (16, 16, 3, 3)))
    b = net.const("shared.bias", net.rng.uniform(-0.5, 0.5, 16))
    t = net.relu(net.conv(t, "block1", 16, 16, weight=w, bias=b), "block1/act")
    t = net.relu(net.conv(t, "block2", 16, 16, weight=w, bias=b), "block2/act")
    y = net.conv(t, "head", 16, 4)
    model = net.model(harness, {y: [1, 4, 8, 8]})
    original, result = prune(harness, model, ratio=0.5)
    k = kept(original, result.model, "block1")
    assert len(k) == 8
    assert list(kept(original, result.model, "stem")) == list(k)
    b1, b2 = node(result.model, "block1"), node(result.model, "block2")
    assert b1.input[1:] == b2.input[1:] == ["shared.weight", "shared.bias"]
    names = [t.name for t in result.model.graph.initializer]
    assert names.count("shared.weight") == 1 and not any("_pruned" in n for n in names)
    np.testing.assert_array_equal(
        init(result.model, "shared.weight"), init(original, "shared.weight")[k][:, k]
    )
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- outputs, head, fpn


def test_two_outputs(harness):
    model = harness.fixture("two_outputs")
    original, result = prune(harness, model, ratio=0.5)
    reasons = dict(result.skipped)
    assert reasons["/stage1/conv/Conv"] == "frozen: reaches graph output 'output0'"
    assert reasons["/stage3/conv/Conv"] == "frozen: reaches graph output 'output1'"
    assert len(kept(original, result.model, "/stage2/conv/Conv")) == 16
    assert_matches_reference(original, result.model)


@pytest.mark.parametrize("name,scope", [("yolo_head", "model.4"), ("tiny_yolo", "model.11")])
def test_detect_head_is_frozen(harness, name, scope):
    model = harness.fixture(name)
    original, result = prune(harness, model, ratio=0.5)
    reasons = dict(result.skipped)
    box = reasons[f"/{scope}/cv2.0/cv2.0.2/Conv"]
    # The DFL splits 4x16 box bins off the channels (a Reshape the rules follow), then
    # normalizes over the 16 bins: a Softmax over channels freezes them.
    assert box == f"frozen: Softmax (/{scope}/dfl/Softmax) normalizes over channels"
    assert reasons[f"/{scope}/cv3.0/cv3.0.2/Conv"] == "frozen: reaches graph output 'output0'"
    assert reasons[f"/{scope}/dfl/conv/Conv"].startswith("frozen: ")
    before, after = conv_shapes(original), conv_shapes(result.model)
    for i in (0, 1):
        assert after[f"/{scope}/cv2.{i}/cv2.{i}.2/Conv"][0] == 64
        assert after[f"/{scope}/cv3.{i}/cv3.{i}.2/Conv"][0] == 2
    assert after[f"/{scope}/dfl/conv/Conv"] == before[f"/{scope}/dfl/conv/Conv"]
    assert result.counters["groups_pruned"] > 0


def test_fpn_resize_sizes_follow(harness):
    model = harness.fixture("fpn")
    original, result = prune(harness, model, ratio=0.5)
    k = kept(original, result.model, "/reduce/conv/Conv")
    sizes = param(result.model, "/up2/Resize", 3)
    assert list(sizes) == [1, len(k), 16, 16] and len(k) == 16
    assert_matches_reference(original, result.model)


# ---------------------------------------------------------------- every fixture


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_at_half(harness, name):
    model = harness.fixture(name)
    original, result = prune(harness, model, ratio=0.5)
    pruned = result.counters["groups_pruned"] > 0
    assert result.modified is pruned
    before, after = macs(original), macs(result.model)
    if pruned:
        assert after < before
        assert result.counters["macs_estimate_ratio"] == pytest.approx(after / before, abs=1e-6)
    else:
        assert after == before
    if name in NO_BN:
        assert_matches_reference(original, result.model)


def test_dynamic_batch_stays_dynamic(harness):
    model = harness.fixture("dynamic_batch")
    original, result = prune(harness, model, ratio=0.5)
    assert result.counters["channels_removed"] == 8
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    feeds = random_feeds(original, count=1, seed=0, shapes={"images": (3, 3, 32, 32)})
    (out,) = run_model(result.model, feeds)
    assert out["output0"].shape == (3, 10)


@pytest.mark.parametrize("name", ["yolov8n-640", "resnet18-224"])
def test_real_export_structures_at_half(harness, name):
    # Exported graphs (ultralytics, torchvision) with seeded random weights.
    from graphslim.zoo import fill_weights

    model = fill_weights(onnx.load_model(FIXTURES / "structures" / f"{name}.weightless.onnx"))
    original, result = prune(harness, model, ratio=0.5)
    got = macs(result.model) / macs(original)
    assert got <= 0.40
    assert result.counters["macs_estimate_ratio"] == pytest.approx(got, abs=1e-6)
    frozen = [why for _, why in result.skipped]
    assert any("reaches graph output" in why for why in frozen)
    if name.startswith("yolo"):
        assert any(re.search(r"Softmax \(/model\.22/dfl/Softmax\)", why) for why in frozen)


# ---------------------------------------------------------------- options


def _kept_counts(original, result) -> dict[str, tuple[int, int]]:
    a, b = conv_shapes(original), conv_shapes(result.model)
    return {k: (a[k][0], b[k][0]) for k in a if node(original, k).op_type == "Conv"}


def _group_kept(original, result) -> list[tuple[str, int, int]]:
    """(source, group channels, kept) for each prunable group, read from a source that
    carries all of the group's classes (a C2f's cv1, not the bottleneck joined to one half)."""
    counts = _kept_counts(original, result)
    rows = []
    for grp in analyze(original).groups:
        if grp.frozen:
            continue
        full = [s for s in grp.sources if counts[s][0] == grp.channels]
        assert full, grp.sources
        rows.append((full[0], grp.channels, counts[full[0]][1]))
    return rows


def _expected_kept(grp, ratio: float, step: int) -> int:
    """Kept channels of a group (width 1) rounded as the pruner rounds: per part wider than
    ``step``, the narrower parts pooled (graphslim.pruning.select)."""

    def kept(n: int) -> int:
        keep = n - int(ratio * n + 1e-9)
        return keep if n <= step else min(n, step * -(-keep // step))

    wide = [len(p) for p in grp.parts if len(p) > step]
    if not wide:
        return kept(grp.channels)
    return sum(kept(n) for n in wide) + kept(grp.channels - sum(wide))


def test_round_to(harness):
    """Kept counts round up to multiples of 8 per piece that a Conv reads (a C2f's Split
    halves); pieces of 8 or fewer channels are pooled (tiny_yolo has many)."""
    model = harness.fixture("tiny_yolo")
    original, result = prune(harness, model, ratio=0.5)
    groups = {s: g for g in analyze(original).groups for s in g.sources}
    rows = _group_kept(original, result)
    assert len(rows) == 27
    for name, n, k in rows:
        assert k == _expected_kept(groups[name], 0.5, 8), (name, n, k)
        assert n <= 8 or k % 8 == 0
    _, exact = prune(harness, model, ratio=0.3, round_to=1)
    for name, n, k in _group_kept(original, exact):
        assert k == n - int(0.3 * n + 1e-9), (name, n, k)


def test_every_conv_keeps_aligned_channels_on_yolov8n():
    """On YOLOv8n (C2f: Split halves, Concats of them) every Conv reads and writes a multiple of
    8 channels after pruning, as before: onnxruntime runs a Conv blocked (NCHWc) only when both
    are multiples of its block. Rounding whole groups left C2f halves at 23, 38, 58, ..."""
    from graphslim import zoo

    original = onnx.load(str(zoo.fetch("yolov8n-640")))
    result = PruneChannels(ratio=0.5, compensate=False)(copy.deepcopy(original), PassContext())
    assert result.counters["macs_reached"] <= 0.30
    before, after = G.initializers(original.graph), G.initializers(result.model.graph)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 64
    for n in convs:
        group = G.attr(n, "group", 1)
        for axis, scale in ((0, 1), (1, group)):  # output channels, input channels
            was = before[n.input[1]].dims[axis] * scale
            now = after[n.input[1]].dims[axis] * scale
            assert was % 8 or now % 8 == 0, (n.name, axis, was, now)


@pytest.mark.parametrize("block", [16, 8])
def test_round_to_auto_is_the_runtime_channel_block(harness, monkeypatch, block):
    """round_to=auto rounds to onnxruntime's NCHWc channel block (probed: 8 or 16); grouped
    convs count it in channels; the result runs and keeps its output shapes."""
    import graphslim.machine as M
    from graphslim.pruning.select import multiple

    monkeypatch.setattr(M, "channel_block", lambda: block)
    assert multiple("auto") == block and multiple("auto", width=4) == block // 4
    assert multiple(8) == 8  # an explicit multiple is taken as given
    from graphslim.errors import OptionsError
    from graphslim.pipeline import Pipeline

    Pipeline.parse("prune-channels{ratio=0.5,round_to=auto}")  # the CLI / TOML spelling
    with pytest.raises(OptionsError, match="round_to"):
        Pipeline.parse("prune-channels{ratio=0.5,round_to=0}")
    model = harness.fixture("tiny_yolo")
    original, result = prune(harness, model, ratio=0.5, round_to="auto")
    groups = {s: g for g in analyze(original).groups for s in g.sources}
    for name, n, k in _group_kept(original, result):
        assert k == _expected_kept(groups[name], 0.5, block), (name, n, k)


def test_channel_block_probe_matches_what_onnxruntime_does():
    """The probe's answer is the block onnxruntime uses: a Conv with that many output channels
    is blocked (NCHWc) and one with half as many (below 8: never) is not, unless 8 is the
    block."""
    import tempfile

    import onnxruntime as ort

    from graphslim.machine import channel_block

    block = channel_block()
    assert block in (8, 16)

    def blocked(cout: int) -> bool:
        w = numpy_helper.from_array(np.ones((cout, 16, 1, 1), np.float32), "w")
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", 1, [1, 16, 4, 4])],
            [helper.make_tensor_value_info("y", 1, [1, cout, 4, 4])], [w],
        )  # fmt: skip
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.optimized_model_filepath = f"{tmp}/o.onnx"
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return any(
                n.domain == "com.microsoft.nchwc"
                for n in onnx.load(so.optimized_model_filepath).graph.node
            )

    if blocked(8) or blocked(16):  # this build has NCHWc kernels
        assert blocked(block) and blocked(2 * block)
        assert blocked(block + 8) == (block == 8)


def test_min_channels(harness):
    model = harness.fixture("tiny_yolo")
    original, result = prune(harness, model, ratio=0.9, round_to=1, min_channels=6)
    for name, n, k in _group_kept(original, result):
        assert k == max(min(n, 6), n - int(0.9 * n)), (name, n, k)


def test_exclude(harness):
    model = harness.fixture("tiny_yolo")
    excluded = ["/model.4/cv1/conv/Conv", "/model.4/m.0/cv2/conv/Conv"]
    original, result = prune(harness, model, ratio=0.5, exclude=(r"model\.4/cv1",))
    assert (excluded[0], "excluded by pattern") in result.skipped
    counts = _kept_counts(original, result)
    for name in excluded:
        assert counts[name][0] == counts[name][1] > 8
    assert counts["/model.3/conv/Conv"] == (32, 16)
    assert counts["/model.4/m.0/cv1/conv/Conv"] == (16, 8)


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_overrides(harness, scope):
    # An override pins its group's ratio in both scopes.
    model = harness.fixture("tiny_yolo")
    overrides = {r"model\.3/": 0.0, r"model\.5/": 0.75}
    original, result = prune(harness, model, ratio=0.5, overrides=overrides, scope=scope)
    counts = _kept_counts(original, result)
    assert counts["/model.3/conv/Conv"] == (32, 32)
    assert counts["/model.5/conv/Conv"] == (48, 16)  # 48 - 36 = 12, rounded up to 16
    others = [k < n for name, (n, k) in counts.items() if not re.search(r"model\.[35]/", name)]
    assert sum(others) >= 10  # the other groups share the base ratio


def test_scope_global_and_uniform(harness):
    model = harness.fixture("tiny_yolo")
    original, uniform = prune(harness, model, ratio=0.5)
    _, glob = prune(harness, model, ratio=0.5, scope="global")
    m0 = macs(original)
    for r in (uniform, glob):
        assert r.modified is True
        assert macs(r.model) < 0.8 * m0
        assert r.counters["macs_estimate_ratio"] == pytest.approx(macs(r.model) / m0, abs=1e-6)
    assert _kept_counts(original, uniform) != _kept_counts(original, glob)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn-scale", "activation"])
def test_importance_kinds_run(harness, importance):
    model = harness.fixture("tiny_yolo")
    ctx = PassContext(feeds=random_feeds(model, count=2, seed=1))
    original, result = prune(harness, model, ctx, ratio=0.5, importance=importance)
    assert result.modified is True
    assert macs(result.model) < macs(original)


def test_bn_scale_keeps_the_largest_gammas(harness):
    model = harness.fixture("tiny_yolo")
    conv, bn = "/model.1/conv/Conv", "/model.1/bn/BatchNormalization"
    gamma = param(model, bn, 1)

    def kept_gammas(importance):
        _, result = prune(harness, model, ratio=0.5, importance=importance)
        g = param(result.model, bn, 1)
        assert conv_shapes(result.model)[conv][0] == len(g) == 8
        return sorted(int(np.flatnonzero(gamma == v)[0]) for v in g)

    top = sorted(np.argsort(-np.abs(gamma), kind="stable")[:8].tolist())
    assert kept_gammas("bn-scale") == top
    assert kept_gammas("l1") != top


def test_target_macs(harness):
    model = harness.fixture("tiny_yolo")
    original, result = prune(harness, model, target_macs=0.6, round_to=1)
    got = macs(result.model) / macs(original)
    assert 0.45 <= got <= 0.6
    assert 0 < result.counters["ratio_used"] < 0.5
    assert result.counters["macs_estimate_ratio"] == pytest.approx(got, abs=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 0.99},
        {"ratio": -0.1},
        {"target_macs": 0.01},
        {"round_to": 0},
        {"exclude": ("(",)},
        {"overrides": {"a": 1.5}},
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(OptionsError):
        PruneChannels(**options)


# ---------------------------------------------------------------- reconstruct


@pytest.mark.parametrize("name", ["c2f", "residual_add"])
def test_reconstruct_lowers_the_error(harness, name):
    model = harness.fixture(name)
    feeds = random_feeds(model, count=8, seed=3)
    opts = dict(ratio=0.3, round_to=4)
    _, plain = prune(harness, model, PassContext(feeds=feeds), **opts)
    _, refit = prune(harness, model, PassContext(feeds=feeds), reconstruct=True, **opts)
    assert refit.counters["layers_reconstructed"] >= 1
    refits = [n for n in refit.notes if n.startswith("reconstruct ")]
    assert len(refits) == refit.counters["layers_reconstructed"]
    for note in refits:
        m = re.fullmatch(r"reconstruct (\S+): rel error ([\d.]+) -> ([\d.]+)", note)
        assert m, note
        assert float(m[3]) <= float(m[2])
    err_plain = compare(model, plain.model, feeds, [Tolerance("max-abs", 1e9)])
    err_refit = compare(model, refit.model, feeds, [Tolerance("max-abs", 1e9)])
    assert err_refit.worst("mean-abs") <= err_plain.worst("mean-abs")
    assert err_refit.worst("mean-abs") < err_plain.worst("mean-abs") * 0.999


# ---------------------------------------------------------------- mean compensation


def _constant_channel_model(harness):
    """conv (channels 0..3 have zero filters and bias 3: constant maps) -> Relu -> 1x1 conv."""
    w1 = (RNG_COMP.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (RNG_COMP.standard_normal(16) * 0.1).astype(np.float32)
    w1[:4] = 0.0
    b1[:4] = 3.0
    w2 = (RNG_COMP.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="r1"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    inits = {"w1": w1, "b1": b1, "w2": w2}
    inp = helper.make_tensor_value_info("images", F, [1, 3, 16, 16])
    out = helper.make_tensor_value_info("y", F, [1, 8, 16, 16])
    return harness.model(nodes, [inp], [out], inits)


RNG_COMP = np.random.default_rng(11)


def test_mean_compensation_keeps_constant_channels_exact(harness):
    """Removing channels that are constant maps loses nothing once their mean goes into the
    consumer's bias: outputs equal; without compensation they do not."""
    model = _constant_channel_model(harness)
    feeds = random_feeds(model, count=2, seed=5)
    ctx = PassContext(feeds=feeds)
    opts = dict(ratio=0.25, round_to=1)
    _, plain = prune(harness, model, ctx, **opts)
    _, comp = prune(harness, model, ctx, compensate=True, **opts)
    w1 = {t.name: numpy_helper.to_array(t) for t in comp.model.graph.initializer}["w1"]
    assert w1.shape[0] == 12 and np.all(np.abs(w1).sum(axis=(1, 2, 3)) > 0)  # zeros went
    assert comp.counters["convs_compensated"] == 1
    exact = compare(model, comp.model, feeds, [Tolerance("max-rel", 1e-5)])
    assert exact.passed, exact.failure_summary()
    lossy = compare(model, plain.model, feeds, [Tolerance("max-rel", 1e-5)])
    assert not lossy.passed


@pytest.mark.parametrize("name", ["tiny_yolo", "se_block", "c2f"])
def test_mean_compensation_does_not_raise_the_error(harness, name):
    """Unfused BN shifts (tiny_yolo) make pruned channels an offset; their mean goes back."""
    model = harness.fixture(name)
    ctx = PassContext(feeds=random_feeds(model, count=4, seed=2))
    _, plain = prune(harness, model, ctx, ratio=0.5)
    _, comp = prune(harness, model, ctx, ratio=0.5, compensate=True)
    assert comp.counters["convs_compensated"] >= 1
    loose = [Tolerance("max-abs", 1e9)]
    e_plain = compare(model, plain.model, ctx.feeds, loose).worst("mean-abs")
    e_comp = compare(model, comp.model, ctx.feeds, loose).worst("mean-abs")
    assert e_comp <= e_plain * 1.001, (e_plain, e_comp)


# ---------------------------------------------------------------- no calibration data


def _bn_constant_channel_model(harness, act: str):
    """conv (channels 0..3: zero filters) -> BatchNorm (those channels: beta 2.5, gamma ~0,
    so they are the constant 2.5 before the activation) -> act -> 1x1 conv."""
    rng = np.random.default_rng(12)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w1[:4] = 0.0
    gamma = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    gamma[:4] = 1e-4
    beta = (rng.standard_normal(16) * 0.1).astype(np.float32)
    beta[:4] = 2.5
    mean, var = np.zeros(16, np.float32), np.ones(16, np.float32)
    w2 = (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"], name="bn"),
    ]
    if act == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["n"], ["s"], name="sig"),
            helper.make_node("Mul", ["n", "s"], ["r"], name="silu"),
        ]
    else:
        nodes.append(helper.make_node(act, ["n"], ["r"], name="act"))
    nodes.append(helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"))
    inits = {"w1": w1, "g": gamma, "b": beta, "m": mean, "v": var, "w2": w2}
    inp = helper.make_tensor_value_info("images", F, [1, 3, 16, 16])
    out = helper.make_tensor_value_info("y", F, [1, 8, 16, 16])
    return harness.model(nodes, [inp], [out], inits)


@pytest.mark.parametrize("act", ["Relu", "silu", "HardSwish"])
def test_without_calibration_means_come_from_batchnorm_statistics(harness, act):
    """No --calib: the removed channels' means are restored from the BatchNorm that states
    them (data-free); here they are constants, so the result is exact up to gamma ~ 1e-4."""
    model = _bn_constant_channel_model(harness, act)
    opts = dict(ratio=0.25, round_to=1)
    _, plain = prune(harness, model, compensate=False, **opts)
    _, comp = prune(harness, model, compensate=True, **opts)
    assert comp.counters["convs_compensated"] == 1
    assert comp.counters["calibration_feeds"] == 0
    assert any("compensated data-free from BatchNorm" in n for n in comp.notes)
    assert_close(model, comp.model, atol=2e-3)
    with pytest.raises(AssertionError):
        assert_close(model, plain.model, atol=2e-3)


def test_batchnorm_means_match_monte_carlo():
    """E[f(z)], z ~ N(beta, gamma^2), by quadrature vs by sampling, for each activation."""
    from graphslim.pruning.reconstruct import bn_channel_means

    rng = np.random.default_rng(0)
    gamma = np.array([0.5, 1.0, 2.0, -1.5], np.float32)  # the sign of gamma does not matter
    beta = np.array([-1.0, 0.0, 0.7, 2.0], np.float32)
    z = beta[:, None] + np.abs(gamma)[:, None] * rng.standard_normal((4, 400_000))
    inits = {
        k: numpy_helper.from_array(v, k)
        for k, v in {
            "g": gamma,
            "b": beta,
            "m": np.zeros(4, np.float32),
            "v": np.ones(4, np.float32),
        }.items()  # fmt: skip
    }
    bn = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"])
    acts = {
        "Relu": np.maximum(z, 0),
        "Sigmoid": 1 / (1 + np.exp(-z)),
        "HardSwish": z * np.clip(z / 6 + 0.5, 0, 1),
    }
    for op, sampled in acts.items():
        made_by = {"n": bn, "y": helper.make_node(op, ["n"], ["y"])}
        np.testing.assert_allclose(
            bn_channel_means("y", made_by, inits), sampled.mean(axis=1), atol=1e-2
        )
    np.testing.assert_allclose(bn_channel_means("n", {"n": bn}, inits), beta)
    folded = {"y": helper.make_node("Relu", ["c"], ["y"])}  # no BatchNorm: no statistics
    assert bn_channel_means("y", folded, inits) is None


def test_reconstruct_without_calibration_is_off_and_said(harness):
    model = _bn_constant_channel_model(harness, "Relu")
    _, result = prune(harness, model, ratio=0.25, round_to=1, reconstruct=True)
    assert "layers_reconstructed" not in result.counters
    assert any("reconstruct off" in n for n in result.notes)


def _paddle_bias_net(harness, folded: bool) -> onnx.ModelProto:
    """Paddle adds a Conv's bias as Add(conv, Reshape(bias[C], [1, C, 1, 1])); ``folded``:
    the same model with that operand already a [1, C, 1, 1] initializer."""
    rng = np.random.default_rng(21)
    w1 = rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.3, 16).astype(np.float32)
    w2 = rng.normal(0, 0.3, (4, 16, 1, 1)).astype(np.float32)
    inits = {"w1": w1, "w2": w2}
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c"], name="c1", pads=[1, 1, 1, 1])]
    if folded:
        inits["b4"] = bias.reshape(1, 16, 1, 1)
    else:
        inits["b"], inits["shape"] = bias, np.array([1, 16, 1, 1], np.int64)
        nodes.append(helper.make_node("Reshape", ["b", "shape"], ["b4"], name="bias/reshape"))
    nodes += [
        helper.make_node("Add", ["c", "b4"], ["a"], name="bias/add"),
        helper.make_node("Relu", ["a"], ["r"], name="act"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    inp = helper.make_tensor_value_info("images", F, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("y", F, [1, 4, 8, 8])
    return harness.model(nodes, [inp], [out], inits)


def test_paddle_bias_through_a_constant_reshape_is_pruned(harness):
    model = _paddle_bias_net(harness, folded=False)
    original, result = prune(harness, model, ratio=0.5, round_to=1)
    assert result.counters["canonical_nodes_folded"] == 1
    assert result.counters["groups_pruned"] == 1
    _, reference = prune(harness, _paddle_bias_net(harness, folded=True), ratio=0.5, round_to=1)
    cmp = compare(reference.model, result.model, _feeds(original), [Tolerance("max-abs", 0.0)])
    assert cmp.passed, cmp.failure_summary()
