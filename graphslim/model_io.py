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
import math
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

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
        total += _payload(t)
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += _payload(a.t)
    return total + 1_000_000


_PACKED_4BIT = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, n)
}


def _payload(t: onnx.TensorProto) -> int:
    # Size raw_data from dims and dtype: reading ``t.raw_data`` copies the whole payload into
    # a new bytes object (seconds and gigabytes for a multi-GB weight).
    if not t.HasField("raw_data"):
        return _typed_payload(t)
    n = math.prod(t.dims)
    if t.data_type in _PACKED_4BIT:
        return (n + 1) // 2
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(t.raw_data)


def _typed_payload(t: onnx.TensorProto) -> int:
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
        len(t.int64_data) + len(t.double_data)
    )


def needs_external_data(model: onnx.ModelProto) -> bool:
    return model_nbytes(model) >= EXTERNAL_DATA_THRESHOLD


def fits_protobuf(model: onnx.ModelProto) -> bool:
    """True when ``model`` can be serialized in one piece (``ByteSize`` itself raises over 2 GB)."""
    estimate = model_nbytes(model)
    if estimate - 1_000_000 > PROTOBUF_LIMIT:  # the tensors alone are too big
        return False
    if estimate < PROTOBUF_LIMIT // 2:
        # Far from the limit: ByteSize walks the whole message (seconds for a big model)
        # and graph structure is never a gigabyte beyond its tensors.
        return True
    try:
        return model.ByteSize() <= PROTOBUF_LIMIT
    except EncodeError:
        return False


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
    if protect is not None:
        refuse_overwrite(protect, out)
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


def refuse_overwrite(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Raise :class:`ModelSaveError` when ``dst`` is (or links to) the input ``src``; callers
    check before doing any work, and ``save_model(protect=...)`` checks again."""
    if same_file(Path(dst), Path(src)):
        raise ModelSaveError(
            f"{dst}: output path is the input model; choose another -o path (graphslim never "
            "overwrites its input)"
        )


def _save_single(model: onnx.ModelProto, out: Path) -> None:
    data = model.SerializeToString()
    atomic_write_bytes(out, data)


def _save_external(model: onnx.ModelProto, out: Path) -> None:
    # Write model + data into a private temp folder beside the target, then move the data file
    # first and the model file last, so a reader never sees a model without its data. If the
    # model cannot be moved, the old data file is put back: the old model keeps working.
    data_name = out.name + ".data"
    data_dest = out.parent / data_name
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".graphslim-") as tmp:
        tmp_model = Path(tmp) / out.name
        tmp_data = Path(tmp) / data_name
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
        mode = _new_file_mode()
        os.chmod(tmp_model, mode)
        if not tmp_data.exists():  # every tensor was under the threshold: nothing external
            os.replace(tmp_model, out)
            return
        os.chmod(tmp_data, mode)
        backup = Path(tmp) / (data_name + ".old")
        had_data = _keep_aside(data_dest, backup)
        os.replace(tmp_data, data_dest)
        try:
            os.replace(tmp_model, out)
        except BaseException:
            with contextlib.suppress(OSError):
                if had_data:
                    os.replace(backup, data_dest)
                else:
                    os.unlink(data_dest)
            raise


def _keep_aside(path: Path, backup: Path) -> bool:
    """Hard-link ``path`` to ``backup`` (same folder tree, so no copy); False if no ``path``."""
    if not path.exists():
        return False
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links: copy instead
        import shutil

        shutil.copy2(path, backup)
    return True


def _new_file_mode() -> int:
    # mkstemp and TemporaryDirectory create private (0600) files; a saved model gets the mode
    # any new file would get (0666 minus the umask), like a plain open() would give it.
    try:  # Linux: read the umask without changing it (os.umask races with other threads)
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("Umask:"))
        mask = int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(out: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def same_file(a: Path, b: Path) -> bool:
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
