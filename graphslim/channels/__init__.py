"""Channel analysis: which channels of which tensors must be pruned together.

A channel *slot* is ``(tensor, axis)``: the axis of a tensor that carries channels. Every
position on a slot is labelled with an *atom*; atoms that must go together are joined in a
union-find (networkx's ``UnionFind``), and a joined set is a *channel class*:

* a source (Conv with group 1, ConvTranspose, Gemm, MatMul with a constant weight) makes one
  fresh atom per output channel; its weight rows (and bias) belong to them;
* channel-preserving ops (BatchNormalization, activations, pooling, Resize, Pad, ...) pass the
  atoms through; a Transpose moves them to another axis;
* element-wise ops with two channel-carrying operands (residual Add, SE Mul) join the
  atoms position by position; per-channel constant operands are sliced with them;
* Concat on the channel axis concatenates atom lists (index offsets), Split/Slice cut them;
  Flatten/Reshape into a Gemm repeats each atom once per spatial position (index expansion);
* a depthwise Conv ties input and output channels; two Convs sharing one weight tensor tie
  their channels.

A class is *frozen* (never pruned) when one of its atoms reaches a graph output, an op with
no rule, a layout change the rules cannot map (a detection head's box reshape, a channel
shuffle), or is mixed with a tensor whose channels are unknown; the reason is kept. A
*group* is the set of classes whose sources are linked by joins: all members of a group
vote on importance, and the same indices go from every member.

Each rule also knows how to *apply* a pruning: given the kept positions of every slot, it
slices weights, per-channel parameters and constants, and updates shape-carrying inputs
(Split sizes, Slice bounds, Reshape targets, Resize sizes).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from networkx.utils import UnionFind
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.metrics import COMPUTE_OPS, infer_shapes

log = logging.getLogger(__name__)


@dataclass
class Slot:
    axis: int
    atoms: list[int]


@dataclass
class Source:
    """A node whose output channels can be removed, with how to slice its weights."""

    node: str
    op_type: str
    tensor: str
    channels: int


@dataclass
class ChannelGroup:
    id: int
    sources: list[str]
    classes: list[int]  # class roots, in order of first appearance
    frozen: str | None = None  # reason, when frozen
    macs: int = 0  # MACs of the sources (and their consumers' share) touching this group

    @property
    def channels(self) -> int:
        return len(self.classes)


@dataclass
class ChannelGraph:
    model: onnx.ModelProto
    shapes: dict[str, tuple]
    slots: dict[str, Slot] = field(default_factory=dict)
    uf: UnionFind = field(default_factory=UnionFind)
    atom_source: dict[int, tuple[str, int]] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    groups: list[ChannelGroup] = field(default_factory=list)
    next_atom: int = 0

    # ------------------------------------------------------------------ building blocks
    def new_atoms(self, n: int) -> list[int]:
        atoms = list(range(self.next_atom, self.next_atom + n))
        self.next_atom += n
        for a in atoms:
            self.uf[a]  # register
        return atoms

    def slot(self, tensor: str) -> Slot | None:
        return self.slots.get(tensor)

    def set_slot(self, tensor: str, axis: int, atoms: list[int]) -> None:
        if tensor:
            self.slots[tensor] = Slot(axis, list(atoms))

    def join(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b):
            self.uf.union(x, y)

    def freeze(self, atoms: list[int], reason: str) -> None:
        for a in atoms:
            self.frozen.setdefault(a, reason)

    def freeze_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for name in node.input:
            s = self.slot(name)
            if s is not None:
                self.freeze(s.atoms, reason)

    def shape(self, tensor: str) -> tuple | None:
        s = self.shapes.get(tensor)
        if s is None or not all(isinstance(d, int) and d >= 0 for d in s):
            return None
        return s

    def rank(self, tensor: str) -> int | None:
        s = self.shapes.get(tensor)
        return len(s) if s is not None else None

    def const(self, tensor: str) -> np.ndarray | None:
        if not tensor:
            return None
        t = self._inits.get(tensor)
        if t is not None:
            return numpy_helper.to_array(t)
        node = self._made_by.get(tensor)
        if node is not None and node.op_type == "Constant":
            return G.constant_node_value(node)
        return None

    def is_init(self, tensor: str) -> bool:
        return tensor in self._inits

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self._readers.get(tensor, [])

    def class_of(self, atom: int) -> int:
        return self.uf[atom]

    def _index(self) -> None:
        g = self.model.graph
        self._inits = G.initializers(g)
        self._made_by = G.producers(g)
        self._readers = G.consumers(g)

    # ------------------------------------------------------------------ results
    def frozen_reason(self, cls: int) -> str | None:
        return self._class_frozen.get(cls)

    def finish(self) -> None:
        """Group classes by linked sources; mark frozen classes and groups."""
        self._class_frozen: dict[int, str] = {}
        for a, why in self.frozen.items():
            self._class_frozen.setdefault(self.uf[a], why)
        link = UnionFind()
        cls_sources: dict[int, list[str]] = defaultdict(list)
        for atom, (src, _) in self.atom_source.items():
            cls = self.uf[atom]
            link[src]
            if cls_sources[cls] and cls_sources[cls][-1] != src:
                link.union(cls_sources[cls][-1], src)
            if src not in cls_sources[cls]:
                cls_sources[cls].append(src)
        by_root: dict[str, ChannelGroup] = {}
        seen: set[int] = set()
        for name, src in self.sources.items():
            root = link[name]
            grp = by_root.get(root)
            if grp is None:
                grp = ChannelGroup(id=len(by_root), sources=[], classes=[])
                by_root[root] = grp
            grp.sources.append(name)
            for atom in self.slots[src.tensor].atoms:
                cls = self.uf[atom]
                if cls not in seen:
                    seen.add(cls)
                    grp.classes.append(cls)
        for grp in by_root.values():
            reasons = [self._class_frozen[c] for c in grp.classes if c in self._class_frozen]
            if reasons:
                grp.frozen = reasons[0]
        self.groups = list(by_root.values())

    def kept_positions(self, tensor: str, removed: set[int]) -> np.ndarray | None:
        """Indices kept on ``tensor``'s channel axis, or None when nothing changes."""
        s = self.slots.get(tensor)
        if s is None:
            return None
        keep = [i for i, a in enumerate(s.atoms) if self.uf[a] not in removed]
        if len(keep) == len(s.atoms):
            return None
        return np.asarray(keep, dtype=np.int64)


# ====================================================================== analysis


def analyze(model: onnx.ModelProto, input_shapes: dict | None = None) -> ChannelGraph:
    """Build the channel graph of ``model`` (not modified)."""
    from graphslim.metrics import _runtime_shapes, _static

    input_shapes = input_shapes or _batch_one(model)
    shapes = infer_shapes(model, input_shapes)
    g = model.graph
    wanted = {n for node in g.node for n in list(node.input) + list(node.output) if n}
    # Symbolic dims count as unknown too: MACs and the Reshape rule need ints.
    missing = sorted(n for n in wanted if not _static(shapes.get(n)))
    if missing:
        shapes.update(_runtime_shapes(model, missing, input_shapes))
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
        RULES.get(node.op_type, no_rule)(node, cg)
    for out in g.output:
        s = cg.slot(out.name)
        if s is not None:
            cg.freeze(s.atoms, f"reaches graph output '{out.name}'")
    cg.finish()
    _group_macs(cg)
    return cg


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
    from graphslim.metrics import _cost

    owner: dict[int, ChannelGroup] = {c: grp for grp in cg.groups for c in grp.classes}
    for node in cg.model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        cost = _cost(node, cg.shapes).macs or 0
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


# Rules register themselves on import; the editor applies them.
from graphslim.channels.editor import Editor  # noqa: E402
from graphslim.channels.rules import RULES, no_rule, node_name  # noqa: E402

__all__ = ["ChannelGraph", "ChannelGroup", "Editor", "Slot", "Source", "analyze"]


def report(cg: ChannelGraph) -> dict:
    """A JSON-able account of the analysis: groups, frozen groups with reasons, prunable share.

    MACs shares are of the compute nodes whose channels a group touches (a node touching two
    groups counts half for each), so ``prunable_macs_share`` is the part of the model's
    convolution/GEMM work that pruning can reduce.
    """
    from graphslim.metrics import node_costs

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
