"""quantize-int8: static post-training INT8 quantization (QDQ), by onnxruntime.quantization.

onnxruntime does the work (``quant_pre_process``, ``quantize_static`` with a
``CalibrationDataReader``); this pass chooses settings that are fast on the target, feeds it
real calibration data and keeps the nodes that hurt most in float, by measurement.

Quantization maps a float tensor ``x`` to ``q = clamp(round(x / s) + z, qmin, qmax)`` and back
``x' = (q - z) * s``; ``s`` and ``z`` come from the tensor's calibrated range ``[a, b]``
(``minmax``: observed min/max; ``entropy``: the KL-optimal clip; ``percentile``: the
``percentile``-th percentile of ``|x|``; ``auto``: each of the three calibrates on half the
feeds and is judged on the other half, by the task error when ``task`` names one or the
outputs show one, else the output error; minmax stays unless another is ``min_gain`` lower,
and the choice then calibrates on all the feeds, before any exclusion search; every figure
is in the notes and the record. Judged on the calibration images themselves it chose ranges
that lost held-out detections, :func:`_choose_method`).
Symmetric quantization fixes ``z = 0``.

Targets (``activation_type`` / ``weight_type`` override them):

* ``cpu-x86``: uint8 asymmetric activations, int8 symmetric weights. onnxruntime's x86
  kernels (AVX2 ``VPMADDUBSW``, AVX-512 VNNI ``VPDPBUSD``) multiply u8 x s8; with s8
  activations (onnxruntime's default) a trained YOLOv8n ran 1.8x *slower* than FP32 on a VNNI
  machine, with u8 at 0.51x. Without VNNI (AVX2, AVX-512 without VNNI) the u8 x s8 kernel sums
  product pairs in a saturating int16, so there the weights get 7 bits (``reduce_range``):
  ``cpu-x86`` detects this machine's ISA, ``cpu-x86-vnni`` / ``cpu-x86-avx2`` name a deployment
  machine's (:mod:`passes._quant_isa`). The ISA, its source and the choice are in the notes.
* ``cpu-arm``: int8 asymmetric activations, int8 symmetric weights -- the TFLite/XNNPACK int8
  scheme; onnxruntime's ARM64 kernels have s8s8 dot-product (SDOT/I8MM) paths and its docs
  report no accuracy difference between u8 and s8 there. Not measured on ARM by us.
* ``tensorrt``: int8 symmetric activations and weights (zero points 0), as TensorRT's
  explicit-quantization mode requires.
* ``openvino``: u8 asymmetric activations, s8 symmetric per-channel weights (7-bit on x86
  without VNNI, as for ``cpu-x86``), and a different *placement*
  (:data:`OPENVINO_OPS`): Q/DQ pairs only on the *inputs* of the ops OpenVINO runs in INT8
  (Conv, ConvTranspose, MatMul, Gemm, Add, Concat, pooling, Resize), never on their outputs,
  and none around activations -- NNCF's rule for OpenVINO (its CPU hardware config quantizes
  the inputs of those ops). OpenVINO's low-precision transformations fold a Conv with its bias
  and activation (SiLU, Sigmoid, ...) in f32 post-ops and then the next op's input quantizer
  into the same kernel; a Q/DQ pair on the Conv output (onnxruntime's QDQ default) splits it
  into a u8 Conv plus a separate element-wise subgraph. Measured on yolox-det in OpenVINO:
  0.64x onnxruntime FP32 with onnxruntime's placement, 0.40-0.44x with this one
  (bench/results/runtimes.md). The identity Q/DQ pairs onnxruntime leaves after ops that only
  move values (Split, MaxPool, Reshape, ...) are removed (:mod:`passes._quant_openvino`,
  exact), so OpenVINO carries u8 through them. The latency guard times in OpenVINO here.

Steps, all in a temporary folder: opset < 13 is converted to 13 (per-channel
DequantizeLinear needs its ``axis``); unnamed nodes get stable names (``{op}_{index}``);
``quant_pre_process`` (ONNX shape inference and onnxruntime's basic optimisations, e.g. BN
folding; no symbolic shape inference: it litters the working directory when it fails); calibration; quantization.
With ``auto_exclude`` the search first tries a suffix: the quantized nodes nearest the
outputs, bisected to the fewest that give most of the gain (:mod:`passes._quant_search`); then,
within the remaining ``max_excluded`` budget, it keeps in float the node that adds the most measured
quantization noise (:mod:`passes._quant_sensitivity`: per-channel SQNR of every intermediate
tensor against FP32 on calibration data), with its input producers when that alone does not help,
one step at a time, until the output error on the calibration feeds is within ``tolerance``
or ``max_excluded`` nodes are kept in float; a step is kept only when it lowers the error by
at least ``min_gain`` (a float node costs speed), so the result is never worse than no
exclusion. The search stops early after ``_quant_search.PATIENCE`` candidates in a row without gain.

With ``task=detect|classify|dense`` (image calibration feeds), both stages minimise the task
error against the FP32 model on the calibration feeds instead of the output error:
``1 - mAP50-95`` (COCO's mean over IoU 0.5..0.95, so that box precision counts: mAP50 against
FP32 stays ~1.0 while quantized coordinates cost points) / ``1 - top-1 agreement`` /
``1 - map IoU``, plus ``output error / 100`` to
order candidates the (step-shaped) task metric scores alike (:func:`task_score`); ``tolerance``
then applies to that score.

Before any search, an output-path Concat whose inputs' calibrated ranges differ by more than
32x (a detection head's box pixels next to its class scores, :mod:`passes._quant_ranges`) is kept
in float with the layout ops after it; its inputs keep their own scales. Without this, one scale
rounds every score to 0 and no exclusion elsewhere can bring them back. ``float_tail`` (on by
default) keeps float every node after the last Conv/ConvTranspose/MatMul/Gemm on each output
path (a detector's box decoding, score activations, reshapes): no INT8 speed there, and
quantized the decoded boxes keep range/255 steps (:mod:`passes._quant_ranges`).

Latency guard (``latency_guard``; on for CPU and OpenVINO targets with real calibration data):
the result is timed against the input, alternately in one process (:func:`graphslim.bench.bench`,
median of ``latency_runs``) on ``runtime`` (onnxruntime CPU; OpenVINO CPU for
``target=openvino``, skipped with a note when OpenVINO is not installed); if INT8 is not at
least 5% (:data:`GUARD_MARGIN`) faster on this machine, the pass keeps the input
(``modified`` False) and says so with both figures. This is a wall-clock measurement, so the
outcome can differ between machines and, near 1.0x, between runs.

Latency-aware placement (``placement``; auto: whenever the latency guard runs): after the
accuracy search, each group of the remaining quantized nodes other than the main compute ops
(one op type each, the depthwise convolutions as their own group) is kept float when that
makes the model at least 3% faster on the guard's runtime, in two timings in a row, without
raising the error
(:mod:`passes._quant_placement`: whole-model timing, alternating, per group); the groups, their
timings and the choice are in the notes and the record.

Bias correction (``bias_correction``; auto: on for ``target=openvino``): the convolutions
that feed the outputs get ``E[FP32 - INT8]`` per channel added to their bias
(:mod:`passes._quant_bias`), kept only when the error on the calibration feeds drops by at
least ``min_gain``.

``mode=dynamic`` (:mod:`passes._quant_dynamic`): onnxruntime's ``quantize_dynamic`` of the
MatMul-type ops instead (weights offline, activation ranges at run time, no calibration), for
MatMul/Gemm-heavy models such as text recognizers; with feeds its output error is measured
and the latency guard applies as for static.

Bad input is refused before any work (:class:`~graphslim.errors.PreconditionError`, exit 2
from the CLI, the input untouched): a model that is already quantized (QDQ pairs, QOperator
``QLinear*`` / integer ops, :data:`QUANTIZED_OPS`), calibration data that is missing, empty,
unreadable or does not fit the model through the ``preprocess`` spec (size, channels, layout).

The result keeps the graph's input and output names and the input's metadata_props,
producer and doc string; the opset may rise to 13.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import PreconditionError
from graphslim.feeds import FeedError, load_feeds, random_feeds
from graphslim.model_io import needs_external_data
from graphslim.passes import _quant_bias as B
from graphslim.passes import _quant_dynamic as D
from graphslim.passes import _quant_isa as I
from graphslim.passes import _quant_openvino as V
from graphslim.passes import _quant_placement as L
from graphslim.passes import _quant_prepare as P
from graphslim.passes import _quant_ranges as R
from graphslim.passes import _quant_search as Q
from graphslim.passes import _quant_sensitivity as S

log = logging.getLogger(__name__)

Target = Literal["cpu-x86", "cpu-x86-vnni", "cpu-x86-avx2", "cpu-arm", "tensorrt", "openvino"]
QType = Literal["auto", "uint8", "int8"]

# target -> (activation type, activation symmetric)
TARGETS: dict[str, tuple[str, bool]] = {
    "cpu-x86": ("uint8", False),
    "cpu-x86-vnni": ("uint8", False),
    "cpu-x86-avx2": ("uint8", False),
    "cpu-arm": ("int8", False),
    "tensorrt": ("int8", True),
    "openvino": ("uint8", False),
}
# target=openvino: the op types whose inputs are quantized (and whose outputs are not); NNCF's
# OpenVINO CPU hardware config quantizes the inputs of these (its "quantizable operations").
OPENVINO_OPS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Split",
)
# ... of which these compute new values: their outputs stay float (OpenVINO fuses the next
# quantizer into them); the others' outputs keep their input's grid (then the identity Q/DQ
# after them is removed, passes._quant_openvino)
OPENVINO_FLOAT_OUTPUTS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
)
RANDOM_CAP = 8  # random calibration: at most this many feeds (they carry no information)
# The latency guard keeps INT8 only when it is this much faster than FP32: near 1.0x its 10
# timed runs decide by noise (ppocr-cls, 1.9 ms: kept at the guard's timing, 1.14x slower in
# the bench's 20 runs that followed)
GUARD_MARGIN = 0.05
ENTROPY_BINS = (512, 128)  # method=entropy: histogram bins, quantized bins


@dataclass(frozen=True, kw_only=True)
class QuantizeInt8Options:
    mode: Literal["static", "dynamic"] = option(
        "static",
        help="static: QDQ with calibrated activation ranges; dynamic: onnxruntime's dynamic "
        "quantization of MatMul-type ops (weights offline, activations at run time, no "
        "calibration; for MatMul/Gemm-heavy models)",
    )
    calibration: str = option(
        "",
        help="calibration data: an image folder, a .npy/.npz file (or folder), or 'random' "
        "(not meaningful; warns); empty: the context's feeds",
    )
    preprocess: str = option("yolo", help="image preprocessing for an image folder (feeds spec)")
    calibration_size: int = option(32, help="at most this many calibration samples")
    method: Literal["minmax", "entropy", "percentile", "auto"] = option(
        "minmax",
        help="calibration range: observed min/max, KL entropy (512-bin histograms, slow), "
        "percentile, or auto: each of the three calibrated on half the feeds and judged on the "
        "other half (the task error when a task is given or shown by the outputs); minmax "
        "unless another is min_gain lower",
    )
    percentile: float = option(99.999, help="percentile of |x| for method=percentile")
    per_channel: bool = option(True, help="one weight scale per output channel")
    target: Target = option(
        "cpu-x86",
        help="cpu-x86: u8 act/s8 weights, settings for this machine's ISA (VNNI: full range; "
        "AVX2/AVX-512 without VNNI: reduce_range); cpu-x86-vnni / cpu-x86-avx2: for a "
        "deployment machine of that ISA; cpu-arm: s8/s8; tensorrt: symmetric s8/s8; "
        "openvino: u8/s8 with Q/DQ only on the inputs of the ops OpenVINO fuses (NNCF's rule)",
    )
    reduce_range: Literal["auto", "on", "off"] = option(
        "auto",
        help="7-bit weights; auto: on for x86 without VNNI (its u8*s8 kernel saturates), off "
        "elsewhere",
    )
    activation_type: QType = option("auto", help="override the target's activation type")
    weight_type: QType = option("auto", help="override the target's weight type (int8)")
    exclude: tuple[str, ...] = option(
        (),
        help="nodes kept in float: node names, op types or regexes over node names "
        "(or explicit 'name:', 'op:', 're:' prefixes)",
        factory=tuple,
    )
    auto_exclude: bool = option(False, help="keep the most damaging nodes in float, by measurement")
    tolerance: float = option(
        0.02, help="auto_exclude stops at this output error (column-wise relative L2)"
    )
    max_excluded: int = option(8, help="auto_exclude keeps at most this many nodes in float")
    min_gain: float = option(
        0.05,
        help="auto_exclude keeps a node in float only if the output error drops by this fraction",
    )

    bias_correction: Literal["auto", "on", "off"] = option(
        "auto",
        help="add E[FP32 - INT8] (calibration feeds, per channel) to the bias of the convs "
        "that feed the outputs, kept only if the error drops by min_gain; auto: on for "
        "target=openvino",
    )
    mixed_concat_float: bool = option(
        True,
        help="keep in float an output-path Concat whose inputs' calibrated ranges differ by "
        "more than 32x (box pixels next to scores), each input quantized with its own scale",
    )
    float_tail: bool = option(
        True,
        help="keep in float the nodes after the last Conv/MatMul/Gemm on every output path "
        "(box decoding, score activations, reshapes): no INT8 speed there, and quantized "
        "outputs round box coordinates to range/255 steps",
    )
    latency_guard: Literal["auto", "on", "off"] = option(
        "auto",
        help="time INT8 against FP32 (on `runtime`) and keep the input when INT8 is not "
        "faster; auto: on for CPU and OpenVINO targets with real calibration data",
    )
    latency_runs: int = option(10, help="alternating timed runs for the latency guard")
    placement: Literal["auto", "latency", "off"] = option(
        "auto",
        help="latency: keep float each group of quantized nodes (one op type; the depthwise "
        "convs) that makes the model >= 3% faster float, timed on `runtime` (never the main "
        "Conv/MatMul/Gemm); auto: when the latency guard runs",
    )
    task: Literal["none", "detect", "classify", "dense"] = option(
        "none",
        help="auto_exclude minimises this task's error against the FP32 model on the "
        "calibration feeds (detect: 1 - mAP50-95, classify: 1 - top-1 agreement, dense: 1 - "
        "map IoU) plus output error / 100 as a tie-break; none: the output error",
    )
    runtime: Literal["auto", "ort", "openvino"] = option(
        "auto",
        help="runtime the latency guard times FP32 and INT8 on; auto: openvino for "
        "target=openvino, onnxruntime otherwise",
    )

    def validate(self) -> None:
        if self.calibration_size < 1:
            raise ValueError("calibration_size must be >= 1")
        if not 0 < self.percentile <= 100:
            raise ValueError("percentile must be in (0, 100]")
        if self.tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        if self.max_excluded < 0:
            raise ValueError("max_excluded must be >= 0")
        if self.latency_runs < 1:
            raise ValueError("latency_runs must be >= 1")
        if not 0 <= self.min_gain < 1:
            raise ValueError("min_gain must be in [0, 1)")


class QuantizeInt8(Pass):
    name = "quantize-int8"
    summary = "static INT8 (QDQ) with real calibration, target-aware types, auto-exclusion"
    numerics = "lossy"
    in_place = False  # returns a new model; the input is left as it was
    Options = QuantizeInt8Options

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self.options
        _refuse_quantized(model)
        if o.mode == "dynamic":
            return _dynamic(model, o, ctx)
        feeds, notes = _calibration_feeds(model, o, ctx)
        with tempfile.TemporaryDirectory(prefix="graphslim-quant-") as tmp:
            work = Path(tmp)
            pre, pre_notes = P.prepare(model, work)
            notes += pre_notes
            excluded, skipped = P.resolve_exclude(pre, o.exclude)
            user_excluded = len(excluded)
            if o.mixed_concat_float:
                keep, why, more_notes = R.float_mixed_concats(pre, feeds, excluded)
                excluded += keep
                skipped += why
                notes += more_notes
            mixed = len(excluded) - user_excluded
            if o.float_tail:
                keep, why, more_notes = R.float_tail(pre, excluded)
                excluded += keep
                skipped += why
                notes += more_notes
            reference = _run(model, feeds)
            score = task_score(o.task, feeds) if o.task != "none" else S.output_error
            details: list[dict] = []
            if o.method == "auto":
                q, qdq, error, row = _choose_method(work, feeds, o, excluded, reference, score)
                details.append(row)
                o = q.options  # the chosen method from here on (notes, search)
                notes.append(row["note"])
            else:
                q = _Quantizer(work / "pre.onnx", feeds, o, work)
                qdq = q.run(excluded, "user")
                error = score(reference, _run(qdq, feeds)) if S.quantized_nodes(qdq) else 0.0
            if not S.quantized_nodes(qdq):
                why = "no node was quantized (no Conv/Gemm/MatMul/... with float inputs)"
                return PassResult(model, False, skipped=skipped + [("<model>", why)], notes=[why])
            counters: dict[str, int | float] = {"output_error_no_auto": error}
            auto: list[str] = []
            if o.auto_exclude and error > o.tolerance and o.max_excluded > 0:
                qdq, path, error, auto, row = Q.suffix_search(
                    q, o, pre, qdq, error, excluded, reference, _run, score
                )
                details.append(row)
                if error > o.tolerance and len(auto) < o.max_excluded:
                    qdq, error, more, rows = Q.greedy_search(
                        q,
                        o,
                        pre,
                        qdq,
                        error,
                        excluded + auto,
                        reference,
                        _run,
                        o.max_excluded - len(auto),
                        path,
                        score,
                    )
                    auto += more
                    details += rows
                what = "output error" if o.task == "none" else f"{o.task} task error"
                notes.append(
                    f"auto_exclude kept {len(auto)} node(s) in float: {', '.join(auto) or 'none'}"
                    f"; {what} {counters['output_error_no_auto']:.4g} -> {error:.4g}"
                    f" (tolerance {o.tolerance:g})"
                )
            elif o.auto_exclude:
                what = "output error" if o.task == "none" else f"{o.task} task error"
                notes.append(f"auto_exclude: {what} {error:.4g} already within tolerance")
            runtime = _guard_runtime(o, notes)
            placed: list[str] = []
            if o.placement == "latency" or (o.placement == "auto" and runtime is not None):
                qdq, error, placed, row = _placed(
                    q, pre, qdq, excluded + auto, feeds, reference, score, error, o, runtime
                )
                details.append(row)
                notes.append(row["note"])
            if o.bias_correction == "on" or (
                o.bias_correction == "auto" and o.target == "openvino"
            ):
                qdq, error = _bias_corrected(
                    qdq, pre, feeds, reference, score, error, notes, o.min_gain
                )
        _restore(qdq, model)
        counters.update(_count(qdq, len(feeds), user_excluded, len(auto), error))
        counters["excluded_mixed_concat"] = mixed
        counters["excluded_tail"] = len(excluded) - user_excluded - mixed
        counters["excluded_placement"] = len(placed)
        act, wt, sym = q.types
        counters["reduce_range"] = int(q.reduce_range)
        notes.append(
            f"target {o.target}: {act} {'symmetric' if sym else 'asymmetric'} activations, "
            f"{wt} symmetric {'per-channel' if o.per_channel else 'per-tensor'} weights"
            f"{' (7-bit, reduce_range)' if q.reduce_range else ''}, "
            f"{o.method} calibration on {len(feeds)} sample(s)"
        )
        if q.x86 is not None:
            notes.append(q.x86.note())
        return _guarded(model, qdq, feeds[0], o, runtime, counters, skipped, notes, details)


def _placed(q, pre, qdq, excluded, feeds, reference, score, error, o, runtime):
    """Latency-aware placement (:mod:`passes._quant_placement`): ``(model, error, nodes kept
    float, detail row)`` with a ``note``; timed on the guard's runtime (or, with
    ``placement=latency`` and the guard off, the one the guard would use)."""
    rt = runtime or (
        o.runtime if o.runtime != "auto" else ("openvino" if o.target == "openvino" else "ort")
    )
    runs = max(20, 2 * o.latency_runs)
    qdq, after, labels, nodes, row = L.place(
        q, pre, qdq, excluded, feeds, reference, _run, score, error,
        runtime=rt, runs=runs, min_gain=o.min_gain,
    )  # fmt: skip
    tried = "; ".join(
        f"{t['group']} x{t['nodes']} {t['ratio']:.3f}x"
        + (f" then {t['ratio_confirm']:.3f}x" if t["ratio_confirm"] is not None else "")
        + (" (kept float)" if t["kept_float"] else "")
        for t in row["trials"]
    )
    row["note"] = (
        f"placement ({RUNTIME_NAMES[rt]}, {runs} alternating runs per group; time with the "
        f"group float / INT8): {tried or 'no candidate group'}; kept float: "
        f"{', '.join(labels) or 'none'}; error {error:.4g} -> {after:.4g}"
    )
    return qdq, after, nodes, row


METHODS = ("minmax", "percentile", "entropy")  # method=auto tries these, in this order


def _method_judge(o, reference, feeds):
    """``(judge, name)``: ``judge(reference, outputs)`` is the error that compares the
    calibration methods. With ``task`` (or, without one, the task the outputs show:
    :func:`graphslim.tasks.infer_task`, a detection head, class scores, a [0, 1] map) the task
    term alone, ``1 - metric``; else the output error."""
    from graphslim.tasks import Task, infer_task
    from graphslim.tasks.gate import input_hw

    kind, how = o.task, "task"
    if kind == "none":
        found = infer_task(reference[0], input_hw(feeds[0]))
        if found is None:
            return S.output_error, "output error"
        kind, how = found[0], "task, from the output layout"
    task = Task(kind)

    def judge(ref, outputs) -> float:
        return 1.0 - float(task.evaluate(ref, outputs, feeds).metrics[TASK_METRIC[kind]])

    return judge, f"1 - {TASK_METRIC[kind]} ({kind} {how})"


def _choose_method(work: Path, feeds, o, excluded, reference, score):
    """method=auto: ``(quantizer, model, error, row)``. Each of :data:`METHODS` calibrates on
    the first half of the feeds and is judged on the other half (:func:`_method_judge`; all
    feeds, said so, when there are fewer than 4); minmax (ranges that clip nothing) is kept
    unless another method lowers that error by ``min_gain`` (relative). Judged on the
    calibration images themselves, with the output error breaking ties, the choice
    generalized badly on the zoo's detectors: entropy on yolox-det kept 91 of 131 held-out
    detections (minmax 129), percentile on fall-yolov8s 15 of 18 (minmax 18), both chosen on
    calibration photos where the task term was flat or noisy. The chosen method then
    calibrates on all the feeds."""
    half = len(feeds) // 2 if len(feeds) >= 4 else 0
    fit, held = (feeds[:half], feeds[half:]) if half else (feeds, feeds)
    ref_held = reference[half:] if half else reference
    judge, judged_by = _method_judge(o, ref_held, held)
    errors: dict[str, float] = {}
    for m in METHODS:
        folder = work / f"method-{m}"
        folder.mkdir()
        try:
            trial = _Quantizer(work / "pre.onnx", fit, replace(o, method=m), folder)
        except PreconditionError as exc:  # entropy on an onnxruntime without its cache
            log.warning("quantize-int8 method=auto: %s skipped: %s", m, exc)
            errors[m] = float("inf")
            continue
        qdq = trial.run(excluded, "user")
        quantized = bool(S.quantized_nodes(qdq))
        errors[m] = judge(ref_held, _run(qdq, held)) if quantized else float("inf")
        log.info("quantize-int8 method=auto: %s %s %.4g", m, judged_by, errors[m])
    chosen = "minmax"
    for m in METHODS[1:]:
        if errors[m] < errors[chosen] * (1 - o.min_gain) - 1e-12:
            chosen = m
    folder = work / "method-chosen"
    folder.mkdir()
    q = _Quantizer(work / "pre.onnx", feeds, replace(o, method=chosen), folder)
    qdq = q.run(excluded, "user")
    error = score(reference, _run(qdq, feeds)) if S.quantized_nodes(qdq) else 0.0
    figures = ", ".join(f"{m} {e:.4g}" for m, e in errors.items())
    where = (
        f"calibrated on {len(fit)} feed(s), judged on the other {len(held)}"
        if half
        else f"calibrated and judged on the same {len(feeds)} feed(s) (fewer than 4)"
    )
    row = {
        "strategy": "method",
        "errors": errors,
        "chosen": chosen,
        "judged_by": judged_by,
        "held_out": len(held) if half else 0,
        "note": f"method=auto: {judged_by}, {where}: {figures}; chose {chosen} (another "
        f"method replaces minmax only {o.min_gain:.0%} lower)",
    }
    return q, qdq, error, row


def _bias_corrected(qdq, pre, feeds, reference, score, error, notes, min_gain: float):
    """``qdq`` with its output convolutions' biases corrected (:mod:`passes._quant_bias`) when
    that lowers ``score`` on the calibration feeds by at least ``min_gain`` (relative), else
    ``qdq`` unchanged. A correction fitted on a few calibration images that barely moves
    their error is fitting them, not the model: on yolox-det for OpenVINO it moved the output
    error 0.1102 -> 0.1100 and took the held-out images' mAP50-95 against FP32 from 0.961 to
    0.849 (box IoU 0.965 -> 0.912)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(qdq)
    count = B.correct(fixed, pre, feeds)
    if not count:
        return qdq, error
    after = score(reference, _run(fixed, feeds))
    kept = after < error * (1 - max(min_gain, 1e-6))
    notes.append(
        f"bias correction of {count} output conv(s): error {error:.4g} -> {after:.4g} "
        f"({'kept' if kept else f'not kept: less than {min_gain:.0%} lower'})"
    )
    return (fixed, after) if kept else (qdq, error)


def _guarded(model, qdq, feed, o, runtime, counters, skipped, notes, details) -> PassResult:
    """The result, or the input when the latency guard (on ``runtime``; None: off) finds
    INT8 not faster."""
    if runtime:
        fp32_ms, int8_ms = _latency(model, qdq, feed, o.latency_runs, runtime)
        ratio = int8_ms / fp32_ms
        counters.update(latency_fp32_ms=fp32_ms, latency_int8_ms=int8_ms, latency_ratio=ratio)
        figures = (
            f"INT8 {int8_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms = {ratio:.2f}x (median of "
            f"{o.latency_runs} alternating {RUNTIME_NAMES[runtime]} CPU runs on this machine)"
        )
        if ratio > 1.0 - GUARD_MARGIN:
            why = (
                f"INT8 is not faster than FP32 here (by the {GUARD_MARGIN:.0%} the guard asks): "
                f"{figures}; the input is kept"
            )
            log.warning("quantize-int8: %s", why)
            return PassResult(
                model, False, counters, skipped + [("<model>", why)], notes + [why], details
            )
        notes.append(f"latency: {figures}")
    return PassResult(qdq, True, counters, skipped, notes, details)


def _dynamic(model: onnx.ModelProto, o: QuantizeInt8Options, ctx: PassContext) -> PassResult:
    """mode=dynamic (:mod:`passes._quant_dynamic`): no calibration; the feeds (calibration
    source or context), when given, measure the output error and time the result."""
    real = bool(ctx.feeds) or o.calibration.strip().lower() not in ("", "random")
    if real:
        feeds, notes = _calibration_feeds(model, o, ctx)
    else:
        count = min(o.calibration_size, 2)
        feeds = random_feeds(model, count=count, seed=ctx.seed, shapes=ctx.input_shapes)
        notes = ["mode=dynamic: no feeds given; output error measured on random inputs"]
    on_x86 = o.target.startswith("cpu-x86") or o.target == "openvino"
    x86 = I.choose("cpu-x86" if o.target == "openvino" else o.target) if on_x86 else None
    reduce = (o.reduce_range == "on") or (
        o.reduce_range == "auto" and bool(x86 and x86.reduce_range)
    )
    with tempfile.TemporaryDirectory(prefix="graphslim-quant-") as tmp:
        work = Path(tmp)
        pre, pre_notes = P.prepare(model, work)
        notes += pre_notes
        excluded, skipped = P.resolve_exclude(pre, o.exclude)
        qdq = D.quantize_dynamic(
            work / "pre.onnx",
            work / "dynamic.onnx",
            exclude=excluded,
            per_channel=o.per_channel,
            reduce_range=reduce,
        )
    quantized = D.integer_nodes(qdq)
    if not quantized:
        why = (
            f"mode=dynamic quantized no node (no {'/'.join(D.DYNAMIC_OPS)} with a constant weight)"
        )
        return PassResult(model, False, skipped=skipped + [("<model>", why)], notes=notes + [why])
    _restore(qdq, model)
    error = S.output_error(_run(model, feeds), _run(qdq, feeds))
    counters: dict[str, int | float] = {
        "nodes_quantized": quantized,
        "excluded_user": len(excluded),
        "output_error": error,
        "reduce_range": int(reduce),
    }
    notes.append(
        f"mode=dynamic: {quantized} MatMul-type node(s) with s8 "
        f"{'per-channel' if o.per_channel else 'per-tensor'} weights"
        f"{' (7-bit, reduce_range)' if reduce else ''}, u8 activations quantized at run time; "
        f"output error {error:.4g} on {len(feeds)} sample(s)"
    )
    if x86 is not None:
        notes.append(x86.note())
    guard = o.latency_guard == "on" or (o.latency_guard == "auto" and real)
    runtime = _guard_runtime(o, notes) if guard else None
    return _guarded(model, qdq, feeds[0], o, runtime, counters, skipped, notes, [])


RUNTIME_NAMES = {"ort": "onnxruntime", "openvino": "OpenVINO"}
TASK_METRIC = {"detect": "map50_95", "classify": "top1", "dense": "iou"}
OUTPUT_WEIGHT = 0.01  # task mode: output error's share, a tie-break among equal task scores


def task_score(kind: str, feeds):
    """``score(reference, outputs)`` for ``task=kind``: ``1 - metric + OUTPUT_WEIGHT * output
    error``, the metric of the candidate's outputs against the FP32 model's on the calibration
    feeds (:mod:`graphslim.tasks`: detections decoded and matched, mAP@0.5:0.95; top-1 agreement;
    IoU of the thresholded maps). The task term is what the user judges; it is flat over
    many candidates (a few images, a step metric), so the output error orders those."""
    from graphslim.tasks import Task

    task = Task(kind)

    def score(reference, outputs) -> float:
        metric = task.evaluate(reference, outputs, feeds).metrics[TASK_METRIC[kind]]
        return (1.0 - float(metric)) + OUTPUT_WEIGHT * S.output_error(reference, outputs)

    return score


def _guard_runtime(o: QuantizeInt8Options, notes: list[str]) -> str | None:
    """The runtime the latency guard times on, or None when the guard is off (``auto``: off
    for tensorrt and for random calibration; for OpenVINO, off with a note when it is not
    installed, while ``on`` then asks for it)."""
    on = o.latency_guard == "on" or (
        o.latency_guard == "auto"
        and o.target != "tensorrt"
        and o.calibration.strip().lower() != "random"
    )
    if not on:
        return None
    runtime = (
        o.runtime if o.runtime != "auto" else ("openvino" if o.target == "openvino" else "ort")
    )
    if runtime == "openvino":
        from graphslim.backends.openvino import unavailable

        why = unavailable()
        if why and o.latency_guard == "on":
            raise PreconditionError(f"latency_guard=on with runtime openvino: {why}")
        if why:
            notes.append(f"latency guard skipped: {why}; INT8 was not timed")
            return None
    return runtime


# ----------------------------------------------------------------------------- preconditions

# Ops that only a quantized graph has: QDQ (QuantizeLinear/DequantizeLinear), onnxruntime's
# QOperator format (QLinear*, com.microsoft QGemm/QAttention/...), integer kernels and the
# dynamic-quantization ops. Quantizing such a graph again would calibrate already-rounded
# tensors and stack a second rounding on the first.
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QAttention",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "MatMulNBits",
}


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """``{op type: count}`` of the quantized ops in the main graph (empty: a float model)."""
    found: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"):
            found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def _refuse_quantized(model: onnx.ModelProto) -> None:
    found = quantized_ops(model)
    if found:
        first = next(n for n in model.graph.node if n.op_type in found)
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(found.items()))
        raise PreconditionError(
            f"the model is already quantized ({ops}; first: node "
            f"{first.name or first.output[0]!r}); quantize-int8 takes a float model: give the "
            "FP32 original"
        )


# ----------------------------------------------------------------------------- calibration


def _calibration_feeds(model, o: QuantizeInt8Options, ctx: PassContext):
    src = o.calibration.strip()
    notes: list[str] = []
    try:
        if not src:
            if not ctx.feeds:
                raise PreconditionError(
                    "quantize-int8 needs calibration data: give calibration=IMAGE_FOLDER "
                    "(with preprocess=...), a .npy/.npz file, or calibration=random "
                    "(not meaningful), or pass feeds in the context"
                )
            feeds = list(ctx.feeds)[: o.calibration_size]
        elif src.lower() == "random":
            count = min(o.calibration_size, RANDOM_CAP)
            msg = (
                "calibration=random: INT8 ranges from random inputs are NOT meaningful; the "
                "result's accuracy says nothing about real data. Calibrate on real samples."
            )
            log.warning("!!! %s", msg)
            notes.append(msg)
            feeds = random_feeds(model, count=count, seed=ctx.seed, shapes=ctx.input_shapes)
        else:
            feeds = load_feeds(
                src,
                model,
                seed=ctx.seed,
                shapes=ctx.input_shapes,
                preprocess=o.preprocess,
                limit=o.calibration_size,
            )
    except OSError as exc:  # e.g. a folder or image that cannot be read (permissions)
        where = getattr(exc, "filename", None) or src
        raise PreconditionError(
            f"cannot read calibration data {where}: {exc.strerror or exc}; check the path "
            "and its permissions"
        ) from exc
    except FeedError as exc:
        hint = ""
        if "--input-shape" in str(exc) or "dynamic" in str(exc):
            hint = (
                " (calibration needs static input shapes: give PassContext(input_shapes=...), "
                "--input-shape, or run fix-input-shapes first)"
            )
        raise PreconditionError(f"cannot build calibration feeds: {exc}{hint}") from exc
    if not feeds:
        raise PreconditionError("calibration produced no samples; give more data")
    return feeds, notes


# ----------------------------------------------------------------------------- quantization


class _Quantizer:
    """quantize_static with fixed settings; calibrates once (onnxruntime's calibration cache)."""

    def __init__(self, pre_path: Path, feeds, o: QuantizeInt8Options, work: Path):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        act, sym = TARGETS[o.target]
        act = act if o.activation_type == "auto" else o.activation_type
        wt = "int8" if o.weight_type == "auto" else o.weight_type
        self.types = (act, wt, sym)
        x86 = o.target.startswith("cpu-x86") or o.target == "openvino"
        self.x86 = I.choose("cpu-x86" if o.target == "openvino" else o.target) if x86 else None
        if o.reduce_range != "auto":
            self.reduce_range = o.reduce_range == "on"
        else:  # only u8 x s8 saturates (module doc of passes._quant_isa)
            self.reduce_range = bool(
                self.x86 and self.x86.reduce_range and act == "uint8" and wt == "int8"
            )
        qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[o.method]
        extra = {"ActivationSymmetric": sym, "WeightSymmetric": True}
        if o.method == "percentile":
            extra["CalibPercentile"] = o.percentile
        if o.target == "openvino":
            # inputs only: no Q/DQ on these ops' outputs (module doc)
            extra["OpTypesToExcludeOutputQuantization"] = list(OPENVINO_FLOAT_OUTPUTS)
        self.kwargs = dict(
            op_types_to_quantize=list(OPENVINO_OPS) if o.target == "openvino" else None,
            quant_format=QuantFormat.QDQ,
            per_channel=o.per_channel,
            reduce_range=self.reduce_range,
            activation_type=qt[act],
            weight_type=qt[wt],
            calibrate_method=method,
            extra_options=extra,
        )
        self.pre_path, self.feeds, self.work, self.options = pre_path, feeds, work, o
        self.openvino = o.target == "openvino"
        self.cache = work / "calibration.json"
        self.cached = "calibration_cache_path" in inspect.signature(_quantize_static()).parameters
        self.count = 0
        if o.method == "entropy":
            if not self.cached:
                raise PreconditionError(
                    "method=entropy needs onnxruntime's calibration cache (onnxruntime >= "
                    "1.23); upgrade onnxruntime or use method=percentile"
                )
            self._entropy_ranges(sym)

    def _entropy_ranges(self, symmetric: bool) -> None:
        """Entropy (KL) ranges written to the calibration cache that ``quantize_static`` then
        reads. Written here because ``quantize_static`` does not pass ``num_bins`` on to its
        entropy calibrator, whose defaults (128 bins, 128 quantized bins) leave one candidate
        threshold, the full range: ``method=entropy`` came out identical to minmax (digits
        YOLOv8n: the same output error to 10 digits). Here 512 bins for 128 quantized ones
        (:data:`ENTROPY_BINS`; TensorRT's calibrator uses 2048, but onnxruntime's KL search is
        Python: 179 s against 39 s on that YOLOv8n, whose label mAP50-95 was 0.335 / 0.330
        with entropy ranges against 0.346 with minmax -- entropy clips what the head needs)."""
        from onnxruntime.quantization import CalibrationMethod, save_tensors_data
        from onnxruntime.quantization.calibrate import create_calibrator

        with tempfile.TemporaryDirectory(prefix="graphslim-entropy-") as tmp:
            calibrator = create_calibrator(
                self.pre_path,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={
                    "symmetric": symmetric,
                    "num_bins": ENTROPY_BINS[0],
                    "num_quantized_bins": ENTROPY_BINS[1],
                },
            )
            calibrator.collect_data(P.feed_reader(self.feeds))
            save_tensors_data(calibrator.compute_data(), self.cache)

    def run(self, exclude: list[str], tag: str) -> onnx.ModelProto:
        out = self.work / f"q{self.count}-{tag}.onnx"
        self.count += 1
        kwargs = dict(self.kwargs, nodes_to_exclude=list(exclude))
        if self.cached:
            kwargs["calibration_cache_path"] = str(self.cache)
        try:
            _quantize_static()(str(self.pre_path), str(out), P.feed_reader(self.feeds), **kwargs)
        except Exception as exc:
            raise PreconditionError(
                f"onnxruntime cannot quantize this model: {type(exc).__name__}: {P.first_line(exc)}; "
                "keep the offending nodes in float with exclude=[...]"
            ) from exc
        self.last_path = out
        model = onnx.load_model(str(out))
        if self.openvino and (V.unify_concat_scales(model) + V.drop_requantize(model)):
            onnx.save_model(model, str(out), save_as_external_data=needs_external_data(model))
        return model


def _quantize_static():
    from onnxruntime.quantization import quantize_static

    return quantize_static


def _run(model: onnx.ModelProto, feeds) -> list[dict[str, np.ndarray]]:
    from graphslim.runtime import run_model

    # Full optimisation: the QDQ pairs become onnxruntime's integer kernels (QLinearConv...),
    # whose rounding is what a deployment sees; "basic" would emulate in float.
    return run_model(model, feeds, optimization="all", label="quantize-int8")


def _latency(model, qdq, feed, runs: int, runtime: str = "ort") -> tuple[float, float]:
    """Median milliseconds of FP32 and INT8, timed alternately (:func:`graphslim.bench.bench`)
    on ``runtime`` (``ort`` or ``openvino``)."""
    from graphslim.bench import bench

    fp32, int8 = bench([("fp32", model), ("int8", qdq)], feed, runs=runs, runtime=runtime)
    return fp32.median_ms, int8.median_ms


# ----------------------------------------------------------------------------- result


def _restore(out: onnx.ModelProto, src: onnx.ModelProto) -> None:
    out.producer_name = src.producer_name
    out.producer_version = src.producer_version
    out.doc_string = src.doc_string
    out.domain = src.domain
    out.model_version = src.model_version
    out.graph.name = src.graph.name
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    # quant_pre_process writes every domain onnxruntime knows; keep the input's and used ones.
    used = {n.domain for n in out.graph.node} | {x.domain for x in src.opset_import}
    keep = [x for x in out.opset_import if x.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)


def _count(qdq: onnx.ModelProto, samples: int, user: int, auto: int, error: float) -> dict:
    ops = [n.op_type for n in qdq.graph.node]
    return {
        "nodes_quantized": len(S.quantized_nodes(qdq)),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "excluded_user": user,
        "excluded_auto": auto,
        "calibration_samples": samples,
        "output_error": error,
    }
