"""Shared pieces of the conv rewrites (factorize-conv, depthwise-separable, dynamic-conv).

* :class:`ConvSite`: a 2-D ``Conv`` whose weight is an initializer, with its attributes split
  per spatial axis (``pads`` as ONNX writes them: ``[top, left, bottom, right]``) and, where
  shape inference knows them, its input and output shapes;
* rank selection from singular values: an absolute rank, a fraction of the full rank, or the
  smallest rank that keeps a fraction of the singular-value energy ``sum(s[:r]**2) / sum(s**2)``;
  the relative Frobenius error of the truncation is ``sqrt(1 - energy kept)`` (Eckart-Young);
* node/initializer builders with deterministic, collision-free names.

Everything numeric is done in float64 and stored in the weight's dtype.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphslim import graph as G
from graphslim.contract import option
from graphslim.metrics import infer_shapes

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def include_option():
    return option(
        None, help="regex (searched in the node name, else its output name): only matching Convs"
    )


def exclude_option():
    return option(None, help="regex: matching Convs are left alone")


def check_regexes(opts) -> None:
    for key in ("include", "exclude"):
        pattern = getattr(opts, key)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{key} {pattern!r} is not a valid regex: {exc}") from None


def selects(opts, label: str) -> str | None:
    """None when ``opts.include`` / ``opts.exclude`` select ``label``, else the reason not."""
    if opts.include is not None and not re.search(opts.include, label):
        return f"not matched by include {opts.include!r}"
    if opts.exclude is not None and re.search(opts.exclude, label):
        return f"matched by exclude {opts.exclude!r}"
    return None


@dataclass
class ConvSite:
    node: onnx.NodeProto
    label: str
    weight_name: str
    weight: np.ndarray  # [Cout, Cin/group, kh, kw], the initializer's dtype
    bias: str | None  # tensor name (initializer or not), passed through unchanged
    group: int
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    auto_pad: str
    x_shape: tuple[int, int, int, int] | None  # static input shape, when known
    y_shape: tuple[int, int, int, int] | None  # static output shape, when known

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    def geometry(self) -> tuple[int, int, int, int, int, bool]:
        """``(N, H, W, Ho, Wo, known)``. Unknown shapes give a per-output-pixel estimate
        (``Ho = Wo = 1``, ``H, W`` = the strides, batch 1) and ``known=False``."""
        if self.x_shape is not None and self.y_shape is not None:
            n, _, h, w = self.x_shape
            return n, h, w, self.y_shape[2], self.y_shape[3], True
        return 1, self.strides[0], self.strides[1], 1, 1, False


def label_of(node: onnx.NodeProto) -> str:
    return G.node_name(node)


def graph_shapes(model: onnx.ModelProto, input_shapes=None) -> dict:
    return infer_shapes(model, input_shapes)


def conv_site(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    inits: dict[str, onnx.TensorProto],
    shapes: dict,
) -> ConvSite | str:
    """The Conv's facts, or the reason it cannot be rewritten (any Conv group)."""
    if len(node.input) < 2 or not node.input[1]:
        return "Conv without a weight input"
    w_name = node.input[1]
    t = inits.get(w_name)
    if t is None:
        made = G.producers(graph).get(w_name)
        if made is not None and made.op_type == "Constant":
            return f"weight {w_name!r} is a Constant node (run constants-to-initializers first)"
        return f"weight {w_name!r} is computed at run time, not an initializer"
    if t.data_type not in _FLOAT:
        return f"weight {w_name!r} is not float ({onnx.TensorProto.DataType.Name(t.data_type)})"
    if len(t.dims) != 4:
        return f"{len(t.dims) - 2}-D convolution; only 2-D Conv is rewritten"
    auto_pad = G.attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return ConvSite(
        node=node,
        label=label_of(node),
        weight_name=w_name,
        weight=numpy_helper.to_array(t),
        bias=bias,
        group=int(G.attr(node, "group", 1)),
        strides=tuple(G.attr(node, "strides", [1, 1])),
        dilations=tuple(G.attr(node, "dilations", [1, 1])),
        pads=tuple(G.attr(node, "pads", [0, 0, 0, 0])),
        auto_pad=auto_pad,
        x_shape=_static4(shapes.get(node.input[0])),
        y_shape=_static4(shapes.get(node.output[0])),
    )


def _static4(shape) -> tuple[int, int, int, int] | None:
    if shape is None or len(shape) != 4:
        return None
    dims = list(shape)
    if not isinstance(dims[0], int):  # a symbolic batch: count MACs per sample
        dims[0] = 1
    if all(isinstance(d, int) and d > 0 for d in dims):
        return tuple(dims)
    return None


def conv_macs(n: int, cout: int, ho: int, wo: int, cin_per_group: int, kh: int, kw: int) -> int:
    """MACs of a Conv as graphslim.metrics counts them: N*Cout*Ho*Wo * (Cin/group)*kh*kw."""
    return n * cout * ho * wo * cin_per_group * kh * kw


# ----------------------------------------------------------------------- rank selection


def energy_fraction(s2: np.ndarray) -> np.ndarray:
    """Cumulative fraction of energy kept by ranks 1..len(s2) (``s2``: squared singular
    values, largest first; all-zero gives all ones)."""
    total = float(s2.sum())
    if total <= 0.0:
        return np.ones_like(s2, dtype=np.float64)
    return np.cumsum(s2, dtype=np.float64) / total


def choose_rank(
    energy_curve: np.ndarray,
    *,
    rank: int | None = None,
    ratio: float | None = None,
    energy: float | None = None,
) -> int:
    """Rank 1..full from an absolute ``rank``, a ``ratio`` of the full rank, or the smallest
    rank whose kept energy reaches ``energy`` (exactly one is given)."""
    full = len(energy_curve)
    if rank is not None:
        return max(1, min(rank, full))
    if ratio is not None:
        return max(1, min(full, math.ceil(ratio * full - 1e-9)))
    assert energy is not None
    reached = np.nonzero(energy_curve >= energy - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else full


def rel_error(energy_curve: np.ndarray, r: int) -> float:
    """Relative Frobenius error of the best rank-``r`` approximation."""
    return float(math.sqrt(max(0.0, 1.0 - float(energy_curve[r - 1]))))


def check_fraction(name: str, value: float | None, *, closed_low: bool = False) -> None:
    if value is None:
        return
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    if not ok:
        raise ValueError(f"{name} must be in {'[0, 1]' if closed_low else '(0, 1]'}, got {value}")


# ----------------------------------------------------------------------------- building


class Builder:
    """Adds initializers and Conv nodes with unique, deterministic names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.taken = G.all_names(graph)

    def name(self, base: str) -> str:
        return G.unique_name(self.taken, base)

    def initializer(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv(
        self,
        name: str,
        inputs: list[str],
        output: str,
        *,
        strides=(1, 1),
        dilations=(1, 1),
        pads=(0, 0, 0, 0),
        auto_pad: str = "NOTSET",
        group: int = 1,
    ) -> onnx.NodeProto:
        attrs: dict = {"strides": list(strides), "dilations": list(dilations)}
        if auto_pad != "NOTSET":
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads)
        if group != 1:
            attrs["group"] = group
        return helper.make_node("Conv", inputs, [output], name=self.name(name), **attrs)


def splice(graph: onnx.GraphProto, replacements: dict[int, list[onnx.NodeProto]]) -> None:
    """Replace ``graph.node[i]`` by ``replacements[i]`` (in place, order kept)."""
    if not replacements:
        return
    nodes = list(graph.node)
    out: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        out.extend(replacements.get(i, [node]))
    del graph.node[:]
    graph.node.extend(out)


def layer_note(detail: dict, what: str) -> str:
    est = "" if detail["macs_known"] else " (per output pixel, shapes unknown)"
    return (
        f"{detail['node']}: {what} {detail[what]}/{detail['full_' + what]}, MACs "
        f"{detail['macs_before']:,} -> {detail['macs_after']:,}{est}, weight error "
        f"{detail['weight_rel_error']:.3g}"
    )


def decline_kernel(site: ConvSite, min_kernel: int, verb: str) -> str | None:
    """Why a Conv is not rewritten (``verb``: "factorize" / "separate"), or None."""
    kh, kw = site.kernel
    if site.group != 1:
        return f"grouped Conv (group={site.group}); only group 1 is {verb}d"
    if kh == 1 and kw == 1:
        return f"1x1 (pointwise) Conv: nothing to {verb}"
    if min(kh, kw) < min_kernel:
        return f"{kh}x{kw} kernel: a side is below min_kernel={min_kernel}"
    return None


def rewrite_convs(model, ctx, opts, *, verb: str, size: str, counter: str, plan, rewrite):
    """The loop both SVD rewrites share: pick Convs (include/exclude, group 1, kernel size),
    plan each (``plan(site, opts)`` -> dict with ``size``, ``full_<size>``, MACs, error),
    skip those not cheaper when ``only_if_cheaper``, rewrite the rest with
    ``rewrite(site, plan, builder)`` and report counters, notes and per-layer details."""
    from graphslim.contract import PassResult

    g = model.graph
    inits = G.initializers(g)
    convs = [(i, n) for i, n in enumerate(g.node) if n.op_type == "Conv"]
    shapes = graph_shapes(model, ctx.input_shapes) if convs else {}
    build = Builder(g)
    skipped: list[tuple[str, str]] = []
    details: list[dict] = []
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for i, node in convs:
        label = G.node_name(node)
        reason = selects(opts, label)
        site = conv_site(g, node, inits, shapes) if reason is None else reason
        if isinstance(site, str):
            skipped.append((label, site))
            continue
        reason = decline_kernel(site, opts.min_kernel, verb)
        if reason:
            skipped.append((label, reason))
            continue
        p = plan(site, opts)
        if opts.only_if_cheaper and p["macs_after"] >= p["macs_before"]:
            skipped.append(
                (
                    label,
                    f"{size} {p[size]} of {p['full_' + size]}: MACs "
                    f"{p['macs_before']:,} -> {p['macs_after']:,}, not cheaper",
                )
            )
            continue
        replacements[i] = rewrite(site, p, build)
        details.append(p)
    splice(g, replacements)
    counters = {
        counter: len(details),
        "macs_before": sum(d["macs_before"] for d in details),
        "macs_after": sum(d["macs_after"] for d in details),
    }
    if details:
        counters["weight_rel_error_max"] = max(d["weight_rel_error"] for d in details)
    notes = [layer_note(d, size) for d in details]
    for d in details:
        d.pop("_factors")
    return PassResult(model, bool(details), counters, skipped, notes, details)
