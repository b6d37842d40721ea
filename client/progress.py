"""A one-line progress bar on stderr, drawn only when stderr is a terminal (never in logs or pipes)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            rate = self.done / max(now - self._started, 1e-9) / 1e6
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {share:6.1%} {rate:8.1f} MB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
