"""Loading and saving ONNX models without losing anything.

* ``load_model`` reads a path, including external data (and so models over 2 GB), and turns
  every way a file can be wrong into one :class:`ModelLoadError` line.
* ``save_model`` writes atomically: a temporary file in the destination folder, then
  ``os.replace``. A crash or a full disk leaves the old file (or nothing) in place, never a
  half-written model. Models over protobuf's 2 GB limit are written with external data.
* The model's IR version, opset imports, metadata and names are kept as they are; this module
  never rewrites them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphslim.errors import ModelLoadError, ModelSaveError

log = logging.getLogger(__name__)

# protobuf refuses to serialize a message of 2 GiB or more; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)


def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model from ``path``; raise :class:`ModelLoadError` with one clear line."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    if p.is_dir():
        raise ModelLoadError(f"{p}: is a folder, expected an .onnx file")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p}: file is empty, not an ONNX model")
    try:
        model = onnx.load_model(str(p), load_external_data=load_external_data)
    except DecodeError as exc:
        raise ModelLoadError(
            f"{p}: not a valid ONNX model (protobuf could not parse it: {exc}); "
            "is the file truncated or of another format?"
        ) from exc
    except (FileNotFoundError, OSError) as exc:
        # onnx raises these for missing external-data files.
        raise ModelLoadError(
            f"{p}: could not read the model or its external data ({exc}); keep the .data file "
            "next to the model"
        ) from exc
    except Exception as exc:  # onnx raises ValidationError and others for broken files
        raise ModelLoadError(f"{p}: could not load ONNX model: {_one_line(exc)}") from exc
    _check_loaded(model, p)
    return model


def _check_loaded(model: onnx.ModelProto, p: Path) -> None:
    # A truncated or foreign file often parses as a protobuf message with nothing useful in it.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{p}: not an ONNX model (no IR version or graph); is the file truncated or of "
            "another format?"
        )
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{p}: the model's graph has no nodes; nothing to do")
    if not model.graph.output:
        raise ModelLoadError(f"{p}: the model's graph has no outputs; is the file truncated?")


def model_nbytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size: the sum of tensor payloads plus the graph itself."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.raw_data else _typed_payload(t)
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += len(a.t.raw_data) if a.t.raw_data else _typed_payload(a.t)
    return total + 1_000_000


def _typed_payload(t: onnx.TensorProto) -> int:
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
        len(t.int64_data) + len(t.double_data)
    )


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model_nbytes(model) >= EXTERNAL_DATA_THRESHOLD


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protect: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically and return the path.

    ``external_data``: None chooses by size (over ~1.8 GB -> tensors go to ``<name>.data``).
    ``protect``: a path that must never be written (the input model); writing to it, or to a
    file that is the same file, raises :class:`ModelSaveError`.
    """
    out = Path(path)
    if protect is not None and _same_file(out, Path(protect)):
        raise ModelSaveError(
            f"{out}: output path is the input model; choose another -o path (graphslim never "
            "overwrites its input)"
        )
    if out.is_dir():
        raise ModelSaveError(f"{out}: is a folder; give a file name such as {out / 'model.onnx'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.exists():
        raise ModelSaveError(f"{out}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ModelSaveError(f"{out}: folder {folder} is not writable")
    if external_data is None:
        external_data = needs_external_data(model)
    try:
        if external_data:
            _save_external(model, out)
        else:
            _save_single(model, out)
    except ModelSaveError:
        raise
    except OSError as exc:
        raise ModelSaveError(f"{out}: could not write the model: {exc.strerror or exc}") from exc
    log.debug("saved %s (external data: %s)", out, external_data)
    return out


def _save_single(model: onnx.ModelProto, out: Path) -> None:
    data = model.SerializeToString()
    _atomic_write_bytes(out, data)


def _save_external(model: onnx.ModelProto, out: Path) -> None:
    # Write model + data into a private temp folder beside the target, then move the data file
    # first and the model file last, so a reader never sees a model without its data.
    data_name = out.name + ".data"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".graphslim-") as tmp:
        tmp_model = Path(tmp) / out.name
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(
            copy,
            str(tmp_model),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        os.replace(Path(tmp) / data_name, out.parent / data_name)
        os.replace(tmp_model, out)


def _atomic_write_bytes(out: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def serialize_for_runtime(model: onnx.ModelProto, workdir: str | os.PathLike) -> str | bytes:
    """Bytes for onnxruntime, or a file path (with external data) when the model is too big."""
    if not needs_external_data(model):
        return model.SerializeToString()
    path = Path(workdir) / "model.onnx"
    _save_external(model, path)
    return str(path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
