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

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult


class ConstantsToInitializers(Pass):
    name = "constants-to-initializers"
    summary = "turn Constant nodes (Paddle-style weights) into initializers"
    numerics = "exact"
    before = ("fold-bn",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        converted, skipped = G.constants_to_initializers(model)
        return PassResult(model, bool(converted), {"constants_converted": converted}, skipped)
