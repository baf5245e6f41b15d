"""send_many: streamed transactions, errors as values, the exact lost-connection split.

The scripted ``StreamServer`` below follows RFC 2920/3030 the way Postfix does (a MAIL
while a transaction is open gets 503, a BDAT after a refused envelope is read and
refused) and can cut the connection at any stage of any message. Real peers
(aiosmtpd, Postfix) check byte-exact delivery of long streams.
"""

from __future__ import annotations

import gc
import io
import re
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from smtpsubmit import (
    DeliveryStatusUnknown,
    Message,
    MessageError,
    Option,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    Server,
    ServerDisconnected,
    SubmitResult,
)
from smtpsubmit.batch import send_many_flow
from smtpsubmit.session import Send, Session
from smtpsubmit.transport import AsyncStream, SyncStream
from tests import drivers
from tests.servers.fakesmtp import FakeSMTP, Step, _Conn, _Ended, ehlo_reply
from tests.servers.postfix import CATCHALL
from tests.test_readme import python_blocks, readme_server, run_block  # noqa: F401

SENDER = "a@example.org"
RCPT = "b@example.org"
DATA_CAPS = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME")
BDAT_CAPS = ("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "8BITMIME")


def raw(i: int, body: bytes = b"") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: message {i}\r\n"
        f"Message-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n.a dot line\r\n"
    ).encode() + body


def items(n: int = 5, **senders: str) -> list[tuple[bytes, str, list[str]]]:
    return [(raw(i), senders.get(f"s{i}", SENDER), [RCPT]) for i in range(n)]


@dataclass
class StreamServer(Step):
    """A pipelining ESMTP server with Postfix's transaction rules and a cut switch.

    ``cut=(k, point)``: close the connection at ``point`` of message ``k`` (counted by
    MAIL commands): ``mail``/``rcpt``/``data`` after reading that command and before
    answering it, ``after-mail``/``after-rcpt``/``after-data`` after answering it,
    ``mid-data`` after 100 octets of its data, ``dot`` after the end of its data and
    before the reply, ``reply`` after the reply. ``preread=n``: read n whole BDAT
    transactions before answering anything (the client must not wait for replies).
    ``extra``/``early``: desync — an extra reply after the reply to (k, point), or
    DATA's 354 sent before the RCPT reply of message k.
    """

    caps: tuple[str, ...] = DATA_CAPS
    refuse_mail: frozenset[str] = frozenset()
    refuse_rcpt: frozenset[str] = frozenset()
    cut: tuple[int, str] | None = None
    preread: int = 0
    extra: tuple[int, str] | None = None
    early_354: int | None = None
    enhanced: bool = True
    delivered: list[bytes] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)

    def _reply(self, c: _Conn, code: int, enhanced: str, text: str) -> None:
        c.send(f"{code} {enhanced + ' ' if self.enhanced else ''}{text}\r\n".encode())

    def run(self, c: _Conn) -> None:
        c.send(b"220 stream.test ESMTP\r\n")
        assert c.read_line(5, "EHLO").startswith(b"EHLO ")
        c.send(ehlo_reply(*self.caps))
        if self.preread:
            deadline = time.monotonic() + 5
            while _whole_transactions(bytes(c.buf)) < self.preread:
                c.fill(deadline, f"{self.preread} whole BDAT transactions")
        self.k = -1
        self.open = self.mail_ok = self.failed = False
        self.rcpts = 0
        self.parts: list[bytes] = []
        while True:
            line = c.read_line(5, "a command")
            self.commands.append(line)
            verb = line[:4].upper()
            if verb == b"QUIT":
                c.send(b"221 2.0.0 Bye\r\n")
                c.close(drain=0.5)
                raise _Ended("quit")
            handler = getattr(self, f"_on_{verb.decode().lower()}", None)
            if handler is None:
                self._reply(c, 502, "5.5.2", "not recognized")
            else:
                handler(c, line)

    def _cut(self, c: _Conn, point: str) -> None:
        if self.cut == (self.k, point):
            c.close()
            raise _Ended("cut")

    def _after(self, c: _Conn, point: str) -> None:
        if self.extra == (self.k, point):
            self._reply(c, 250, "2.0.0", "Ok (a reply too many)")
        self._cut(c, f"after-{point}" if point != "end" else "reply")

    def _on_rset(self, c: _Conn, line: bytes) -> None:
        self.open = self.mail_ok = self.failed = False
        self.parts = []
        self._reply(c, 250, "2.0.0", "Ok")

    def _on_noop(self, c: _Conn, line: bytes) -> None:
        self._reply(c, 250, "2.0.0", "Ok")

    def _on_mail(self, c: _Conn, line: bytes) -> None:
        self.k += 1
        self._cut(c, "mail")
        sender = re.search(rb"<([^>]*)>", line)[1].decode()  # type: ignore[index]
        if self.open:
            self._reply(c, 503, "5.5.1", "Error: nested MAIL command")
        elif sender in self.refuse_mail:
            self._reply(c, 550, "5.1.0", "sender refused")
        else:
            self.open = self.mail_ok = True
            self.failed, self.rcpts, self.parts = False, 0, []
            self._reply(c, 250, "2.1.0", "Ok")
        self._after(c, "mail")

    def _on_rcpt(self, c: _Conn, line: bytes) -> None:
        self._cut(c, "rcpt")
        address = re.search(rb"<([^>]*)>", line)[1].decode()  # type: ignore[index]
        if self.early_354 == self.k:
            c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        if not self.mail_ok:
            self._reply(c, 503, "5.5.1", "Error: need MAIL command")
        elif address in self.refuse_rcpt:
            self._reply(c, 550, "5.1.1", "recipient refused")
        else:
            self.rcpts += 1
            self._reply(c, 250, "2.1.5", "Ok")
        self._after(c, "rcpt")

    def _on_data(self, c: _Conn, line: bytes) -> None:
        self._cut(c, "data")
        if self.early_354 == self.k:
            data = c.read_data(5)
            self.delivered.append(data)
            self._reply(c, 250, "2.0.0", "Ok: queued")
            return
        if not self.mail_ok:
            self._reply(c, 503, "5.5.1", "Error: need RCPT command")
            return
        if not self.rcpts:
            self._reply(c, 554, "5.5.1", "Error: no valid recipients")
            return
        c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self._cut(c, "after-data")
        if self.cut == (self.k, "mid-data"):
            c.read_exact(100, 5, "100 octets of data")
            c.close()
            raise _Ended("cut")
        self.delivered.append(c.read_data(10))
        self.open = self.mail_ok = False
        self._cut(c, "dot")
        self._reply(c, 250, "2.0.0", "Ok: queued")
        self._after(c, "end")

    def _on_bdat(self, c: _Conn, line: bytes) -> None:
        self._cut(c, "data")
        words = line.split()
        size, last = int(words[1]), len(words) > 2
        if self.cut == (self.k, "mid-data"):
            c.read_exact(min(size, 100), 5, "100 octets of a chunk")
            c.close()
            raise _Ended("cut")
        chunk = c.read_exact(size, 10, "a BDAT chunk")
        if not self.mail_ok or self.failed:
            self.failed = True  # RFC 3030: refused, the octets discarded
            self._reply(c, 503, "5.5.1", "Error: need MAIL command")
            return
        if not self.rcpts:
            self.failed = True
            self._reply(c, 554, "5.5.1", "Error: no valid recipients")
            return
        self.parts.append(chunk)
        if not last:
            self._reply(c, 250, "2.0.0", f"Ok: {size} bytes")
            return
        self.delivered.append(b"".join(self.parts))
        self.open = self.mail_ok = False
        self._cut(c, "dot")
        self._reply(c, 250, "2.0.0", "Ok: queued")
        self._after(c, "end")


def _whole_transactions(buf: bytes) -> int:
    """How many BDAT ... LAST chunks in ``buf`` have all their octets."""
    count, pos = 0, 0
    while (end := buf.find(b"\r\n", pos)) >= 0:
        line = buf[pos:end]
        pos = end + 2
        if line.upper().startswith(b"BDAT "):
            words = line.split()
            pos += int(words[1])
            if pos > len(buf):
                break
            count += len(words) > 2
    return count


def server_for(fake: FakeSMTP, **kw: Any) -> Server:
    return drivers.server_for(fake, timeout=5, **kw)


def run_many(driver: Any, fake: FakeSMTP, batch: list[Any], **kw: Any) -> list[Any]:
    (results,) = driver.session(server_for(fake), [("send_many", (batch,), kw)])
    assert isinstance(results, list), results
    return results


def kinds(results: list[Any]) -> list[str]:
    names = {
        SubmitResult: "ok",
        DeliveryStatusUnknown: "unknown",
        ServerDisconnected: "disconnected",
        ProtocolError: "protocol",
        SenderRefused: "sender",
        RecipientsRefused: "recipients",
        MessageError: "bad",
    }
    return [names.get(type(r), type(r).__name__) for r in results]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Sizes of every write the client makes, both drivers."""
    sizes: list[int] = []
    sync_send, async_send = SyncStream.send, AsyncStream.send

    def counted(self: SyncStream, data: bytes, *args: Any) -> None:
        sizes.append(len(data))
        sync_send(self, data, *args)

    async def acounted(self: AsyncStream, data: bytes, *args: Any) -> None:
        sizes.append(len(data))
        await async_send(self, data, *args)

    monkeypatch.setattr(SyncStream, "send", counted)
    monkeypatch.setattr(AsyncStream, "send", acounted)
    yield sizes


# -- streaming: one write per message, none waited for with CHUNKING ---------------------


def test_data_stream_one_write_per_message(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], writes: list[int]
) -> None:
    server = StreamServer()
    fake = fake_smtp(server)
    results = run_many(driver, fake, items(5))
    assert kinds(results) == ["ok"] * 5
    assert [r.message_id for r in results] == [f"m{i}@example.org" for i in range(5)]
    # EHLO, one write per message (its envelope with the previous message's end), the last
    # end on its own, QUIT.
    assert len(writes) == 1 + 5 + 1 + 1
    assert [d.replace(b"\r\n..", b"\r\n.") for d in server.delivered] == [
        raw(i) + b".\r\n" for i in range(5)
    ]


def test_bdat_stream_needs_no_reply_before_writing_everything(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], writes: list[int]
) -> None:
    server = StreamServer(caps=BDAT_CAPS, preread=5)  # answers nothing before all 5 arrived
    fake = fake_smtp(server)
    results = run_many(driver, fake, items(5))
    assert kinds(results) == ["ok"] * 5
    assert len(writes) == 1 + 5 + 1
    assert server.delivered == [raw(i) for i in range(5)]
    # An RSET in front of every MAIL while an earlier transaction is in flight.
    verbs = [c.split()[0].upper() for c in server.commands]
    assert verbs.count(b"RSET") == 4


def test_bdat_window_limits_transactions_in_flight(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    # The server reads two whole transactions and hangs up without a reply: the client
    # must not have started a third.
    fake = fake_smtp(StreamServer(caps=BDAT_CAPS, preread=2, cut=(0, "mail")))
    results = run_many(driver, fake, items(5), window=2)
    assert kinds(results) == ["unknown"] * 2 + ["disconnected"] * 3
    assert fake.transcript[0].count(b"MAIL FROM") == 2


def test_bdat_window_counts_bytes(driver: Any, fake_smtp: Callable[..., FakeSMTP]) -> None:
    fake = fake_smtp(StreamServer(caps=BDAT_CAPS, preread=2, cut=(0, "mail")))
    size = len(raw(0))
    results = run_many(driver, fake, items(5), window=100, window_bytes=2 * size + 1)
    assert kinds(results) == ["unknown"] * 2 + ["disconnected"] * 3


# -- the failure split: a cut at every stage of a 5-message stream -----------------------

DATA_POINTS = [
    "mail",
    "after-mail",
    "rcpt",
    "after-rcpt",
    "data",
    "after-data",
    "mid-data",
    "dot",
    "reply",
]


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("point", DATA_POINTS)
def test_data_stream_cut_everywhere(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], k: int, point: str
) -> None:
    fake = fake_smtp(StreamServer(cut=(k, point)))
    results = run_many(driver, fake, items(5))
    # Before the 354 the data of message k was not written; after it, the client wrote
    # the whole message and its end and can only say the outcome is unknown.
    if point == "reply":
        at_k = "ok"
    elif point in ("after-data", "mid-data", "dot"):
        at_k = "unknown"
    else:
        at_k = "disconnected"
    assert kinds(results) == ["ok"] * k + [at_k] + ["disconnected"] * (4 - k)
    for result in results[k + 1 :]:
        assert result.is_temporary


BDAT_POINTS = ["mail", "after-mail", "rcpt", "after-rcpt", "data", "dot", "reply"]


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("point", BDAT_POINTS)
def test_bdat_stream_cut_everywhere(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], k: int, point: str
) -> None:
    # Every transaction was written whole before the server answered anything: each
    # one without its reply is unknown, never "safe to retry".
    fake = fake_smtp(StreamServer(caps=BDAT_CAPS, preread=5, cut=(k, point)))
    results = run_many(driver, fake, items(5))
    at_k = "ok" if point == "reply" else "unknown"
    assert kinds(results) == ["ok"] * k + [at_k] + ["unknown"] * (4 - k)


@pytest.mark.parametrize("caps", [DATA_CAPS, BDAT_CAPS], ids=["data", "bdat"])
@pytest.mark.parametrize("k", [0, 2])
def test_cut_while_data_is_written_is_safe_to_retry(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], caps: tuple[str, ...], k: int
) -> None:
    # A 12 MB message cannot fit in the socket buffers: the server hangs up after 100
    # octets of it, so the client's write fails and that message was not sent whole.
    batch = items(5)
    batch[k] = (raw(k, (b"y" * 998 + b"\r\n") * 12_000), SENDER, [RCPT])
    fake = fake_smtp(StreamServer(caps=caps, cut=(k, "mid-data")), rcvbuf=4096)
    # window=1: the replies to the messages before k are in before k is written.
    results = run_many(driver, fake, batch, window=1)
    assert kinds(results) == ["ok"] * k + ["disconnected"] * (5 - k)


# -- refusals in the middle do not disturb the others -----------------------------------


@pytest.mark.parametrize("caps", [DATA_CAPS, BDAT_CAPS], ids=["data", "bdat"])
def test_refusals_in_the_middle(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], caps: tuple[str, ...]
) -> None:
    server = StreamServer(
        caps=caps,
        refuse_mail=frozenset({"bad@example.org"}),
        refuse_rcpt=frozenset({"nobody@example.org", "gone@example.org"}),
    )
    fake = fake_smtp(server)
    batch: list[Any] = items(7, s1="bad@example.org")
    batch[3] = (raw(3), SENDER, ["nobody@example.org"])  # every recipient refused
    batch[4] = (raw(4), SENDER, [RCPT, "gone@example.org"])  # one of two refused
    batch[5] = (raw(5), "not an address", [RCPT])  # bad input: nothing of it sent
    results = run_many(driver, fake, batch)
    assert kinds(results) == ["ok", "sender", "ok", "recipients", "ok", "bad", "ok"]
    assert results[4].accepted == [RCPT]
    assert results[4].refused["gone@example.org"].code == 550
    delivered = [d.replace(b"\r\n..", b"\r\n.").removesuffix(b".\r\n") for d in server.delivered]
    assert delivered == [raw(0), raw(2), raw(4), raw(6)]
    assert b"not an address" not in fake.transcript[0]


def test_wrong_354_without_recipients_gets_an_empty_message(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    class Lenient(StreamServer):
        def _on_data(self, c: _Conn, line: bytes) -> None:
            if self.rcpts or not self.mail_ok:
                super()._on_data(c, line)
                return
            c.send(b"354 go ahead\r\n")
            assert c.read_data(5) == b".\r\n"  # the body never follows
            self._reply(c, 554, "5.5.1", "Error: no valid recipients")

    server = Lenient(refuse_rcpt=frozenset({"nobody@example.org"}))
    fake = fake_smtp(server)
    batch: list[Any] = items(3)
    batch[1] = (raw(1), SENDER, ["nobody@example.org"])
    results = run_many(driver, fake, batch)
    assert kinds(results) == ["ok", "recipients", "ok"]
    assert len(server.delivered) == 2


def test_452_deferred_recipients_are_reported_refused(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    class TwoPerMessage(StreamServer):
        def _on_rcpt(self, c: _Conn, line: bytes) -> None:
            if self.rcpts >= 2:
                self._reply(c, 452, "4.5.3", "Too many recipients")
                return
            super()._on_rcpt(c, line)

    fake = fake_smtp(TwoPerMessage(caps=BDAT_CAPS))
    many = ["r1@example.org", "r2@example.org", "r3@example.org"]
    results = run_many(driver, fake, [(raw(0), SENDER, many), (raw(1), SENDER, [RCPT])])
    assert kinds(results) == ["ok", "ok"]
    assert results[0].accepted == many[:2]
    assert results[0].refused["r3@example.org"].code == 452
    assert results[0].refused["r3@example.org"].is_temporary


# -- a server out of step: ProtocolError, never a success for the wrong message ---------


@pytest.mark.parametrize("enhanced", [True, False], ids=["enhanced", "plain-codes"])
@pytest.mark.parametrize("point", ["end", "mail", "rcpt"])
def test_data_stream_reply_too_many(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], enhanced: bool, point: str
) -> None:
    caps = DATA_CAPS if enhanced else ("PIPELINING", "8BITMIME")
    fake = fake_smtp(StreamServer(caps=caps, enhanced=enhanced, extra=(1, point)), check=False)
    results = run_many(driver, fake, items(5))
    # Message 0 is proven by the next reply that only fits where it came: DATA's 354 of
    # message 1, or (enhanced codes) the 2.1.0 of message 1's MAIL. Without either it is
    # not trusted either.
    proven = enhanced or point == "end"
    assert kinds(results) == ["ok" if proven else "protocol"] + ["protocol"] * 4


@pytest.mark.parametrize("point", ["end", "mail", "rcpt"])
def test_bdat_stream_reply_too_many(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], point: str
) -> None:
    fake = fake_smtp(StreamServer(caps=BDAT_CAPS, preread=5, extra=(1, point)), check=False)
    results = run_many(driver, fake, items(5))
    found = kinds(results)
    assert found[0] == "ok"
    assert "ok" not in found[1:]
    assert set(found[2:]) == {"protocol"}


@pytest.mark.parametrize("enhanced", [True, False], ids=["enhanced", "plain-codes"])
def test_reply_out_of_order(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], enhanced: bool
) -> None:
    caps = DATA_CAPS if enhanced else ("PIPELINING", "8BITMIME")
    fake = fake_smtp(StreamServer(caps=caps, enhanced=enhanced, early_354=2), check=False)
    results = run_many(driver, fake, items(5))
    # With enhanced codes message 1 is proven by message 2's MAIL reply; without, only
    # a 354 proves the replies in step and message 1 is not trusted.
    expected = ["ok", "ok"] if enhanced else ["ok", "protocol"]
    assert kinds(results) == [*expected, *["protocol"] * 3]


# -- fallback, input forms -------------------------------------------------------------


def test_without_pipelining_each_message_is_a_send(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], writes: list[int]
) -> None:
    server = StreamServer(caps=("8BITMIME",), refuse_mail=frozenset({"bad@example.org"}))
    fake = fake_smtp(server)
    results = run_many(driver, fake, items(4, s2="bad@example.org"))
    assert kinds(results) == ["ok", "ok", "sender", "ok"]
    assert len(server.delivered) == 3
    assert len(writes) > 1 + 4 * 3  # MAIL, RCPT, DATA and the data each written alone


def test_fallback_stops_at_a_lost_connection(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    fake = fake_smtp(StreamServer(caps=("8BITMIME",), cut=(1, "dot")))
    results = run_many(driver, fake, items(4))
    assert kinds(results) == ["ok", "unknown", "disconnected", "disconnected"]


@dataclass
class Ready:
    raw: bytes
    sender: str
    recipients: list[str]


def test_input_forms(driver: Any, fake_smtp: Callable[..., FakeSMTP]) -> None:
    server = StreamServer()
    fake = fake_smtp(server)
    message = Message(sender=SENDER, to=[RCPT], subject="composed", text="hello")
    batch: list[Any] = [message, (raw(1), SENDER, [RCPT]), Ready(raw(2), SENDER, [RCPT]), 42]
    results = run_many(driver, fake, batch)
    assert kinds(results) == ["ok", "ok", "ok", "bad"]
    assert results[0].accepted == [RCPT]
    assert b"Subject: composed" in server.delivered[0]


def test_connection_is_reusable_after_a_clean_stream(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    server = StreamServer(refuse_rcpt=frozenset({"nobody@example.org"}))
    fake = fake_smtp(server)
    batch: list[Any] = [*items(2), (raw(2), SENDER, ["nobody@example.org"])]
    out = driver.session(
        server_for(fake),
        [
            ("send_many", (batch,), {}),
            ("send", (raw(3),), {"sender": SENDER, "recipients": [RCPT]}),
        ],
    )
    assert kinds(out[0]) == ["ok", "ok", "recipients"]
    assert isinstance(out[1], SubmitResult)
    verbs = [c.split()[0].upper() for c in server.commands]
    assert verbs[-5:] == [b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT"]  # the last envelope failed


# -- real peers: byte-exact delivery of long streams -------------------------------------


def stream_of(n: int, tag: str) -> list[tuple[bytes, str, list[str]]]:
    """n distinct messages with tricky lines (a leading dot, a bare "." line, 8-bit text)."""
    out = []
    for i in range(n):
        body = f"line one of {i}\r\n.\r\n..two dots\r\nend {'é' * (i % 3)}\r\n".encode()
        head = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {tag} {i}\r\n"
        head += f"Message-ID: <{tag}.{i}@example.org>\r\n\r\n"
        out.append((head.encode() + body, SENDER, [f"{tag}@example.org"]))
    return out


def test_aiosmtpd_stream_of_1000_byte_exact(driver: Any, aiosmtpd_server: Any) -> None:
    # aiosmtpd offers no PIPELINING: the fallback, one send per message, same results.
    batch = stream_of(1000, f"aio{driver.name}")
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    (results,) = driver.session(server, [("send_many", (batch,), {})])
    assert kinds(results) == ["ok"] * 1000
    received = aiosmtpd_server.wait_for(1000, timeout=20)
    assert [m.original_content for m in received] == [item[0] for item in batch]


@pytest.mark.postfix
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_postfix_stream_of_1000_byte_exact(driver: Any, postfix: Any, chunking: bool) -> None:
    tag = f"pf{driver.name}{'bdat' if chunking else 'data'}{time.monotonic_ns()}"
    batch = stream_of(1000, tag)
    server = Server(
        postfix.host,
        port=postfix.plain,
        options=Option.EXTENDED,
        timeout=20,
        disable_extensions=frozenset() if chunking else frozenset({"CHUNKING"}),
    )
    (results,) = driver.session(server, [("send_many", (batch,), {})])
    assert kinds(results) == ["ok"] * 1000
    assert all(r.reply.code == 250 and "queued as" in r.reply.text for r in results)
    deadline = time.monotonic() + 30
    while True:
        stored = [m for m in postfix.maildir_messages(CATCHALL) if tag.encode() in m]
        if len(stored) >= 1000 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    by_id = {re.search(rb"Message-ID: <([^>]+)>", m)[1]: m for m in stored}  # type: ignore[index]
    assert len(by_id) == 1000
    for item in batch:
        message_id = re.search(rb"Message-ID: <([^>]+)>", item[0])[1]  # type: ignore[index]
        # virtual(8) stores LF line ends and prepends its own trace headers.
        assert by_id[message_id].endswith(item[0].replace(b"\r\n", b"\n"))


def test_readme_many_messages_section_runs(readme_server: Any) -> None:  # noqa: F811
    messages = [
        Message(sender="me@example.org", to="you@example.org", subject=f"many {n}", text="hi")
        for n in range(3)
    ]
    namespace: dict[str, Any] = {"messages": messages}
    for number, block in enumerate(python_blocks("Many messages"), 1):
        run_block(block, namespace, f"README.md Many messages block {number}")
    assert namespace["sent"] == messages
    assert namespace["unknown"] == []
    received = readme_server.wait_for(3)
    assert [m.original_content.count(b"Subject: many") for m in received] == [1, 1, 1]


def test_bdat_window_counts_replies_owed(driver: Any, fake_smtp: Callable[..., FakeSMTP]) -> None:
    # 400 recipients each: a third transaction would leave over 1,000 replies unread, enough
    # to fill the socket buffers of a slow link; the client waits instead.
    fake = fake_smtp(StreamServer(caps=BDAT_CAPS, preread=2, cut=(0, "mail")))
    many = [f"r{n}@example.org" for n in range(400)]
    results = run_many(driver, fake, [(raw(i), SENDER, many) for i in range(5)])
    assert kinds(results) == ["unknown"] * 2 + ["disconnected"] * 3


def test_connection_closed_while_idle_loses_nothing(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    class HangsUp(StreamServer):
        def run(self, c: _Conn) -> None:
            c.send(b"220 stream.test ESMTP\r\n")
            c.read_line(5, "EHLO")
            c.send(ehlo_reply(*self.caps))
            c.close()
            raise _Ended("idle close")

    fake = fake_smtp(HangsUp())
    results = run_many(driver, fake, items(3))
    assert kinds(results) == ["disconnected"] * 3
    assert all(r.is_temporary for r in results)


@pytest.mark.parametrize("caps", [DATA_CAPS, BDAT_CAPS], ids=["data", "bdat"])
def test_421_in_the_middle(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], caps: tuple[str, ...]
) -> None:
    class Closing(StreamServer):
        def _on_mail(self, c: _Conn, line: bytes) -> None:
            if self.k == 1:  # the third MAIL
                c.send(b"421 4.3.2 Service shutting down\r\n")
                c.close()
                raise _Ended("421")
            super()._on_mail(c, line)

    chunking = "CHUNKING" in caps
    fake = fake_smtp(Closing(caps=caps, preread=5 if chunking else 0))
    results = run_many(driver, fake, items(5))
    # The message the 421 answered was refused; the later ones were written whole (BDAT)
    # and never answered, or never started (DATA).
    later = "unknown" if chunking else "disconnected"
    assert kinds(results) == ["ok", "ok", "disconnected", later, later]
    assert results[2].reply.code == 421


# -- in memory: the flow itself, with no socket (round trips counted exactly) -----------


class MemoryPeer:
    """A pipelining server in memory. Replies to a write come back only when the client
    blocks for them (a poll finds nothing): one blocking read is one round trip."""

    def __init__(self, *caps: str) -> None:
        self.caps, self.buf, self.replies = caps, b"", b"220 mem.test ESMTP\r\n"
        self.mode, self.need, self.last = "cmd", 0, False
        self.delivered: list[bytes] = []
        self.ops = {"send": 0, "poll": 0, "receive": 0}

    def run(self, flow: Any) -> Any:
        value: Any = None
        while True:
            try:
                op = flow.send(value)
            except StopIteration as stop:
                return stop.value
            value = None
            if isinstance(op, Send):
                self.ops["send"] += 1
                self.buf += op.data
                self._serve()
            elif op.poll:
                self.ops["poll"] += 1
                value = b""
            else:
                self.ops["receive"] += 1
                assert self.replies, "the client waits for a reply that nothing asked for"
                value, self.replies = self.replies, b""

    def _serve(self) -> None:
        while True:
            if self.mode == "data":
                end = 3 if self.buf.startswith(b".\r\n") else self.buf.find(b"\r\n.\r\n") + 5
                if end < 5 and end != 3:
                    return
                self.delivered.append(self.buf[:end])
                self.buf, self.mode = self.buf[end:], "cmd"
                self.replies += b"250 2.0.0 Ok: queued\r\n"
            elif self.mode == "bdat":
                if len(self.buf) < self.need:
                    return
                self.delivered.append(self.buf[: self.need])
                self.buf, self.mode = self.buf[self.need :], "cmd"
                self.replies += b"250 2.0.0 Ok: queued\r\n"
            else:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                verb = line.split()[0].upper()
                if verb == b"EHLO":
                    self.replies += ehlo_reply(*self.caps)
                elif verb == b"DATA":
                    self.mode = "data"
                    self.replies += b"354 go ahead\r\n"
                elif verb == b"BDAT":
                    self.mode, self.need = "bdat", int(line.split()[1])
                else:
                    code = {b"MAIL": b"2.1.0", b"RCPT": b"2.1.5"}.get(verb, b"2.0.0")
                    self.replies += b"250 " + code + b" Ok\r\n"


@pytest.mark.parametrize("caps", [DATA_CAPS, BDAT_CAPS], ids=["data", "bdat"])
def test_round_trips_in_memory(caps: tuple[str, ...]) -> None:
    peer = MemoryPeer(*caps)
    session = Session(Server("mem.test", options=Option.EXTENDED, local_hostname="client.test"))
    peer.run(session.open("client.test"))
    peer.ops = dict.fromkeys(peer.ops, 0)
    results = peer.run(send_many_flow(session, items(20)))
    assert kinds(results) == ["ok"] * 20
    if "CHUNKING" in caps:
        # Every transaction written before a single wait: the replies of all 20 in one read.
        assert peer.ops == {"send": 20, "poll": peer.ops["poll"], "receive": 1}
        assert peer.delivered == [raw(i) for i in range(20)]
    else:
        # One write and one wait per message (for its 354), and one for the last reply.
        assert peer.ops == {"send": 21, "poll": 2, "receive": 21}  # polls: idle, leftover
    assert session.reusable and not session.needs_reset


@pytest.mark.parametrize("caps", [DATA_CAPS, BDAT_CAPS], ids=["data", "bdat"])
def test_no_message_outlives_its_write(caps: tuple[str, ...]) -> None:
    peer = MemoryPeer(*caps)
    session = Session(Server("mem.test", options=Option.EXTENDED, local_hostname="client.test"))
    peer.run(session.open("client.test"))
    refs: list[weakref.ref[io.BytesIO]] = []
    alive: list[int] = []

    def messages() -> Iterator[tuple[io.BytesIO, str, list[str]]]:
        for n in range(30):
            gc.collect()
            alive.append(sum(ref() is not None for ref in refs))
            body = io.BytesIO(raw(n, b"x" * 5000 + b"\r\n"))
            refs.append(weakref.ref(body))
            yield body, SENDER, [RCPT]

    results = peer.run(send_many_flow(session, messages()))
    assert kinds(results) == ["ok"] * 30
    # Whatever the window, only the message whose data is being written is still held:
    # a written message's body is let go at once, not when its reply comes.
    assert max(alive) <= 1


def test_rset_after_a_refused_envelope_rides_with_the_next_stream(
    driver: Any, fake_smtp: Callable[..., FakeSMTP], writes: list[int]
) -> None:
    server = StreamServer(refuse_rcpt=frozenset({"nobody@example.org"}))
    fake = fake_smtp(server)
    first: list[Any] = [(raw(0), SENDER, ["nobody@example.org"])]
    out = driver.session(
        server_for(fake), [("send_many", (first,), {}), ("send_many", (items(1),), {})]
    )
    assert [kinds(o) for o in out] == [["recipients"], ["ok"]]
    verbs = [c.split()[0].upper() for c in server.commands]
    assert verbs[3:7] == [b"RSET", b"MAIL", b"RCPT", b"DATA"]
    # EHLO; the first stream: its envelope; the second: RSET+envelope in one write, then
    # the end of its data; QUIT.
    assert len(writes) == 1 + 1 + 2 + 1


def test_an_early_answer_to_the_data_stops_the_stream_before_the_body(
    driver: Any, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    class Early(StreamServer):
        def _on_data(self, c: _Conn, line: bytes) -> None:
            if self.k == 1:  # 354 and, at once, an answer to a dot not yet sent
                c.send(b"354 go ahead\r\n250 2.0.0 Ok: queued\r\n")
                self.delivered.append(c.read_data(2))
                return
            super()._on_data(c, line)

    server = Early()
    fake = fake_smtp(server, check=False)
    results = run_many(driver, fake, items(5))
    assert kinds(results) == ["ok"] + ["protocol"] * 4
    assert len(server.delivered) == 1  # message 1's body was never written
