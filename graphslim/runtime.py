"""Sessions for validation, shape probing, calibration and latency.

:class:`Session` is onnxruntime (CPU), the default everywhere. Models under protobuf's 2 GB
limit go to onnxruntime as bytes; larger ones are written with external data into a private
temporary folder that lives as long as the session.

Other runtimes (``RUNTIMES``) give sessions with the same interface (``run(feed,
output_names)``, ``input_names``, ``output_names``, ``threads``, ``label``, ``close``, context
manager) through :func:`open_session`; their packages are optional extras, imported only when
such a session is opened (``import graphslim`` never imports them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx

from graphslim.errors import RuntimeFailure
from graphslim.model_io import serialize_for_runtime

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# "ort": onnxruntime CPU; "openvino": OpenVINO CPU (graphslim.backends.openvino, extra openvino).
RUNTIMES = ("ort", "openvino")


class Session:
    """An onnxruntime CPU session over an in-memory model, or over a model file (``model`` a
    path: onnxruntime reads it there, no serialized copy -- a second or more on big models)."""

    def __init__(
        self,
        model: onnx.ModelProto | str | os.PathLike,
        *,
        threads: int | None = None,
        optimization: str = "basic",
        label: str = "model",
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:
            # Idle worker threads busy-wait for the next run by default. Harmless for one
            # session; with several alive (side-by-side timing), the idle sessions' spinning
            # threads take the cores from the one running (measured: 2x slower on 2 cores).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._tmp = tempfile.TemporaryDirectory(prefix="graphslim-ort-")
        self.label = label
        try:
            if isinstance(model, onnx.ModelProto):
                source = serialize_for_runtime(model, self._tmp.name)
            else:
                source = os.fspath(model)
            self.session = ort.InferenceSession(
                source, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            self._tmp.cleanup()
            raise RuntimeFailure(f"onnxruntime cannot load {label}: {_first_line(exc)}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads or os.cpu_count() or 1

    def run(
        self, feed: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self.output_names
        unknown = [k for k in feed if k not in self.input_names]
        if unknown:
            raise RuntimeFailure(
                f"{self.label}: feed has {unknown[0]!r}, which is not a model input "
                f"(inputs: {', '.join(self.input_names)})"
            )
        try:
            values = self.session.run(names, {k: feed[k] for k in self.input_names if k in feed})
        except Exception as exc:
            raise RuntimeFailure(
                f"onnxruntime failed to run {self.label}: {_first_line(exc)}"
            ) from exc
        return dict(zip(names, values))

    def close(self) -> None:
        self.session = None
        self._tmp.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (intermediate tensors for
    probing; onnxruntime infers their types). Names already outputs, initializers or empty
    are skipped; the original is untouched."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    skip = {o.name for o in probe.graph.output} | {t.name for t in probe.graph.initializer}
    for name in dict.fromkeys(names):
        if name and name not in skip:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    return probe


def check_runtime(runtime: str) -> None:
    """Raise when ``runtime`` is unknown (OptionsError) or not installed (BackendUnavailable)."""
    from graphslim.errors import OptionsError

    if runtime not in RUNTIMES:
        raise OptionsError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        from graphslim.backends import BackendUnavailable
        from graphslim.backends.openvino import unavailable

        why = unavailable()
        if why:
            raise BackendUnavailable(f"OpenVINO runtime unavailable: {why}")


def runtime_version(runtime: str) -> dict[str, str]:
    """``{package: version}`` of a runtime (for the machine record next to timings)."""
    if runtime == "openvino":
        from graphslim.backends.openvino import version

        return {"openvino": version()}
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def open_session(
    model: onnx.ModelProto,
    *,
    runtime: str = "ort",
    threads: int | None = None,
    optimization: str = "basic",
    label: str = "model",
    spinning: bool = True,
):
    """A session of ``runtime`` over ``model`` (see the module doc for the interface).

    ``optimization`` and ``spinning`` are onnxruntime settings; other runtimes ignore them
    (OpenVINO always compiles with its full set of transformations)."""
    check_runtime(runtime)
    if runtime == "openvino":
        from graphslim.backends.openvino import OpenVINOSession

        return OpenVINOSession(model, threads=threads, label=label)
    return Session(
        model, threads=threads, optimization=optimization, label=label, spinning=spinning
    )


def run_model(
    model: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    output_names: Sequence[str] | None = None,
    *,
    optimization: str = "basic",
    label: str = "model",
    runtime: str = "ort",
) -> list[dict[str, np.ndarray]]:
    """Run ``model`` once per feed (in ``runtime``); returns one ``{output name: array}`` per
    feed."""
    with open_session(model, runtime=runtime, optimization=optimization, label=label) as s:
        return [s.run(f, output_names) for f in feeds]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # onnxruntime prefixes messages with "[ONNXRuntimeError] : 1 : FAIL : ..."; keep the meat.
    if "] : " in text and text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    # Keep the detail lines ("index: 2 Got: 32 Expected: 64"), joined into one line.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 5:
        lines = lines[:5] + ["..."]
    return "; ".join(lines) if lines else type(exc).__name__
