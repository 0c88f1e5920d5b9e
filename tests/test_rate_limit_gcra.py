"""GCRA and the bounded in-memory table: unit and property tests (no I/O, injected clock)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.policies.gcra import NANOSECONDS, Decision, GcraRate, evaluate
from maitred.policies.rate_limit_table import LocalLimiter

START = 12_345 * NANOSECONDS  # an arbitrary monotonic clock reading


def run(rate: GcraRate, times: list[int]) -> list[Decision]:
    """Decisions for one key with requests at ``times`` (ns)."""
    tat: int | None = None
    decisions = []
    for now in times:
        decision, tat = evaluate(rate, tat, now)
        decisions.append(decision)
    return decisions


rates = st.builds(
    GcraRate.of,
    rate=st.integers(1, 1000),
    per=st.sampled_from([0.001, 0.25, 1.0, 1.5, 7.0, 60.0]),
    burst=st.integers(1, 50),
)


# -- burst, steady rate, refill ------------------------------------------------------


def test_interval_is_per_over_rate_rounded_down_to_the_nanosecond() -> None:
    assert GcraRate.of(100, 1.0, 50) == GcraRate(10_000_000, 50, 500_000_000)
    assert GcraRate.of(3, 1.0, 1).interval == 333_333_333
    with pytest.raises(ValueError):
        GcraRate.of(0, 1.0, 1)


@given(rates)
def test_a_fresh_key_admits_exactly_burst_requests_at_once(rate: GcraRate) -> None:
    decisions = run(rate, [START] * (rate.burst + 1))
    assert [d.allowed for d in decisions] == [True] * rate.burst + [False]
    assert [d.remaining for d in decisions[:-1]] == list(range(rate.burst - 1, -1, -1))
    refused = decisions[-1]
    assert refused.retry_after == rate.interval / NANOSECONDS
    assert refused.reset_after == rate.capacity / NANOSECONDS


@given(rates, st.integers(1, 200))
def test_requests_at_exactly_the_rate_are_always_admitted(rate: GcraRate, count: int) -> None:
    times = [START + i * rate.interval for i in range(count)]
    assert all(d.allowed for d in run(rate, times))


@given(rates)
def test_after_a_burst_one_request_per_interval_then_refused_in_between(rate: GcraRate) -> None:
    tat = None
    for _ in range(rate.burst):
        _, tat = evaluate(rate, tat, START)
    for step in range(1, 20):
        now = START + step * rate.interval
        early, _ = evaluate(rate, tat, now - 1)
        assert not early.allowed and early.retry_after == 1 / NANOSECONDS
        decision, tat = evaluate(rate, tat, now)
        assert decision.allowed and decision.remaining == 0


@given(rates, st.integers(0, 100))
def test_waiting_reset_after_makes_the_key_fresh_again(rate: GcraRate, used: int) -> None:
    tat = None
    decision = None
    for _ in range(used + 1):
        decision, tat = evaluate(rate, tat, START)
    assert decision is not None
    later = START + round(decision.reset_after * NANOSECONDS)
    fresh, _ = evaluate(rate, tat, later)
    assert fresh == evaluate(rate, None, later)[0]
    assert fresh.allowed and fresh.remaining == rate.burst - 1


@given(rates, st.integers(0, 60))
def test_remaining_is_exactly_how_many_more_are_admitted_now(rate: GcraRate, used: int) -> None:
    tat = None
    decision = None
    for _ in range(used + 1):
        decision, tat = evaluate(rate, tat, START)
    assert decision is not None
    more = run_from(rate, tat, [START] * (decision.remaining + 1))
    assert [d.allowed for d in more] == [True] * decision.remaining + [False]


def run_from(rate: GcraRate, tat: int | None, times: list[int]) -> list[Decision]:
    decisions = []
    for now in times:
        decision, tat = evaluate(rate, tat, now)
        decisions.append(decision)
    return decisions


# -- against a reference token bucket ---------------------------------------------------


def token_bucket(rate: GcraRate, times: list[int]) -> list[bool]:
    """The textbook token bucket, in exact fractions: full at first, one token per request."""
    tokens = Fraction(rate.burst)
    last = times[0]
    admitted = []
    for now in times:
        tokens = min(Fraction(rate.burst), tokens + Fraction(now - last, rate.interval))
        last = now
        if tokens >= 1:
            tokens -= 1
            admitted.append(True)
        else:
            admitted.append(False)
    return admitted


@settings(max_examples=300)
@given(rates, st.lists(st.integers(0, 3 * NANOSECONDS), min_size=1, max_size=80))
def test_gcra_decides_exactly_like_a_token_bucket(rate: GcraRate, gaps: list[int]) -> None:
    times = []
    now = START
    for gap in gaps:
        now += gap // (1 + gap % 7)  # many tiny gaps, some long ones
        times.append(now)
    assert [d.allowed for d in run(rate, times)] == token_bucket(rate, times)


@given(rates, st.lists(st.integers(0, NANOSECONDS), min_size=1, max_size=80))
def test_no_window_ever_admits_more_than_burst_plus_its_length_over_interval(
    rate: GcraRate, gaps: list[int]
) -> None:
    times = []
    now = START
    for gap in gaps:
        now += gap // 10
        times.append(now)
    admitted = [t for t, d in zip(times, run(rate, times), strict=True) if d.allowed]
    for i, first in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate.burst + (admitted[j] - first) // rate.interval


# -- clock jumps ---------------------------------------------------------------------


@given(rates, st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=60))
def test_any_clock_including_backwards_jumps_keeps_answers_in_bounds(
    rate: GcraRate, offsets: list[int]
) -> None:
    for decision in run(rate, [START + offset for offset in offsets]):
        assert 0 <= decision.remaining <= rate.burst - 1
        assert 0 <= decision.retry_after <= rate.interval / NANOSECONDS
        assert 0 <= decision.reset_after <= rate.capacity / NANOSECONDS
        assert decision.allowed == (decision.retry_after == 0)


@given(rates, st.integers(1, 10**15))
def test_a_backwards_jump_costs_at_most_an_empty_bucket(rate: GcraRate, jump: int) -> None:
    tat = None
    for _ in range(rate.burst):
        _, tat = evaluate(rate, tat, START)
    back = START - jump
    refused, tat = evaluate(rate, tat, back)
    assert not refused.allowed
    # One interval after the jumped-to time, the client may send again.
    assert evaluate(rate, tat, back + rate.interval)[0].allowed


@given(rates, st.integers(0, 10**15))
def test_a_forward_jump_past_the_capacity_leaves_a_fresh_key(rate: GcraRate, extra: int) -> None:
    tat = None
    for _ in range(rate.burst + 3):
        _, tat = evaluate(rate, tat, START)
    later = START + rate.capacity + extra
    assert evaluate(rate, tat, later)[0] == evaluate(rate, None, later)[0]


# -- the bounded table ---------------------------------------------------------------


def test_limiter_check_counts_admitted_requests_per_key() -> None:
    limiter = LocalLimiter(GcraRate.of(2, 1.0, 2), max_keys=10)
    now = 100.0
    assert [limiter.check("a", now).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("b", now).allowed  # another key, its own bucket
    assert limiter.check(b"a", now).allowed  # a header value is not the address "a"
    assert limiter.check("a", now + 0.5).allowed  # refilled one
    assert not limiter.check("a", now + 0.5).allowed


def test_peek_does_not_count_until_stored() -> None:
    limiter = LocalLimiter(GcraRate.of(1, 1.0, 1), max_keys=10)
    now_ns = 5 * NANOSECONDS
    for _ in range(3):
        decision, _ = limiter.peek("a", now_ns)
        assert decision.allowed
    assert len(limiter) == 0
    decision, tat = limiter.peek("a", now_ns)
    limiter.store("a", tat, now_ns)
    assert not limiter.peek("a", now_ns)[0].allowed


def test_idle_keys_are_dropped_as_new_keys_arrive() -> None:
    limiter = LocalLimiter(GcraRate.of(10, 1.0, 1), max_keys=1000)  # idle after 0.1 s
    for i in range(100):
        limiter.check(f"old{i}", 1.0)
    assert len(limiter) == 100
    # Long after, each new key drops up to two idle ones: the table shrinks back.
    for i in range(100):
        limiter.check(f"new{i}", 10.0 + i * 0.2)
        assert len(limiter) <= 100 - i
    assert len(limiter) == 1  # only the newest, still busy


def test_the_cap_forgets_the_least_recently_used_key() -> None:
    limiter = LocalLimiter(GcraRate.of(1, 60.0, 1), max_keys=3)  # keys stay busy 60 s
    for key in ("a", "b", "c"):
        assert limiter.check(key, 1.0).allowed
    assert not limiter.check("a", 1.1).allowed  # "a" is now the most recently used
    assert limiter.check("d", 1.2).allowed  # evicts "b", the least recently used
    assert len(limiter) == 3
    assert limiter.check("b", 1.3).allowed  # forgotten: fresh again (and evicts "c")
    assert not limiter.check("a", 1.4).allowed  # remembered all along
    assert not limiter.check("d", 1.5).allowed


@given(st.lists(st.integers(0, 500), max_size=400), st.integers(1, 50))
def test_the_table_never_holds_more_than_max_keys(keys: list[int], cap: int) -> None:
    limiter = LocalLimiter(GcraRate.of(1, 10.0, 3), max_keys=cap)
    for step, key in enumerate(keys):
        limiter.check(str(key), 1.0 + step * 0.001)
        assert len(limiter) <= cap
