"""The channel graph's data: slots, sources, groups and the union-find that joins atoms
(see :mod:`graphslim.channels` for the model)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from networkx.utils import UnionFind
from onnx import numpy_helper

from graphslim import graph as G


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
    # Channels of a source per class: 1, or a grouped Conv's input channels per group (its
    # groups are removed whole, so each class is that many channels).
    width: int = 1
    # The classes split into the pieces that compute nodes read separately (a C2f's Split
    # halves, a Concat's inputs): rounding applies per piece, so that every Conv's input
    # channel count is a multiple too. Empty: one piece, all classes.
    parts: list[list[int]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return len(self.classes) * self.width


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
        for grp in by_root.values():
            atoms = self.slots[self.sources[grp.sources[0]].tensor].atoms
            grp.width = max(1, len(atoms) // max(1, len({self.uf[a] for a in atoms})))
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
