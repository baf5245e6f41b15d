"""RateLimit: the window guarantee (property tests on an injected clock), the adaptive
backoff, the rate-refusal classifier, and the blocking/async waits on the real clock."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpsubmit import RateLimit, Reply
from smtpsubmit.ratelimit import BACKOFF_FIRST, MIN_RECOVERY, is_rate_refusal


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def run_requests(
    limit: RateLimit, clock: FakeClock, gaps: list[float], costs: list[int], signals: set[int]
) -> list[tuple[float, int]]:
    """Each request waits exactly as long as the limit says, then asks again."""
    grants: list[tuple[float, int]] = []
    for i, (gap, cost) in enumerate(zip(gaps, costs, strict=False)):
        clock.now += gap
        tries = 0
        while (wait := limit.reserve(cost)) > 0:
            clock.now += wait
            tries += 1
            assert tries < 200, "the limit never let the request through"
        grants.append((clock.now, cost))
        if i in signals:
            limit.slow_down(clock.now)
    return grants


def max_in_window(grants: list[tuple[float, int]], per: float, *, weighted: bool) -> int:
    """The most units granted in any half-open window [t, t + per)."""
    best = 0
    for j, (tj, _) in enumerate(grants):
        total = sum((cost if weighted else 1) for ti, cost in grants[: j + 1] if tj - ti < per)
        best = max(best, total)
    return best


@given(
    messages=st.integers(1, 12),
    per=st.floats(0.05, 20.0),
    gaps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=60),
    signals=st.sets(st.integers(0, 59), max_size=4),
)
def test_no_window_of_per_seconds_holds_more_than_messages(
    messages: int, per: float, gaps: list[float], signals: set[int]
) -> None:
    clock = FakeClock()
    limit = RateLimit(messages, per, clock=clock)
    grants = run_requests(limit, clock, gaps, [1] * len(gaps), signals)
    assert len(grants) == len(gaps)
    assert max_in_window(grants, per, weighted=False) <= messages


@given(
    recipients=st.integers(1, 20),
    per=st.floats(0.05, 10.0),
    requests=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 30)), min_size=1, max_size=40),
)
def test_recipient_units_never_exceed_the_limit_in_any_window(
    recipients: int, per: float, requests: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    limit = RateLimit(1000, per, recipients=recipients, clock=clock)
    gaps, costs = [g for g, _ in requests], [c for _, c in requests]
    grants = run_requests(limit, clock, gaps, costs, set())
    # A message with more recipients than the limit goes alone in its window.
    capped = [(t, min(c, recipients)) for t, c in grants]
    assert max_in_window(capped, per, weighted=True) <= recipients


@given(messages=st.integers(1, 10), per=st.floats(0.05, 5.0), n=st.integers(1, 80))
def test_waiting_what_the_limit_says_is_enough(messages: int, per: float, n: int) -> None:
    """The wait is exact: the request after waiting it goes through (no spinning)."""
    clock = FakeClock()
    limit = RateLimit(messages, per, clock=clock)
    for _ in range(n):
        wait = limit.reserve()
        if wait > 0:
            clock.now += wait
            again = limit.reserve()  # 0.0, or at most a rounding step of the clock
            if again > 0:
                assert again < 1e-5
                clock.now += again
                assert limit.reserve() == 0.0


def test_a_burst_of_messages_then_a_wait_of_per_seconds() -> None:
    clock = FakeClock()
    limit = RateLimit(3, 2.0, clock=clock)
    assert [limit.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.reserve() == pytest.approx(2.0)
    clock.now += 1.0
    assert limit.reserve() == pytest.approx(1.0)
    clock.now += 1.0
    assert limit.reserve() == 0.0


def test_a_delivered_message_holds_its_place_until_per_after_its_reply() -> None:
    """What the server counts is arrivals: a grant answered at 0.4 s counts until 1.4 s."""
    clock = FakeClock()
    limit = RateLimit(1, 1.0, clock=clock)
    grant = limit._grant()
    assert grant is not None and limit._grant() is None
    clock.now += 0.4
    limit._delivered(grant)
    limit._delivered(grant)  # once only
    clock.now += 0.6
    assert limit.reserve() == pytest.approx(0.4)  # without the reply it would go now
    clock.now += 0.41
    assert limit.reserve() == 0.0


def test_a_grant_never_delivered_expires_as_before() -> None:
    clock = FakeClock()
    limit = RateLimit(2, 1.0, recipients=3, clock=clock)
    assert limit._grant(2) is not None
    clock.now += 1.0
    assert limit._grant(3) is not None  # both windows free again
    clock.now += 0.5
    assert limit.reserve(1) == pytest.approx(0.5)  # 3 recipient units in (0.5, 1.5]


def test_a_reply_after_more_than_per_counts_the_message_again_from_the_reply() -> None:
    clock = FakeClock()
    limit = RateLimit(1, 1.0, clock=clock)
    slow = limit._grant()
    assert slow is not None
    clock.now += 1.5  # still in flight; its entry expired
    limit._delivered(slow)
    assert limit.reserve() == pytest.approx(1.0)  # counted from its reply on


def test_connections_per_minute_is_a_60_second_window() -> None:
    clock = FakeClock()
    limit = RateLimit(100, 1.0, connections_per_minute=2, clock=clock)
    assert limit.reserve_connection() == 0.0
    clock.now += 10
    assert limit.reserve_connection() == 0.0
    assert limit.reserve_connection() == pytest.approx(50.0)
    clock.now += 50
    assert limit.reserve_connection() == 0.0


def test_a_rate_refusal_pauses_halves_and_recovers_gradually() -> None:
    clock = FakeClock()
    limit = RateLimit(8, 1.0, clock=clock)
    assert limit.slow_down() is True
    assert limit.slowdown == 2
    assert limit.reserve() == pytest.approx(BACKOFF_FIRST)  # paused
    clock.now += BACKOFF_FIRST
    granted = [limit.reserve() for _ in range(5)]
    assert granted[:4] == [0.0] * 4 and granted[4] > 0  # 8 halved to 4 per second
    # A second signal doubles the pause and halves again.
    clock.now += 1.0
    assert limit.slow_down() is True
    assert limit.slowdown == 4
    assert limit.reserve() == pytest.approx(2 * BACKOFF_FIRST)
    # Each recovery period without a signal undoes one halving.
    clock.now += MIN_RECOVERY
    assert limit.slowdown == 2
    clock.now += MIN_RECOVERY
    assert limit.slowdown == 1
    assert [limit.reserve() for _ in range(8)] == [0.0] * 8


def test_refusals_of_requests_let_through_before_the_slow_down_count_once() -> None:
    clock = FakeClock()
    limit = RateLimit(10, 1.0, clock=clock)
    granted = [clock.now + i * 0.001 for i in range(4)]  # four connections, one instant
    clock.now += 0.01
    assert limit.slow_down(granted[0]) is True
    assert [limit.slow_down(t) for t in granted[1:]] == [False, False, False]
    assert limit.slowdown == 2


def test_backoff_only_limit_pauses_but_never_counts() -> None:
    clock = FakeClock()
    limit = RateLimit._backoff_only(clock)
    assert all(limit.reserve() == 0.0 for _ in range(10_000))
    limit.slow_down()
    assert limit.reserve() == pytest.approx(BACKOFF_FIRST)
    assert "backoff only" in repr(limit)


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "expected"),
    [
        (450, "4.7.1", "Error: too much mail from 127.0.0.1", True),  # Postfix message rate
        (450, "4.7.1", "Error: too many recipients from 127.0.0.1", True),  # recipient rate
        (421, "4.7.0", "mx Error: too many connections from 127.0.0.1", True),
        (451, "4.7.1", "Rate limit exceeded, try again later", True),
        (452, None, "Throttled: slow down", True),
        (421, "4.7.28", "unusual rate of unsolicited mail", True),
        (550, "5.7.1", "too many recipients", False),  # permanent: not a rate signal
        (450, "4.2.0", "mailbox busy", False),
        (451, "4.3.0", "generated error", False),  # "rate" inside a word does not count
        (250, None, "ok rate", False),
    ],
)
def test_rate_refusals_are_recognised(
    code: int, enhanced: str | None, text: str, expected: bool
) -> None:
    assert is_rate_refusal(Reply(code, text, enhanced)) is expected
    assert is_rate_refusal(None) is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": 0, "per": 1.0},
        {"messages": 1, "per": 0},
        {"messages": 1, "per": float("inf")},
        {"messages": 1, "per": 1.0, "recipients": 0},
        {"messages": 1, "per": 1.0, "connections_per_minute": -1},
        {"messages": True, "per": 1.0},
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)  # type: ignore[arg-type]


def test_acquire_from_threads_keeps_the_rate_on_the_real_clock() -> None:
    limit = RateLimit(5, 0.2)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            granted = limit.acquire()
            with lock:
                stamps.append(granted)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(stamps) == 15
    assert time.monotonic() - start >= 0.4  # 15 grants at 5 per 0.2 s need two refills
    stamps.sort()
    assert all(stamps[k + 5] - stamps[k] >= 0.2 for k in range(10))


def test_aacquire_awaits_without_blocking_the_loop() -> None:
    limit = RateLimit(4, 0.2)

    async def main() -> tuple[list[float], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        stamps = list(await asyncio.gather(*(limit.aacquire() for _ in range(12))))
        tick.cancel()
        return stamps, ticks

    stamps, ticks = asyncio.run(main())
    stamps.sort()
    assert all(stamps[k + 4] - stamps[k] >= 0.2 for k in range(8))
    assert ticks >= 20  # the loop kept running while the grants waited
