"""An ONNX graph as a trainable ``torch.nn.Module``: a small interpreter of our own.

Why not onnx2torch: it needs torchvision (which does not install beside the CPU torch wheels
we use), has been unmaintained since 2024, and converts nodes into its own submodules whose
parameter names no longer say which initializer they came from. Fine-tuning here must write
every trained value back into the *same* graph, so the one property we need above all is a
one-to-one, by-name map between graph initializers and torch parameters. An interpreter
gives that for free: :class:`OnnxModule` walks the graph's nodes in order and evaluates each
with ``torch.nn.functional``; its state is exactly the graph's initializers.

Rules:

* A float initializer consumed in a *weight slot* (Conv/ConvTranspose/Gemm inputs 1-2, MatMul
  input 1, BatchNormalization scale/bias, PRelu slope) becomes an ``nn.Parameter``; every
  other initializer (BN running mean/var, shapes, scales, integer tensors) is a buffer.
  ``name_map[initializer name] = attribute name``: the attribute name is the initializer
  name with every character outside ``[A-Za-z0-9_]`` replaced by ``_`` (suffixed ``_2``,
  ``_3``, ... on a clash), so ``state_dict()`` keys read like the graph.
* BatchNormalization always uses its running statistics (inference semantics): training
  changes scale and bias, never the graph's statistics, so the written-back graph is the
  same graph with new values.
* Weights held by ``Constant`` nodes (Paddle exports) are evaluated as constants and are not
  trainable; run the ``constants-to-initializers`` pass first.
* QDQ (QuantizeLinear/DequantizeLinear) models are refused: fine-tune the float model and
  quantize it again.

:func:`parity_check` compares the module with onnxruntime on the same feeds with the
project's tolerances (:mod:`graphslim.validate`: ``max-rel=1e-4|max-abs=1e-6`` by default)
and names the first diverging node when they disagree.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphslim.bridge import BridgeError, require_torch

log = logging.getLogger(__name__)

torch = require_torch()
F = torch.nn.functional

PARAM_SLOTS: Mapping[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
}
QDQ_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear"}
)
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
)
_TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def attribute_name(initializer: str, taken: set[str]) -> str:
    """The module attribute for ``initializer``: ``[A-Za-z0-9_]`` kept, the rest ``_``."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", initializer) or "_"
    if base[0].isdigit():
        base = "_" + base
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class OnnxModule(torch.nn.Module):
    """Evaluates ``model``'s graph with torch; parameters = the graph's weight initializers.

    ``forward(*inputs)`` takes the graph's real inputs in order (or keywords by input name)
    and returns a tuple of the graph's outputs.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        refuse_qdq(model)
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise BridgeError(
                    f"node '{node.name}' ({node.domain}::{node.op_type}) is a custom-domain "
                    "op; the torch bridge runs standard ONNX ops only"
                )
            if node.op_type not in OPS:
                raise BridgeError(
                    f"node '{node.name}' ({node.op_type}): op not supported by the torch "
                    f"bridge (supported: {', '.join(sorted(OPS))})"
                )
        weight_inputs = set()
        for node in graph.node:
            for slot in PARAM_SLOTS.get(node.op_type, ()):
                if slot < len(node.input) and node.input[slot]:
                    weight_inputs.add(node.input[slot])
        self.name_map: dict[str, str] = {}
        self.param_names: list[str] = []  # initializer names that are parameters
        taken: set[str] = set(dir(torch.nn.Module)) | {
            "name_map",
            "param_names",
            "opset",
            "recalibrated",
            "input_names",
            "output_names",
            "taps",
        }
        for init in graph.initializer:
            attr = attribute_name(init.name, taken)
            self.name_map[init.name] = attr
            value = torch.from_numpy(np.array(numpy_helper.to_array(init)))
            if init.data_type in _FLOAT_TYPES and init.name in weight_inputs:
                self.register_parameter(attr, torch.nn.Parameter(value))
                self.param_names.append(init.name)
            else:
                self.register_buffer(attr, value)
        self._calibration = None  # BatchNorm statistics being collected
        self.recalibrated: list[str] = []  # buffers re-estimated by recalibrate_batchnorm
        inits = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        # Intermediate tensors returned after the outputs (forward) or beside them (run):
        # the trainer taps the logits under a Sigmoid/Softmax output this way.
        self.taps: list[str] = []
        self._nodes = [
            (n.op_type, n.name, list(n.input), list(n.output), _attrs(n)) for n in graph.node
        ]

    def recalibrate_batchnorm(self, batches) -> list[str]:
        """Re-estimate every BatchNormalization's mean/var on ``batches`` (tensors).

        As torch's train-mode BatchNorm with cumulative averaging: each BN normalizes with the
        statistics of the batch it sees (so later BNs see recalibrated inputs), and its stored
        mean/var become the averages over all batches (variance unbiased). After pruning,
        the original statistics no longer fit the channels that feed each BN. Returns the
        initializer names updated; :func:`graphslim.bridge.writeback.trained_values` writes
        them back with the parameters.
        """
        self._calibration = {}
        try:
            with torch.no_grad():
                for x in batches:
                    self.run(x)
            updated = []
            for (mean_name, var_name), (means, vars_, counts) in self._calibration.items():
                n = torch.tensor(counts, dtype=torch.float64)
                mean = (torch.stack(means).double() * n[:, None]).sum(0) / n.sum()
                var = (torch.stack(vars_).double() * n[:, None]).sum(0) / n.sum()
                total = float(n.sum())
                var = var * total / max(total - 1, 1)
                for name, value in ((mean_name, mean), (var_name, var)):
                    buf = self.parameter_for(name)
                    buf.copy_(value.to(buf.dtype))
                    updated.append(name)
        finally:
            self._calibration = None
        self.recalibrated = sorted(set(self.recalibrated) | set(updated))
        return updated

    def _calibrate_bn(self, names, args, attrs):
        x, scale, bias = args[:3]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        entry = self._calibration.setdefault((names[3], names[4]), ([], [], []))
        entry[0].append(mean)
        entry[1].append(var)
        entry[2].append(x.numel() // x.shape[1])
        shape = [1, -1] + [1] * (x.dim() - 2)
        eps = attrs.get("epsilon", 1e-5)
        y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
        return y * scale.reshape(shape) + bias.reshape(shape)

    def parameter_for(self, initializer: str):
        """The parameter or buffer that holds ``initializer``."""
        return getattr(self, self.name_map[initializer])

    def forward(self, *args, **kwargs):
        """The graph's outputs, then the tensors named in :attr:`taps`, as one tuple."""
        got = self.run(*args, **kwargs)
        return tuple(got[name] for name in [*self.output_names, *self.taps])

    def tap(self, names) -> None:
        """Also return these intermediate tensors (after the outputs, in this order)."""
        produced = {out for *_, outputs, _ in self._nodes for out in outputs}
        missing = [n for n in names if n not in produced]
        if missing:
            raise BridgeError(f"no node produces tensor {missing[0]!r}; it cannot be tapped")
        self.taps = list(names)

    def run(self, *args, keep_all: bool = False, **kwargs) -> dict:
        """Evaluate the graph; ``{output name: tensor}`` (and the :attr:`taps`), or every
        tensor with ``keep_all``."""
        if len(args) > len(self.input_names):
            raise BridgeError(
                f"model takes {len(self.input_names)} input(s) {self.input_names}, got {len(args)}"
            )
        env: dict = {"": None}
        for name, value in zip(self.input_names, args):
            env[name] = value
        for name, value in kwargs.items():
            env[name] = value
        for init, attr in self.name_map.items():
            env[init] = getattr(self, attr)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise BridgeError(f"missing model input(s) {missing}")
        for k, v in list(env.items()):
            if isinstance(v, np.ndarray):
                env[k] = torch.from_numpy(v)
        for op, name, inputs, outputs, attrs in self._nodes:
            try:
                args_ = [env[i] if i else None for i in inputs]
            except KeyError as exc:
                raise BridgeError(
                    f"node '{name}' ({op}) reads tensor {exc.args[0]!r}, which no earlier node "
                    "produces; is the graph topologically sorted?"
                ) from exc
            args_ = _same_device(op, args_)
            if op == "BatchNormalization" and self._calibration is not None:
                env[outputs[0]] = self._calibrate_bn(inputs, args_, attrs)
                continue
            try:
                result = OPS[op](args_, attrs, self, len(outputs))
            except BridgeError:
                raise
            except Exception as exc:
                raise BridgeError(
                    f"node '{name}' ({op}) failed in torch: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(result, (list, tuple)):
                result = (result,)
            for out, value in zip(outputs, result):
                if out:
                    env[out] = value
        if keep_all:
            return env
        return {n: env[n] for n in [*self.output_names, *self.taps]}


# Ops whose inputs after the first are shape-like (read back to Python ints): on a GPU
# module they stay on the CPU where Shape/Constant made them (no device round trip).
SHAPE_INPUT_OPS = frozenset(
    {"Reshape", "Expand", "Slice", "Unsqueeze", "Squeeze", "Tile", "Resize", "Upsample", "Pad",
     "Split", "TopK", "ConstantOfShape"}
)  # fmt: skip


def _same_device(op: str, args: list) -> list:
    """``args`` with CPU tensors moved to the device of the node's first non-CPU tensor.

    On a CUDA module the weights and activations are on the GPU while Constant and Shape
    nodes make CPU tensors; a node mixing the two (the YOLOv8 head's anchor ``Sub``, a
    ``Gather`` with constant indices) would fail. Shape-like inputs (:data:`SHAPE_INPUT_OPS`,
    ``Reduce*`` axes) stay where they are."""
    dev = next(
        (a.device for a in args if isinstance(a, torch.Tensor) and a.device.type != "cpu"), None
    )
    if dev is None:
        return args
    data = 1 if op in SHAPE_INPUT_OPS or op.startswith("Reduce") else len(args)
    return [
        a.to(dev) if i < data and isinstance(a, torch.Tensor) and a.device.type == "cpu" else a
        for i, a in enumerate(args)
    ]


def refuse_qdq(model: onnx.ModelProto) -> None:
    qdq = next((n for n in model.graph.node if n.op_type in QDQ_OPS), None)
    if qdq is not None:
        raise BridgeError(
            f"node '{qdq.name}' ({qdq.op_type}): the model is quantized (QDQ); fine-tune the "
            "float model, then quantize it again with the quantize-int8 pass"
        )


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = torch.from_numpy(np.array(numpy_helper.to_array(value)))
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


# --------------------------------------------------------------------------------- ops

Op = Callable[[list, dict, "OnnxModule", int], object]
OPS: dict[str, Op] = {}


def op(*names: str):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn

    return deco


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]


def _pad_same(x, kernel, strides, dilations, mode):
    pads_begin, pads_end = [], []
    for i, k in enumerate(kernel):
        size = x.shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (k - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        pads_begin.append(small if mode == "SAME_UPPER" else big)
        pads_end.append(big if mode == "SAME_UPPER" else small)
    return pads_begin + pads_end


def _spatial_pad(x, pads, value=0.0):
    """ONNX pads [b1, b2, ..., e1, e2, ...] over the spatial axes -> F.pad."""
    n = len(pads) // 2
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[n + i]]
    return F.pad(x, torch_pads, value=value) if any(torch_pads) else x


def _conv_pads(x, a, kernel, strides, dilations):
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _pad_same(x, kernel, strides, dilations, auto)
    if auto == "VALID":
        return [0] * (2 * len(kernel))
    return list(a.get("pads", [0] * (2 * len(kernel))))


@op("Conv")
def _conv(i, a, m, n):
    x, w, b = i[0], i[1], i[2] if len(i) > 2 else None
    k = len(w.shape) - 2
    strides = a.get("strides", [1] * k)
    dil = a.get("dilations", [1] * k)
    pads = _conv_pads(x, a, w.shape[2:], strides, dil)
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    if pads[:k] == pads[k:]:
        return fn(x, w, b, strides, pads[:k], dil, a.get("group", 1))
    return fn(_spatial_pad(x, pads), w, b, strides, 0, dil, a.get("group", 1))


@op("ConvTranspose")
def _conv_t(i, a, m, n):
    x, w, b = i[0], i[1], i[2] if len(i) > 2 else None
    k = len(w.shape) - 2
    strides = a.get("strides", [1] * k)
    dil = a.get("dilations", [1] * k)
    pads = list(a.get("pads", [0] * (2 * k)))
    outpad = list(a.get("output_padding", [0] * k))
    if "output_shape" in a or a.get("auto_pad", "NOTSET") != "NOTSET":
        raise BridgeError("ConvTranspose with output_shape/auto_pad is not supported")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[k - 1]
    y = fn(x, w, b, strides, 0, outpad, a.get("group", 1), dil)
    if any(pads):  # crop begin/end pads (asymmetric allowed)
        index = [slice(None), slice(None)]
        for d in range(k):
            index.append(slice(pads[d], y.shape[2 + d] - pads[k + d]))
        y = y[tuple(index)]
    return y


@op("Gemm")
def _gemm(i, a, m, n):
    x, w = i[0], i[1]
    if a.get("transA", 0):
        x = x.transpose(-1, -2)
    if a.get("transB", 0):
        w = w.transpose(-1, -2)
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


@op("MatMul")
def _matmul(i, a, m, n):
    return torch.matmul(i[0], i[1])


@op("BatchNormalization")
def _bn(i, a, m, n):
    x, scale, bias, mean, var = i[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _unary(name, fn):
    OPS[name] = lambda i, a, m, n: fn(i[0])


for _name, _fn in {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Reciprocal": torch.reciprocal,
    "Not": torch.logical_not,
    "Softplus": F.softplus,
    "HardSwish": F.hardswish,
    "Identity": lambda x: x,
}.items():
    _unary(_name, _fn)


@op("Dropout")
def _dropout(i, a, m, n):
    return (i[0], torch.ones_like(i[0], dtype=torch.bool)) if n > 1 else i[0]


@op("LeakyRelu")
def _leaky(i, a, m, n):
    return F.leaky_relu(i[0], a.get("alpha", 0.01))


@op("Elu")
def _elu(i, a, m, n):
    return F.elu(i[0], a.get("alpha", 1.0))


@op("PRelu")
def _prelu(i, a, m, n):
    x, slope = i
    return torch.where(x >= 0, x, x * slope)


@op("HardSigmoid")
def _hsig(i, a, m, n):
    return torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0)


@op("Clip")
def _clip(i, a, m, n):
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(i[0], lo, hi)


def _binary(name, fn):
    OPS[name] = lambda i, a, m, n: fn(i[0], i[1])


def _div(x, y):
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


for _name, _fn in {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": lambda x, y: torch.pow(x, y).to(x.dtype),
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
}.items():
    _binary(_name, _fn)


def _fold(fn, average=False):
    def run(i, a, m, n):
        y = i[0]
        for t in i[1:]:
            y = fn(y, t)
        return y / len(i) if average else y

    return run


OPS["Max"] = _fold(torch.maximum)
OPS["Min"] = _fold(torch.minimum)
OPS["Sum"] = _fold(torch.add)
OPS["Mean"] = _fold(torch.add, average=True)


@op("Where")
def _where(i, a, m, n):
    return torch.where(i[0].bool(), i[1], i[2])


@op("Concat")
def _concat(i, a, m, n):
    xs = [t for t in i if t is not None]
    kept = [t for t in xs if t.numel() > 0] or xs  # ONNX allows empty shape pieces
    return torch.cat(kept, dim=a["axis"])


@op("Split")
def _split(i, a, m, n):
    axis = a.get("axis", 0)
    split = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if not split:
        size = i[0].shape[axis]
        chunk = math.ceil(size / n)
        split = [chunk] * (n - 1) + [size - chunk * (n - 1)]
    return tuple(torch.split(i[0], list(split), dim=axis))


@op("Slice")
def _slice(i, a, m, n):
    x = i[0]
    if len(i) > 1:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % x.dim()
        size = x.shape[axis]
        if step > 0:
            s = max(0, min(size, start + size if start < 0 else start))
            e = max(0, min(size, end + size if end < 0 else end))
            x = (
                x.narrow(axis, s, max(0, e - s))[(slice(None),) * axis + (slice(None, None, step),)]
                if step != 1
                else x.narrow(axis, s, max(0, e - s))
            )
        else:
            s = max(-1, min(size - 1, start + size if start < 0 else start))
            e = max(-1, min(size - 1, end + size if end < 0 else end))
            idx = torch.arange(s, e, step, device=x.device)
            x = x.index_select(axis, idx)
    return x


@op("Reshape")
def _reshape(i, a, m, n):
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(i, a, m, n):
    x = i[0]
    axis = a.get("axis", 1) % max(1, x.dim()) if a.get("axis", 1) < 0 else a.get("axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@op("Transpose")
def _transpose(i, a, m, n):
    perm = a.get("perm") or list(reversed(range(i[0].dim())))
    return i[0].permute(*perm)


@op("Unsqueeze")
def _unsqueeze(i, a, m, n):
    axes = _ints(i[1]) if len(i) > 1 else a["axes"]
    x = i[0]
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Squeeze")
def _squeeze(i, a, m, n):
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    x = i[0]
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Shape")
def _shape(i, a, m, n):
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size")
def _size(i, a, m, n):
    return torch.tensor(i[0].numel(), dtype=torch.int64)


@op("Gather")
def _gather(i, a, m, n):
    x, idx = i
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if idx.dim() == 0:
        return x.select(axis, int(idx))
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


@op("Constant")
def _constant(i, a, m, n):
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(list(a[key]), dtype=dtype)
    raise BridgeError(f"Constant with attributes {sorted(a)} is not supported")


@op("ConstantOfShape")
def _const_of_shape(i, a, m, n):
    value = a.get("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return torch.full(_ints(i[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


@op("Cast")
def _cast(i, a, m, n):
    return i[0].to(_TORCH_DTYPES[a["to"]])


@op("Range")
def _range(i, a, m, n):
    start, limit, delta = i
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("Expand")
def _expand(i, a, m, n):
    shape = _ints(i[1])
    x = i[0]
    # ONNX Expand broadcasts both ways (a dim of 1 in shape keeps x's dim).
    out = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return x.expand(out)


@op("Tile")
def _tile(i, a, m, n):
    return i[0].repeat(*_ints(i[1]))


@op("Resize", "Upsample")
def _resize(i, a, m, n):
    x = i[0]
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel" if m.opset >= 11 else "asymmetric")
    scales = sizes = None
    if len(i) == 2:  # Upsample / opset-10 Resize: (X, scales)
        scales = i[1]
    else:
        scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
        sizes = i[3] if len(i) > 3 and i[3] is not None and i[3].numel() else None
    if sizes is not None:
        out = _ints(sizes)[2:]
        kw = {"size": out}
    else:
        s = [float(v) for v in scales.tolist()]
        if s[:2] != [1.0, 1.0]:
            raise BridgeError("Resize over batch/channel axes is not supported")
        kw = {"scale_factor": s[2:], "recompute_scale_factor": False}
    if mode == "nearest":
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nearest == "floor":
            return F.interpolate(x, mode="nearest", **kw)
        if (
            ctm in ("asymmetric", "half_pixel", "pytorch_half_pixel")
            and nearest
            in (
                "round_prefer_floor",
                "round_prefer_ceil",
            )
            and "scale_factor" in kw
            and all(float(v).is_integer() for v in kw["scale_factor"])
        ):
            # integer up-scaling: every rule picks the same source pixel as floor
            return F.interpolate(x, mode="nearest", **kw)
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest == "floor":
            return F.interpolate(x, mode="nearest-exact", **kw)
        return F.interpolate(x, mode="nearest", **kw)
    if mode == "linear":
        linear = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        align = ctm == "align_corners"
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise BridgeError(f"Resize linear with coordinate_transformation_mode={ctm}")
        return F.interpolate(x, mode=linear, align_corners=align, **kw)
    raise BridgeError(f"Resize mode '{mode}' is not supported (nearest, linear)")


def _pool_args(x, a):
    kernel = list(a["kernel_shape"])
    k = len(kernel)
    strides = a.get("strides", [1] * k)
    dil = a.get("dilations", [1] * k)
    pads = _conv_pads(x, a, kernel, strides, dil)
    return kernel, strides, dil, pads


@op("MaxPool")
def _maxpool(i, a, m, n):
    x = i[0]
    kernel, strides, dil, pads = _pool_args(x, a)
    k = len(kernel)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[k - 1]
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:k] == pads[k:] and all(p <= kk // 2 for p, kk in zip(pads[:k], kernel)):
        return fn(x, kernel, strides, pads[:k], dil, ceil_mode=ceil)
    return fn(_spatial_pad(x, pads, value=-math.inf), kernel, strides, 0, dil, ceil_mode=ceil)


@op("AveragePool")
def _avgpool(i, a, m, n):
    x = i[0]
    kernel, strides, _, pads = _pool_args(x, a)
    k = len(kernel)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[k - 1]
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:k] == pads[k:] and all(p <= kk // 2 for p, kk in zip(pads[:k], kernel)):
        return fn(x, kernel, strides, pads[:k], ceil_mode=ceil, count_include_pad=include)
    if not include and any(pads):
        raise BridgeError("AveragePool with asymmetric pads and count_include_pad=0")
    return fn(_spatial_pad(x, pads), kernel, strides, 0, ceil_mode=ceil)


@op("GlobalAveragePool")
def _gap(i, a, m, n):
    x = i[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(i, a, m, n):
    x = i[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _softmax_like(fn):
    def run(i, a, m, n):
        x = i[0]
        if m.opset >= 13:
            return fn(x, dim=a.get("axis", -1))
        axis = a.get("axis", 1) % x.dim()  # opset < 13: coerced to 2-D at axis
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


OPS["Softmax"] = _softmax_like(F.softmax)
OPS["LogSoftmax"] = _softmax_like(F.log_softmax)


def _reduce(fn):
    def run(i, a, m, n):
        x = i[0]
        axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(ax % x.dim() for ax in axes), keepdim=keep)

    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)


@op("Pad")
def _pad(i, a, m, n):
    x = i[0]
    if len(i) > 1:
        pads = _ints(i[1])
        value = float(i[2].item()) if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    else:
        pads, value = list(a["pads"]), a.get("value", 0.0)
        axes = list(range(x.dim()))
    mode = a.get("mode", "constant")
    k = len(axes)
    full = [0] * (2 * x.dim())
    for j, ax in enumerate(axes):
        full[ax % x.dim()] = pads[j]
        full[x.dim() + ax % x.dim()] = pads[k + j]
    torch_pads = []
    for d in reversed(range(x.dim())):
        torch_pads += [full[d], full[x.dim() + d]]
    # strip trailing zero pairs of the leading axes (F.pad pads from the last axis)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


@op("ArgMax")
def _argmax(i, a, m, n):
    return torch.argmax(i[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))


# ------------------------------------------------------------------------------ parity


class ParityError(BridgeError):
    """torch and onnxruntime disagree beyond the tolerances; ``comparison`` holds the figures."""

    def __init__(self, message: str, comparison) -> None:
        super().__init__(message)
        self.comparison = comparison


def parity_check(
    model: onnx.ModelProto,
    module: OnnxModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    tolerances: Sequence | None = None,
    *,
    force: bool = False,
):
    """torch forward vs onnxruntime on ``feeds``: a :class:`graphslim.validate.Comparison`.

    The statistics and tolerances are :mod:`graphslim.validate`'s, per output over all feeds
    (default ``max-rel=1e-4|max-abs=1e-6``: within 1e-4 of the output's magnitude, OR within
    1e-6 absolute, so a map of near-zero probabilities is not failed on float32 noise). On
    failure every intermediate tensor is compared in graph order and :class:`ParityError`
    names the first node whose output diverges, with the figures; ``force=True`` logs the
    same message as a warning and returns the failed comparison instead.
    """
    from graphslim.runtime import run_model
    from graphslim.validate import DEFAULT_TOLERANCES, compare_outputs

    tolerances = list(tolerances) if tolerances else list(DEFAULT_TOLERANCES)
    reference = run_model(model, list(feeds), optimization="disable", label="ONNX model")
    module.eval()
    with torch.no_grad():
        got = [
            {
                k: _np(v)
                for k, v in module.run(
                    **{k: torch.from_numpy(np.asarray(v)) for k, v in f.items()}
                ).items()
            }
            for f in feeds
        ]
    comparison = compare_outputs(reference, got, tolerances)
    if comparison.passed:
        return comparison
    bad = next(o for o in comparison.outputs if not o.passed)
    inner = [t for t in tolerances if t.output is None] or list(DEFAULT_TOLERANCES)
    node = first_diverging_node(model, module, feeds[0], inner)
    message = (
        f"torch and onnxruntime disagree on output '{bad.name}': {'; '.join(bad.failures)} "
        f"[max-abs {bad.stats.get('max-abs', math.nan):.3g}, max-rel "
        f"{bad.stats.get('max-rel', math.nan):.3g}, cosine {bad.stats.get('cosine', math.nan):.6f}]"
        f"; first diverging node: {node}. If this is float noise, loosen the bound (--tol "
        "'max-rel=1e-3|max-abs=1e-5') or go on anyway (--force)"
    )
    if force:
        log.warning("%s; going on (forced)", message)
        return comparison
    raise ParityError(message, comparison)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def first_diverging_node(
    model: onnx.ModelProto,
    module: OnnxModule,
    feed: Mapping[str, np.ndarray],
    tolerances: Sequence | None = None,
) -> str:
    """``'name' (Op), output 'x': max-rel ..., max-abs ...`` for the first node whose output
    fails ``tolerances`` (default: :data:`graphslim.validate.DEFAULT_TOLERANCES`)."""
    from graphslim.runtime import Session, with_outputs
    from graphslim.validate import DEFAULT_TOLERANCES, compare_outputs

    tolerances = list(tolerances) if tolerances else list(DEFAULT_TOLERANCES)
    probe = with_outputs(model, (out for node in model.graph.node for out in node.output))
    with Session(probe, optimization="disable", label="ONNX model (all tensors)") as s:
        ref = s.run(dict(feed))
    with torch.no_grad():
        env = module.run(
            **{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()}, keep_all=True
        )
    for node in model.graph.node:
        for out in node.output:
            if not out or out not in ref or out not in env:
                continue
            r, g = np.asarray(ref[out]), _np(env[out])
            if not np.issubdtype(r.dtype, np.floating):
                continue
            c = compare_outputs([{out: r}], [{out: g}], tolerances).outputs[0]
            if not c.passed:
                return (
                    f"'{node.name}' ({node.op_type}), output '{out}': max-rel "
                    f"{c.stats.get('max-rel', math.nan):.3g}, max-abs "
                    f"{c.stats.get('max-abs', math.nan):.3g}"
                )
    return "none found among intermediate tensors (the outputs differ only at the end)"


def to_module(model: onnx.ModelProto) -> OnnxModule:
    """Build the torch module for ``model`` (no parity check; see :func:`parity_check`)."""
    module = OnnxModule(model)
    log.info(
        "torch bridge: %d parameters (%d values), %d buffers",
        len(module.param_names),
        sum(p.numel() for p in module.parameters()),
        len(list(module.buffers())),
    )
    return module
