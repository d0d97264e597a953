"""onnxruntime's ORT format (``.ort``): the flatbuffer model that minimal onnxruntime builds
(mobile, embedded) load, made by onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``), then loaded and checked against the ONNX
model on the same feeds.

Styles (onnxruntime's names): ``fixed`` applies every graph optimization at conversion time
(level ``all``: the result can be specific to this machine's CPU features, e.g. NCHWc
layouts on x86); ``runtime`` saves basic optimizations and records the rest to apply when
the model loads, for a model built on one machine and run on another.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from graphslim.errors import RuntimeFailure
from graphslim.validate import DEFAULT_TOLERANCES, Comparison, Tolerance, compare_outputs

log = logging.getLogger(__name__)

STYLES = ("fixed", "runtime")


def convert(model: onnx.ModelProto, output: str | Path, *, style: str = "fixed") -> Path:
    """Write ``model`` as ``output`` (.ort) with onnxruntime's converter; returns the path."""
    import contextlib
    import io
    import os

    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    from graphslim.model_io import save_model

    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}")
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="graphslim-ort-format-") as tmp:
        src = Path(tmp) / "model.onnx"
        save_model(model, src)
        out_dir = Path(tmp) / "out"
        kind = OptimizationStyle.Fixed if style == "fixed" else OptimizationStyle.Runtime
        noise = io.StringIO()
        # The converter prints progress and logs at INFO through its own logger; keep both
        # off the user's terminal (restored afterwards).
        chatty = logging.getLogger("ort_format_model.utils")
        level = chatty.level
        chatty.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
                convert_onnx_models_to_ort(src, output_dir=out_dir, optimization_styles=[kind])
        except Exception as exc:
            raise RuntimeFailure(
                f"onnxruntime could not convert the model to ORT format: {exc}"
            ) from exc
        finally:
            chatty.setLevel(level)
        log.debug("convert_onnx_models_to_ort: %s", noise.getvalue())
        made = sorted(out_dir.glob("*.ort"))
        if not made:
            raise RuntimeFailure("onnxruntime's converter wrote no .ort file")
        data = made[0].read_bytes()
    tmp_out = output.with_name(output.name + ".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, output)
    return output


def run_ort(
    path: str | Path, feeds: Sequence[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Load an .ort file in onnxruntime (CPU) and run it on ``feeds``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeFailure(f"onnxruntime cannot load {path}: {exc}") from exc
    names = [o.name for o in s.get_outputs()]
    inputs = {i.name for i in s.get_inputs()}
    return [
        dict(zip(names, s.run(names, {k: v for k, v in f.items() if k in inputs}))) for f in feeds
    ]


def check(
    model: onnx.ModelProto,
    path: str | Path,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES,
) -> Comparison:
    """Compare the .ort file's outputs with the ONNX model's on ``feeds``."""
    from graphslim.validate import reference_outputs

    return compare_outputs(reference_outputs(model, feeds), run_ort(path, feeds), tolerances)
