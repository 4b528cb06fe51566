"""Admission by queueing delay (``inference/admission.py``) on a hand-driven clock: no Ray, no sleeps."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from icpc.inference.admission import DelayAdmission, check_admission, next_limit


def fill(adm: DelayAdmission, now: float, n: int) -> int:
    """Offer ``n`` arrivals at ``now``; how many were admitted."""
    return sum(adm.try_admit(now) for _ in range(n))


def test_target_zero_is_the_fixed_count_whatever_the_delay():
    adm = DelayAdmission(0.0, 0.25, 4, now=0.0)
    assert fill(adm, 0.0, 10) == 4 and adm.state().shed == 6
    assert "max_inflight=4" in adm.reason() and "at capacity" in adm.reason()
    for t in np.arange(0.3, 3.0, 0.3):           # long waits, interval after interval
        adm.finish(t, 5.0)
        assert adm.try_admit(t)
    assert adm.limit == 4 and adm.state().last_min_delay_s == 5.0


def test_a_standing_queue_cuts_the_limit_in_proportion_at_most_halving_per_interval():
    adm = DelayAdmission(0.1, 0.25, 48, now=0.0)
    assert fill(adm, 0.0, 40) == 40
    for _ in range(10):                           # everyone waited 0.16-0.2 s: the least wait is over target
        adm.finish(0.1, 0.16)
        adm.try_admit(0.1)
    adm.advance(0.25)
    assert adm.limit == 25                        # the 40 in flight x 0.1 / 0.16
    assert not adm.try_admit(0.26) and "queue_delay_target_s=0.1" in adm.reason()
    assert "0.160 s" in adm.reason() and "admits 25 at once" in adm.reason()
    adm.finish(0.3, 2.0)                          # far over target: at most halved
    adm.advance(0.5)
    assert adm.limit == 12
    for t in (0.8, 1.1, 1.4, 1.7, 2.0, 2.3):
        adm.finish(t, 2.0) if adm.inflight else None
        adm.advance(t)
    assert adm.limit >= 1


def test_a_burst_that_drains_leaves_the_limit_alone():
    adm = DelayAdmission(0.1, 0.25, 48, now=0.0)
    fill(adm, 0.0, 30)
    for i in range(29):
        adm.finish(0.05 + i * 0.005, 0.5)           # most waited long ...
    adm.finish(0.2, 0.02)                         # ... but one got through at once: no standing queue
    adm.advance(0.3)
    assert adm.limit == 48 and adm.state().last_min_delay_s == pytest.approx(0.02)


def test_the_limit_grows_back_only_while_it_is_reached_and_within_target():
    adm = DelayAdmission(0.1, 0.25, 48, now=0.0)
    adm.limit = 8
    t = 0.0
    for _ in range(3):                            # within target, but only 2 in flight: the limit is no constraint
        fill(adm, t, 2)
        adm.finish(t + 0.01, 0.01)
        adm.finish(t + 0.01, 0.01)
        t += 0.3
        adm.advance(t)
    assert adm.limit == 8
    grown = []
    for _ in range(30):                           # within target and full: grows by an eighth, at least 1
        fill(adm, t, 100)
        while adm.inflight:
            adm.finish(t + 0.01, 0.02)
        t += 0.3
        adm.advance(t)
        grown.append(adm.limit)
    assert grown[:3] == [9, 10, 11] and grown[-1] == 48 and max(grown) == 48


def test_next_limit_steps():
    assert next_limit(40, 40, 0.2, True, 0.1, 48) == 20
    assert next_limit(40, 10, 0.2, True, 0.1, 48) == 5           # from the peak in flight, not an idle ceiling
    assert next_limit(40, 40, 0.101, True, 0.1, 48) == 39        # at least one down
    assert next_limit(1, 1, 9.0, True, 0.1, 48) == 1             # never below one
    assert next_limit(16, 16, 0.05, True, 0.1, 48) == 18
    assert next_limit(47, 47, 0.05, True, 0.1, 48) == 48
    assert next_limit(16, 16, 0.05, False, 0.1, 48) == 16


def test_reconfigure_keeps_what_was_learned_within_the_new_ceiling():
    adm = DelayAdmission(0.1, 0.25, 48, now=0.0)
    adm.limit = 20
    adm.configure(0.2, 0.5, 64)
    assert adm.limit == 20 and adm.target_s == 0.2 and adm.interval_s == 0.5
    adm.configure(0.2, 0.5, 10)
    assert adm.limit == 10
    adm.configure(0.0, 0.5, 30)                   # off: the fixed count
    assert adm.limit == 30


@pytest.mark.parametrize("args, field", [((-1, 0.25, 4), "queue_delay_target_s"), ((0.1, 0, 4), "queue_delay_interval_s"),
                                         ((0.1, 0.25, 0), "max_inflight"), ((True, 0.25, 4), "queue_delay_target_s"),
                                         ((float("nan"), 0.25, 4), "queue_delay_target_s")])
def test_bad_settings_are_refused_naming_the_field(args, field):
    assert any(e.startswith(field) for e in check_admission(*args))
    with pytest.raises(ValueError, match=field):
        DelayAdmission(*args, now=0.0)


# ----------------------------------------------------------------------------- a simulated overload


def simulate(clients: int, target_s: float, ceiling: int = 48, service_s: float = 0.02, batch: int = 8,
             retry_after_s: float = 1.0, seconds: float = 60.0) -> dict:
    """A closed-loop queue on a virtual clock: ``clients`` each send, wait for the answer, send again (a 503
    waits ``retry_after_s``); one server runs FIFO batches of up to ``batch`` requests in
    ``service_s * (1 + len/4)`` s. Returns throughput, the admitted requests' delays and the 503 count."""
    adm = DelayAdmission(target_s, 0.25, ceiling, now=0.0)
    events = [(0.001 * i, "send", i) for i in range(clients)]   # (time, kind, payload)
    heapq.heapify(events)
    queue: list[float] = []
    busy_until = 0.0
    delays, shed = [], 0
    while events:
        now, kind, what = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "send":
            if adm.try_admit(now):
                queue.append(now)
            else:
                shed += 1
                heapq.heappush(events, (now + retry_after_s, "send", what))
        elif kind == "done":
            for arrived in what:
                adm.finish(now, now - arrived - service_s)
                delays.append(now - arrived)
                heapq.heappush(events, (now, "send", 0))
        if queue and busy_until <= now:
            taken, queue[:] = queue[:batch], queue[batch:]
            busy_until = now + service_s * (1 + len(taken) / 4)
            heapq.heappush(events, (busy_until, "done", taken))
    late = np.array(delays[len(delays) // 4:])   # after the first quarter: the controller's settled state
    return {"rps": len(delays) / seconds, "p50": float(np.percentile(late, 50)), "p99": float(np.percentile(late, 99)),
            "shed": shed}


def test_four_times_the_saturating_load_keeps_goodput_and_bounds_the_delay_a_fixed_count_does_not():
    """12 clients saturate the simulated server (120 req/s, 0.1 s per request); 48 are 4x."""
    saturated = simulate(clients=12, target_s=0.1)
    fixed = simulate(clients=48, target_s=0.0)
    held = simulate(clients=48, target_s=0.1)
    assert saturated["shed"] == 0 and fixed["shed"] == 0 and held["shed"] > 0
    assert held["rps"] >= 0.8 * saturated["rps"] and fixed["rps"] >= 0.8 * saturated["rps"]
    assert fixed["p99"] > 3 * saturated["p99"]            # the fixed count of 48: everyone queues behind 47
    assert held["p99"] <= 3 * saturated["p99"] and held["p99"] < 0.7 * fixed["p99"]
