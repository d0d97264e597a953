"""ORT format: onnxruntime's converter writes a .ort file that loads and matches the model."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from graphslim import cli
from graphslim.backends import ort_format
from graphslim.feeds import random_feeds

TINY_YOLO = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_yolo.onnx"


@pytest.mark.parametrize("style", ort_format.STYLES)
def test_convert_loads_and_matches(tmp_path, style):
    m = onnx.load_model(TINY_YOLO)
    path = ort_format.convert(m, tmp_path / "tiny.ort", style=style)
    data = path.read_bytes()
    assert data[4:8] == b"ORTM"  # the flatbuffer's file identifier
    c = ort_format.check(m, path, random_feeds(m, count=2, seed=3))
    assert c.passed, c.failure_summary()
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_style_refused(tmp_path):
    with pytest.raises(ValueError, match="style"):
        ort_format.convert(onnx.load_model(TINY_YOLO), tmp_path / "x.ort", style="mobile")


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    code = exc.value.code
    return (0 if code is None else code), capsys.readouterr()


def test_cli_convert(monkeypatch, capsys, tmp_path):
    out = tmp_path / "tiny.ort"
    code, cap = run(monkeypatch, capsys, "convert", TINY_YOLO, "--to", "ort", "-o", out)
    assert code == 0, cap.err
    assert "PASS" in cap.out and out.is_file()
    assert "Created config" not in cap.err  # the converter's chatter stays quiet


def test_cli_convert_unknown_target(monkeypatch, capsys, tmp_path):
    code, cap = run(
        monkeypatch, capsys, "convert", TINY_YOLO, "--to", "tflite", "-o", tmp_path / "x"
    )
    assert code == 2 and "use one of ort, openvino" in cap.err
