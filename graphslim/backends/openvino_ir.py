"""OpenVINO IR: write it, load it back, compare it with onnxruntime (the ``openvino`` extra).

:func:`convert` writes OpenVINO's IR (``.xml`` graph + ``.bin`` weights, weights kept in
float32) with ``openvino.convert_model`` / ``save_model``; :func:`check` loads the IR back in
an :class:`~graphslim.backends.openvino.OpenVINOSession` and compares its outputs with
onnxruntime's on the same feeds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from graphslim.backends.openvino import OpenVINOSession, first_line, openvino_module
from graphslim.errors import RuntimeFailure
from graphslim.model_io import save_model
from graphslim.validate import (
    DEFAULT_TOLERANCES,
    Comparison,
    Tolerance,
    compare_outputs,
    reference_outputs,
)


def convert(model: onnx.ModelProto, output: str | Path) -> Path:
    """Write ``model`` as OpenVINO IR: ``output`` (.xml) and the .bin beside it. Both are
    written into a temporary folder first and moved into place (.bin, then .xml), so a failed
    conversion leaves no half-written pair. Returns the .xml path."""
    ov = openvino_module()
    output = Path(output)
    if output.suffix != ".xml":
        raise ValueError("the OpenVINO IR path must end in .xml")
    with tempfile.TemporaryDirectory(prefix="graphslim-ov-ir-", dir=output.parent) as tmp:
        src = Path(tmp) / "model.onnx"
        save_model(model, src)
        xml = Path(tmp) / output.name
        try:
            converted = ov.convert_model(str(src))
            ov.save_model(converted, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise RuntimeFailure(
                f"OpenVINO could not convert the model: {first_line(exc)}"
            ) from exc
        os.replace(xml.with_suffix(".bin"), output.with_suffix(".bin"))
        os.replace(xml, output)
    return output


def check(
    model: onnx.ModelProto,
    path: str | Path,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES,
    *,
    precision: str = "f32",
) -> Comparison:
    """Load the IR at ``path`` in OpenVINO and compare its outputs with the ONNX model's
    outputs in onnxruntime on ``feeds``."""
    reference = reference_outputs(model, feeds)
    with OpenVINOSession(path, precision=precision, label=str(path)) as s:
        got = [s.run({k: v for k, v in f.items() if k in s.input_names}) for f in feeds]
    return compare_outputs(reference, got, tolerances)
