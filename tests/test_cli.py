"""Tests for the command line (cli.py). Error handling lives in ``cli.main``, so every command
goes through it: in-process (``sys.argv`` set, ``main()`` called) for speed, and through the
installed ``graphslim`` script where the exact stderr and the exit code of a real process
matter. The input model must be byte-identical after every command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from graphslim import cli
from graphslim.errors import ModelLoadError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
TINY_YOLO = FIXTURES / "tiny_yolo.onnx"
GRAPHSLIM = Path(sys.executable).parent / "graphslim"
PIPELINE = "constants-to-initializers,simplify,fold-bn,cleanup"
BUILT_IN = {"cleanup", "constants-to-initializers", "fix-input-shapes", "fold-bn", "simplify"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def fixtures_untouched():
    """No command may change a committed fixture."""
    before = {p.name: digest(p) for p in FIXTURES.glob("*.onnx")}
    yield
    assert {p.name: digest(p) for p in FIXTURES.glob("*.onnx")} == before


@pytest.fixture
def model(tmp_path) -> Path:
    """A private copy of tiny_yolo; checked byte-identical at the end of the test."""
    path = tmp_path / "in" / "tiny_yolo.onnx"
    path.parent.mkdir()
    path.write_bytes(TINY_YOLO.read_bytes())
    before = digest(path)
    yield path
    assert digest(path) == before, "the input model was modified"


@pytest.fixture
def perturbed(tmp_path, model) -> Path:
    """tiny_yolo with one weight scaled by 1.5."""
    m = onnx.load_model(model)
    w = next(t for t in m.graph.initializer if t.name.endswith("conv.weight"))
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.5), w.name))
    path = tmp_path / "perturbed.onnx"
    onnx.save_model(m, path)
    return path


def main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``graphslim ARGS`` in-process through cli.main; returns (exit code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["graphslim", *map(str, args)])
    monkeypatch.setattr(cli.out, "width", 200)  # tables wide enough to read
    monkeypatch.setattr(cli.err, "width", 200)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), captured.out, captured.err


def script(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``graphslim`` script."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [str(GRAPHSLIM), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=120,
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ----------------------------------------------------------------------------- run


def test_run_end_to_end_through_the_script(tmp_path, model):
    out, report = tmp_path / "slim.onnx", tmp_path / "report.json"
    proc = script("run", model, "-P", PIPELINE, "-o", out, "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # the pass table, one row per pass, in order
    assert "passes" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    names = [r.split("│")[1].strip() for r in rows]
    assert [n for n in names if n in BUILT_IN] == PIPELINE.split(",")
    assert "final validation against the input: PASS" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    slim = onnx.load_model(out)
    onnx.checker.check_model(slim)
    assert len(slim.graph.node) < len(onnx.load_model(model).graph.node)
    data = json.loads(report.read_text())
    assert [p["name"] for p in data["passes"]] == PIPELINE.split(",")
    assert data["input"] == str(model) and data["output"] == str(out)
    assert data["validation"]["passed"] is True
    assert data["final"]["nodes"] == len(slim.graph.node)
    assert data["initial"]["macs"] == data["final"]["macs"] > 0
    for p in data["passes"]:
        assert {"seconds", "before", "after", "counters", "skipped", "modified"} <= set(p)


def test_run_with_a_pipeline_file(monkeypatch, capsys, tmp_path, model):
    toml = tmp_path / "pipeline.toml"
    toml.write_text('[[pass]]\nname = "simplify"\n\n[[pass]]\nname = "cleanup"\n')
    out = tmp_path / "slim.onnx"
    code, stdout, _ = main(monkeypatch, capsys, "run", model, "-p", toml, "-o", out)
    assert code == 0
    assert "simplify" in stdout and "cleanup" in stdout
    assert out.exists()


def test_run_with_validate_each(monkeypatch, capsys, tmp_path, model):
    out, report = tmp_path / "slim.onnx", tmp_path / "r.json"
    code, stdout, _ = main(
        monkeypatch, capsys, "run", model, "-P", "simplify,fold-bn", "-o", out,
        "--validate-each", "--json", report,
    )  # fmt: skip
    assert code == 0
    data = json.loads(report.read_text())
    assert all(p["validation"]["passed"] for p in data["passes"])
    # the per-pass error column is filled in, not "-"
    rows = [line for line in stdout.splitlines() if line.startswith("│ simplify")]
    assert rows and rows[0].rstrip().rstrip("│").strip().split()[-1] != "-"


def test_run_failing_validation_writes_nothing_unless_asked(monkeypatch, capsys, tmp_path, model):
    out = tmp_path / "slim.onnx"
    args = ("run", model, "-P", "cleanup", "-o", out, "--tol", "cosine=1.5")  # cannot hold
    code, stdout, stderr = main(monkeypatch, capsys, *args)
    assert code == 1
    assert "FAIL" in stdout
    assert "validation failed" in stderr and "nothing written" in stderr
    assert not out.exists()
    code, _, _ = main(monkeypatch, capsys, *args, "--write-anyway")
    assert code == 0 and out.exists()


def test_run_refuses_to_overwrite_its_input(monkeypatch, capsys, tmp_path, model):
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    monkeypatch.chdir(tmp_path)
    for target in (model, link, Path("in") / ".." / "in" / model.name):
        code, stdout, stderr = main(
            monkeypatch, capsys, "run", model, "-P", "cleanup", "-o", target
        )
        assert code == 2
        assert "output path is the input model" in stderr
    # the fixture itself, through the script
    proc = script("run", TINY_YOLO, "-P", "cleanup", "-o", "fixtures/../fixtures/tiny_yolo.onnx")
    assert proc.returncode == 2
    assert "output path is the input model" in one_error_line(proc.stderr)


def test_json_report_never_overwrites_a_model(monkeypatch, capsys, tmp_path, model, perturbed):
    out = tmp_path / "slim.onnx"
    cases = [
        (("run", model, "-P", "cleanup", "-o", out, "--json", model), "would overwrite"),
        (("run", model, "-P", "cleanup", "-o", out, "--json", out), "would overwrite"),
        (("validate", model, perturbed, "--json", perturbed), "would overwrite"),
        (("bench", model, "--runs", "1", "--json", model), "would overwrite"),
    ]
    perturbed_bytes = perturbed.read_bytes()
    for args, message in cases:
        code, stdout, stderr = main(monkeypatch, capsys, *args)
        assert code == 2, stderr
        assert message in one_error_line(stderr)
        assert stdout == ""  # refused before any work
    assert perturbed.read_bytes() == perturbed_bytes
    assert not out.exists()


def test_json_report_in_a_missing_folder(monkeypatch, capsys, tmp_path, model):
    report = tmp_path / "no" / "r.json"
    code, _, stderr = main(monkeypatch, capsys, "validate", model, model, "--json", report)
    assert code == 2
    assert "does not exist" in one_error_line(stderr)
    code, _, stderr = main(monkeypatch, capsys, "validate", model, model, "--json", tmp_path)
    assert code == 2 and "is a folder" in stderr


def test_run_needs_exactly_one_pipeline(monkeypatch, capsys, tmp_path, model):
    code, _, stderr = main(monkeypatch, capsys, "run", model, "-o", tmp_path / "x.onnx")
    assert code == 2 and "give exactly one of -P" in stderr


# ----------------------------------------------------------------------------- errors


def _error_cases(tmp_path: Path, model: Path) -> dict[str, tuple[list, str]]:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    truncated = tmp_path / "truncated.onnx"
    data = model.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    typo = tmp_path / "typo.toml"
    typo.write_text('[[pass]]\nname = "fold-bn"\n\n[[pass]]\nname = "cleanpu"\n')
    out = tmp_path / "out.onnx"
    return {
        "missing file": (["inspect", tmp_path / "nope.onnx"], "nope.onnx: no such file"),
        "non-ONNX file": (["inspect", text], "notes.onnx: not a valid ONNX model"),
        "truncated ONNX": (["run", truncated, "-P", "cleanup", "-o", out], "is the file truncated"),
        "unknown pass": (
            ["run", model, "-P", "simplify,fold-nb", "-o", out],
            "unknown pass 'fold-nb'; did you mean 'fold-bn'?",
        ),
        "bad option value": (
            ["run", model, "-P", "fix-input-shapes{shapes=5}", "-o", out],
            "fix-input-shapes: bad value 5 for option 'shapes'",
        ),
        "pipeline file typo": (
            ["run", model, "-p", typo, "-o", out],
            "unknown pass 'cleanpu'; did you mean 'cleanup'?",
        ),
        "bad tolerance": (["validate", model, model, "--tol", "maxrel=1"], "unknown statistic"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "non-ONNX file",
        "truncated ONNX",
        "unknown pass",
        "bad option value",
        "pipeline file typo",
        "bad tolerance",
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, model, case):
    args, expected = _error_cases(tmp_path, model)[case]
    proc = script(*args)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert expected in line
    assert not (tmp_path / "out.onnx").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = script("--debug", "inspect", tmp_path / "nope.onnx")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ModelLoadError" in proc.stderr and "no such file" in proc.stderr


def test_in_process_errors_match_the_script(monkeypatch, capsys, tmp_path, model):
    code, stdout, stderr = main(monkeypatch, capsys, "inspect", tmp_path / "nope.onnx")
    assert code == 2 and stdout == ""
    assert one_error_line(stderr).endswith("nope.onnx: no such file")
    # --debug: main lets the exception through (the interpreter prints its traceback)
    monkeypatch.setattr(sys, "argv", ["graphslim", "--debug", "inspect", str(tmp_path / "x")])
    with pytest.raises(ModelLoadError, match="no such file"):
        cli.main()


# ----------------------------------------------------------------------------- passes / inspect


def test_passes_table_and_json(monkeypatch, capsys):
    code, stdout, _ = main(monkeypatch, capsys, "passes")
    assert code == 0
    for name in BUILT_IN:
        assert name in stdout
    code, stdout, _ = main(monkeypatch, capsys, "passes", "--json")
    assert code == 0
    rows = json.loads(stdout)
    by_name = {r["name"]: r for r in rows}
    assert BUILT_IN <= set(by_name)
    assert by_name["fold-bn"]["after"] == ["constants-to-initializers"]
    shapes = by_name["fix-input-shapes"]["options"][0]
    assert shapes["name"] == "shapes" and shapes["type"] == "str" and shapes["help"]
    assert all(r["numerics"] in ("exact", "lossy") and r["summary"] for r in rows)


def test_inspect_json(monkeypatch, capsys, model):
    code, stdout, _ = main(monkeypatch, capsys, "inspect", model, "--json")
    assert code == 0
    s = json.loads(stdout)
    assert s["macs"] > 0 and s["params"] > 0
    assert s["nodes"] == len(onnx.load_model(model).graph.node)
    assert s["top_nodes"] and s["top_nodes"][0]["op"] == "Conv"
    assert s["top_nodes"][0]["macs"] >= s["top_nodes"][-1]["macs"]
    assert sum(s["op_histogram"].values()) == s["nodes"]
    assert s["inputs"][0]["name"] == "images" and s["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_inspect_tables(monkeypatch, capsys, model):
    code, stdout, _ = main(monkeypatch, capsys, "inspect", model, "--top", "3")
    assert code == 0
    for title in ("inputs / outputs", "MACs by op", "top 3 nodes by MACs", "op histogram"):
        assert title in stdout


# ----------------------------------------------------------------------------- validate


def test_validate_a_model_against_itself(monkeypatch, capsys, model, tmp_path):
    report = tmp_path / "v.json"
    code, stdout, _ = main(monkeypatch, capsys, "validate", model, model, "--json", report)
    assert code == 0
    assert "validation: PASS on 4 feed(s)" in stdout
    assert json.loads(report.read_text())["passed"] is True


def test_validate_a_perturbed_copy_fails(monkeypatch, capsys, model, perturbed):
    code, stdout, stderr = main(monkeypatch, capsys, "validate", model, perturbed)
    assert code == 1
    assert "validation: FAIL" in stdout
    assert "output0" in stdout and "want max-rel=0.0001|max-abs=1e-06" in stdout
    assert one_error_line(stderr).startswith("error: validation failed: output0: max-rel")


def test_validate_with_tolerances(monkeypatch, capsys, model, perturbed):
    code, stdout, _ = main(monkeypatch, capsys, "validate", model, perturbed, "--tol", "cosine=0.5")
    assert code == 0 and "tolerance cosine=0.5" in stdout
    code, _, stderr = main(
        monkeypatch, capsys, "validate", model, perturbed, "--tol", "output0:max-abs=1e-9"
    )
    assert code == 1 and "want output0:max-abs=1e-09" in stderr
    code, _, stderr = main(
        monkeypatch, capsys, "validate", model, perturbed, "--tol", "boxes:max-abs=1"
    )
    assert code == 2 and "tolerance names output 'boxes'" in stderr


def test_validate_with_npz_feeds(monkeypatch, capsys, model, perturbed, tmp_path):
    rng = np.random.default_rng(0)
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, images=rng.random((3, 1, 3, 64, 64), dtype=np.float32))  # 3 samples
    code, stdout, _ = main(monkeypatch, capsys, "validate", model, model, "--feeds", feeds)
    assert code == 0 and "PASS on 3 feed(s)" in stdout
    code, stdout, _ = main(
        monkeypatch, capsys, "validate", model, perturbed, "--feeds", feeds, "--limit", "2"
    )
    assert code == 1 and "FAIL on 2 feed(s)" in stdout


def test_validate_with_an_image_folder(monkeypatch, capsys, model, perturbed, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for k, (w, h) in enumerate([(80, 60), (50, 100)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{k}.png")
    code, stdout, _ = main(
        monkeypatch, capsys, "validate", model, model, "--feeds", images, "--preprocess", "yolo"
    )
    assert code == 0 and "PASS on 2 feed(s)" in stdout
    code, stdout, _ = main(
        monkeypatch, capsys, "validate", model, perturbed, "--feeds", images, "--preprocess", "yolo"
    )
    assert code == 1 and "FAIL on 2 feed(s)" in stdout


# ----------------------------------------------------------------------------- bench


def test_bench_two_models(monkeypatch, capsys, model, perturbed, tmp_path):
    report = tmp_path / "bench.json"
    code, stdout, _ = main(
        monkeypatch, capsys, "bench", model, perturbed, "--runs", "3", "--warmup", "1",
        "--threads", "1", "--json", report,
    )  # fmt: skip
    assert code == 0
    assert "ratio" in stdout and "1.000x" in stdout
    assert "3 runs each, alternating, 1 threads" in stdout
    timings = json.loads(report.read_text())["timings"]
    assert [t["runs"] for t in timings] == [3, 3]
    assert timings[0]["ratio"] == 1.0 and all(t["median_ms"] > 0 for t in timings)


def test_bench_rejects_bad_counts(monkeypatch, capsys, model):
    code, _, stderr = main(monkeypatch, capsys, "bench", model, "--runs", "0")
    assert code == 2 and "--runs must be >= 1" in stderr


def test_analyze_json_and_tables(monkeypatch, capsys, model):
    code, stdout, _ = main(monkeypatch, capsys, "analyze", model, "--json")
    assert code == 0
    rep = json.loads(stdout)
    assert rep["groups_prunable"] > 0 and rep["groups_frozen"] > 0
    frozen = [g for g in rep["groups"] if g["frozen"]]
    # tiny_yolo's detect head: the DFL's Softmax over box bins and the graph output freeze
    # their groups.
    assert any("Softmax" in g["frozen"] for g in frozen)
    assert any("graph output" in g["frozen"] for g in frozen)
    assert 0.9 < rep["prunable_macs_share"] <= 1.0
    code, stdout, _ = main(monkeypatch, capsys, "analyze", model, "--limit", "3")
    assert code == 0
    assert (
        "prunable groups" in stdout and "frozen groups" in stdout and "more (see --json)" in stdout
    )


def test_run_prune_channels_with_measured_error(monkeypatch, capsys, tmp_path, model):
    out, report = tmp_path / "pruned.onnx", tmp_path / "r.json"
    code, stdout, _ = main(
        monkeypatch,
        capsys,
        "run",
        model,
        "-P",
        "fold-bn,prune-channels{ratio=0.5}",
        "-o",
        out,
        "--json",
        report,
    )
    assert code == 0, stdout
    data = json.loads(report.read_text())
    prune = data["passes"][-1]
    assert prune["name"] == "prune-channels" and prune["modified"]
    assert prune["after"]["macs"] < 0.5 * prune["before"]["macs"]
    # A lossy pipeline: the error is measured and reported, judged only against given tolerances.
    assert data["validation"]["tolerances"] == [] and data["validation"]["passed"]
    assert 0 < data["validation"]["outputs"][0]["stats"]["max-rel"]
    assert onnx.load_model(out).graph.output[0].type == onnx.load_model(model).graph.output[0].type


def test_run_calibration_set_is_separate_from_feeds(monkeypatch, capsys, tmp_path, model):
    calib, evaluation = tmp_path / "calib", tmp_path / "eval"
    rng = np.random.default_rng(7)
    for folder, n in ((calib, 4), (evaluation, 2)):
        folder.mkdir()
        for k in range(n):
            pixels = rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{k}.png")
    report = tmp_path / "r.json"
    code, stdout, _ = main(
        monkeypatch,
        capsys,
        "run",
        model,
        "-P",
        "fold-bn,prune-channels{ratio=0.3,reconstruct=true,importance=activation}",
        "-o",
        tmp_path / "out.onnx",
        "--calib",
        calib,
        "--feeds",
        evaluation,
        "--preprocess",
        "yolo",
        "--json",
        report,
    )
    assert code == 0, stdout
    data = json.loads(report.read_text())
    assert data["validation"]["feeds"] == 2  # evaluated on --feeds only
    prune = data["passes"][-1]
    assert prune["counters"]["layers_reconstructed"] > 0
    errors = [n for n in prune["notes"] if n.startswith("reconstruct ")]
    assert errors and all(
        float(n.split()[-1]) <= float(n.split()[-3]) for n in errors
    )  # "rel error BEFORE -> AFTER"


# ----------------------------------------------------------------------------- task gates


def test_validate_task_gate_exit_codes(monkeypatch, capsys, model, perturbed, tmp_path):
    code, out, err = main(
        monkeypatch, capsys, "validate", model, model, "--task", "detect",
        "--min-metric", "map50=1.0", "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    assert "map50" in out and "tolerance none (measured only)" in out
    assert json.loads((tmp_path / "r.json").read_text())["task"]["metrics"]["map50"] == 1.0
    code, out, err = main(
        monkeypatch, capsys, "validate", model, perturbed, "--task", "detect",
        "--min-metric", "map50=0.99", "--min-metric", "recall=0",
    )  # fmt: skip
    assert code == 1
    line = one_error_line(err)
    assert "task gate failed: map50" in line and "recall" not in line
    code, _, err = main(
        monkeypatch, capsys, "validate", model, perturbed, "--task", "dense",
        "--min-metric", "agreement=0",
    )  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-metric", "map50=0.9"], "--min-metric needs --task"),
        (["--task", "detect", "--min-metric", "map50"], "write NAME=VALUE"),
        (["--task", "detect", "--min-metric", "top1=0.9"], "has no metric 'top1'"),
        (["--task", "segment"], "unknown task 'segment'"),
        (["--task", "detect", "--decoder", "ssd"], "unknown decoder 'ssd'"),
        (["--task", "classify", "--labels", "labels.csv"], "--labels needs image feeds"),
    ],
)
def test_validate_task_option_errors_exit_2(monkeypatch, capsys, model, args, message):
    code, _, err = main(monkeypatch, capsys, "validate", model, model, *args)
    assert code == 2
    assert message in one_error_line(err)


def test_run_task_gate_stops_or_rolls_back(monkeypatch, capsys, model, tmp_path):
    pipeline = "fold-bn,prune-channels{ratio=0.5}"
    out_path = tmp_path / "gated.onnx"
    code, _, err = main(
        monkeypatch, capsys, "run", model, "-o", out_path, "-P", pipeline,
        "--task", "detect", "--min-metric", "map50=0.99",
    )  # fmt: skip
    assert code == 1
    assert "task gate: after 'prune-channels'" in one_error_line(err)
    assert not out_path.exists()
    code, out, err = main(
        monkeypatch, capsys, "run", model, "-o", out_path, "-P", pipeline,
        "--task", "detect", "--min-metric", "map50=0.99", "--on-fail", "rollback",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out_path.with_name("gated.report.json").read_text())
    assert [p["rolled_back"] for p in report["passes"]] == [False, True]
    assert report["task"]["metrics"]["map50"] == 1.0
    assert report["final"]["macs"] == report["initial"]["macs"]


def _symbolic_hw_model(path: Path) -> Path:
    """x[batch,3,height,width] -> 1x1 Conv -> Relu: dims only a user can choose."""
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, path)
    return path


def _dims(path: Path) -> list:
    dims = onnx.load_model(path).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_run_on_symbolic_dims_needs_no_input_shape(monkeypatch, capsys, tmp_path):
    src = _symbolic_hw_model(tmp_path / "dyn.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = main(monkeypatch, capsys, "run", str(src), "-P", "cleanup", "-o", str(out))
    assert code == 0, err
    assert "using x:1,3,640,640" in err  # the guess is said, in one line
    assert _dims(out) == ["batch", 3, "height", "width"]  # the written model stays symbolic


def test_run_takes_shapes_from_its_own_fix_input_shapes(monkeypatch, capsys, tmp_path):
    src = _symbolic_hw_model(tmp_path / "dyn.onnx")
    out = tmp_path / "out.onnx"
    pipe = "fix-input-shapes{shapes=x:1,3,32,32},cleanup"
    code, _, err = main(monkeypatch, capsys, "run", str(src), "-P", pipe, "-o", str(out))
    assert code == 0, err
    assert "using" not in err  # nothing guessed
    assert _dims(out) == [1, 3, 32, 32]


def test_validate_on_symbolic_dims(monkeypatch, capsys, tmp_path):
    src = _symbolic_hw_model(tmp_path / "dyn.onnx")
    code, _, err = main(monkeypatch, capsys, "validate", str(src), str(src))
    assert code == 0, err


def last_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


def test_run_task_steers_the_int8_search_by_the_task(monkeypatch, capsys, tmp_path, model):
    """--task with calibration images: quantize-int8's exclusion search follows the task's
    metric (its `task` option), unless the pipeline names one."""
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(calib / f"img{k}.png")
    for spec, want in (
        ("quantize-int8{latency_guard=off}", "detect"),
        ("quantize-int8{latency_guard=off,task=dense}", "dense"),
    ):
        report = tmp_path / "r.json"
        args = ["run", model, "-P", spec, "-o", tmp_path / "q.onnx", "--calib", calib]
        args += ["--feeds", calib, "--preprocess", "yolo", "--task", "detect", "--json", report]
        args += ["--min-metric", "map50=0", "--write-anyway"]
        main(monkeypatch, capsys, *args)
        data = json.loads(report.read_text())
        assert data["passes"][0]["options"]["task"] == want


def test_run_task_default_gate_fails_a_dead_detector(monkeypatch, capsys, model, tmp_path):
    """--task detect with no minimum of the user's: pruning half the channels of tiny_yolo
    loses every detection, so the run fails (exit 1), writes no model, and its report names
    the pass that broke it."""
    out_path = tmp_path / "dead.onnx"
    args = ["run", model, "-o", out_path, "-P", "fold-bn,prune-channels{ratio=0.5}"]
    code, out, err = main(monkeypatch, capsys, *args, "--task", "detect")
    assert code == 1
    line = last_error_line(err)
    assert "task gate failed: detect map50" in line and "every detection lost" in line
    assert "broken by pass 2:prune-channels" in line and "nothing written" in line
    assert not out_path.exists()
    assert "final task metrics: FAIL" in out and "task gate: FAIL" in out
    report = json.loads(out_path.with_name("dead.report.json").read_text())
    gate = report["gate"]
    assert gate["verdict"] == "FAIL" and gate["stage"] == "2:prune-channels"
    assert gate["minimum"] == 0.5 and gate["value"] == report["task"]["metrics"]["map50"] < 0.5
    assert (
        report["task"]["details"]["matched"] == 0 < report["task"]["details"]["original_detections"]
    )
    assert [s["rolled_back"] for s in report["passes"]] == [False, False]  # judged, not undone
    md = out_path.with_name("dead.report.md").read_text()
    assert "## Task gate: FAIL" in md and "below the minimum 0.5 here" in md
    # --write-anyway keeps the model and still exits 1
    code, _, err = main(monkeypatch, capsys, *args, "--task", "detect", "--write-anyway")
    assert code == 1 and "written anyway" in last_error_line(err) and out_path.is_file()
    # the user's own minimum replaces the default
    out_path.unlink()
    code, out, err = main(
        monkeypatch, capsys, *args, "--task", "detect", "--min-metric", "map50=0.05"
    )
    assert code == 0, err
    assert out_path.is_file() and "task gate: PASS: map50 0.1190 >= minimum 0.05" in out


def test_run_and_validate_without_task_point_at_task_detect(monkeypatch, capsys, model, tmp_path):
    pruned = tmp_path / "pruned.onnx"
    code, out, _ = main(
        monkeypatch, capsys, "run", model, "-o", pruned, "-P", "prune-channels{ratio=0.5}"
    )
    assert code == 0 and pruned.is_file()
    assert "final validation against the input: measured on" in out  # not "PASS": nothing judged
    assert "output 'output0' [1, 6, 80] is a yolov8 detection head" in out
    assert "cannot see whether detections survive" in out
    cmd = next(line for line in out.splitlines() if line.startswith("  graphslim run"))
    assert cmd.endswith("--task detect --feeds IMAGE_FOLDER --preprocess yolo")
    assert str(model) in cmd and "'prune-channels{ratio=0.5}'" in cmd  # shell-quoted, rerunnable
    code, out, _ = main(monkeypatch, capsys, "validate", model, pruned, "--tol", "cosine=0.5")
    assert code == 0 and "graphslim validate" in out and "--task detect" in out
    # with --task, the default gate judges the detections: every one is lost
    code, out, err = main(monkeypatch, capsys, "validate", model, pruned, "--task", "detect")
    assert code == 1 and "task gate failed: detect map50" in one_error_line(err)
    assert "every detection lost" in err and "task gate: FAIL" in out
    code, _, err = main(
        monkeypatch,
        capsys,
        "validate",
        model,
        pruned,
        "--task",
        "detect",
        "--min-metric",
        "map50=0",
    )
    assert code == 0, err
    code, out, _ = main(monkeypatch, capsys, "validate", model, model, "--task", "detect")
    assert code == 0 and "task gate: PASS" in out


def test_run_pipeline_file_gate_rolls_back_what_kills_the_detections(
    monkeypatch, capsys, model, tmp_path
):
    """A pipeline file's [gate] as the recipes carry it (task read from the output layout,
    rollback): the pruning that loses every detection is undone, the exact steps stay, and
    the run passes with the report saying what was rolled back and why."""
    toml = tmp_path / "gated.toml"
    toml.write_text(
        '[gate]\ntask = "auto"\nminimum = 0.5\non_fail = "rollback"\n\n'
        '[[pass]]\nname = "fold-bn"\n\n[[pass]]\nname = "prune-channels"\nratio = 0.5\n'
    )
    out_path = tmp_path / "kept.onnx"
    code, out, err = main(monkeypatch, capsys, "run", model, "-o", out_path, "-p", toml)
    assert code == 0, err
    assert "task gate: PASS" in out and "rolled back: 2:prune-channels" in out
    report = json.loads(out_path.with_name("kept.report.json").read_text())
    assert report["task"]["task"] == "detect" and report["task"]["metrics"]["map50"] == 1.0
    assert [p["rolled_back"] for p in report["passes"]] == [False, True]
    assert report["passes"][1]["task"]["metrics"]["map50"] < 0.5
    assert report["gate"]["rolled_back"] == ["2:prune-channels"]
    assert report["final"]["macs"] == report["initial"]["macs"]
    # --on-fail final on the same file: the run keeps the pruning and fails, naming it
    code, _, err = main(
        monkeypatch, capsys, "run", model, "-o", out_path, "-p", toml, "--on-fail", "final"
    )
    assert code == 1 and "broken by pass 2:prune-channels" in last_error_line(err)
    code, _, err = main(
        monkeypatch, capsys, "run", model, "-o", out_path, "-P", "fold-bn", "--on-fail", "rollback"
    )
    assert code == 2 and "--on-fail needs --task" in one_error_line(err)


def test_bench_explain_prints_the_per_op_limit(monkeypatch, capsys, tmp_path, model):
    pruned = tmp_path / "p.onnx"
    code, _, err = main(
        monkeypatch, capsys, "run", model, "-P", "prune-channels{ratio=0.5}", "-o", pruned
    )
    assert code == 0, err
    out_json = tmp_path / "b.json"
    code, out, err = main(
        monkeypatch, capsys, "bench", model, pruned, "--runs", "3", "--explain", "--json", out_json
    )
    assert code == 0, err
    assert "per-op limit" in out and "work ratio" in out
    data = json.loads(out_json.read_text())
    conv = next(r for r in data["explain"]["rows"] if r["op_type"] == "Conv")
    assert 0 < conv["work_ratio"] < 1  # pruning halved the convs' channels
    code, _, err = main(monkeypatch, capsys, "bench", model, "--explain")
    assert code == 2 and "--explain compares two models" in err
