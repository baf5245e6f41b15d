"""``Pool.send_stream``: a prefix of a sequence on one pooled connection, each message taken
only when it can go at once, ``before_send`` right before it, each outcome told as it comes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from smtpsubmit import Pool, RateLimit, SubmitResult
from tests.servers.fakesmtp import FakeSMTP
from tests.test_send_many import StreamServer, items, server_for


def told_list() -> tuple[list[tuple[int, Any]], Callable[[int, Any], None]]:
    heard: list[tuple[int, Any]] = []
    return heard, lambda i, outcome: heard.append((i, outcome))


def test_every_message_goes_on_one_connection_and_is_told(
    fake_smtp: Callable[..., FakeSMTP],
) -> None:
    server = StreamServer()
    fake = fake_smtp(server)
    heard, told = told_list()
    with Pool(server_for(fake)) as pool:
        assert pool.send_stream(items(5), told) == 5
    assert [i for i, _ in heard] == list(range(5))
    assert all(isinstance(outcome, SubmitResult) for _, outcome in heard)
    assert len(server.delivered) == 5
    assert fake.connections == 1


def test_before_send_false_ends_the_stream_there(fake_smtp: Callable[..., FakeSMTP]) -> None:
    server = StreamServer()
    fake = fake_smtp(server)
    heard, told = told_list()
    asked: list[int] = []

    def before(i: int) -> bool:
        asked.append(i)
        return i < 3

    with Pool(server_for(fake)) as pool:
        assert pool.send_stream(items(5), told, before_send=before) == 3
    assert asked == [0, 1, 2, 3]  # never past the one refused
    assert [i for i, _ in heard] == [0, 1, 2]
    assert len(server.delivered) == 3


def test_a_message_that_would_wait_for_its_rate_token_ends_the_stream(
    fake_smtp: Callable[..., FakeSMTP],
) -> None:
    """Two messages per minute: the first two go, the third would have to wait, so the
    stream ends (no message's end waits behind a sleep) and it is not taken."""
    server = StreamServer()
    fake = fake_smtp(server)
    heard, told = told_list()
    with Pool(server_for(fake), rate_limit=RateLimit(2, 60.0)) as pool:
        assert pool.send_stream(items(4), told) == 2
    assert [i for i, _ in heard] == [0, 1]
    assert len(server.delivered) == 2


def test_items_must_be_what_a_stream_takes(fake_smtp: Callable[..., FakeSMTP]) -> None:
    fake = fake_smtp(StreamServer())
    with Pool(server_for(fake)) as pool:
        with pytest.raises(ValueError, match="send_stream takes"):
            pool.send_stream([b"raw bytes, no envelope"], lambda i, o: None)
        with pytest.raises(ValueError, match="each message must be"):
            pool.send_stream([object()], lambda i, o: None)
    assert fake.connections == 0  # refused before any connection
