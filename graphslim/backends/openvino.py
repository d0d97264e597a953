"""OpenVINO (CPU): run, time and convert ONNX models (optional: the ``openvino`` extra).

* :class:`OpenVINOSession` has the interface of :class:`graphslim.runtime.Session`
  (``run(feed)``, ``input_names``, ``output_names``, ``threads``, ``close``), so everything
  that takes ``runtime="openvino"`` (:mod:`graphslim.bench`, :func:`graphslim.runtime.run_model`)
  runs the model here instead of in onnxruntime. The ONNX model is read by OpenVINO's ONNX
  frontend and compiled for the ``CPU`` device with the ``LATENCY`` performance hint (one
  stream) and ``INFERENCE_NUM_THREADS`` = ``threads`` when given.
* Inference precision is ``f32`` unless asked otherwise: on CPUs with AVX-512 BF16 or AMX,
  OpenVINO's default is bf16, which changes the numbers (about 3 significant digits) and would
  make its latency incomparable with onnxruntime's float32. QuantizeLinear/DequantizeLinear
  pairs (a QDQ INT8 model) still run as INT8 kernels: OpenVINO's low-precision transformations
  fold them into quantized convolutions/matmuls whatever the precision hint.
* IR conversion and its check against onnxruntime live in :mod:`graphslim.backends.openvino_ir`
  (they compare outputs, and :mod:`graphslim.validate` runs models through
  :mod:`graphslim.runtime`, which opens these sessions: kept apart, no import cycle).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from graphslim.backends import BackendUnavailable
from graphslim.errors import RuntimeFailure
from graphslim.model_io import save_model

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'onnx-graphslim[openvino]' (or: pip install openvino)"
PRECISIONS = ("f32", "bf16", "f16", "default")


def unavailable() -> str | None:
    """Why OpenVINO cannot run here, or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"OpenVINO is not installed ({INSTALL_HINT})"
    return None


def openvino_module():
    why = unavailable()
    if why:
        raise BackendUnavailable(f"OpenVINO runtime unavailable: {why}")
    import openvino

    return openvino


def version() -> str:
    return openvino_module().__version__


class OpenVINOSession:
    """An OpenVINO CPU compiled model over an in-memory ONNX model (or an IR ``.xml`` path)."""

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        *,
        threads: int | None = None,
        precision: str = "f32",
        label: str = "model",
        **_ignored,
    ) -> None:
        # **_ignored: onnxruntime-only settings (optimization level, thread spinning) that
        # callers pass to every runtime alike.
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        ov = openvino_module()
        self.label = label
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        try:
            if isinstance(model, onnx.ModelProto):
                with tempfile.TemporaryDirectory(prefix="graphslim-ov-") as tmp:
                    path = Path(tmp) / "model.onnx"
                    save_model(model, path)
                    read = core.read_model(str(path))
                    self.compiled = core.compile_model(read, "CPU", config)
            else:
                self.compiled = core.compile_model(str(model), "CPU", config)
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO cannot load {label}: {first_line(exc)}") from exc
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or (
            threads or os.cpu_count() or 1
        )
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)

    def run(
        self, feed: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        unknown = [k for k in feed if k not in self.input_names]
        if unknown:
            raise RuntimeFailure(
                f"{self.label}: feed has {unknown[0]!r}, which is not a model input "
                f"(inputs: {', '.join(self.input_names)})"
            )
        names = list(output_names) if output_names else self.output_names
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise RuntimeFailure(
                f"{self.label}: OpenVINO has no output {missing[0]!r} "
                f"(outputs: {', '.join(self.output_names)})"
            )
        try:
            result = self.request.infer({k: feed[k] for k in self.input_names if k in feed})
        except Exception as exc:
            raise RuntimeFailure(f"OpenVINO failed to run {self.label}: {first_line(exc)}") from exc
        by_name = {}
        for port, value in result.items():
            for name in port.get_names():
                by_name[name] = value
        # Copies: the request reuses its output buffers on the next infer().
        return {n: np.array(by_name[n], copy=True) for n in names}

    def executed_precisions(self, layer_types=("Convolution", "FullyConnected", "MatMul")):
        """``{layer type: {precision: count}}`` of the compiled (executed) graph: whether
        OpenVINO runs a QDQ model's convolutions as ``u8``/``i8`` kernels or fell back to
        ``f32``. ``layer_types``: which executed layer types to count (None: all but Const)."""
        counts: dict[str, dict[str, int]] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind == "Const" or (layer_types and kind not in layer_types):
                continue
            precision = info["runtimePrecision"].astype(str)
            counts.setdefault(kind, {})
            counts[kind][precision] = counts[kind].get(precision, 0) + 1
        return counts

    def close(self) -> None:
        self.request = None
        self.compiled = None

    def __enter__(self) -> OpenVINOSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # OpenVINO's messages start with a C++ source location line ("Exception from src/...");
    # the cause is on the following lines.
    meat = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    lines = meat or lines
    if len(lines) > 3:
        lines = lines[:3] + ["..."]
    return "; ".join(lines) if lines else type(exc).__name__
