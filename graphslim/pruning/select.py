"""prune-channels helpers: which classes to remove (importance, selection, dead channels)
and what the result will cost (MAC estimate). No graph editing here."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.channels import ChannelGraph, ChannelGroup
from graphslim.contract import PassContext
from graphslim.metrics import COMPUTE_OPS, node_cost


def _nodes_by_name(cg: ChannelGraph) -> dict[str, onnx.NodeProto]:
    return {G.node_name(n): n for n in cg.model.graph.node}


def source_rows(cg: ChannelGraph, node: onnx.NodeProto) -> np.ndarray:
    """The source's filters as rows [out_channels, fan_in] (float64)."""
    w = numpy_helper.to_array(G.initializers(cg.model.graph)[node.input[1]]).astype(np.float64)
    if node.op_type == "ConvTranspose":
        w = np.moveaxis(w, 1, 0)
    elif node.op_type in ("Gemm", "MatMul") and not G.attr(node, "transB", 0):
        w = w.T
    return w.reshape(w.shape[0], -1)


def _source_bias(cg: ChannelGraph, node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2]:
        b = numpy_helper.to_array(G.initializers(cg.model.graph)[node.input[2]])
        return np.broadcast_to(b.reshape(-1), (cg.sources[G.node_name(node)].channels,))
    return None


# ---------------------------------------------------------------- importance


def _filter_scores(cg, node, kind: str, ctx: PassContext, acts) -> np.ndarray:
    rows = source_rows(cg, node)
    if kind == "l2":
        return np.sqrt(np.mean(rows**2, axis=1))
    if kind == "bn-scale":
        gamma = _following_bn_gamma(cg, node)
        if gamma is not None:
            return np.abs(gamma)
    if kind == "activation":
        return acts[node.output[0]]
    return np.mean(np.abs(rows), axis=1)


def _following_bn_gamma(cg: ChannelGraph, node: onnx.NodeProto) -> np.ndarray | None:
    readers = cg.readers(node.output[0])
    if len(readers) == 1 and readers[0].op_type == "BatchNormalization":
        return cg.const(readers[0].input[1]).astype(np.float64)
    return None


def _activation_means(cg: ChannelGraph, groups, ctx: PassContext) -> dict[str, np.ndarray]:
    from graphslim.runtime import Session, with_outputs

    names = sorted({cg.sources[s].tensor for g in groups for s in g.sources})
    feeds = ctx.feeds_or_random(cg.model, 2)
    probe = with_outputs(cg.model, names)
    sums: dict[str, np.ndarray] = {}
    with Session(probe, label="activation probe") as s:
        for f in feeds:
            got = s.run(f, names)
            for n in names:
                axis = cg.slots[n].axis
                a = np.abs(np.moveaxis(got[n].astype(np.float64), axis, 0)).reshape(
                    got[n].shape[axis], -1
                )
                sums[n] = sums.get(n, 0) + a.mean(axis=1)
    return {n: v / len(feeds) for n, v in sums.items()}


def importance_by_class(
    cg: ChannelGraph, groups: list[ChannelGroup], kind: str, ctx: PassContext
) -> dict[int, float]:
    """Class root -> importance: mean over its atoms of the source's normalized score.

    The mean, not the sum: a class with more source atoms (the half of a C2f split that the
    bottlenecks' residual Adds join to two more convs) must not outrank the others just by
    having more voters, which would prune the other half away entirely."""
    nodes = _nodes_by_name(cg)
    acts = _activation_means(cg, groups, ctx) if kind == "activation" and groups else {}
    score: dict[int, float] = defaultdict(float)
    votes: dict[int, int] = defaultdict(int)
    for grp in groups:
        for name in grp.sources:
            node = nodes[name]
            s = _filter_scores(cg, node, kind, ctx, acts)
            s = s / (s.mean() + 1e-12)
            for o, atom in enumerate(cg.slots[node.output[0]].atoms):
                score[cg.uf[atom]] += float(s[o])
                votes[cg.uf[atom]] += 1
    return {c: v / votes[c] for c, v in score.items()}


# ---------------------------------------------------------------- selection


def multiple(round_to: int | str, width: int = 1) -> int:
    """The multiple, in classes of ``width`` channels, that kept counts round up to.

    ``round_to="auto"``: the channel block of onnxruntime's NCHWc convolutions on this
    machine (:func:`graphslim.machine.channel_block`, probed: 8 or 16). A Conv whose output
    channels are not a multiple of it runs unblocked between Reorder nodes: pruned at ratio
    0.5, ShuffleNetV2 runs 54 of its 56 convolutions blocked with ``round_to=8`` and 30 with
    ``round_to=1`` (bench/round_to.py times what that costs)."""
    if round_to == "auto":
        from graphslim.machine import channel_block

        round_to = channel_block()
    return max(1, int(round_to) // width)


def _kept(n: int, ratio: float, round_to: int | str, min_channels: int, width: int = 1) -> int:
    """Classes kept of ``n`` at ``ratio``; ``round_to`` and ``min_channels`` count channels,
    and each class is ``width`` channels (a grouped Conv's whole group)."""
    min_channels = max(1, -(-min_channels // width))
    keep = n - math.floor(ratio * n + 1e-9)
    round_to = multiple(round_to, width)
    if n > round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(min(n, keep), min(n, min_channels), 1)


def select(
    groups: list[ChannelGroup],
    scores: dict[int, float],
    ratios: dict[int, float],
    scope: str,
    round_to: int | str,
    min_channels: int,
    dead: set[int],
) -> set[int]:
    """Classes to remove. ``dead`` classes are removed anyway and count as removed."""
    removed: set[int] = set()
    if scope == "global":
        pool = []
        for g in groups:
            live = [c for c in g.classes if c not in dead]
            mean = np.mean([scores[c] for c in live]) if live else 1.0
            pool.extend((scores[c] / (mean + 1e-12), g.id, c) for c in live)
        pool.sort()
        budget = round(sum(ratios.values()) / max(len(ratios), 1) * len(pool))
        chosen: dict[int, list[int]] = defaultdict(list)
        for _, gid, c in pool[:budget]:
            chosen[gid].append(c)
        per_group = {g.id: len(chosen[g.id]) / max(len(g.classes), 1) for g in groups}
    else:
        per_group = ratios
    for g in groups:
        removed |= _select_group(g, scores, per_group[g.id], round_to, min_channels, dead)
    return removed


def _select_group(
    g: ChannelGroup,
    scores: dict[int, float],
    ratio: float,
    round_to: int | str,
    min_channels: int,
    dead: set[int],
) -> set[int]:
    """The lowest-scored classes of ``g`` at ``ratio``. The count is rounded per part wider
    than the multiple (``g.parts``: the pieces that compute nodes read separately, so every
    Conv's input is a multiple too), each part keeping at least one class unless all of it is
    dead; then, if the group keeps fewer than ``min_channels``, the best removed live classes
    come back."""
    removed: set[int] = set()
    # Parts no wider than the multiple cannot be made multiples: they are pooled and the
    # group's ranking decides among them, as without rounding (and then there is one pool).
    step = multiple(round_to, g.width)
    wide = [p for p in g.parts if len(p) > step] if step > 1 else []
    pool = [c for p in g.parts if len(p) <= step for c in p] if wide else list(g.classes)
    parts = wide + ([pool] if pool else [])
    for part in parts:
        live = sorted((c for c in part if c not in dead), key=lambda c: scores[c])
        if not live:
            continue
        mins = min_channels if len(parts) == 1 else 1
        keep = min(_kept(len(part), ratio, round_to, mins, g.width), len(live))
        removed.update(live[: len(live) - max(keep, 1)])
    if len(parts) > 1:
        floor = min(len(g.classes), max(1, -(-min_channels // g.width)))
        back = sorted((c for c in removed), key=lambda c: -scores[c])
        kept = sum(1 for c in g.classes if c not in dead) - len(removed)
        for c in back[: max(0, floor - kept)]:
            removed.discard(c)
    return removed


def keep_nonempty(
    cg: ChannelGraph,
    groups: list[ChannelGroup],
    removed: set[int],
    scores: dict[int, float],
    min_channels: int,
) -> set[int]:
    """``removed`` less the classes that must stay: each group keeps ``min_channels`` (at
    least 1) even when more of it is dead, and no channel slot loses all of its positions (a
    group-level choice can empty one half of a C2f split: zero-channel convs and Split
    pieces, which most runtimes refuse). The best-scored classes are spared first."""
    removed = set(removed)
    best_first = lambda cs: sorted(cs, key=lambda c: (-scores.get(c, 0.0), c))  # noqa: E731
    for g in groups:
        gone = [c for c in g.classes if c in removed]
        short = min(len(g.classes), max(1, min_channels)) - (len(g.classes) - len(gone))
        removed.difference_update(best_first(gone)[: max(short, 0)])
    for slot in cg.slots.values():
        classes = {cg.uf[a] for a in slot.atoms}
        if classes and classes <= removed:
            removed.discard(best_first(classes)[0])
    return removed


# ---------------------------------------------------------------- dead channels

_ZERO_KEEPING = {
    "Relu", "LeakyRelu", "PRelu", "Tanh", "Elu", "Selu", "Celu", "HardSwish", "Mish", "Gelu",
    "Erf", "Softsign", "Identity", "Dropout", "Cast", "Abs", "Neg", "Sqrt", "Sign", "Round",
    "Floor", "Ceil", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize",
    "Upsample", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Concat", "Split",
    "Slice", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1",
    "Sin",
}  # fmt: skip


def dead_classes(cg: ChannelGraph, groups: list[ChannelGroup]) -> set[int]:
    """Classes whose removal is exact: every source filter and bias is zero, and every
    Conv/Gemm/MatMul that reads a position of the class reads zeros there."""
    nodes = _nodes_by_name(cg)
    dead_atoms: set[int] = set()
    for grp in groups:
        for name in grp.sources:
            node = nodes[name]
            rows = source_rows(cg, node)
            bias = _source_bias(cg, node)
            zero = ~np.any(rows != 0, axis=1)
            if bias is not None:
                zero &= bias == 0
            atoms = cg.slots[node.output[0]].atoms
            dead_atoms.update(atoms[o] for o in np.flatnonzero(zero))
    if not dead_atoms:
        return set()
    zero_at = _propagate_zeros(cg, dead_atoms)
    candidates = {cg.uf[a] for a in dead_atoms}
    # Every source atom of a candidate class must be dead.
    for atom, _ in cg.atom_source.items():
        if cg.uf[atom] in candidates and atom not in dead_atoms:
            candidates.discard(cg.uf[atom])
    for node in cg.model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        s = cg.slot(node.input[0])
        if s is None:
            continue
        zeros = zero_at.get(node.input[0], set())
        for pos, atom in enumerate(s.atoms):
            if cg.uf[atom] in candidates and pos not in zeros:
                candidates.discard(cg.uf[atom])
    prunable = {c for g in groups for c in g.classes}
    return candidates & prunable


def _propagate_zeros(cg: ChannelGraph, dead_atoms: set[int]) -> dict[str, set[int]]:
    """Tensor -> positions on its channel slot that are exactly zero."""
    zero: dict[str, set[int]] = {}
    for node in cg.model.graph.node:
        op = node.op_type
        out = cg.slot(node.output[0]) if node.output else None
        if out is None:
            continue
        name = G.node_name(node)
        if name in cg.sources:
            zero[node.output[0]] = {i for i, a in enumerate(out.atoms) if a in dead_atoms}
            continue
        ins = [(n, cg.slot(n)) for n in node.input if n]
        if op in _ZERO_KEEPING:
            # Positional ops map 0 to 0: an output position is zero when its class is zero in
            # every input that carries it (Concat along a spatial axis joins its inputs).
            z, nz = set(), set()
            for n, s in ins:
                if s is not None:
                    zs = zero.get(n, set())
                    for i, a in enumerate(s.atoms):
                        (z if i in zs else nz).add(cg.uf[a])
            for o in node.output:
                so = cg.slot(o)
                if so is not None:
                    zero[o] = {i for i, a in enumerate(so.atoms) if cg.uf[a] in z - nz}
        elif op in ("Mul", "Div", "Add", "Sub", "Sum", "Max", "Min"):
            zero[node.output[0]] = _binary_zeros(cg, node, zero, out)
        elif op == "BatchNormalization":
            z = zero.get(node.input[0], set())
            gamma, beta, mean, var = (cg.const(n).astype(np.float64) for n in node.input[1:5])
            shift = beta - mean * gamma / np.sqrt(var + G.attr(node, "epsilon", 1e-5))
            zero[node.output[0]] = {i for i in z if shift[i] == 0}
    return zero


def _binary_zeros(cg: ChannelGraph, node, zero, out) -> set[int]:
    r = cg.rank(node.output[0])
    n = len(out.atoms)
    per_input = []
    for name in node.input[: 1 if node.op_type == "Div" else None]:
        s = cg.slot(name)
        if s is not None:
            per_input.append(zero.get(name, set()))
            continue
        value = cg.const(name)
        if value is None:
            per_input.append(set())
            continue
        axis = out.axis - (r - value.ndim)
        if axis < 0 or value.shape[axis] == 1:
            per_input.append(set(range(n)) if not np.any(value) else set())
        else:
            v = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
            per_input.append({i for i in range(n) if not np.any(v[i])})
    if node.op_type in ("Mul", "Div"):
        return set().union(*per_input) if per_input else set()
    result = set(range(n))
    for z in per_input:
        result &= z
    return result


# ---------------------------------------------------------------- cost


def estimate_macs(cg: ChannelGraph, removed: set[int]) -> int:
    """MACs after removing ``removed``: each compute node scales by the kept fraction of its
    input and output channel slots (exact for Conv/Gemm/MatMul; depthwise in == out)."""
    total = 0
    for node in cg.model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        macs = node_cost(node, cg.shapes).macs or 0
        f = 1.0
        depthwise = node.op_type == "Conv" and G.attr(node, "group", 1) > 1
        for t in (node.output[0],) if depthwise else (node.input[0], node.output[0]):
            s = cg.slot(t)
            if s is not None and s.atoms:
                f *= sum(1 for a in s.atoms if cg.uf[a] not in removed) / len(s.atoms)
        total += int(macs * f)
    return total
