"""Building the channel graph of a model: every node's handler moves, joins or freezes the
atoms of its inputs (see :mod:`graphslim.channels`)."""

from __future__ import annotations

import onnx

from graphslim import graph as G
from graphslim.channels.model import ChannelGraph, ChannelGroup
from graphslim.channels.rules import handler_for, no_rule, node_name
from graphslim.metrics import (
    COMPUTE_OPS,
    infer_shapes,
    is_static,
    node_cost,
    node_costs,
    runtime_shapes,
)


def analyze(model: onnx.ModelProto, input_shapes: dict | None = None) -> ChannelGraph:
    """Build the channel graph of ``model`` (not modified)."""
    input_shapes = input_shapes or _batch_one(model)
    shapes = infer_shapes(model, input_shapes)
    g = model.graph
    wanted = {n for node in g.node for n in list(node.input) + list(node.output) if n}
    # Symbolic dims count as unknown too: MACs and the Reshape rule need ints.
    missing = sorted(n for n in wanted if not is_static(shapes.get(n)))
    if missing:
        shapes.update(runtime_shapes(model, missing, input_shapes))
    cg = ChannelGraph(model, shapes)
    cg._index()
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            no_rule(node, cg)
            continue
        if any(True for _ in G.subgraphs(node)):
            cg.freeze_inputs(node, f"{node.op_type} ({node_name(node)}) has subgraphs")
            for sub in G.subgraphs(node):
                for name in G.outer_scope_reads(sub):
                    s = cg.slot(name)
                    if s is not None:
                        cg.freeze(s.atoms, f"read inside the subgraph of {node_name(node)}")
            continue
        handler_for(node.op_type).rule(node, cg)
    for out in g.output:
        s = cg.slot(out.name)
        if s is not None:
            cg.freeze(s.atoms, f"reaches graph output '{out.name}'")
    cg.finish()
    _group_macs(cg)
    _split_parts(cg)
    return cg


READERS_THAT_ROUND = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Nodes whose input channel count a runtime's kernels care about (blocking, alignment)."""


def _split_parts(cg: ChannelGraph) -> None:
    """Set each group's ``parts``: the coarsest split of its classes such that the classes any
    compute node reads from the group are a union of parts (a C2f's second Split half feeds a
    bottleneck Conv; the Concat of all pieces feeds cv2). Rounding each part to ``round_to``
    then makes every Conv's input, and every source's output, a multiple of it: onnxruntime
    runs a Conv blocked (NCHWc) only when its input channels are a multiple of the block too.
    """
    reads = []
    for node in cg.model.graph.node:
        if node.op_type in READERS_THAT_ROUND and node.input:
            slot = cg.slot(node.input[0])
            if slot is not None:
                reads.append({cg.class_of(a) for a in slot.atoms})
    for grp in cg.groups:
        parts = [list(grp.classes)]
        mine = set(grp.classes)
        for read in reads:
            inter = read & mine
            if not inter or inter == mine:
                continue
            parts = [
                piece
                for part in parts
                for piece in ([c for c in part if c in inter], [c for c in part if c not in inter])
                if piece
            ]
        grp.parts = parts if len(parts) > 1 else []


def _batch_one(model: onnx.ModelProto) -> dict | None:
    """Input shapes with a symbolic batch ("N") set to 1, so that shape inference gives ints;
    None when the inputs are static or have other unknown dims (left to onnxruntime)."""
    from graphslim.feeds import FeedError, input_specs, resolve_shapes

    specs = input_specs(model)
    if all(s.is_static for s in specs):
        return None
    try:
        return resolve_shapes(specs)
    except FeedError:
        return None


def _group_macs(cg: ChannelGraph) -> None:
    """MACs of compute nodes whose input or output channels belong to each group."""
    owner: dict[int, ChannelGroup] = {c: grp for grp in cg.groups for c in grp.classes}
    for node in cg.model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        cost = node_cost(node, cg.shapes).macs or 0
        touched = set()
        for t in (node.input[0], node.output[0]):
            s = cg.slot(t)
            if s is not None:
                for a in s.atoms:
                    grp = owner.get(cg.uf[a])
                    if grp is not None:
                        touched.add(grp.id)
        for gid in touched:
            cg.groups[gid].macs += cost // len(touched)


def report(cg: ChannelGraph) -> dict:
    """A JSON-able account of the analysis: groups, frozen groups with reasons, prunable share.

    MACs shares are of the compute nodes whose channels a group touches (a node touching two
    groups counts half for each), so ``prunable_macs_share`` is the part of the model's
    convolution/GEMM work that pruning can reduce.
    """
    total = sum(c.macs or 0 for c in node_costs(cg.model))
    groups = []
    for grp in cg.groups:
        groups.append(
            {
                "id": grp.id,
                "sources": grp.sources,
                "channels": grp.channels,
                "macs": grp.macs,
                "macs_share": grp.macs / total if total else 0.0,
                "frozen": grp.frozen,
            }
        )
    prunable = sum(g["macs"] for g in groups if not g["frozen"])
    return {
        "groups": groups,
        "total_macs": total,
        "prunable_macs_share": prunable / total if total else 0.0,
        "groups_prunable": sum(1 for g in groups if not g["frozen"]),
        "groups_frozen": sum(1 for g in groups if g["frozen"]),
    }
