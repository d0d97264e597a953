"""What ``graphslim inspect`` reports about a model: I/O, size, parameters, MACs, op mix."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from graphslim.graph import count_by, opset_version
from graphslim.metrics import io_signature, node_costs, param_count


@dataclass
class ModelSummary:
    path: str | None
    file_bytes: int | None
    ir_version: int
    opset: int
    producer: str
    inputs: list[dict]
    outputs: list[dict]
    nodes: int
    params: int
    initializer_bytes: int
    macs: int | None
    macs_known: int
    macs_by_op: dict[str, int]
    macs_by_kind: dict[str, int]
    unknown_macs: list[str]
    top_nodes: list[dict]
    op_histogram: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    model: onnx.ModelProto,
    path: str | os.PathLike | None = None,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    top: int = 10,
) -> ModelSummary:
    costs = node_costs(model, input_shapes)
    by_op: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for c in costs:
        if c.macs is None:
            continue
        by_op[c.op_type] = by_op.get(c.op_type, 0) + c.macs
        key = f"{c.op_type} {c.kind}".strip()
        by_kind[key] = by_kind.get(key, 0) + c.macs
    known = sum(by_op.values())
    unknown = [c.name for c in costs if c.macs is None]
    ranked = sorted((c for c in costs if c.macs), key=lambda c: -c.macs)[:top]
    inputs, outputs = io_signature(model)
    file_bytes = None
    if path is not None:
        p = Path(path)
        file_bytes = p.stat().st_size
        data = p.with_name(p.name + ".data")
        file_bytes += data.stat().st_size if data.exists() else 0
    return ModelSummary(
        path=str(path) if path is not None else None,
        file_bytes=file_bytes,
        ir_version=model.ir_version,
        opset=opset_version(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
        nodes=len(model.graph.node),
        params=param_count(model),
        initializer_bytes=sum(_nbytes(t) for t in model.graph.initializer),
        macs=None if unknown else known,
        macs_known=known,
        macs_by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        macs_by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        unknown_macs=unknown,
        top_nodes=[
            {
                "name": c.name,
                "op": c.op_type,
                "kind": c.kind,
                "macs": c.macs,
                "share": c.macs / known if known else 0.0,
                "output_shape": list(c.output_shape or []),
            }
            for c in ranked
        ],
        op_histogram=count_by(n.op_type for n in model.graph.node),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _nbytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    for entry in t.external_data:
        if entry.key == "length":
            return int(entry.value)
    n = 1
    for d in t.dims:
        n *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError):
        itemsize = 4
    return n * itemsize
