"""First export: a torch model -> ONNX, checked against torch.

* :func:`export_module`: a ``torch.nn.Module`` and an example input -> ONNX with the chosen
  opset and dynamic axes (TorchScript exporter, ``dynamo=False``: it needs no onnxscript and
  writes the Conv/BatchNormalization graphs the passes expect). The file is written
  atomically; then the export runs in onnxruntime on the example input (and, with dynamic
  batch, on a batch of 2) and must match torch within ``max-rel`` (default 1e-4, the
  :mod:`graphslim.validate` statistic: ``max |o - t| / max |t|``).
* :func:`export_ultralytics`: an ultralytics ``.pt`` checkpoint or ``.yaml`` architecture
  (the ``yolo`` extra) through ultralytics' own exporter, with ``YOLO_OFFLINE=1`` so nothing
  is downloaded, then the same numeric check against the ultralytics torch model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphslim.bridge import BridgeError, TorchMissing, require_torch

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    opset: int
    inputs: list[str]
    outputs: list[str]
    max_rel: dict[str, float] = field(default_factory=dict)  # per output, vs torch

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "max_rel": self.max_rel,
        }


def export_module(
    module,
    example,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: dict | None = None,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export ``module`` on ``example`` (a tensor or a tuple of tensors) to ``path``.

    ``dynamic_axes`` is passed to torch as is; else ``dynamic_batch`` makes axis 0 of every
    input and output a symbolic ``batch``. Raises :class:`BridgeError` when onnxruntime's
    outputs differ from torch's by more than ``tolerance`` (max-rel).
    """
    torch = require_torch()
    from graphslim.model_io import atomic_write_bytes, load_model

    out = Path(path)
    if not out.parent.is_dir():
        raise BridgeError(f"{out}: folder {out.parent} does not exist; create it first")
    args = example if isinstance(example, tuple) else (example,)
    module = module.eval()
    with torch.no_grad():
        expected = module(*args)
    expected = _flatten(expected)
    if output_names is None:
        output_names = (
            ["output"] if len(expected) == 1 else [f"output{i}" for i in range(len(expected))]
        )
    input_names = list(input_names)
    if len(input_names) != len(args):
        input_names = [f"input{i}" for i in range(len(args))] if len(args) > 1 else ["input"]
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
    with tempfile.TemporaryDirectory(prefix="graphslim-export-") as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():
                # the TorchScript exporter is deprecated in favour of dynamo (which needs
                # onnxscript); it is the one that runs on a plain torch install
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    module,
                    args,
                    str(tmp_path),
                    opset_version=opset,
                    input_names=input_names,
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes,
                    dynamo=False,
                    do_constant_folding=True,
                )
        except Exception as exc:
            raise BridgeError(
                f"torch could not export the model: {type(exc).__name__}: {exc}"
            ) from exc
        atomic_write_bytes(out, tmp_path.read_bytes())
    model = load_model(out)
    feeds = [{n: _np(a) for n, a in zip(input_names, args)}]
    refs = [[_np(e) for e in expected]]
    if dynamic_axes and all(n in dynamic_axes and 0 in dynamic_axes[n] for n in input_names):
        doubled = tuple(torch.cat([a, a]) for a in args)
        with torch.no_grad():
            refs.append([_np(e) for e in _flatten(module(*doubled))])
        feeds.append({n: _np(a) for n, a in zip(input_names, doubled)})
    errors = _check(model, feeds, refs, list(output_names), tolerance, "torch")
    log.info("exported %s (opset %d), max-rel vs torch %s", out, opset, errors)
    return ExportResult(out, opset, input_names, list(output_names), errors)


def export_ultralytics(
    source: str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    imgsz: int = 640,
    dynamic: bool = False,
    simplify: bool = False,
    tolerance: float = 1e-4,
) -> ExportResult:
    """An ultralytics ``.pt``/``.yaml`` -> ONNX at ``path``, offline, checked against torch."""
    src = Path(source)
    if src.suffix not in (".pt", ".yaml", ".yml"):
        raise BridgeError(f"{src}: expected an ultralytics .pt checkpoint or .yaml architecture")
    if src.suffix == ".pt" and not src.is_file():
        raise BridgeError(f"{src}: no such file (offline: checkpoints are never downloaded)")
    out = Path(path)
    if not out.parent.is_dir():
        raise BridgeError(f"{out}: folder {out.parent} does not exist; create it first")
    torch = require_torch()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise TorchMissing(
            "exporting an ultralytics model needs ultralytics; pip install 'onnx-graphslim[yolo]'"
        ) from exc
    from graphslim.model_io import atomic_write_bytes, load_model

    with tempfile.TemporaryDirectory(prefix="graphslim-yolo-") as tmp:
        # ultralytics writes next to its source; work on a copy in a private folder
        local = Path(tmp) / src.name
        if src.is_file():
            shutil.copy2(src, local)
        else:  # a built-in architecture name such as yolov8n.yaml
            local = src
        yolo = YOLO(str(local))
        written = yolo.export(
            format="onnx", opset=opset, imgsz=imgsz, dynamic=dynamic, simplify=simplify
        )
        written = Path(written).resolve()
        data = written.read_bytes()
        # a .yaml source makes ultralytics write into the working folder: tidy that up
        if written.parent != Path(tmp).resolve() and written != out.resolve():
            written.unlink(missing_ok=True)
        atomic_write_bytes(out, data)
        net = yolo.model.float().eval()
        x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = net(x)
    model = load_model(out)
    first = _flatten(y)[0]
    name = model.graph.output[0].name
    errors = _check(
        model,
        [{model.graph.input[0].name: _np(x)}],
        [[_np(first)]],
        [name],
        tolerance,
        "ultralytics",
    )
    return ExportResult(
        out, opset, [model.graph.input[0].name], [o.name for o in model.graph.output], errors
    )


def _check(model, feeds, refs, names, tolerance, what) -> dict[str, float]:
    from graphslim.runtime import run_model

    got = run_model(model, feeds, names, label="export")
    errors = {}
    for k, name in enumerate(names):
        o = np.concatenate([r[k].astype(np.float64).ravel() for r in refs])
        c = np.concatenate([g[name].astype(np.float64).ravel() for g in got])
        if o.shape != c.shape:
            raise BridgeError(f"export output '{name}' has {c.size} values, {what} gave {o.size}")
        errors[name] = float(np.abs(o - c).max() / max(np.abs(o).max(), 1e-12)) if o.size else 0.0
        if errors[name] > tolerance:
            raise BridgeError(
                f"export output '{name}' differs from {what} by max-rel {errors[name]:.3g} "
                f"(> {tolerance:g}); the file is written but does not reproduce the model"
            )
    return errors


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_flatten(v))
        return out
    if isinstance(value, dict):
        return _flatten(list(value.values()))
    return [value]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
