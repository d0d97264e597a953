"""Size and cost of a model: parameters, multiply-accumulates (MACs), shapes.

MACs are counted for the ops that carry the compute of a CNN, from inferred shapes:

* Conv:          MACs = prod(Y.shape) * prod(W.shape[1:])   = N*Cout*H'*W' * (Cin/group)*kh*kw
* ConvTranspose: MACs = prod(X.shape) * prod(W.shape[1:])   = N*Cin*H*W * (Cout/group)*kh*kw
* Gemm:          MACs = M * N * K
* MatMul:        MACs = prod(Y.shape) * K                   (batch dims broadcast)

Biases, activations, pooling and element-wise ops are not counted (ultralytics/thop count
the same way, and report FLOPs = 2 * MACs). Shapes come from ONNX shape inference on a
weightless copy of the model (cheap even for multi-GB models); where it cannot resolve a
shape and the input shapes are static, one onnxruntime run fills the gaps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphslim.graph import attr, node_name, real_inputs

log = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}
Shape = tuple  # of int | str | None


@dataclass
class NodeCost:
    name: str
    op_type: str
    macs: int | None
    kind: str = ""  # conv flavour: depthwise / grouped(g=2) / pointwise / kxk
    output_shape: Shape | None = None


@dataclass
class ModelStats:
    nodes: int
    params: int
    macs: int | None  # None when some compute node's shape is unknown
    macs_by_op: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # compute nodes whose MACs are unknown


def param_count(model: onnx.ModelProto) -> int:
    """Elements of float initializers and float Constant-node tensors (Paddle-style weights)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type in _FLOAT_TYPES:
            total += math.prod(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                    total += math.prod(a.t.dims)
    return total


def weightless_copy(model: onnx.ModelProto, keep_elements: int = 4096) -> onnx.ModelProto:
    """A copy whose large tensors have dims but no data: enough for shape inference.

    Built field by field, so that the big initializers' payloads are never copied (a whole
    ``CopyFrom`` copied 273 MB per call on YOLOv8x only to clear it again)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for t in model.graph.initializer:
        if math.prod(t.dims) > keep_elements:
            light.graph.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
        else:
            light.graph.initializer.add().CopyFrom(t)
    for node in light.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and math.prod(a.t.dims) > keep_elements:
                    _drop_payload(a.t)
    return light


CHECK_WEIGHTLESS_BYTES = 64 * 2**20
"""Above this size the checker gets a weightless copy: it serializes what it is given, which
costs seconds on a big model to re-check payloads that numpy wrote and onnxruntime loads
right after anyway; the structure it checks is the same."""


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or for a big one (also over protobuf's 2 GB) a copy the ONNX checker
    takes quickly: big tensors lose their data, and their dims too (the checker rejects a
    tensor whose data does not fill its shape); the structure it checks (names, order, ops,
    attributes, opsets) is unchanged."""
    from graphslim.model_io import model_nbytes

    if model_nbytes(model) < CHECK_WEIGHTLESS_BYTES:
        return model
    light = weightless_copy(model)
    tensors = list(light.graph.initializer) + [
        a.t for n in light.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    for t in tensors:
        if t.data_type != onnx.TensorProto.STRING and not _has_data(t):
            del t.dims[:]
            t.dims.append(0)
    return light


def _has_data(t: onnx.TensorProto) -> bool:
    fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    return t.HasField("raw_data") or any(len(getattr(t, f)) for f in fields)


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of the message ``src`` into ``dst`` except ``skip``."""
    for descriptor, value in src.ListFields():
        if descriptor.name == skip:
            continue
        target = getattr(dst, descriptor.name)
        if hasattr(target, "extend"):  # a repeated field
            target.extend(value)
        elif hasattr(target, "CopyFrom"):  # a message
            target.CopyFrom(value)
        else:
            setattr(dst, descriptor.name, value)


def _drop_payload(t: onnx.TensorProto) -> None:
    for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(f)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.DEFAULT


def infer_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, Shape]:
    """Tensor name -> shape (ints for known dims, str for symbolic, None for unknown)."""
    light = weightless_copy(model)
    if input_shapes:
        _set_input_shapes(light, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # shape inference is best effort; report, keep what we have
        log.warning("ONNX shape inference failed (%s); MACs may be incomplete", exc)
        inferred = light
    shapes: dict[str, Shape] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        s = _vi_shape(vi)
        if s is not None:
            shapes[vi.name] = s
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
    return shapes


def _set_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    for vi in model.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            new = input_shapes[vi.name]
            del dims[:]
            for d in new:
                dims.add().dim_value = int(d)


def _vi_shape(vi: onnx.ValueInfoProto) -> Shape | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def node_work(model: onnx.ModelProto, shapes: dict[str, Shape]) -> dict[str, float]:
    """Node name -> its work: MACs for Conv/ConvTranspose/Gemm/MatMul, output elements for
    any other op (0 where the output shape is not static). The unit the latency model and
    the per-op limit scale node times by."""
    work = {}
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            work[node_name(node)] = float(node_cost(node, shapes).macs or 0)
        else:
            s = shapes.get(node.output[0]) if node.output else None
            work[node_name(node)] = float(math.prod(s)) if is_static(s) else 0.0
    return work


def node_costs(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> list[NodeCost]:
    """MACs of every compute node (Conv, ConvTranspose, Gemm, MatMul), in graph order."""
    shapes = infer_shapes(model, input_shapes)
    wanted = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    missing = [
        name
        for n in wanted
        for name in list(n.input[:2]) + [n.output[0]]
        if name and not is_static(shapes.get(name))
    ]
    if missing:
        shapes.update(runtime_shapes(model, missing, input_shapes))
    return [node_cost(n, shapes) for n in wanted]


def runtime_shapes(
    model: onnx.ModelProto, names: list[str], input_shapes: dict[str, tuple[int, ...]] | None
) -> dict[str, Shape]:
    """Shapes by running the model once in onnxruntime with the tensors as extra outputs."""
    from graphslim.feeds import FeedError, random_feeds

    try:
        feeds = random_feeds(model, count=1, seed=0, shapes=input_shapes)[0]
    except FeedError as exc:
        log.info("MACs of some nodes unknown: %s", exc)
        return {}
    from graphslim.runtime import run_model, with_outputs

    probe = with_outputs(model, names)
    try:
        values = run_model(probe, [feeds], output_names=[o.name for o in probe.graph.output])[0]
    except Exception as exc:  # the count degrades to "unknown", it never fails inspect
        log.info("could not run the model to find shapes (%s)", exc)
        return {}
    return {k: tuple(np.asarray(v).shape) for k, v in values.items()}


def node_cost(node: onnx.NodeProto, shapes: dict[str, Shape]) -> NodeCost:
    op = node.op_type
    x = shapes.get(node.input[0])
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    y = shapes.get(node.output[0])
    macs: int | None = None
    kind = ""
    if op == "Conv" and is_static(y) and is_static(w):
        macs = math.prod(y) * math.prod(w[1:])
        kind = _conv_kind(node, w)
    elif op == "ConvTranspose" and is_static(x) and is_static(w):
        macs = math.prod(x) * math.prod(w[1:])
        kind = _conv_kind(node, w)
    elif op == "Gemm" and is_static(y) and is_static(x):
        k = x[0] if attr(node, "transA", 0) else x[1]
        macs = math.prod(y) * k
    elif op == "MatMul" and is_static(y) and is_static(x):
        macs = math.prod(y) * x[-1] if len(x) >= 1 else None
    return NodeCost(node_name(node), op, macs, kind, y)


def _conv_kind(node: onnx.NodeProto, w: Shape) -> str:
    group = attr(node, "group", 1)
    k = "x".join(str(d) for d in w[2:]) or "1"
    if group > 1:
        cin = w[1] * group if node.op_type == "Conv" else w[0]
        if w[1] == 1 and node.op_type == "Conv" and cin == group:
            return f"depthwise {k}"
        return f"grouped(g={group}) {k}"
    return "pointwise" if all(d == 1 for d in w[2:]) else k


def model_stats(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ModelStats:
    costs = node_costs(model, input_shapes)
    by_op: dict[str, int] = {}
    unknown = []
    for c in costs:
        if c.macs is None:
            unknown.append(c.name)
        else:
            by_op[c.op_type] = by_op.get(c.op_type, 0) + c.macs
    total = None if unknown else sum(by_op.values())
    return ModelStats(
        nodes=len(model.graph.node),
        params=param_count(model),
        macs=total,
        macs_by_op=by_op,
        unknown=unknown,
    )


def io_signature(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Graph inputs (fed at run time) and outputs as {name, dtype, shape}."""

    def row(vi: onnx.ValueInfoProto) -> dict:
        et = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(et).name if et else "?"
        return {"name": vi.name, "dtype": dtype, "shape": list(_vi_shape(vi) or [])}

    return [row(v) for v in real_inputs(model.graph)], [row(v) for v in model.graph.output]
