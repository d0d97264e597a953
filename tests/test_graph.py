"""Tests for graphslim.graph: stable toposort, dead-node and initializer removal (subgraph
reads and IR < 4 initializer-inputs included), renaming through subgraphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import graph as G

F = TensorProto.FLOAT


def vi(name: str, shape=(2,)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, list(shape))


def init(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def model_of(graph: onnx.GraphProto, ir_version: int = 8) -> onnx.ModelProto:
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version
    )


def names(graph: onnx.GraphProto) -> list[str]:
    return [n.name for n in graph.node]


def two_chains() -> onnx.GraphProto:
    """x -> a1 -> a2 -> ya ;  x -> b1 -> b2 -> yb  (valid order a1 a2 b1 b2)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a1_out"], name="a1"),
        helper.make_node("Neg", ["a1_out"], ["ya"], name="a2"),
        helper.make_node("Abs", ["x"], ["b1_out"], name="b1"),
        helper.make_node("Neg", ["b1_out"], ["yb"], name="b2"),
    ]
    return helper.make_graph(nodes, "g", [vi("x")], [vi("ya"), vi("yb")])


def if_node(name: str, cond: str, outer: str, out: str, local: str) -> onnx.NodeProto:
    """If(cond): then = Neg(outer) -> out_then, else = Constant -> local -> Identity."""
    then = helper.make_graph(
        [helper.make_node("Neg", [outer], [f"{name}_then_out"], name=f"{name}/then/Neg")],
        f"{name}_then",
        [],
        [vi(f"{name}_then_out")],
    )
    other = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], [local], name=f"{name}/else/Constant", value=init("c", [5, 6])
            ),
            helper.make_node("Identity", [local], [f"{name}_else_out"], name=f"{name}/else/Id"),
        ],
        f"{name}_else",
        [],
        [vi(f"{name}_else_out")],
    )
    return helper.make_node("If", [cond], [out], name=name, then_branch=then, else_branch=other)


def cond_vi() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("cond", TensorProto.BOOL, [])


# ----------------------------------------------------------------------------- toposort


def test_toposort_keeps_a_valid_order():
    g = two_chains()
    assert G.toposort(g) is False
    assert names(g) == ["a1", "a2", "b1", "b2"]


def test_toposort_is_stable_on_a_shuffled_graph():
    g = two_chains()
    by_name = {n.name: n for n in g.node}
    shuffled = [by_name[k] for k in ("a2", "b1", "a1", "b2")]
    del g.node[:]
    g.node.extend(shuffled)
    assert G.toposort(g) is True
    # Of the nodes ready at each step, the one earliest in the given order goes first:
    # b1 (index 1) before a1 (index 2); a2 (index 0) as soon as a1 is placed.
    assert names(g) == ["b1", "a1", "a2", "b2"]
    assert G.toposort(g) is False  # idempotent
    onnx.checker.check_model(model_of(g))


def _stable_order(nodes: list[onnx.NodeProto]) -> list[str]:
    """Reference: repeatedly take the earliest node (in the given order) whose inputs exist."""
    made = {"x"}
    left = list(nodes)
    order = []
    while left:
        ready = next(n for n in left if all(i in made for i in n.input))
        order.append(ready.name)
        made.update(ready.output)
        left.remove(ready)
    return order


def test_toposort_of_random_shuffles_is_the_stable_order():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["t0"], name="n0")]
    for k in range(1, 12):
        a, b = rng.choice(k, size=2) if k > 1 else (0, 0)
        nodes.append(helper.make_node("Add", [f"t{a}", f"t{b}"], [f"t{k}"], name=f"n{k}"))
    for _ in range(5):
        shuffled = [nodes[i] for i in rng.permutation(len(nodes))]
        g = helper.make_graph(shuffled, "g", [vi("x")], [vi("t11")])
        G.toposort(g)
        onnx.checker.check_model(model_of(g))
        assert names(g) == _stable_order(shuffled)
    g = helper.make_graph(nodes, "g", [vi("x")], [vi("t11")])
    assert G.toposort(g) is False and names(g) == [f"n{k}" for k in range(12)]


def test_toposort_counts_subgraph_reads_of_outer_names():
    # The If's then-branch reads "late", written by a node that comes after the If.
    nodes = [
        if_node("if", "cond", outer="late", out="y", local="loc"),
        helper.make_node("Relu", ["x"], ["late"], name="producer"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x"), cond_vi()], [vi("y")])
    assert G.toposort(g) is True
    assert names(g) == ["producer", "if"]


def test_toposort_raises_on_a_cycle():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="entry"),
        helper.make_node("Add", ["a", "c"], ["b"], name="add"),
        helper.make_node("Neg", ["b"], ["c"], name="neg"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x")], [vi("c")])
    with pytest.raises(ValueError, match="cycle") as exc:
        G.toposort(g)
    assert "add" in str(exc.value) and "neg" in str(exc.value)
    assert names(g) == ["entry", "add", "neg"]  # untouched


# ----------------------------------------------------------------------------- dead nodes


def test_remove_dead_nodes():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="live1"),
        helper.make_node("Abs", ["x"], ["dead1_out"], name="dead1"),
        helper.make_node("Neg", ["dead1_out"], ["dead2_out"], name="dead2"),
        # one of two outputs used: the node stays
        helper.make_node("Split", ["r"], ["s0", "s1"], name="split", axis=0, num_outputs=2),
        helper.make_node("Neg", ["s0"], ["y"], name="live2"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x")], [helper.make_tensor_value_info("y", F, [1])])
    assert G.remove_dead_nodes(g) == 2
    assert names(g) == ["live1", "split", "live2"]
    assert G.remove_dead_nodes(g) == 0


def test_remove_dead_nodes_keeps_producers_read_only_by_a_subgraph():
    nodes = [
        helper.make_node("Relu", ["x"], ["outer"], name="feeds_subgraph"),
        helper.make_node("Abs", ["x"], ["unused"], name="dead"),
        if_node("if", "cond", outer="outer", out="y", local="loc"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x"), cond_vi()], [vi("y")])
    assert G.remove_dead_nodes(g) == 1
    assert names(g) == ["feeds_subgraph", "if"]


def test_remove_dead_nodes_keeps_a_node_writing_a_graph_output_read_by_nobody():
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="only")], "g", [vi("x")], [vi("y")]
    )
    assert G.remove_dead_nodes(g) == 0
    assert names(g) == ["only"]


# ----------------------------------------------------------------------------- initializers


def test_remove_unused_initializers():
    nodes = [
        helper.make_node("Add", ["x", "used"], ["a"], name="add"),
        if_node("if", "cond", outer="sub_read", out="b", local="loc"),
        helper.make_node("Add", ["a", "b"], ["y"], name="sum"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [vi("x"), cond_vi()],
        [vi("y"), vi("const_out")],
        initializer=[
            init("used", [1, 2]),
            init("unused", [3, 4]),
            init("sub_read", [5, 6]),
            init("const_out", [7, 8]),  # an initializer that is itself a graph output
        ],
    )
    assert G.remove_unused_initializers(g) == 1
    assert [t.name for t in g.initializer] == ["used", "sub_read", "const_out"]
    assert G.remove_unused_initializers(g) == 0


def test_ir3_initializer_inputs_are_dropped_with_their_initializer():
    # Before IR 4 an initializer is also listed as a graph input.
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "w_used"], ["y"], name="add")],
        "g",
        [vi("x"), vi("w_used"), vi("w_unused")],
        [vi("y")],
        initializer=[init("w_used", [1, 2]), init("w_unused", [3, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model)
    assert G.remove_unused_initializers(model.graph) == 1
    assert [i.name for i in model.graph.input] == ["x", "w_used"]
    assert [t.name for t in model.graph.initializer] == ["w_used"]
    assert [i.name for i in G.real_inputs(model.graph)] == ["x"]
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]  # nothing new to feed
    y = sess.run(None, {"x": np.array([1, 1], np.float32)})[0]
    np.testing.assert_array_equal(y, [2, 3])


def test_a_real_input_named_like_no_initializer_is_never_dropped():
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [vi("x"), vi("extra")],  # an unused real input: part of the interface, kept
        [vi("y")],
        initializer=[init("w", [1, 2])],
    )
    assert G.remove_unused_initializers(g) == 1
    assert [i.name for i in g.input] == ["x", "extra"]


# ----------------------------------------------------------------------------- renaming


def test_rename_input_reaches_nodes_outputs_and_subgraphs():
    nodes = [
        helper.make_node("Relu", ["x"], ["old"], name="producer"),
        helper.make_node("Neg", ["old"], ["n"], name="reader"),
        helper.make_node("Add", ["old", "old"], ["twice"], name="reads_twice"),
        if_node("if", "cond", outer="old", out="b", local="loc"),
    ]
    g = helper.make_graph(
        nodes, "g", [vi("x"), cond_vi()], [vi("n"), vi("twice"), vi("b"), vi("old")]
    )
    G.rename_input(g, "old", "new")
    assert list(g.node[1].input) == ["new"]
    assert list(g.node[2].input) == ["new", "new"]
    then_branch = G.attr(g.node[3], "then_branch")
    else_branch = G.attr(g.node[3], "else_branch")
    assert list(then_branch.node[0].input) == ["new"]
    # the other branch reads only its own names and is untouched
    assert [list(n.input) for n in else_branch.node] == [[], ["loc"]]
    assert [o.name for o in g.output] == ["n", "twice", "b", "new"]
    # only readers move: the producer still writes "old"
    assert list(g.node[0].output) == ["old"]
    assert "new" in G.outer_scope_reads(then_branch)


def test_rename_input_in_nested_subgraphs():
    # If -> then-branch holds another If whose branches both read the outermost name.
    inner_then = helper.make_graph(
        [helper.make_node("Identity", ["old"], ["inner_id"], name="inner/Id")],
        "inner_then",
        [],
        [vi("inner_id")],
    )
    inner_else = helper.make_graph(
        [helper.make_node("Neg", ["old"], ["inner_neg"], name="inner/Neg")],
        "inner_else",
        [],
        [vi("inner_neg")],
    )
    inner_if = helper.make_node(
        "If",
        ["cond"],
        ["inner_out"],
        name="inner_if",
        then_branch=inner_then,
        else_branch=inner_else,
    )
    outer_then = helper.make_graph([inner_if], "outer_then", [], [vi("inner_out")])
    outer_else = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["abs_out"], name="else/Abs")],
        "outer_else",
        [],
        [vi("abs_out")],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["old"], name="producer"),
        helper.make_node(
            "If", ["cond"], ["y"], name="outer_if", then_branch=outer_then, else_branch=outer_else
        ),
    ]
    g = helper.make_graph(nodes, "g", [vi("x"), cond_vi()], [vi("y")])
    model = model_of(g)
    onnx.checker.check_model(model)
    # Make the model compute the same with the producer writing "new": rename readers, then
    # the producer, and compare with onnxruntime.
    feed = {"x": np.array([-1.5, 2.0], np.float32)}
    before = {c: _run(model, feed | {"cond": np.array(c)}) for c in (True, False)}
    G.rename_input(model.graph, "old", "new")
    model.graph.node[0].output[0] = "new"
    inner = G.attr(G.attr(model.graph.node[1], "then_branch").node[0], "then_branch")
    assert list(inner.node[0].input) == ["new"]
    inner_else_node = G.attr(
        G.attr(model.graph.node[1], "then_branch").node[0], "else_branch"
    ).node[0]
    assert list(inner_else_node.input) == ["new"]
    onnx.checker.check_model(model)
    for c in (True, False):
        np.testing.assert_array_equal(_run(model, feed | {"cond": np.array(c)}), before[c])


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


# ----------------------------------------------------------------------------- small helpers


def test_consumers_count_a_node_once_and_include_subgraph_reads():
    nodes = [
        helper.make_node("Add", ["x", "x"], ["a"], name="add"),
        if_node("if", "cond", outer="x", out="b", local="loc"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x"), cond_vi()], [vi("a"), vi("b")])
    assert [n.name for n in G.consumers(g)["x"]] == ["add", "if"]
    assert G.producers(g)["a"].name == "add"


def test_unique_name_and_tensor_value():
    taken = {"w", "w_1"}
    assert G.unique_name(taken, "w") == "w_2"
    assert G.unique_name(taken, "v") == "v"
    assert {"w_2", "v"} <= taken
    g = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
            helper.make_node("Add", ["c", "w"], ["y"]),
        ],
        "g",
        [],
        [vi("y")],
        initializer=[init("w", [3, 4])],
    )
    np.testing.assert_array_equal(G.tensor_value(g, "c"), [1, 2])
    np.testing.assert_array_equal(G.tensor_value(g, "w"), [3, 4])
    assert G.tensor_value(g, "y") is None
    assert G.count_by(["Conv", "Relu", "Conv", "Add"]) == {"Conv": 2, "Add": 1, "Relu": 1}


def test_fingerprint_follows_structure_and_weights():
    import copy

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from graphslim.graph import fingerprint

    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    m = helper.make_model(graph)
    same = copy.deepcopy(m)
    assert fingerprint(m) == fingerprint(same)
    edited = copy.deepcopy(m)
    edited.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    )
    assert fingerprint(edited) != fingerprint(m)
    renamed = copy.deepcopy(m)
    renamed.graph.node[0].name = "other"
    assert fingerprint(renamed) != fingerprint(m)
