"""Compensation and ``reconstruct`` after pruning: least-squares refit of the Convs that lost input channels.

For a Conv ``y = W * x + b`` whose input lost channels, with ``Y`` its output in the
*unpruned* model and ``X'`` its (pruned) input in the pruned model, both on the same feeds,
choose the remaining weights ``W'`` to minimize ``|| im2col(X') W'^T + b - Y ||^2`` over
sampled output positions (AIMET's channel-pruning reconstruction). With ``P`` the sampled
patches and ``T = Y - b`` the targets: ``W' = (P^T P + l I)^-1 P^T T`` (``l`` a tiny ridge
term for rank-deficient patches). The refit is kept only where it lowers the error.

Layers are refit in topological *waves*: a wave holds layers none of which feeds another,
and each wave sees inputs computed with the previous waves already refit (one-shot refitting
compounds: each layer fits inputs that upstream refits then change). The solve is pulled
towards the current weights, ``W' = (P^T P + l I)^-1 (P^T T + l W)``, so a layer with few
informative patches stays near where it was instead of fitting noise with huge weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.channels import ChannelGraph
from graphslim.channels.editor import tensor_dtype
from graphslim.contract import PassContext
from graphslim.runtime import Session, with_outputs

log = logging.getLogger(__name__)


def _feeds(model: onnx.ModelProto, ctx: PassContext):
    return ctx.feeds_or_random(
        model,
        4,
        warn="prune-channels reconstruct: no calibration feeds; refitting on random inputs, "
        "which rarely helps real data (pass --calib IMAGES)",
    )


def _run_with(model: onnx.ModelProto, names: list[str], feeds) -> list[dict[str, np.ndarray]]:
    with Session(with_outputs(model, names), label="reconstruction probe") as s:
        return [s.run(f, names) for f in feeds]


def capture(model: onnx.ModelProto, cg: ChannelGraph, removed: set[int], ctx: PassContext) -> dict:
    """Before pruning: pick the Convs to refit and record their original outputs."""
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv" or G.attr(node, "group", 1) != 1:
            continue
        if G.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            continue
        keep_in = cg.kept_positions(node.input[0], removed)
        if keep_in is None:
            continue
        keep_out = cg.kept_positions(node.output[0], removed)
        layers.append({"node": node, "keep_out": keep_out})
    if not layers:
        return {"layers": [], "feeds": []}
    feeds = _feeds(model, ctx)
    outs = _run_with(model, [layer["node"].output[0] for layer in layers], feeds)
    for layer in layers:
        y = np.concatenate([o[layer["node"].output[0]] for o in outs]).astype(np.float64)
        if layer["keep_out"] is not None:
            y = y[:, layer["keep_out"]]
        layer["target"] = y
    return {"layers": layers, "feeds": feeds}


def refit(
    model: onnx.ModelProto, reference: dict, ctx: PassContext, max_samples: int
) -> list[dict]:
    """After pruning: refit each captured Conv; returns per-layer relative errors."""
    layers = reference["layers"]
    if not layers:
        return []
    inits = G.initializers(model.graph)
    details = []
    for wave in _waves(model, layers):
        xs = _run_with(model, [layer["node"].input[0] for layer in wave], reference["feeds"])
        for layer in wave:
            details.append(_refit_one(layer, xs, inits, ctx, max_samples))
    return details


def _waves(model: onnx.ModelProto, layers: list[dict]) -> list[list[dict]]:
    """Split layers (in graph order) into runs where no layer depends on another's output."""
    import networkx as nx

    g = nx.DiGraph()
    made_by = G.producers(model.graph)
    for node in model.graph.node:
        for name in node.input:
            if name in made_by:
                g.add_edge(made_by[name].output[0], node.output[0])
    waves: list[list[dict]] = []
    current: list[dict] = []
    outputs: set[str] = set()
    for layer in layers:
        node = layer["node"]
        src = made_by.get(node.input[0])
        ancestors = nx.ancestors(g, src.output[0]) | {src.output[0]} if src is not None else set()
        if ancestors & outputs:
            waves.append(current)
            current, outputs = [], set()
        current.append(layer)
        outputs.add(node.output[0])
    if current:
        waves.append(current)
    return waves


def _refit_one(layer: dict, xs, inits, ctx: PassContext, max_samples: int) -> dict:
    node = layer["node"]
    x = np.concatenate([o[node.input[0]] for o in xs]).astype(np.float64)
    w_t = inits[node.input[1]]
    w = numpy_helper.to_array(w_t).astype(np.float64)
    b = _bias(node, inits, w.shape[0])
    patches, rows = _sample_patches(
        x, node, w.shape[2:], layer["target"].shape[2:], max_samples, ctx.rng
    )
    target = _sample_targets(layer["target"], rows) - b
    flat = w.reshape(w.shape[0], -1)
    before = _rel(patches @ flat.T, target)
    gram = patches.T @ patches
    ridge = 1e-3 * np.trace(gram) / max(gram.shape[0], 1) + 1e-12
    rhs = patches.T @ target + ridge * flat.T
    new = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), rhs).T
    after = _rel(patches @ new.T, target)
    if after < before:
        w_t.CopyFrom(
            numpy_helper.from_array(new.reshape(w.shape).astype(tensor_dtype(w_t)), w_t.name)
        )
    return {"node": G.node_name(node), "before": before, "after": min(after, before)}


def _bias(node, inits, cout: int) -> np.ndarray:
    if len(node.input) > 2 and node.input[2]:
        return numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    return np.zeros(cout)


def _sample_patches(x, node, kernel, out_hw, max_samples, rng):
    """Rows of im2col(x) at sampled output positions: ([S, C*kh*kw], (n, i, j) indices)."""
    nd = len(kernel)
    pads = G.attr(node, "pads", [0] * 2 * nd)
    strides = G.attr(node, "strides", [1] * nd)
    dil = G.attr(node, "dilations", [1] * nd)
    width = [(p0, p1) for p0, p1 in zip(pads[:nd], pads[nd:])]
    xp = np.pad(x, [(0, 0), (0, 0)] + width)
    span = tuple(d * (k - 1) + 1 for d, k in zip(dil, kernel))
    win = sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(0, o * s, s) for o, s in zip(out_hw, strides))
    sl += tuple(slice(None, None, d) for d in dil)
    win = win[sl]  # [N, C, *out, *kernel]
    n = x.shape[0]
    total = n * int(np.prod(out_hw))
    idx = rng.choice(total, size=min(max_samples, total), replace=False)
    pos = np.unravel_index(idx, (n,) + tuple(out_hw))
    picked = win[(pos[0], slice(None)) + tuple(pos[1:])]  # [S, C, *kernel]
    return picked.reshape(len(idx), -1), pos


def _sample_targets(y, pos) -> np.ndarray:
    return y[(pos[0], slice(None)) + tuple(pos[1:])]


def _rel(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(pred - target) / (np.linalg.norm(target) + 1e-12))


def conv_input_means(model: onnx.ModelProto, cg: ChannelGraph, feeds) -> dict[str, np.ndarray]:
    """Per-channel mean of every group-1 Conv's input on ``feeds`` (tensor -> [C]): what
    :func:`mean_compensation` needs for any set of removed classes, measured once."""
    names = sorted(
        {n.input[0] for n in model.graph.node
         if n.op_type == "Conv" and G.attr(n, "group", 1) == 1
         and (s := cg.slot(n.input[0])) is not None and s.axis == 1}
    )  # fmt: skip
    if not names or not feeds:
        return {}
    sums: dict[str, np.ndarray] = {}
    with Session(with_outputs(model, names), label="channel means") as session:
        for f in feeds:  # one feed at a time: activations reduced as they come
            out = session.run(f, names)
            for n in names:
                x = np.asarray(out[n], np.float64)
                m = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=(0, 2))
                sums[n] = sums.get(n, 0.0) + m
    return {n: v / len(feeds) for n, v in sums.items()}


def mean_compensation(
    model: onnx.ModelProto,
    cg: ChannelGraph,
    removed: set[int],
    ctx: PassContext,
    means: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Bias corrections that keep the *mean* of what removed channels contributed.

    A removed input channel ``c`` of a Conv ``y = W * x + b`` took ``W[:, c] * x_c`` with it.
    Its mean part, ``sum_k W[:, c, k] * E[x_c]``, is put back into the bias, which matters
    where removed channels are far from zero: after a depthwise Conv with a bias, a
    BatchNorm shift or a HardSwish, a pruned channel is a near-constant offset, not noise.
    ``E[x_c]`` is the spatial and sample mean on the calibration feeds (``means``, from
    :func:`conv_input_means`, when the caller measured them already); without calibration feeds it comes from BatchNorm
    statistics where the graph has them (:func:`bn_channel_means`), else that Conv is not
    compensated. Returns Conv node name -> delta for its output channels, to add after
    pruning (rows of removed output channels dropped then).
    """
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv" or G.attr(node, "group", 1) != 1:
            continue
        s = cg.slot(node.input[0])
        if s is None or s.axis != 1:
            continue
        gone = [i for i, a in enumerate(s.atoms) if cg.uf[a] in removed]
        if gone:
            layers.append((node, gone))
    if not layers:
        return {}
    inits = G.initializers(model.graph)
    by_node: dict[str, np.ndarray] = {}
    if ctx.feeds:
        if means is None:
            means = conv_input_means(model, cg, ctx.feeds)
        for node, gone in layers:
            if node.input[0] in means:
                by_node[G.node_name(node)] = means[node.input[0]][gone]
    else:
        # Means of random noise say nothing about real data: without calibration feeds,
        # only channels whose distribution the graph states (BatchNorm statistics) are
        # compensated, data-free.
        made_by = G.producers(model.graph)
        for node, gone in layers:
            mean = bn_channel_means(node.input[0], made_by, inits)
            if mean is not None:
                by_node[G.node_name(node)] = mean[gone]
    deltas = {}
    for node, gone in layers:
        mean = by_node.get(G.node_name(node))
        if mean is None:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        taps = w[:, gone].reshape(w.shape[0], len(gone), -1).sum(axis=2)
        deltas[G.node_name(node)] = taps @ mean
    return deltas


def apply_compensation(
    model: onnx.ModelProto, cg: ChannelGraph, removed: set[int], deltas: dict[str, np.ndarray]
) -> int:
    """Add the deltas to the (pruned) Convs' biases; returns how many Convs changed."""
    if not deltas:
        return 0
    inits = G.initializers(model.graph)
    taken = G.all_names(model.graph)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    changed = 0
    for node in model.graph.node:
        delta = deltas.get(G.node_name(node))
        if delta is None or node.op_type != "Conv" or not np.any(delta):
            continue
        keep = cg.kept_positions(node.output[0], removed)
        if keep is not None:
            delta = delta[keep]
        w_t = inits[node.input[1]]
        dtype = tensor_dtype(w_t)
        name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if name and uses.get(name, 0) == 1:
            b = numpy_helper.to_array(inits[name]).astype(np.float64) + delta
            inits[name].CopyFrom(numpy_helper.from_array(b.astype(dtype), name))
        else:
            base = numpy_helper.to_array(inits[name]).astype(np.float64) if name else 0.0
            new = G.unique_name(taken, f"{w_t.name}_bias" if not name else f"{name}_compensated")
            model.graph.initializer.append(
                numpy_helper.from_array((base + delta).astype(dtype), new)
            )
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = new
        changed += 1
    return changed


# ------------------------------------------------------------------ data-free means

_HERMITE = np.polynomial.hermite.hermgauss(48)


def _act(node: onnx.NodeProto, made_by, z_name: str):
    """f such that ``node``'s output is f(z) elementwise, for z = tensor ``z_name``; None
    for an op that is not an activation of z alone."""
    op = node.op_type
    if op == "Relu":
        return lambda z: np.maximum(z, 0.0)
    if op == "LeakyRelu":
        a = G.attr(node, "alpha", 0.01)
        return lambda z: np.where(z > 0, z, a * z)
    if op == "Sigmoid":
        return lambda z: 1.0 / (1.0 + np.exp(-z))
    if op == "HardSigmoid":
        a, b = G.attr(node, "alpha", 0.2), G.attr(node, "beta", 0.5)
        return lambda z: np.clip(a * z + b, 0.0, 1.0)
    if op == "HardSwish":
        return lambda z: z * np.clip(z / 6.0 + 0.5, 0.0, 1.0)
    if op == "Tanh":
        return np.tanh
    if op == "Mul" and len(node.input) == 2 and z_name in node.input:
        other = node.input[1] if node.input[0] == z_name else node.input[0]
        gate = made_by.get(other)
        if gate is not None and gate.op_type == "Sigmoid" and gate.input[0] == z_name:
            return lambda z: z / (1.0 + np.exp(-z))  # SiLU as Sigmoid * x
    return None


def bn_channel_means(tensor: str, made_by: dict, inits: dict) -> np.ndarray | None:
    """Per-channel mean of ``tensor`` from BatchNorm statistics, data-free.

    A BatchNormalization output is ``z_c = gamma_c * x_hat + beta_c`` with ``x_hat``
    normalized by the running statistics, so on data like the training data
    ``z_c ~ N(beta_c, gamma_c^2)`` and ``E[z_c] = beta_c``; after an elementwise activation
    ``f``, ``E[f(z_c)] = 1/sqrt(pi) sum_i w_i f(beta_c + sqrt(2) |gamma_c| t_i)``
    (Gauss-Hermite quadrature, 48 points). Recognized: ``tensor`` is a BatchNorm's output,
    or Relu / LeakyRelu / Sigmoid / HardSigmoid / HardSwish / Tanh / SiLU (Sigmoid * x) of
    one. None otherwise (folded BatchNorm: the statistics are gone)."""
    node = made_by.get(tensor)
    act = None
    if node is not None and node.op_type != "BatchNormalization":
        z = node.input[0]
        if node.op_type == "Mul":  # SiLU: Mul(z, Sigmoid(z)) in either order
            z = next((i for i in node.input if made_by.get(i) is not None
                      and made_by[i].op_type == "BatchNormalization"), "")  # fmt: skip
        act = _act(node, made_by, z) if z else None
        node = made_by.get(z) if act is not None else None
    if node is None or node.op_type != "BatchNormalization" or len(node.input) < 3:
        return None
    if node.input[1] not in inits or node.input[2] not in inits:
        return None
    gamma = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    beta = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    if act is None:
        return beta
    t, w = _HERMITE
    z = beta[:, None] + np.sqrt(2.0) * np.abs(gamma)[:, None] * t[None, :]
    return (act(z) * w[None, :]).sum(axis=1) / np.sqrt(np.pi)
