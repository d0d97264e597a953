"""The zoo: catalog, PyPI fetch with a sha256-verified cache, weightless structure models.

Tests marked ``zoo`` download wheels from PyPI (once: they share the user's cache,
``$GRAPHSLIM_CACHE`` or ``~/.cache/graphslim/zoo``); the download path itself is tested
against a fresh temporary cache with the smallest wheel (ultralytics, 1.4 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim import zoo
from graphslim.zoo import (
    WEIGHTLESS_KEY,
    ZooEntry,
    ZooError,
    fetch,
    fetch_all,
    fill_weights,
    load_catalog,
    strip_weights,
)

CATALOG = load_catalog()
PYPI_MODELS = [e.id for e in CATALOG.values() if e.source == "pypi" and e.kind == "model"]
STRUCTURES = [e.id for e in CATALOG.values() if e.source == "structure"]
# Structures whose filled model is too large to materialize in every test run: yolov8x-640
# (~273 MB filled, ~1 GB of memory while filling) is there for bench/prune_channels.py's
# tool-speed measurement and is materialized only there.
LARGE_STRUCTURES = {"yolov8x-640"}
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def concrete(shape: tuple[int | str, ...], side: int = 96) -> list[int]:
    """Input shape with dynamic dims fixed: batch 1, spatial ``side``."""
    return [d if isinstance(d, int) else (1 if i == 0 else side) for i, d in enumerate(shape)]


def run(model_path: Path, entry: ZooEntry, seed: int = 0) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).random(concrete(entry.input_shape), dtype=np.float32)
    return sess.run(None, {entry.input_name: x})


def signature(model: onnx.ModelProto) -> tuple:
    """Everything about a graph except initializer values."""
    g = model.graph
    return (
        [(n.name, n.op_type, tuple(n.input), tuple(n.output), str(n.attribute)) for n in g.node],
        [(t.name, tuple(t.dims), t.data_type) for t in g.initializer],
        [str(v) for v in (*g.input, *g.output)],
        [(o.domain, o.version) for o in model.opset_import],
    )


@pytest.fixture(scope="session")
def zoo_cache() -> Path:
    """The user's zoo cache, shared across runs so each wheel is downloaded once."""
    return zoo.cache_dir()


# ---------------------------------------------------------------------------------------
# catalog


def test_catalog_has_the_zoo():
    assert set(PYPI_MODELS) == {"yolox-det", "pplcnet-cls", "ppocr-det", "ppocr-cls"}
    assert set(STRUCTURES) == {
        "yolov8n-640", "yolov8n-640-raw", "yolov8s-640", "yolov8x-640", "yolo11n-640",
        "resnet18-224", "resnet50-224", "mobilenetv2-224", "mobilenetv3-224",
        "efficientnet-b0-224",
        "yolov8n-seg-320", "yolov8n-pose-320", "yolov8n-cls-224", "shufflenetv2-224",
        "densenet-half-224", "regnet-y-400mf-224", "convnext-tiny-224", "squeezenet1-0-224",
        "googlenet-224", "lraspp-mobilenetv3-320", "deeplabv3-mobilenetv3-320",
    }  # fmt: skip
    assert LARGE_STRUCTURES <= set(STRUCTURES)
    assert {"astronaut", "bus", "china"} <= {e.id for e in CATALOG.values() if e.kind == "image"}


@pytest.mark.parametrize("entry", CATALOG.values(), ids=list(CATALOG))
def test_catalog_entry_is_complete(entry: ZooEntry):
    assert entry.kind in ("model", "checkpoint", "image")
    assert len(entry.sha256) == 64 and entry.description and entry.license
    if entry.source == "pypi":
        assert entry.package and entry.version and entry.member
        dist = entry.package.replace("-", "_")
        assert entry.wheel.startswith(f"{dist}-{entry.version}-") and entry.wheel.endswith(".whl")
        zoo._pip_tag_args(entry.wheel)  # parses
    else:
        assert entry.path is not None and entry.path.is_file()
        assert sha256(entry.path) == entry.sha256, "re-run export_structures.py, update zoo.toml"
        assert entry.path.stat().st_size < 300_000
    if entry.kind in ("model", "checkpoint"):
        assert entry.input_name and len(entry.input_shape) == 4 and entry.preprocessing
    else:
        assert Path(entry.member).suffix in MAGIC


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHSLIM_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GRAPHSLIM_CACHE")
    assert zoo.cache_dir() == Path.home() / ".cache" / "graphslim" / "zoo"


GOOD = """
[[entry]]
id = "x"
kind = "image"
package = "pkg"
version = "1.0"
wheel = "pkg-1.0-py3-none-any.whl"
member = "pkg/x.png"
sha256 = "%s"
description = "d"
license = "MIT"
""" % ("0" * 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('member = "pkg/x.png"\n', ""), "missing field(s) member"),
        (GOOD.replace('license = "MIT"', 'license = "MIT"\nlicence = "MIT"'), "unknown field"),
        (GOOD.replace('kind = "image"', 'kind = "video"'), "kind must be one of"),
        (GOOD.replace("0" * 64, "abc"), "64 hex digits"),
        (GOOD + GOOD, "duplicate id 'x'"),
        ("[[entry]\n", "not valid TOML"),
    ],
)
def test_catalog_errors_are_clear(tmp_path, text, message):
    path = tmp_path / "zoo.toml"
    path.write_text(text)
    with pytest.raises(ZooError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_catalog(path)


def test_unknown_id_and_kind(tmp_path):
    with pytest.raises(ZooError, match="unknown id.*'nope'.*known: yolox-det"):
        fetch("nope", cache=tmp_path)
    with pytest.raises(ZooError, match="kind must be one of"):
        fetch_all(kind="video", cache=tmp_path)


def test_pip_tag_args_pin_the_wheel():
    assert zoo._pip_tag_args("a-1-py3-none-any.whl") == ["--python-version", "3.11"]
    assert zoo._pip_tag_args("a-1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl") == [
        "--implementation", "cp", "--python-version", "3.12", "--abi", "cp312",
        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------
# extraction and verification, offline (a local wheel stands in for pip)


@pytest.fixture
def local_wheel(tmp_path, monkeypatch):
    """A fake ``pkg-1.0`` wheel with two members; counts the 'downloads'."""
    members = {"pkg/a.bin": b"alpha" * 100, "pkg/b.bin": b"beta" * 100}
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    calls: list[str] = []

    def download(entry: ZooEntry, dest: Path) -> Path:
        calls.append(entry.requirement)
        return wheel

    monkeypatch.setattr(zoo, "_download_wheel", download)
    base = dict(
        kind="image",
        source="pypi",
        description="d",
        license="MIT",
        package="pkg",
        version="1.0",
        wheel=wheel.name,
    )
    catalog = {
        name.split("/")[1]: ZooEntry(
            id=name.split("/")[1], member=name, sha256=hashlib.sha256(data).hexdigest(), **base
        )
        for name, data in members.items()
    }
    return catalog, calls


def test_fetch_all_downloads_a_shared_wheel_once(local_wheel, tmp_path):
    catalog, calls = local_wheel
    paths = fetch_all(cache=tmp_path / "cache", catalog=catalog)
    assert calls == ["pkg==1.0"]
    assert paths["a.bin"].read_bytes() == b"alpha" * 100
    assert paths["b.bin"].read_bytes() == b"beta" * 100
    assert not list((tmp_path / "cache").glob(".*")), "no temp files left behind"


def test_sha_mismatch_names_expected_and_actual(local_wheel, tmp_path):
    catalog, _ = local_wheel
    bad = {"a.bin": dataclasses.replace(catalog["a.bin"], sha256="f" * 64)}
    with pytest.raises(ZooError, match=f"sha256 mismatch for 'a.bin'.*expected {'f' * 64}, got "):
        fetch("a.bin", cache=tmp_path, catalog=bad)
    assert not (tmp_path / bad["a.bin"].cache_name).exists()


def test_missing_member_is_reported(local_wheel, tmp_path):
    catalog, _ = local_wheel
    bad = {"a.bin": dataclasses.replace(catalog["a.bin"], member="pkg/zzz.bin")}
    with pytest.raises(ZooError, match="pkg/zzz.bin is not in pkg-1.0-py3-none-any.whl"):
        fetch("a.bin", cache=tmp_path, catalog=bad)


def test_corrupted_cache_is_refetched_offline(local_wheel, tmp_path):
    catalog, calls = local_wheel
    path = fetch("a.bin", cache=tmp_path, catalog=catalog)
    path.write_bytes(b"garbage")
    assert fetch("a.bin", cache=tmp_path, catalog=catalog) == path
    assert path.read_bytes() == b"alpha" * 100 and len(calls) == 2


# ---------------------------------------------------------------------------------------
# real downloads from PyPI


@pytest.mark.zoo
@pytest.mark.parametrize("model_id", PYPI_MODELS)
def test_fetch_pypi_model_runs(model_id, zoo_cache):
    entry = CATALOG[model_id]
    path = fetch(model_id, cache=zoo_cache)
    assert sha256(path) == entry.sha256
    outputs = run(path, entry)
    assert outputs and all(np.isfinite(o).all() for o in outputs)


@pytest.mark.zoo
@pytest.mark.parametrize("image_id", ["astronaut", "bus", "china"])
def test_fetch_image(image_id, zoo_cache):
    path = fetch(image_id, cache=zoo_cache)
    assert sha256(path) == CATALOG[image_id].sha256
    assert path.read_bytes().startswith(MAGIC[path.suffix])


@pytest.mark.zoo
def test_second_fetch_does_not_download(zoo_cache, monkeypatch):
    first = fetch("ppocr-cls", cache=zoo_cache)
    before = first.stat()

    def no_pip(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    monkeypatch.setattr(zoo.subprocess, "run", no_pip)
    second = fetch("ppocr-cls", cache=zoo_cache)
    after = second.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.zoo
def test_download_into_fresh_cache_and_repair(tmp_path):
    cache = tmp_path / "fresh"
    paths = fetch_all(["bus", "zidane"], cache=cache)  # one ultralytics wheel, two members
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in paths.values())
    assert sha256(paths["bus"]) == CATALOG["bus"].sha256
    paths["zidane"].write_bytes(b"truncated")
    assert sha256(fetch("zidane", cache=cache)) == CATALOG["zidane"].sha256


@pytest.mark.zoo
def test_bad_version_is_a_clear_error(tmp_path):
    bad = dataclasses.replace(CATALOG["ppocr-cls"], version="0.0.0.dev999")
    with pytest.raises(ZooError) as info:
        fetch(bad.id, cache=tmp_path, catalog={bad.id: bad})
    message = str(info.value)
    assert "rapidocr-onnxruntime==0.0.0.dev999" in message and "'ppocr-cls'" in message
    assert "check access to PyPI" in message and "\n" not in message


# ---------------------------------------------------------------------------------------
# weightless structure models


def tiny_model() -> onnx.ModelProto:
    """Conv (weight stripped, bias kept) -> Reshape (int64 shape kept) -> MatMul (fp16 B)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3), dtype=np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(16, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1, 16 * 4 * 4], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((256, 1024)).astype(np.float16), "m"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat"),
        helper.make_node("Cast", ["r"], ["h"], name="cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["h", "m"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 1024])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_strip_keeps_small_and_non_float_tensors():
    model = tiny_model()
    original = model.SerializeToString()
    light = strip_weights(model)
    assert model.SerializeToString() == original, "input not mutated"
    by_name = {t.name: t for t in light.graph.initializer}
    for name in ("w", "m"):
        assert not by_name[name].raw_data and not by_name[name].float_data
        assert len(by_name[name].int32_data) == 0
    for name in ("b", "shape"):
        assert by_name[name] == {t.name: t for t in model.graph.initializer}[name]
    assert signature(light) == signature(model)
    assert {p.key: p.value for p in light.metadata_props}[WEIGHTLESS_KEY] == "1"


def test_fill_is_deterministic_scaled_and_runs():
    light = strip_weights(tiny_model())
    full = fill_weights(light, seed=3)
    assert full.SerializeToString() == fill_weights(light, seed=3).SerializeToString()
    assert full.SerializeToString() != fill_weights(light, seed=4).SerializeToString()
    assert WEIGHTLESS_KEY not in {p.key for p in full.metadata_props}
    assert signature(full) == signature(light)
    onnx.checker.check_model(full)
    w = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    assert w["m"].dtype == np.float16 and w["w"].shape == (16, 8, 3, 3)
    assert w["w"].std() == pytest.approx(1 / math.sqrt(8 * 9), rel=0.1)
    assert w["m"].astype(np.float32).std() == pytest.approx(1 / math.sqrt(1024), rel=0.1)
    x = np.ones((1, 8, 4, 4), dtype=np.float32)
    (y,) = ort.InferenceSession(full.SerializeToString()).run(None, {"x": x})
    assert y.shape == (1, 1024) and np.isfinite(y).all()


@pytest.mark.parametrize("structure_id", [i for i in STRUCTURES if i not in LARGE_STRUCTURES])
def test_structure_fill_then_strip_restores_the_committed_file(structure_id):
    entry = CATALOG[structure_id]
    light = entry.path.read_bytes()
    full = fill_weights(onnx.load_from_string(light), seed=entry.seed)
    assert not any(zoo._is_stripped(t) for t in full.graph.initializer)
    assert strip_weights(full).SerializeToString() == light


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory) -> Path:
    return fetch("yolov8n-640", cache=tmp_path_factory.mktemp("structures"))


def test_materialized_yolov8n_runs(yolov8n):
    entry = CATALOG["yolov8n-640"]
    (out,) = run(yolov8n, entry)
    assert out.shape == (1, 84, 8400) and np.isfinite(out).all()


def test_strip_fill_round_trip_keeps_structure(yolov8n):
    full = onnx.load(str(yolov8n))
    light = strip_weights(full)
    assert signature(light) == signature(full)
    assert fill_weights(light, seed=0).SerializeToString() == yolov8n.read_bytes()


def test_materialize_is_byte_stable_and_cached(yolov8n, tmp_path, monkeypatch):
    again = fetch("yolov8n-640", cache=tmp_path)
    assert again.read_bytes() == yolov8n.read_bytes()
    before = again.stat()
    monkeypatch.setattr(zoo, "fill_weights", lambda *a, **k: pytest.fail("not cached"))
    assert fetch("yolov8n-640", cache=tmp_path) == again
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_tampered_weightless_file_is_refused(tmp_path):
    entry = dataclasses.replace(CATALOG["resnet18-224"], sha256="0" * 64)
    with pytest.raises(ZooError, match="sha256 mismatch for 'resnet18-224'.*export_structures"):
        fetch(entry.id, cache=tmp_path, catalog={entry.id: entry})
