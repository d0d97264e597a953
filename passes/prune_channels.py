"""prune-channels: remove whole channels from the convolutions of any CNN ONNX graph.

The channel analysis (:mod:`graphslim.channels`) splits the graph's channels into classes
that must go together and groups of classes that share sources (residual Adds, SE gates,
shared weights); frozen groups (graph outputs, detection-head layouts, ops without a rule)
are left alone with their reason. The pruning itself is the library
:mod:`graphslim.pruning` (the sensitivity analysis calls the same code):

1. the model is read through a canonical working copy (Constant-node weights, Identity
   reads and deduplicated initializers seen through, :mod:`graphslim.pruning.canonical`);
2. exactly-zero channels go first, whatever the ratio (lossless);
3. importance per class: ``l1`` = mean |W[o]|, ``l2`` = sqrt(mean W[o]^2), ``bn-scale`` =
   |gamma[o]| of the BatchNormalization after the source, ``activation`` = mean |y[o]| on
   the context's feeds; each source's score is divided by its mean (members vote equally);
4. selection: ``uniform`` (``ratio`` of each group), ``global`` (one ranking), ``overrides``
   per group; ``target_macs`` bisects the ratio; ``budget`` (``latency=0.5`` / ``macs=0.5``)
   gives every group its own ratio, least measured output error first
   (:mod:`graphslim.pruning.budget`);
5. the same indices leave every member of a group, removed means are compensated
   (``compensate``, on calibration feeds) and consumers refit by least squares
   (``reconstruct``);
6. the MACs reached are compared with the MACs asked: a miss of more than a tenth is in the
   record with the freeze reasons that cause it (``strict=true``: an error).
"""

from __future__ import annotations

import onnx

from graphslim.contract import Pass, PassContext, PassResult
from graphslim.pruning.options import PruneOptions
from graphslim.pruning.prune import prune


class PruneChannels(Pass):
    name = "prune-channels"
    summary = "structured channel pruning with channel groups (residual/concat/split safe)"
    numerics = "lossy"
    in_place = False  # returns a new model; the input is left as it was
    Options = PruneOptions
    after = ("constants-to-initializers", "fold-bn", "simplify")
    before = ("quantize-int8",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return prune(model, self.options, ctx)
