"""``send_many(on_outcome=...)``: each message's outcome told once, as soon as it is final,
and never one the end of the stream later takes back (the outbox commits each outcome as it
is told). Runs against the scripted ``StreamServer`` of ``test_send_many`` and aiosmtpd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smtpsubmit import Option, Server
from tests.servers.fakesmtp import FakeSMTP
from tests.test_send_many import (
    BDAT_CAPS,
    DATA_POINTS,
    StreamServer,
    items,
    kinds,
    run_many,
)


class Told:
    """Records what ``on_outcome`` hears, and how much it had heard when each item was drawn."""

    def __init__(self) -> None:
        self.heard: list[tuple[int, Any]] = []
        self.heard_at_draw: list[int] = []

    def __call__(self, index: int, outcome: Any) -> None:
        self.heard.append((index, outcome))

    def feed(self, batch: list[Any]) -> Iterator[Any]:
        for item in batch:
            self.heard_at_draw.append(len(self.heard))
            yield item

    def check_once_each(self, results: list[Any]) -> None:
        """Every message told exactly once, with the outcome the call returns for it."""
        assert sorted(index for index, _ in self.heard) == list(range(len(results)))
        for index, outcome in self.heard:
            assert outcome is results[index]


def run_told(driver: Any, fake: FakeSMTP, batch: list[Any], **kw: Any) -> tuple[list[Any], Told]:
    told = Told()
    results = run_many(driver, fake, told.feed(batch), on_outcome=told, **kw)  # type: ignore[arg-type]
    told.check_once_each(results)
    return results, told


def test_data_stream_tells_each_outcome_while_the_stream_goes_on(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    results, told = run_told(driver, fake_smtp(StreamServer()), items(8))
    assert kinds(results) == ["ok"] * 8
    # Message k is drawn while the server answers message k-1's envelope; message k-2's
    # 354, read before that, proved the end of message k-3 in step: k-2 outcomes told.
    for k in range(2, 8):
        assert told.heard_at_draw[k] >= k - 2, told.heard_at_draw
    assert [index for index, _ in told.heard] == list(range(8))  # in order, as replies came


def test_bdat_stream_tells_each_outcome_once(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    results, _ = run_told(driver, fake_smtp(StreamServer(caps=BDAT_CAPS)), items(8))
    assert kinds(results) == ["ok"] * 8


@pytest.mark.parametrize("k", range(3))
@pytest.mark.parametrize("point", DATA_POINTS)
def test_a_cut_stream_tells_every_outcome_once(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], k: int, point: str
) -> None:
    results, _ = run_told(driver, fake_smtp(StreamServer(cut=(k, point))), items(4))
    assert kinds(results)[:k] == ["ok"] * k


@pytest.mark.parametrize("enhanced", [True, False], ids=["enhanced", "plain-codes"])
def test_replies_out_of_order_never_tell_a_success_taken_back(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], enhanced: bool
) -> None:
    caps = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME") if enhanced else ("PIPELINING",)
    fake = fake_smtp(StreamServer(caps=caps, enhanced=enhanced, early_354=2), check=False)
    results, _ = run_told(driver, fake, items(5))
    # check_once_each: what was told is what is returned, the suspect ones as errors
    assert kinds(results)[2:] == ["protocol"] * 3


def test_a_bad_message_is_told_at_once(driver: Any, fake_smtp: Callable[..., FakeSMTP]) -> None:
    batch: list[Any] = items(3)
    batch.insert(1, (b"no header end", "not an address", ["b@example.org"]))
    results, told = run_told(driver, fake_smtp(StreamServer()), batch)
    assert kinds(results) == ["ok", "bad", "ok", "ok"]
    assert told.heard[0][0] == 1  # refused before anything of it was written: told first


def test_without_pipelining_each_outcome_is_told_after_its_send(
    driver: Any, aiosmtpd_server: Any
) -> None:
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    told = Told()
    batch = items(4)
    (results,) = driver.session(server, [("send_many", (told.feed(batch),), {"on_outcome": told})])
    told.check_once_each(results)
    assert kinds(results) == ["ok"] * 4
    assert told.heard_at_draw == [0, 1, 2, 3]  # one message at a time
