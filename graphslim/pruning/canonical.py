"""A working copy of a model in which every weight a pruner edits is an initializer that the
editing node reads directly.

Plain exports hide weights from a pruner in three ways, and each is seen through here:

* ``Constant`` nodes hold the weights (Paddle exports, some TF converters): they become
  initializers of the same name (:func:`graphslim.graph.constants_to_initializers`);
* torch.onnx deduplicates identical initializers and reaches the copies through
  ``Identity`` nodes (the zero biases left by BatchNorm fusion become one shared tensor
  read by every Conv through an Identity): Identity and no-op Dropout are bypassed
  (:func:`graphslim.graph.remove_noop_nodes`), so each Conv reads the shared tensor itself;
* constants computed in the graph: Paddle adds a Conv's bias as ``Add(conv,
  Reshape(bias, [1, C, 1, 1]))``, and torch's ``chunk`` computes Slice bounds from
  ``Shape``: a ``Shape`` of a tensor whose shape the model fixes, and any node of
  :data:`FOLDABLE` whose inputs are all constants, become initializers (evaluated by onnx's
  reference runtime), so per-channel operands and bounds are constants the rules can read.
  Symbolic dims are never folded: a dynamic model stays dynamic;
* a tensor shared by several consumers is edited copy-on-write by the channel editor
  (:class:`graphslim.channels.Editor`): a reader whose slicing differs gets a private copy,
  so each group is pruned as if its weights were its own. (Two Convs that read one *weight*
  tensor are tied instead: pruned alike, the weight stays shared.)

Values and names of every graph input and output are unchanged: the copy computes exactly
what the model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim import graph as G


def canonical_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """(copy, counters): ``constants_converted`` (Constant nodes -> initializers),
    ``identities_bypassed`` and ``nodes_folded`` (nodes on constants evaluated into
    initializers: layout ops, Shape, small arithmetic)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    converted, _ = G.constants_to_initializers(work)
    bypassed = G.remove_noop_nodes(g, [])
    folded = _fold_constants(work)
    if bypassed or folded:
        G.remove_stale_value_info(g)
    return work, {
        "constants_converted": converted,
        "identities_bypassed": bypassed,
        "nodes_folded": folded,
    }


FOLDABLE = (
    "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Cast", "Gather", "Concat",
    "Slice", "Add", "Sub", "Mul", "Div",
)  # fmt: skip
"""Ops folded when every input is a constant (small shape arithmetic and layout changes)."""

FOLD_MAX_ELEMENTS = 1 << 16
"""Arithmetic results above this size are left to the runtime (layout ops fold any size)."""

_LAYOUT = {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Cast"}


def _fold_constants(model: onnx.ModelProto) -> int:
    """Replace each foldable node (module doc) whose output is not a graph output by an
    initializer holding its value; returns how many."""
    from onnx.reference import ReferenceEvaluator

    from graphslim.metrics import infer_shapes

    g = model.graph
    inits = G.initializers(g)
    outputs = G.graph_output_names(g)
    opsets = list(model.opset_import)
    shapes = None
    folded = 0
    keep = []
    for node in g.node:
        value = None
        ins = [i for i in node.input if i]
        plain = node.domain in ("", "ai.onnx") and node.output[0] not in outputs and ins
        if plain and node.op_type == "Shape":
            shapes = shapes if shapes is not None else infer_shapes(model)
            shape = shapes.get(node.input[0])
            if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape):
                start, end = G.attr(node, "start", 0), G.attr(node, "end", None)
                value = np.asarray(shape, np.int64)[start:end]
        elif plain and node.op_type in FOLDABLE and all(i in inits for i in ins):
            probe = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node], "fold", [],
                    [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output],
                    [inits[i] for i in dict.fromkeys(ins)],
                ),
                opset_imports=opsets,
            )  # fmt: skip
            result = ReferenceEvaluator(probe).run(None, {})[0]
            if node.op_type in _LAYOUT or np.size(result) <= FOLD_MAX_ELEMENTS:
                value = np.asarray(result)
        if value is None or len(node.output) != 1:
            keep.append(node)
            continue
        tensor = numpy_helper.from_array(value, node.output[0])
        g.initializer.append(tensor)
        inits[tensor.name] = g.initializer[-1]
        folded += 1
    if folded:
        del g.node[:]
        g.node.extend(keep)
        G.remove_unused_initializers(g)
    return folded
