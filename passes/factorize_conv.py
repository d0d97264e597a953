"""factorize-conv: replace a kxk Conv (group 1) by a kx1 Conv with R outputs followed by a
1xk Conv (spatial SVD, as in AIMET).

With ``W[o, i, a, b]`` (``Cout x Cin x kh x kw``), the Conv is

    y[o, p, q] = sum_{i,a,b} W[o,i,a,b] x[i, p*sh + a*dh - pt, q*sw + b*dw - pl]

Write ``W`` as the matrix ``M[(i,a), (o,b)]`` of shape ``(Cin*kh) x (Cout*kw)`` and take its SVD
``M = U S V^T``. Keeping the first ``R`` singular triplets,

    V[r, i, a, 0] = U[(i,a), r] * sqrt(s_r)       kx1 Conv, Cin -> R,  stride (sh, 1),
                                                  dilation (dh, 1), pads (pt, 0, pb, 0)
    H[o, r, 0, b] = sqrt(s_r) * V^T[r, (o,b)]     1xk Conv, R -> Cout, stride (1, sw),
                                                  dilation (1, dw), pads (0, pl, 0, pr), bias

so ``sum_r H[o,r,b] V[r,i,a] = M_R[(i,a),(o,b)]``, the best rank-R approximation of ``W``
(Eckart-Young); with ``R = min(Cin*kh, Cout*kw)`` it is ``W`` itself and the outputs equal the
original up to float rounding. Width padding moves to the second Conv: the first one has no
bias, so zero columns stay zero. ``auto_pad`` SAME/VALID splits per axis the same way.

MACs go from ``N Cout Ho Wo Cin kh kw`` to ``N R Ho W Cin kh + N Cout Ho Wo R kw`` (the kx1
Conv runs over the full input width ``W``). Rank per layer: ``rank``, ``rank_ratio`` of the
full rank, or the smallest rank that keeps ``energy`` of ``sum s^2`` (default 0.99); the
relative weight error ``|W - W_R|_F / |W|_F = sqrt(1 - energy kept)`` is recorded per layer.

Declined, with the reason: group != 1, 1-D/3-D Convs, kernels with a side below
``min_kernel`` (1x1, 1x3: already separable), non-initializer weights, and layers whose MACs
would not drop (``only_if_cheaper``).
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
class FactorizeOptions:
    rank: int | None = option(None, help="rank R of every factorized layer (capped at full rank)")
    rank_ratio: float | None = option(
        None, help="R as a fraction (0, 1] of the layer's full rank min(Cin*kh, Cout*kw)"
    )
    energy: float | None = option(
        None,
        help=f"smallest R keeping this fraction of the singular-value energy sum(s^2) "
        f"(default {DEFAULT_ENERGY} when neither rank nor rank_ratio is given)",
    )
    only_if_cheaper: bool = option(True, help="skip a layer whose MACs would not drop")
    min_kernel: int = option(3, help="factorize only kernels whose both sides are >= this")
    include: str | None = include_option()
    exclude: str | None = exclude_option()

    def validate(self) -> None:
        check_regexes(self)
        given = [k for k in ("rank", "rank_ratio", "energy") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rank, rank_ratio, energy (got {', '.join(given)})")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        check_fraction("rank_ratio", self.rank_ratio)
        check_fraction("energy", self.energy)
        if self.min_kernel < 2:
            raise ValueError(f"min_kernel must be >= 2, got {self.min_kernel}")


class FactorizeConv(Pass):
    name = "factorize-conv"
    summary = "kxk Conv -> kx1 Conv (R outputs) + 1xk Conv, SVD-initialised (exact at full rank)"
    numerics = "lossy"
    Options = FactorizeOptions
    after = ("constants-to-initializers", "fold-bn")

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return rewrite_convs(
            model,
            ctx,
            self.options,
            verb="factorize",
            size="rank",
            counter="layers_factorized",
            plan=_plan,
            rewrite=_rewrite,
        )


def spatial_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of ``W`` as the ``(Cin*kh) x (Cout*kw)`` matrix ``M[(i,a), (o,b)]``, in float64."""
    return np.linalg.svd(_spatial_matrix(w), full_matrices=False)


def _spatial_matrix(w: np.ndarray) -> np.ndarray:
    cout, cin, kh, kw = w.shape
    return w.astype(np.float64).transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)


def factors(w: np.ndarray, r: int, svd=None) -> tuple[np.ndarray, np.ndarray]:
    """The kx1 weight ``[R, Cin, kh, 1]`` and the 1xk weight ``[Cout, R, 1, kw]`` of rank ``r``."""
    cout, cin, kh, kw = w.shape
    u, s, vt = svd if svd is not None else spatial_svd(w)
    root = np.sqrt(s[:r])
    vert = (u[:, :r] * root).T.reshape(r, cin, kh, 1)
    horiz = (root[:, None] * vt[:r]).reshape(r, cout, kw).transpose(1, 0, 2)
    return vert, horiz.reshape(cout, r, 1, kw)


def _plan(site: ConvSite, opts: FactorizeOptions) -> dict:
    w = site.weight
    cout, cin, kh, kw = w.shape
    # Singular values only: the rank and the MACs decide; most layers are then skipped as
    # not cheaper, and U, V of a 1536x1536 matrix (ResNet's 512-channel 3x3) cost seconds.
    # _rewrite computes the factors of the layers that are rewritten.
    singular = np.linalg.svd(_spatial_matrix(w), compute_uv=False)
    curve = energy_fraction(singular**2)
    if opts.rank is None and opts.rank_ratio is None:
        energy = opts.energy if opts.energy is not None else DEFAULT_ENERGY
    else:
        energy = None
    r = choose_rank(curve, rank=opts.rank, ratio=opts.rank_ratio, energy=energy)
    n, h, width, ho, wo, known = site.geometry()
    before = conv_macs(n, cout, ho, wo, cin, kh, kw)
    after = conv_macs(n, r, ho, width, cin, kh, 1) + conv_macs(n, cout, ho, wo, r, 1, kw)
    return {
        "node": site.label,
        "kernel": f"{kh}x{kw}",
        "in_channels": cin,
        "out_channels": cout,
        "rank": r,
        "full_rank": len(curve),
        "energy_kept": float(curve[r - 1]),
        "weight_rel_error": rel_error(curve, r),
        "macs_before": before,
        "macs_after": after,
        "macs_known": known,
        "_factors": None,
    }


def _rewrite(site: ConvSite, plan: dict, build: Builder) -> list[onnx.NodeProto]:
    node = site.node
    vert, horiz = factors(site.weight, plan["rank"])
    dtype = site.weight.dtype
    base = site.label
    v_name = build.initializer(f"{site.weight_name}/kx1", vert.astype(dtype))
    h_name = build.initializer(f"{site.weight_name}/1xk", horiz.astype(dtype))
    mid = build.name(f"{base}/kx1_output")
    (sh, sw), (dh, dw) = site.strides, site.dilations
    pt, pl, pb, pr = site.pads
    first = build.conv(
        f"{base}/kx1",
        [node.input[0], v_name],
        mid,
        strides=(sh, 1),
        dilations=(dh, 1),
        pads=(pt, 0, pb, 0),
        auto_pad=site.auto_pad,
    )
    second = build.conv(
        f"{base}/1xk",
        [mid, h_name] + ([site.bias] if site.bias else []),
        node.output[0],
        strides=(1, sw),
        dilations=(1, dw),
        pads=(0, pl, 0, pr),
        auto_pad=site.auto_pad,
    )
    plan["initializers"] = [v_name, h_name]
    return [first, second]
