"""depthwise-separable: replace a kxk Conv (group 1) by a depthwise kxk Conv with multiplier M
(group = Cin, Cin*M outputs) followed by a 1x1 Conv, SVD-initialised per input channel.

The Conv ``y[o] = sum_i W[o, i] * x[i]`` (``*``: 2-D correlation with the Conv's stride, pads
and dilation) splits by input channel. For channel ``i`` take ``A_i = W[:, i, :, :]`` as a
``Cout x (kh*kw)`` matrix with SVD ``A_i = U S V^T``; its best rank-M approximation gives

    D[i*M + m, 0] = sqrt(s_m) * V^T[m]  reshaped kh x kw     depthwise Conv, group Cin,
                                                             stride/pads/dilation as before
    P[o, i*M + m] = U[o, m] * sqrt(s_m)                      1x1 Conv Cin*M -> Cout, bias

so ``sum_m P[o, i*M+m] D[i*M+m] = A_i`` truncated to rank M. With ``M = min(Cout, kh*kw)`` the
product is ``W`` and the outputs equal the original up to float rounding. The relative weight
error is ``sqrt(sum_i sum_{m>=M} s_im^2 / |W|_F^2)``.

MACs go from ``N Cout Ho Wo Cin kh kw`` to ``N Cin M Ho Wo kh kw + N Cout Ho Wo Cin M``.
Multiplier per layer: ``multiplier``, or the smallest M whose kept energy over all channels
reaches ``energy`` (default 0.99). Declined, with the reason: group != 1, 1-D/3-D Convs,
kernels with a side below ``min_kernel``, non-initializer weights, and layers whose MACs would
not drop (``only_if_cheaper``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.passes._conv_svd import (
    Builder,
    ConvSite,
    check_fraction,
    check_regexes,
    choose_rank,
    conv_macs,
    energy_fraction,
    exclude_option,
    include_option,
    rel_error,
    rewrite_convs,
)

DEFAULT_ENERGY = 0.99


@dataclass(frozen=True, kw_only=True)
class DepthwiseSeparableOptions:
    multiplier: int | None = option(
        None, help="depthwise multiplier M of every layer (capped at min(Cout, kh*kw))"
    )
    energy: float | None = option(
        None,
        help=f"smallest M keeping this fraction of the singular-value energy over all input "
        f"channels (default {DEFAULT_ENERGY} when multiplier is not given)",
    )
    only_if_cheaper: bool = option(True, help="skip a layer whose MACs would not drop")
    min_kernel: int = option(3, help="rewrite only kernels whose both sides are >= this")
    include: str | None = include_option()
    exclude: str | None = exclude_option()

    def validate(self) -> None:
        check_regexes(self)
        if self.multiplier is not None and self.energy is not None:
            raise ValueError("give one of multiplier, energy (got both)")
        if self.multiplier is not None and self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        check_fraction("energy", self.energy)
        if self.min_kernel < 2:
            raise ValueError(f"min_kernel must be >= 2, got {self.min_kernel}")


class DepthwiseSeparable(Pass):
    name = "depthwise-separable"
    summary = "kxk Conv -> depthwise kxk (multiplier M) + 1x1 Conv, SVD-initialised per channel"
    numerics = "lossy"
    Options = DepthwiseSeparableOptions
    after = ("constants-to-initializers", "fold-bn")

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return rewrite_convs(
            model,
            ctx,
            self.options,
            verb="separate",
            size="multiplier",
            counter="layers_separated",
            plan=_plan,
            rewrite=_rewrite,
        )


def channel_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched SVD over input channels of ``A_i = W[:, i]`` as ``Cout x (kh*kw)``, float64:
    ``u [Cin, Cout, F]``, ``s [Cin, F]``, ``vt [Cin, F, kh*kw]`` with ``F = min(Cout, kh*kw)``."""
    cout, cin, kh, kw = w.shape
    a = w.astype(np.float64).transpose(1, 0, 2, 3).reshape(cin, cout, kh * kw)
    return np.linalg.svd(a, full_matrices=False)


def factors(w: np.ndarray, m: int, svd=None) -> tuple[np.ndarray, np.ndarray]:
    """The depthwise weight ``[Cin*M, 1, kh, kw]`` and pointwise weight ``[Cout, Cin*M, 1, 1]``.
    Channels with fewer than ``M`` singular values (``kh*kw < M`` or ``Cout < M``) get zeros."""
    cout, cin, kh, kw = w.shape
    u, s, vt = svd if svd is not None else channel_svd(w)
    f = s.shape[1]
    keep = min(m, f)
    root = np.sqrt(s[:, :keep])  # [Cin, keep]
    dw = np.zeros((cin, m, kh * kw))
    dw[:, :keep] = root[:, :, None] * vt[:, :keep]
    pw = np.zeros((cout, cin, m))
    pw[:, :, :keep] = (u[:, :, :keep] * root[:, None, :]).transpose(1, 0, 2)
    return dw.reshape(cin * m, 1, kh, kw), pw.reshape(cout, cin * m, 1, 1)


def _plan(site: ConvSite, opts: DepthwiseSeparableOptions) -> dict:
    w = site.weight
    cout, cin, kh, kw = w.shape
    svd = channel_svd(w)
    # Energy kept by multiplier m, over all input channels together.
    curve = energy_fraction((svd[1] ** 2).sum(axis=0))
    energy = None
    if opts.multiplier is None:
        energy = opts.energy if opts.energy is not None else DEFAULT_ENERGY
    m = choose_rank(curve, rank=opts.multiplier, energy=energy)
    n, _, _, ho, wo, known = site.geometry()
    before = conv_macs(n, cout, ho, wo, cin, kh, kw)
    after = conv_macs(n, cin * m, ho, wo, 1, kh, kw) + conv_macs(n, cout, ho, wo, cin * m, 1, 1)
    return {
        "node": site.label,
        "kernel": f"{kh}x{kw}",
        "in_channels": cin,
        "out_channels": cout,
        "multiplier": m,
        "full_multiplier": len(curve),
        "energy_kept": float(curve[m - 1]),
        "weight_rel_error": rel_error(curve, m),
        "macs_before": before,
        "macs_after": after,
        "macs_known": known,
        "_factors": factors(w, m, svd),
    }


def _rewrite(site: ConvSite, plan: dict, build: Builder) -> list[onnx.NodeProto]:
    node = site.node
    dw, pw = plan["_factors"]
    dtype = site.weight.dtype
    cin = site.weight.shape[1]
    base = site.label
    dw_name = build.initializer(f"{site.weight_name}/dw", dw.astype(dtype))
    pw_name = build.initializer(f"{site.weight_name}/pw", pw.astype(dtype))
    mid = build.name(f"{base}/dw_output")
    depthwise = build.conv(
        f"{base}/dw",
        [node.input[0], dw_name],
        mid,
        strides=site.strides,
        dilations=site.dilations,
        pads=site.pads,
        auto_pad=site.auto_pad,
        group=cin,
    )
    pointwise = build.conv(
        f"{base}/pw", [mid, pw_name] + ([site.bias] if site.bias else []), node.output[0]
    )
    plan["initializers"] = [dw_name, pw_name]
    return [depthwise, pointwise]
