"""Latency-aware placement for quantize-int8: node groups that run slower quantized than in
float on this machine stay float, by measurement.

INT8 is a speed-up for the ops with integer kernels that do the work (Conv, MatMul, Gemm).
Around the other ops a QDQ graph pays for the quantization itself: onnxruntime runs some of
them as integer kernels that are slower than the float op (a QLinearMul for HardSwish's
multiply), others in float between a DequantizeLinear and a QuantizeLinear (a HardSigmoid).
Whether a group pays off depends on the machine, the runtime and the tensor sizes, so it is
measured, not assumed: for each group of the quantized nodes -- one op type each, with the
depthwise convolutions as a group of their own (few MACs per value moved) -- the model with
that group kept float is timed against the current one, alternately in one process
(:func:`graphslim.bench.bench`, the runtime the latency guard uses), and kept when it is at
least :data:`MIN_SPEEDUP` faster in two timings in a row and its error on the calibration feeds
is not worse than ``1 + min_gain`` times the current one's. Groups are tried one at a time,
largest first, each against the result so far (greedy). The main compute ops
(non-depthwise Conv, ConvTranspose, MatMul, Gemm) are never candidates: INT8 is for them,
and the latency guard catches a model where even they do not pay.

Measured (bench/results/quantize_int8*.md notes, 2-core VNNI box with a fine-tune running
beside it, 20 alternating runs): PP-LCNet's HardSigmoid group float 0.84x of its INT8 time in
one run and 1.00x in the next; ppocr-cls's GlobalAveragePool group 0.85-0.91x; on the
detectors no group moved beyond 0.94-1.05x, the band where single timings on that box
disagreed with each other (hence the confirming second timing).

Written by hand: onnxruntime's quantizer places Q/DQ by op type only (``op_types_to_quantize``)
and has no timing; the per-node profile cannot attribute time once onnxruntime fuses the Q/DQ
pairs into integer kernels (the fused nodes get new names), so whole-model timing decides.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import onnx

from graphslim.metrics import COMPUTE_OPS  # never candidates (module doc), bar depthwise convs

log = logging.getLogger(__name__)

MIN_SPEEDUP = 0.03  # a group stays float only when the model gets >= 3% faster
# Groups of fewer nodes are not tried: one or two cheap ops rarely move a whole model by
# MIN_SPEEDUP, below what alternating timings resolve on a busy machine, and each trial costs a
# quantization and a timing (yolox-det: Gather x1, Resize x2, MaxPool x3 measured 1.003-1.008x).
MIN_NODES = 3
DEPTHWISE = "Conv (depthwise)"


def _depthwise(node: onnx.NodeProto, weights: dict) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    return group > 1 and w is not None and len(w.dims) >= 2 and w.dims[1] == 1


def groups(pre: onnx.ModelProto, quantized: set[str]) -> list[tuple[str, list[str]]]:
    """``(label, node names)`` of the candidate groups (at least :data:`MIN_NODES` nodes)
    among the ``quantized`` nodes of the pre-processed float graph ``pre``, largest first
    (ties by label)."""
    weights = {t.name: t for t in pre.graph.initializer}
    by: dict[str, list[str]] = defaultdict(list)
    for n in pre.graph.node:
        if n.name not in quantized:
            continue
        if n.op_type == "Conv" and _depthwise(n, weights):
            by[DEPTHWISE].append(n.name)
        elif n.op_type not in COMPUTE_OPS:
            by[n.op_type].append(n.name)
    found = [(k, v) for k, v in by.items() if len(v) >= MIN_NODES]
    return sorted(found, key=lambda kv: (-len(kv[1]), kv[0]))


def _timed(current, candidate, feed, runs: int, runtime: str) -> tuple:
    """``(current timing, candidate timing, candidate / current)``, alternating."""
    from graphslim.bench import bench

    a, b = bench([("current", current), ("candidate", candidate)], feed, runs=runs, runtime=runtime)
    return a, b, b.median_ms / a.median_ms


def place(q, pre, qdq, excluded, feeds, reference, run, score, error, *, runtime, runs, min_gain):
    """``(model, error, kept labels, kept node names, detail row)`` after the greedy of the
    module doc. ``q.run(exclude, tag)`` quantizes with ``exclude`` kept float; ``run(model,
    feeds)`` evaluates; ``score(reference, outputs)`` is the pass's error."""
    from graphslim.passes import _quant_sensitivity as S

    candidates = groups(pre, S.quantized_nodes(qdq) - set(excluded))
    kept_labels: list[str] = []
    kept_nodes: list[str] = []
    trials = []
    for i, (label, names) in enumerate(candidates):
        cand = q.run(excluded + kept_nodes + names, f"place{i}")
        current_t, cand_t, ratio = _timed(qdq, cand, feeds[0], runs, runtime)
        cand_error = score(reference, run(cand, feeds))
        keep = ratio <= 1 - MIN_SPEEDUP and cand_error <= error * (1 + min_gain) + 1e-9
        confirm = None
        if keep:  # a second timing must agree: one can fall in the noise of a busy machine
            confirm = _timed(qdq, cand, feeds[0], runs, runtime)[2]
            keep = confirm <= 1 - MIN_SPEEDUP
        trials.append(
            {
                "group": label,
                "nodes": len(names),
                "ms_current": current_t.median_ms,
                "ms_float_group": cand_t.median_ms,
                "ratio": ratio,
                "ratio_confirm": confirm,
                "error": cand_error,
                "kept_float": keep,
            }
        )
        log.info(
            "quantize-int8 placement: %s (%d nodes) float: %.2f -> %.2f ms (%.3fx), error "
            "%.4g -> %.4g: %s",
            label,
            len(names),
            current_t.median_ms,
            cand_t.median_ms,
            ratio,
            error,
            cand_error,
            "kept float" if keep else "stays INT8",
        )
        if keep:
            qdq, error = cand, cand_error
            kept_labels.append(label)
            kept_nodes += names
    row = {"strategy": "placement", "trials": trials, "kept_float": kept_labels}
    return qdq, error, kept_labels, kept_nodes, row
