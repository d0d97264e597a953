"""convert-fp16: float32 weights and activations become float16, except a block list.

The conversion itself is onnxconverter-common's ``float16.convert_float_to_float16`` (the
``fp16`` extra): every float32 initializer, Constant and tensor type becomes float16, and a
``Cast`` is put on each edge between a node kept in float32 and a float16 one. With
``keep_io_types`` (default) the graph's inputs and outputs stay float32 (a Cast right after
each input and before each output), so callers feed and read the same types as before.

Kept in float32 (the *block list*):

* the converter's own list of ops without float16 kernels (``Resize``, ``TopK``, ``Range``,
  ``NonMaxSuppression``, ...), always;
* ``op_block_list`` (op types) and ``node_block_list`` (node names) given by the user;
* with ``auto_block`` (default), nodes found by measurement on the calibration feeds:

  1. *overflow*: a node with a float32 output whose largest magnitude exceeds ``headroom`` x
     65504 (float16's largest finite value) would produce ``inf`` in float16;
  2. *error*: with ``e(t) = max|t16 - t32| / max|t32|`` over the feeds, a node's *own*
     error is ``e`` of its outputs when the node alone runs in float16, fed the float32
     reference inputs rounded to float16 (one graph of all nodes cut apart, run once).
     While some graph output's ``e`` (whole model converted) exceeds ``tolerance``, the nodes
     with the largest own error are blocked, 1, 2, 4, ... per round (at most ``max_rounds``
     rounds, ``max_blocked`` nodes), and the model is converted and measured again. The
     block list of the round with the lowest output error is kept (a round must lower it by
     5%; two rounds without that end the search): error made by amplification downstream
     (a steep Sigmoid over large logits) is not removed by blocking, and then blocked nodes
     only cost speed.

Weights are clamped to float16's range by the converter (``max_finite_val`` = 65504, values
smaller than float16's smallest subnormal, 6e-8, in magnitude become it, keeping their sign).

onnxruntime's CPU provider runs float16 ops it has no float16 kernel for in float32 (it puts
Casts around them), so on CPU the error measured is mostly the rounding of weights and of
some tensors: overflow is therefore found from the float32 ranges, not from a float16 run,
and a float16 runtime (TensorRT, a GPU, ARM with FP16 arithmetic) can differ more.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import onnx

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import PreconditionError
from graphslim.feeds import FeedError, load_feeds, random_feeds
from graphslim.runtime import run_model, with_outputs

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
MIN_GAIN = 0.05  # a round must cut the output error by this fraction to keep its blocks
PATIENCE = 2  # rounds in a row without that gain end the search
RANDOM_FEEDS = 2  # without calibration data: this many seeded random feeds (and a note)
INSTALL_HINT = "pip install 'onnx-graphslim[fp16]' (or: pip install onnxconverter-common)"


@dataclass(frozen=True, kw_only=True)
class ConvertFp16Options:
    keep_io_types: bool = option(
        True, help="graph inputs/outputs stay float32 (Casts inside); false: they become float16"
    )
    op_block_list: tuple[str, ...] = option(
        (), help="op types kept in float32 (added to the converter's own list)", factory=tuple
    )
    node_block_list: tuple[str, ...] = option((), help="node names kept in float32", factory=tuple)
    auto_block: bool = option(
        True, help="find nodes to keep in float32 by measurement (overflow, then error)"
    )
    tolerance: float = option(
        1e-2, help="auto_block target: max-rel (max|d| / max|ref|) of every output vs float32"
    )
    headroom: float = option(
        0.5, help="auto_block: block a node whose float32 output exceeds headroom x 65504"
    )
    max_rounds: int = option(5, help="auto_block: error rounds (1, 2, 4, ... nodes each)")
    max_blocked: int = option(32, help="auto_block: at most this many nodes blocked for error")
    calibration: str = option(
        "",
        help="feeds to measure on: image folder or .npy/.npz; empty: the context's feeds, "
        "else seeded random inputs (with a note)",
    )
    preprocess: str = option("yolo", help="image preprocessing for a calibration folder")
    calibration_size: int = option(4, help="at most this many calibration samples")

    def validate(self) -> None:
        if not self.tolerance > 0:
            raise ValueError("tolerance must be > 0")
        if not 0 < self.headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        if self.max_rounds < 0 or self.max_blocked < 0 or self.calibration_size < 1:
            raise ValueError("max_rounds, max_blocked >= 0 and calibration_size >= 1")


class ConvertFp16(Pass):
    name = "convert-fp16"
    summary = "float32 -> float16 (onnxconverter-common), block list found by measurement"
    numerics = "lossy"
    Options = ConvertFp16Options
    after = ("fold-bn", "constants-to-initializers", "prune-channels", "factorize-conv")
    before = ("quantize-int8",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o: ConvertFp16Options = self.options
        convert = _converter()
        given = {n.name for n in model.graph.node}
        unknown = sorted(set(o.node_block_list) - given)
        if unknown:
            raise PreconditionError(
                f"convert-fp16: node_block_list names {unknown[0]!r}, which is not a node of "
                "the model (see `graphslim inspect`)"
            )
        if _has_float16(model):
            reason = "the model already holds float16 tensors (converted before): left as is"
            return PassResult(model, False, {"nodes_fp16": 0}, [("model", reason)])
        if not _has_float32(model):
            return PassResult(model, False, {"nodes_fp16": 0}, [("model", "no float32 tensors")])
        names = _name_nodes(model)
        ops = tuple(sorted(set(convert.default_ops) | set(o.op_block_list)))
        blocked: dict[str, str] = {n: "node_block_list" for n in o.node_block_list}
        notes: list[str] = []
        error = math.nan
        if o.auto_block:
            feeds, notes = _feeds(model, o, ctx)
            error, blocked, more = _search(model, feeds, convert, ops, blocked, o)
            notes += more
            if error > o.tolerance:
                notes.append(
                    f"auto_block: best output max-rel {error:.3g} > tolerance {o.tolerance:g}; "
                    "blocking the nodes with the largest own error did not lower it further "
                    "(error amplified downstream); block more with op_block_list / "
                    "node_block_list, or judge the result by task metrics"
                )
        half = convert(model, ops, list(blocked), o.keep_io_types)
        _replace(model, half)
        op_of = {n.name: n.op_type for n in model.graph.node}
        kept = [n for n in names if n in blocked or _op(names[n]) in ops]
        skipped = [
            (n, f"kept in float32: {blocked.get(n) or f'op {_op(names[n])} in the op block list'}")
            for n in kept
        ]
        counters: dict[str, int | float] = {
            "nodes_fp16": len(names) - len(kept),
            "nodes_fp32": len(kept),
            "auto_blocked": sum(r != "node_block_list" for r in blocked.values()),
            "casts_added": sum(v == "Cast" for v in op_of.values())
            - sum(_op(n) == "Cast" for n in names.values()),
        }
        if not math.isnan(error):
            counters["max_rel"] = error
        return PassResult(model, True, counters, skipped, notes)


# ----------------------------------------------------------------------------- conversion


class _Converter:
    """onnxconverter-common's converter with warnings silenced and the float16 range."""

    def __init__(self, module) -> None:
        self.module = module
        self.default_ops = tuple(module.DEFAULT_OP_BLOCK_LIST)

    def __call__(self, model, ops, nodes, keep_io_types) -> onnx.ModelProto:
        _split_shared_initializers(model, set(ops), set(nodes))
        with warnings.catch_warnings():
            # One warning per clamped weight value (thousands on a real model).
            warnings.simplefilter("ignore", UserWarning)
            return self.module.convert_float_to_float16(
                model,
                min_positive_val=float(np.finfo(np.float16).smallest_subnormal),
                max_finite_val=FP16_MAX,
                keep_io_types=keep_io_types,
                op_block_list=list(ops),
                node_block_list=list(nodes),
                # The converter edits its argument: callers pass copies (see _copy).
            )


def _split_shared_initializers(model: onnx.ModelProto, ops: set[str], nodes: set[str]) -> None:
    """Give blocked nodes their own copy of an initializer they share with converted nodes.

    The converter keeps such an initializer float32 for the blocked node and then feeds the
    same float32 tensor to the float16 node (a type error in onnxruntime); a copy named
    ``{name}/fp32`` for the blocked consumers keeps the two apart. Values are unchanged."""
    g = model.graph
    inits = {t.name: t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    blocked = [n for n in g.node if n.name in nodes or n.op_type in ops]
    converted = {i for n in g.node if not (n.name in nodes or n.op_type in ops) for i in n.input}
    copies: dict[str, str] = {}
    for node in blocked:
        for j, name in enumerate(node.input):
            if name in inits and name in converted:
                if name not in copies:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[name])
                    copy.name = copies[name] = f"{name}/fp32"
                    g.initializer.append(copy)
                node.input[j] = copies[name]


def _converter() -> _Converter:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise PreconditionError(
            f"convert-fp16 needs onnxconverter-common: {INSTALL_HINT}"
        ) from None
    return _Converter(float16)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _replace(model: onnx.ModelProto, new: onnx.ModelProto) -> None:
    # In place (the contract's choice for this pass): the caller's object becomes the result.
    if new is not model:
        model.CopyFrom(new)


def _name_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Nodes by name; unnamed nodes get a stable name (the block list addresses names)."""
    seen: dict[str, onnx.NodeProto] = {}
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}" if not node.name else f"{node.name}_{k}"
        seen[node.name] = node
    return seen


def _op(node: onnx.NodeProto) -> str:
    return node.op_type


def _has_float16(model: onnx.ModelProto) -> bool:
    f16 = onnx.TensorProto.FLOAT16
    g = model.graph
    return any(t.data_type == f16 for t in g.initializer) or any(
        a.name == "to" and a.i == f16 for n in g.node if n.op_type == "Cast" for a in n.attribute
    )


def _has_float32(model: onnx.ModelProto) -> bool:
    f32 = onnx.TensorProto.FLOAT
    g = model.graph
    return any(t.data_type == f32 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == f32 for v in (*g.input, *g.output, *g.value_info)
    )


# ------------------------------------------------------------------------------ measurement


def _feeds(model, o: ConvertFp16Options, ctx: PassContext):
    try:
        if o.calibration.strip():
            feeds = load_feeds(
                o.calibration.strip(),
                model,
                seed=ctx.seed,
                shapes=ctx.input_shapes,
                preprocess=o.preprocess,
                limit=o.calibration_size,
            )
            return feeds, []
        if ctx.feeds:
            return list(ctx.feeds)[: o.calibration_size], []
        note = (
            "auto_block measured on seeded random inputs (no calibration data): real inputs "
            "can reach other ranges; give calibration=IMAGE_FOLDER or feeds in the context"
        )
        log.warning(note)
        feeds = random_feeds(model, count=RANDOM_FEEDS, seed=ctx.seed, shapes=ctx.input_shapes)
        return feeds, [note]
    except FeedError as exc:
        raise PreconditionError(
            f"convert-fp16 cannot build feeds for auto_block: {exc} (give input shapes, "
            "calibration data, or auto_block=false)"
        ) from exc


def _all_tensors(model, feeds) -> dict[str, list[np.ndarray]]:
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


def _local_errors(model, feeds, reference, convert, ops) -> dict[str, float]:
    """Each node's own float16 error: the node run alone in float16 on the float32 reference
    inputs (rounded to float16 as the converted graph would), against its float32 output.

    One graph holds every node cut loose from its producers: each activation input ``t`` of
    a node becomes a graph input of its own, fed the reference value, and every node output
    is a graph output. One conversion and one run measure all nodes at once."""
    cut = _copy(model)
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


def _search(model, feeds, convert, ops, blocked, o: ConvertFp16Options):
    """Overflow, then error: see the module docstring. Returns ``(worst output max-rel,
    blocked, notes)``."""
    blocked = dict(blocked)
    notes: list[str] = []
    reference = _all_tensors(model, feeds)
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
        own = _local_errors(model, feeds, reference, convert, ops)
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
        half = convert(_copy(model), ops, list(blocked), o.keep_io_types)
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
