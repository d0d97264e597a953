"""quantize-int8{mode=dynamic}: onnxruntime's dynamic quantization of MatMul-style ops.

Weights are quantized once, offline (s8, symmetric; per output channel with ``per_channel``);
activations are quantized *at run time*, per tensor, from each input's own min/max
(``DynamicQuantizeLinear``: ``s = (max(x, 0) - min(x, 0)) / 255``, u8 with zero point), then
``MatMulInteger`` / ``DynamicQuantizeMatMul`` multiply in integers and rescale to float. No
calibration data is needed and no activation range can be wrong for an input unlike the
calibration set; the price is computing the range of every quantized activation on every run.
That suits MatMul/Gemm-heavy models (transformer blocks, SVTR text recognizers, RNNs), where
onnxruntime's documentation recommends it; for CNNs static quantization is faster (dynamic
Conv runs ``ConvInteger``, which onnxruntime does not fuse).

Ops quantized: :data:`DYNAMIC_OPS` (``MatMul`` with a constant weight, ``Attention``, ``LSTM``,
``Gather`` of embeddings are onnxruntime's integer-op registry for dynamic mode; Conv is left
float on purpose). x86 without VNNI gets ``reduce_range`` (7-bit weights) for the same
saturation reason as static (:mod:`passes._quant_isa`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from graphslim.errors import PreconditionError

log = logging.getLogger("graphslim.passes.quantize_int8")

DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "GRU")
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention")


def quantize_dynamic(
    pre_path: Path, out: Path, *, exclude: list[str], per_channel: bool, reduce_range: bool
) -> onnx.ModelProto:
    """``onnxruntime.quantization.quantize_dynamic`` of ``pre_path`` into ``out``, s8 weights."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    try:
        ort_dynamic(
            str(pre_path),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=list(DYNAMIC_OPS),
            nodes_to_exclude=list(exclude),
            # a MatMul of two activations (attention scores) has no weight to quantize offline
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreconditionError(
            f"onnxruntime cannot quantize this model dynamically: {type(exc).__name__}: "
            f"{first}; keep the offending nodes in float with exclude=[...]"
        ) from exc
    return onnx.load_model(str(out))


def integer_nodes(model: onnx.ModelProto) -> int:
    """How many nodes run as dynamic-quantized integer ops."""
    return sum(n.op_type in INTEGER_OPS for n in model.graph.node)
