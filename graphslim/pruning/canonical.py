"""A working copy of a model in which every weight a pruner edits is an initializer that the
editing node reads directly.

Plain exports hide weights from a pruner in three ways, and each is seen through here:

* ``Constant`` nodes hold the weights (Paddle exports, some TF converters): they become
  initializers of the same name (:func:`graphslim.graph.constants_to_initializers`);
* torch.onnx deduplicates identical initializers and reaches the copies through
  ``Identity`` nodes (the zero biases left by BatchNorm fusion become one shared tensor
  read by every Conv through an Identity): Identity and no-op Dropout are bypassed
  (:func:`graphslim.graph.remove_noop_nodes`), so each Conv reads the shared tensor itself;
* a tensor shared by several consumers is edited copy-on-write by the channel editor
  (:class:`graphslim.channels.Editor`): a reader whose slicing differs gets a private copy,
  so each group is pruned as if its weights were its own. (Two Convs that read one *weight*
  tensor are tied instead: pruned alike, the weight stays shared.)

Values and names of every graph input and output are unchanged: the copy computes exactly
what the model computes.
"""

from __future__ import annotations

import onnx

from graphslim import graph as G


def canonical_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """(copy, counters): ``constants_converted`` and ``identities_bypassed``."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    converted, _ = G.constants_to_initializers(work)
    bypassed = G.remove_noop_nodes(g, [])
    if bypassed:
        G.remove_stale_value_info(g)
    return work, {"constants_converted": converted, "identities_bypassed": bypassed}
