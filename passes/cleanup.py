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
        identities = G.remove_noop_nodes(g, skipped)
        dead = G.remove_dead_nodes(g)
        unused = G.remove_unused_initializers(g)
        stale = G.remove_stale_value_info(g)
        counters = {
            "identities_removed": identities,
            "dead_nodes_removed": dead,
            "initializers_removed": unused,
        }
        return PassResult(model, bool(identities or dead or unused or stale), counters, skipped)
