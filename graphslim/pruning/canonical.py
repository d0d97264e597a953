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
  ``Shape``: every node whose value does not depend on the graph inputs (the dims of a
  ``Shape`` that the model fixes included) becomes an initializer, evaluated by
  onnx-graphsurgeon's constant folder, so per-channel operands and bounds are constants the
  rules can read. Symbolic dims are never folded: a dynamic model stays dynamic; values
  above :data:`FOLD_MAX_ELEMENTS` stay computed unless a layout op made them;
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


FOLD_MAX_ELEMENTS = 1 << 16
"""Folded values above this size stay in the graph (the runtime computes them), except the
outputs of layout ops, which fold at any size: a weight reached through a Transpose or a
Reshape must become an initializer for the pruner to see it."""

LAYOUT_OPS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Cast"})


def _fold_constants(model: onnx.ModelProto) -> int:
    """Replace each node whose value does not depend on the graph inputs (module doc) by an
    initializer holding that value, unless it writes a graph output; returns how many.

    The evaluation is onnx-graphsurgeon's ``fold_constants`` (NVIDIA's folder, also what
    Polygraphy's ``surgeon sanitize`` runs): every constant subgraph is computed with
    onnxruntime, and ``Shape`` (or ``Shape -> Gather`` / ``Slice``) of dims the model fixes
    folds even where other dims are symbolic. Only the *values* are taken from it: the edit
    stays on this proto (drop the folded nodes, add initializers), so names, order, metadata
    and the untouched weights are exactly the model's, and no whole-graph export runs (1.6 s
    on a 273 MB YOLOv8x).
    """
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    g = model.graph
    outputs = G.graph_output_names(g)
    made = {o: n for n in g.node for o in n.output if o}
    if not made:
        return 0
    # Shapes for Shape folding, inferred on a weightless copy (cheap on big models) and lent
    # to the import only: the model keeps its own value_info.
    lent = []
    if any(n.op_type == "Shape" for n in g.node):
        known = {v.name for v in g.value_info}
        lent = [v for v in _inferred_value_info(model) if v.name not in known]
        g.value_info.extend(lent)
    severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR
    try:
        graph = gs.import_onnx(model)
        graph.fold_constants(
            fold_shapes=True,
            error_ok=True,
            # Subgraphs (If/Loop bodies) and functions stay as they are: the pruner never
            # edits inside them.
            recurse_subgraphs=False,
            recurse_functions=False,
            should_exclude_node=lambda n: (
                n.domain not in (None, "", "ai.onnx") or any(o.name in outputs for o in n.outputs)
            ),
        )
        tensors = graph.tensors()
    finally:
        G_LOGGER.severity = severity
        if lent:
            del g.value_info[len(g.value_info) - len(lent) :]
    values = {}
    for name, node in made.items():
        t = tensors.get(name)
        if isinstance(t, gs.Constant) and name not in outputs and node.op_type != "Constant":
            v = np.asarray(t.values)
            if node.op_type in LAYOUT_OPS or v.size <= FOLD_MAX_ELEMENTS:
                values[name] = v
    gone = [n for n in g.node if n.output and all(o in values for o in n.output if o)]
    if not gone:
        return 0
    for node in gone:
        for o in node.output:
            if o:
                g.initializer.append(numpy_helper.from_array(values[o], o))
    drop = {id(n) for n in gone}
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    G.remove_dead_nodes(g)  # producers whose every reader was folded
    G.remove_unused_initializers(g)
    return len(gone)


def _inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    from graphslim.metrics import weightless_copy

    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_copy(model), data_prop=True)
    except Exception:  # best effort: without shapes, Shape nodes simply do not fold
        return []
    return list(inferred.graph.value_info)
