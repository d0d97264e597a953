"""TensorRT engines: build from ONNX (FP32, FP16, INT8 from a QDQ model), time them, and
compare their outputs with onnxruntime's (optional: the ``trt`` extra and an NVIDIA GPU).

* build: TensorRT's ONNX parser, a workspace limit, precision flags. ``int8`` needs a QDQ
  model (``quantize-int8{target=tensorrt}``): TensorRT's explicit quantization takes the
  scales from the QuantizeLinear/DequantizeLinear nodes; no calibrator is run here.
* bench: device buffers from PyTorch (CUDA), ``execute_async_v3`` on one stream; warm-up,
  then ``runs`` timed runs (host clock around launch + synchronize); median / p90 ms and
  throughput = batch / median.
* compare: the engine's outputs against onnxruntime CPU's on the same feeds, with the
  statistics of :mod:`graphslim.validate`.

Without TensorRT, PyTorch with CUDA, or a GPU, :func:`unavailable` says which, and every
entry point raises :class:`BackendUnavailable` (one line, exit code 2 in the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from graphslim.errors import GraphslimError, RuntimeFailure

PRECISIONS = ("fp32", "fp16", "int8")


class BackendUnavailable(GraphslimError):
    """The backend's package or hardware is missing."""


def unavailable() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'onnx-graphslim[trt]' on a machine with an NVIDIA GPU)"
    try:
        import torch
    except ImportError:
        return "the TensorRT backend needs PyTorch with CUDA for device buffers (pip install torch)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    return None


def _require() -> None:
    why = unavailable()
    if why:
        raise BackendUnavailable(f"TensorRT backend unavailable: {why}")


def _is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def build(model: onnx.ModelProto, precision: str = "fp16", *, workspace_mb: int = 1024) -> bytes:
    """A serialized engine for ``model`` at ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not _is_qdq(model):
        raise RuntimeFailure(
            "int8 engines are built from a QDQ model: run quantize-int8{target=tensorrt} first"
        )
    _require()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeFailure(f"TensorRT's ONNX parser refused the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeFailure(f"TensorRT could not build a {precision} engine (see its log above)")
    return bytes(engine)


@dataclass
class EngineTiming:
    precision: str
    runs: int
    median_ms: float
    p90_ms: float
    throughput: float  # samples per second at batch size = the input's first dim

    def to_dict(self) -> dict:
        return asdict(self)


class Engine:
    """A deserialized engine with device buffers for one fixed input shape."""

    def __init__(self, engine_bytes: bytes, feed: dict[str, np.ndarray]) -> None:
        _require()
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, object] = {}
        self.outputs: list[str] = []
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, tuple(feed[name].shape))
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(self.context.get_tensor_shape(name))
            t = torch.from_numpy(np.zeros(shape, dtype)).cuda()
            self.buffers[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                self.outputs.append(name)
        self.stream = torch.cuda.Stream()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feed.items():
            if name in self.buffers:
                self.buffers[name].copy_(self._torch.from_numpy(np.ascontiguousarray(value)))
        self._execute()
        return {n: self.buffers[n].cpu().numpy() for n in self.outputs}

    def _execute(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()

    def time(self, *, runs: int = 100, warmup: int = 10) -> list[float]:
        for _ in range(warmup):
            self._execute()
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self._execute()
            ms.append((time.perf_counter() - t0) * 1e3)
        return ms


def bench(
    engine_bytes: bytes,
    feed: dict[str, np.ndarray],
    precision: str,
    *,
    runs: int = 100,
    warmup: int = 10,
) -> EngineTiming:
    """Median / p90 latency and throughput of one engine on ``feed``."""
    e = Engine(engine_bytes, feed)
    e.run(feed)
    ms = np.asarray(e.time(runs=runs, warmup=warmup))
    batch = next(iter(feed.values())).shape[0] if feed else 1
    median = float(np.median(ms))
    return EngineTiming(precision, runs, median, float(np.percentile(ms, 90)), batch * 1e3 / median)


def compare_with_onnxruntime(
    model: onnx.ModelProto, engine_bytes: bytes, feeds: Sequence[dict[str, np.ndarray]]
):
    """The engine's outputs against onnxruntime CPU's (statistics only; no tolerance)."""
    from graphslim.validate import compare_outputs, reference_outputs

    reference = reference_outputs(model, feeds)
    e = Engine(engine_bytes, feeds[0])
    got = [e.run(f) for f in feeds]
    got = [{k: g[k] for k in r if k in g} for r, g in zip(reference, got)]
    return compare_outputs(reference, got, ())
