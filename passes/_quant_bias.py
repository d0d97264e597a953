"""Empirical bias correction of the output convolutions of a QDQ model.

Quantization error is not zero-mean: rounding an activation with an asymmetric zero point,
clipping its range, rounding weights -- the INT8 output of a layer ``y_q`` differs from the
float ``y`` by a per-channel offset ``E[y - y_q]`` plus noise. In the last layers of a detector
that offset moves every score the same way: on yolox-det with the OpenVINO placement the five
FP32 detections INT8 lost all had scores 0.26-0.34 and came out at 0.20-0.235, below the 0.25
threshold, at the same boxes (IoU >= 0.85).

Rule (Nagel et al., "Data-Free Quantization", empirical variant; NNCF's and AIMET's bias
correction do the same per layer): for each *output convolution* -- a Conv whose weight is
quantized and whose result reaches a graph output without passing another Conv/Gemm/MatMul --
``delta_c = mean over calibration samples and positions of (y_fp32 - y_int8)`` for each
output channel ``c``, and the Conv's bias becomes ``b + delta`` (its int32 values in the QDQ
model move by ``round(delta_c / s_bias_c)``). These convolutions are side by side, not in
sequence, so one measurement serves all of them. The caller keeps the correction only when
the error on the calibration feeds goes down by ``min_gain``: fitted on a few images, a
correction that barely moves their error fits them, not the model (on yolox-det it did not
bring those five detections back, and cost the boxes: held-out mAP50-95 against FP32 0.961
-> 0.849).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim.passes._quant_ranges import COMPUTE_OPS

log = logging.getLogger("graphslim.passes.quantize_int8")


def output_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Quantized-weight Convs with a quantized int32 bias whose outputs reach a graph output
    through no other compute op (module doc)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = {t.name for t in g.initializer}
    found: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in g.output]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type == "Conv":
            if _bias_dq(n, producer, consts) is not None and _is_dq(producer.get(n.input[1])):
                found[n.name] = n
            continue
        if n.op_type in COMPUTE_OPS:
            continue
        stack += [i for i in n.input if i and i not in consts]
    return list(found.values())


def _is_dq(node) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _bias_dq(conv, producer, consts):
    if len(conv.input) < 3 or not conv.input[2]:
        return None
    dq = producer.get(conv.input[2])
    if not _is_dq(dq) or dq.input[0] not in consts or dq.input[1] not in consts:
        return None
    return dq


def correct(qdq: onnx.ModelProto, reference_model: onnx.ModelProto, feeds) -> int:
    """Add ``E[y_fp32 - y_int8]`` to the bias of every :func:`output_convs` conv of ``qdq``
    (in place), measured on ``feeds``; ``reference_model`` is the float model whose tensors
    have the same names (the pre-processed input). Returns how many convs were corrected."""
    convs = output_convs(qdq)
    names = [c.output[0] for c in convs]
    ref_names = {o for n in reference_model.graph.node for o in n.output}
    convs = [c for c in convs if c.output[0] in ref_names]
    names = [c.output[0] for c in convs]
    if not convs:
        return 0
    want = _run_tensors(reference_model, feeds, names, optimize=False)
    got = _run_tensors(qdq, feeds, names, optimize=False)
    g = qdq.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = {t.name: t for t in g.initializer}
    done = 0
    for conv, name in zip(convs, names):
        diff = np.mean([w - q for w, q in zip(want[name], got[name])], axis=0)  # [C, H, W]
        delta = diff.reshape(diff.shape[0], -1).mean(axis=1) if diff.ndim > 1 else diff
        dq = _bias_dq(conv, producer, set(consts))
        q = numpy_helper.to_array(consts[dq.input[0]])
        scale = numpy_helper.to_array(consts[dq.input[1]]).astype(np.float64)
        if q.dtype != np.int32 or q.shape != delta.shape:
            continue
        step = np.round(delta / np.where(scale == 0, 1.0, scale))
        new = np.clip(q.astype(np.int64) + step.astype(np.int64), -(2**31), 2**31 - 1)
        consts[dq.input[0]].CopyFrom(numpy_helper.from_array(new.astype(np.int32), dq.input[0]))
        done += 1
        log.info("quantize-int8: bias of %s corrected (mean |delta| %.3g)", conv.name,
                 float(np.abs(delta).mean()))  # fmt: skip
    return done


def _run_tensors(model: onnx.ModelProto, feeds, names: list[str], *, optimize: bool):
    """``{name: [value per feed]}`` of intermediate tensors, extra graph outputs added."""
    import onnxruntime as ort

    from graphslim.runtime import with_outputs

    m = with_outputs(model, names)  # names are Conv outputs, never initializers
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # QDQ evaluated as float emulation (basic): what OpenVINO computes for a float-output Conv
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    sess = ort.InferenceSession(
        m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            out[name].append(np.asarray(value, np.float64)[0])
    return out
