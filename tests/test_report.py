"""Run reports: `graphslim run` writes <stem>.report.{json,md,png}; `graphslim report` renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from graphslim import cli
from graphslim.bench import Timing
from graphslim.render import human
from graphslim.report import build_report, read_report, report_paths, to_markdown

TINY_YOLO = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_yolo.onnx"


def main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 250)
    monkeypatch.setattr(cli.err, "width", 250)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return (exc.value.code or 0), captured.out, captured.err


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "tiny_yolo.onnx"
    path.write_bytes(TINY_YOLO.read_bytes())
    return path


def test_report_paths_sit_next_to_the_output(tmp_path):
    paths = report_paths(tmp_path / "slim.v2.onnx")
    assert paths["json"] == tmp_path / "slim.v2.report.json"
    assert paths["png"].name == "slim.v2.report.png" and paths["md"].name == "slim.v2.report.md"


def test_run_writes_reports_holding_the_printed_numbers(monkeypatch, capsys, tmp_path, model):
    out_path = tmp_path / "out" / "slim.onnx"
    out_path.parent.mkdir()
    code, out, err = main(
        monkeypatch,
        capsys,
        "run",
        model,
        "-o",
        out_path,
        "-P",
        "fold-bn,cleanup,prune-channels{ratio=0.25}",
        "--validate-each",
        "--task",
        "detect",
        "--min-metric",
        "map50=0",
        "--bench",
        "--bench-runs",
        "3",
        "--json",
        tmp_path / "record.json",
    )  # fmt: skip (map50=0: this test is about the report's numbers, not the gate)
    assert code == 0, err
    paths = report_paths(out_path)
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0, p
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["json"].read_text())
    assert json.loads((tmp_path / "record.json").read_text()) == report  # --json: the same record
    assert [s["stage"] for s in report["stages"]] == [
        "input", "1:fold-bn", "2:cleanup", "3:prune-channels"
    ]  # fmt: skip
    # the numbers the run printed
    for s in report["stages"]:
        assert human(s["macs"]) in out and human(s["params"]) in out
    for t in report["latency"]:
        assert f"{t['median_ms']:.3f}" in out
    for p in report["passes"]:
        assert f"{p['seconds']:.2f}" in out
        assert f"{p['validation']['outputs'][0]['stats']['max-rel']:.2e}" in out
    assert f"{report['task']['metrics']['map50']:.4f}" in out
    before, after = report["models"]["before"], report["models"]["after"]
    assert before["file_bytes"] == model.stat().st_size
    assert after["file_bytes"] == pytest.approx(out_path.stat().st_size, rel=0.01)
    assert after["macs"] < before["macs"] and before["latency_ms"] > 0
    assert report["stages"][-1]["task_metric"] == report["task"]["metrics"]["map50"]
    md = paths["md"].read_text()
    assert "![MACs, latency and error per stage](slim.report.png)" in md
    assert "| prune-channels |" in md and f"{before['params']:,}" in md


def test_report_command_renders_a_report(monkeypatch, capsys, tmp_path, model):
    out_path = tmp_path / "slim.onnx"
    code, _, err = main(monkeypatch, capsys, "run", model, "-o", out_path, "-P", "fold-bn")
    assert code == 0, err
    code, out, err = main(monkeypatch, capsys, "report", report_paths(out_path)["json"])
    assert code == 0, err
    assert "stages" in out and "1:fold-bn" in out and "bn_folded=" in out
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = main(monkeypatch, capsys, "report", tmp_path / "bad.json")
    assert code == 2 and "not a graphslim run report" in err
    code, _, err = main(monkeypatch, capsys, "report", tmp_path / "missing.json")
    assert code == 2 and "no such report file" in err


def _record(modified: bool) -> dict:
    stats = {"nodes": 10, "params": 100, "macs": 1000}
    return {
        "input": "in.onnx",
        "output": "out.onnx",
        "pipeline": "a,b",
        "initial": stats,
        "final": stats,
        "validation": None,
        "task": None,
        "passes": [
            {
                "name": name,
                "numerics": "exact",
                "options": {},
                "seconds": 0.1,
                "modified": modified,
                "before": stats,
                "after": stats,
                "counters": {},
                "skipped": [{"node": "n", "reason": "why"}],
                "notes": [],
                "validation": None,
                "task": None,
            }
            for name in ("a", "b")
        ],
    }


def test_build_report_latency_and_markdown():
    import onnx

    model = onnx.load_model(TINY_YOLO)
    timing = Timing("input", 3, 1, 2.0, 2.5, 2.1, 1.9, 1.0)
    rep = build_report(_record(False), original=model, final=model, timings=[timing])
    assert [s["latency_ms"] for s in rep["stages"]] == [2.0, 2.0, 2.0]  # same model all along
    assert rep["models"]["after"]["latency_ms"] == 2.0
    md = to_markdown(rep)
    assert "| a | n | why |" in md and "## Declined nodes (2)" in md


def test_read_report_accepts_what_run_writes(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_record(True)))
    assert read_report(p)["pipeline"] == "a,b"
