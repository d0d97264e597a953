"""The one schema of pruning settings: the ``prune-channels`` pass's ``Options``, TOML keys,
CLI help and the library's keyword arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from graphslim.contract import option


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """Settings of structured channel pruning (the ``prune-channels`` pass's options)."""

    ratio: float = option(0.0, help="fraction of channels removed from each group (0..0.95)")
    target_macs: float | None = option(
        None, help="reach this fraction of the original MACs instead of a fixed ratio"
    )
    importance: Literal["l1", "l2", "bn-scale", "activation"] = option(
        "l1", help="channel score: filter L1/L2 norm, BN |gamma|, or mean |activation|"
    )
    scope: Literal["uniform", "global"] = option(
        "uniform", help="same ratio per group, or one ranking across all groups"
    )
    round_to: int | Literal["auto"] = option(
        8,
        help="round kept channel counts up to a multiple of this; 'auto': the channel block of "
        "onnxruntime's blocked (NCHWc) convolutions on this machine, probed (8 or 16)",
    )
    min_channels: int = option(1, help="never keep fewer channels in a group")
    exclude: tuple[str, ...] = option((), help="regexes of source node names to leave alone")
    overrides: dict[str, float] = option(
        help="per-node ratio: {regex = ratio}; first match on a group's sources wins",
        factory=dict,
    )
    remove_dead: bool = option(True, help="remove exactly-zero channels (lossless)")
    compensate: bool = option(
        True,
        help="put the mean of removed input channels (on calibration feeds, --calib) back "
        "into consumer conv biases",
    )
    reconstruct: bool = option(False, help="refit consumer convs by least squares on feeds")
    max_samples: int = option(20000, help="rows per layer for the least-squares refit")
    budget: str | None = option(
        None,
        help="'latency=0.5' or 'macs=0.5': per-group ratios chosen greedily to meet it with "
        "the least output error (measured sensitivity; see graphslim/pruning/budget.py)",
    )
    budget_ratios: tuple[float, ...] = option(
        (0.25, 0.5, 0.75), help="candidate per-group ratios the budget search measures"
    )
    strict: bool = option(
        False,
        help="fail when the MACs reached miss the asked ratio/target by more than a tenth "
        "(frozen groups); by default the record and table say so",
    )
    budget_feeds: int = option(
        2,
        help="calibration feeds the budget's sensitivity runs on (each candidate runs on "
        "every one: more is slower; the error ranking is what matters, see bench/budget.py)",
    )
    budget_checks: int = option(
        5,
        help="latency budget: rounds of build + measure against the input (onnxruntime CPU), "
        "searching lower when the measured ratio misses; 0 trusts the prediction",
    )

    def validate(self) -> None:
        if not 0.0 <= self.ratio <= 0.95:
            raise ValueError("ratio must be in [0, 0.95]")
        if self.target_macs is not None and not 0.05 <= self.target_macs <= 1.0:
            raise ValueError("target_macs must be in [0.05, 1]")
        if (self.round_to != "auto" and self.round_to < 1) or self.min_channels < 1:
            raise ValueError("round_to and min_channels must be >= 1")
        for pattern in list(self.exclude) + list(self.overrides):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        for value in self.overrides.values():
            if not 0.0 <= value <= 0.95:
                raise ValueError("override ratios must be in [0, 0.95]")
        if self.budget is not None:
            parse_budget(self.budget)
            if self.target_macs is not None:
                raise ValueError("give budget or target_macs, not both")
        if not self.budget_ratios or not all(0 < r <= 0.95 for r in self.budget_ratios):
            raise ValueError("budget_ratios must be in (0, 0.95]")
        if self.budget_feeds < 1:
            raise ValueError("budget_feeds must be >= 1")
        if self.budget_checks < 0:
            raise ValueError("budget_checks must be >= 0")


_BUDGET = re.compile(r"^\s*(latency|macs)\s*[=:]\s*([0-9.]+)\s*$")


def parse_budget(text: str) -> tuple[str, float]:
    """``latency=0.5`` / ``macs=0.4`` -> (kind, fraction of the original)."""
    m = _BUDGET.match(text)
    if not m:
        raise ValueError(f"bad budget {text!r}: write latency=0.5 or macs=0.5")
    value = float(m.group(2))
    if not 0.05 <= value <= 1.0:
        raise ValueError(f"budget {text!r}: the fraction must be in [0.05, 1]")
    return m.group(1), value
