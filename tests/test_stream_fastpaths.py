"""The short paths a stream of messages takes give the bytes the general paths give.

Each shortcut (the encoder skipping its line-end search for a ready message,
the whole-message encoding, cached envelope commands and reply lines, the
non-blocking plain socket) is checked against the general path it replaces,
or against the timeout it must still honour.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpsubmit import Message, Option, Server, SmtpTimeout
from smtpsubmit.batch import send_many_flow
from smtpsubmit.errors import ProtocolError
from smtpsubmit.prepare import crlf_only, prepare_submission
from smtpsubmit.protocol import Capabilities, DataEncoder, LineEndingNormalizer, ReplyParser
from smtpsubmit.session import Send, Session
from smtpsubmit.transport import SyncStream
from tests.test_send_many import DATA_CAPS, SENDER, MemoryPeer, kinds, raw

# Lines without CR or LF (some starting with a dot), joined with CRLF: a message in the
# form a ready message has once it was read.
line = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
canonical = st.lists(st.tuples(st.booleans(), line), max_size=12).map(
    lambda lines: b"".join((b"." if dot else b"") + text + b"\r\n" for dot, text in lines)
)


def encoded(chunks: list[bytes], *, crlf: bool) -> tuple[bytes, int]:
    encoder = DataEncoder(crlf=crlf)
    out = b"".join([*(encoder.feed(chunk) for chunk in chunks), encoder.end()])
    return out, encoder.octets


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(canonical, st.lists(st.integers(0, 400), max_size=6))
def test_crlf_encoder_matches_the_searching_one_however_split(data: bytes, cuts: list[int]) -> None:
    """A CRLF split between chunks is put back together without the search."""
    chunks = split(data, cuts)
    assert encoded(chunks, crlf=True) == encoded(chunks, crlf=False)
    plain, trusted = LineEndingNormalizer(), LineEndingNormalizer(crlf=True)
    assert (
        b"".join(map(trusted.feed, chunks)) + trusted.flush()
        == b"".join(map(plain.feed, chunks)) + plain.flush()
    )


@given(canonical.filter(bool))
def test_whole_message_encoding_is_the_encoders(data: bytes) -> None:
    out, octets = encoded([data], crlf=False)
    assert DataEncoder.whole(data) == out
    assert octets == len(data)


def test_whole_message_encoding_refuses_an_unended_line() -> None:
    with pytest.raises(ValueError, match="CRLF"):
        DataEncoder.whole(b"no line end")


class Offers:
    capabilities = Capabilities({"8BITMIME": ""})


def test_only_ready_messages_skip_the_line_end_search() -> None:
    _, ready = prepare_submission(
        b"Subject: x\n\nbare LF\n", Offers(), sender=SENDER, recipients=["b@example.org"]
    )
    assert crlf_only(ready)
    assert b"".join(ready()) == b"Subject: x\r\n\r\nbare LF\r\n"  # normalised when read
    composed = Message(sender=SENDER, to="b@example.org", subject="x", text="hi")
    _, source = prepare_submission(composed, Offers())
    assert not crlf_only(source)
    assert not crlf_only(lambda: iter([b"bare\n"]))


def test_cached_reply_lines_respect_a_smaller_line_limit() -> None:
    line = b"250 " + b"x" * 100 + b"\r\n"
    default = ReplyParser()
    default.feed(line)
    assert default.next_reply() is not None  # now cached for parsers with default limits
    strict = ReplyParser(max_line=50)
    strict.feed(line)
    with pytest.raises(ProtocolError, match="longer than"):
        strict.next_reply()


class Recording(MemoryPeer):
    """The in-memory peer, keeping every byte the client wrote."""

    def __init__(self, *caps: str) -> None:
        super().__init__(*caps)
        self.written = b""

    def run(self, flow: Any) -> Any:
        def tap(flow: Any) -> Any:
            value: Any = None
            while True:
                try:
                    op = flow.send(value)
                except StopIteration as stop:
                    return stop.value
                if isinstance(op, Send):
                    self.written += op.data
                value = yield op

        return super().run(tap(flow))


def test_each_message_gets_its_own_envelope_when_envelopes_repeat_and_vary() -> None:
    """Cached command groups: the MAIL/RCPT of every message are its own, SIZE included."""
    peer = Recording(*DATA_CAPS, "SIZE 100000")
    session = Session(Server("mem.test", options=Option.EXTENDED, local_hostname="client.test"))
    peer.run(session.open("client.test"))
    senders = ["a@example.org", "b@example.org", "a@example.org"]
    batch = [
        (raw(i, b"x" * (i % 2)), senders[i % 3], [f"r{i % 2}@example.org", "all@example.org"])
        for i in range(12)
    ]
    results = peer.run(send_many_flow(session, batch))
    assert kinds(results) == ["ok"] * 12
    mails = re.findall(rb"MAIL FROM:<([^>]*)> SIZE=(\d+)", peer.written)
    rcpts = re.findall(rb"RCPT TO:<([^>]*)>", peer.written)
    assert [m.decode() for m, _ in mails] == [senders[i % 3] for i in range(12)]
    assert [int(size) for _, size in mails] == [r.size for r in results]
    assert [r.decode() for r in rcpts] == [
        a for i in range(12) for a in (f"r{i % 2}@example.org", "all@example.org")
    ]


def test_non_blocking_send_still_times_out() -> None:
    """A peer that reads nothing: the write gives up after the time it was given."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        stream = SyncStream.connect(Server("127.0.0.1", port=listener.getsockname()[1]), 5)
        peer, _ = listener.accept()
        try:
            started = time.monotonic()
            with pytest.raises(SmtpTimeout) as info:
                stream.send(b"x" * 50_000_000, "data", 0.3)
            assert 0.2 < time.monotonic() - started < 3
            assert info.value.stage == "data"
        finally:
            stream.abort()
            peer.close()
    finally:
        listener.close()
