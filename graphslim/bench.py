"""Latency of one or more models in onnxruntime (CPU), measured side by side.

Each model gets its own session with the same thread count and optimization level, is warmed
up, then the models run *alternately* (A B A B ...) for ``runs`` rounds so that clock
boosts, thermal drift and background load hit every model alike. With more than one model,
thread spinning is off in every session (onnxruntime's idle workers would otherwise busy-wait
and steal the cores of the session being timed). Reported per model: median,
p90, mean and min in milliseconds; with two or more models, each one's median relative to
the first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from graphslim.runtime import Session


@dataclass
class Timing:
    label: str
    runs: int
    threads: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    ratio: float | None = None  # this median / first model's median

    def to_dict(self) -> dict:
        return asdict(self)


def bench(
    models: Sequence[tuple[str, onnx.ModelProto]],
    feed: dict[str, np.ndarray],
    *,
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
    optimization: str = "all",
    progress=None,
) -> list[Timing]:
    """Time each ``(label, model)`` on the same ``feed``; see the module doc for the method.

    ``progress``: optional callable ``(done, total)`` called after each round.
    """
    # Side by side, no session's idle threads may spin (graphslim.runtime.Session): they
    # would steal the cores of the session being timed.
    sessions = [
        Session(m, threads=threads, optimization=optimization, label=lbl, spinning=len(models) == 1)
        for lbl, m in models
    ]
    try:
        feeds = [{k: v for k, v in feed.items() if k in s.input_names} for s in sessions]
        for s, f in zip(sessions, feeds):
            for _ in range(warmup):
                s.run(f)
        samples: list[list[float]] = [[] for _ in sessions]
        for r in range(runs):
            for k, (s, f) in enumerate(zip(sessions, feeds)):
                t0 = time.perf_counter()
                s.run(f)
                samples[k].append((time.perf_counter() - t0) * 1e3)
            if progress:
                progress(r + 1, runs)
        out = []
        for (label, _), s, ms in zip(models, sessions, samples):
            a = np.asarray(ms)
            out.append(
                Timing(
                    label=label,
                    runs=runs,
                    threads=s.threads,
                    median_ms=float(np.median(a)),
                    p90_ms=float(np.percentile(a, 90)),
                    mean_ms=float(a.mean()),
                    min_ms=float(a.min()),
                )
            )
        base = out[0].median_ms
        for t in out:
            t.ratio = t.median_ms / base if base > 0 else None
        return out
    finally:
        for s in sessions:
            s.close()
