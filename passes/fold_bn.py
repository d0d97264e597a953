"""fold-bn: fold an inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm
that feeds it.

BatchNormalization computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, per channel
``c`` of axis 1. With ``s = gamma / sqrt(var + eps)``:

* Conv (``W[Cout, Cin/g, k...]``):       ``W'[c] = W[c] * s[c]``,   ``b' = (b - mean) * s + beta``
* ConvTranspose (``W[Cin, Cout/g, k...]``): output channel ``c = gi * Cout/g + j`` lives in
  ``W[gi*Cin/g:(gi+1)*Cin/g, j]``; it is scaled by ``s[c]``; the bias as for Conv.
* Gemm (``Y = alpha * A @ B + beta_g * C``, Y ``[M, N]``): column ``c`` of ``B`` (row when
  ``transB``) is scaled by ``s[c]``; ``C' = (beta_g * C - mean) * s + beta`` with ``beta_g = 1``.

The BN node goes and the producer writes the BN's output name, so downstream names are
unchanged. Arithmetic is done in float64 and stored in the weight's dtype. A weight shared
with another node gets a folded copy instead of being edited in place. Declined, with the
reason: BN in training mode, a producer output read elsewhere, non-constant weights or BN
parameters (run constants-to-initializers first), other producers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


class FoldBN(Pass):
    name = "fold-bn"
    summary = "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm"
    numerics = "exact"
    after = ("constants-to-initializers",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        g = model.graph
        skipped: list[tuple[str, str]] = []
        folded = 0
        for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
            reason = _fold(g, bn)
            if reason:
                skipped.append((G.node_name(bn), reason))
            else:
                folded += 1
        return PassResult(model, folded > 0, {"bn_folded": folded}, skipped)


def _fold(g: onnx.GraphProto, bn: onnx.NodeProto) -> str | None:
    if G.attr(bn, "training_mode", 0) or len([o for o in bn.output if o]) > 1:
        return "BatchNormalization in training mode (has running-stat outputs)"
    made_by = G.producers(g)
    prev = made_by.get(bn.input[0])
    if prev is None:
        return "input is a graph input, not a Conv/ConvTranspose/Gemm output"
    if prev.op_type not in FOLDABLE:
        return f"preceded by {prev.op_type} ({prev.name}), not Conv/ConvTranspose/Gemm"
    x = bn.input[0]
    readers = G.consumers(g).get(x, [])
    if len(readers) > 1 or x in G.graph_output_names(g):
        return f"{prev.op_type} output {x!r} is also read elsewhere; folding would change it"
    inits = G.initializers(g)
    params = [inits.get(n) for n in bn.input[1:5]]
    if any(p is None for p in params):
        return "BN scale/bias/mean/var are not initializers (run constants-to-initializers first)"
    w_init = inits.get(prev.input[1])
    if w_init is None:
        return f"weight of {prev.name or prev.op_type} is not an initializer"
    b_name = prev.input[2] if len(prev.input) > 2 and prev.input[2] else None
    if b_name is not None and b_name not in inits:
        return f"bias of {prev.name or prev.op_type} is not an initializer"
    gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
    eps = G.attr(bn, "epsilon", 1e-5)
    s = gamma / np.sqrt(var + eps)
    w = numpy_helper.to_array(w_init)
    b = numpy_helper.to_array(inits[b_name]).astype(np.float64) if b_name else None
    fold = {"Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm}[prev.op_type]
    out = fold(prev, w.astype(np.float64), b, s, mean, beta)
    if isinstance(out, str):
        return out
    new_w, new_b = out
    readers_of = G.consumers(g)
    taken = G.all_names(g)
    _store(g, prev, 1, new_w.astype(w.dtype), w_init.name, readers_of, taken)
    bias_base = _bias_name(w_init.name) if b_name is None else b_name
    _store(
        g, prev, 2, new_b.astype(w.dtype), bias_base, readers_of, taken, exists=b_name is not None
    )
    if prev.op_type == "Gemm":
        G.set_attr(prev, "beta", 1.0)
    # The producer now writes the BN's output; the BN goes.
    prev.output[0] = bn.output[0]
    g.node.remove(bn)
    return None


def _conv(node, w, b, s, mean, beta):
    if w.shape[0] != s.shape[0]:
        return f"Conv has {w.shape[0]} output channels, BN has {s.shape[0]}"
    w2 = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    b0 = b if b is not None else np.zeros_like(s)
    return w2, (b0 - mean) * s + beta


def _conv_transpose(node, w, b, s, mean, beta):
    group = G.attr(node, "group", 1)
    cin, cout_g = w.shape[0], w.shape[1]
    if cout_g * group != s.shape[0]:
        return f"ConvTranspose has {cout_g * group} output channels, BN has {s.shape[0]}"
    wg = w.reshape((group, cin // group, cout_g) + w.shape[2:])
    sg = s.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))
    w2 = (wg * sg).reshape(w.shape)
    b0 = b if b is not None else np.zeros_like(s)
    return w2, (b0 - mean) * s + beta


def _gemm(node, w, b, s, mean, beta):
    if w.ndim != 2:
        return "Gemm weight is not 2-D"
    trans_b = G.attr(node, "transB", 0)
    n = w.shape[0] if trans_b else w.shape[1]
    if n != s.shape[0]:
        return f"Gemm has {n} output features, BN has {s.shape[0]}"
    w2 = w * (s[:, None] if trans_b else s[None, :])
    gemm_beta = G.attr(node, "beta", 1.0)
    c = np.zeros(n) if b is None else gemm_beta * b
    if c.ndim == 2 and c.shape[0] != 1:
        return "Gemm C is a full [M, N] matrix; folding would need it per row"
    c = np.broadcast_to(c.reshape(-1) if c.size == n else c, (n,))
    return w2, (c - mean) * s + beta


def _bias_name(weight: str) -> str:
    return weight[: -len("weight")] + "bias" if weight.endswith("weight") else weight + "_bias"


def _store(g, node, slot, value, name, readers_of, taken, exists=True):
    """Put ``value`` into input ``slot`` of ``node``: edit the initializer in place when only
    this node reads it, else add a new one (``<name>_folded``) for this node alone."""
    shared = exists and len(readers_of.get(name, [])) > 1
    if exists and not shared:
        for k, t in enumerate(g.initializer):
            if t.name == name:
                g.initializer[k].CopyFrom(numpy_helper.from_array(value, name))
                break
        return
    new_name = G.unique_name(taken, f"{name}_folded" if shared else name)
    g.initializer.append(numpy_helper.from_array(value, new_name))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = new_name
