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

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import PreconditionError
from graphslim.feeds import FeedError, load_feeds, random_feeds
from graphslim.passes import _fp16_search as S

log = logging.getLogger(__name__)

FP16_MAX = S.FP16_MAX
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
        # Op type per node name (names given to unnamed nodes first: blocks address names).
        names = {name: node.op_type for name, node in _name_nodes(model).items()}
        ops = tuple(sorted(set(convert.default_ops) | set(o.op_block_list)))
        blocked: dict[str, str] = {n: "node_block_list" for n in o.node_block_list}
        notes: list[str] = []
        error = math.nan
        if o.auto_block:
            feeds, notes = _feeds(model, o, ctx)
            error, blocked, more = S.search(model, feeds, convert, ops, blocked, o)
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
        kept = [n for n in names if n in blocked or names[n] in ops]
        skipped = [
            (n, f"kept in float32: {blocked.get(n) or f'op {names[n]} in the op block list'}")
            for n in kept
        ]
        counters: dict[str, int | float] = {
            "nodes_fp16": len(names) - len(kept),
            "nodes_fp32": len(kept),
            "auto_blocked": sum(r != "node_block_list" for r in blocked.values()),
            "casts_added": sum(v == "Cast" for v in op_of.values())
            - sum(op == "Cast" for op in names.values()),
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
                # The converter edits its argument: callers pass copies (_fp16_search.copy).
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
