"""Writing a pruning decision into the model: weight slices and constant updates."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim import graph as G
from graphslim.channels.rules import handler_for, node_name


class Editor:
    """Applies a chosen set of removed classes to the model, rule by rule.

    Weight slices are collected first and written at the end: an initializer read by one
    node (or by several that need the very same slices, like two convs sharing a weight) is
    edited in place and keeps its name; one whose readers need different slices gets a
    private copy per distinct slicing (``<name>_pruned``, ``_1``, ...).
    """

    def __init__(self, cg, removed: set[int], model: onnx.ModelProto | None = None) -> None:
        """``model``: edit this copy of ``cg.model`` instead (same graph, node for node; the
        rules look channels up by tensor name), so one analysis serves many candidates."""
        self.cg = cg
        self.removed = removed
        self.model = cg.model if model is None else model
        self.opset = G.opset_version(cg.model)
        self._ops: dict[tuple[int, int], tuple[onnx.NodeProto, list]] = {}
        self._inits = G.initializers(self.model.graph)
        self._taken = G.all_names(self.model.graph)
        # Readers per tensor, kept current as inputs are rewired (one index, not a scan of
        # every node per question: that was quadratic on big graphs).
        self._readers = Counter(i for n in self.model.graph.node for i in n.input if i)

    def _rewire(self, node: onnx.NodeProto, k: int, new: str) -> None:
        self._readers[node.input[k]] -= 1
        self._readers[new] += 1
        node.input[k] = new

    def keep(self, tensor: str) -> np.ndarray | None:
        return self.cg.kept_positions(tensor, self.removed)

    def removed_count(self, tensor: str) -> int:
        s = self.cg.slots.get(tensor)
        return 0 if s is None else sum(1 for a in s.atoms if self.cg.uf[a] in self.removed)

    def slice_input(self, node: onnx.NodeProto, k: int, axis: int, keep: np.ndarray) -> None:
        """Keep ``keep`` along ``axis`` of the initializer feeding input ``k`` of ``node``."""
        entry = self._ops.setdefault((id(node), k), (node, []))
        entry[1].append((axis, tuple(int(i) for i in keep)))

    def slice_broadcast(self, node, k: int, out_rank: int, out_axis: int, keep) -> None:
        """Slice a constant operand that broadcasts against a channel slot of ``out_rank``."""
        value = self.cg.const(node.input[k])
        axis = out_axis - (out_rank - value.ndim)
        if axis < 0 or value.shape[axis] == 1:
            return
        self.set_input(node, k, np.take(value, keep, axis=axis))

    def set_input(self, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        """Give input ``k`` of ``node`` a new constant (small: shapes, sizes, per-channel
        operands): edited in place when only this node reads it, else a private copy."""
        name = node.input[k]
        t = self._inits.get(name) if name else None
        dtype = tensor_dtype(t) if t is not None else np.asarray(value).dtype
        array = np.asarray(value, dtype=dtype)
        if t is not None and self._uses(name) == 1:
            t.CopyFrom(numpy_helper.from_array(array, name))
            return
        stem = name.split("/")[-1] if name else f"in{k}"
        new = G.unique_name(self._taken, f"{node_name(node)}/{stem}")
        self.model.graph.initializer.append(numpy_helper.from_array(array, new))
        self._inits[new] = self.model.graph.initializer[-1]
        self._rewire(node, k, new)

    def _uses(self, name: str) -> int:
        return self._readers[name]

    def apply(self) -> None:
        for node in list(self.model.graph.node):
            fn = handler_for(node.op_type).apply
            if fn is not None:
                fn(node, self.cg, self)
        self._write_slices()
        del self.model.graph.value_info[:]

    def _write_slices(self) -> None:
        by_name: dict[str, list[tuple[onnx.NodeProto, int, tuple]]] = defaultdict(list)
        for (_, k), (node, ops) in self._ops.items():
            by_name[node.input[k]].append((node, k, tuple(ops)))
        for name, uses in by_name.items():
            t = self._inits[name]
            base = numpy_helper.to_array(t)
            signatures = list(dict.fromkeys(ops for _, _, ops in uses))
            in_place = len(signatures) == 1 and self._uses(name) == len(uses)
            for sig in signatures:
                value = base
                for axis, keep in sig:
                    value = np.take(value, np.asarray(keep, np.int64), axis=axis)
                value = np.ascontiguousarray(value)
                if in_place:
                    t.CopyFrom(numpy_helper.from_array(value, name))
                    continue
                new = G.unique_name(self._taken, f"{name}_pruned")
                self.model.graph.initializer.append(numpy_helper.from_array(value, new))
                for node, k, ops in uses:
                    if ops == sig:
                        self._rewire(node, k, new)


def tensor_dtype(t: onnx.TensorProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
