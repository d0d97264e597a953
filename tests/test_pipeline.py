"""Tests for graphslim.pipeline: the inline and TOML forms, ordering constraints, and what
running a pipeline records, checks and refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import Pass, PassResult
from graphslim.errors import (
    OptionsError,
    PassFailedError,
    PipelineError,
    PreconditionError,
)
from graphslim.pipeline import PassSpec, Pipeline, parse_inline, parse_toml
from graphslim.registry import Registry
from graphslim.validate import Tolerance

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# ----------------------------------------------------------------------------- model

CIN, COUT, HW = 3, 4, 8
CONV_MACS = 1 * COUT * HW * HW * CIN * 3 * 3  # N*Cout*H*W * Cin*kh*kw


def bn_model() -> onnx.ModelProto:
    """x -> Conv(no bias) -> BN1 -> Relu -> BN2 -> Identity -> y.

    fold-bn folds BN1 into the Conv and declines BN2 (it follows a Relu); cleanup removes the
    Identity."""
    rng = np.random.default_rng(0)

    def t(name, shape, low=-1.0, high=1.0):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    inits = [t("w", (COUT, CIN, 3, 3))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv/Conv", pads=[1] * 4)]
    for k, (src, dst) in enumerate([("c", "b1"), ("r", "b2")], 1):
        inits += [
            t(f"bn{k}.gamma", (COUT,), 0.5, 1.5),
            t(f"bn{k}.beta", (COUT,)),
            t(f"bn{k}.mean", (COUT,)),
            t(f"bn{k}.var", (COUT,), 0.5, 2.0),
        ]
        ins = [src] + [f"bn{k}.{p}" for p in ("gamma", "beta", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", ins, [dst], name=f"/bn{k}/BN"))
        if k == 1:
            nodes.append(helper.make_node("Relu", ["b1"], ["r"], name="/act/Relu"))
    nodes.append(helper.make_node("Identity", ["b2"], ["y"], name="/out/Identity"))
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CIN, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, COUT, HW, HW])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


PARAMS_BEFORE = COUT * CIN * 9 + 2 * 4 * COUT  # weight + two BNs
PARAMS_AFTER_FOLD = COUT * CIN * 9 + COUT + 4 * COUT  # weight + new bias + BN2


# ----------------------------------------------------------------------------- test passes


class ScaleWeight(Pass):
    """Lossy on purpose: multiplies the Conv weight by 1.01."""

    name = "scale-weight"
    summary = "scale w"
    numerics = "lossy"

    def call(self, model, ctx):
        w = next(t for t in model.graph.initializer if t.name == "w")
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.01), "w"))
        return PassResult(model, True, {"scaled": 1})


class Boom(Pass):
    name = "boom"
    summary = "raises"
    numerics = "exact"

    def call(self, model, ctx):
        raise RuntimeError("kaboom")


class Refuse(Pass):
    name = "refuse"
    summary = "cannot take the model"
    numerics = "exact"

    def call(self, model, ctx):
        raise PreconditionError("the model has no Gemm; nothing to do")


class BreakChecker(Pass):
    """Gives the Relu an attribute Relu does not have (wired, but the checker rejects it)."""

    name = "break-checker"
    summary = "invalid model"
    numerics = "exact"

    def call(self, model, ctx):
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.attribute.append(onnx.helper.make_attribute("not_a_relu_attribute", 1))
        return PassResult(model, True)


class Dangle(Pass):
    """Makes the Relu read a tensor nothing writes."""

    name = "dangle"
    summary = "invalid model"
    numerics = "exact"

    def call(self, model, ctx):
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.input[0] = "nowhere"
        return PassResult(model, True)


class MakeCycle(Pass):
    """Makes the Conv read the Relu's output: a cycle."""

    name = "make-cycle"
    summary = "cycle"
    numerics = "exact"

    def call(self, model, ctx):
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        conv.input[0] = "r"
        return PassResult(model, True)


class Liar(Pass):
    name = "liar"
    summary = "changes the model, says it did not"
    numerics = "exact"

    def call(self, model, ctx):
        model.graph.node[0].name = "renamed"
        return PassResult(model, False)


def custom_registry() -> Registry:
    reg = Registry()
    for cls in (ScaleWeight, Boom, Refuse):
        reg.add(cls)
    return reg


# ----------------------------------------------------------------------------- inline form


def test_parse_inline_names_and_options():
    specs = parse_inline(" simplify , fold-bn{ratio=0.3,flag=true,name=abc} ,cleanup")
    assert specs == [
        PassSpec("simplify"),
        PassSpec("fold-bn", {"ratio": 0.3, "flag": True, "name": "abc"}),
        PassSpec("cleanup"),
    ]


def test_parse_inline_shape_values_keep_their_commas():
    specs = parse_inline("fix-input-shapes{shapes=images:1,3,640,640},simplify")
    assert specs == [
        PassSpec("fix-input-shapes", {"shapes": "images:1,3,640,640"}),
        PassSpec("simplify"),
    ]
    two = parse_inline("fix-input-shapes{shapes=a:1,3;b:1,2,other=5}")
    assert two[0].options == {"shapes": "a:1,3;b:1,2", "other": 5}


def test_parse_inline_quoted_values_and_lists():
    specs = parse_inline('p{text="a, b}c",lit=\'x,y\',sizes=[1,2],names=["u", "v"],n=-3}')
    assert specs[0].options == {
        "text": "a, b}c",
        "lit": "x,y",
        "sizes": [1, 2],
        "names": ["u", "v"],
        "n": -3,
    }


def test_parse_inline_builds_real_options():
    pipe = Pipeline.parse("fix-input-shapes{shapes=images:1,3,64,64},cleanup")
    assert [p.name for p in pipe.passes] == ["fix-input-shapes", "cleanup"]
    assert pipe.passes[0].options.shapes == "images:1,3,64,64"
    assert repr(pipe) == "fix-input-shapes{shapes='images:1,3,64,64'},cleanup"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "pipeline is empty"),
        (" , ,", "pipeline is empty"),
        ("simplify{a=1", "unbalanced"),
        ("simplify{a=1}}", "unbalanced"),
        ("simplify{a={b=1}", "unbalanced"),
        ("simplify{a=1}{b=2}", "unbalanced"),
        ("simplify}{", "unbalanced"),
        ("simplify{a{b=1}}", "not an option name"),
        ("simplify{a=1}x", "no closing"),
        ('simplify{a="open}', "unbalanced"),
        ("simplify{=1}", "option with no name"),
        ("simplify{1}", "is not key=value"),
        ("fold_bn", "'fold_bn' is not a pass name"),
        ("fold bn", "'fold bn' is not a pass name"),
        ("{a=1}", "'' is not a pass name"),
    ],
)
def test_parse_inline_errors(text, message):
    with pytest.raises(PipelineError) as exc:
        parse_inline(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_pass_and_bad_option_in_inline_pipelines():
    with pytest.raises(OptionsError, match="unknown pass 'fold-nb'; did you mean 'fold-bn'"):
        Pipeline.parse("simplify,fold-nb")
    with pytest.raises(OptionsError, match="fix-input-shapes: unknown option 'shape'; did you"):
        Pipeline.parse("fix-input-shapes{shape=images:1,3,64,64}")
    with pytest.raises(OptionsError, match="fix-input-shapes: bad value 5 for option 'shapes'"):
        Pipeline.parse("fix-input-shapes{shapes=5}")
    with pytest.raises(OptionsError, match="cleanup: unknown option 'x' \\(options: none\\)"):
        Pipeline.parse("cleanup{x=1}")


# ----------------------------------------------------------------------------- TOML form


def write(tmp_path: Path, text: str, name: str = "pipeline.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parse_toml_happy_path(tmp_path):
    path = write(
        tmp_path,
        """
        # a comment
        [[pass]]
        name = "fix-input-shapes"
        shapes = "images:1,3,64,64"

        [[pass]]
        name = "fold-bn"

        [[pass]]
        name = "cleanup"
        """,
    )
    assert parse_toml(path) == [
        PassSpec("fix-input-shapes", {"shapes": "images:1,3,64,64"}),
        PassSpec("fold-bn"),
        PassSpec("cleanup"),
    ]
    pipe = Pipeline.from_toml(path)
    assert [p.name for p in pipe.passes] == ["fix-input-shapes", "fold-bn", "cleanup"]
    inline = Pipeline.parse("fix-input-shapes{shapes=images:1,3,64,64},fold-bn,cleanup")
    assert repr(pipe) == repr(inline)  # the forms are equal


@pytest.mark.parametrize(
    "text, error, message",
    [
        ('[[passes]]\nname = "cleanup"\n', PipelineError, "unknown top-level key 'passes'"),
        ('name = "cleanup"\n', PipelineError, "unknown top-level key 'name'"),
        ("", PipelineError, "no [[pass]] tables"),
        ('[pass]\nname = "cleanup"\n', PipelineError, "no [[pass]] tables"),
        ("pass = [1, 2]\n", PipelineError, "[[pass]] number 1 is not a table"),
        (
            '[[pass]]\nname = "cleanup"\n[[pass]]\nratio = 0.3\n',
            PipelineError,
            "number 2 has no 'name'",
        ),
        (
            '[[pass]]\nname = "fold-nb"\n',
            OptionsError,
            "unknown pass 'fold-nb'; did you mean 'fold-bn'",
        ),
        (
            '[[pass]]\nname = "fix-input-shapes"\nshape = "images:1,3,64,64"\n',
            OptionsError,
            "unknown option 'shape'; did you mean 'shapes'",
        ),
        ("[[pass]\nname = 1\n", PipelineError, "not valid TOML"),
        ("simplify,fold-bn\n", PipelineError, "not valid TOML"),
    ],
)
def test_toml_errors_are_one_line(tmp_path, text, error, message):
    path = write(tmp_path, text)
    with pytest.raises(error) as exc:
        Pipeline.from_toml(path)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_toml_missing_and_binary_files(tmp_path):
    with pytest.raises(PipelineError, match="no such pipeline file"):
        parse_toml(tmp_path / "nope.toml")
    binary = tmp_path / "model.toml"
    binary.write_bytes((FIXTURES / "silu.onnx").read_bytes())
    with pytest.raises(PipelineError) as exc:
        parse_toml(binary)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- ordering


def test_ordering_violation_names_both_passes():
    with pytest.raises(PipelineError) as exc:
        Pipeline.parse("fold-bn,constants-to-initializers")
    msg = str(exc.value)
    assert "'fold-bn'" in msg and "'constants-to-initializers'" in msg
    assert "\n" not in msg


def test_correct_order_and_absent_partners_pass():
    ok = Pipeline.parse("constants-to-initializers,simplify,fold-bn,cleanup")
    assert [p.name for p in ok.passes] == [
        "constants-to-initializers",
        "simplify",
        "fold-bn",
        "cleanup",
    ]  # kept as written, never reordered
    assert [p.name for p in Pipeline.parse("fold-bn").passes] == ["fold-bn"]


# ----------------------------------------------------------------------------- run


def test_run_records_every_pass_and_leaves_the_callers_model_alone():
    model = bn_model()
    before = model.SerializeToString()
    from graphslim.pipeline import Observer

    seen = []

    class Watch(Observer):
        def pass_started(self, name, index, total):
            seen.append((name, index, total))

        def pass_done(self, record, model):
            seen.append((record.name, len(model.graph.node)))

    result = Pipeline.parse("fold-bn,cleanup").run(model, observer=Watch())
    assert model.SerializeToString() == before
    assert seen == [("fold-bn", 0, 2), ("fold-bn", 4), ("cleanup", 1, 2), ("cleanup", 3)]
    fold, clean = result.records
    assert (fold.name, fold.numerics, fold.modified) == ("fold-bn", "exact", True)
    assert fold.seconds >= 0 and clean.seconds >= 0
    assert (fold.before.nodes, fold.after.nodes) == (5, 4)
    assert (fold.before.params, fold.after.params) == (PARAMS_BEFORE, PARAMS_AFTER_FOLD)
    assert fold.before.macs == fold.after.macs == CONV_MACS
    assert fold.counters == {"bn_folded": 1}
    assert [node for node, _ in fold.skipped] == ["/bn2/BN"]
    assert "Relu" in fold.skipped[0][1]
    assert clean.modified and clean.counters["identities_removed"] == 1
    assert (clean.before.nodes, clean.after.nodes) == (4, 3)
    assert clean.before == fold.after
    assert result.initial == fold.before and result.final == clean.after
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "BatchNormalization"]
    assert [o.name for o in result.model.graph.output] == ["y"]
    # validation: not per pass unless asked, always at the end, exact default tolerance
    assert fold.validation is None and clean.validation is None
    assert result.validation is not None and result.validation.passed
    assert result.validation.tolerances == ["max-rel=0.0001|max-abs=1e-06"]
    assert result.validation.worst("max-rel") < 1e-5
    json.dumps(result.to_dict())  # the report is JSON-able


def test_run_with_validate_each():
    result = Pipeline.parse("fold-bn,cleanup").run(bn_model(), validate_each=True)
    assert all(r.validation is not None and r.validation.passed for r in result.records)
    assert result.validation is result.records[-1].validation
    report = result.to_dict()
    assert [p["validation"]["passed"] for p in report["passes"]] == [True, True]


def test_run_without_validation():
    result = Pipeline.parse("cleanup").run(bn_model(), validate=False)
    assert result.validation is None


def test_unmodified_pass_keeps_stats_and_model():
    model = bn_model()
    result = Pipeline.parse("constants-to-initializers").run(model)
    (rec,) = result.records
    assert rec.modified is False and rec.before == rec.after
    assert result.model.SerializeToString() == model.SerializeToString()


def test_run_on_a_fixture_keeps_the_file_model_untouched():
    model = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    before = model.SerializeToString()
    result = Pipeline.parse("constants-to-initializers,simplify,fold-bn,cleanup").run(model)
    assert model.SerializeToString() == before
    assert result.validation.passed
    assert result.final.nodes < result.initial.nodes
    assert result.final.macs == result.initial.macs


def test_a_raising_pass_is_wrapped_with_the_passes_before_it():
    pipe = Pipeline(["fold-bn", "cleanup", Boom()])
    with pytest.raises(PassFailedError) as exc:
        pipe.run(bn_model())
    assert str(exc.value) == (
        "pass 'boom' failed (after passes [fold-bn, cleanup]): RuntimeError: kaboom"
    )
    assert isinstance(exc.value.__cause__, RuntimeError)
    with pytest.raises(PassFailedError, match="^pass 'boom' failed: RuntimeError: kaboom$"):
        Pipeline([Boom()]).run(bn_model())


def test_a_precondition_error_keeps_its_type_and_gains_context():
    with pytest.raises(PreconditionError) as exc:
        Pipeline(["cleanup", Refuse()]).run(bn_model())
    assert str(exc.value) == (
        "refuse: the model has no Gemm; nothing to do (after passes [cleanup])"
    )


def test_a_pass_message_already_naming_the_pass_is_not_prefixed_twice():
    with pytest.raises(PreconditionError) as exc:
        Pipeline.parse("fix-input-shapes{shapes=nope:1,3,8,8}").run(bn_model())
    msg = str(exc.value)
    assert msg.startswith("fix-input-shapes: ") and msg.count("fix-input-shapes") == 1, msg


def test_a_checker_invalid_result_is_caught():
    with pytest.raises(PassFailedError) as exc:
        Pipeline(["cleanup", BreakChecker()]).run(bn_model())
    msg = str(exc.value)
    assert msg.startswith("pass 'break-checker' produced a model the ONNX checker rejects")
    assert "(after passes [cleanup])" in msg
    assert "\n" not in msg


def test_a_dangling_read_is_caught_by_the_pass_itself_called_directly():
    """ensures() runs in Pass.__call__: no pipeline needed to catch a broken result."""
    with pytest.raises(
        PassFailedError, match="pass 'dangle' produced a graph where .* reads 'nowhere'"
    ):
        Dangle()(bn_model())
    with pytest.raises(PassFailedError) as exc:
        Pipeline(["cleanup", Dangle()]).run(bn_model())
    assert str(exc.value).startswith("pass 'dangle' produced a graph where")
    assert str(exc.value).endswith("(after passes [cleanup])")


def test_a_cycle_made_by_a_pass_is_a_pass_failure():
    with pytest.raises(PassFailedError) as exc:
        Pipeline([MakeCycle()]).run(bn_model())
    msg = str(exc.value)
    assert msg.startswith("pass 'make-cycle' produced an invalid graph: graph has a cycle: ")
    assert "/conv/Conv" in msg and "\n" not in msg


def test_a_lying_pass_is_a_pass_failure():
    with pytest.raises(PassFailedError, match="liar changed the model but said modified=False"):
        Pipeline([Liar()]).run(bn_model())


def test_lossy_pass_without_tolerance_is_measured_not_judged():
    pipe = Pipeline(["fold-bn", ScaleWeight()])
    assert not pipe.exact
    result = pipe.run(bn_model(), validate_each=True)
    fold, scale = result.records
    assert fold.validation.worst("max-abs") < 1e-5
    assert scale.validation.worst("max-abs") > 1e-3  # the error is there ...
    assert result.validation.passed  # ... and reported, not judged
    assert result.validation.tolerances == []


def test_lossy_pass_with_an_explicit_tolerance_fails():
    result = Pipeline([ScaleWeight()]).run(bn_model(), tolerances=[Tolerance.parse("max-rel=1e-4")])
    assert not result.validation.passed
    assert "max-rel" in result.validation.failure_summary()
    loose = Pipeline([ScaleWeight()]).run(bn_model(), tolerances=[Tolerance.parse("max-rel=0.5")])
    assert loose.validation.passed


def test_custom_registry_for_inline_names():
    pipe = Pipeline.parse("scale-weight", registry=custom_registry())
    assert isinstance(pipe.passes[0], ScaleWeight)
    with pytest.raises(OptionsError, match="did you mean 'scale-weight'"):
        Pipeline.parse("scale-weigth", registry=custom_registry())


def test_feeds_given_by_the_caller_are_used():
    feeds = [{"x": np.full((1, CIN, HW, HW), 0.5, np.float32)} for _ in range(3)]
    result = Pipeline.parse("fold-bn").run(bn_model(), feeds=feeds)
    assert result.validation.feeds == 3


def test_reference_from_the_source_file_matches_the_in_memory_original(tmp_path):
    """``source=``: the original's outputs come from onnxruntime reading the file, in a
    background thread while the passes run; the comparison is the same as without it."""
    from graphslim.feeds import random_feeds

    model = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    feeds = random_feeds(model, count=2, seed=3)
    pipe = Pipeline.parse("constants-to-initializers,simplify,fold-bn,cleanup")
    plain = pipe.run(model, feeds=feeds)
    sourced = pipe.run(model, feeds=feeds, source=FIXTURES / "tiny_yolo.onnx")
    assert sourced.validation.passed and plain.validation.passed
    assert sourced.validation.to_dict()["outputs"] == plain.validation.to_dict()["outputs"]


def test_a_source_onnxruntime_cannot_read_fails_at_validation(tmp_path):
    """The background reference run's error is raised where the validation needs it."""
    from graphslim.errors import RuntimeFailure
    from graphslim.feeds import random_feeds

    model = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not protobuf")
    feeds = random_feeds(model, count=1, seed=0)
    with pytest.raises(RuntimeFailure, match="cannot load original"):
        Pipeline.parse("fold-bn").run(model, feeds=feeds, source=bad)


# ----------------------------------------------------------------------------- progress


class Clock:
    """A clock the test moves by hand: no test waits on, or asserts, wall-clock time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_lines_for_logs():
    from graphslim.progress import Heartbeat

    lines, clock = [], Clock()
    beat = Heartbeat(lines.append, every=10, clock=clock)
    beat.step("pass 1/3: simplify")  # within the quiet start: a quick command says nothing
    clock.now += 2
    beat.tick()
    assert lines == []
    beat.step("pass 2/3: prune-channels")
    clock.now += 7
    beat.tick()
    assert lines == []
    clock.now += 1  # 10 s without a word: the step is said, still running
    beat.tick()
    assert lines == ["[    10s] pass 2/3: prune-channels: still running (8s in this step)"]
    clock.now += 5
    beat.update("sensitivity", 3, 40)  # detail within 10 s of the last line: kept for later
    assert len(lines) == 1
    clock.now += 5
    beat.update("sensitivity", 4, 40)
    assert lines[-1] == "[    20s] pass 2/3: prune-channels: sensitivity 4/40"
    clock.now += 10
    beat.tick()  # silence again: the last detail, with the time in the step
    assert lines[-1] == "[    30s] pass 2/3: prune-channels: sensitivity 4/40 (28s in this step)"
    beat.step("pass 3/3: quantize-int8")  # after the quiet start every step is said at once
    assert lines[-1] == "[    30s] pass 3/3: quantize-int8" and len(lines) == 4


def test_passes_report_progress_through_the_context():
    from graphslim.contract import PassContext

    class Counting(Pass):
        name = "counting"
        summary = "reports three steps"
        numerics = "exact"

        def call(self, model, ctx):
            for k in range(3):
                ctx.report("step", k + 1, 3)
            return PassResult(model, False)

    from graphslim.pipeline import Observer

    seen, steps = [], []

    class Steps(Observer):
        def pass_started(self, name, index, total):
            steps.append((name, index, total))

    ctx = PassContext(progress=lambda text, done, total: seen.append((text, done, total)))
    Pipeline([Counting()]).run(bn_model(), ctx=ctx, observer=Steps())
    assert seen == [("step", 1, 3), ("step", 2, 3), ("step", 3, 3)]
    assert steps == [("counting", 0, 1)]
    Counting()(bn_model(), PassContext())  # no display: reporting is a no-op
