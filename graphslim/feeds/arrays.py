"""Feeds from arrays the user saved: a ``.npy`` / ``.npz`` file or a folder of them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from graphslim.feeds.specs import (
    ARRAY_SUFFIXES,
    Feed,
    FeedError,
    InputSpec,
    input_specs,
)

logger = logging.getLogger(__name__)


def load_array_feeds(path: str | Path, model: onnx.ModelProto) -> list[Feed]:
    """Feeds from a ``.npy`` file, a ``.npz`` file or a folder of them (sorted by name).

    - ``.npy``: one array for a single-input model; an array of rank ``input rank + 1``
      holds several samples along its first axis.
    - ``.npz``: one entry per input name; each entry may carry the same leading sample
      axis (entries without it are shared by every sample).

    Dtypes must match the model; float64 is cast to float32 and lossless widenings
    (``np.can_cast(..., "safe")``) are allowed, anything else is refused. Ranks and static
    dims are checked.
    """
    path = Path(path)
    specs = input_specs(model)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in ARRAY_SUFFIXES
        )
        if not files:
            raise FeedError(f"no .npy/.npz files in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FeedError(f"feed file {path} does not exist")
    feeds: list[Feed] = []
    for file in files:
        feeds.extend(_load_array_file(file, specs))
    logger.info("array feeds: %d sample(s) from %s", len(feeds), path)
    return feeds


def _load_array_file(path: Path, specs: Sequence[InputSpec]) -> list[Feed]:
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise FeedError(f"{path}: expected a .npy or .npz file")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                arrays = {k: loaded[k] for k in loaded.files}
        else:
            array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise FeedError(f"cannot read {path}: {exc}") from exc
    if suffix == ".npy":
        if len(specs) != 1:
            raise FeedError(
                f"{path}: a .npy holds one array but the model has {len(specs)} inputs "
                f"{[s.name for s in specs]}; save an .npz with one entry per input name"
            )
        arrays = {specs[0].name: array}
    return _split_samples(path, arrays, specs)


def _split_samples(
    path: Path, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]
) -> list[Feed]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise FeedError(
            f"{path}: entries {sorted(arrays)} do not match the model's inputs {names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "; name each entry after its input (np.savez(path, **{name: array}))"
        )
    counts: dict[str, int] = {}
    batched: dict[str, bool] = {}
    for spec in specs:
        array = arrays[spec.name]
        rank = len(spec.shape) if spec.shape is not None else array.ndim
        if array.ndim == rank + 1:
            batched[spec.name] = True
            counts[spec.name] = array.shape[0]
        elif array.ndim == rank:
            batched[spec.name] = False
        else:
            raise FeedError(
                f"{path}: '{spec.name}' has shape {list(array.shape)} but the model wants "
                f"rank {rank} ({spec.describe()}), or rank {rank + 1} for several samples"
            )
    if len(set(counts.values())) > 1:
        raise FeedError(
            f"{path}: entries disagree on the number of samples {counts}; give every "
            "batched entry the same leading sample axis"
        )
    n = next(iter(counts.values()), 1)
    feeds: list[Feed] = [{} for _ in range(n)]
    for spec in specs:
        array = _cast(path, spec, arrays[spec.name])
        for i in range(n):
            sample = array[i] if batched[spec.name] else array
            _check_dims(path, spec, sample)
            feeds[i][spec.name] = np.ascontiguousarray(sample)
    return feeds


def _cast(path: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    if array.dtype == spec.dtype:
        return array
    if array.dtype == np.float64 and spec.dtype == np.float32:
        return array.astype(np.float32)
    if np.can_cast(array.dtype, spec.dtype, "safe"):
        return array.astype(spec.dtype)
    raise FeedError(
        f"{path}: '{spec.name}' is {array.dtype.name} but the model wants "
        f"{spec.dtype.name}; save it with .astype(np.{spec.dtype.name})"
    )


def _check_dims(path: Path, spec: InputSpec, sample: np.ndarray) -> None:
    for axis, (want, got) in enumerate(zip(spec.shape or (), sample.shape, strict=False)):
        if isinstance(want, int) and want != got:
            raise FeedError(
                f"{path}: '{spec.name}' has shape {list(sample.shape)} but the model fixes "
                f"dim {axis} to {want} ({spec.describe()})"
            )


# ----------------------------------------------------------------------------- preprocess
