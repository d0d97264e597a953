"""Progress as plain lines, for logs: what a long run is doing when no terminal shows a bar.

A terminal gets rich's live bars and spinners (cli.py); a pipe or a file gets nothing from
them until the end, so a 10-minute pass looks hung. :class:`Heartbeat` turns the same
progress callbacks into one line per step, at most one line per ``every`` seconds for the
detail within a step (``sensitivity 40/120``), and a "still running" line when a step says
nothing for ``every`` seconds, as pip and ultralytics do in CI logs. A command that is done
within its first ``quiet`` seconds says nothing (its output stays what it was); a longer one
says what it is doing from then on. It never prints: lines go to the ``emit`` callable the
caller gives (library code logs, only the CLI prints).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Heartbeat:
    """``step(text)``: a new step, said at once. ``update(text, done, total)``: detail within
    the step, said when ``every`` seconds passed since the last line. ``tick()``: says the
    step is still running when nothing was said for ``every`` seconds; a daemon thread calls
    it while the heartbeat is entered as a context manager. Nothing is said during the first
    ``quiet`` seconds (default ``every``). Every line starts with the seconds since the
    start: ``[   42s] pass 3/5: prune-channels: still running (30s in this step)``."""

    def __init__(
        self,
        emit: Callable[[str], None],
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        quiet: float | None = None,
    ) -> None:
        self.emit, self.every, self.clock = emit, every, clock
        self.quiet = every if quiet is None else quiet
        self.start = self.last = self.step_start = clock()
        self.current = ""
        self.detail = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _say(self, text: str, now: float) -> None:
        self.last = now
        self.emit(f"[{now - self.start:6.0f}s] {text}")

    def _quiet(self, now: float) -> bool:
        return now - self.start < self.quiet

    def step(self, text: str) -> None:
        with self._lock:
            now = self.clock()
            self.current, self.detail, self.step_start = text, "", now
            if not self._quiet(now):
                self._say(text, now)

    def update(self, text: str, done: int | None = None, total: int | None = None) -> None:
        with self._lock:
            now = self.clock()
            count = f" {done}/{total}" if done is not None and total else ""
            self.detail = f"{text}{count}"
            if now - self.last >= self.every and not self._quiet(now):
                self._say(self._line(self.detail), now)

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            if self.current and now - self.last >= self.every and not self._quiet(now):
                what = self.detail or "still running"
                self._say(self._line(f"{what} ({now - self.step_start:.0f}s in this step)"), now)

    def _line(self, text: str) -> str:
        return f"{self.current}: {text}" if self.current else text

    def __enter__(self) -> Heartbeat:
        def beat() -> None:
            while not self._stop.wait(min(1.0, self.every)):
                self.tick()

        self._thread = threading.Thread(target=beat, name="graphslim-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
