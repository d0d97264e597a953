"""The pass contract: what every graphslim pass is and returns.

A pass is a class with

* ``name``: stable kebab-case CLI name (``fold-bn``), matching its module (``passes/fold_bn.py``);
* ``summary``: one line for ``graphslim passes``;
* ``numerics``: ``"exact"`` (outputs equal up to float rounding) or ``"lossy"``;
* ``Options``: a frozen, keyword-only dataclass; each field's ``metadata["help"]`` documents it.
  It is the one schema for Python kwargs, TOML pipeline files and inline CLI strings;
* ``after`` / ``before``: names of passes that, when present in the same pipeline, must run
  before / after this one (checked, never silently reordered);
* ``in_place``: True when the pass edits the model it is given and returns that same object;
  False when it returns a new model and leaves its input untouched (onnx_ir's ``in_place`` /
  ``changes_input``);
* ``requires(model)`` / ``ensures(model, result)``: checks before and after ``call``, run by
  ``__call__`` whether or not a pipeline calls the pass (default: nothing required; every
  tensor a modified result reads is defined);
* ``call(model, ctx) -> PassResult``.

A pass declines nodes it will not touch by listing ``(node, reason)`` in ``skipped``; it raises
:class:`~graphslim.errors.PreconditionError` only when it cannot take the model at all.
``Pass.__call__`` is final: it runs ``requires``, ``call`` and ``ensures`` and checks the
contract: the result type; ``in_place`` kept (the same object back, or an input left as it
was); a truthful ``modified`` (the byte checks run on models under 256 MB).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import onnx

from graphslim.errors import OptionsError, PassFailedError
from graphslim.model_io import model_nbytes

Numerics = Literal["exact", "lossy"]
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def option(
    default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None
):
    """A pass option field with its help text (shown by ``graphslim passes`` and ``--help``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoOptions:
    """For passes without options."""


@dataclass
class PassContext:
    """Everything a pass may use besides the model: no globals, no hidden settings.

    ``feeds`` are sample inputs (calibration / importance measurement) when the caller has
    them; ``cache`` holds analyses keyed by name, cleared by the pipeline after a pass that
    modified the model. ``reference``: the model the pipeline started from (the teacher of
    the ``finetune`` pass); :meth:`graphslim.Pipeline.run` sets it when the caller did not.
    ``progress``: the caller's ``(text, done, total)`` display for long passes; a pass calls
    :meth:`report` (nothing happens without a display).
    """

    seed: int = 0
    feeds: Sequence[dict[str, np.ndarray]] | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    reference: onnx.ModelProto | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("graphslim.pass"))
    progress: Callable[[str, int | None, int | None], None] | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def feeds_or_random(
        self, model: onnx.ModelProto, count: int, *, warn: str | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The calibration feeds, else ``count`` seeded random feeds from ``model``'s
        signature (``warn``: logged when the random ones are used, saying what they cost)."""
        if self.feeds:
            return list(self.feeds)
        from graphslim.feeds import random_feeds

        if warn:
            self.logger.warning(warn)
        return random_feeds(model, count=count, seed=self.seed, shapes=self.input_shapes)

    def report(self, text: str, done: int | None = None, total: int | None = None) -> None:
        """Tell the caller's progress display what a long pass is doing (``sensitivity``,
        ``40``, ``120``)."""
        if self.progress is not None:
            self.progress(text, done, total)


@dataclass
class PassResult:
    """What a pass returns. ``modified`` must be True exactly when the graph changed."""

    model: onnx.ModelProto
    modified: bool
    counters: dict[str, int | float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Optional per-node records (JSON-able dicts), e.g. the rank and MACs of each rewritten layer.
    details: list[dict[str, Any]] = field(default_factory=list)


class Pass:
    name: ClassVar[str]
    summary: ClassVar[str]
    numerics: ClassVar[Numerics]
    Options: ClassVar[type] = NoOptions
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    in_place: ClassVar[bool] = True

    def __init__(self, options: Any = None, /, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("give either an Options instance or keyword options, not both")
        if options is None:
            options = make_options(self.Options, kwargs, owner=self.name)
        elif not isinstance(options, self.Options):
            raise TypeError(f"{self.name}: options must be {self.Options.__qualname__}")
        self.options = options

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError  # every concrete pass overrides this; checked by the registry

    def requires(self, model: onnx.ModelProto) -> None:
        """Raise :class:`~graphslim.errors.PreconditionError` when the pass cannot take
        ``model`` at all (the message says how to fix it). Default: anything goes."""

    def ensures(self, model: onnx.ModelProto, result: PassResult) -> None:
        """Check what must hold after ``call``. Default: every tensor a node of a modified
        result reads is defined (a cheap structural check for direct calls; the pipeline
        also runs the ONNX checker on models that passed it coming in)."""
        if result.modified:
            from graphslim.graph import dangling_reads

            bad = dangling_reads(result.model.graph)
            if bad:
                node, tensor = bad[0]
                raise PassFailedError(
                    f"pass '{self.name}' produced a graph where {node} reads '{tensor}', "
                    "which nothing defines"
                )

    def __call__(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx if ctx is not None else PassContext()
        self.requires(model)
        before = model.SerializeToString(deterministic=True) if _small(model) else None
        result = self.call(model, ctx)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.name} returned {type(result).__name__}, not PassResult")
        if not isinstance(result.model, onnx.ModelProto):
            raise TypeError(f"pass {self.name} returned a {type(result.model).__name__} model")
        if self.in_place and result.model is not model:
            raise AssertionError(f"pass {self.name} is in_place but returned a new model")
        if not self.in_place and result.model is not model and before is not None:
            if model.SerializeToString(deterministic=True) != before:
                raise AssertionError(f"pass {self.name} is not in_place but changed its input")
        if result.modified and result.model.ir_version < 4:
            # Before IR 4 initializers are also graph inputs; passes add and reshape
            # initializers without caring, so the contract keeps that invariant for all.
            from graphslim.graph import list_initializers_as_inputs

            list_initializers_as_inputs(result.model.graph)
        if before is not None and not result.modified:
            after = result.model.SerializeToString(deterministic=True)
            if after != before:
                raise AssertionError(f"pass {self.name} changed the model but said modified=False")
        self.ensures(model, result)
        return result

    def describe_options(self) -> dict[str, Any]:
        return options_dict(self.options)

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v!r}" for k, v in self.describe_options().items())
        return f"{self.name}{{{opts}}}" if opts else self.name


def _small(model: onnx.ModelProto) -> bool:
    # The modified-flag check serializes the model twice; skip it for big models. (Not
    # ByteSize(): protobuf raises on it for models over 2 GB.)
    return model_nbytes(model) < 256 * 2**20


def options_dict(options: Any) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def option_fields(options_cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_cls))


def make_options(options_cls: type, values: dict[str, Any], *, owner: str) -> Any:
    """Build ``options_cls`` from user values (Python objects, TOML values or CLI strings),
    coercing each to its declared type; unknown names and bad values raise OptionsError."""
    hints = typing.get_type_hints(options_cls)
    known = {f.name: f for f in dataclasses.fields(options_cls)}
    kwargs = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            valid = ", ".join(known) or "none"
            raise OptionsError(f"{owner}: unknown option '{key}'{hint} (options: {valid})")
        try:
            kwargs[name] = coerce(raw, hints[name])
        except (TypeError, ValueError) as exc:
            raise OptionsError(f"{owner}: bad value {raw!r} for option '{name}': {exc}") from None
    try:
        opts = options_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OptionsError(f"{owner}: {exc}") from None
    check = getattr(opts, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise OptionsError(f"{owner}: {exc}") from None
    return opts


def type_label(tp: Any) -> str:
    """Short human name of an option type, for help text."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(type_label(a) for a in args) + " | none"
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {type_label(args[0])}" if args else "list"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"table {type_label(k)} -> {type_label(v)}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to type ``tp``. Strings (from the CLI) are parsed; others checked."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or f"expected {type_label(tp)}")
    if origin is Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ValueError(f"expected one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = _as_list(value)
        inner = args[0] if args else str
        return tuple(coerce(v, inner) for v in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError("expected a table like {name = value}")
        kt, vt = args
        return {coerce(k, kt): coerce(v, vt) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError("expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError("expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected a string")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"expected {type_label(tp)}")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
    return [value]


def check_pass_class(cls: type) -> None:
    """Raise TypeError when ``cls`` does not follow the pass contract (checked at registration,
    so a typo in a pass definition fails loudly instead of silently disabling a check)."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise TypeError(f"{where} is not a graphslim.contract.Pass subclass")
    for attr_name in ("name", "summary", "numerics"):
        if not isinstance(getattr(cls, attr_name, None), str):
            raise TypeError(f"{where} must define the class attribute '{attr_name}' (a string)")
    if not _KEBAB.match(cls.name):
        raise TypeError(f"{where}.name {cls.name!r} is not kebab-case")
    if cls.numerics not in ("exact", "lossy"):
        raise TypeError(f"{where}.numerics must be 'exact' or 'lossy', not {cls.numerics!r}")
    if cls.call is Pass.call:
        raise TypeError(f"{where} does not implement call(model, ctx)")
    opts = cls.Options
    if not dataclasses.is_dataclass(opts):
        raise TypeError(f"{where}.Options must be a dataclass")
    params = getattr(opts, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{where}.Options must be frozen (@dataclass(frozen=True, kw_only=True))")
    for f in dataclasses.fields(opts):
        if not f.metadata.get("help"):
            raise TypeError(f"{where}.Options.{f.name} has no help text (use graphslim.option)")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{where}.Options.{f.name} needs a default")
