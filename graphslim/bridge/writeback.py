"""Trained values back into the student ONNX graph: same nodes, names and structure.

For every initializer that :class:`~graphslim.bridge.interpreter.OnnxModule` holds as a
parameter, the tensor's payload is replaced by the trained value, cast to the initializer's
own dtype and stored the way it was stored (``raw_data`` stays ``raw_data``, ``float_data``
stays ``float_data``). BatchNorm statistics are written too when they were recalibrated
(``FinetuneOptions.recalibrate_bn``). Nothing else in the model changes: nodes, names,
attributes, opsets, metadata, value infos, other buffers and every non-float initializer keep
their bytes. Saving goes through :func:`graphslim.model_io.save_model` (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from graphslim.bridge import BridgeError


def write_back(
    model: onnx.ModelProto, values: Mapping[str, np.ndarray], *, copy: bool = True
) -> onnx.ModelProto:
    """``model`` with the initializers named in ``values`` set to those arrays.

    ``values``: ``{initializer name: array}`` (see :func:`trained_values`); shapes must match.
    """
    out = onnx.ModelProto()
    if copy:
        out.CopyFrom(model)
    else:
        out = model
    by_name = {t.name: t for t in out.graph.initializer}
    unknown = [n for n in values if n not in by_name]
    if unknown:
        raise BridgeError(f"write-back: {unknown[0]!r} is not an initializer of the student graph")
    for name, value in values.items():
        tensor = by_name[name]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if dtype.kind != "f":
            raise BridgeError(f"write-back: initializer {name!r} is not float; it stays as it is")
        array = np.asarray(value, dtype=dtype)
        if tuple(array.shape) != tuple(tensor.dims):
            raise BridgeError(
                f"write-back: {name!r} has shape {list(array.shape)} but the graph holds "
                f"{list(tensor.dims)}; the student graph changed since it was bridged"
            )
        _set_payload(tensor, array)
    return out


def _set_payload(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    if tensor.HasField("raw_data") or not (
        tensor.float_data or tensor.double_data or tensor.int32_data
    ):
        tensor.raw_data = (
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
        return
    if tensor.data_type == onnx.TensorProto.FLOAT:
        del tensor.float_data[:]
        tensor.float_data.extend(array.ravel().tolist())
    elif tensor.data_type == onnx.TensorProto.DOUBLE:
        del tensor.double_data[:]
        tensor.double_data.extend(array.ravel().tolist())
    else:  # float16 in int32_data
        del tensor.int32_data[:]
        tensor.int32_data.extend(array.ravel().view(np.uint16).astype(np.int32).tolist())


def trained_values(module) -> dict[str, np.ndarray]:
    """``{initializer name: array}`` for every parameter of an ``OnnxModule`` and every
    BatchNorm statistic it recalibrated."""
    inner = getattr(module, "module", module)  # unwrap DistributedDataParallel
    names = [*inner.param_names, *getattr(inner, "recalibrated", [])]
    return {name: inner.parameter_for(name).detach().cpu().numpy() for name in names}


def save_trained(
    model: onnx.ModelProto,
    module,
    path: str | os.PathLike,
    *,
    protect: str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """Write ``module``'s parameters into ``model`` and save it atomically at ``path``."""
    from graphslim.model_io import save_model

    trained = write_back(model, trained_values(module))
    save_model(trained, path, protect=protect)
    return trained
