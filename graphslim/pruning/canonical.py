"""A working copy of a model in which every weight a pruner edits is an initializer that the
editing node reads directly.

Plain exports hide weights from a pruner in three ways, and each is seen through here:

* ``Constant`` nodes hold the weights (Paddle exports, some TF converters): they become
  initializers of the same name (:func:`graphslim.graph.constants_to_initializers`);
* torch.onnx deduplicates identical initializers and reaches the copies through
  ``Identity`` nodes (the zero biases left by BatchNorm fusion become one shared tensor
  read by every Conv through an Identity): Identity and no-op Dropout are bypassed
  (:func:`graphslim.graph.remove_noop_nodes`), so each Conv reads the shared tensor itself;
* Paddle adds a Conv's bias as ``Add(conv, Reshape(bias, [1, C, 1, 1]))``: layout ops on
  constants only (Reshape, Unsqueeze, Squeeze, Transpose, Flatten, Cast) are folded into
  initializers (evaluated by onnx's reference runtime), so the per-channel operand is a
  constant the rules can slice;
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
    """(copy, counters): ``constants_converted`` and ``identities_bypassed``."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    converted, _ = G.constants_to_initializers(work)
    bypassed = G.remove_noop_nodes(g, [])
    folded = _fold_constant_layout(work)
    if bypassed or folded:
        G.remove_stale_value_info(g)
    return work, {
        "constants_converted": converted,
        "identities_bypassed": bypassed,
        "layout_ops_folded": folded,
    }


FOLDABLE = ("Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Cast")


def _fold_constant_layout(model: onnx.ModelProto) -> int:
    """Replace each FOLDABLE node whose inputs are all initializers (and whose output is not
    a graph output) by an initializer holding its value; returns how many."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    inits = G.initializers(g)
    outputs = G.graph_output_names(g)
    opsets = list(model.opset_import)
    folded = 0
    keep = []
    for node in g.node:
        ins = [i for i in node.input if i]
        if (
            node.op_type not in FOLDABLE
            or node.domain not in ("", "ai.onnx")
            or not ins
            or any(i not in inits for i in ins)
            or node.output[0] in outputs
        ):
            keep.append(node)
            continue
        probe = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node], "fold", [], [onnx.helper.make_tensor_value_info(node.output[0], 0, None)],
                [inits[i] for i in dict.fromkeys(ins)],
            ),
            opset_imports=opsets,
        )  # fmt: skip
        (value,) = ReferenceEvaluator(probe).run(None, {})
        tensor = numpy_helper.from_array(np.asarray(value), node.output[0])
        g.initializer.append(tensor)
        inits[tensor.name] = g.initializer[-1]
        folded += 1
    if folded:
        del g.node[:]
        g.node.extend(keep)
        G.remove_unused_initializers(g)
    return folded
