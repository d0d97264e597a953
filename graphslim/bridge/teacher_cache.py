"""An on-disk cache of the teacher's outputs, per input sample, for repeated fine-tunes on CPU.

On a CPU the teacher's forward pass is a fixed share of every step. Its outputs depend only
on the teacher and the exact input the student sees, so a run that feeds the same inputs
again -- a rerun with
other hyper-parameters, a resumed run, another student of the same teacher, the epochs of a
run without augmentation -- can read them instead of computing them. The augmentation is
seeded per (seed, epoch, sample), so with the same seed the augmented inputs repeat too.

Entries are content-addressed: the key of a sample is the SHA-256 of its bytes, shape and
dtype, under a folder named after the teacher's fingerprint (its serialized graph and the
tapped tensors), so a changed teacher or different taps never read stale outputs. One
``.npz`` per sample (``k0, k1, ...`` in the order of :attr:`keys`), written to a temporary
file and renamed, so an interrupted run leaves no half-written entry. Disk use: the outputs'
size per sample per distinct input (a YOLOv8 head at 640: 8400 x (4 + nc) floats, ~200 KB
for 2 classes; with augmentation, one entry per sample per epoch).

Written by hand: no library caches numpy outputs by content with atomic writes (joblib's
Memory keys on the Python call's arguments and pickles them, hashing a whole batch as one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def fingerprint(model: onnx.ModelProto, taps: Mapping) -> str:
    """16 hex digits naming the teacher: its serialized graph and the tensors it returns."""
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update(repr(sorted((str(k), v) for k, v in taps.items())).encode())
    return h.hexdigest()[:16]


def sample_key(x: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(f"{x.shape}{x.dtype.str}".encode())
    return h.hexdigest()[:40]


class CachedTeacher:
    """Wraps a teacher runner (``run(feed) -> {key: array}``, ``output_names``, ``close()``)
    with the cache of the module doc: ``run`` reads the samples it has seen and runs the
    teacher once, batched, on the rest."""

    def __init__(self, inner, folder: str | os.PathLike, model: onnx.ModelProto, taps: Mapping):
        self.inner = inner
        self.output_names = inner.output_names
        self.keys = [*inner.output_names, *taps]
        self.folder = Path(folder) / fingerprint(model, taps)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from graphslim.bridge import BridgeError

            raise BridgeError(
                f"cannot use teacher cache {folder}: {exc.strerror or exc}; give a writable folder"
            ) from exc
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def _load(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return {k: z[f"k{i}"] for i, k in enumerate(self.keys)}
        except Exception as exc:  # a damaged entry: compute it again (and overwrite it)
            log.warning("teacher cache entry %s unreadable (%s); recomputing it", path, exc)
            return None

    def _save(self, key: str, values: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{f"k{i}": values[k] for i, k in enumerate(self.keys)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def run(self, feed: Mapping[str, np.ndarray]) -> dict:
        ((name, x),) = feed.items()
        keys = [sample_key(s) for s in x]
        found = [self._load(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            got = self.inner.run({name: x[missing]})
            for j, i in enumerate(missing):
                found[i] = {k: got[k][j] for k in self.keys}
                self._save(keys[i], found[i])
        return {k: np.stack([f[k] for f in found]) for k in self.keys}

    def stats(self) -> dict:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        self.inner.close()
