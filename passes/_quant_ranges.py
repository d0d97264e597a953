"""Concats that mix value ranges on the way to an output, found by calibration, kept in float.

A detection head often ends in one Concat of unlike things: YOLOv8's ``[1, 4 + nc, 8400]``
joins box coordinates in pixels (``0..640``) with class probabilities (``0..1``). Quantizing
the Concat gives all its inputs one activation scale (QDQ Concat shares the scale of its
output), ``s = range / 255`` with ``range`` the widest input's, so an input of range ``r``
keeps only ``255 * r / range`` levels: ``255 / 640 < 1`` for the scores -- every score rounds
to 0 and every detection is lost, whatever else the search keeps in float.

Rule, by measurement and without names: for each Concat on an *output path* (its result
reaches a graph output through layout-only ops: Reshape, Transpose, Flatten, Squeeze,
Unsqueeze, Identity, Concat), the calibrated magnitude of each input is
``r_i = max |x_i|`` over the calibration feeds; when ``max r / min r > MIX_RATIO`` (the smallest
input would keep fewer than ``256 / MIX_RATIO`` levels) the Concat and the layout-only ops after
it stay float. Its inputs are still quantized where their producers are, each with its *own*
scale -- the per-branch scale a mixed Concat needs.

The output *tail* (:func:`output_tail`) goes further: the nodes after the last compute op
(Conv, ConvTranspose, MatMul, Gemm) on every output path -- a detector's box decoding (anchor
offsets, stride Muls, the xyxy -> xywh arithmetic), score activations, reshapes. INT8 buys no
speed there (elementwise work, plus a DQ -> op -> Q round trip each), and the tail's tensors are
the outputs themselves: quantized, box coordinates in pixels keep ``range / 255`` steps, 2 px at
a 640 input. Measured on a YOLOv8n fine-tuned on digits (pruned 0.5, 256 px, 400 labelled
images): label mAP50-95 FP32 0.352, INT8 with the tail quantized 0.319, tail float 0.345 --
while mAP50 against the FP32 detections stayed 0.998 either way (localization, not recall).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from graphslim import metrics

log = logging.getLogger("graphslim.passes.quantize_int8")

MIX_RATIO = 32.0
LAYOUT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat"}


def output_path_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes whose every consumer chain to a graph output is layout-only (incl. themselves
    being layout-only), nearest the outputs first."""
    g = model.graph
    by_output = {o: n for n in g.node for o in n.output}
    seen: list[onnx.NodeProto] = []
    names: set[str] = set()
    frontier = [by_output[o.name] for o in g.output if o.name in by_output]
    while frontier:
        node = frontier.pop(0)
        if node.name in names or node.op_type not in LAYOUT_OPS:
            continue
        names.add(node.name)
        seen.append(node)
        # only the data input continues the path (Reshape's shape input is not data)
        data_inputs = node.input if node.op_type == "Concat" else node.input[:1]
        frontier += [by_output[i] for i in data_inputs if i in by_output]
    return seen


COMPUTE_OPS = set(metrics.COMPUTE_OPS)  # the ops that do the work (MACs), as a set


def output_tail(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes from which no compute op (:data:`COMPUTE_OPS`) is reachable: every consumer chain
    ends at a graph output (or nowhere) without passing a Conv/MatMul/Gemm. ``model`` is
    topologically sorted; the compute ops themselves are never in the tail."""
    from graphslim.graph import consumers, graph_output_names

    g = model.graph
    readers = consumers(g)
    outputs = graph_output_names(g)
    tail: set[str] = set()
    found: list[onnx.NodeProto] = []
    for node in reversed(g.node):  # consumers before producers
        if node.op_type in COMPUTE_OPS:
            continue
        reached = [c for o in node.output for c in readers.get(o, [])]
        if not any(o in outputs for o in node.output) and not reached:
            continue  # dead: leave it to the quantizer
        if all(c.name in tail for c in reached):
            tail.add(node.name)
            found.append(node)
    return found


def float_tail(model: onnx.ModelProto, excluded: list[str]):
    """The tail nodes (:func:`output_tail`) not already in ``excluded``, with a
    ``(node, reason)`` each and one note."""
    keep = [n.name for n in output_tail(model) if n.name not in excluded]
    if not keep:
        return [], [], []
    why = (
        "after the last Conv/MatMul/Gemm on its output path: INT8 makes it no faster, and "
        "quantized output values (box coordinates) would keep range/255 steps: kept in float"
    )
    note = f"output tail of {len(keep)} node(s) after the last compute ops kept in float"
    return keep, [(n, why) for n in keep], [note]


def mixing_concats(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict]:
    """Concats on output paths whose inputs' calibrated magnitudes differ by more than
    :data:`MIX_RATIO`; each with the output-path nodes after it (to stay float too)."""
    path = output_path_nodes(model)
    concats = [n for n in path if n.op_type == "Concat"]
    if not concats or not feeds:
        return []
    const = {t.name for t in model.graph.initializer}
    const |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = sorted({i for n in concats for i in n.input if i and i not in const})
    peaks = _peaks(model, feeds, wanted)
    found = []
    for n in concats:
        mags = {i: peaks[i] for i in n.input if i in peaks}
        if len(mags) < 2:
            continue
        hi, lo = max(mags.values()), min(mags.values())
        ratio = hi / lo if lo > 0 else float("inf")
        if hi > 0 and ratio > MIX_RATIO:
            found.append(
                {"node": n.name, "ratio": ratio, "input_peaks": mags, "after": _after(path, n)}
            )
            log.info("quantize-int8: Concat %s mixes ranges (x%.0f): kept in float", n.name, ratio)
    return found


def _after(path: list[onnx.NodeProto], concat: onnx.NodeProto) -> list[str]:
    """Output-path nodes downstream of ``concat`` (they carry its mixed tensor)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in path:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out, stack = [], list(concat.output)
    while stack:
        t = stack.pop()
        for c in consumers.get(t, []):
            if c.name not in out:
                out.append(c.name)
                stack += list(c.output)
    return out


def _peaks(
    model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], names: list[str]
) -> dict[str, float]:
    """``max |x|`` of each named tensor over the feeds (the FP32 model, extra outputs)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from graphslim.runtime import with_outputs

    inits = {t.name: t for t in model.graph.initializer}
    run = [n for n in names if n not in inits]  # a constant Concat input is read, not run
    m = with_outputs(model, run)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no optimisation: fused nodes would hide the tensors asked for
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    peaks = {
        n: float(np.abs(numpy_helper.to_array(inits[n])).max(initial=0.0)) if n in inits else 0.0
        for n in names
    }
    for feed in feeds:
        for name, value in zip(run, sess.run(run, feed)):
            v = np.asarray(value, np.float64)
            if v.size:
                peaks[name] = max(peaks[name], float(np.abs(v).max()))
    return peaks


def float_mixed_concats(model: onnx.ModelProto, feeds, excluded: list[str]):
    """The nodes to keep float for every mixing Concat (not already in ``excluded``), with a
    ``(node, reason)`` per node and one note per Concat."""
    keep: list[str] = []
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    for m in mixing_concats(model, feeds):
        new = [n for n in [m["node"], *m["after"]] if n not in excluded and n not in keep]
        keep += new
        peaks = ", ".join(f"{v:.3g}" for v in m["input_peaks"].values())
        why = (
            f"Concat on the output path mixes ranges (input peaks {peaks}: x{m['ratio']:.0f} > "
            f"{MIX_RATIO:g}); one scale would erase the small inputs: kept in float, each input "
            "quantized with its own scale"
        )
        after = f"after mixing Concat {m['node']}: kept in float"
        skipped += [(n, why if n == m["node"] else after) for n in new]
        notes.append(f"mixed-range Concat {m['node']} kept in float (x{m['ratio']:.0f})")
    return keep, skipped, notes
