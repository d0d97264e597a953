"""Latency of one or more models, measured side by side, in onnxruntime (CPU, the default) or
another runtime of :data:`graphslim.runtime.RUNTIMES` (OpenVINO CPU), or a mix of them.

Each model gets its own session with the same thread count and optimization level, is warmed
up, then the models run *alternately* (A B A B ...) for ``runs`` rounds so that clock
boosts, thermal drift and background load hit every model alike. With more than one model,
thread spinning is off in every session (onnxruntime's idle workers would otherwise busy-wait
and steal the cores of the session being timed). Reported per model: median,
p90, mean and min in milliseconds; with two or more models, each one's median relative to
the first.

Runtime: ``runtime=`` applies to every model; an entry ``(label, model, runtime)`` overrides it
for that model, so one call can time the same model in onnxruntime and in OpenVINO, still
alternating. Other measurements that time models (the latency budget of pruning, the INT8
placement search) take the same ``runtime`` string and open their sessions with
:func:`graphslim.runtime.open_session`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from graphslim.runtime import check_runtime, open_session


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
    runtime: str = "ort"

    def to_dict(self) -> dict:
        return asdict(self)


def bench(
    models: Sequence[tuple[str, onnx.ModelProto] | tuple[str, onnx.ModelProto, str]],
    feed: dict[str, np.ndarray],
    *,
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
    optimization: str = "all",
    progress=None,
    runtime: str = "ort",
) -> list[Timing]:
    """Time each ``(label, model[, runtime])`` on the same ``feed``; see the module doc.

    ``progress``: optional callable ``(done, total)`` called after each round.
    """
    entries = [(e[0], e[1], e[2] if len(e) > 2 else runtime) for e in models]
    for rt in dict.fromkeys(e[2] for e in entries):
        check_runtime(rt)
    # Side by side, no session's idle threads may spin (graphslim.runtime.Session): they
    # would steal the cores of the session being timed.
    sessions = []
    try:
        for lbl, m, rt in entries:
            sessions.append(
                open_session(
                    m,
                    runtime=rt,
                    threads=threads,
                    optimization=optimization,
                    label=lbl,
                    spinning=len(entries) == 1,
                )
            )
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
        for (label, _, rt), s, ms in zip(entries, sessions, samples):
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
                    runtime=rt,
                )
            )
        base = out[0].median_ms
        for t in out:
            t.ratio = t.median_ms / base if base > 0 else None
        return out
    finally:
        for s in sessions:
            s.close()
