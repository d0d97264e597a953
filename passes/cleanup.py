"""cleanup: remove what does not compute anything.

Rules, applied until nothing changes:

* ``Identity`` (and inference-mode ``Dropout`` whose mask is unused): every reader of
  ``Y`` reads ``X`` instead. When ``Y`` is a graph output, the producer of ``X`` is renamed to
  write ``Y`` directly, so output names never change; an Identity between a graph input and a
  graph output is kept (removing it would merge two interface names).
* nodes none of whose outputs reach a graph output;
* initializers nothing reads; ``value_info`` of tensors that no longer exist.

Outputs are bit-identical: nothing is computed differently.
"""

from __future__ import annotations

import onnx

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult


class Cleanup(Pass):
    name = "cleanup"
    summary = "remove Identity/no-op Dropout, dead nodes, unused initializers"
    numerics = "exact"

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g = model.graph
        skipped: list[tuple[str, str]] = []
        identities = _remove_identities(g, skipped)
        dead = G.remove_dead_nodes(g)
        unused = G.remove_unused_initializers(g)
        stale = G.remove_stale_value_info(g)
        counters = {
            "identities_removed": identities,
            "dead_nodes_removed": dead,
            "initializers_removed": unused,
        }
        return PassResult(model, bool(identities or dead or unused or stale), counters, skipped)


def _is_noop(
    node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]], outputs: set[str]
) -> bool:
    if node.op_type == "Identity":
        return len(node.input) == 1 and bool(node.input[0])
    if node.op_type == "Dropout":
        # Inference: Dropout is the identity when training_mode is absent/false.
        if len(node.input) >= 3 and node.input[2]:
            return False
        mask_used = (
            len(node.output) > 1
            and node.output[1]
            and (readers.get(node.output[1]) or node.output[1] in outputs)
        )
        return not mask_used
    return False


def _remove_identities(g: onnx.GraphProto, skipped: list[tuple[str, str]]) -> int:
    removed = 0
    graph_inputs = {i.name for i in g.input}
    while True:
        outputs = G.graph_output_names(g)
        readers = G.consumers(g)
        made_by = G.producers(g)
        target = None
        for node in g.node:
            if not _is_noop(node, readers, outputs):
                continue
            x, y = node.input[0], node.output[0]
            if y in outputs and (x in graph_inputs or x in outputs or x not in made_by):
                skipped.append(
                    (node.name or y, "joins a graph input/initializer/output to a graph output")
                )
                continue
            target = node
            break
        if target is None:
            return removed
        x, y = target.input[0], target.output[0]
        g.node.remove(target)
        if y in outputs:
            # Producer of x writes y instead; other readers of x follow.
            producer = made_by[x]
            for k, name in enumerate(producer.output):
                if name == x:
                    producer.output[k] = y
            G.rename_input(g, x, y)
        else:
            G.rename_input(g, y, x)
        removed += 1
        # Each scan lists the kept Identity nodes afresh; the last scan's list is the answer.
        skipped.clear()
