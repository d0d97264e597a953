"""target=openvino: drop the re-quantization after ops that only move values.

onnxruntime's QDQ quantizer quantizes the outputs of a Split (MaxPool, Reshape, ...) with the
scale and zero point of its input, so the graph reads ``DQ(s, z) -> Split -> Q(s, z) -> DQ``.
For an op that only selects or moves values (no arithmetic) that second pair is an identity:
every value the op outputs is already on the grid ``(q - z) * s`` of its input, so
``DQ(Q(y)) = y`` exactly. onnxruntime folds such pairs into its integer kernels; OpenVINO does
not: each remaining QuantizeLinear becomes a separate FakeQuantize (an element-wise subgraph
at run time), while a lone ``DQ -> Split`` lets its low-precision transformations carry the
u8 tensor through the Split into the consumers (NNCF's placement for OpenVINO quantizes the
Split's input once, the same way). Removing the pair is exact; this module does only that.

Rule: for a node of :data:`VALUE_MOVING` whose data input is produced by a DequantizeLinear
``(s, z)``, every consumer of its output that is a QuantizeLinear with the same ``(s, z)``
and whose own consumers are all DequantizeLinear ``(s, z)`` is bypassed: the DQs' consumers
read the op's output directly. A tensor that is a graph output is never touched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim import graph as G

# Ops whose outputs are values of their (first) input, moved or selected, never combined:
# MaxPool selects the maximum, which is one of its inputs.
VALUE_MOVING = {
    "Split",
    "Slice",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "MaxPool",
    "DepthToSpace",
    "SpaceToDepth",
}


def drop_requantize(model: onnx.ModelProto) -> int:
    """Bypass the identity Q/DQ pairs after :data:`VALUE_MOVING` ops (module doc), in place;
    returns how many QuantizeLinear nodes were removed (their DQs go with them)."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    producer, consumers = G.producers(g), G.consumers(g)
    outputs = {o.name for o in g.output}

    def qparams(node: onnx.NodeProto):
        if len(node.input) < 3 or node.input[1] not in consts or node.input[2] not in consts:
            return None
        scale = numpy_helper.to_array(consts[node.input[1]])
        zero = numpy_helper.to_array(consts[node.input[2]])
        return scale.tobytes(), zero.dtype.str, zero.tobytes(), node.attribute

    def same(a, b) -> bool:
        return a is not None and b is not None and a[:3] == b[:3] and _axis(a[3]) == _axis(b[3])

    drop: set[int] = set()
    rename: dict[str, str] = {}
    for node in g.node:
        if node.op_type == "Concat":
            # a Concat moves values too when all its inputs share one grid
            srcs = [producer.get(i) for i in node.input]
            if not srcs or any(x is None or x.op_type != "DequantizeLinear" for x in srcs):
                continue
            want = qparams(srcs[0])
            if not all(same(qparams(x), want) for x in srcs[1:]):
                continue
        elif node.op_type in VALUE_MOVING and node.input:
            src = producer.get(node.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                continue
            want = qparams(src)
        else:
            continue
        for out in node.output:
            if out in outputs:
                continue
            for q in consumers.get(out, []):
                if q.op_type != "QuantizeLinear" or not same(qparams(q), want):
                    continue
                dqs = consumers.get(q.output[0], [])
                if q.output[0] in outputs or not dqs:
                    continue
                if not all(d.op_type == "DequantizeLinear" and same(qparams(d), want) for d in dqs):
                    continue
                if any(d.output[0] in outputs for d in dqs):
                    continue
                drop.add(id(q))
                drop.update(id(d) for d in dqs)
                rename.update((d.output[0], out) for d in dqs)
    if not drop:
        return 0
    removed = sum(1 for n in g.node if id(n) in drop and n.op_type == "QuantizeLinear")
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    _drop_unused_initializers(g)
    return removed


def unify_concat_scales(model: onnx.ModelProto) -> int:
    """Give every quantized input of a quantized Concat the Concat output's scale and zero
    point, in place; returns how many Concats were unified.

    A Concat whose inputs arrive on different grids makes OpenVINO requantize each input to
    the output's grid (one element-wise subgraph per input, measured on YOLOv8s: 40 of them);
    NNCF gives all inputs of a Concat one quantizer range for this reason. The output's
    calibrated range (minmax) covers the inputs' ranges; the rule checks it: an input's grid
    moves only when its range ``[(qmin - z) s, (qmax - z) s]`` lies inside the output's, so
    nothing is clipped beyond calibration; an input with a narrower range loses resolution
    (the mixed-range Concats on output paths, where that would erase a branch, are kept float
    before this runs). Applies when each input is ``DQ(Q(t))`` with constant per-tensor
    ``(scale, zero point)`` that only Q/DQ nodes read (onnxruntime shares them between a
    Split's input and outputs: those move together, which is the point) and the output feeds
    QuantizeLinear(s) of one ``(scale, zero point)``; constants already moved to another
    Concat's grid stay (that Concat keeps its requantization)."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    producer, consumers = G.producers(g), G.consumers(g)
    qdq = ("QuantizeLinear", "DequantizeLinear")

    def movable(name: str) -> bool:
        return name in consts and all(c.op_type in qdq for c in consumers.get(name, []))

    moved: set[str] = set()
    count = 0
    for node in g.node:
        if node.op_type != "Concat":
            continue
        qs = [c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"]
        if not qs or len({tuple(q.input[1:3]) for q in qs}) != 1 or len(qs[0].input) < 3:
            continue
        out_scale, out_zero = qs[0].input[1], qs[0].input[2]
        if out_scale not in consts or out_zero not in consts:
            continue
        target = _range(consts[out_scale], consts[out_zero])
        pairs = []
        for i in node.input:
            dq = producer.get(i)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == qdq[1] else None
            if q is None or q.op_type != qdq[0] or len(q.input) < 3 or len(dq.input) < 3:
                break
            if q.input[1:3] != dq.input[1:3]:
                break
            scale, zero = q.input[1], q.input[2]
            if (scale, zero) == (out_scale, out_zero):
                continue
            if not (movable(scale) and movable(zero)) or {scale, zero} & moved:
                break
            lo, hi = _range(consts[scale], consts[zero])
            tol = 1e-6 * max(abs(target[0]), abs(target[1]), 1.0)
            if target is None or lo is None or lo < target[0] - tol or hi > target[1] + tol:
                break
            pairs.append((scale, zero))
        else:
            for scale, zero in pairs:
                _copy_value(consts[out_scale], consts[scale])
                _copy_value(consts[out_zero], consts[zero])
                moved.update((scale, zero))
            count += 1
    return count


def _range(scale: onnx.TensorProto, zero: onnx.TensorProto):
    """``(lo, hi)`` of a per-tensor quantization grid, or ``(None, None)`` if per-channel."""
    s, z = numpy_helper.to_array(scale), numpy_helper.to_array(zero)
    if s.size != 1 or z.size != 1:
        return None, None
    info = np.iinfo(z.dtype)
    s, z = float(s.reshape(())), int(z.reshape(()))
    return (info.min - z) * s, (info.max - z) * s


def _copy_value(src: onnx.TensorProto, dst: onnx.TensorProto) -> None:
    name = dst.name
    dst.CopyFrom(src)
    dst.name = name


def _axis(attrs) -> int:
    for a in attrs:
        if a.name == "axis":
            return int(a.i)
    return 1


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
