"""TensorRT engines through NVIDIA's Polygraphy: build from ONNX (FP32, FP16, INT8 from a QDQ
model) with a timing cache, time them, and compare their outputs with onnxruntime's
(optional: the ``trt`` extra = tensorrt + polygraphy, and an NVIDIA GPU; no PyTorch).

* build: Polygraphy's ``NetworkFromOnnxBytes`` (TensorRT's ONNX parser) and
  ``EngineBytesFromNetwork`` with ``CreateConfig``: a workspace limit, precision flags and a
  *timing cache* (kernel timings kept in a file and reused by later builds of any model on
  the same GPU and TensorRT version: rebuilds take seconds instead of minutes). ``int8``
  needs a QDQ model (``quantize-int8{target=tensorrt}``): TensorRT's *explicit* quantization
  takes the scales from the QuantizeLinear/DequantizeLinear nodes; no calibrator runs
  (TensorRT 10 deprecated and 11 removed implicit INT8 calibration). Where the builder still
  has the INT8 flag it is set with FP16 (layers outside Q/DQ pairs may run in FP16); without
  it (TensorRT 11) the network is built *strongly typed*: precisions come from the graph.
* bench: Polygraphy's ``TrtRunner`` with the input already on the device and outputs left
  there (``copy_outputs_to_host=False``), so the time is the engine's (launch + synchronize),
  not PCIe copies; warm-up, then ``runs`` timed runs; median / p90 ms and throughput = batch /
  median.
* compare: Polygraphy's ``Comparator.run`` over an ``OnnxrtRunner`` (onnxruntime CPU) and the
  ``TrtRunner`` on the same feeds, then the statistics of :mod:`graphslim.validate` on the
  two results (and pass/fail against ``tolerances``).

Without TensorRT, Polygraphy, or a GPU, :func:`unavailable` says which, and every entry point
raises :class:`~graphslim.backends.BackendUnavailable` (one line, exit code 2 in the CLI).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from graphslim.backends import BackendUnavailable
from graphslim.errors import RuntimeFailure

__all__ = [
    "PRECISIONS",
    "BackendUnavailable",
    "EngineTiming",
    "bench",
    "build",
    "compare_with_onnxruntime",
    "default_timing_cache",
    "unavailable",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install 'onnx-graphslim[trt]' on a machine with an NVIDIA GPU and driver"


def unavailable() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"TensorRT is not installed ({INSTALL_HINT})"
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        return f"Polygraphy is not installed ({INSTALL_HINT})"
    count = _gpu_count()
    if count is None:
        return "the CUDA runtime library (libcudart) cannot be loaded: no NVIDIA driver/CUDA here"
    if count == 0:
        return "no CUDA GPU is available (cudaGetDeviceCount found none)"
    return None


def _gpu_count() -> int | None:
    """Number of CUDA devices through Polygraphy's libcudart wrapper; None without CUDA."""
    try:
        from polygraphy import cuda
        from polygraphy.logger import G_LOGGER

        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            handle = cuda.wrapper().handle
        n = ctypes.c_int(0)
        if handle.cudaGetDeviceCount(ctypes.byref(n)) != 0:
            return 0
        return n.value
    except Exception:  # no libcudart, or Polygraphy refused to load it
        return None


def _require() -> None:
    why = unavailable()
    if why:
        raise BackendUnavailable(f"TensorRT backend unavailable: {why}")


def _is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def default_timing_cache() -> Path:
    """``$XDG_CACHE_HOME/graphslim/trt/timing.cache`` (``~/.cache/...`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graphslim" / "trt" / "timing.cache"


def build(
    model: onnx.ModelProto,
    precision: str = "fp16",
    *,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
) -> bytes:
    """A serialized engine for ``model`` at ``precision``. ``timing_cache``: a file read
    before the build (when it exists) and written after it; None: :func:`default_timing_cache`;
    ``""``: no cache."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not _is_qdq(model):
        raise RuntimeFailure(
            "int8 engines are built from a QDQ model: run quantize-int8{target=tensorrt} first"
        )
    _require()
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxBytes

    cache = default_timing_cache() if timing_cache is None else timing_cache
    cache = Path(cache) if cache else None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    has_int8_flag = hasattr(trt.BuilderFlag, "INT8")
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeFailure(
            f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16 flag): "
            "convert the model first (graphslim run -P convert-fp16) and build it as fp32"
        )
    strongly_typed = precision == "int8" and not has_int8_flag
    network = NetworkFromOnnxBytes(model.SerializeToString(), strongly_typed=strongly_typed)
    config = CreateConfig(
        fp16=precision in ("fp16", "int8") and not strongly_typed,
        int8=precision == "int8" and has_int8_flag,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20},
        load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
    )
    try:
        engine = EngineBytesFromNetwork(
            network, config=config, save_timing_cache=str(cache) if cache else None
        )()
    except Exception as exc:
        raise RuntimeFailure(
            f"TensorRT could not build a {precision} engine: {_first_line(exc)}"
        ) from exc
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


def _runner(engine_bytes: bytes, name: str = "tensorrt"):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(engine_bytes), name=name)


def bench(
    engine_bytes: bytes,
    feed: dict[str, np.ndarray],
    precision: str,
    *,
    runs: int = 100,
    warmup: int = 10,
) -> EngineTiming:
    """Median / p90 latency and throughput of one engine on ``feed`` (device-resident I/O)."""
    _require()
    from polygraphy import cuda

    device = {k: cuda.DeviceArray(v.shape, v.dtype) for k, v in feed.items()}
    try:
        for k, v in feed.items():
            device[k].copy_from(np.ascontiguousarray(v))
        with _runner(engine_bytes) as runner:
            names = set(runner.get_input_metadata().keys())
            inputs = {k: v for k, v in device.items() if k in names}
            for _ in range(warmup):
                runner.infer(inputs, copy_outputs_to_host=False)
            ms = []
            for _ in range(runs):
                t0 = time.perf_counter()
                runner.infer(inputs, check_inputs=False, copy_outputs_to_host=False)
                ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        for d in device.values():
            d.free()
    a = np.asarray(ms)
    batch = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
    median = float(np.median(a))
    return EngineTiming(precision, runs, median, float(np.percentile(a, 90)), batch * 1e3 / median)


def compare_with_onnxruntime(
    model: onnx.ModelProto,
    engine_bytes: bytes,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerances=(),
):
    """The engine's outputs against onnxruntime CPU's on ``feeds``, both run by Polygraphy's
    ``Comparator``; returns a :class:`graphslim.validate.Comparison` (measured only unless
    ``tolerances`` are given)."""
    _require()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    from graphslim.validate import compare_outputs

    runners = [
        OnnxrtRunner(
            SessionFromOnnx(model.SerializeToString(), providers=["cpu"]), name="onnxruntime"
        ),
        _runner(engine_bytes),
    ]
    # Polygraphy reports progress on stdout at INFO; library code stays quiet.
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        results = Comparator.run(runners, data_loader=[dict(f) for f in feeds])
    (_, ref_iters), (_, trt_iters) = list(results.items())
    reference = [{k: _numpy(v) for k, v in it.items()} for it in ref_iters]
    got = [{k: _numpy(it[k]) for k in r if k in it} for r, it in zip(reference, trt_iters)]
    return compare_outputs(reference, got, tolerances)


def _numpy(value) -> np.ndarray:
    # Polygraphy may hand back lazily loaded arrays; load them.
    if hasattr(value, "load") and not isinstance(value, np.ndarray):
        value = value.load()
    return np.asarray(value)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__
