"""Admission by measured queueing delay: a CoDel-style overload detector that sets how many requests run at once.

Pure (no Ray, no Serve, no clock of its own): the Serve ingress passes ``time.monotonic()`` in and
asks ``try_admit`` before it reads a request's body, so a shed request costs one comparison and a
small JSON 503. Unit-tested in ``tests/inference/test_admission.py`` on a hand-driven clock.

Why not a fixed count: the number of requests a replica can hold within a latency budget is its
throughput times that budget, and throughput changes with the model, the levels the cascade tries,
the batch sizes and whatever else shares the CPU. A fixed ``max_inflight`` of 48 let admitted
requests wait 6.6 s on a saturated 2-core machine (issue 26); the right count there was about 10.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

MAX_STEP_DOWN = 0.5    # one interval shrinks the limit to at least half: one noisy window cannot empty the server
STEP_UP = 1 / 8        # an interval within target grows a reached limit by an eighth (at least 1): ~8 intervals
                       # to double, so a limit cut too deep recovers in seconds without overshooting the budget


@dataclass(frozen=True)
class AdmissionState:
    """What ``DelayAdmission`` decided last, for ``/healthz``, ``/v1/info`` and a 503's reason."""

    limit: int                    # requests admitted at once now
    inflight: int                 # requests admitted and not finished
    ceiling: int                  # the most the limit may grow to (``max_inflight``)
    target_s: float               # the queueing-delay budget; 0 = admission by the fixed ceiling only
    last_min_delay_s: float | None  # the minimum queueing delay of the last interval that completed requests
    shed: int                     # requests refused so far


class DelayAdmission:
    """Admits requests while the minimum queueing delay per interval stays within ``target_s``.

    The detector is CoDel's (Nichols and Jacobson, "Controlling Queue Delay", 2012): a server is
    overloaded when even the *least* delayed request completed over an interval waited longer than
    the target. A burst that drains leaves some request with a short wait and is left alone; a
    standing queue is not. The response acts on arrivals instead of dropping from the queue, since a
    request dropped after admission has already cost its decode: the number admitted at once
    (``limit``) is cut in proportion to the excess (``target / delay``, at most halved per interval,
    from the peak actually in flight) and grows again by an eighth (at least 1) after every interval
    within target in which the limit was reached, up to ``ceiling``. Arrivals over the limit are shed.

    ``target_s = 0`` turns the detector off: the limit is ``ceiling``, the fixed count of before.
    The queueing delay of a request is measured by the caller: its sojourn in the server's queues (the
    decode thread pool's, the model's batcher's), i.e. the waits that admitting fewer would shorten.
    """

    def __init__(self, target_s: float, interval_s: float, ceiling: int, now: float):
        self.limit = sys.maxsize       # configure() clamps it to the ceiling
        self.configure(target_s, interval_s, ceiling)
        self.inflight = 0
        self.shed = 0
        self.last_min_delay_s: float | None = None
        self.window_start = now
        self.window_min = math.inf     # least queueing delay of the requests completed in this window (s)
        self.window_peak = 0           # most requests in flight at once in this window
        self.window_reached = False    # an arrival found the limit reached in this window

    def configure(self, target_s: float, interval_s: float, ceiling: int) -> None:
        """New settings (``reconfigure``); the limit keeps its learned value, within the new ceiling."""
        errors = check_admission(target_s, interval_s, ceiling)
        if errors:
            raise ValueError("; ".join(errors))
        self.target_s, self.interval_s, self.ceiling = float(target_s), float(interval_s), int(ceiling)
        self.limit = self.ceiling if self.target_s == 0 else min(self.limit, self.ceiling)

    def try_admit(self, now: float) -> bool:
        """True: the request is admitted (call ``finish`` when it ends); False: shed it."""
        self.advance(now)
        if self.inflight >= self.limit:
            self.window_reached = True
            self.shed += 1
            return False
        self.inflight += 1
        self.window_peak = max(self.window_peak, self.inflight)
        if self.inflight == self.limit:
            self.window_reached = True
        return True

    def finish(self, now: float, queue_delay_s: float | None) -> None:
        """An admitted request ended; ``queue_delay_s`` is its measured wait (None: it failed before one
        was measured, e.g. a 4xx, and says nothing about the queue)."""
        assert self.inflight > 0, "finish() without a matching try_admit()"
        self.inflight -= 1
        if queue_delay_s is not None:
            self.window_min = min(self.window_min, max(0.0, queue_delay_s))
        self.advance(now)

    def advance(self, now: float) -> None:
        """Close the interval if it has run out: move the limit by what it measured."""
        if now - self.window_start < self.interval_s:
            return
        if self.window_min < math.inf:
            self.last_min_delay_s = self.window_min
            if self.target_s > 0:
                self.limit = next_limit(self.limit, self.window_peak, self.window_min, self.window_reached,
                                        self.target_s, self.ceiling)
        self.window_start = now
        self.window_min = math.inf
        self.window_peak = self.inflight
        self.window_reached = False

    def state(self) -> AdmissionState:
        return AdmissionState(self.limit, self.inflight, self.ceiling, self.target_s, self.last_min_delay_s,
                              self.shed)

    def reason(self) -> str:
        """Why a request was just shed, naming the settings that decide it."""
        if self.target_s > 0 and self.limit < self.ceiling and self.last_min_delay_s is not None:
            return (f"overloaded: requests waited at least {self.last_min_delay_s:.3f} s in this replica's queues "
                    f"over the last interval, over the queue_delay_target_s={self.target_s:g} s budget; it admits "
                    f"{self.limit} at once now (max_inflight={self.ceiling})")
        return f"at capacity: {self.inflight} requests in progress on this replica (max_inflight={self.ceiling})"


def next_limit(limit: int, peak: int, min_delay_s: float, reached: bool, target_s: float, ceiling: int) -> int:
    """The limit after an interval whose least queueing delay was ``min_delay_s``.

    Over target: ``min(limit, peak) * max(target / delay, MAX_STEP_DOWN)``, at least 1 and at least one
    below where it was. Within target and the limit ``reached``: up by ``max(1, limit * STEP_UP)``, at most
    ``ceiling``. Otherwise (within target, the limit not the constraint) unchanged.
    """
    if min_delay_s > target_s:
        base = max(1, min(limit, peak))
        cut = math.floor(base * max(target_s / min_delay_s, MAX_STEP_DOWN))
        return max(1, min(cut, limit - 1))
    if reached:
        return min(ceiling, limit + max(1, math.floor(limit * STEP_UP)))
    return limit


def check_admission(target_s: float, interval_s: float, ceiling: int) -> list[str]:
    """The errors of a set of admission settings, each naming the field, the value and what is allowed."""
    errors = []
    if isinstance(target_s, bool) or not isinstance(target_s, (int, float)) or not 0 <= target_s < math.inf:
        errors.append(f"queue_delay_target_s={target_s!r}: seconds >= 0 (0 = a fixed max_inflight)")
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not 0 < interval_s < math.inf:
        errors.append(f"queue_delay_interval_s={interval_s!r}: seconds > 0 (e.g. 0.25)")
    if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling <= 0:
        errors.append(f"max_inflight={ceiling!r}: a positive integer")
    return errors
