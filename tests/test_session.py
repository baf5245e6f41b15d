"""The session in memory: scripted server bytes in, written bytes out, no socket.

Like h11's test_connection: a :class:`Wire` carries out what a session flow
yields — it records every ``Send``, answers every ``Receive`` from a script and
throws scripted failures back in — so each rule of the session is checked
exactly, without a server, a thread or a clock.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import (
    AuthError,
    DataRefused,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    ServerDisconnected,
    SmtpTimeout,
)
from smtpsubmit.protocol import State
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Option, Server
from smtpsubmit.session import Flow, Receive, Send, Session, StartTls

BODY = b"Subject: t\r\n\r\nHello.\r\n"
PASSWORD = "S3cr3t-CANARY"


@dataclass
class Early:
    """Bytes that have already arrived when the session polls (nobody asked for them)."""

    data: bytes


@dataclass
class Wire:
    """Carries out a flow's requests against a script, recording what was written."""

    script: list[bytes | Early | Exception] = field(default_factory=list)
    writes: list[bytes] = field(default_factory=list)
    receives: int = 0

    def feed(self, *items: bytes | Early | Exception) -> Wire:
        self.script.extend(items)
        return self

    def run(self, flow: Flow[Any]) -> Any:
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if isinstance(op, Send):
                self.writes.append(op.data)
            elif isinstance(op, Receive) and op.poll:
                if self.script and isinstance(self.script[0], Early):
                    value = self.script.pop(0).data  # type: ignore[union-attr]
                else:
                    value = b""
            elif isinstance(op, Receive):
                self.receives += 1
                if not self.script:
                    error = ServerDisconnected("the script ran out", stage=op.stage)
                    continue
                item = self.script.pop(0)
                if isinstance(item, Exception):
                    error = item
                else:
                    value = item.data if isinstance(item, Early) else item
            elif isinstance(op, StartTls):
                value = "tls"

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)

    def lines(self) -> list[bytes]:
        return self.sent.split(b"\r\n")


def ehlo(*caps: str) -> bytes:
    lines = ["fake.test", *caps]
    return b"".join(
        f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
        for i, text in enumerate(lines)
    )


class Clock:
    """A clock that advances one second each time it is read."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def opened(*caps: str, clock: Any = None, **server: Any) -> tuple[Session, Wire]:
    server.setdefault("options", Option.EXTENDED)
    session = Session(Server("127.0.0.1", port=25, **server), clock=clock or (lambda: 0.0))
    wire = Wire().feed(b"220 hi\r\n", ehlo(*caps))
    wire.run(session.open("client.test"))
    wire.writes.clear()
    return session, wire


def envelope(*recipients: str, size: int | None = None) -> Envelope:
    rcpts = list(recipients) or ["b@example.org"]
    return Envelope("a@example.org", rcpts, size=len(BODY) if size is None else size)


def source(body: bytes = BODY) -> Any:
    return lambda: iter([body])


def send(
    session: Session, wire: Wire, env: Envelope | None = None, body: bytes = BODY, **kw: Any
) -> Any:
    return wire.run(session.send_message(env or envelope(), source(body), **kw))


OK = b"250 ok\r\n"


# -- the harness itself ------------------------------------------------------------------


def test_a_plain_transaction_in_memory() -> None:
    session, wire = opened()
    wire.feed(OK, OK, b"354 go\r\n", b"250 queued\r\n")
    result = send(session, wire)
    assert isinstance(result, SubmitResult) and result.accepted == ["b@example.org"]
    assert wire.lines()[:3] == [b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA"]
    assert wire.sent.endswith(BODY + b".\r\n")
    assert session.reusable and not session.closed


# -- connection health -------------------------------------------------------------------


def test_refusal_keeps_the_connection_and_loss_does_not() -> None:
    session, wire = opened("PIPELINING")
    wire.feed(b"550 5.1.0 not you\r\n", b"503 no\r\n", b"503 no\r\n")
    with pytest.raises(SenderRefused):
        send(session, wire)
    assert session.reusable and session.needs_reset
    wire.feed(OK, OK, OK)  # RSET, MAIL, RCPT ... then the line drops
    with pytest.raises(ServerDisconnected):
        send(session, wire)
    assert session.closed and not session.reusable


def test_an_abandoned_flow_leaves_the_connection_unusable() -> None:
    """A flow the driver closes half-way (cancellation, KeyboardInterrupt) is broken."""
    session, _wire = opened()
    flow = session.send_message(envelope(), source())
    assert isinstance(next(flow), Receive)  # the idle poll
    flow.send(b"")
    flow.close()
    assert session.closed and not session.reusable


def test_quit_closes() -> None:
    session, wire = opened()
    wire.feed(b"221 bye\r\n")
    assert wire.run(session.quit()).code == 221
    assert session.closed and not session.reusable


# -- issue: replies that arrive before the data is complete ------------------------------


def test_reply_glued_to_354_is_never_the_answer() -> None:
    """``354``, then ``250 early`` in the same segment, then 554 after the dot: the
    early 250 answers nothing; no data is sent and no result comes back."""
    session, wire = opened("PIPELINING")
    wire.feed(OK + OK + b"354 go\r\n250 early\r\n", b"554 5.7.1 no\r\n")
    with pytest.raises(ProtocolError, match="before the message data was complete"):
        send(session, wire)
    assert BODY not in wire.sent and session.closed


def test_reply_arriving_during_the_data_is_never_the_answer() -> None:
    """The early 250 arrives on its own while the data goes out: seen before the dot."""
    session, wire = opened()
    wire.feed(OK, OK, b"354 go\r\n", Early(b"250 early\r\n"), b"554 5.7.1 no\r\n")
    with pytest.raises(ProtocolError):
        send(session, wire)
    assert not wire.sent.endswith(b"\r\n.\r\n") and session.closed


def test_early_refusal_during_the_data_is_data_refused() -> None:
    """A server that refuses and stops reading (smtp-sink -A): the refusal is reported,
    the dot is not sent, and the connection is given up."""
    session, wire = opened()
    wire.feed(OK, OK, b"354 go\r\n", Early(b"550 5.7.0 stop\r\n"))
    with pytest.raises(DataRefused) as info:
        send(session, wire)
    assert info.value.reply == Reply(550, "stop", "5.7.0")
    assert not wire.sent.endswith(b".\r\n") and session.closed


def test_bdat_reply_followed_by_another_is_never_the_answer() -> None:
    """With CHUNKING: one reply too many after a chunk cannot answer BDAT LAST."""
    session, wire = opened("CHUNKING")
    big = b"x" * (1024 * 1024) + b"\r\n"
    wire.feed(OK, OK, b"250 chunk\r\n250 early\r\n", b"554 no\r\n")
    with pytest.raises(ProtocolError):
        send(session, wire, envelope(size=len(big)), big)
    assert b"LAST" not in wire.sent and session.closed


def test_early_reply_before_bdat_last() -> None:
    session, wire = opened("CHUNKING")
    wire.feed(OK, OK, Early(b"250 early\r\n"), b"554 no\r\n")
    with pytest.raises(ProtocolError):
        send(session, wire)
    assert b"BDAT" not in wire.sent and session.closed


# -- issue: a failed follow-up transaction keeps the first delivery ----------------------

RCPTS = ["r0@example.org", "r1@example.org", "r2@example.org", "r3@example.org"]
FIRST = [OK, OK, OK, b"452 4.5.3 too many\r\n", b"452 4.5.3 too many\r\n", b"354 go\r\n"]


def deferred_then(*follow_up: bytes | Early | Exception) -> tuple[Session, Wire, Any]:
    """Two of four recipients accepted, two deferred with 452; then ``follow_up``."""
    session, wire = opened("PIPELINING")
    wire.feed(*FIRST, b"250 queued 1\r\n", *follow_up)
    result = send(session, wire, envelope(*RCPTS))
    return session, wire, result


@pytest.mark.parametrize(
    ("follow_up", "code"),
    [
        ([b"421 4.3.2 shutting down\r\n"], 421),
        ([ServerDisconnected("gone", stage="mail")], 451),
        ([SmtpTimeout("slow", stage="mail")], 451),
        ([OK, OK, OK, b"354 go\r\n", b"garbage\r\n"], 451),
    ],
    ids=["421", "dropped", "timeout", "garbage-after-data"],
)
def test_follow_up_failure_returns_the_partial_result(follow_up: list[Any], code: int) -> None:
    session, _wire, result = deferred_then(*follow_up)
    assert isinstance(result, SubmitResult)
    assert result.accepted == RCPTS[:2] and result.reply.text == "queued 1"
    assert {r: reply.code for r, reply in result.refused.items()} == dict.fromkeys(RCPTS[2:], code)
    assert all(reply.is_temporary for reply in result.refused.values())
    assert result.unknown == []
    assert session.closed


def test_follow_up_with_lost_final_reply_marks_those_recipients_unknown() -> None:
    """The follow-up's dot went out and its answer was lost: the first batch stays
    delivered; the second is in ``unknown`` (and in ``refused`` as a 451 that says so)."""
    session, _wire, result = deferred_then(
        OK, OK, OK, b"354 go\r\n", SmtpTimeout("x", stage="data")
    )
    assert result.accepted == RCPTS[:2]
    assert result.unknown == RCPTS[2:]
    assert all("unknown" in result.refused[r].text for r in RCPTS[2:])
    assert session.closed


def test_follow_up_refusal_is_listed_and_the_connection_kept() -> None:
    session, _wire, result = deferred_then(
        OK, b"550 5.1.1 no\r\n", b"550 5.1.1 no\r\n", b"554 x\r\n"
    )
    assert result.accepted == RCPTS[:2]
    assert {r: reply.code for r, reply in result.refused.items()} == dict.fromkeys(RCPTS[2:], 550)
    assert session.reusable


@pytest.mark.parametrize("recipients", [1, 3])
def test_452_before_any_acceptance_is_a_temporary_refusal(recipients: int) -> None:
    """Nothing accepted yet: 452 is a refusal (temporary), never an endless follow-up."""
    session, wire = opened("PIPELINING")
    rcpts = RCPTS[:recipients]
    wire.feed(OK, *[b"452 4.5.3 too many\r\n"] * recipients, b"554 no valid recipients\r\n")
    with pytest.raises(RecipientsRefused) as info:
        send(session, wire, envelope(*rcpts))
    err = info.value
    assert err.is_temporary and set(err.refused) == set(rcpts)
    assert all(reply.code == 452 for reply in err.refused.values())
    assert wire.sent.count(b"MAIL FROM") == 1


# -- issue: BDAT size and final CRLF -----------------------------------------------------


@pytest.mark.parametrize("body", [b"Subject: t\r\n\r\nno newline", b"Subject: t\r\n\r\nbare CR\r"])
def test_bdat_last_declares_what_it_sends(body: bytes) -> None:
    """The size in ``BDAT n LAST`` counts the CRLF added at the end."""
    session, wire = opened("CHUNKING")
    wire.feed(OK, OK, b"250 queued\r\n")
    result = send(session, wire, envelope(size=len(body) + 2), body)
    header, _, chunk = wire.writes[-1].partition(b"\r\n")
    assert header == f"BDAT {len(chunk)} LAST".encode()
    assert chunk.endswith(b"\r\n") and not chunk.endswith(b"\r\r\n")
    assert result.size == len(chunk)


# -- issue: progress ---------------------------------------------------------------------


def test_done_reports_the_elapsed_time_not_the_clock() -> None:
    clock = Clock()
    session, wire = opened(clock=clock)
    seen: list[Progress] = []
    wire.feed(OK, OK, b"354 go\r\n", b"250 queued\r\n")
    send(session, wire, progress=seen.append)
    done = seen[-1]
    assert done.stage == "done" and done.bytes_sent == len(BODY)
    assert 0 < done.elapsed < 10, done


# -- issue 15: a pending RSET rides with the next transaction ----------------------------


def test_pending_rset_goes_in_the_same_write_as_mail() -> None:
    session, wire = opened("PIPELINING")
    wire.feed(OK, b"550 5.1.1 nobody\r\n", b"554 no valid recipients\r\n")
    with pytest.raises(RecipientsRefused):
        send(session, wire)
    assert b"RSET" not in wire.sent  # not waited for here ...
    wire.writes.clear()
    receives = wire.receives
    wire.feed(OK + OK + OK + b"354 go\r\n", b"250 queued\r\n")
    result = send(session, wire)
    assert result.accepted == ["b@example.org"]
    assert wire.writes[0].startswith(b"RSET\r\nMAIL FROM:")  # ... but sent with the next MAIL
    assert wire.writes[0].endswith(b"DATA\r\n")
    assert wire.receives - receives == 2  # the envelope's replies, then the final one
    assert not session.needs_reset


def test_refused_pipelined_rset_fails_cleanly() -> None:
    """A refused RSET gives the connection up before any data: nothing is sent."""
    session, wire = opened("PIPELINING")
    session.needs_reset = True
    wire.feed(b"500 5.5.1 what\r\n" + OK + OK + b"354 go\r\n")
    with pytest.raises(ProtocolError) as info:
        send(session, wire)
    assert info.value.reply is not None and info.value.reply.code == 500
    assert BODY not in wire.sent and session.closed


def test_without_pipelining_rset_is_sent_at_once() -> None:
    session, wire = opened()
    wire.feed(b"550 5.1.0 not you\r\n", OK)
    with pytest.raises(SenderRefused):
        send(session, wire)
    assert wire.lines()[-2] == b"RSET" and not session.needs_reset


# -- issue: authentication secrets and the transcript ------------------------------------


def authenticate(mechanism: str, *replies: bytes, **server: Any) -> tuple[Session, Wire]:
    session = Session(
        Server(
            "127.0.0.1",
            "user",
            PASSWORD,
            options=Option.EXTENDED,
            auth_mechanisms=(mechanism,),
            allow_plaintext_auth=True,
            **server,
        )
    )
    wire = Wire().feed(b"220 hi\r\n", ehlo(f"AUTH {mechanism}"), *replies)
    wire.run(session.open("client.test"))
    return session, wire


def forms(*texts: bytes) -> list[str]:
    return [PASSWORD] + [base64.b64encode(t).decode() for t in texts]


@pytest.mark.parametrize(
    ("mechanism", "replies", "echoed"),
    [
        ("PLAIN", [], b"\0user\0" + PASSWORD.encode()),
        ("LOGIN", [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"], PASSWORD.encode()),
    ],
)
def test_auth_refusal_echoing_the_secret_is_masked(
    mechanism: str, replies: list[bytes], echoed: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that echoes what it got in its 5xx: every form of the secret is
    masked in the exception text, its reply and the transcript."""
    caplog.set_level(logging.DEBUG, logger="smtpsubmit")
    echo = f"535 5.7.8 bad {base64.b64encode(echoed).decode()} for {PASSWORD}\r\n".encode()
    with pytest.raises(AuthError) as info:
        authenticate(mechanism, *replies, echo)
    err = info.value
    texts = [str(err), repr(err), str(err.reply), *(r.getMessage() for r in caplog.records)]
    for text in texts:
        for form in forms(echoed, PASSWORD.encode()):
            assert form not in text, text
    assert err.reply is not None and err.reply.text == "bad *** for ***"


@pytest.mark.parametrize(
    ("mechanism", "shown"),
    [("CRAM-MD5", "C: AUTH CRAM-MD5"), ("LOGIN", "C: AUTH LOGIN"), ("PLAIN", "C: AUTH PLAIN ***")],
)
def test_transcript_shows_stars_only_where_a_secret_was(
    mechanism: str, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpsubmit.transcript")
    with pytest.raises(AuthError):
        authenticate(mechanism, b"535 5.7.8 no\r\n")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("C: AUTH")]
    assert lines == [shown]


def test_one_challenge_limit() -> None:
    """The mechanism's own limit ends an endless exchange: a ProtocolError after the
    exchange was cancelled, and the session is not reused."""
    endless = [b"334 \r\n"] * 30
    with pytest.raises(ProtocolError):
        authenticate("XOAUTH2", *endless)


def test_auth_refusal_keeps_the_session_for_a_polite_quit() -> None:
    session = Session(
        Server("127.0.0.1", "user", PASSWORD, options=Option.EXTENDED, allow_plaintext_auth=True)
    )
    wire = Wire().feed(b"220 hi\r\n", ehlo("AUTH PLAIN"), b"535 5.7.8 no\r\n")
    with pytest.raises(AuthError):
        wire.run(session.open("client.test"))
    assert session.reusable and session.core.state is State.READY
