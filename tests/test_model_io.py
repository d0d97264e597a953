"""Tests for graphslim.model_io: lossless load, atomic save, refusal to overwrite the input,
external data (and models over protobuf's 2 GB limit), and one-line errors for bad files."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphslim.model_io as model_io
from graphslim.errors import ModelLoadError, ModelSaveError
from graphslim.model_io import load_model, needs_external_data, save_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_YOLO = FIXTURES / "tiny_yolo.onnx"


def conv_model(channels: int = 4, *, ir_version: int = 8) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv 3x3 (pad 1) -> Relu, with metadata and a doc string to keep."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv/Conv", pads=[1] * 4),
            helper.make_node("Relu", ["c"], ["y"], name="/act/Relu"),
        ],
        "conv-graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 2)],
        ir_version=ir_version,
        producer_name="unit-test",
        producer_version="9.9",
        doc_string="keep me",
    )
    helper.set_model_props(model, {"author": "someone", "licence": "MIT"})
    return model


def run(model_or_path, feed: dict) -> list[np.ndarray]:
    source = (
        model_or_path.SerializeToString()
        if isinstance(model_or_path, onnx.ModelProto)
        else str(model_or_path)
    )
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- load


def test_load_keeps_ir_opset_metadata_and_names(tmp_path):
    model = conv_model(ir_version=7)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    got = load_model(path)
    assert got.ir_version == 7
    assert {(o.domain, o.version) for o in got.opset_import} == {("", 13), ("com.example", 2)}
    assert (got.producer_name, got.producer_version, got.doc_string) == (
        "unit-test",
        "9.9",
        "keep me",
    )
    assert {p.key: p.value for p in got.metadata_props} == {"author": "someone", "licence": "MIT"}
    assert got.graph.name == "conv-graph"
    assert [n.name for n in got.graph.node] == ["/conv/Conv", "/act/Relu"]
    assert [t.name for t in got.graph.initializer] == ["w", "b"]
    # Nothing is rewritten: the loaded proto is the file's proto.
    assert got.SerializeToString() == path.read_bytes()


def test_save_then_load_is_lossless(tmp_path):
    model = onnx.load_model(TINY_YOLO)
    out = save_model(model, tmp_path / "copy.onnx")
    assert out == tmp_path / "copy.onnx"
    assert load_model(out) == model
    assert out.read_bytes() == model.SerializeToString()


def test_saved_file_is_readable_like_any_new_file(tmp_path):
    # The temporary file is created private (0600); the result must get the usual umask mode.
    mask = os.umask(0)
    os.umask(mask)
    out = save_model(conv_model(), tmp_path / "m.onnx")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    ext = save_model(conv_model(channels=16), tmp_path / "e.onnx", external_data=True)
    for p in (ext, tmp_path / "e.onnx.data"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "missing": tmp_path / "nope.onnx",
        "empty": tmp_path / "empty.onnx",
        "text": tmp_path / "notes.onnx",
        "random": tmp_path / "random.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "folder": tmp_path / "folder.onnx",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model\nsecond line\n")
    files["random"].write_bytes(np.random.default_rng(1).bytes(4096))
    whole = TINY_YOLO.read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "random", "truncated", "folder"])
def test_bad_files_give_one_line_model_load_error(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    msg = one_line(exc)
    assert str(path) in msg
    expected = {
        "missing": "no such file",
        "empty": "empty",
        "text": "not",
        "random": "not",
        "truncated": "truncated",
        "folder": "folder",
    }[kind]
    assert expected in msg


def test_missing_external_data_is_a_load_error(tmp_path):
    save_model(conv_model(channels=16), tmp_path / "m.onnx", external_data=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path / "m.onnx")
    assert ".data" in one_line(exc)


# ----------------------------------------------------------------------------- save: atomic


def test_failed_replace_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"old model bytes")
    before = listing(tmp_path)

    def boom(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(model_io.os, "replace", boom)
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(), dest)
    assert "I/O error" in one_line(exc)
    assert dest.read_bytes() == b"old model bytes"
    assert listing(tmp_path) == before


class _DiskFullFile:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_leaves_old_file_and_nothing_else(tmp_path, monkeypatch):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"old model bytes")
    real_fdopen = os.fdopen
    monkeypatch.setattr(model_io.os, "fdopen", lambda *a, **k: _DiskFullFile(real_fdopen(*a, **k)))
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(), dest)
    msg = one_line(exc)
    assert str(dest) in msg and os.strerror(errno.ENOSPC) in msg
    assert dest.read_bytes() == b"old model bytes"
    assert listing(tmp_path) == ["m.onnx"]


def test_disk_full_with_no_previous_file_leaves_nothing(tmp_path, monkeypatch):
    real_fdopen = os.fdopen
    monkeypatch.setattr(model_io.os, "fdopen", lambda *a, **k: _DiskFullFile(real_fdopen(*a, **k)))
    with pytest.raises(ModelSaveError):
        save_model(conv_model(), tmp_path / "m.onnx")
    assert listing(tmp_path) == []


def test_disk_full_while_writing_external_data(tmp_path, monkeypatch):
    from onnx import external_data_helper

    old = conv_model(channels=16)
    dest = save_model(old, tmp_path / "m.onnx", external_data=True)
    old_bytes = dest.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()
    real = external_data_helper.save_external_data
    calls = []

    def fill_disk(tensor, base_path):
        calls.append(tensor.name)
        real(tensor, base_path)  # part of the data is on disk, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(external_data_helper, "save_external_data", fill_disk)
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(channels=32), dest, external_data=True)
    assert os.strerror(errno.ENOSPC) in one_line(exc)
    assert calls == ["w"]  # really failed midway, after one tensor was written
    assert (dest.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == old_bytes
    assert listing(tmp_path) == ["m.onnx", "m.onnx.data"]


def test_external_save_failing_between_data_and_model_keeps_old_pair(tmp_path, monkeypatch):
    # The data file is moved into place first, the model last; if the model's move fails,
    # the old model must still find its old data (not the new model's).
    old = conv_model(channels=16)
    dest = save_model(old, tmp_path / "m.onnx", external_data=True)
    old_bytes = dest.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()
    real_replace = os.replace

    def fail_on_model(src, dst):
        if Path(dst) == dest:
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", fail_on_model)
    with pytest.raises(ModelSaveError):
        save_model(conv_model(channels=32), dest, external_data=True)
    monkeypatch.undo()
    assert (dest.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == old_bytes
    assert listing(tmp_path) == ["m.onnx", "m.onnx.data"]
    x = {"x": np.ones((1, 3, 8, 8), np.float32)}
    np.testing.assert_array_equal(run(load_model(dest), x)[0], run(old, x)[0])


# ----------------------------------------------------------------------------- save: paths


def test_protect_refuses_the_input_path(tmp_path):
    src = tmp_path / "in.onnx"
    src.write_bytes(conv_model().SerializeToString())
    original = src.read_bytes()
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    (tmp_path / "sub").mkdir()
    spellings = [
        src,
        str(src),
        tmp_path / "sub" / ".." / "in.onnx",
        link,
    ]
    for spelling in spellings:
        with pytest.raises(ModelSaveError) as exc:
            save_model(conv_model(channels=8), spelling, protect=src)
        assert "input model" in one_line(exc)
    # protect given through the link, output the real path
    with pytest.raises(ModelSaveError):
        save_model(conv_model(channels=8), src, protect=link)
    assert src.read_bytes() == original


def test_protect_refuses_a_relative_spelling(tmp_path, monkeypatch):
    src = tmp_path / "in.onnx"
    src.write_bytes(conv_model().SerializeToString())
    original = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    for spelling in ("in.onnx", "./in.onnx", f"../{tmp_path.name}/in.onnx"):
        with pytest.raises(ModelSaveError):
            save_model(conv_model(channels=8), spelling, protect=src)
    assert src.read_bytes() == original
    # a different file is fine
    save_model(conv_model(channels=8), "out.onnx", protect="in.onnx")
    assert (tmp_path / "out.onnx").exists()


def test_missing_folder(tmp_path):
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(), tmp_path / "no" / "such" / "m.onnx")
    assert "does not exist" in one_line(exc)
    assert not (tmp_path / "no").exists()


def test_folder_as_output(tmp_path):
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(), tmp_path)
    assert "is a folder" in one_line(exc)
    assert listing(tmp_path) == []


def test_unwritable_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    real_access = os.access
    if os.geteuid() == 0:
        # root ignores the mode bits; make access() answer as for any other user.
        monkeypatch.setattr(
            model_io.os,
            "access",
            lambda p, mode: False if Path(p) == folder else real_access(p, mode),
        )
    try:
        with pytest.raises(ModelSaveError) as exc:
            save_model(conv_model(), folder / "m.onnx")
        assert "not writable" in one_line(exc)
        assert listing(folder) == []
    finally:
        folder.chmod(0o755)


def test_permission_denied_while_writing_is_a_save_error(tmp_path, monkeypatch):
    # access() can say yes while the write is refused (ACLs, read-only mounts, NFS root squash).
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(model_io.tempfile, "mkstemp", denied)
    with pytest.raises(ModelSaveError) as exc:
        save_model(conv_model(), tmp_path / "m.onnx")
    assert os.strerror(errno.EACCES) in one_line(exc)
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------- external data


def test_external_data_round_trip(tmp_path):
    model = onnx.load_model(TINY_YOLO)
    out = save_model(model, tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.exists() and data.stat().st_size > out.stat().st_size
    assert listing(tmp_path) == ["ext.onnx", "ext.onnx.data"]
    # the model file references the data file by a relative name, so the pair can move
    bare = onnx.load_model(out, load_external_data=False)
    locations = {
        e.value for t in bare.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"ext.onnx.data"}
    moved = tmp_path / "moved"
    moved.mkdir()
    out.rename(moved / "ext.onnx")
    data.rename(moved / "ext.onnx.data")
    back = load_model(moved / "ext.onnx")
    assert [t.name for t in back.graph.initializer] == [t.name for t in model.graph.initializer]
    feed = {"images": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}
    for a, b in zip(run(model, feed), run(back, feed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(run(model, feed), run(moved / "ext.onnx", feed)):
        np.testing.assert_array_equal(a, b)


def test_external_data_with_only_small_tensors(tmp_path):
    # Tensors under 1 KiB stay inside the model file; asking for external data must still work.
    model = conv_model(channels=2)
    out = save_model(model, tmp_path / "m.onnx", external_data=True)
    assert listing(tmp_path) == ["m.onnx"]
    assert load_model(out) == model


def test_small_models_are_saved_as_one_file(tmp_path):
    assert not needs_external_data(conv_model())
    save_model(conv_model(), tmp_path / "m.onnx")
    assert listing(tmp_path) == ["m.onnx"]


# ----------------------------------------------------------------------------- > 2 GB

BIG_ROWS, BIG_COLS = 524_800, 1024  # float32: 2_149_580_800 bytes, over protobuf's 2**31 - 1
BIG_MARKED = np.array([0, 7, 300_000, BIG_ROWS - 1])  # rows that hold their own index; others 0


@pytest.fixture(scope="module")
def big_model_path(tmp_path_factory):
    """A model with one 2.15 GB initializer, saved by save_model (which must choose external
    data by itself). Built and saved once for the tests below; only the path is kept."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0, name="gather"),
            helper.make_node("Identity", ["picked"], ["rows"], name="identity"),
        ],
        "big",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [len(BIG_MARKED)])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [len(BIG_MARKED), BIG_COLS])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # Add the tensor to the model in place: helper.make_graph(initializer=...) would copy it
    # through serialization, which protobuf refuses over 2 GB.
    table = model.graph.initializer.add()
    table.name, table.data_type = "table", TensorProto.FLOAT
    table.dims.extend([BIG_ROWS, BIG_COLS])
    values = np.zeros((BIG_ROWS, BIG_COLS), np.float32)  # calloc: untouched pages cost nothing
    values[BIG_MARKED] = BIG_MARKED[:, None]
    raw = values.tobytes()
    del values
    table.raw_data = raw
    del raw, table
    assert not model_io.fits_protobuf(model)
    assert needs_external_data(model)
    folder = tmp_path_factory.mktemp("big")
    out = save_model(model, folder / "big.onnx")  # no external_data=: chosen by size
    del model
    yield out
    for f in folder.iterdir():  # pytest keeps recent temp folders; do not keep 2 GB in them
        f.unlink()


def _expected_rows(idx: np.ndarray) -> np.ndarray:
    expected = np.zeros((len(idx), BIG_COLS), np.float32)
    marked = np.isin(idx, BIG_MARKED)
    expected[marked] = idx[marked, None]
    return expected


@pytest.mark.slow
def test_model_over_2gb_saves_with_external_data_loads_and_runs(big_model_path):
    from graphslim.runtime import Session

    folder = big_model_path.parent
    assert listing(folder) == ["big.onnx", "big.onnx.data"]
    assert big_model_path.stat().st_size < 10_000
    assert (folder / "big.onnx.data").stat().st_size == BIG_ROWS * BIG_COLS * 4
    back = load_model(big_model_path)
    assert [t.name for t in back.graph.initializer] == ["table"]
    assert len(back.graph.initializer[0].raw_data) == BIG_ROWS * BIG_COLS * 4
    idx = np.array([7, 1, BIG_ROWS - 1, 300_000], dtype=np.int64)
    with Session(back) as session:
        del back
        rows = session.run({"idx": idx})["rows"]
    np.testing.assert_array_equal(rows, _expected_rows(idx))


@pytest.mark.slow
def test_model_over_2gb_goes_through_a_pipeline(big_model_path, caplog):
    # Passes, the checker and the modified-flag check must cope with a model protobuf cannot
    # serialize in one piece (ByteSize() itself raises on it).
    from graphslim.pipeline import Pipeline

    back = load_model(big_model_path)
    with caplog.at_level(logging.WARNING, logger="graphslim"):
        result = Pipeline(["cleanup"]).run(back, validate=False)
    del back
    assert not [r for r in caplog.records if "checker" in r.getMessage()]  # it was checked
    (record,) = result.records
    assert record.modified and record.counters["identities_removed"] == 1
    assert [n.op_type for n in result.model.graph.node] == ["Gather"]
    assert record.before.params == record.after.params == BIG_ROWS * BIG_COLS
    assert (record.before.nodes, record.after.nodes) == (2, 1)
