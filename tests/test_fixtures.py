"""The committed ONNX fixtures are valid, run in onnxruntime, rebuild byte-identically and
stay small; each one still has the hazard its docstring line in fixtures/build.py claims."""

from __future__ import annotations

import importlib.util
from math import prod
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BATCH = 2  # value given to symbolic dims ("N"), so dynamic batch is really exercised


def _load_build():
    spec = importlib.util.spec_from_file_location("graphslim_fixtures_build", FIXTURES / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
NAMES = sorted(build.BUILDERS)


def _load(name: str) -> onnx.ModelProto:
    return onnx.load_model(FIXTURES / f"{name}.onnx")


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else BATCH for d in dims]


def test_committed_fixtures_match_builders():
    assert sorted(p.stem for p in FIXTURES.glob("*.onnx")) == NAMES
    assert len(NAMES) == 18


@pytest.mark.parametrize("name", NAMES)
def test_fixture_passes_full_check(name):
    model = _load(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "graphslim-fixtures"
    assert {p.key: p.value for p in model.metadata_props} == {"fixture": name}
    assert [i.name for i in model.graph.input] == ["images"]
    assert _dims(model.graph.input[0])[1] == 3


@pytest.mark.parametrize("name", NAMES)
def test_fixture_runs_in_onnxruntime(name):
    model = _load(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # identity_dead's unused initializer is on purpose
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    shape = _dims(model.graph.input[0])
    feeds = [np.random.default_rng(seed).random(shape, dtype=np.float32) for seed in (0, 1)]
    results, others = (session.run(None, {"images": images}) for images in feeds)
    assert len(results) == len(model.graph.output)
    for declared, result, other in zip(model.graph.output, results, others, strict=True):
        assert list(result.shape) == _dims(declared), declared.name
        assert np.isfinite(result).all(), declared.name
        # Neither exploded nor faded into constants: the output still depends on the image.
        assert np.abs(result).max() < 1e4, declared.name
        assert result.std() > 1e-3, declared.name
        change = np.abs(result - other).mean() / np.abs(result).mean()
        assert change > 1e-2, declared.name


def test_rebuild_is_byte_identical(tmp_path):
    paths = build.build_all(tmp_path)
    assert sorted(p.stem for p in paths) == NAMES
    for path in paths:
        committed = FIXTURES / path.name
        assert path.read_bytes() == committed.read_bytes(), (
            f"{path.name} differs from the committed file; run `python fixtures/build.py`"
        )


def test_fixtures_are_small():
    sizes = {p.stem: p.stat().st_size for p in FIXTURES.glob("*.onnx")}
    assert sum(sizes.values()) < 2 * 1024 * 1024
    assert sizes["tiny_yolo"] < 500 * 1024


def _macs_from_shapes(model: onnx.ModelProto) -> int:
    """Independent cross-check of the hand counts, from inferred shapes."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":  # N*Cout*Hout*Wout * Cin/g*kh*kw
            total += prod(shapes[node.output[0]]) * prod(shapes[node.input[1]][1:])
        elif node.op_type == "ConvTranspose":  # N*Cin*Hin*Win * Cout/g*kh*kw
            total += prod(shapes[node.input[0]]) * prod(shapes[node.input[1]][1:])
        elif node.op_type in ("Gemm", "MatMul"):  # M*K * N (transA is never set here)
            total += prod(shapes[node.input[0]]) * shapes[node.output[0]][-1]
    return total


@pytest.mark.parametrize("name", sorted(build.HAND_COUNTED_MACS))
def test_hand_counted_macs_agree_with_shapes(name):
    assert build.HAND_COUNTED_MACS[name] == _macs_from_shapes(_load(name))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_required_hand_counts_present():
    required = {"residual_add", "depthwise_grouped", "flatten_gemm", "unfused_bn", "se_block"}
    assert required <= set(build.HAND_COUNTED_MACS)


def test_hazards_are_present():
    m = {name: _load(name) for name in NAMES}

    convs = [n for n in m["depthwise_grouped"].graph.node if n.op_type == "Conv"]
    assert [_attr(n, "group") for n in convs] == [1, 16, 2, 1]

    convs = [n for n in m["shared_initializer"].graph.node if n.op_type == "Conv"]
    assert convs[1].input[1] == convs[2].input[1] == "shared.conv.weight"

    assert not m["constant_weights"].graph.initializer
    assert _ops(m["constant_weights"]).count("Constant") >= 10

    dead = m["identity_dead"]
    assert dead.graph.output[0].name in {
        n.output[0] for n in dead.graph.node if n.op_type == "Identity"
    }
    read = {t for n in dead.graph.node for t in n.input}
    assert "unused.weight" not in read
    assert any(o not in read for n in dead.graph.node if n.op_type == "Relu" for o in n.output)

    dim = m["dynamic_batch"].graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "N"

    two = m["two_outputs"]
    assert two.graph.output[0].name in {t for n in two.graph.node for t in n.input}

    resizes = [n for n in m["fpn"].graph.node if n.op_type == "Resize"]
    assert [len(n.input) for n in resizes] == [3, 4]  # by scales, then by sizes

    assert _ops(m["unfused_bn"]).count("BatchNormalization") == 4
    assert "ConvTranspose" in _ops(m["unfused_bn"])

    gemms = [n for n in m["flatten_gemm"].graph.node if n.op_type == "Gemm"]
    assert [_attr(g, "transB") for g in gemms] == [1, 0]

    # tiny_yolo: every Conv except the Detect output 1x1s and the DFL feeds a BatchNormalization,
    # and every BN feeds a Sigmoid*Mul pair.
    tiny = m["tiny_yolo"].graph
    consumers: dict[str, list[str]] = {}
    for n in tiny.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n.op_type)
    convs = [n for n in tiny.node if n.op_type == "Conv"]
    plain = [n.name for n in convs if consumers[n.output[0]] != ["BatchNormalization"]]
    assert len(plain) == 5, plain  # 2 scales x (box, cls) heads + DFL
    for n in tiny.node:
        if n.op_type == "BatchNormalization":
            assert sorted(consumers[n.output[0]]) == ["Mul", "Sigmoid"]
    assert {"Split", "Resize", "MaxPool", "Softmax", "Transpose"} <= set(_ops(m["tiny_yolo"]))
