"""dynamic-conv: CondConv-style dynamic convolution in standard ONNX ops.

A Conv ``y = W * x + b`` becomes ``K`` expert Convs mixed per sample by a softmax attention:

    a  = Softmax(Conv1x1(GlobalAveragePool(x); Wa [K, Cin, 1, 1], ba [K]), axis=1)   [N, K, 1, 1]
    y  = Sum_k  a[:, k] * (W_k * x + b_k)

Convolution is linear, so this equals one Conv per sample with the mixed kernel
``sum_k a_k W_k`` and mixed bias ``sum_k a_k b_k``. At insertion every ``W_k = W`` and
``b_k = b``; the attention sums to 1, so the outputs are unchanged up to float rounding (the
pass is exact now, its value comes after fine-tuning). The attention weights ``Wa`` are small
seeded random values (``attention_std``, from the context's RNG) so that, once trained, the
experts can drift apart; ``attention_std=0`` gives zeros, i.e. ``a_k = 1/K``.

Graph, per Conv ``{node}``: ``{node}/gap`` (GlobalAveragePool), ``{node}/attention`` (Conv),
``{node}/softmax``, ``{node}/expert{k}`` (Conv, attributes copied, grouped Convs included),
``{node}/gate{k}`` (Gather of column k), ``{node}/mix{k}`` (Mul) and ``{node}/sum`` (Sum, writes
the original output name). Initializers: ``{weight}/expert{k}``, ``{bias}/expert{k}``,
``{weight}/attention``, ``{weight}/attention_bias``, ``{weight}/gate{k}``.

Declined, with the reason: 1-D/3-D Convs, non-initializer weights, Convs that are already part
of a dynamic conv (so a second run changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.passes._conv_svd import (
    Builder,
    ConvSite,
    check_regexes,
    conv_site,
    exclude_option,
    include_option,
    selects,
    splice,
)


@dataclass(frozen=True, kw_only=True)
class DynamicConvOptions:
    experts: int = option(4, help="number K of parallel kernels mixed per sample")
    attention_std: float = option(
        0.01,
        help="std of the seeded random attention weights (0: zeros; outputs unchanged either way)",
    )
    include: str | None = include_option()
    exclude: str | None = exclude_option()

    def validate(self) -> None:
        check_regexes(self)
        if self.experts < 2:
            raise ValueError(f"experts must be >= 2, got {self.experts}")
        if self.attention_std < 0:
            raise ValueError(f"attention_std must be >= 0, got {self.attention_std}")


class DynamicConv(Pass):
    name = "dynamic-conv"
    summary = "Conv -> K expert Convs mixed by per-sample softmax attention (CondConv); exact"
    numerics = "exact"
    Options = DynamicConvOptions
    after = ("constants-to-initializers", "fold-bn")

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        g = model.graph
        inits = G.initializers(g)
        made_by = G.producers(g)
        readers = G.consumers(g)
        build = Builder(g)
        skipped: list[tuple[str, str]] = []
        details: list[dict] = []
        replacements: dict[int, list[onnx.NodeProto]] = {}
        for i, node in enumerate(g.node):
            if node.op_type != "Conv":
                continue
            label = G.node_name(node)
            reason = selects(opts, label) or _part_of_dynamic(node, made_by, readers)
            site = conv_site(g, node, inits, {}) if reason is None else reason
            if isinstance(site, str):
                skipped.append((label, site))
                continue
            replacements[i] = _rewrite(site, opts, build, ctx.rng)
            details.append({"node": label, "experts": opts.experts})
        splice(g, replacements)
        counters = {"layers_made_dynamic": len(details), "experts": opts.experts}
        return PassResult(model, bool(details), counters, skipped, [], details)


def _part_of_dynamic(node, made_by, readers) -> str | None:
    """A reason when ``node`` is the attention Conv or an expert of an inserted dynamic conv."""
    src = made_by.get(node.input[0])
    outs = readers.get(node.output[0], [])
    if src is not None and src.op_type == "GlobalAveragePool":
        for soft in outs:
            gates = readers.get(soft.output[0], []) if soft.op_type == "Softmax" else []
            if gates and all(g.op_type == "Gather" for g in gates):
                return "attention Conv of a dynamic conv"
    for r in outs:
        if r.op_type == "Mul":
            other = made_by.get(r.input[1] if r.input[0] == node.output[0] else r.input[0])
            if other is not None and other.op_type == "Gather":
                soft = made_by.get(other.input[0])
                if soft is not None and soft.op_type == "Softmax":
                    return "already an expert of a dynamic conv"
    return None


def _rewrite(site: ConvSite, opts: DynamicConvOptions, build: Builder, rng) -> list:
    node, base, k_count = site.node, site.label, opts.experts
    x, y = node.input[0], node.output[0]
    w = site.weight
    cin = w.shape[1] * site.group
    bias = None
    if site.bias is not None:
        bias = G.tensor_value(build.graph, site.bias)
    att_w = (rng.standard_normal((k_count, cin, 1, 1)) * opts.attention_std).astype(w.dtype)
    att_w_name = build.initializer(f"{site.weight_name}/attention", att_w)
    att_b_name = build.initializer(
        f"{site.weight_name}/attention_bias", np.zeros(k_count, dtype=w.dtype)
    )
    pooled, logits, attn = (
        build.name(f"{base}/{s}_output") for s in ("gap", "attention", "softmax")
    )
    nodes = [
        helper.make_node("GlobalAveragePool", [x], [pooled], name=build.name(f"{base}/gap")),
        build.conv(f"{base}/attention", [pooled, att_w_name, att_b_name], logits),
        helper.make_node("Softmax", [logits], [attn], name=build.name(f"{base}/softmax"), axis=1),
    ]
    mixed = []
    for k in range(k_count):
        w_k = build.initializer(f"{site.weight_name}/expert{k}", w)
        inputs = [x, w_k]
        if site.bias is not None:
            # A run-time bias is shared by every expert; an initializer gets a copy per expert.
            inputs.append(
                build.initializer(f"{site.bias}/expert{k}", bias) if bias is not None else site.bias
            )
        out_k = build.name(f"{base}/expert{k}_output")
        nodes.append(
            build.conv(
                f"{base}/expert{k}",
                inputs,
                out_k,
                strides=site.strides,
                dilations=site.dilations,
                pads=site.pads,
                auto_pad=site.auto_pad,
                group=site.group,
            )
        )
        index = build.initializer(f"{site.weight_name}/gate{k}", np.array([k], dtype=np.int64))
        gate = build.name(f"{base}/gate{k}_output")
        nodes.append(
            helper.make_node(
                "Gather", [attn, index], [gate], name=build.name(f"{base}/gate{k}"), axis=1
            )
        )
        mix = build.name(f"{base}/mix{k}_output")
        nodes.append(
            helper.make_node("Mul", [out_k, gate], [mix], name=build.name(f"{base}/mix{k}"))
        )
        mixed.append(mix)
    nodes.append(helper.make_node("Sum", mixed, [y], name=build.name(f"{base}/sum")))
    return nodes
