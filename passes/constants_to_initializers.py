"""constants-to-initializers: ``Constant`` nodes become initializers.

Paddle (and some TF) exports store weights as ``Constant`` nodes; analyses and passes that
edit weights (fold-bn, pruning, factorization) look for initializers. Each top-level
``Constant`` node with output ``T`` and value ``v`` is removed and an initializer named ``T``
holding ``v`` is added: values and names are unchanged, so outputs are bit-identical.
Constants inside subgraphs (If/Loop/Scan bodies) are left alone, and sparse constants are
declined (both with a reason).
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult


class ConstantsToInitializers(Pass):
    name = "constants-to-initializers"
    summary = "turn Constant nodes (Paddle-style weights) into initializers"
    numerics = "exact"
    before = ("fold-bn",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g = model.graph
        skipped: list[tuple[str, str]] = []
        keep: list[onnx.NodeProto] = []
        new_inits: list[onnx.TensorProto] = []
        for node in g.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                keep.append(node)
                continue
            if any(a.name == "sparse_value" for a in node.attribute):
                skipped.append((node.name or node.output[0], "sparse constant: left as a node"))
                keep.append(node)
                continue
            value = G.constant_node_value(node)
            if value is None:
                kinds = ", ".join(a.name for a in node.attribute) or "no value attribute"
                skipped.append(
                    (node.name or node.output[0], f"Constant with {kinds}: not converted")
                )
                keep.append(node)
                continue
            tensor = _tensor(node, value)
            tensor.name = node.output[0]
            new_inits.append(tensor)
        for node in g.node:
            # Named per node that owns the subgraphs, counted at any depth (If in a Loop...).
            nested = sum(_constants_in(sub) for sub in G.subgraphs(node))
            if nested:
                skipped.append(
                    (
                        node.name or node.output[0],
                        f"{nested} Constant node(s) inside its {node.op_type} subgraphs left as "
                        "nodes (only top-level Constants become initializers)",
                    )
                )
        if not new_inits:
            return PassResult(model, False, {"constants_converted": 0}, skipped)
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_inits)
        if model.ir_version < 4:
            # Before IR 4 every initializer must also be declared as a graph input.
            for t in new_inits:
                g.input.append(
                    onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                )
        return PassResult(model, True, {"constants_converted": len(new_inits)}, skipped)


def _constants_in(graph: onnx.GraphProto) -> int:
    return sum(
        (n.op_type == "Constant") + sum(_constants_in(sub) for sub in G.subgraphs(n))
        for n in graph.node
    )


def _tensor(node: onnx.NodeProto, value) -> onnx.TensorProto:
    for a in node.attribute:
        if a.name == "value":
            # Copy the proto itself: keeps dtype (bfloat16, float8...) and raw bytes exactly.
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            return t
    return numpy_helper.from_array(value)
