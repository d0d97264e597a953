"""convert-fp16's measurement: which nodes stay float32 (the rules are in
:mod:`passes.convert_fp16`'s docstring).

Errors are ``e(t) = max|t16 - t32| / max|t32|`` over the feeds (inf on NaN/Inf or a shape
change). A node's own error comes from one graph holding every node cut loose from its
producers (:func:`local_errors`); the output error from the whole converted model
(:func:`search`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx

from graphslim import graph as G
from graphslim.errors import PreconditionError
from graphslim.runtime import run_model, with_outputs

log = logging.getLogger("graphslim.passes.convert_fp16")

FP16_MAX = 65504.0
MIN_GAIN = 0.05  # a round must cut the output error by this fraction to keep its blocks
PATIENCE = 2  # rounds in a row without that gain end the search


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def all_tensors(model, feeds) -> dict[str, list[np.ndarray]]:
    """Every node output's value on each of ``feeds`` (any dtype)."""
    names = [t for n in model.graph.node for t in n.output if t]
    runs = run_model(with_outputs(model, names), feeds, label="convert-fp16 probe")
    return {name: [r[name] for r in runs] for name in runs[0]}


def _peak(values: list[np.ndarray]) -> float:
    """max |value| over the feeds; inf when any value is not finite."""
    v = [np.asarray(x, dtype=np.float32) for x in values]
    if any(not np.isfinite(x).all() for x in v):
        return math.inf
    return max((float(np.abs(x).max()) if x.size else 0.0 for x in v), default=0.0)


def _is_float(values: list[np.ndarray]) -> bool:
    return all(np.issubdtype(v.dtype, np.floating) for v in values)


def _rel(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """max |got - ref| / max |ref| over the feeds (inf on NaN/Inf or another shape)."""
    if len(got) != len(ref) or any(x.shape != y.shape for x, y in zip(got, ref)):
        return math.inf
    diff = _peak([x.astype(np.float32) - y.astype(np.float32) for x, y in zip(got, ref)])
    return diff / max(_peak(ref), 1e-12)


def local_errors(model, feeds, reference, convert, ops) -> dict[str, float]:
    """Each node's own float16 error: the node run alone in float16 on the float32 reference
    inputs (rounded to float16 as the converted graph would), against its float32 output.

    One graph holds every node cut loose from its producers: each activation input ``t`` of
    a node becomes a graph input of its own, fed the reference value, and every node output
    is a graph output. One conversion and one run measure all nodes at once."""
    cut = copy(model)
    g = cut.graph
    graph_inputs = {v.name for v in g.input} | {t.name for t in g.initializer}
    feeds = [dict(f) for f in feeds]
    for k, node in enumerate(g.node):
        for j, t in enumerate(node.input):
            if not t or t in graph_inputs or t not in reference:
                continue
            name = f"{t}::in{k}.{j}"
            node.input[j] = name
            value = reference[t][0]
            dtype = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            g.input.append(onnx.helper.make_tensor_value_info(name, dtype, list(value.shape)))
            for f, v in zip(feeds, reference[t]):
                f[name] = v
    del g.output[:]
    for node in g.node:
        for t in node.output:
            if t in reference:
                value = reference[t][0]
                dtype = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
                g.output.append(onnx.helper.make_tensor_value_info(t, dtype, list(value.shape)))
    # Inputs and outputs of the cut graph become float16 too (keep_io_types=False): feeding
    # the reference rounded to float16 is the rounding the converted graph applies there.
    half = convert(cut, ops, [], False)
    types = {v.name: v.type.tensor_type.elem_type for v in half.graph.input}
    with np.errstate(over="ignore"):  # beyond 65504 becomes inf, as float16 would hold it
        for f in feeds:
            for name in f:
                if types.get(name) == onnx.TensorProto.FLOAT16:
                    f[name] = f[name].astype(np.float16)
    runs = run_model(half, feeds, label="convert-fp16 per-node probe")
    own: dict[str, float] = {}
    for node in model.graph.node:
        errors = [
            _rel([r[t] for r in runs], reference[t])
            for t in node.output
            if t in reference and t in runs[0] and _is_float(reference[t])
        ]
        if errors:
            own[node.name] = max(errors)
    return own


def search(model, feeds, convert, ops, blocked, o):
    """Overflow, then error (rules in :mod:`passes.convert_fp16`'s docstring); ``o`` is the
    pass's options. Returns ``(worst output max-rel, blocked, notes)``."""
    blocked = dict(blocked)
    notes: list[str] = []
    reference = all_tensors(model, feeds)
    for node in model.graph.node:
        peak = max(
            (
                _peak(reference[t])
                for t in node.output
                if t in reference and _is_float(reference[t])
            ),
            default=0.0,
        )
        if node.name not in blocked and peak > o.headroom * FP16_MAX:
            blocked[node.name] = f"overflow: float32 output reaches {peak:.3g}"
    outputs = [v.name for v in model.graph.output]
    if any(True for n in model.graph.node for _ in G.subgraphs(n)):
        own: dict[str, float] = {}
        notes.append("control flow (If/Loop/Scan): auto_block checked overflow only")
    else:
        own = local_errors(model, feeds, reference, convert, ops)
    op_of = {n.name: n.op_type for n in model.graph.node}
    ranked = sorted(
        ((e, n) for n, e in own.items() if n not in blocked and e > 0 and op_of[n] not in ops),
        key=lambda x: (-x[0], x[1]),
    )
    reference_out = {t: reference[t] for t in outputs if t in reference}
    if len(reference_out) < len(outputs):
        graph_in = {v.name for v in model.graph.input}
        missing = [t for t in outputs if t not in reference and t not in graph_in]
        if missing:
            raise PreconditionError(f"convert-fp16: output {missing[0]!r} has no producer")
    best: tuple[float, dict[str, str]] = (math.inf, dict(blocked))
    taken = stale = 0
    for round_ in range(o.max_rounds + 1):
        half = convert(copy(model), ops, list(blocked), o.keep_io_types)
        runs = run_model(half, feeds, outputs, label="convert-fp16 candidate")
        error = max(
            (_rel([r[t] for r in runs], ref) for t, ref in reference_out.items()), default=0.0
        )
        log.info(
            "convert-fp16 round %d: %d kept in float32, max-rel %.3g", round_, len(blocked), error
        )
        # Keep the best block list seen: blocking more nodes can leave the error where it is
        # (error amplified downstream, not made locally), and then they only cost speed.
        if error < best[0] * (1 - MIN_GAIN):
            best, stale = (error, dict(blocked)), 0
        else:
            stale += 1
        if error <= o.tolerance or stale >= PATIENCE or round_ == o.max_rounds:
            break
        if taken >= min(o.max_blocked, len(ranked)):
            break
        take = min(2**round_, o.max_blocked - taken)
        for e, name in ranked[taken : taken + take]:
            blocked[name] = f"error: own float16 max-rel {e:.3g}"
        taken += take
    error, blocked = best
    return error, blocked, notes
