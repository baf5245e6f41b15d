"""``Pool.send_iter`` and ``AsyncPool.send_iter``: outcomes streamed in input order.

Against aiosmtpd (the counted server of ``test_pool``), both drivers: every
message delivered once with its outcome in its place, the input read lazily
(never more than the bound ahead of the caller), and an early stop that
finishes what is in flight, starts nothing more, leaves no thread or task
behind and the pool usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smtpsubmit import AsyncPool, MessageError, Pool, RateLimit, Server, SubmitResult
from smtpsubmit.pool._core import BATCH
from smtpsubmit.reply import Reply
from tests.test_pool import Counting, _subject_of, counted, make_messages

__all__ = ["counted"]  # the aiosmtpd fixture, shared with test_pool

DRIVERS = ["sync", "async"]


class Feed:
    """A lazy input that counts how far it was read, and can fail at one item."""

    def __init__(self, items: list[Any], fail_at: int | None = None) -> None:
        self.items = items
        self.fail_at = fail_at
        self.drawn = 0

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self.items):
            if i == self.fail_at:
                raise RuntimeError("the input broke")
            self.drawn += 1
            yield item


def consume(
    driver: str,
    server: Server,
    feed: Feed,
    stop_after: int | None = None,
    on_outcome: Any = None,
    **kwargs: Any,
) -> tuple[list[Any], str, list[str]]:
    """Run ``send_iter`` over ``feed``; the outcomes taken, the pool's repr after, and
    the names of the pool's workers still running once the iteration ended."""
    if driver == "sync":
        with Pool(server, **kwargs) as pool:
            got: list[Any] = []
            with contextlib.closing(pool.send_iter(feed)) as outcomes:
                for outcome in outcomes:
                    got.append(outcome)
                    if on_outcome:
                        on_outcome(len(got))
                    if stop_after is not None and len(got) >= stop_after:
                        break
            left = [t.name for t in threading.enumerate() if t.name == "smtpsubmit-pool-send"]
            after = pool.send(make_messages(1, "after")[0]) if stop_after else None
            assert after is None or isinstance(after, SubmitResult)
            return got, repr(pool), left

    async def main() -> tuple[list[Any], str, list[str]]:
        async with AsyncPool(server, **kwargs) as pool:
            got: list[Any] = []
            async with contextlib.aclosing(pool.send_iter(feed)) as outcomes:
                async for outcome in outcomes:
                    got.append(outcome)
                    if on_outcome:
                        on_outcome(len(got))
                    if stop_after is not None and len(got) >= stop_after:
                        break
            me = asyncio.current_task()
            left = [
                t.get_coro().__qualname__  # type: ignore[union-attr]
                for t in asyncio.all_tasks()
                if t is not me and "send_iter" in t.get_coro().__qualname__  # type: ignore[union-attr]
            ]
            if stop_after:
                assert isinstance(await pool.send(make_messages(1, "after")[0]), SubmitResult)
            return got, repr(pool), left

    return asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_outcome_in_input_order_and_delivered_once(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    messages = make_messages(300)
    items: list[object] = [*messages[:150], 42, *messages[150:]]  # a bad item, in its place
    got, shown, left = consume(driver, server, Feed(items), max_connections=3)
    assert len(got) == len(items)
    assert isinstance(got[150], MessageError)
    results = got[:150] + got[151:]
    assert all(isinstance(r, SubmitResult) for r in results)
    for message, result in zip(messages, results, strict=True):
        assert _subject_of(handler, result.message_id) == message.subject
    ids = handler.ids()
    assert len(ids) == 300 and len(set(ids)) == 300  # each once
    assert len(handler.per_session()) <= 3
    assert "busy=0 waiting=0" in shown
    assert left == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_input_is_read_lazily_within_the_bound(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    feed = Feed(make_messages(700))
    ahead = 2 * 2 * BATCH  # 2 connections
    seen: list[tuple[int, int]] = []  # (outcomes taken, items drawn) at each outcome
    got, _, _ = consume(
        driver,
        server,
        feed,
        on_outcome=lambda k: seen.append((k, feed.drawn)),
        max_connections=2,
    )
    assert len(got) == 700 and all(isinstance(r, SubmitResult) for r in got)
    assert seen[0][1] < 700  # the first outcome came before the input was read through
    # Drawn at most the bound ahead of what the caller took (plus one batch handed over).
    assert max(drawn - taken for taken, drawn in seen) <= 2 * ahead
    assert len(handler.received) == 700


@pytest.mark.parametrize("driver", DRIVERS)
def test_stopping_early_finishes_in_flight_and_starts_nothing_more(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    messages = make_messages(2000)
    feed = Feed(messages)
    got, shown, left = consume(driver, server, feed, stop_after=10, max_connections=2)
    assert len(got) == 10 and all(isinstance(r, SubmitResult) for r in got)
    assert left == []  # every worker ended when the iteration was closed
    assert "busy=0 waiting=0" in shown  # the connections went back (or were closed)
    assert feed.drawn < 2000  # the rest of the input was never read
    # What reached the server: the 10 taken, plus what was in flight, plus one more
    # (the message sent after the stop) — each once, all from what was drawn.
    ids = handler.ids()
    assert len(ids) == len(set(ids))
    subjects = [_subject_of(handler, i.decode()) for i in ids]
    sent = [s for s in subjects if s != "after0"]
    assert {m.subject for m in messages[:10]} <= set(sent)
    assert set(sent) <= {m.subject for m in messages[: feed.drawn]}
    assert len(sent) <= 10 + 2 * (2 * 2 * BATCH)


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_input_that_raises_stops_the_call_with_its_error(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, _ = counted
    feed = Feed(make_messages(100), fail_at=40)
    with pytest.raises(RuntimeError, match="the input broke"):
        consume(driver, server, feed, max_connections=2)
    if driver == "sync":
        assert not [t for t in threading.enumerate() if t.name == "smtpsubmit-pool-send"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_empty_input_yields_nothing_and_opens_nothing(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    got, shown, left = consume(driver, server, Feed([]))
    assert got == [] and left == []
    assert "open=0" in shown
    assert handler.received == []


def test_a_result_is_slotted_and_shares_its_default_reply() -> None:
    one = SubmitResult("a@b", "s@b", ["r@b"])
    two = SubmitResult("c@b", "s@b", ["r@b"])
    assert not hasattr(one, "__dict__")
    assert one.reply is two.reply and one.reply == Reply(250)
    assert one.refused is not two.refused  # the mutable defaults stay per instance
    with pytest.raises(AttributeError):
        one.size = 3  # type: ignore[misc]


@pytest.mark.parametrize("driver", DRIVERS)
def test_stopping_while_workers_wait_for_the_rate_ends_within_one_wait(
    driver: str, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    feed = Feed(make_messages(40))
    limit = RateLimit(4, 1.0)
    started = time.monotonic()
    got, shown, left = consume(
        driver, server, feed, stop_after=2, max_connections=2, rate_limit=limit
    )
    # Leaving the loop waits at most for a worker's current rate wait (under 1 s), then
    # the message sent after the stop waits for its own token (under 1 s more).
    assert time.monotonic() - started < 4.0
    assert len(got) == 2 and left == [] and "busy=0 waiting=0" in shown
    assert len(handler.received) <= 4 + 1  # one window's worth, and the one sent after
