"""Numeric comparison of a candidate model against the original, in onnxruntime.

Both models run on the same feeds; per output, over all feeds together:

* ``max-abs``  = max |c - o|
* ``max-rel``  = max |c - o| / max |o|   (the largest error relative to the output's largest
  magnitude: one scale per output. This is *not* Polygraphy's ``rel`` statistic, which is
  element-wise, max |c - o| / |o| per element, and explodes on values near zero; ours never
  does, but it can hide a large error on an output's small values, e.g. class scores next
  to pixel boxes in one YOLO tensor: use a task check or a per-output tolerance for those)
* ``mean-abs`` = mean |c - o|
* ``p99-abs``  = 99th percentile of |c - o|
* ``cosine``   = <c, o> / (|c| |o|)      (1.0 = same direction)

A :class:`Tolerance` bounds one statistic for one output (or all outputs), as in Polygraphy's
comparator: ``max-rel=1e-4`` or ``boxes:max-abs=0.5``; ``cosine`` is a lower bound, the others
upper bounds. An output that is missing, has another shape, or has NaN/Inf where the original
is finite fails whatever the tolerance.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from graphslim.errors import OptionsError
from graphslim.runtime import Session

log = logging.getLogger(__name__)

STATISTICS = ("max-abs", "max-rel", "mean-abs", "p99-abs", "cosine")
_EPS = 1e-12


@dataclass(frozen=True)
class Tolerance:
    """``stat <= value`` (``cosine >= value``) for one output or all; ``alternatives`` are
    more ``(stat, value)`` bounds of which any one holding is enough, like Polygraphy's
    ``atol`` OR ``rtol``: ``max-rel=1e-4|max-abs=1e-6`` passes an output whose values are all
    near zero (where any relative measure is noise) as well as one within 1e-4 relative."""

    stat: str
    value: float
    output: str | None = None  # None: every output
    alternatives: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for stat in [self.stat] + [a[0] for a in self.alternatives]:
            if stat not in STATISTICS:
                raise OptionsError(
                    f"unknown statistic '{stat}' (use one of {', '.join(STATISTICS)})"
                )

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``[OUTPUT:]STAT=VALUE[|STAT=VALUE...]``, e.g. ``max-rel=1e-4``,
        ``output0:cosine=0.999`` or ``max-rel=1e-4|max-abs=1e-6``."""
        output, bounds = None, []
        for k, part in enumerate(text.strip().split("|")):
            head, sep, value = part.strip().rpartition("=")
            if not sep or not head:
                raise OptionsError(
                    f"bad tolerance '{text}': write [OUTPUT:]STAT=VALUE, e.g. max-rel=1e-4"
                )
            where, _, stat = head.rpartition(":")
            if where and k > 0:
                raise OptionsError(f"bad tolerance '{text}': name the output once, at the start")
            output = output or where.strip() or None
            try:
                bounds.append((stat.strip(), float(value)))
            except ValueError:
                raise OptionsError(f"bad tolerance '{text}': {value!r} is not a number") from None
        (stat, number), *rest = bounds
        return cls(stat=stat, value=number, output=output, alternatives=tuple(rest))

    def applies_to(self, output: str) -> bool:
        return self.output is None or self.output == output

    def holds(self, stats: dict[str, float]) -> bool:
        return any(
            stats[stat] >= value if stat == "cosine" else stats[stat] <= value
            for stat, value in ((self.stat, self.value), *self.alternatives)
        )

    def __str__(self) -> str:
        where = f"{self.output}:" if self.output else ""
        bounds = "|".join(f"{s}={v:g}" for s, v in ((self.stat, self.value), *self.alternatives))
        return f"{where}{bounds}"


# Exact passes: within 1e-4 of the output's magnitude, or within 1e-6 absolute for outputs
# whose values are all near zero (a sigmoid map of an empty scene).
DEFAULT_TOLERANCES = (Tolerance("max-rel", 1e-4, alternatives=(("max-abs", 1e-6),)),)


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    stats: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # Facts worth a look that no tolerance asked about (a candidate that went constant).
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Comparison:
    outputs: list[OutputComparison]
    feeds: int
    tolerances: list[str]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def worst(self, stat: str = "max-rel") -> float:
        vals = [o.stats.get(stat, math.nan) for o in self.outputs]
        vals = [v for v in vals if not math.isnan(v)]
        if not vals:
            return math.nan
        return min(vals) if stat == "cosine" else max(vals)

    def failure_summary(self) -> str:
        parts = [f"{o.name}: {'; '.join(o.failures)}" for o in self.outputs if o.failures]
        return " | ".join(parts)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "feeds": self.feeds,
            "tolerances": self.tolerances,
            "outputs": [dict(asdict(o), passed=o.passed) for o in self.outputs],
        }


def reference_outputs(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Sequence[dict[str, np.ndarray]],
    label: str = "original",
) -> list[dict[str, np.ndarray]]:
    """``model``'s outputs on ``feeds`` (onnxruntime CPU); ``model`` may be its file."""
    with Session(model, label=label) as s:
        return [s.run(f) for f in feeds]


def compare(
    original: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES,
    *,
    reference: list[dict[str, np.ndarray]] | None = None,
) -> Comparison:
    """Run both models on ``feeds`` and compare every output of the original."""
    if not feeds:
        raise OptionsError("no feeds to compare on")
    if reference is None:
        reference = reference_outputs(original, feeds)
    with Session(candidate, label="candidate") as s:
        got = [s.run({k: v for k, v in f.items() if k in s.input_names}) for f in feeds]
    return compare_outputs(reference, got, tolerances)


def compare_outputs(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES,
) -> Comparison:
    names = list(reference[0])
    unknown = [t.output for t in tolerances if t.output and t.output not in names]
    if unknown:
        raise OptionsError(
            f"tolerance names output '{unknown[0]}', which the model does not have "
            f"(outputs: {', '.join(names)})"
        )
    results = []
    for name in names:
        ref = [r[name] for r in reference]
        if any(name not in c for c in candidate):
            results.append(
                OutputComparison(name, list(np.shape(ref[0])), failures=["missing in candidate"])
            )
            continue
        cand = [c[name] for c in candidate]
        results.append(_compare_one(name, ref, cand, [t for t in tolerances if t.applies_to(name)]))
    return Comparison(results, feeds=len(reference), tolerances=[str(t) for t in tolerances])


def _compare_one(
    name: str, ref: list[np.ndarray], cand: list[np.ndarray], tolerances: list[Tolerance]
) -> OutputComparison:
    shape = list(np.shape(ref[0]))
    out = OutputComparison(name, shape)
    for r, c in zip(ref, cand):
        if np.shape(r) != np.shape(c):
            out.failures.append(f"shape {list(np.shape(c))} != original {list(np.shape(r))}")
            return out
    o = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in ref])
    c = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in cand])
    bad = ~np.isfinite(c) & np.isfinite(o)
    if bad.any():
        out.failures.append(f"{int(bad.sum())} non-finite values where the original is finite")
    both = np.isfinite(o) & np.isfinite(c)
    o, c = o[both], c[both]
    if c.size > 1 and np.ptp(c) == 0 and np.ptp(o) > 0:
        # A dead model (a saturated Sigmoid map, a pruned head) can still be "close" in
        # max-abs to an original whose values are small; say it plainly.
        out.warnings.append(f"constant output ({c[0]:.6g} everywhere) where the original varies")
        log.warning(
            "output '%s' of the candidate is constant (%.6g); the original varies", name, c[0]
        )
    if o.size == 0:
        out.stats = {s: 0.0 for s in STATISTICS} | {"cosine": 1.0}
    else:
        diff = np.abs(c - o)
        scale = float(np.max(np.abs(o)))
        norm = float(np.linalg.norm(o) * np.linalg.norm(c))
        out.stats = {
            "max-abs": float(diff.max()),
            "max-rel": float(diff.max() / max(scale, _EPS)),
            "mean-abs": float(diff.mean()),
            "p99-abs": float(np.percentile(diff, 99)),
            "cosine": float(np.dot(o, c) / norm) if norm > 0 else float(np.array_equal(o, c)),
        }
    for t in tolerances:
        if not t.holds(out.stats):
            got = ", ".join(
                f"{s} {out.stats[s]:.3g}" for s, _ in ((t.stat, t.value), *t.alternatives)
            )
            out.failures.append(f"{got} (want {t})")
    return out
