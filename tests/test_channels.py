"""Channel analysis: slots, classes, groups and frozen reasons on small graphs built in code
(and on the fixtures where they already hold the topology). Where the graph can run, the
pruned model is also checked in onnxruntime against the original with the removed filters
zeroed (every op between a removed channel and its readers maps 0 to 0 here)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import graph as G
from graphslim.channels import analyze
from graphslim.feeds import random_feeds
from graphslim.passes.prune_channels import PruneChannels
from graphslim.validate import Tolerance, compare

F = TensorProto.FLOAT
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RNG = np.random.default_rng(0)


def _w(*shape) -> np.ndarray:
    return (RNG.normal(0, 1, shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _b(n: int) -> np.ndarray:
    return RNG.uniform(-0.5, 0.5, n).astype(np.float32)


def _model(nodes, inputs, outputs, inits, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv(x: str, y: str, name: str, cin: int, cout: int, inits: dict, k: int = 1):
    inits[f"{name}.w"], inits[f"{name}.b"] = _w(cout, cin, k, k), _b(cout)
    pads = [k // 2] * 4
    return helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, kernel_shape=[k, k], pads=pads
    )


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, shape)


def _group(cg, source: str):
    return next(g for g in cg.groups if source in g.sources)


def _prune_and_check(model: onnx.ModelProto, **options):
    """Prune at ``options``; the result must match the original with removed filters zeroed
    (mean compensation off: it changes the biases the reference is built from)."""
    options.setdefault("compensate", False)
    result = PruneChannels(**options)(copy.deepcopy(model))
    onnx.checker.check_model(result.model)
    ref = copy.deepcopy(model)
    inits = G.initializers(ref.graph)
    pruned = G.initializers(result.model.graph)
    by_name = {n.name: n for n in result.model.graph.node}
    for n in ref.graph.node:
        if n.op_type != "Conv":
            continue
        b0 = numpy_helper.to_array(inits[n.input[2]]).copy()
        gone = ~np.isin(b0, numpy_helper.to_array(pruned[by_name[n.name].input[2]]))
        w = numpy_helper.to_array(inits[n.input[1]]).copy()
        w[gone], b0[gone] = 0, 0
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
        inits[n.input[2]].CopyFrom(numpy_helper.from_array(b0, n.input[2]))
    feeds = random_feeds(model, count=2, seed=0, low=-1.0, high=1.0)
    cmp = compare(ref, result.model, feeds, [Tolerance("max-rel", 1e-5)])
    assert cmp.passed, cmp.failure_summary()
    return result


# ---------------------------------------------------------------- layouts


def test_transpose_moves_the_channel_axis():
    """NHWC input -> Transpose -> Conv -> Relu -> Transpose to NHWC -> Relu -> Transpose back
    -> Conv; and a MatMul reading the NHWC tensor on its last axis."""
    inits: dict = {}
    inits["fc.w"] = _w(8, 5)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        _conv("x_nchw", "c1", "c1", 3, 8, inits, 3),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Transpose", ["r1"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["nhwc"], ["r2"], name="r2"),
        helper.make_node("Transpose", ["r2"], ["back"], name="back", perm=[0, 3, 1, 2]),
        _conv("back", "y", "c2", 8, 4, inits),
        helper.make_node("MatMul", ["r2", "fc.w"], ["z"], name="fc"),
    ]
    model = _model(
        nodes, [_vi("x", [1, 6, 6, 3])], [_vi("y", [1, 4, 6, 6]), _vi("z", [1, 6, 6, 5])], inits
    )
    cg = analyze(model)
    assert cg.slot("x_nchw") is None  # graph inputs carry no prunable channels
    assert cg.slot("c1").axis == 1
    assert cg.slot("nhwc").axis == 3 and cg.slot("r2").axis == 3
    assert cg.slot("back").axis == 1
    assert cg.slot("r2").atoms == cg.slot("c1").atoms
    grp = _group(cg, "c1")
    assert grp.frozen is None and grp.channels == 8
    result = _prune_and_check(model, ratio=0.5)
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert shapes["c1.w"] == (4, 3, 3, 3) and shapes["c2.w"] == (4, 4, 1, 1)
    assert shapes["fc.w"] == (4, 5)


def _reshape_model(target: list[int], back: bool = True):
    inits: dict = {"shape": np.asarray(target, np.int64), "shape_back": np.asarray([1, 8, 4, 4])}
    nodes = [
        _conv("x", "c1", "c1", 3, 8, inits, 3),
        helper.make_node("Reshape", ["c1", "shape"], ["r"], name="reshape"),
    ]
    if back:
        nodes.append(helper.make_node("Reshape", ["r", "shape_back"], ["rb"], name="reshape_back"))
    nodes.append(_conv("rb" if back else "r", "y", "c2", 8, 4, inits))
    return _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 4, 4])], inits)


def test_reshape_that_changes_the_channel_layout_freezes():
    model = _reshape_model([1, 2, 4, 16])  # channels split across two axes
    grp = _group(analyze(model), "c1")
    assert grp.frozen == (
        "Reshape (reshape) changes the channel layout (1, 8, 4, 4) -> (1, 2, 4, 16)"
    )
    result = PruneChannels(ratio=0.5)(copy.deepcopy(model))
    assert result.modified is False
    assert ("c1", f"frozen: {grp.frozen}") in result.skipped


def test_channel_shuffle_is_followed():
    """ShuffleNet: [1,8,H,W] -> [1,2,4,H,W] -> swap -> [1,8,H,W] interleaves the two halves;
    channel j of both halves goes together (else the kept grid is no grid)."""
    inits: dict = {
        "split5": np.asarray([1, 2, 4, 4, 4], np.int64),
        "merge": np.asarray([1, 8, 4, 4], np.int64),
    }
    nodes = [
        _conv("x", "c1", "c1", 3, 8, inits, 3),
        helper.make_node("Reshape", ["c1", "split5"], ["r"], name="shuffle/reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="shuffle/transpose", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["m"], name="shuffle/merge"),
        _conv("m", "y", "c2", 8, 4, inits),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 4, 4])], inits)
    cg = analyze(model)
    grp = _group(cg, "c1")
    assert grp.frozen is None and grp.width == 2 and len(grp.classes) == 4
    c1 = [cg.class_of(a) for a in cg.slot("c1").atoms]
    assert c1[:4] == c1[4:]  # channel j and 4 + j: one class
    merged = [cg.class_of(a) for a in cg.slot("m").atoms]
    assert merged == [c for c in c1[:4] for _ in range(2)]  # interleaved
    result = _prune_and_check(model, ratio=0.5, round_to=1)
    targets = {t.name: numpy_helper.to_array(t).tolist() for t in result.model.graph.initializer}
    assert targets["split5"] == [1, 2, 2, 4, 4] and targets["merge"] == [1, 4, 4, 4]


def test_reshape_keeping_channels_is_followed():
    # [1, 8, 4, 4] -> [1, 8, 16] keeps the channel axis; back to [1, 8, 4, 4].
    model = _reshape_model([1, 8, 16])
    cg = analyze(model)
    assert cg.slot("r").atoms == cg.slot("c1").atoms
    assert _group(cg, "c1").frozen is None
    result = _prune_and_check(model, ratio=0.5)
    targets = {t.name: numpy_helper.to_array(t).tolist() for t in result.model.graph.initializer}
    assert targets["shape"] == [1, 4, 16] and targets["shape_back"] == [1, 4, 4, 4]


def test_unknown_custom_op_freezes_with_its_name():
    inits: dict = {}
    nodes = [
        _conv("x", "c1", "c1", 3, 8, inits, 3),
        helper.make_node("Relu", ["c1"], ["r"], name="r"),
        helper.make_node("FancyNorm", ["r"], ["f"], name="fancy", domain="com.example"),
        _conv("r", "y", "c2", 8, 4, inits),
    ]
    model = _model(
        nodes,
        [_vi("x", [1, 3, 4, 4])],
        [_vi("y", [1, 4, 4, 4]), _vi("f", [1, 8, 4, 4])],
        inits,
        domains=["com.example"],
    )
    grp = _group(analyze(model), "c1")
    assert grp.frozen == "FancyNorm (fancy) has no channel rule"
    result = PruneChannels(ratio=0.5)(copy.deepcopy(model))
    assert result.modified is False
    assert ("c1", "frozen: FancyNorm (fancy) has no channel rule") in result.skipped


def test_if_subgraph_reading_a_tensor_freezes_it():
    inits: dict = {}
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["t_out"], name="then_id")],
        "then",
        [],
        [_vi("t_out", [1, 8, 4, 4])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e_out"], name="else_neg")],
        "else",
        [],
        [_vi("e_out", [1, 8, 4, 4])],
    )
    nodes = [
        _conv("x", "c1", "c1", 3, 8, inits, 3),
        helper.make_node("Relu", ["c1"], ["r"], name="r"),
        helper.make_node(
            "If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g
        ),
        _conv("r", "y", "c2", 8, 4, inits),
        # A second, unrelated group that stays prunable.
        _conv("x", "d1", "d1", 3, 8, inits, 3),
        helper.make_node("Relu", ["d1"], ["dr"], name="dr"),
        _conv("dr", "z", "d2", 8, 4, inits),
    ]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _model(
        nodes,
        [_vi("x", [1, 3, 4, 4]), cond],
        [_vi("y", [1, 4, 4, 4]), _vi("z", [1, 4, 4, 4]), _vi("branch", [1, 8, 4, 4])],
        inits,
    )
    cg = analyze(model)
    assert _group(cg, "c1").frozen == "read inside the subgraph of if"
    assert _group(cg, "d1").frozen is None
    result = PruneChannels(ratio=0.5)(copy.deepcopy(model))
    assert ("c1", "frozen: read inside the subgraph of if") in result.skipped
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert shapes["c1.w"][0] == 8 and shapes["d1.w"][0] == 4
    feeds = [
        {"x": RNG.uniform(-1, 1, (1, 3, 4, 4)).astype(np.float32), "cond": np.array(v)}
        for v in (True, False)
    ]
    cmp = compare(model, result.model, feeds, [Tolerance("max-abs", 1e9)])
    assert [o.name for o in cmp.outputs] == ["y", "z", "branch"]
    assert cmp.outputs[0].stats["max-abs"] == 0.0  # the frozen branch is untouched
    assert cmp.outputs[2].stats["max-abs"] == 0.0


def test_concat_on_a_non_channel_axis_joins_its_inputs():
    inits: dict = {}
    nodes = [
        _conv("x", "a", "a", 3, 8, inits, 3),
        _conv("x", "b", "b", 3, 8, inits, 3),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=2),  # along H
        helper.make_node("Relu", ["cat"], ["r"], name="r"),
        _conv("r", "y", "c", 8, 4, inits),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 8, 4])], inits)
    cg = analyze(model)
    grp = _group(cg, "a")
    assert grp.sources == ["a", "b"] and grp.channels == 8 and grp.frozen is None
    assert [cg.class_of(a) for a in cg.slot("a").atoms] == [
        cg.class_of(a) for a in cg.slot("b").atoms
    ]
    assert cg.slot("cat").axis == 1 and len(cg.slot("cat").atoms) == 8
    _prune_and_check(model, ratio=0.5)


# ---------------------------------------------------------------- fixtures


def _fixture(name: str) -> onnx.ModelProto:
    return onnx.load_model(FIXTURES / f"{name}.onnx")


def test_concat_on_channels_concatenates_atoms():
    cg = analyze(_fixture("concat"))
    cat = cg.slot("/Concat_output_0")
    a, b = cg.slot("/branch_a/conv/Conv_output_0"), cg.slot("/branch_b/conv/Conv_output_0")
    assert cat.axis == 1 and cat.atoms == a.atoms + b.atoms


def test_split_cuts_atoms():
    cg = analyze(_fixture("c2f"))
    split = next(n for n in cg.model.graph.node if n.op_type == "Split")
    whole = cg.slot(split.input[0]).atoms
    assert [cg.slot(o).atoms for o in split.output] == [whole[:16], whole[16:]]


def test_flatten_expands_each_channel_by_spatial_size():
    cg = analyze(_fixture("flatten_gemm"))
    conv = cg.slot("/features.2/act/Relu_output_0").atoms
    flat = cg.slot("/Flatten_output_0").atoms
    assert flat == [a for a in conv for _ in range(16)]
    assert _group(cg, "/features.2/conv/Conv").frozen is None


def test_depthwise_ties_in_and_out_grouped_joins_whole_groups():
    cg = analyze(_fixture("depthwise_grouped"))
    dw_in = cg.slot("/stem/act/Relu_output_0").atoms
    assert cg.slot("/dw/conv/Conv_output_0").atoms == dw_in
    assert "/dw/conv/Conv" not in cg.sources
    grp = _group(cg, "/stem/conv/Conv")
    assert grp.frozen is None and grp.width == 8 and grp.channels == 16
    # group=2 (8 in, 16 out each): in-group g and out-group g are one class
    ins = [cg.class_of(a) for a in dw_in]
    outs = [cg.class_of(a) for a in cg.slot("/grouped/conv/Conv_output_0").atoms]
    assert ins == [ins[0]] * 8 + [ins[8]] * 8 and ins[0] != ins[8]
    assert outs == [ins[0]] * 16 + [ins[8]] * 16


def test_outputs_and_head_layouts_freeze():
    cg = analyze(_fixture("yolo_head"))
    reasons = {s: g.frozen for g in cg.groups for s in g.sources}
    assert reasons["/model.4/cv3.0/cv3.0.2/Conv"] == "reaches graph output 'output0'"
    assert (
        reasons["/model.4/cv2.0/cv2.0.2/Conv"]
        == "Softmax (/model.4/dfl/Softmax) normalizes over channels"
    )
    assert reasons["/model.3/conv/Conv"] is None
    # The two scales' box convs share the Concat/Reshape into the DFL: one group.
    grp = _group(cg, "/model.4/cv2.0/cv2.0.2/Conv")
    assert grp.sources == ["/model.4/cv2.0/cv2.0.2/Conv", "/model.4/cv2.1/cv2.1.2/Conv"]


def test_se_gate_joins_the_map_it_scales():
    cg = analyze(_fixture("se_block"))
    grp = _group(cg, "/layer1/conv/Conv")
    assert grp.sources == ["/layer1/conv/Conv", "/se/fc2/Conv"]
    assert [cg.class_of(a) for a in cg.slot("/layer1/conv/Conv_output_0").atoms] == [
        cg.class_of(a) for a in cg.slot("/se/fc2/Conv_output_0").atoms
    ]


def test_dynamic_batch_shapes_are_resolved(monkeypatch):
    # Symbolic batch "N" is taken as 1 for shape inference (no onnxruntime run needed), so
    # MACs and Reshape checks see ints; the computed view(x.size(0), -1) shape freezes with
    # a hint.
    import graphslim.metrics

    def no_run(*args):
        raise AssertionError("shapes should not need an onnxruntime run")

    monkeypatch.setattr(graphslim.metrics, "runtime_shapes", no_run)
    cg = analyze(_fixture("dynamic_batch"))
    assert cg.shape("/stem/conv/Conv_output_0") == (1, 16, 16, 16)
    assert sum(g.macs for g in cg.groups) > 0
    assert "run simplify with fixed input shapes" in _group(cg, "/layer1/conv/Conv").frozen


def test_register_op_gives_an_unknown_op_a_handler(monkeypatch):
    """Shrink has no built-in rule (it freezes its input's channels); registering a
    pass-through handler for it makes the group prunable, and pruning stays exact."""
    from graphslim.channels import register_op, rules

    inits: dict = {}
    nodes = [
        _conv("x", "a", "c1", 3, 16, inits, k=3),
        helper.make_node("Shrink", ["a"], ["s"], name="shrink", lambd=0.1),
        _conv("s", "y", "c2", 16, 4, inits),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits)
    assert "Shrink (shrink) has no channel rule" in _group(analyze(model), "c1").frozen

    monkeypatch.setattr(rules, "HANDLERS", dict(rules.HANDLERS))
    register_op("Shrink", rules.handler_for("Relu").rule)
    assert _group(analyze(model), "c1").frozen is None
    _prune_and_check(model, ratio=0.5, round_to=1)
    with pytest.raises(ValueError, match="already has a channel handler"):
        register_op("Shrink", rules.handler_for("Relu").rule)
    with pytest.raises(TypeError):
        register_op("Foo", "not callable")


def test_channels_last_layernorm_is_pruned_with_its_channels():
    """ConvNeXt: Conv -> Transpose to NHWC -> LayerNorm(-1) -> MatMul -> Relu -> MatMul ->
    back to NCHW -> Conv. The LayerNorm's scale and bias follow the channels."""
    inits: dict = {}
    inits["ln.g"] = RNG.uniform(0.5, 1.5, 16).astype(np.float32)
    inits["ln.b"] = _b(16)
    inits["fc1"], inits["fc2"] = _w(16, 32), _w(32, 16)
    nodes = [
        _conv("x", "a", "c1", 3, 16, inits, k=3),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "ln.g", "ln.b"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "fc1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "fc2"], ["o"], name="fc2"),
        helper.make_node("Transpose", ["o"], ["back"], perm=[0, 3, 1, 2]),
        _conv("back", "y", "c2", 16, 4, inits),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits)
    cg = analyze(model)
    assert _group(cg, "c1").frozen is None
    result = PruneChannels(ratio=0.5, round_to=1)(copy.deepcopy(model))
    onnx.checker.check_model(result.model)
    pruned = G.initializers(result.model.graph)
    ln = next(n for n in result.model.graph.node if n.name == "ln")
    assert numpy_helper.to_array(pruned[ln.input[1]]).shape == (8,)
    assert numpy_helper.to_array(pruned[ln.input[2]]).shape == (8,)
    feeds = random_feeds(model, count=1, seed=0)
    cmp = compare(model, result.model, feeds, [Tolerance("max-abs", 1e9)])
    assert cmp.passed and np.isfinite(cmp.worst("max-abs"))  # runs, same output shapes


def test_torch_chunk_bounds_computed_from_shape_are_folded():
    """torch's x.chunk(2, 1) exports Slice bounds computed from Shape -> Gather -> Div: with
    a static shape they are constants, and the halves are pruned (here swapped: the two
    halves of c1 feed c2 in the other order)."""
    inits: dict = {
        "i1": np.asarray(1, np.int64),
        "two": np.asarray(2, np.int64),
        "zero": np.asarray([0], np.int64),
        "big": np.asarray([2**62], np.int64),
        "axis": np.asarray([1], np.int64),
        "ax0": np.asarray([0], np.int64),
    }
    nodes = [
        _conv("x", "a", "c1", 3, 16, inits, 3),
        helper.make_node("Shape", ["a"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
        helper.make_node("Div", ["c", "two"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "ax0"], ["h1"]),
        helper.make_node("Slice", ["a", "zero", "h1", "axis"], ["lo"], name="chunk0"),
        helper.make_node("Slice", ["a", "h1", "big", "axis"], ["hi"], name="chunk1"),
        helper.make_node("Concat", ["hi", "lo"], ["cat"], axis=1),
        _conv("cat", "y", "c2", 16, 4, inits),
    ]
    model = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits)
    assert "computed bounds" in (_group(analyze(model), "c1").frozen or "")  # as exported
    result = _prune_and_check(model, ratio=0.5, round_to=1)
    assert result.counters["canonical_nodes_folded"] == 4  # Shape, Gather, Div, Unsqueeze
    assert result.counters["groups_pruned"] == 1
