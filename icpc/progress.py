"""Progress for long jobs: a tqdm bar on a terminal, plain lines every few percent in a log.

A redrawn bar written to a file, ``ray job logs`` or CI is thousands of carriage-return frames;
when the stream is not a terminal ``Progress`` prints one line every ``every_percent`` percent
(at most one per ``min_s`` seconds) or every ``every_s`` seconds instead, and a last line.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """``update(n)``, ``set_postfix(**values)``, ``close()``: the part of tqdm's API the jobs use."""

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, stream: IO[str] | None = None,
                 every_percent: float = 5.0, every_s: float = 30.0, leave: bool = True, min_s: float = 2.0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.every_percent, self.every_s, self.min_s = every_percent, every_s, min_s
        self.n, self.postfix, self._bar = 0, "", None
        self._start = self._last_time = time.monotonic()
        self._last_n = 0
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self._due():
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n != self._last_n:
            self._line()

    def _due(self) -> bool:
        """A line every ``every_percent`` (but at most one per ``min_s``) or every ``every_s``; the last one."""
        if self.n == self.total:
            return True
        since = time.monotonic() - self._last_time
        step = max(1, int(self.total * self.every_percent / 100)) if self.total else 0
        return (bool(step) and self.n - self._last_n >= step and since >= self.min_s) or since >= self.every_s

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {(self.total - self.n) / rate:.0f} s" if self.total and rate > 0 and self.n < self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total or '?'} {self.unit}{share}, {rate:.1f} {self.unit}/s{eta}{extra}",
              file=self.stream, flush=True)
        self._last_time, self._last_n = now, self.n


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
