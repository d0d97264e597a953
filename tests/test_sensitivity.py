"""graphslim.sensitivity: per-group error curves and the per-node latency model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import onnx
import pytest

from graphslim import cli
from graphslim import sensitivity as S
from graphslim.channels import analyze
from graphslim.feeds import random_feeds
from graphslim.pruning.select import estimate_macs

TINY_YOLO = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_yolo.onnx"


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load_model(TINY_YOLO)


@pytest.fixture(scope="module")
def sens(model) -> S.Sensitivity:
    feeds = random_feeds(model, count=2, seed=0)
    return S.measure(model, feeds, ratios=(0.5,), prune_options={"round_to": 1}, runs=2)


def test_every_prunable_group_has_a_curve(model, sens):
    cg = analyze(model)
    assert len(sens.groups) == sum(1 for g in cg.groups if not g.frozen)
    assert sens.frozen_groups == sum(1 for g in cg.groups if g.frozen)
    for g in sens.groups:
        assert 0 <= g.removed[0.5] <= g.channels * len(g.sources)
        e = g.errors[0.5]
        assert 0.0 <= e["max-rel"] and -1.0 <= e["cosine"] <= 1.0 + 1e-9
        assert g.error(0.0) == 0.0 and g.error(0.5) == pytest.approx(1 - e["cosine"], abs=1e-12)
        assert 0.0 < g.latency_ms[0.5] <= sens.base_ms + 1e-9  # pruning never predicts slower


def test_pruning_any_group_costs_some_error(sens):
    assert all(g.error(0.5) > 0 for g in sens.groups if g.removed[0.5])


def test_latency_model_predicts_measured_points(sens):
    lat = sens.latency
    # The profile sum is the unseen time plus every node's time at its fraction (1.0 here);
    # the calibrated prediction of the original is its measured latency at `all`.
    assert lat.profile_ms({}) == pytest.approx(
        lat.fixed_ms + sum(lat.node_ms(n, 1.0) for n in lat.points)
    )
    assert lat.base_ms == pytest.approx(lat.measured_base_ms)
    assert lat.calibration[-1] == (1.0, 1.0)
    ys = [y for _, y in lat.calibration]
    assert ys == sorted(ys)  # monotone
    name, pts = next(iter(lat.points.items()))
    for f, ms in pts:
        assert lat.node_ms(name, f) == pytest.approx(ms)
    assert lat.node_ms(name, 0.0) == pytest.approx(0.0)  # proportional below the points


def test_node_fractions_match_mac_estimate(model):
    cg = analyze(model)
    grp = next(g for g in cg.groups if not g.frozen)
    removed = set(grp.classes[: len(grp.classes) // 2])
    frac = S.node_fractions(cg, removed)
    sizes = S.node_sizes(cg)
    macs0 = estimate_macs(cg, set())
    compute = {n.name for n in cg.model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    after = sum(sizes[n] * frac.get(n, 1.0) for n in compute)
    assert math.isclose(after / macs0, estimate_macs(cg, removed) / macs0, rel_tol=1e-3)


def test_to_dict_is_json(sens):
    d = json.loads(json.dumps(sens.to_dict()))
    assert d["ratios"] == [0.5] and len(d["groups"]) == len(sens.groups)


def test_plot_writes_png(sens, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    path = S.plot(sens, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_ratios_refused(model):
    with pytest.raises(ValueError, match="ratios"):
        S.measure(model, random_feeds(model, count=1), ratios=(1.5,))


def test_cli_table_json_and_plot(monkeypatch, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    report, png = tmp_path / "s.json", tmp_path / "s.png"
    args = ["sensitivity", TINY_YOLO, "--ratios", "0.5", "--runs", "2", "--count", "1"]
    args += ["--json", report, "--plot", png, "--top", "3"]
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert "prunable groups" in out and "/model." in out
    assert json.loads(report.read_text())["groups"] and png.stat().st_size > 0


def test_cli_bad_ratios_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["graphslim", "sensitivity", str(TINY_YOLO), "--ratios", "x"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "--ratios" in capsys.readouterr().err


def test_task_metric_recorded_per_group_and_ratio():
    from graphslim.tasks import Task

    model = onnx.load_model(TINY_YOLO.parent / "flatten_gemm.onnx")
    feeds = random_feeds(model, count=4, seed=0)
    sens = S.measure(
        model,
        feeds,
        ratios=(0.5, 0.9),
        prune_options={"round_to": 1},
        runs=2,
        task=Task("classify"),
        metric="top1",
    )
    assert sens.task_metric == "top1" and sens.to_dict()["task_metric"] == "top1"
    for g in sens.groups:
        for r in sens.ratios:
            assert 0.0 <= g.errors[r]["task"] <= 1.0
    # Removing 90% of a group's channels moves some top-1 answers on some group.
    assert min(g.errors[0.9]["task"] for g in sens.groups) < 1.0
    with pytest.raises(ValueError, match="metric"):
        S.measure(model, feeds, ratios=(0.5,), runs=1, task=Task("classify"))


def test_cli_task_column(monkeypatch, capsys):
    args = ["sensitivity", TINY_YOLO.parent / "flatten_gemm.onnx", "--ratios", "0.5"]
    args += ["--runs", "1", "--count", "2", "--task", "classify", "--metric", "top1"]
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 250)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    assert "max-rel / top1 / lat saved" in capsys.readouterr().out


def test_cli_metric_without_task_exit_2(monkeypatch, capsys):
    args = ["graphslim", "sensitivity", str(TINY_YOLO), "--metric", "top1"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "--metric needs --task" in capsys.readouterr().err
