"""Per-op channel handlers: how each op moves, joins or freezes channel atoms (its *rule*)
and how it is edited once classes are removed (its *apply*), one :class:`OpHandler` per op
type, in the spirit of Torch-Pruning's per-op pruning functions. See
:mod:`graphslim.channels` for the model.

Custom or unusual ops get a handler through :func:`register_op` (Torch-Pruning's
``register_customized_layer``); an op with no handler freezes every channel it touches, with
the reason recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from graphslim import graph as G
from graphslim.channels.model import Source

if TYPE_CHECKING:
    from graphslim.channels.editor import Editor
    from graphslim.channels.model import ChannelGraph

INT_MAX = 2**62


Rule = Callable[[onnx.NodeProto, "ChannelGraph"], None]
Apply = Callable[[onnx.NodeProto, "ChannelGraph", "Editor"], None]


@dataclass(frozen=True)
class OpHandler:
    """One op type's channel handling: ``rule(node, cg)`` sets the channel slots of the
    node's outputs from its inputs' (or joins / freezes atoms); ``apply(node, cg, editor)``
    slices its constants once the removed classes are known (None: nothing to edit, the op
    only passes channels through)."""

    rule: Rule
    apply: Apply | None = None


HANDLERS: dict[str, OpHandler] = {}


def register_op(
    op_types: str | tuple[str, ...] | list[str],
    rule: Rule,
    apply: Apply | None = None,
    *,
    replace: bool = False,
) -> None:
    """Give ``op_types`` (ONNX op type names) a channel handler.

    Raises ``ValueError`` when one already has a handler and ``replace`` is false (a second
    registration by mistake would silently change how a built-in op prunes), and ``TypeError``
    when ``rule`` / ``apply`` are not callables.
    """
    if isinstance(op_types, str):
        op_types = (op_types,)
    if not callable(rule) or (apply is not None and not callable(apply)):
        raise TypeError("register_op: rule and apply must be callables")
    for op in op_types:
        if op in HANDLERS and not replace:
            raise ValueError(f"register_op: {op} already has a channel handler (replace=True)")
        HANDLERS[op] = OpHandler(rule, apply)


def handler_for(op_type: str) -> OpHandler:
    """The op's handler, or one that freezes its inputs (an op with no channel rule)."""
    return HANDLERS.get(op_type) or _NO_HANDLER


# The built-in handlers below are written as a rule function and an apply function side by
# side; these two decorators pair them up in HANDLERS.
def rule(*ops: str):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = OpHandler(fn, HANDLERS[op].apply if op in HANDLERS else None)
        return fn

    return deco


def applies(*ops: str):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = OpHandler(HANDLERS[op].rule, fn)  # its rule comes first
        return fn

    return deco


node_name = G.node_name  # the channel rules name nodes in freeze reasons


def no_rule(node: onnx.NodeProto, cg: ChannelGraph) -> None:
    cg.freeze_inputs(node, f"{node.op_type} ({node_name(node)}) has no channel rule")


_NO_HANDLER = OpHandler(no_rule)


PASS_THROUGH = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "ThresholdedRelu", "Abs", "Neg",
    "Sqrt", "Reciprocal", "Exp", "Log", "Floor", "Ceil", "Round", "Sign", "Identity",
    "Dropout", "Cast", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "Sin", "Cos", "Not", "IsNaN", "IsInf",
)  # fmt: skip


@rule(*PASS_THROUGH)
def _pass_through(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    if node.op_type == "Clip" and any(cg.const(n) is None for n in node.input[1:] if n):
        cg.freeze(s.atoms, f"Clip ({node_name(node)}) with computed bounds")
        return
    cg.set_slot(node.output[0], s.axis, s.atoms)


@rule("BatchNormalization", "InstanceNormalization")
def _norm(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    if s.axis != 1 or any(not cg.is_init(n) for n in node.input[1:] if n):
        cg.freeze(s.atoms, f"{node.op_type} ({node_name(node)}) parameters are not initializers")
        return
    cg.set_slot(node.output[0], 1, s.atoms)


@applies("BatchNormalization", "InstanceNormalization")
def _norm_apply(node, cg, ed):
    keep = ed.keep(node.input[0])
    if keep is not None:
        for k in range(1, len(node.input)):
            if node.input[k]:  # optional inputs (LayerNormalization's bias) may be absent
                ed.slice_input(node, k, 0, keep)


@rule("LayerNormalization")
def _layer_norm(node, cg):
    """Channels on the one normalized (last) axis, as in ConvNeXt's channels-last blocks:
    pruned with their scale and bias. The statistics then run over the kept channels only,
    so this is lossy like any pruning (Torch-Pruning prunes LayerNorm the same way)."""
    s = cg.slot(node.input[0])
    if s is None:
        return
    r = cg.rank(node.input[0])
    axis = G.attr(node, "axis", -1) % r if r else None
    params = [n for n in node.input[1:] if n]
    if axis != s.axis or axis != r - 1 or any(not cg.is_init(n) for n in params):
        cg.freeze(s.atoms, f"LayerNormalization ({node_name(node)}) over other axes than channels")
        return
    cg.set_slot(node.output[0], s.axis, s.atoms)


applies("LayerNormalization")(_norm_apply)  # scale and bias sliced like BatchNorm's


@rule("PRelu")
def _prelu(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    slope = cg.const(node.input[1])
    if slope is None:
        cg.freeze(s.atoms, f"PRelu ({node_name(node)}) slope is not constant")
        return
    cg.set_slot(node.output[0], s.axis, s.atoms)


@applies("PRelu")
def _prelu_apply(node, cg, ed):
    keep = ed.keep(node.input[0])
    if keep is not None:
        ed.slice_broadcast(node, 1, cg.rank(node.input[0]), cg.slot(node.input[0]).axis, keep)


@rule("Resize", "Upsample")
def _resize(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    for k in range(1, len(node.input)):
        if node.input[k] and cg.const(node.input[k]) is None:
            cg.freeze(s.atoms, f"{node.op_type} ({node_name(node)}) with computed scales/sizes")
            return
    cg.set_slot(node.output[0], s.axis, s.atoms)


@applies("Resize")
def _resize_apply(node, cg, ed):
    keep = ed.keep(node.input[0])
    if keep is not None and len(node.input) > 3 and node.input[3]:
        sizes = cg.const(node.input[3]).copy()
        sizes[cg.slot(node.input[0]).axis] = len(keep)
        ed.set_input(node, 3, sizes)


@rule("Pad")
def _pad(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    pads = cg.const(node.input[1]) if len(node.input) > 1 else G.attr(node, "pads")
    axes = cg.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if pads is None:
        cg.freeze(s.atoms, f"Pad ({node_name(node)}) with computed pads")
        return
    pads = np.asarray(pads).reshape(2, -1)
    r = cg.rank(node.input[0])
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    if s.axis in axes and np.any(pads[:, axes.index(s.axis)] != 0):
        cg.freeze(s.atoms, f"Pad ({node_name(node)}) pads the channel axis")
        return
    cg.set_slot(node.output[0], s.axis, s.atoms)


def _reduce_axes(node, cg) -> list[int] | None:
    r = cg.rank(node.input[0])
    axes = G.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = cg.const(node.input[1])
        if axes is None:
            return None
    if axes is None or len(axes) == 0:
        return list(range(r)) if r else None
    return sorted(int(a) % r for a in axes)


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceProd")
def _reduce(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    axes = _reduce_axes(node, cg) if cg.rank(node.input[0]) else None
    if axes is None or s.axis in axes:
        cg.freeze(s.atoms, f"{node.op_type} ({node_name(node)}) reduces over channels")
        return
    keepdims = G.attr(node, "keepdims", 1)
    axis = s.axis if keepdims else s.axis - sum(1 for a in axes if a < s.axis)
    cg.set_slot(node.output[0], axis, s.atoms)


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    r = cg.rank(node.input[0])
    axis = G.attr(node, "axis", -1) % r if r else None
    if axis is None or axis == s.axis:
        cg.freeze(s.atoms, f"{node.op_type} ({node_name(node)}) normalizes over channels")
        return
    cg.set_slot(node.output[0], s.axis, s.atoms)


@rule("Transpose")
def _transpose(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    r = cg.rank(node.input[0])
    perm = G.attr(node, "perm") or list(reversed(range(r)))
    cg.set_slot(node.output[0], list(perm).index(s.axis), s.atoms)


@rule("Unsqueeze")
def _unsqueeze(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    axes = G.attr(node, "axes")
    if axes is None:
        axes = cg.const(node.input[1])
    out_rank = cg.rank(node.output[0])
    if axes is None or out_rank is None:
        cg.freeze(s.atoms, f"Unsqueeze ({node_name(node)}) with computed axes")
        return
    axes = sorted(int(a) % out_rank for a in axes)
    axis = s.axis
    for a in axes:
        if a <= axis:
            axis += 1
    cg.set_slot(node.output[0], axis, s.atoms)


@rule("Squeeze")
def _squeeze(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    shape = cg.shapes.get(node.input[0])
    axes = G.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = cg.const(node.input[1])
    if shape is None:
        cg.freeze(s.atoms, f"Squeeze ({node_name(node)}) on a tensor of unknown rank")
        return
    r = len(shape)
    axes = (
        [i for i, d in enumerate(shape) if d == 1] if axes is None else [int(a) % r for a in axes]
    )
    if s.axis in axes:
        cg.freeze(s.atoms, f"Squeeze ({node_name(node)}) removes the channel axis")
        return
    cg.set_slot(node.output[0], s.axis - sum(1 for a in axes if a < s.axis), s.atoms)


@rule("Shape", "Size")
def _shape_only(node, cg):
    """Reads only the shape; whatever is computed from it follows the pruned shape."""


@rule("Concat")
def _concat(node, cg):
    r = cg.rank(node.output[0])
    if r is None:
        return no_rule(node, cg)
    axis = G.attr(node, "axis") % r
    slots = [cg.slot(n) for n in node.input]
    if all(s is None for s in slots):
        return
    if axis in {s.axis for s in slots if s is not None}:
        if any(s is not None and s.axis != axis for s in slots):
            return _freeze_all(node, cg, slots, "mixes channel axes")
        atoms = []
        for name, s in zip(node.input, slots):
            if s is not None:
                atoms.extend(s.atoms)
                continue
            shape = cg.shape(name)
            if shape is None:
                return _freeze_all(node, cg, slots, "concatenates a tensor of unknown channels")
            fresh = cg.new_atoms(shape[axis])
            cg.freeze(fresh, f"Concat ({node_name(node)}) input {name} has no prunable channels")
            atoms.extend(fresh)
        cg.set_slot(node.output[0], axis, atoms)
        return
    # Concat along another axis: every input carries the same channels.
    present = [s for s in slots if s is not None]
    if len(present) != len(slots) or len({s.axis for s in present}) != 1:
        return _freeze_all(node, cg, slots, "concatenates tensors of unknown channels")
    for s in present[1:]:
        cg.join(present[0].atoms, s.atoms)
    cg.set_slot(node.output[0], present[0].axis, present[0].atoms)


def _freeze_all(node, cg, slots, why: str) -> None:
    for s in slots:
        if s is not None:
            cg.freeze(s.atoms, f"{node.op_type} ({node_name(node)}) {why}")


def _split_sizes(node, cg, total: int) -> list[int] | None:
    sizes = cg.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if sizes is None:
        sizes = G.attr(node, "split")
    if sizes is not None:
        return [int(x) for x in sizes]
    if len(node.input) > 1 and node.input[1]:
        return None  # computed sizes
    n = len(node.output)
    chunk = -(-total // n)
    return [min(chunk, total - i * chunk) for i in range(n)]


@rule("Split")
def _split(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    r = cg.rank(node.input[0])
    axis = G.attr(node, "axis", 0) % r
    if axis != s.axis:
        for out in node.output:
            cg.set_slot(out, s.axis, s.atoms)
        return
    sizes = _split_sizes(node, cg, len(s.atoms))
    if sizes is None or sum(sizes) != len(s.atoms):
        cg.freeze(s.atoms, f"Split ({node_name(node)}) with computed sizes")
        return
    start = 0
    for out, n in zip(node.output, sizes):
        cg.set_slot(out, axis, s.atoms[start : start + n])
        start += n


@applies("Split")
def _split_apply(node, cg, ed):
    s = cg.slot(node.input[0])
    if s is None or ed.keep(node.input[0]) is None:
        return
    r = cg.rank(node.input[0])
    if G.attr(node, "axis", 0) % r != s.axis:
        return
    sizes = np.asarray(
        [len(cg.slots[o].atoms) - ed.removed_count(o) for o in node.output], np.int64
    )
    if ed.opset >= 13:
        while len(node.input) < 2:
            node.input.append("")
        ed.set_input(node, 1, sizes)
        for k, a in enumerate(node.attribute):
            if a.name == "num_outputs":
                del node.attribute[k]
                break
    else:
        G.set_attr(node, "split", [int(x) for x in sizes])


@rule("Slice")
def _slice(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    starts, ends, axes, steps = _slice_args(node, cg)
    if starts is None:
        cg.freeze(s.atoms, f"Slice ({node_name(node)}) with computed bounds")
        return
    if s.axis not in axes:
        cg.set_slot(node.output[0], s.axis, s.atoms)
        return
    k = axes.index(s.axis)
    if steps[k] != 1:
        cg.freeze(s.atoms, f"Slice ({node_name(node)}) steps over channels")
        return
    lo, hi, _ = slice(int(starts[k]), int(min(ends[k], INT_MAX)), 1).indices(len(s.atoms))
    cg.set_slot(node.output[0], s.axis, s.atoms[lo:hi])


def _slice_args(node, cg):
    r = cg.rank(node.input[0])
    if len(node.input) >= 3:
        starts, ends = cg.const(node.input[1]), cg.const(node.input[2])
        axes = cg.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = cg.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    else:
        starts, ends, axes = G.attr(node, "starts"), G.attr(node, "ends"), G.attr(node, "axes")
        steps = None
    if starts is None or ends is None or r is None:
        return None, None, None, None
    n = len(starts)
    axes = list(range(n)) if axes is None else [int(a) % r for a in axes]
    steps = [1] * n if steps is None else [int(x) for x in steps]
    return list(starts), list(ends), axes, steps


@applies("Slice")
def _slice_apply(node, cg, ed):
    s = cg.slot(node.input[0])
    keep = ed.keep(node.input[0])
    if s is None or keep is None:
        return
    starts, ends, axes, _ = _slice_args(node, cg)
    if s.axis not in axes:
        return
    k = axes.index(s.axis)
    lo, hi, _ = slice(int(starts[k]), int(min(ends[k], INT_MAX)), 1).indices(len(s.atoms))
    new_lo, new_hi = int(np.sum(keep < lo)), int(np.sum(keep < hi))
    if len(node.input) >= 3:
        st, en = cg.const(node.input[1]).copy(), cg.const(node.input[2]).copy()
        st[k], en[k] = new_lo, new_hi
        ed.set_input(node, 1, st)
        ed.set_input(node, 2, en)
    else:
        st, en = list(starts), list(ends)
        st[k], en[k] = new_lo, new_hi
        G.set_attr(node, "starts", [int(x) for x in st])
        G.set_attr(node, "ends", [int(x) for x in en])


def _expand(atoms: list[int], inner: int) -> list[int]:
    """Flatten channels with ``inner`` trailing elements each: c*inner + j -> atom c."""
    return [a for a in atoms for _ in range(inner)]


@rule("Flatten")
def _flatten(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    shape = cg.shape(node.input[0])
    axis = G.attr(node, "axis", 1) % len(shape) if shape else None
    # Supported: channels are the first flattened axis ([N, C, H, W] -> [N, C*H*W]).
    if axis is None or s.axis < axis or math.prod(shape[axis : s.axis]) != 1:
        cg.freeze(s.atoms, f"Flatten ({node_name(node)}) merges channels with other axes")
        return
    cg.set_slot(node.output[0], 1, _expand(s.atoms, math.prod(shape[s.axis + 1 :])))


@rule("Reshape")
def _reshape(node, cg):
    s = cg.slot(node.input[0])
    if s is None:
        return
    src, dst = cg.shape(node.input[0]), cg.shape(node.output[0])
    if src is None or dst is None:
        cg.freeze(s.atoms, f"Reshape ({node_name(node)}) between unknown shapes")
        return
    c = s.axis
    if cg.const(node.input[1]) is None:
        cg.freeze(
            s.atoms,
            f"Reshape ({node_name(node)}) with a computed shape; run simplify with fixed input shapes",
        )
        return
    if len(dst) > c and tuple(dst[: c + 1]) == tuple(src[: c + 1]):
        cg.set_slot(node.output[0], c, s.atoms)  # channels kept, later axes regrouped
        return
    if len(dst) == c + 1 and tuple(dst[:c]) == tuple(src[:c]) and dst[c] == math.prod(src[c:]):
        cg.set_slot(node.output[0], c, _expand(s.atoms, math.prod(src[c + 1 :])))
        return
    head, tail = tuple(src[:c]), tuple(src[c + 1 :])
    if (
        len(dst) == len(src) + 1
        and tuple(dst[:c]) == head
        and tuple(dst[c + 2 :]) == tail
        and dst[c] * dst[c + 1] == src[c]
    ):
        # Channel shuffle, first half ([N, C, ...] -> [N, g, C/g, ...]): channel j of every
        # one of the g rows must go together, or the kept grid is not a grid. The rows then
        # carry the same classes: the channels live on axis c+1, axis c only repeats them.
        g, w = dst[c], dst[c + 1]
        for j in range(w):
            cg.join([s.atoms[j]] * (g - 1), [s.atoms[r * w + j] for r in range(1, g)])
        cg.set_slot(node.output[0], c + 1, s.atoms[:w])
        return
    if (
        len(dst) == len(src) - 1
        and c + 1 < len(src)
        and tuple(dst[:c]) == head
        and dst[c] == src[c] * src[c + 1]
        and tuple(dst[c + 1 :]) == tuple(src[c + 2 :])
    ):
        # Channel shuffle, second half ([N, C/g, g, ...] -> [N, C, ...]): each channel is
        # repeated over the merged axis.
        cg.set_slot(node.output[0], c, _expand(s.atoms, src[c + 1]))
        return
    cg.freeze(s.atoms, f"Reshape ({node_name(node)}) changes the channel layout {src} -> {dst}")


@applies("Reshape")
def _reshape_apply(node, cg, ed):
    s = cg.slot(node.input[0])
    keep = ed.keep(node.output[0])
    if s is None or keep is None:
        return
    target = cg.const(node.input[1]).copy()
    c = cg.slot(node.output[0]).axis  # the input's channel axis, or the axis after a split
    if target[c] > 0:
        target[c] = len(keep)
        ed.set_input(node, 1, target)


@rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where")
def _elementwise(node, cg):
    r = cg.rank(node.output[0])
    if r is None:
        return no_rule(node, cg)
    slots = []
    for name in node.input:
        s = cg.slot(name)
        ir = cg.rank(name)
        slots.append((name, s, s.axis + r - ir if s is not None and ir is not None else None))
    axes = {ax for _, s, ax in slots if s is not None}
    if not axes:
        return
    if len(axes) > 1:
        return _freeze_all(node, cg, [s for _, s, _ in slots], "mixes channel axes")
    axis = axes.pop()
    present = [s for _, s, _ in slots if s is not None]
    n = len(present[0].atoms)
    for name, s, _ in slots:
        if s is not None:
            if len(s.atoms) != n:
                return _freeze_all(node, cg, [x for _, x, _ in slots], "mixes channel counts")
            continue
        shape = cg.shapes.get(name)
        ir = len(shape) if shape is not None else None
        dim = shape[axis - (r - ir)] if ir is not None and axis - (r - ir) >= 0 else 1
        if dim == 1:
            continue  # broadcast along channels
        if cg.const(name) is None or dim != n:
            why = f"is mixed with {name}, whose channels are unknown"
            return _freeze_all(node, cg, [x for _, x, _ in slots], why)
    for s in present[1:]:
        cg.join(present[0].atoms, s.atoms)
    cg.set_slot(node.output[0], axis, present[0].atoms)


@applies("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where")
def _elementwise_apply(node, cg, ed):
    out = cg.slot(node.output[0])
    keep = ed.keep(node.output[0])
    if out is None or keep is None:
        return
    r = cg.rank(node.output[0])
    for k, name in enumerate(node.input):
        if cg.slot(name) is None and cg.const(name) is not None:
            ed.slice_broadcast(node, k, r, out.axis, keep)


# ---------------------------------------------------------------- compute ops


@rule("Conv")
def _conv(node, cg):
    x = cg.slot(node.input[0])
    w = cg.const(node.input[1]) if cg.is_init(node.input[1]) else None
    if w is None:
        why = _not_initializer(cg, node.input[1])
        cg.freeze_inputs(node, f"Conv ({node_name(node)}) {why}")
        return _frozen_output(node, cg, why)
    if any(n and not cg.is_init(n) for n in node.input[2:]):
        cg.freeze_inputs(node, f"Conv ({node_name(node)}) bias is not an initializer")
        return _frozen_output(node, cg, "bias is not an initializer")
    group = G.attr(node, "group", 1)
    cout, cin_g = w.shape[0], w.shape[1]
    if group == 1:
        if x is not None and x.axis != 1:
            cg.freeze(x.atoms, f"Conv ({node_name(node)}) input channels are not on axis 1")
        _source(node, cg, cout)
        _tie_shared_weight(node, cg)
        return
    if cin_g == 1 and x is not None and len(x.atoms) == group:
        mult = cout // group
        if mult == 1:
            cg.set_slot(node.output[0], 1, x.atoms)
        else:
            out = cg.new_atoms(cout)
            for o, a in enumerate(out):
                cg.uf.union(a, x.atoms[o // mult])
            cg.set_slot(node.output[0], 1, out)
        return
    if x is not None and x.axis == 1 and len(x.atoms) == group * cin_g and cout % group == 0:
        # A grouped Conv (RegNet, ResNeXt) is pruned by whole groups: the input channels of
        # group g and its output channels are one class.
        per_out = cout // group
        out = cg.new_atoms(cout)
        for g in range(group):
            block = x.atoms[g * cin_g : (g + 1) * cin_g] + out[g * per_out : (g + 1) * per_out]
            for a in block[1:]:
                cg.uf.union(block[0], a)
        cg.set_slot(node.output[0], 1, out)
        return
    reason = f"grouped Conv ({node_name(node)}, group={group}) is not pruned"
    cg.freeze_inputs(node, reason)
    _frozen_output(node, cg, reason, cout)


def _not_initializer(cg, name: str) -> str:
    """Why a weight cannot be sliced, and what the user can do about it."""
    made_by = cg._made_by.get(name)
    if made_by is not None and made_by.op_type == "Constant":
        return "weight is a Constant node (run constants-to-initializers first)"
    if made_by is not None and made_by.op_type == "DequantizeLinear":
        return "weight is quantized (DequantizeLinear): prune the float model, then quantize"
    if made_by is None:
        return "weight is a graph input, not an initializer"
    return f"weight is computed by {made_by.op_type} ({node_name(made_by)}), not an initializer"


def _frozen_output(node, cg, reason: str, channels: int | None = None) -> None:
    shape = cg.shape(node.output[0])
    n = channels if channels is not None else (shape[1] if shape and len(shape) > 1 else None)
    if n is not None:
        atoms = cg.new_atoms(n)
        cg.freeze(atoms, f"{node.op_type} ({node_name(node)}): {reason}")
        cg.set_slot(node.output[0], 1, atoms)


def _source(node, cg, channels: int, axis: int = 1) -> None:
    atoms = cg.new_atoms(channels)
    for o, a in enumerate(atoms):
        cg.atom_source[a] = (node_name(node), o)
    cg.set_slot(node.output[0], axis, atoms)
    cg.sources[node_name(node)] = Source(node_name(node), node.op_type, node.output[0], channels)


def _tie_shared_weight(node, cg) -> None:
    """Convs that share a weight tensor must keep the same filters and input channels."""
    for other in cg.readers(node.input[1]):
        if other is node or other.op_type != node.op_type or other.output[0] not in cg.slots:
            continue
        cg.join(cg.slots[other.output[0]].atoms, cg.slots[node.output[0]].atoms)
        a, b = cg.slot(other.input[0]), cg.slot(node.input[0])
        if a is not None and b is not None:
            cg.join(a.atoms, b.atoms)
        elif a is not None or b is not None:
            cg.freeze(
                (a or b).atoms, f"{node_name(node)} shares its weight with {node_name(other)}"
            )
        break


@applies("Conv")
def _conv_apply(node, cg, ed):
    group = G.attr(node, "group", 1)
    keep_out = ed.keep(node.output[0])
    keep_in = ed.keep(node.input[0])
    if group == 1:
        if keep_out is not None:
            ed.slice_input(node, 1, 0, keep_out)
            if len(node.input) > 2 and node.input[2]:
                ed.slice_input(node, 2, 0, keep_out)
        if keep_in is not None:
            ed.slice_input(node, 1, 1, keep_in)
        return
    if keep_out is not None:  # depthwise / grouped: whole groups go, in and out together
        ed.slice_input(node, 1, 0, keep_out)
        if len(node.input) > 2 and node.input[2]:
            ed.slice_input(node, 2, 0, keep_out)
    if keep_in is not None:
        cin_g = cg.const(node.input[1]).shape[1]
        G.set_attr(node, "group", len(keep_in) // cin_g)


@rule("ConvTranspose")
def _conv_transpose(node, cg):
    w = cg.const(node.input[1]) if cg.is_init(node.input[1]) else None
    x = cg.slot(node.input[0])
    if w is None or G.attr(node, "group", 1) != 1 or (x is not None and x.axis != 1):
        reason = "weight is not an initializer or group != 1"
        cg.freeze_inputs(node, f"ConvTranspose ({node_name(node)}): {reason}")
        return _frozen_output(node, cg, reason)
    _source(node, cg, w.shape[1])


@applies("ConvTranspose")
def _conv_transpose_apply(node, cg, ed):
    keep_out, keep_in = ed.keep(node.output[0]), ed.keep(node.input[0])
    if keep_out is not None:
        ed.slice_input(node, 1, 1, keep_out)
        if len(node.input) > 2 and node.input[2]:
            ed.slice_input(node, 2, 0, keep_out)
    if keep_in is not None:
        ed.slice_input(node, 1, 0, keep_in)


@rule("Gemm")
def _gemm(node, cg):
    x = cg.slot(node.input[0])
    w = cg.const(node.input[1]) if cg.is_init(node.input[1]) else None
    ok = w is not None and not G.attr(node, "transA", 0) and (x is None or x.axis == 1)
    ok = ok and all(cg.is_init(n) for n in node.input[2:] if n)
    if not ok:
        reason = "weight is not an initializer or transA=1"
        cg.freeze_inputs(node, f"Gemm ({node_name(node)}): {reason}")
        return _frozen_output(node, cg, reason)
    n = w.shape[0] if G.attr(node, "transB", 0) else w.shape[1]
    _source(node, cg, n)


@applies("Gemm")
def _gemm_apply(node, cg, ed):
    trans_b = G.attr(node, "transB", 0)
    keep_out, keep_in = ed.keep(node.output[0]), ed.keep(node.input[0])
    if keep_out is not None:
        ed.slice_input(node, 1, 0 if trans_b else 1, keep_out)
        if len(node.input) > 2 and node.input[2]:
            c = cg.const(node.input[2])
            if c.ndim >= 1 and c.shape[-1] > 1:
                ed.slice_input(node, 2, c.ndim - 1, keep_out)
    if keep_in is not None:
        ed.slice_input(node, 1, 1 if trans_b else 0, keep_in)


@rule("MatMul")
def _matmul(node, cg):
    x = cg.slot(node.input[0])
    w = cg.const(node.input[1]) if cg.is_init(node.input[1]) else None
    r = cg.rank(node.input[0])
    if w is None or w.ndim != 2 or r is None or (x is not None and x.axis != r - 1):
        cg.freeze_inputs(node, f"MatMul ({node_name(node)}) is not x @ constant on the last axis")
        return
    _source(node, cg, w.shape[1], axis=r - 1)


@applies("MatMul")
def _matmul_apply(node, cg, ed):
    keep_out, keep_in = ed.keep(node.output[0]), ed.keep(node.input[0])
    if keep_out is not None:
        ed.slice_input(node, 1, 1, keep_out)
    if keep_in is not None:
        ed.slice_input(node, 1, 0, keep_in)
