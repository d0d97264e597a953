"""Measurements behind ``quantize-int8{auto_exclude=true}``: output error and per-node damage.

Output error (what the search drives down), for one output ``o`` (FP32) and ``q`` (INT8) over
all calibration feeds: the output is cut into *feature columns* along its smallest non-batch
axis (``[1, 3549, 6]`` -> 6 columns: box, objectness, class; ``[N, 4]`` -> 4 logits), and

    err(o, q) = max_c ||q_c - o_c||_2 / ||o_c||_2

so that a small-magnitude column (scores next to pixel coordinates in one tensor) counts as
much as a large one. A model's error is the worst over its outputs.

Per-tensor damage: every float tensor the FP32 and the QDQ model share (same name) is
recorded with onnxruntime's ``qdq_loss_debug.modify_model_output_intermediate_tensors`` and
compared as a signal-to-quantization-noise ratio per channel ``c`` (axis 1; for rank-3 head
tensors the smallest non-batch axis), accumulated over feeds, worst channel kept:

    SQNR(t) = min_c 10 log10( sum ||o_tc||^2 / sum ||q_tc - o_tc||^2 )   [dB, capped at 200]

(onnxruntime's ``compute_signal_to_quantization_noice_ratio`` is the same ratio over the whole
tensor; per channel, a score channel concatenated with pixel coordinates is not drowned.)

A node's *drop* is the SQNR it loses: ``min SQNR(inputs) - min SQNR(outputs)`` (graph inputs
and weights count as exact). Candidates are ranked by the noise they add in linear terms,
``NSR(out) - NSR(in)`` with ``NSR = 10^(-SQNR/10)``: a node that takes an exact image to 42 dB
adds little (1e-4 of the signal), one that takes 40 dB to 0 dB destroys its output. That is
where quantization noise is introduced (its weights or the quantization of the tensors it
reads), which keeping it in float can remove; the worst-SQNR node alone would point at the
model's last node, where errors merely accumulate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

SQNR_CAP_DB = 200.0
_DQ = "DequantizeLinear"
_Q = "QuantizeLinear"


def feature_axis(shape: Sequence[int]) -> int | None:
    """The smallest non-batch axis (the last one on ties), or None for rank <= 1 tensors."""
    if len(shape) < 2:
        return None
    dims = list(shape)[1:]
    smallest = min(dims)
    return len(dims) - dims[::-1].index(smallest)


def output_error(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]
) -> float:
    """Worst column-wise relative L2 error over all outputs (see the module doc)."""
    worst = 0.0
    for name in reference[0]:
        o = np.stack([np.asarray(r[name], np.float64) for r in reference])
        q = np.stack([np.asarray(c[name], np.float64) for c in candidate])
        axis = feature_axis(o.shape[1:])
        if axis is None:
            cols_o, cols_q = o.reshape(1, -1), q.reshape(1, -1)
        else:
            axis += 1  # the stacked feed axis comes first
            cols_o = np.moveaxis(o, axis, 0).reshape(o.shape[axis], -1)
            cols_q = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
        diff = np.linalg.norm(cols_q - cols_o, axis=1)
        norm = np.linalg.norm(cols_o, axis=1)
        rel = np.where(norm > 0, diff / np.maximum(norm, 1e-30), np.where(diff > 0, np.inf, 0.0))
        worst = max(worst, float(rel.max()))
    return worst


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0:
        return SQNR_CAP_DB
    if signal <= 0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))


class TensorRecorder:
    """FP32 intermediate tensors, recorded once, compared with any QDQ model's."""

    def __init__(self, float_path: Path, feeds: Sequence[dict[str, np.ndarray]], workdir: Path):
        self.feeds = list(feeds)
        self.workdir = workdir
        self.shapes = _static_shapes(onnx.load_model(str(float_path), load_external_data=False))
        self.reference = self._record(float_path, "float")

    def _record(self, path: Path, tag: str) -> list[dict[str, np.ndarray]]:
        from onnxruntime.quantization.qdq_loss_debug import (
            modify_model_output_intermediate_tensors,
        )

        augmented = self.workdir / f"{tag}.augmented.onnx"
        modify_model_output_intermediate_tensors(str(path), str(augmented))
        session = _session(augmented)
        names = [o.name for o in session.get_outputs()]
        suffix = "_ReshapedSavedOutput"
        out = []
        for feed in self.feeds:
            values = session.run(names, feed)
            out.append({n[: -len(suffix)]: v for n, v in zip(names, values) if n.endswith(suffix)})
        del session
        augmented.unlink(missing_ok=True)
        return out

    def sqnr(self, qdq_path: Path) -> dict[str, float]:
        """Per tensor name shared by both models: the worst per-channel SQNR in dB."""
        got = self._record(qdq_path, "qdq")
        signal: dict[str, np.ndarray] = {}
        noise: dict[str, np.ndarray] = {}
        for ref, cand in zip(self.reference, got):
            for name, o in ref.items():
                q = cand.get(name)
                if q is None or q.shape != o.shape:
                    continue
                cols_o = _columns(o, self.shapes.get(name))
                cols_d = _columns(q, self.shapes.get(name)) - cols_o
                signal[name] = signal.get(name, 0.0) + np.einsum("ij,ij->i", cols_o, cols_o)
                noise[name] = noise.get(name, 0.0) + np.einsum("ij,ij->i", cols_d, cols_d)
        out = {}
        for name, sig in signal.items():
            # A channel with (almost) no signal is judged against a floor of the tensor's
            # average channel energy, so dead channels do not read as -200 dB.
            floor = 1e-6 * float(sig.mean())
            out[name] = min(
                sqnr_db(max(float(s), floor), float(n)) for s, n in zip(sig, noise[name])
            )
        return out


def channel_axis(shape: Sequence[int]) -> int | None:
    """Channels of an intermediate tensor: axis 1 (NCHW, [N, C]); for rank 3 the smallest
    non-batch axis (a detection head's ``[1, anchors, 5 + nc]`` or ``[1, 4 + nc, anchors]``)."""
    if len(shape) < 2:
        return None
    if len(shape) == 3:
        return feature_axis(shape)
    return 1


def _columns(flat: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    x = flat.astype(np.float64)
    if shape is None or int(np.prod(shape)) != x.size:
        return x.reshape(1, -1)
    axis = channel_axis(shape)
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x.reshape(shape), axis, 0).reshape(shape[axis], -1)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    return out


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def quantized_nodes(qdq: onnx.ModelProto) -> set[str]:
    """Names of non-Q/DQ nodes that read a DequantizeLinear output or feed a QuantizeLinear."""
    dq_out = {o for n in qdq.graph.node if n.op_type == _DQ for o in n.output}
    q_in = {n.input[0] for n in qdq.graph.node if n.op_type == _Q}
    return {
        n.name
        for n in qdq.graph.node
        if n.op_type not in (_Q, _DQ)
        and (any(i in dq_out for i in n.input) or any(o in q_in for o in n.output))
    }


def node_drops(
    float_model: onnx.ModelProto, sqnr: dict[str, float], candidates: set[str]
) -> list[tuple[str, float, float]]:
    """``(node, drop dB, output SQNR dB)`` for candidate nodes, the one adding the most noise
    (``NSR(out) - NSR(in)``, ``NSR = 10^(-SQNR/10)``) first."""
    g = float_model.graph
    exact = {i.name for i in g.input} | {t.name for t in g.initializer}
    exact |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    rows = []
    for node in g.node:
        if node.name not in candidates:
            continue
        outs = [sqnr[o] for o in node.output if o in sqnr]
        if not outs:
            continue
        ins = [sqnr[i] for i in node.input if i in sqnr]
        if ins:
            in_db = min(ins)
        elif all(i in exact for i in node.input if i):
            in_db = SQNR_CAP_DB  # reads only graph inputs and weights
        else:
            in_db = min(outs)  # inputs not measured: no evidence of a drop here
        out_db = min(outs)
        added = _nsr(out_db) - _nsr(in_db)
        rows.append((node.name, in_db - out_db, out_db, added))
    rows.sort(key=lambda r: (-r[3], r[2], r[0]))
    return [r[:3] for r in rows]


def _nsr(db: float) -> float:
    """Noise-to-signal power ratio of an SQNR in dB."""
    return 10.0 ** (-db / 10.0)


def input_producers(float_model: onnx.ModelProto, name: str) -> list[str]:
    """Named nodes that produce the inputs of node ``name``, in input order."""
    by_output = {o: n for n in float_model.graph.node for o in n.output}
    node = next(n for n in float_model.graph.node if n.name == name)
    out = []
    for i in node.input:
        p = by_output.get(i)
        if p is not None and p.name and p.name not in out:
            out.append(p.name)
    return out
