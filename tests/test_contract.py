"""Tests for the pass contract (graphslim.contract) and the registry (graphslim.registry):
option coercion from Python, TOML and CLI strings, contract checks at registration, the
modified-flag check, and name lookup with suggestions."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphslim.contract import (
    Pass,
    PassContext,
    PassResult,
    check_pass_class,
    coerce,
    make_options,
    option,
    type_label,
)
from graphslim.errors import GraphslimError, OptionsError
from graphslim.registry import Registry, default_registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILT_IN = {"cleanup", "constants-to-initializers", "fix-input-shapes", "fold-bn", "simplify"}


@dataclass(frozen=True, kw_only=True)
class AllKinds:
    ratio: float = option(0.5, help="fraction")
    count: int = option(3, help="how many")
    strict: bool = option(False, help="be strict")
    label: str = option("x", help="a label")
    sizes: tuple[int, ...] = option((), help="sizes")
    names: tuple[str, ...] = option((), help="names")
    mode: Literal["fast", "slow"] = option("fast", help="speed")
    level: Literal[1, 2, 3] = option(1, help="level")
    limit: int | None = option(None, help="optional limit")
    scale: float | None = option(None, help="optional scale")
    table: dict[str, float] = option(help="per-name numbers", factory=dict)
    max_items: int = option(0, help="a name with an underscore")


def opts(**values):
    return make_options(AllKinds, values, owner="test-pass")


def toml_values(text: str) -> dict:
    return tomllib.loads(text)


# ----------------------------------------------------------------------------- coercion


def test_defaults():
    o = opts()
    assert (o.ratio, o.count, o.strict, o.label, o.sizes, o.mode, o.limit) == (
        0.5,
        3,
        False,
        "x",
        (),
        "fast",
        None,
    )


def test_coercion_from_cli_strings():
    o = opts(
        ratio="0.25",
        count=" 7 ",
        strict="yes",
        label="hello",
        sizes="[1, 2,3]",
        names="a,b",
        mode="slow",
        level="2",
        limit="10",
        scale="none",
    )
    assert o.ratio == 0.25 and isinstance(o.ratio, float)
    assert o.count == 7 and isinstance(o.count, int)
    assert o.strict is True
    assert o.label == "hello"
    assert o.sizes == (1, 2, 3)
    assert o.names == ("a", "b")
    assert o.mode == "slow"
    assert o.level == 2 and isinstance(o.level, int)
    assert o.limit == 10
    assert o.scale is None


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("1", True), ("on", True), ("False", False), ("0", False), ("no", False)],
)
def test_bool_strings(text, value):
    assert opts(strict=text).strict is value


def test_sizes_without_brackets_and_quoted_names():
    assert opts(sizes="4,5").sizes == (4, 5)
    assert opts(names="['a', \"b\"]").names == ("a", "b")


def test_coercion_from_toml_values():
    values = toml_values(
        """
        ratio = 1            # int where a float is declared
        count = 4.0          # integral float where an int is declared
        strict = true
        label = "lbl"
        sizes = [640, 480]
        mode = "slow"
        level = 3
        limit = 8
        scale = 2
        table = { a = 1, b = 0.5 }
        """
    )
    o = make_options(AllKinds, values, owner="test-pass")
    assert o.ratio == 1.0 and isinstance(o.ratio, float)
    assert o.count == 4 and isinstance(o.count, int)
    assert o.strict is True and o.label == "lbl"
    assert o.sizes == (640, 480)
    assert (o.mode, o.level, o.limit) == ("slow", 3, 8)
    assert o.scale == 2.0 and isinstance(o.scale, float)
    assert o.table == {"a": 1.0, "b": 0.5}


def test_python_values_and_dashed_names():
    o = make_options(AllKinds, {"ratio": 0.1, "sizes": [1, 2]}, owner="p")
    assert o.sizes == (1, 2)
    # CLI and TOML users may write option names with dashes
    assert make_options(AllKinds, {"max-items": "5"}, owner="p").max_items == 5
    assert make_options(AllKinds, {"max_items": 6}, owner="p").max_items == 6


@pytest.mark.parametrize(
    "option_name, value, why",
    [
        ("count", "3.5", "invalid literal"),
        ("count", 3.5, "expected an integer"),
        ("count", True, "expected an integer"),
        ("ratio", "abc", "could not convert"),
        ("ratio", False, "expected a number"),
        ("strict", "maybe", "expected true or false"),
        ("strict", 1, "expected true or false"),
        ("label", 5, "expected a string"),
        ("mode", "medium", "expected one of fast, slow"),
        ("level", 4, "expected one of 1, 2, 3"),
        ("sizes", "[1, x]", "invalid literal"),
        ("limit", "lots", "invalid literal"),
        ("table", "a=1", "expected a table"),
    ],
)
def test_bad_values_name_pass_option_and_value(option_name, value, why):
    with pytest.raises(OptionsError) as exc:
        opts(**{option_name: value})
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("test-pass: bad value")
    assert f"'{option_name}'" in msg
    assert repr(value) in msg
    assert why in msg


def test_unknown_option_suggests_the_closest():
    with pytest.raises(OptionsError) as exc:
        opts(ratoi=0.3)
    msg = str(exc.value)
    assert "unknown option 'ratoi'" in msg
    assert "did you mean 'ratio'?" in msg
    assert "options: ratio, count" in msg
    with pytest.raises(OptionsError) as exc:
        opts(zzzzzz=1)
    assert "did you mean" not in str(exc.value)


def test_validate_hook_errors_become_options_errors():
    @dataclass(frozen=True, kw_only=True)
    class WithCheck:
        ratio: float = option(0.5, help="in (0, 1)")

        def validate(self) -> None:
            if not 0 < self.ratio < 1:
                raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")

    assert make_options(WithCheck, {"ratio": "0.3"}, owner="p").ratio == 0.3
    with pytest.raises(OptionsError, match=r"^p: ratio must be in \(0, 1\), got 1.5$"):
        make_options(WithCheck, {"ratio": 1.5}, owner="p")


def test_type_labels_for_help():
    assert type_label(int) == "int"
    assert type_label(tuple[int, ...]) == "list of int"
    assert type_label(Literal["a", "b"]) == "a|b"
    assert type_label(int | None) == "int | none"
    assert type_label(dict[str, float]) == "table str -> float"


def test_coerce_optional_accepts_none_forms():
    assert coerce(None, int | None) is None
    assert coerce("null", float | None) is None
    assert coerce("2", int | None) == 2


# ----------------------------------------------------------------------------- contract checks


def tiny_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@dataclass(frozen=True, kw_only=True)
class GoodOptions:
    factor: float = option(2.0, help="multiply the weight by this")


class Scale(Pass):
    name = "scale-weight"
    summary = "multiply w by factor"
    numerics = "lossy"
    Options = GoodOptions

    def call(self, model, ctx):
        w = model.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * self.options.factor, "w"))
        return PassResult(model, True, {"scaled": 1})


def make_pass_class(**overrides) -> type:
    attrs = {
        "name": "my-pass",
        "summary": "does things",
        "numerics": "exact",
        "call": lambda self, model, ctx: PassResult(model, False),
    }
    attrs.update(overrides)
    return type("MyPass", (Pass,), attrs)


def test_good_pass_classes_pass_the_check_and_register():
    reg = Registry()
    for cls in (Scale, make_pass_class()):
        check_pass_class(cls)  # raises TypeError on a broken contract
        assert reg.add(cls) is cls
    assert reg.names() == ["my-pass", "scale-weight"]


@pytest.mark.parametrize("bad", ["MyPass", "my_pass", "my--pass", "-my", "my-", "2pass", ""])
def test_check_rejects_non_kebab_names(bad):
    with pytest.raises(TypeError, match="kebab-case"):
        check_pass_class(make_pass_class(name=bad))


def test_check_rejects_bad_numerics():
    with pytest.raises(TypeError, match="numerics must be 'exact' or 'lossy'"):
        check_pass_class(make_pass_class(numerics="approximate"))


def test_check_rejects_missing_attributes():
    cls = make_pass_class()
    del cls.summary
    with pytest.raises(TypeError, match="'summary'"):
        check_pass_class(cls)


def test_check_rejects_non_frozen_options():
    @dataclass(kw_only=True)
    class Mutable:
        factor: float = option(1.0, help="factor")

    with pytest.raises(TypeError, match="must be frozen"):
        check_pass_class(make_pass_class(Options=Mutable))


def test_check_rejects_options_that_are_not_dataclasses():
    class Plain:
        factor = 1.0

    with pytest.raises(TypeError, match="must be a dataclass"):
        check_pass_class(make_pass_class(Options=Plain))


def test_check_rejects_an_option_without_help():
    @dataclass(frozen=True, kw_only=True)
    class NoHelp:
        factor: float = 1.0

    with pytest.raises(TypeError, match="factor has no help text"):
        check_pass_class(make_pass_class(Options=NoHelp))


def test_check_rejects_an_option_without_default():
    @dataclass(frozen=True, kw_only=True)
    class NoDefault:
        factor: float = option(help="factor")

    with pytest.raises(TypeError, match="factor needs a default"):
        check_pass_class(make_pass_class(Options=NoDefault))


def test_check_rejects_a_pass_without_call():
    cls = make_pass_class()
    del cls.call
    with pytest.raises(TypeError, match=r"does not implement call\(model, ctx\)"):
        check_pass_class(cls)


def test_check_rejects_non_passes():
    with pytest.raises(TypeError, match="not a graphslim.contract.Pass subclass"):
        check_pass_class(type("Thing", (), {"name": "thing"}))


# ----------------------------------------------------------------------------- Pass.__call__


def test_pass_options_from_kwargs_and_instances():
    assert Scale().options.factor == 2.0
    assert Scale(factor="3").options.factor == 3.0
    assert Scale(GoodOptions(factor=4.0)).options.factor == 4.0
    assert repr(Scale(factor=3)) == "scale-weight{factor=3.0}"
    with pytest.raises(OptionsError, match="^scale-weight: unknown option 'fact'; did you mean"):
        Scale(fact=3)
    with pytest.raises(TypeError):
        Scale(GoodOptions(), factor=3.0)


def test_modified_flag_check_catches_a_lying_pass():
    class Liar(Scale):
        name = "liar"

        def call(self, model, ctx):
            result = super().call(model, ctx)
            return PassResult(result.model, False)  # changed w, says it did not

    with pytest.raises(AssertionError, match="pass liar changed the model but said modified=False"):
        Liar()(tiny_model())


def test_honest_passes_go_through_the_check():
    model = tiny_model()
    result = Scale()(model, PassContext(seed=1))
    assert result.modified and result.counters == {"scaled": 1}
    np.testing.assert_array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), [2, 4])
    noop = make_pass_class()()
    assert noop(tiny_model()).modified is False


def test_call_must_return_a_pass_result_holding_a_model():
    returns_model = make_pass_class(call=lambda self, model, ctx: model)
    with pytest.raises(TypeError, match="returned ModelProto, not PassResult"):
        returns_model()(tiny_model())
    returns_graph = make_pass_class(call=lambda self, model, ctx: PassResult(model.graph, True))
    with pytest.raises(TypeError, match="returned a GraphProto model"):
        returns_graph()(tiny_model())


def test_context_rng_is_seeded():
    a = PassContext(seed=7).rng.random(3)
    b = PassContext(seed=7).rng.random(3)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- registry


def test_registry_add_and_get():
    reg = Registry()
    reg.add(Scale)
    assert reg.get("scale-weight") is Scale
    assert "scale-weight" in reg and reg.names() == ["scale-weight"]
    assert list(reg) == [Scale]
    reg.add(Scale)  # adding the same class twice is harmless


def test_registry_unknown_name_suggests_the_closest():
    reg = Registry()
    reg.add(Scale)
    with pytest.raises(OptionsError) as exc:
        reg.get("scale-wieght")
    msg = str(exc.value)
    assert msg == (
        "unknown pass 'scale-wieght'; did you mean 'scale-weight'? "
        "(run `graphslim passes` for the list)"
    )
    assert isinstance(exc.value, GraphslimError) and exc.value.exit_code == 2


def test_registry_refuses_a_taken_name_and_a_bad_class():
    reg = Registry()
    reg.add(Scale)
    other = type("Other", (Scale,), {})
    with pytest.raises(ValueError, match="'scale-weight' is taken"):
        reg.add(other)
    with pytest.raises(TypeError, match="kebab-case"):
        reg.add(make_pass_class(name="Bad_Name"))
    assert reg.names() == ["scale-weight"]


def test_default_registry_lists_the_built_in_passes():
    reg = default_registry()
    assert BUILT_IN <= set(reg.names())
    for name in BUILT_IN:
        cls = reg.get(name)
        check_pass_class(cls)
        assert cls.name == name
        assert cls.__module__ == "graphslim.passes." + name.replace("-", "_")
        assert cls.numerics == "exact"
    with pytest.raises(OptionsError, match="did you mean 'fold-bn'"):
        reg.get("fold-nb")


class _NewModel(Pass):
    """Returns an edited copy (declared in_place: a contract breach)."""

    name = "new-model"
    summary = "returns a copy"
    numerics = "exact"

    def call(self, model, ctx):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.node[0].name = "renamed"
        return PassResult(copy, True)


class _EditsInput(Pass):
    """Edits its input although it declares that it returns a new model."""

    name = "edits-input"
    summary = "edits its input"
    numerics = "exact"
    in_place = False

    def call(self, model, ctx):
        model.graph.node[0].name = "renamed"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return PassResult(copy, True)


def test_in_place_is_checked_both_ways():
    with pytest.raises(AssertionError, match="new-model is in_place but returned a new model"):
        _NewModel()(tiny_model())
    with pytest.raises(AssertionError, match="edits-input is not in_place but changed its input"):
        _EditsInput()(tiny_model())
    _NewModel.in_place = False  # declared truthfully, the same pass is fine
    try:
        model = tiny_model()
        before = model.SerializeToString()
        result = _NewModel()(model)
        assert result.model is not model and model.SerializeToString() == before
    finally:
        _NewModel.in_place = True


def test_builtin_passes_declare_how_they_return():
    reg = default_registry()
    new = {n for n in reg.names() if not reg.get(n).in_place}
    assert new == {"prune-channels", "quantize-int8", "simplify", "finetune"}
