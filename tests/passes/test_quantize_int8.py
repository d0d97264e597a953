"""quantize-int8: QDQ placement, per-channel scales, exclusion, target types, calibration
sources, auto-exclusion on an outlier-range graph, preconditions, pipeline use."""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import PassContext
from graphslim.errors import OptionsError, PreconditionError
from graphslim.feeds import random_feeds
from graphslim.passes import _quant_isa as I
from graphslim.passes import _quant_sensitivity as S
from graphslim.passes.quantize_int8 import QuantizeInt8
from graphslim.pipeline import Pipeline
from graphslim.runtime import run_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _quantize(model, ctx=None, **opts) -> tuple[onnx.ModelProto, object]:
    opts.setdefault("calibration", "random")
    opts.setdefault("calibration_size", 2)
    opts.setdefault("latency_guard", "off")  # wall-clock; its own tests simulate the timing
    r = QuantizeInt8(**opts)(copy.deepcopy(model), ctx or PassContext())
    return r.model, r


def _search_alone(model, ctx, **opts) -> tuple[onnx.ModelProto, object]:
    """auto_exclude with the rules that would otherwise keep the damage float by themselves
    (the mixed-range Concat, the output tail) turned off."""
    return _quantize(
        model,
        ctx,
        calibration="",
        mixed_concat_float=False,
        float_tail=False,
        auto_exclude=True,
        **opts,
    )


def _dq_of(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _weight_dq(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The DequantizeLinear feeding ``node``'s weight (input 1), if any."""
    return _dq_of(model).get(node.input[1])


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


@pytest.mark.parametrize("fixture", ["residual_add", "tiny_yolo", "flatten_gemm"])
def test_fixture_quantized_runs_with_same_interface(harness, fixture):
    model = harness.fixture(fixture)
    q, r = _quantize(model)
    assert r.modified is True
    onnx.checker.check_model(q)
    assert [i.name for i in q.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
    assert {p.key: p.value for p in q.metadata_props} == {
        p.key: p.value for p in model.metadata_props
    }
    feeds = random_feeds(model, count=1, seed=3)
    ref, got = run_model(model, feeds)[0], run_model(q, feeds)[0]
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    assert all(np.isfinite(v).all() for v in got.values())
    assert r.counters["nodes_quantized"] > 0
    assert r.counters["quantize_linear"] > 0 and r.counters["dequantize_linear"] > 0


@pytest.mark.parametrize(("fixture", "op"), [("tiny_yolo", "Conv"), ("flatten_gemm", "Gemm")])
def test_qdq_feeds_conv_and_gemm(harness, fixture, op):
    q, _ = _quantize(harness.fixture(fixture))
    dq = _dq_of(q)
    nodes = _nodes(q, op)
    assert nodes
    for n in nodes:
        assert n.input[0] in dq, f"{n.name}: activation not dequantized"
        w = dq.get(n.input[1])
        assert w is not None, f"{n.name}: weight not dequantized"
        assert _init(q, w.input[0]).dtype == np.int8
        # the activation's DQ reads a QuantizeLinear output
        src = dq[n.input[0]].input[0]
        assert any(m.op_type == "QuantizeLinear" and src in m.output for m in q.graph.node)


def test_per_channel_vs_per_tensor_weight_scales(harness):
    model = harness.fixture("residual_add")
    per_channel, _ = _quantize(model, per_channel=True)
    per_tensor, _ = _quantize(model, per_channel=False)
    for q, channelwise in ((per_channel, True), (per_tensor, False)):
        for conv in _nodes(q, "Conv"):
            w_dq = _weight_dq(q, conv)
            c_out = _init(q, w_dq.input[0]).shape[0]
            scale = _init(q, w_dq.input[1])
            assert scale.size == (c_out if channelwise else 1), conv.name


def test_exclude_by_name_regex_and_op_type(harness):
    model = harness.fixture("tiny_yolo")
    convs = [n.name for n in _nodes(model, "Conv")]
    by_name = convs[0]
    q, r = _quantize(model, exclude=(by_name, "re:/model\\.1/.*", "op:Gemm", "MaxPool"))
    names = {n.name: n for n in q.graph.node}
    assert _weight_dq(q, names[by_name]) is None
    regexed = [n for n in _nodes(q, "Conv") if n.name.startswith("/model.1/")]
    assert regexed and all(_weight_dq(q, n) is None for n in regexed)
    others = [n for n in _nodes(q, "Conv") if n.name != by_name and n not in regexed]
    assert others and all(_weight_dq(q, n) is not None for n in others)
    assert r.counters["excluded_user"] >= 1 + len(regexed) + len(_nodes(q, "MaxPool"))
    # "op:Gemm" matched nothing in this model: recorded, not silently dropped
    assert any(node == "exclude:op:Gemm" for node, _ in r.skipped)
    # bare op type, explicit op type, bare regex
    q2, _ = _quantize(model, exclude=("Conv",))
    assert all(_weight_dq(q2, n) is None for n in _nodes(q2, "Conv"))
    q2, _ = _quantize(model, exclude=("op:Conv",))
    assert all(_weight_dq(q2, n) is None for n in _nodes(q2, "Conv"))
    q3, _ = _quantize(model, exclude=("/model\\.0/.*",))
    zero = [n for n in _nodes(q3, "Conv") if n.name.startswith("/model.0/")]
    assert zero and all(_weight_dq(q3, n) is None for n in zero)


def test_bad_exclude_regex_is_an_options_error(harness):
    with pytest.raises(OptionsError, match="not a regex"):
        _quantize(harness.fixture("residual_add"), exclude=("re:([",))


def _zero_point_types(q: onnx.ModelProto) -> tuple[set, set, set]:
    """(activation zp dtypes, weight zp dtypes, activation zp values)."""
    inits = {t.name for t in q.graph.initializer}
    act, wt, act_values = set(), set(), set()
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3:
            continue
        zp = _init(q, n.input[2])
        if n.input[0] in inits:
            if zp.dtype != np.int32:  # int32 = a bias (scale = activation x weight scale)
                wt.add(zp.dtype)
        else:
            act.add(zp.dtype)
            act_values.update(int(v) for v in zp.ravel())
    return act, wt, act_values


@pytest.mark.parametrize(
    ("target", "act", "symmetric"),
    [("cpu-x86", np.uint8, False), ("cpu-arm", np.int8, False), ("tensorrt", np.int8, True)],
)
def test_targets_give_documented_types(harness, target, act, symmetric):
    q, r = _quantize(harness.fixture("residual_add"), target=target)
    acts, weights, values = _zero_point_types(q)
    assert acts == {np.dtype(act)}
    assert weights == {np.dtype(np.int8)}
    if symmetric:
        assert values == {0}
    assert any(f"target {target}" in n for n in r.notes)


def test_explicit_types_override_the_target(harness):
    q, _ = _quantize(harness.fixture("residual_add"), target="cpu-x86", activation_type="int8")
    acts, weights, _ = _zero_point_types(q)
    assert acts == {np.dtype(np.int8)} and weights == {np.dtype(np.int8)}


def test_random_calibration_warns_and_notes(harness, caplog):
    with caplog.at_level(logging.WARNING, logger="graphslim.passes.quantize_int8"):
        _, r = _quantize(harness.fixture("residual_add"))
    assert any("NOT meaningful" in rec.getMessage() for rec in caplog.records)
    assert any("NOT meaningful" in n for n in r.notes)


def test_context_feeds_calibrate_when_no_source_given(harness):
    model = harness.fixture("residual_add")
    feeds = random_feeds(model, count=3, seed=1)
    _, r = _quantize(model, PassContext(feeds=feeds), calibration="", calibration_size=8)
    assert r.counters["calibration_samples"] == 3
    assert not any("NOT meaningful" in n for n in r.notes)


def test_npz_and_image_folder_calibration(harness, tmp_path):
    from PIL import Image

    model = harness.fixture("tiny_yolo")
    feeds = random_feeds(model, count=2, seed=1)
    np.savez(tmp_path / "cal.npz", images=np.stack([f["images"] for f in feeds]))
    _, r = _quantize(model, calibration=str(tmp_path / "cal.npz"), calibration_size=4)
    assert r.counters["calibration_samples"] == 2
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    _, r = _quantize(model, calibration=str(folder), preprocess="yolo", calibration_size=4)
    assert r.counters["calibration_samples"] == 3


def test_missing_calibration_is_a_precondition_error(harness):
    with pytest.raises(PreconditionError, match="calibration"):
        _quantize(harness.fixture("residual_add"), calibration="")


def _dynamic_model(harness) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    return harness.model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H", "W"])],
        {"w": w},
    )


def test_dynamic_spatial_dims_need_input_shapes(harness):
    model = _dynamic_model(harness)
    with pytest.raises(PreconditionError, match="input_shapes"):
        _quantize(model)
    q, r = _quantize(model, PassContext(input_shapes={"x": (1, 3, 16, 16)}))
    assert r.modified and _nodes(q, "DequantizeLinear")


def _outlier_model(harness) -> onnx.ModelProto:
    """Two Convs, one with outputs ~1e4x the other, concatenated, then mixed by a Conv whose
    weights on the outlier channels are ~1e-4: the Concat's shared scale erases the small
    branch, which carries half of the final output."""
    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    wb = (rng.normal(size=(4, 3, 3, 3)) * 1e4).astype(np.float32)
    wc = rng.normal(size=(4, 8, 1, 1)).astype(np.float32)
    wc[:, 4:] *= 1e-4
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_small", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_outlier", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["ab"], name="concat", axis=1),
        helper.make_node("Conv", ["ab", "wc"], ["y"], name="conv_mix"),
    ]
    return harness.model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        {"wa": wa, "wb": wb, "wc": wc},
    )


def test_auto_exclude_is_never_worse_and_records_its_choices(harness):
    model = _outlier_model(harness)
    feeds = random_feeds(model, count=4, seed=2, low=-1.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    _, plain = _quantize(model, ctx, calibration="")
    _, auto = _quantize(model, ctx, calibration="", auto_exclude=True, tolerance=0.01)
    base = plain.counters["output_error"]
    assert auto.counters["output_error_no_auto"] == pytest.approx(base)
    assert auto.counters["output_error"] <= base
    assert auto.counters["output_error"] < 0.5 * base  # the outlier is found by measurement
    assert auto.counters["excluded_auto"] >= 1
    assert auto.details and {"node", "op_type", "drop_db", "kept_float"} <= set(auto.details[0])
    kept = [n for d in auto.details for n in d["kept_float"]]
    assert any("auto_exclude kept" in n and all(k in n for k in kept) for n in auto.notes)


def test_auto_exclude_within_tolerance_does_nothing(harness):
    model = harness.fixture("residual_add")
    _, r = _quantize(model, auto_exclude=True, tolerance=10.0)
    assert r.counters["excluded_auto"] == 0 and not r.details


def test_output_error_is_per_feature_column():
    # a small-magnitude column (scores) next to a large one (pixels): its error counts fully
    ref = [{"out": np.array([[[400.0, 0.9], [200.0, 0.1]]], np.float32)}]
    bad = [{"out": np.array([[[400.0, 0.0], [200.0, 0.0]]], np.float32)}]
    assert S.output_error(ref, bad) == pytest.approx(1.0)
    assert S.output_error(ref, ref) == 0.0


def test_pipeline_parse_and_record(harness):
    model = harness.fixture("flatten_gemm")
    result = Pipeline.parse("quantize-int8{calibration=random,calibration_size=2}").run(model)
    rec = result.records[0]
    assert rec.modified and rec.numerics == "lossy"
    assert "details" in rec.to_dict()
    assert result.validation is not None and result.validation.outputs


def test_byte_stable_for_same_input_and_options(harness):
    model = harness.fixture("residual_add")
    a, _ = _quantize(model)
    b, _ = _quantize(model)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert [(o.domain, o.version) for o in a.opset_import] == [("", 17)]


def test_already_quantized_qdq_model_is_a_precondition_error(harness):
    q, _ = _quantize(harness.fixture("residual_add"))
    before = q.SerializeToString()
    with pytest.raises(PreconditionError, match="already quantized.*QuantizeLinear x"):
        QuantizeInt8(calibration="random")(q, PassContext())
    assert q.SerializeToString() == before


def test_already_quantized_qoperator_model_is_a_precondition_error(harness, tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    from graphslim.passes import _quant_prepare as P

    model = harness.fixture("residual_add")
    onnx.save_model(model, tmp_path / "f.onnx")
    feeds = random_feeds(model, count=2, seed=0)
    quantize_static(
        str(tmp_path / "f.onnx"),
        str(tmp_path / "q.onnx"),
        P.feed_reader(feeds),
        quant_format=QuantFormat.QOperator,
    )
    q = onnx.load_model(tmp_path / "q.onnx")
    assert _nodes(q, "QLinearConv")
    with pytest.raises(PreconditionError, match="already quantized.*QLinearConv x"):
        QuantizeInt8(calibration="random")(q, PassContext())


# ----------------------------------------------------------------------------- bad input, CLI


def _cli(monkeypatch, capsys, tmp_path, model: onnx.ModelProto, spec: str):
    """``graphslim run IN -P SPEC -o OUT``: (exit code, stderr); asserts the input file is
    byte-identical afterwards and that no output was written on failure."""
    import hashlib
    import sys

    from graphslim import cli

    src = tmp_path / "in.onnx"
    onnx.save_model(model, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    argv = ["graphslim", "run", str(src), "-P", spec, "-o", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli.err, "width", 400)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, "input file was modified"
    if exc.value.code:
        assert not out.exists()
    return exc.value.code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_cli_already_quantized_model_exits_2_with_one_line(harness, monkeypatch, capsys, tmp_path):
    q, _ = _quantize(harness.fixture("residual_add"))
    code, err = _cli(monkeypatch, capsys, tmp_path, q, "quantize-int8{calibration=random}")
    assert code == 2
    line = _one_line(err)
    assert "already quantized" in line and "DequantizeLinear" in line and "FP32" in line


def _images(folder, count=2, size=(40, 50), mode="RGB"):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    shape = (*size, 3) if mode == "RGB" else size
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize(
    ("case", "preprocess", "expect"),
    [
        ("empty", "yolo", "has no .npy/.npz files and no images"),
        ("missing", "yolo", "does not exist"),
        ("corrupt", "yolo", "cannot read image"),
        ("images", "imagenet", "does not match"),  # 224x224 vs the model's 64x64
        ("images", "'yolo,gray'", "has 3 channels"),
        ("images", "'yolo,nhwc'", "NCHW"),
        ("images", "bogus", "unknown preprocess key"),
    ],
)
def test_cli_bad_calibration_data_exits_2_with_one_line(
    harness, monkeypatch, capsys, tmp_path, case, preprocess, expect
):
    folder = tmp_path / "cal"
    if case == "empty":
        folder.mkdir()
    elif case == "corrupt":
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"not an image")
    elif case == "images":
        _images(folder)
    spec = f"quantize-int8{{calibration={folder},preprocess={preprocess}}}"
    code, err = _cli(monkeypatch, capsys, tmp_path, harness.fixture("tiny_yolo"), spec)
    assert code == 2
    line = _one_line(err)
    assert "calibration" in line and expect in line


def test_cli_unreadable_calibration_folder_exits_2_with_one_line(
    harness, monkeypatch, capsys, tmp_path
):
    # chmod cannot make a folder unreadable for root (CI containers): the OS error is simulated
    from pathlib import Path

    folder = _images(tmp_path / "cal")
    real = Path.iterdir

    def denied(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    spec = f"quantize-int8{{calibration={folder}}}"
    code, err = _cli(monkeypatch, capsys, tmp_path, harness.fixture("tiny_yolo"), spec)
    assert code == 2
    line = _one_line(err)
    assert "cannot read calibration data" in line and str(folder) in line
    assert "Permission denied" in line


def test_bad_options_are_rejected():
    with pytest.raises(OptionsError):
        QuantizeInt8(method="kl")
    with pytest.raises(OptionsError):
        QuantizeInt8(calibration_size=0)
    with pytest.raises(OptionsError):
        QuantizeInt8(target="gpu")


# ----------------------------------------------------------------------------- x86 ISA paths


def _weights_int8(q: onnx.ModelProto) -> list[np.ndarray]:
    return [_init(q, _weight_dq(q, c).input[0]) for c in _nodes(q, "Conv") if _weight_dq(q, c)]


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "vnni"),
        ({"avx2", "avx_vnni"}, "vnni"),  # Alder Lake style AVX-VNNI
        ({"avx2", "avx512vnni"}, "vnni"),  # py-cpuinfo's spelling
        ({"avx2", "avx512f", "avx512bw"}, "avx512"),  # Skylake-SP: AVX-512 without VNNI
        ({"avx2", "fma"}, "avx2"),
        (set(), "unknown"),
    ],
)
def test_isa_from_cpu_flags(flags, isa):
    assert I.isa_of(flags) == isa
    assert I.choose("cpu-x86", flags, "test").reduce_range is (isa != "vnni")


@pytest.mark.parametrize(
    ("target", "flags", "isa", "reduced"),
    [
        ("cpu-x86", {"avx2", "avx512bw", "avx512_vnni"}, "vnni", False),
        ("cpu-x86", {"avx2", "fma"}, "avx2", True),
        ("cpu-x86", {"avx2", "avx512f", "avx512bw"}, "avx512", True),
        # an explicit deployment ISA wins over this machine's flags
        ("cpu-x86-avx2", {"avx2", "avx512bw", "avx512_vnni"}, "avx2", True),
        ("cpu-x86-vnni", {"avx2"}, "vnni", False),
    ],
)
def test_x86_settings_follow_the_isa(harness, monkeypatch, target, flags, isa, reduced):
    """Simulated machines: the weights' integer range and the record follow the ISA, and a
    reduced-range model cannot saturate VPMADDUBSW's int16 pair sums for any u8 activation."""
    monkeypatch.setattr(I, "cpu_flags", lambda: (set(flags), "test flags"))
    model = harness.fixture("residual_add")
    q, r = _quantize(model, target=target)
    acts, weights, _ = _zero_point_types(q)
    assert acts == {np.dtype(np.uint8)} and weights == {np.dtype(np.int8)}
    assert r.counters["reduce_range"] == int(reduced)
    assert any(f"x86 ISA {isa}" in n for n in r.notes), r.notes
    ws = _weights_int8(q)
    assert ws
    peak = max(int(np.abs(w.astype(np.int32)).max()) for w in ws)
    # symmetric per-channel: each channel's largest weight maps to the range's end
    assert peak == (64 if reduced else 127)
    for w in ws:
        # worst pair sum u8 x s8 along the reduction axis (input channels x kernel), as the
        # AVX2 kernel forms it: 255 * (|w_2k| + |w_2k+1|)
        flat = np.abs(w.astype(np.int32)).reshape(w.shape[0], -1)
        if flat.shape[1] % 2:
            flat = np.pad(flat, ((0, 0), (0, 1)))
        pair = 255 * (flat[:, 0::2] + flat[:, 1::2])
        if reduced:
            assert pair.max() <= 32767
    # the result still answers like the float model on its calibration data
    feeds = random_feeds(model, count=2, seed=0)
    ref, got = run_model(model, feeds), run_model(q, feeds, optimization="all")
    assert S.output_error(ref, got) < 0.2


def test_reduce_range_option_overrides_the_isa(harness, monkeypatch):
    monkeypatch.setattr(I, "cpu_flags", lambda: ({"avx2"}, "test flags"))
    _, r = _quantize(harness.fixture("residual_add"), reduce_range="off")
    assert r.counters["reduce_range"] == 0
    _, r = _quantize(harness.fixture("residual_add"), target="cpu-arm", reduce_range="on")
    assert r.counters["reduce_range"] == 1
    _, r = _quantize(harness.fixture("residual_add"), target="cpu-arm")
    assert r.counters["reduce_range"] == 0 and not any("x86 ISA" in n for n in r.notes)


def test_machine_record_names_cpu_and_isa():
    m = I.machine()
    assert {"cpu_model", "isa", "isa_flags", "cores", "loadavg"} <= set(m)
    assert m["isa"] in I.ISAS


# ----------------------------------------------------------------------------- detection heads


def _mixed_head(harness) -> onnx.ModelProto:
    """A detection-head ending: conv features -> boxes in pixels (x 640) and scores (Sigmoid),
    concatenated on the channel axis into ``[1, 4 + 2, H*W]`` like YOLOv8's output."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    wb = rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    ws = rng.normal(0, 0.3, (2, 8, 1, 1)).astype(np.float32)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    head (float[1, 3, 16, 16] x) => (float[1, 6, 256] out) {
        f = Conv <pads = [1, 1, 1, 1]> (x, w)
        r = Relu (f)
        b = Conv (r, wb)
        bs = Sigmoid (b)
        box = Mul (bs, k)
        s = Conv (r, ws)
        score = Sigmoid (s)
        cat = Concat <axis = 1> (box, score)
        out = Reshape (cat, shape)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(wb, "wb"),
            numpy_helper.from_array(ws, "ws"),
            numpy_helper.from_array(np.array(640.0, np.float32), "k"),
            numpy_helper.from_array(np.array([1, 6, 256], np.int64), "shape"),
        ]
    )
    onnx.checker.check_model(model)
    return model


def _score_error(model, q, feeds) -> float:
    ref, got = run_model(model, feeds), run_model(q, feeds, optimization="all")
    o = np.stack([r["out"][:, 4:] for r in ref])
    c = np.stack([g["out"][:, 4:] for g in got])
    return float(np.linalg.norm(c - o) / np.linalg.norm(o))


def test_mixed_range_concat_stays_float_and_keeps_the_scores(harness):
    model = _mixed_head(harness)
    feeds = random_feeds(model, count=4, seed=1, low=0.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    q, r = _quantize(model, ctx, calibration="")
    q_off, r_off = _quantize(model, ctx, calibration="", mixed_concat_float=False, float_tail=False)
    # the Concat and the Reshape after it stay float: no DQ feeds them
    dq = _dq_of(q)
    cat = _nodes(q, "Concat")[0]
    assert not any(i in dq for i in cat.input) or all(
        dq[i].input[0] != dq[cat.input[0]].input[0] for i in cat.input[1:] if i in dq
    )
    assert not any(n.input[0] == cat.output[0] for n in _nodes(q, "QuantizeLinear"))
    assert r.counters["excluded_mixed_concat"] == 2
    assert r_off.counters["excluded_mixed_concat"] == 0
    assert any("mixes ranges" in why for _, why in r.skipped)
    # numbers against onnxruntime: one shared scale (640/255 per step) wipes out the scores
    assert _score_error(model, q_off, feeds) > 0.5
    assert _score_error(model, q, feeds) < 0.05


def test_only_the_range_mixing_concat_of_a_yolo_head_stays_float(harness):
    # tiny_yolo ends like YOLOv8: Concat(xy, wh) in pixels, then Concat(boxes, sigmoid scores)
    model = harness.fixture("tiny_yolo")
    _, r = _quantize(model)
    assert r.counters["excluded_mixed_concat"] == 1
    mixed = [n for n, why in r.skipped if "mixes ranges" in why]
    assert mixed == ["/model.11/Concat_4"]  # not Concat_3 (like ranges)


def test_latency_guard_keeps_the_input_when_int8_is_not_faster(harness, monkeypatch):
    import graphslim.passes.quantize_int8 as Q

    model = harness.fixture("residual_add")
    monkeypatch.setattr(Q, "_latency", lambda *a: (2.0, 3.0))  # simulated: INT8 slower
    out, r = _quantize(model, latency_guard="on")
    assert r.modified is False
    assert out.SerializeToString() == model.SerializeToString()
    assert r.counters["latency_ratio"] == pytest.approx(1.5)
    assert any("not faster" in n and "3.00 ms" in n and "2.00 ms" in n for n in r.notes)
    monkeypatch.setattr(Q, "_latency", lambda *a: (2.0, 1.96))  # 2% faster: within noise
    out, r = _quantize(model, latency_guard="on")
    assert r.modified is False and any("by the 5% the guard asks" in n for n in r.notes)
    monkeypatch.setattr(Q, "_latency", lambda *a: (2.0, 1.0))  # simulated: INT8 faster
    out, r = _quantize(model, latency_guard="on")
    assert r.modified is True and r.counters["latency_ratio"] == pytest.approx(0.5)
    assert any(n.startswith("latency: INT8 1.00 ms") for n in r.notes)


def test_latency_guard_auto_is_off_for_random_calibration_and_tensorrt(harness, monkeypatch):
    import graphslim.passes.quantize_int8 as Q

    def boom(*a):
        raise AssertionError("timed")

    monkeypatch.setattr(Q, "_latency", boom)
    model = harness.fixture("residual_add")
    _quantize(model, latency_guard="auto")  # calibration=random
    feeds = random_feeds(model, count=2, seed=0)
    _quantize(
        model, PassContext(feeds=feeds), calibration="", target="tensorrt", latency_guard="auto"
    )
    with pytest.raises(AssertionError, match="timed"):
        _quantize(model, PassContext(feeds=feeds), calibration="", latency_guard="auto")


def test_latency_guard_times_real_sessions(harness):
    """The real timing path runs (its figures are not asserted: wall clock)."""
    model = harness.fixture("residual_add")
    _, r = _quantize(model, latency_guard="on", latency_runs=2)
    assert r.counters["latency_fp32_ms"] > 0 and r.counters["latency_int8_ms"] > 0


def test_suffix_search_finds_damage_at_the_outputs_without_names(harness):
    """With the Concat and tail rules off, the search from the outputs backwards finds the
    Concat."""
    model = _mixed_head(harness)
    feeds = random_feeds(model, count=4, seed=1, low=0.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    q, r = _search_alone(model, ctx, tolerance=0.05)
    first = r.details[0]
    assert first["strategy"] == "suffix" and first["trials"]
    cat = _nodes(model, "Concat")[0]
    kept = [n for d in r.details for n in d["kept_float"]]
    assert any(n.startswith("Concat") or n == cat.name for n in kept), kept
    assert r.counters["output_error"] < r.counters["output_error_no_auto"]
    assert _score_error(model, q, feeds) < 0.1


# ----------------------------------------------------------------------------- target=openvino


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_openvino_target_quantizes_inputs_not_outputs(harness):
    """NNCF's rule: Q/DQ on the inputs of Conv/Add/Concat/..., none on a Conv's output, none
    around the SiLU's Sigmoid/Mul, no Q/DQ pair after the Split; numbers close to FP32."""
    from graphslim.passes._quant_openvino import VALUE_MOVING
    from graphslim.passes.quantize_int8 import OPENVINO_OPS

    model = harness.fixture("c2f")
    feeds = random_feeds(model, count=4, seed=1)
    q, r = _quantize(model, PassContext(feeds=feeds), calibration="", target="openvino")
    prod = _producers(q)
    dq = _dq_of(q)
    weights = {t.name for t in q.graph.initializer}
    for d in _nodes(q, "DequantizeLinear"):
        if d.input[0] in weights:
            continue
        users = [n for n in q.graph.node if d.output[0] in n.input]
        # an activation is dequantized only into an op OpenVINO runs in INT8 (or one that
        # moves its values there)
        assert all(u.op_type in set(OPENVINO_OPS) | VALUE_MOVING for u in users), d.name
    for conv in _nodes(q, "Conv"):
        src = prod[conv.input[0]]  # the DQ, or the Split / unified Concat that carry u8
        while src.op_type in VALUE_MOVING | {"Concat"}:
            src = prod[src.input[0]]
        assert src.op_type == "DequantizeLinear" and conv.input[1] in dq, conv.name
    for op in ("Sigmoid",):
        for n in _nodes(q, op):
            assert n.input[0] not in dq, n.name
    split = _nodes(q, "Split")[0]
    assert split.input[0] in dq
    consumers = [n for n in q.graph.node if set(n.input) & set(split.output)]
    assert consumers and not any(n.op_type == "QuantizeLinear" for n in consumers)
    # the Concat's inputs share one grid (unified) and its output's identity pair is gone
    cat = _nodes(q, "Concat")[0]
    grids = {
        (_init(q, dq[i].input[1]).tobytes(), _init(q, dq[i].input[2]).tobytes())
        if i in dq
        else ("split", prod[i].op_type)
        for i in cat.input
    }
    assert len([g for g in grids if g[0] != "split"]) <= 1, grids
    assert "target openvino" in " ".join(r.notes)
    ref, got = run_model(model, feeds), run_model(q, feeds)
    for a, b in zip(ref, got):
        for k in a:
            cos = np.dot(a[k].ravel(), b[k].ravel()) / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))
            assert cos > 0.99, (k, cos)


def _qdq_chain(op: str, attrs: dict, out_scale: float) -> onnx.ModelProto:
    """x -> Q/DQ(s=0.1) -> OP -> Q/DQ(out_scale) -> Conv: the pair after OP is an identity
    when out_scale equals the input's."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 2, 2] y) {{
        qx = QuantizeLinear (x, s, z)
        dx = DequantizeLinear (qx, s, z)
        m = {op} <{", ".join(f"{k} = {v}" for k, v in attrs.items())}> (dx)
        qm = QuantizeLinear (m, s2, z2)
        dm = DequantizeLinear (qm, s2, z2)
        y = Conv (dm, w)
    }}
    """
    model = onnx.parser.parse_model(text)
    w = np.random.default_rng(0).normal(size=(2, 2, 1, 1)).astype(np.float32)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(7, np.uint8), "z"),
            numpy_helper.from_array(np.array(out_scale, np.float32), "s2"),
            numpy_helper.from_array(np.array(7, np.uint8), "z2"),
            numpy_helper.from_array(w, "w"),
        ]
    )
    onnx.checker.check_model(model)
    return model


def test_identity_requantization_is_dropped_exactly():
    from graphslim.passes import _quant_openvino as V

    op, attrs = "MaxPool", {"kernel_shape": "[2, 2]", "strides": "[2, 2]"}
    model = _qdq_chain(op, attrs, 0.1)
    feeds = [
        {"x": np.random.default_rng(i).normal(size=(1, 2, 4, 4)).astype(np.float32)}
        for i in range(3)
    ]
    before = run_model(model, feeds, optimization="disable")
    work = copy.deepcopy(model)
    assert V.drop_requantize(work) == 1
    assert len(_nodes(work, "QuantizeLinear")) == 1 and len(_nodes(work, "DequantizeLinear")) == 1
    onnx.checker.check_model(work)
    after = run_model(work, feeds, optimization="disable")
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a["y"], b["y"])  # exact: the pair was an identity
    # another scale is a real requantization: kept
    other = _qdq_chain(op, attrs, 0.2)
    assert V.drop_requantize(other) == 0


def _concat_chain(out_scale: float) -> onnx.ModelProto:
    """a, b -> Q/DQ (scales 0.1, 0.2) -> Concat -> Q/DQ(out_scale) -> Relu."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 4] a, float[1, 2, 4] b) => (float[1, 4, 4] y) {
        qa = QuantizeLinear (a, sa, za)
        da = DequantizeLinear (qa, sa, za)
        qb = QuantizeLinear (b, sb, zb)
        db = DequantizeLinear (qb, sb, zb)
        c = Concat <axis = 1> (da, db)
        qc = QuantizeLinear (c, sc, zc)
        dc = DequantizeLinear (qc, sc, zc)
        y = Relu (dc)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.array(v, t), n)
        for n, v, t in [
            ("sa", 0.1, np.float32),
            ("za", 0, np.uint8),
            ("sb", 0.2, np.float32),
            ("zb", 0, np.uint8),
            ("sc", out_scale, np.float32),
            ("zc", 0, np.uint8),
        ]
    )
    onnx.checker.check_model(model)
    return model


def test_concat_inputs_take_the_output_grid_only_when_it_covers_them():
    from graphslim.passes import _quant_openvino as V

    model = _concat_chain(0.2)  # output range 0..51 covers a (0..25.5) and b (0..51)
    feeds = [
        {
            "a": np.linspace(0, 25, 8, dtype=np.float32).reshape(1, 2, 4),
            "b": np.linspace(0, 50, 8, dtype=np.float32).reshape(1, 2, 4),
        }
    ]
    before = run_model(model, feeds, optimization="disable")[0]["y"]
    assert V.unify_concat_scales(model) == 1
    assert _init(model, "sa") == pytest.approx(0.2) and _init(model, "sb") == pytest.approx(0.2)
    assert V.drop_requantize(model) == 1  # the output pair is now an identity
    after = run_model(model, feeds, optimization="disable")[0]["y"]
    # a is rounded once onto the output grid instead of twice (0.1, then 0.2): within one
    # output step of before, and within half a step of the float input
    assert np.abs(after - before).max() <= 0.2 + 1e-5
    exact = np.concatenate([feeds[0]["a"], feeds[0]["b"]], axis=1)
    assert np.abs(after - exact).max() <= 0.1 + 1e-5
    narrow = _concat_chain(0.1)  # output range 0..25.5 would clip b: nothing moves
    assert V.unify_concat_scales(narrow) == 0
    assert _init(narrow, "sb") == pytest.approx(0.2)


# ----------------------------------------------------------------------------- task-driven search


def test_task_detect_search_minimises_the_detection_error(harness):
    """task=detect: the search scores candidates by 1 - mAP50-95 against FP32 (plus output error
    / 100); with the Concat rule off, the erased scores give map50 ~0 and the search brings
    the detections back, measured here again with graphslim.tasks on the same feeds."""
    from graphslim.tasks import Task

    model = _mixed_head(harness)
    feeds = random_feeds(model, count=4, seed=1, low=0.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    q, r = _search_alone(model, ctx, task="detect")
    before, after = r.counters["output_error_no_auto"], r.counters["output_error"]
    assert before > 0.5  # 1 - mAP50-95 with the scores rounded to 0
    assert after < 0.1 and r.counters["excluded_auto"] >= 1
    assert any("detect task error" in n for n in r.notes)
    map50 = Task("detect").evaluate(run_model(model, feeds), run_model(q, feeds), feeds)
    assert map50.metrics["map50"] > 0.9


def testtask_score_is_one_minus_the_metric_plus_a_tie_break():
    import graphslim.passes.quantize_int8 as Q

    ref = [{"p": np.array([[0.1, 0.9]], np.float32)}, {"p": np.array([[0.8, 0.2]], np.float32)}]
    one_wrong = [
        {"p": np.array([[0.1, 0.9]], np.float32)},
        {"p": np.array([[0.2, 0.8]], np.float32)},
    ]
    score = Q.task_score("classify", None)
    assert score(ref, ref) == 0.0
    expected = 0.5 + Q.OUTPUT_WEIGHT * S.output_error(ref, one_wrong)
    assert score(ref, one_wrong) == pytest.approx(expected)


# ----------------------------------------------------------------------------- mode=dynamic


def _matmul_model(harness) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (16, 32)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (32, 4)).astype(np.float32)
    return harness.model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4])],
        {"w1": w1, "w2": w2},
    )


def test_dynamic_mode_quantizes_matmuls_without_calibration(harness):
    from graphslim.passes import _quant_dynamic as D

    model = _matmul_model(harness)
    q, r = _quantize(model, calibration="", mode="dynamic")  # no feeds at all
    assert r.modified and r.counters["nodes_quantized"] == 2 == D.integer_nodes(q)
    assert not _nodes(q, "MatMul") and not _nodes(q, "QuantizeLinear")
    assert any("random inputs" in n for n in r.notes)
    onnx.checker.check_model(q)
    feeds = random_feeds(model, count=3, seed=5)
    ref, got = run_model(model, feeds), run_model(q, feeds)
    err = S.output_error(ref, got)
    assert 0 < err < 0.05, err  # INT8 rounding, not a broken graph
    assert r.counters["output_error"] < 0.05


def test_dynamic_mode_excludes_and_declines_conv_models(harness):
    model = _matmul_model(harness)
    q, r = _quantize(model, mode="dynamic", exclude=("fc2",))
    assert r.counters["nodes_quantized"] == 1 and [n.name for n in _nodes(q, "MatMul")] == ["fc2"]
    conv = harness.fixture("residual_add")
    out, r = _quantize(conv, mode="dynamic")
    assert r.modified is False and "quantized no node" in r.notes[-1]
    assert out.SerializeToString() == conv.SerializeToString()


# ----------------------------------------------------------------------------- bias correction


def _biased_model(harness) -> onnx.ModelProto:
    """Conv -> Relu -> Conv(+bias) -> output; inputs mostly small, so the u8 grid of the
    Relu output (asymmetric range up to an outlier) rounds with a systematic offset."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    return harness.model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        {"w1": w1, "w2": w2, "b2": b2},
    )


def test_bias_correction_removes_the_mean_error_of_output_convs(harness):
    from graphslim.passes import _quant_bias as B

    model = _biased_model(harness)
    feeds = random_feeds(model, count=6, seed=4, low=0.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    plain, _ = _quantize(model, ctx, calibration="", target="openvino", bias_correction="off")
    assert [c.name for c in B.output_convs(plain)] == ["c2"]
    fixed = copy.deepcopy(plain)
    assert B.correct(fixed, model, feeds) == 1

    def mean_offset(q) -> float:
        ref, got = run_model(model, feeds), run_model(q, feeds, optimization="basic")
        diff = np.mean([r["y"] - g["y"] for r, g in zip(ref, got)], axis=(0, 1, 3, 4))
        return float(np.abs(diff).max())

    before, after = mean_offset(plain), mean_offset(fixed)
    assert after < before  # the per-channel offset is what the correction removes
    step = max(_init(fixed, n.input[1]).max() for n in _nodes(fixed, "DequantizeLinear")
               if n.input[0].startswith("b2"))  # fmt: skip
    assert after <= step  # within one bias quantization step
    # in the pass: applied only when the error on the calibration feeds drops, and said so
    _, r = _quantize(model, ctx, calibration="", target="openvino")
    assert any(n.startswith("bias correction of 1 output conv") for n in r.notes)


# ----------------------------------------------------------------------------- output tail


def test_output_tail_stays_float_and_keeps_box_precision(harness):
    """The nodes after the last Conv on every output path (tiny_yolo: YOLOv8's box decoding
    and score Sigmoid) are not quantized: a DQ they read carries a quantized output of a node
    outside the tail (the boundary), and the box columns come out closer to FP32 (onnxruntime, same
    feeds) than with the tail quantized."""
    from graphslim.passes import _quant_ranges as R

    model = harness.fixture("tiny_yolo")
    feeds = random_feeds(model, count=4, seed=1, low=0.0, high=1.0)
    ctx = PassContext(feeds=feeds)
    q, r = _quantize(model, ctx, calibration="")
    q_off, r_off = _quantize(model, ctx, calibration="", float_tail=False)
    tail = {n.name for n in R.output_tail(model)}
    ops = {n.op_type for n in model.graph.node if n.name in tail}
    assert tail and not ops & R.COMPUTE_OPS and "Sigmoid" in ops
    dq = _dq_of(q)
    made_by = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        for i in n.input:
            if n.name in tail and i in dq:  # DQ <- Q <- its producer, outside the tail
                source = made_by[made_by[dq[i].input[0]].input[0]]
                assert source.name not in tail, (n.name, source.name)
    assert r.counters["excluded_tail"] > 0 and r_off.counters["excluded_tail"] == 0
    assert any("output tail" in n for n in r.notes)
    assert any("last Conv/MatMul/Gemm" in why for _, why in r.skipped)

    def box_error(candidate) -> float:
        ref, got = run_model(model, feeds), run_model(candidate, feeds, optimization="all")
        name = model.graph.output[0].name
        o = np.stack([x[name][:, :4] for x in ref])
        c = np.stack([x[name][:, :4] for x in got])
        return float(np.linalg.norm(c - o) / np.linalg.norm(o))

    assert box_error(q) < box_error(q_off)


def test_output_tail_never_holds_compute_ops_or_their_inputs():
    """A classifier ending in Gemm -> Softmax: only the Softmax is tail; a Conv whose output
    is both a graph output and read by a later Conv keeps everything before it quantizable."""
    from graphslim.passes import _quant_ranges as R

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 8, 8] x) => (float[1, 4] y, float[1, 4, 8, 8] f) {
        f = Conv (x, w)
        r = Relu (f)
        g2 = Conv (r, w2)
        p = GlobalAveragePool (g2)
        v = Flatten (p)
        l = Gemm (v, wg)
        y = Softmax (l)
    }
    """
    model = onnx.parser.parse_model(text)
    for i, n in enumerate(model.graph.node):
        n.name = f"{n.op_type}_{i}"
    assert [n.name for n in R.output_tail(model)] == ["Softmax_6"]


# ----------------------------------------------------------------------------- entropy ranges


def _heavy_tailed_convs() -> tuple[onnx.ModelProto, PassContext]:
    """Two 3x3 Convs fed heavy-tailed (Student t, 2 dof) inputs: a few values far out, where
    the calibration methods' ranges differ."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 16, 16] x) => (float[1, 8, 16, 16] y) {
        h = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = Conv <pads = [1, 1, 1, 1]> (h, w2)
    }
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
        ]
    )
    feeds = [{"x": rng.standard_t(2, (1, 8, 16, 16)).astype(np.float32)} for _ in range(8)]
    return model, PassContext(feeds=feeds)


def test_entropy_calibration_is_not_minmax_in_disguise():
    """quantize_static's own entropy calibrator (128 bins for 128 quantized bins) has one
    candidate threshold, the full range; the pass computes the ranges itself. On a heavy-tailed
    activation the entropy range is narrower than min/max's."""
    model, ctx = _heavy_tailed_convs()

    def input_scale(q) -> float:
        first = _nodes(q, "QuantizeLinear")
        x_q = next(n for n in first if n.input[0] == "x")
        return float(_init(q, x_q.input[1]))

    q_mm, _ = _quantize(model, ctx, calibration="", method="minmax")
    q_en, r = _quantize(model, ctx, calibration="", method="entropy")
    assert input_scale(q_en) < 0.8 * input_scale(q_mm)
    assert any("entropy calibration" in n for n in r.notes)


def test_method_auto_keeps_minmax_unless_another_method_is_clearly_better():
    """method=auto calibrates each method on half the feeds, judges it on the other half,
    keeps minmax unless another is min_gain lower there, and calibrates the choice on all
    the feeds: the result is that method's own model on all the feeds, error for error."""
    model, ctx = _heavy_tailed_convs()
    q, r = _quantize(model, ctx, calibration="", calibration_size=8, method="auto")
    row = next(d for d in r.details if d.get("strategy") == "method")
    errors = row["errors"]
    assert set(errors) == {"minmax", "percentile", "entropy"} and row["held_out"] == 4
    best_other = min(("percentile", "entropy"), key=errors.get)
    expected = best_other if errors[best_other] < errors["minmax"] * 0.95 else "minmax"
    assert row["chosen"] == expected
    assert any(n.startswith("method=auto: output error, calibrated on 4") for n in r.notes)
    assert any(f"{row['chosen']} calibration on 8 sample(s)" in n for n in r.notes)
    _, alone = _quantize(model, ctx, calibration="", calibration_size=8, method=row["chosen"])
    assert r.counters["output_error"] == pytest.approx(alone.counters["output_error"])
    # with min_gain near 1 nothing can replace minmax
    _, r2 = _quantize(model, ctx, calibration="", calibration_size=8, method="auto", min_gain=0.99)
    assert next(d for d in r2.details if d.get("strategy") == "method")["chosen"] == "minmax"


def test_method_auto_judges_by_the_task_the_outputs_show():
    """Without task=..., method=auto judges the methods by the task error when the output
    layout names the task (here class scores [1, 4]: top-1 agreement), not by the output
    error, which can prefer ranges that clip the values the task turns on."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 16, 16] x) => (float[1, 4] y) {
        h = Conv <pads = [1, 1, 1, 1]> (x, w)
        p = GlobalAveragePool (h)
        y = Flatten (p)
    }
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "w"))
    feeds = [{"x": rng.standard_t(2, (1, 8, 16, 16)).astype(np.float32)} for _ in range(8)]
    _, r = _quantize(model, PassContext(feeds=feeds), calibration="", method="auto")
    row = next(d for d in r.details if d.get("strategy") == "method")
    assert row["judged_by"] == "1 - top1 (classify task, from the output layout)"
    assert all(0 <= e <= 1 for e in row["errors"].values())  # the task term alone
    assert any(n.startswith("method=auto: 1 - top1 (classify") for n in r.notes)
    # the heavy-tailed convs' [1, 8, 16, 16] output names no task: the output error judges
    model2, ctx2 = _heavy_tailed_convs()
    _, r2 = _quantize(model2, ctx2, calibration="", method="auto")
    row2 = next(d for d in r2.details if d.get("strategy") == "method")
    assert row2["judged_by"] == "output error"


# ----------------------------------------------------------------------------- placement


def _dw_hardswish_block() -> tuple[onnx.ModelProto, PassContext]:
    """Conv 3x3 "c1", then three depthwise Conv 3x3 "dw{i}" -> HardSwish as HardSigmoid * x,
    then Conv 1x1 "c2": groups of three (placement's smallest)."""
    body = ["a0 = Conv <pads = [1, 1, 1, 1]> (x, w1)"]
    for i in range(3):
        body += [
            f"d{i} = Conv <pads = [1, 1, 1, 1], group = 8> (a{i}, wd{i})",
            f"s{i} = HardSigmoid (d{i})",
            f"a{i + 1} = Mul (d{i}, s{i})",
        ]
    body.append("y = Conv (a3, w2)")
    text = (
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1, 8, 16, 16] x) => (float[1, 8, 16, 16] y) {\n" + "\n".join(body) + "\n}"
    )
    model = onnx.parser.parse_model(text)
    for n in model.graph.node:
        n.name = {"Conv": "c", "HardSigmoid": "hs", "Mul": "mul"}[n.op_type] + n.output[0]
    model.graph.node[0].name, model.graph.node[-1].name = "c1", "c2"
    rng = np.random.default_rng(0)
    shapes = [("w1", (8, 8, 3, 3)), ("w2", (8, 8, 1, 1))] + [
        (f"wd{i}", (8, 1, 3, 3)) for i in range(3)
    ]
    model.graph.initializer.extend(
        numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), name)
        for name, s in shapes
    )
    feeds = [{"x": rng.normal(0, 1, (1, 8, 16, 16)).astype(np.float32)} for _ in range(4)]
    return model, PassContext(feeds=feeds)


def _int8_weight(model: onnx.ModelProto, node: str) -> bool:
    """Whether ``node`` reads its weight through a DequantizeLinear (runs as an INT8 conv)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return next(n for n in model.graph.node if n.name == node).input[1] in dq


DEPTHWISE_NODES = ("cd0", "cd1", "cd2")


def _fake_bench(faster_when_float: str):
    """A stand-in for graphslim.bench.bench: the candidate is 10% faster exactly when conv
    ``faster_when_float`` is float in it and INT8 in the current model, else 2% slower."""
    # (one conv of a group stands for the group: placement keeps groups whole)
    from types import SimpleNamespace

    calls = []

    def bench(models, feed, runs, runtime):
        (_, current), (_, candidate) = models
        calls.append(runtime)
        gain = _int8_weight(current, faster_when_float) and not _int8_weight(
            candidate, faster_when_float
        )
        return [SimpleNamespace(median_ms=10.0), SimpleNamespace(median_ms=9.0 if gain else 10.2)]

    return bench, calls


def test_placement_keeps_float_only_the_groups_that_are_faster_float(monkeypatch):
    import graphslim.bench as gb
    from graphslim.passes import _quant_placement as L

    model, ctx = _dw_hardswish_block()
    fake, calls = _fake_bench("cd1")
    monkeypatch.setattr(gb, "bench", fake)
    q, r = _quantize(model, ctx, calibration="", calibration_size=4, placement="latency")
    row = next(d for d in r.details if d.get("strategy") == "placement")
    groups = {t["group"]: t for t in row["trials"]}
    assert L.DEPTHWISE in groups and "Mul" in groups  # never the plain convs c1, c2
    assert not {"Conv", "ConvTranspose", "MatMul", "Gemm"} & set(groups)
    assert row["kept_float"] == [L.DEPTHWISE] and groups[L.DEPTHWISE]["ratio"] == 0.9
    assert groups[L.DEPTHWISE]["ratio_confirm"] == 0.9  # timed twice before it is kept
    assert groups["Mul"]["ratio_confirm"] is None  # slower: no second timing
    assert r.counters["excluded_placement"] == 3 and groups[L.DEPTHWISE]["nodes"] == 3
    assert not any(_int8_weight(q, d) for d in DEPTHWISE_NODES)
    assert _int8_weight(q, "c1") and _int8_weight(q, "c2")
    assert calls and set(calls) == {"ort"}
    assert any(n.startswith("placement (onnxruntime") and "kept float: Conv (depthwise)" in n
               for n in r.notes)  # fmt: skip
    # the recorded error is what onnxruntime gives for the result, within the rule's bound
    error = S.output_error(_outs(model, ctx), _outs(q, ctx))
    assert error == pytest.approx(r.counters["output_error"], rel=1e-6)
    assert error <= r.counters["output_error_no_auto"] * 1.05 + 1e-9


def test_placement_is_off_without_the_latency_guard(monkeypatch):
    import graphslim.bench as gb

    def boom(*a, **k):
        raise AssertionError("timed")

    monkeypatch.setattr(gb, "bench", boom)
    model, ctx = _dw_hardswish_block()
    _, r = _quantize(model, ctx, calibration="")  # latency_guard=off (the helper's default)
    assert r.counters["excluded_placement"] == 0
    assert not any(d.get("strategy") == "placement" for d in r.details)


def _outs(model, ctx) -> list[dict]:
    return run_model(model, list(ctx.feeds), optimization="all")


def test_placement_keeps_nothing_a_second_timing_does_not_confirm(monkeypatch):
    """A group that times faster once and not the second time (noise) stays INT8."""
    from types import SimpleNamespace

    import graphslim.bench as gb

    seen = []

    def flaky(models, feed, runs, runtime):
        seen.append(1)
        fast = len(seen) % 2 == 1  # every first timing of a group says 10% faster
        return [SimpleNamespace(median_ms=10.0), SimpleNamespace(median_ms=9.0 if fast else 10.1)]

    monkeypatch.setattr(gb, "bench", flaky)
    model, ctx = _dw_hardswish_block()
    _, r = _quantize(model, ctx, calibration="", calibration_size=4, placement="latency")
    row = next(d for d in r.details if d.get("strategy") == "placement")
    assert row["kept_float"] == [] and r.counters["excluded_placement"] == 0
    assert all(t["ratio"] == 0.9 and t["ratio_confirm"] == 1.01 for t in row["trials"])


def test_method_auto_goes_on_without_entropy_when_it_cannot_run(monkeypatch):
    import graphslim.passes.quantize_int8 as Q

    def no_cache(self, symmetric):
        raise PreconditionError("method=entropy needs onnxruntime's calibration cache")

    monkeypatch.setattr(Q._Quantizer, "_entropy_ranges", no_cache)
    model, ctx = _heavy_tailed_convs()
    _, r = _quantize(model, ctx, calibration="", calibration_size=8, method="auto")
    row = next(d for d in r.details if d.get("strategy") == "method")
    assert row["errors"]["entropy"] == float("inf") and row["chosen"] != "entropy"
    assert r.modified
