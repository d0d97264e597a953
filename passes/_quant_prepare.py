"""Helpers of quantize-int8: calibration reader, model preparation, exclusion patterns."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx

from graphslim.errors import OptionsError, PreconditionError
from graphslim.model_io import needs_external_data

log = logging.getLogger("graphslim.passes.quantize_int8")

MIN_OPSET = 13


def feed_reader(feeds):
    """A ``CalibrationDataReader`` over a list of feeds (the class is built here, so that
    importing this module does not import onnxruntime)."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = list(feeds)
            self.pos = 0

        def get_next(self):
            if self.pos >= len(self.feeds):
                return None
            self.pos += 1
            return self.feeds[self.pos - 1]

        def rewind(self) -> None:
            self.pos = 0

        def __len__(self) -> int:
            return len(self.feeds)

    return FeedReader()


def prepare(model: onnx.ModelProto, work: Path) -> tuple[onnx.ModelProto, list[str]]:
    """Opset >= 13, named nodes, quant_pre_process; writes ``work/pre.onnx``."""
    from onnxruntime.quantization import quant_pre_process

    notes = []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = next((x.version for x in m.opset_import if x.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            m = onnx.version_converter.convert_version(m, MIN_OPSET)
        except Exception as exc:
            raise PreconditionError(
                f"the model is opset {opset}; INT8 QDQ needs opset >= {MIN_OPSET} and the ONNX "
                f"version converter failed: {first_line(exc)}; re-export with opset >= 13"
            ) from exc
        notes.append(f"opset {opset} converted to {MIN_OPSET} (per-channel QDQ needs it)")
    name_nodes(m.graph)
    raw = work / "raw.onnx"
    onnx.save_model(m, str(raw), save_as_external_data=needs_external_data(m))
    # Symbolic shape inference is skipped: CNN shapes come from ONNX shape inference, and
    # onnxruntime's symbolic pass writes sym_shape_infer_temp.onnx plus a uuid .data file
    # into the *working directory* whenever it cannot finish (seen on random test graphs).
    attempts = [
        dict(skip_symbolic_shape=True),
        dict(skip_symbolic_shape=True, skip_optimization=True),
    ]
    errors = []
    for kw in attempts:
        try:
            quant_pre_process(str(raw), str(work / "pre.onnx"), **kw)
            break
        except Exception as exc:  # onnxruntime raises many kinds
            errors.append(first_line(exc))
    else:
        raise PreconditionError(
            f"quantization pre-processing (shape inference, optimisation) failed: {errors[-1]}"
        )
    if errors:
        notes.append(f"pre-processing without optimisation ({errors[0]})")
    pre = onnx.load_model(str(work / "pre.onnx"))
    if name_nodes(pre.graph):  # nodes the optimiser created (e.g. a split HardSwish)
        onnx.save_model(pre, str(work / "pre.onnx"), save_as_external_data=needs_external_data(pre))
    return pre, notes


def name_nodes(graph: onnx.GraphProto) -> int:
    """Give unnamed nodes stable names ``{op}_{index}`` (exclusion works by name)."""
    taken = {n.name for n in graph.node if n.name}
    count = 0
    for i, n in enumerate(graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
            count += 1
    return count


def resolve_exclude(model: onnx.ModelProto, patterns) -> tuple[list[str], list]:
    """Node names to keep in float from ``name:``/``op:``/``re:`` or bare patterns: a bare
    entry is a node name if one has it, else an op type if a node has it, else a regex
    (``re.fullmatch``) over node names."""
    names = [n.name for n in model.graph.node]
    ops = {n.op_type for n in model.graph.node}
    chosen: list[str] = []
    skipped: list[tuple[str, str]] = []
    for pat in patterns:
        kind, _, body = (
            pat.partition(":") if pat.split(":", 1)[0] in ("name", "op", "re") else ("", "", pat)
        )
        if kind == "name" or (not kind and body in names):
            hit = [n for n in names if n == body]
        elif kind == "op" or (not kind and body in ops):
            hit = [n.name for n in model.graph.node if n.op_type == body]
        else:
            try:
                rx = re.compile(body)
            except re.error as exc:
                raise OptionsError(
                    f"quantize-int8: exclude entry {pat!r} is not a regex: {exc}"
                ) from None
            hit = [n for n in names if rx.fullmatch(n)]
        if not hit:
            why = "matched no node after pre-processing (fused away, or a typo?)"
            log.warning("quantize-int8: exclude entry %r %s", pat, why)
            skipped.append((f"exclude:{pat}", why))
        chosen += [h for h in hit if h not in chosen]
    skipped += [(n, "excluded by the user: kept in float") for n in chosen]
    return chosen, skipped


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
