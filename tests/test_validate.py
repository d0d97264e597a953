"""Tests for graphslim.validate: tolerance syntax, the error statistics (checked against
numbers worked out by hand), per-output tolerances and failures that no tolerance excuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.validate import (
    DEFAULT_TOLERANCES,
    STATISTICS,
    Tolerance,
    compare,
    compare_outputs,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# ----------------------------------------------------------------------------- Tolerance.parse


@pytest.mark.parametrize(
    "text, stat, value, output, alternatives",
    [
        ("max-rel=1e-4", "max-rel", 1e-4, None, ()),
        ("max-abs=0.5", "max-abs", 0.5, None, ()),
        ("mean-abs=2", "mean-abs", 2.0, None, ()),
        ("p99-abs=1e-3", "p99-abs", 1e-3, None, ()),
        ("output0:cosine=0.999", "cosine", 0.999, "output0", ()),
        (" boxes : max-abs = 0.5 ", "max-abs", 0.5, "boxes", ()),
        ("Identity:0:max-abs=1", "max-abs", 1.0, "Identity:0", ()),
        ("max-rel=1e-4|max-abs=1e-6", "max-rel", 1e-4, None, (("max-abs", 1e-6),)),
        ("scores:max-rel=0.01|cosine=0.99", "max-rel", 0.01, "scores", (("cosine", 0.99),)),
    ],
)
def test_tolerance_parse_forms(text, stat, value, output, alternatives):
    t = Tolerance.parse(text)
    assert (t.stat, t.value, t.output, t.alternatives) == (stat, value, output, alternatives)
    assert Tolerance.parse(str(t)) == t  # str() writes what parse() reads


@pytest.mark.parametrize(
    "text, message",
    [
        ("max-rel", "write [OUTPUT:]STAT=VALUE"),
        ("=1e-4", "write [OUTPUT:]STAT=VALUE"),
        ("", "write [OUTPUT:]STAT=VALUE"),
        ("max-rel=", "'' is not a number"),
        ("max-rel=small", "'small' is not a number"),
        ("maxrel=1e-4", "unknown statistic 'maxrel' (use one of max-abs, max-rel"),
        ("out:median=1", "unknown statistic 'median'"),
        ("max-rel=1e-4|", "write [OUTPUT:]STAT=VALUE"),
        ("a:max-rel=1|b:max-abs=1", "name the output once"),
    ],
)
def test_tolerance_parse_errors(text, message):
    with pytest.raises(OptionsError) as exc:
        Tolerance.parse(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_tolerance_bounds():
    stats = {"max-abs": 0.5, "max-rel": 0.1, "mean-abs": 0.1, "p99-abs": 0.4, "cosine": 0.98}
    assert Tolerance.parse("max-abs=0.5").holds(stats)  # bound is inclusive
    assert not Tolerance.parse("max-abs=0.49").holds(stats)
    assert Tolerance.parse("cosine=0.98").holds(stats)  # cosine is a lower bound
    assert not Tolerance.parse("cosine=0.99").holds(stats)
    assert Tolerance.parse("max-abs=0.1|cosine=0.9").holds(stats)  # any one is enough
    assert not Tolerance.parse("max-abs=0.1|cosine=0.99").holds(stats)


# ----------------------------------------------------------------------------- statistics


def test_stats_match_hand_computed_values():
    o = f32([[1, -2], [3, 4]])
    c = f32([[1.5, -2], [3, 3]])
    # |c - o| = [0.5, 0, 0, 1]
    result = compare_outputs([{"y": o}], [{"y": c}], tolerances=())
    (out,) = result.outputs
    assert out.name == "y" and out.shape == [2, 2]
    s = out.stats
    assert s["max-abs"] == pytest.approx(1.0)
    assert s["max-rel"] == pytest.approx(1.0 / 4.0)  # max|c-o| / max|o|
    assert s["mean-abs"] == pytest.approx(1.5 / 4)
    # 99th percentile, linear interpolation over sorted [0, 0, 0.5, 1]: at 0.99*3 = 2.97
    assert s["p99-abs"] == pytest.approx(0.5 + 0.97 * 0.5)
    # <o, c> = 1.5 + 4 + 9 + 12 = 26.5; |o|^2 = 30; |c|^2 = 2.25 + 4 + 9 + 9 = 24.25
    assert s["cosine"] == pytest.approx(26.5 / math.sqrt(30 * 24.25))
    assert out.passed and result.passed  # no tolerance: measured only
    assert result.feeds == 1 and result.tolerances == []


def test_stats_pool_all_feeds():
    ref = [{"y": f32([2, 0])}, {"y": f32([-8, 1])}]
    cand = [{"y": f32([2, 1])}, {"y": f32([-6, 1])}]
    # diffs over both feeds: [0, 1, 2, 0]; max|o| = 8
    (out,) = compare_outputs(ref, cand, ()).outputs
    assert out.stats["max-abs"] == pytest.approx(2.0)
    assert out.stats["max-rel"] == pytest.approx(2.0 / 8.0)
    assert out.stats["mean-abs"] == pytest.approx(3.0 / 4.0)


def test_identical_outputs_give_zeros_and_cosine_one():
    y = f32(np.linspace(-3, 3, 24).reshape(2, 3, 4))
    (out,) = compare_outputs([{"y": y}], [{"y": y.copy()}]).outputs
    assert {k: out.stats[k] for k in STATISTICS} == {
        "max-abs": 0.0,
        "max-rel": 0.0,
        "mean-abs": 0.0,
        "p99-abs": 0.0,
        "cosine": pytest.approx(1.0),
    }
    assert out.passed


def test_default_tolerance_is_relative_or_tiny_absolute():
    big = f32([100.0, -50.0])
    ok = compare_outputs([{"y": big}], [{"y": big + f32([0.005, 0])}])  # 5e-5 relative
    bad = compare_outputs([{"y": big}], [{"y": big + f32([0.05, 0])}])  # 5e-4 relative
    assert ok.passed and not bad.passed
    assert "max-rel 0.0005" in bad.failure_summary()
    assert "want max-rel=0.0001|max-abs=1e-06" in bad.failure_summary()
    # all values near zero: relative error is noise, the absolute floor decides
    tiny = f32([2e-5, 1e-5])
    near = compare_outputs([{"y": tiny}], [{"y": tiny + f32([5e-7, 0])}])
    assert near.outputs[0].stats["max-rel"] > 1e-4 and near.passed
    assert [str(t) for t in DEFAULT_TOLERANCES] == ["max-rel=0.0001|max-abs=1e-06"]


def test_nan_or_inf_in_candidate_fails_whatever_the_tolerance():
    o = f32([1, 2, 3])
    for bad in (np.nan, np.inf, -np.inf):
        c = f32([1, bad, 3])
        result = compare_outputs([{"y": o}], [{"y": c}], [Tolerance.parse("max-abs=1e9")])
        assert not result.passed
        assert result.outputs[0].failures[0] == "1 non-finite values where the original is finite"
        # stats come from the finite positions only
        assert result.outputs[0].stats["max-abs"] == 0.0
    nothing = compare_outputs([{"y": o}], [{"y": f32([np.nan, 2, 3])}], ())
    assert not nothing.passed  # even with no tolerance at all


def test_nan_where_the_original_has_nan_is_not_a_failure():
    o = f32([np.nan, 2, 3])
    c = f32([np.nan, 2, 3.5])
    (out,) = compare_outputs([{"y": o}], [{"y": c}], ()).outputs
    assert out.passed and out.stats["max-abs"] == pytest.approx(0.5)


def test_shape_mismatch_fails():
    result = compare_outputs([{"y": f32([[1, 2, 3]])}], [{"y": f32([1, 2, 3])}], ())
    assert not result.passed
    assert result.outputs[0].failures == ["shape [3] != original [1, 3]"]
    assert "shape [3] != original [1, 3]" in result.failure_summary()


def test_missing_output_fails():
    result = compare_outputs([{"a": f32([1]), "b": f32([2])}], [{"a": f32([1])}], ())
    assert [o.passed for o in result.outputs] == [True, False]
    assert result.failure_summary() == "b: missing in candidate"


def test_per_output_tolerances():
    ref = [{"boxes": f32([10, 20]), "scores": f32([0.5, 0.25])}]
    cand = [{"boxes": f32([10.4, 20]), "scores": f32([0.5, 0.3])}]
    tol = [Tolerance.parse("boxes:max-abs=0.5"), Tolerance.parse("scores:max-abs=0.01")]
    result = compare_outputs(ref, cand, tol)
    boxes, scores = result.outputs
    assert boxes.passed and not scores.passed
    assert scores.failures == ["max-abs 0.05 (want scores:max-abs=0.01)"]
    assert result.failure_summary().startswith("scores: ")
    # a global tolerance applies to every output, a named one only to its own
    both = compare_outputs(ref, cand, [Tolerance.parse("max-abs=0.1")])
    assert [o.passed for o in both.outputs] == [False, True]
    assert result.worst("max-abs") == pytest.approx(0.4)
    assert result.worst("cosine") == scores.stats["cosine"]


def test_tolerance_for_an_unknown_output_is_an_options_error():
    with pytest.raises(OptionsError) as exc:
        compare_outputs([{"y": f32([1])}], [{"y": f32([1])}], [Tolerance.parse("boxes:max-abs=1")])
    assert str(exc.value) == (
        "tolerance names output 'boxes', which the model does not have (outputs: y)"
    )


# ----------------------------------------------------------------------------- compare()


def test_compare_a_fixture_with_itself():
    model = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    feeds = random_feeds(model, count=2, seed=3)
    result = compare(model, model, feeds)
    assert result.passed and result.feeds == 2
    assert [o.name for o in result.outputs] == [o.name for o in model.graph.output]
    for out in result.outputs:
        assert out.stats["max-abs"] == 0.0 and out.stats["max-rel"] == 0.0
        assert out.stats["mean-abs"] == 0.0 and out.stats["p99-abs"] == 0.0
        assert out.stats["cosine"] == pytest.approx(1.0)
    d = result.to_dict()
    assert d["passed"] is True and d["outputs"][0]["passed"] is True


def test_compare_a_fixture_with_a_perturbed_copy():
    model = onnx.load_model(FIXTURES / "two_outputs.onnx")
    other = onnx.ModelProto()
    other.CopyFrom(model)
    w = other.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.5), w.name))
    feeds = random_feeds(model, count=1, seed=0)
    result = compare(model, other, feeds)
    assert not result.passed
    assert all(o.stats["max-abs"] > 0 for o in result.outputs)
    assert result.worst("max-rel") > 1e-4


def test_compare_needs_feeds():
    model = onnx.load_model(FIXTURES / "silu.onnx")
    with pytest.raises(OptionsError, match="no feeds"):
        compare(model, model, [])


def test_a_constant_candidate_is_flagged_even_within_tolerance():
    """A saturated sigmoid map (all 0.0) is within max-abs 0.01 of a map of small
    probabilities, and still dead: the comparison says so."""
    o = f32([0.001, 0.004, 0.002, 0.008])
    dead = compare_outputs(
        [{"y": o}], [{"y": np.zeros(4, np.float32)}], [Tolerance.parse("max-abs=0.01")]
    )
    assert dead.passed
    assert dead.outputs[0].warnings == ["constant output (0 everywhere) where the original varies"]
    alive = compare_outputs([{"y": o}], [{"y": o * 1.1}], ())
    assert alive.outputs[0].warnings == []
    both = compare_outputs([{"y": np.ones(4, np.float32)}], [{"y": np.ones(4, np.float32)}], ())
    assert both.outputs[0].warnings == []  # constant like the original: nothing to say
