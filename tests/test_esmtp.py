"""ESMTP extensions: exact parameters against the fake server, behaviour against Postfix."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from smtpsubmit import (
    DSN,
    Client,
    ExtensionUnavailable,
    MessageTooLarge,
    Option,
    Progress,
    RecipientsRefused,
    Server,
    SubmitResult,
)
from smtpsubmit.transport import AsyncStream, SyncStream
from tests import drivers
from tests.drivers import RAW, call
from tests.servers.aiosmtpd_server import RecordingHandler, _EphemeralController
from tests.servers.fakesmtp import Responder

SENDER = "a@example.org"


def server_for(fake: Any, **kw: Any) -> Server:
    return drivers.server_for(fake, local_hostname=None, **kw)


def mail_and_rcpts(fake: Any) -> tuple[bytes, list[bytes]]:
    commands = fake.commands[0]
    mail = next(c for c in commands if c.startswith(b"MAIL"))
    return mail, [c for c in commands if c.startswith(b"RCPT")]


def test_dsn_parameters_are_exact(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("DSN", "SIZE 100000")))
    dsn = DSN(notify=("SUCCESS", "FAILURE"), ret="HDRS", envid="id+1=x y")
    driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["b+x@example.org"], dsn=dsn)
    mail, (rcpt,) = mail_and_rcpts(fake)
    assert (
        mail == f"MAIL FROM:<a@example.org> SIZE={len(RAW)} RET=HDRS ENVID=id+2B1+3Dx+20y".encode()
    )
    assert (
        rcpt == b"RCPT TO:<b+x@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.org"
    )


def test_dsn_needs_the_extension(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("SIZE 100000",)))
    with pytest.raises(ExtensionUnavailable) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["b@e.org"], dsn=DSN())
    assert info.value.extension == "DSN"
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


def test_dsn_not_required_sends_without(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=()))
    driver.submit(
        RAW, server_for(fake), sender=SENDER, recipients=["b@e.org"], dsn=DSN(required=False)
    )
    mail, (rcpt,) = mail_and_rcpts(fake)
    assert b"RET=" not in mail and b"NOTIFY" not in rcpt


def test_dsn_values_are_checked() -> None:
    with pytest.raises(ValueError, match="NEVER"):
        DSN(notify=("NEVER", "SUCCESS"))
    with pytest.raises(ValueError, match="notify"):
        DSN(notify=("SOMETIMES",))
    with pytest.raises(ValueError, match="ret"):
        DSN(ret="ALL")
    with pytest.raises(ValueError, match="control"):
        DSN(envid="x\r\nRSET")


def test_smtputf8_address_declares_smtputf8(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("SMTPUTF8", "8BITMIME")))
    driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["jörg@exämple.org"])
    mail, (rcpt,) = mail_and_rcpts(fake)
    assert mail.endswith(b" SMTPUTF8")
    assert rcpt == "RCPT TO:<jörg@exämple.org>".encode()


def test_smtputf8_missing_is_refused_before_mail(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("8BITMIME",)))
    with pytest.raises(ExtensionUnavailable) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["jörg@example.org"])
    assert info.value.extension == "SMTPUTF8"
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


def test_idn_domain_alone_becomes_an_a_label(driver: Any, fake_smtp: Any) -> None:
    """U7: no SMTPUTF8 needed when only the domain is international."""
    fake = fake_smtp(Responder(capabilities=()))
    driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["joe@exämple.org"])
    _, (rcpt,) = mail_and_rcpts(fake)
    assert rcpt == b"RCPT TO:<joe@xn--exmple-cua.org>"


def test_requiretls_needs_tls_and_the_extension(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("REQUIRETLS",)))
    with pytest.raises(ExtensionUnavailable) as info:
        driver.submit(
            RAW, server_for(fake), sender=SENDER, recipients=["b@e.org"], require_tls=True
        )
    assert info.value.extension == "REQUIRETLS"


def test_progress_reports_bytes_as_they_go(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("SIZE 100000000",)))
    body = RAW + b"z" * 3_000_000 + b"\r\n"
    seen: list[Progress] = []
    driver.submit(
        body, server_for(fake), sender=SENDER, recipients=["b@e.org"], progress=seen.append
    )
    data = [p for p in seen if p.stage == "data"]
    assert len(data) >= 5
    assert [p.bytes_sent for p in data] == sorted(p.bytes_sent for p in data)
    assert all(p.bytes_total == len(body) for p in seen)
    assert seen[-1].stage == "done" and seen[-1].bytes_sent == len(body)
    assert seen[-1].fraction == 1.0 and seen[-1].rate >= 0


def test_unknown_envelope_parameters_never_appear(driver: Any, fake_smtp: Any) -> None:
    """No SIZE= to a server that did not advertise SIZE; no BODY= for 7-bit data."""
    fake = fake_smtp(Responder(capabilities=("8BITMIME",)))
    driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["b@e.org"])
    mail, _ = mail_and_rcpts(fake)
    assert mail == b"MAIL FROM:<a@example.org>"


# -- real Postfix ----------------------------------------------------------------------


@pytest.mark.postfix
def test_postfix_capabilities(postfix: Any) -> None:
    with Client(Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)) as client:
        caps = client.capabilities
    for keyword in ("PIPELINING", "SIZE", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"):
        assert keyword in caps


@pytest.mark.postfix
def test_ten_recipients_take_one_round_trip_for_the_envelope(
    postfix: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole envelope is one write, and all its replies are read before the next write."""
    postfix.clear()
    events: list[str] = []
    original_send, original_receive = SyncStream.send, SyncStream.receive

    def send(self: SyncStream, data: bytes, stage: str, timeout: float) -> None:
        events.append("W:" + data.split(b"\r\n", 1)[0].decode()[:4])
        original_send(self, data, stage, timeout)

    def receive(self: SyncStream, stage: str, timeout: float) -> bytes:
        events.append("R")
        return original_receive(self, stage, timeout)

    monkeypatch.setattr(SyncStream, "send", send)
    monkeypatch.setattr(SyncStream, "receive", receive)
    rcpts = [f"user{i}@example.org" for i in range(10)]
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    with Client(server) as client:
        events.clear()
        result = client.send(RAW, sender="alice@example.test", recipients=rcpts)
    assert result.accepted == rcpts
    writes = [e for e in events if e.startswith("W:")]
    # MAIL + 10 RCPT in one write, every reply read, then the message in one BDAT write.
    assert writes[:2] == ["W:MAIL", "W:BDAT"]
    assert events.index("W:BDAT") > events.index("W:MAIL") + 1
    assert len(postfix.wait_for_maildir("catchall", count=10)) >= 10


@pytest.mark.postfix
def test_bdat_delivery_is_byte_exact_in_maildir(driver: Any, postfix: Any) -> None:
    postfix.clear()
    body = RAW.replace(b"b@example.org", b"bob@example.test") + b"line two\r\n" * 1000
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    driver.submit(body, server, sender="alice@example.test", recipients=["bob@example.test"])
    (stored,) = postfix.wait_for_maildir("bob")
    # Postfix prepends its own trace headers and stores LF line ends.
    assert stored.endswith(body.replace(b"\r\n", b"\n"))


@pytest.mark.postfix
def test_postfix_dsn_success_report(postfix: Any) -> None:
    postfix.clear()
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    with Client(server) as client:
        client.send(
            RAW,
            sender="alice@example.test",
            recipients=["bob@example.test"],
            dsn=DSN(notify=("SUCCESS",), ret="HDRS", envid="env-42"),
        )
    postfix.wait_for_maildir("bob")
    (report,) = postfix.wait_for_maildir("alice")
    assert b"multipart/report" in report and b"report-type=delivery-status" in report
    assert re.search(rb"Original-Envelope-Id: env-42", report)


@pytest.mark.postfix
def test_postfix_smtputf8(postfix: Any) -> None:
    postfix.clear()
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    with Client(server) as client:
        client.send(RAW, sender="jörg@example.test", recipients=["bob@example.test"])
    (stored,) = postfix.wait_for_maildir("bob")
    # The envelope sender went through unencoded: only SMTPUTF8 can carry it.
    assert "Return-Path: <jörg@example.test>".encode() in stored


@pytest.mark.postfix
def test_postfix_size_limit_checked_before_data(postfix: Any) -> None:
    server = Server(postfix.host, port=postfix.size_limited, options=Option.EXTENDED)
    big = RAW + b"x" * (postfix.size_limit + 10)
    with pytest.raises(MessageTooLarge), Client(server) as client:
        client.send(big, sender="alice@example.test", recipients=["bob@example.test"])


@pytest.mark.postfix
def test_postfix_without_chunking_uses_data(postfix: Any) -> None:
    postfix.clear()
    server = Server(postfix.host, port=postfix.nochunking, options=Option.EXTENDED)
    with Client(server) as client:
        assert "CHUNKING" not in client.capabilities
        assert "PIPELINING" not in client.capabilities
        client.send(RAW, sender="alice@example.test", recipients=["someone@capture.test"])
    assert postfix.wait_for_capture("someone@capture.test") == RAW


@pytest.mark.postfix
def test_postfix_refusals(driver: Any, postfix: Any) -> None:
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    result = driver.submit(
        RAW,
        server,
        sender="alice@example.test",
        recipients=[
            "bob@example.test",
            "tempfail@example.test",
            "reject@example.test",
            "nobody@example.test",
        ],
    )
    assert result.accepted == ["bob@example.test"]
    assert result.refused["tempfail@example.test"].is_temporary
    assert result.refused["reject@example.test"].code == 554
    assert result.refused["nobody@example.test"].enhanced == "5.1.1"


def test_requiretls_over_tls(
    driver: Any, fake_smtp: Any, server_ssl_context: Any, ca_file: str
) -> None:
    fake = fake_smtp(
        Responder(capabilities=("REQUIRETLS", "8BITMIME"), tls_context=server_ssl_context)
    )
    server = Server(fake.host, port=fake.port, options=Option.SECURE, ca_file=ca_file, timeout=5)
    driver.submit(RAW, server, sender=SENDER, recipients=["b@e.org"], require_tls=True)
    mail = next(c for c in fake.commands[0] if c.startswith(b"MAIL"))
    assert mail.endswith(b" REQUIRETLS")


def test_connection_closed_while_idle_is_reported_not_lost(driver: Any, fake_smtp: Any) -> None:
    """The server drops an idle session: the next send fails before any data, retryably."""
    from tests.drivers import call
    from tests.servers.fakesmtp import Close, ReadData, Send, steps_to_data

    fake = fake_smtp(
        [
            *steps_to_data(),
            ReadData(),
            Send(b"250 ok\r\n"),
            Close(),
        ],
        check=False,
    )
    results = driver.session(
        server_for(fake),
        [call("send", RAW, sender=SENDER, recipients=["b@e.org"]), call("noop")],
    )
    assert results[0].reply.code == 250
    error = results[1]
    assert error.is_temporary and error.stage in ("mail", "ehlo") and len(fake.data) == 1


def test_eight_bit_body_over_bdat_is_binarymime_when_offered(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("CHUNKING", "BINARYMIME", "8BITMIME", "PIPELINING")))
    body = RAW + "grüße\r\n".encode()
    driver.submit(body, server_for(fake), sender=SENDER, recipients=["b@e.org"])
    mail, _ = mail_and_rcpts(fake)
    assert mail.endswith(b" BODY=BINARYMIME")
    assert fake.data == [body]


def test_binarymime_without_chunking_falls_back_to_8bitmime(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("BINARYMIME", "8BITMIME")))
    driver.submit(RAW + "é\r\n".encode(), server_for(fake), sender=SENDER, recipients=["b@e.org"])
    mail, _ = mail_and_rcpts(fake)
    assert mail.endswith(b" BODY=8BITMIME")


class _PipeliningHandler(RecordingHandler):
    """aiosmtpd answering pipelined commands (it reads them in order) and saying so,
    refusing one address."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def aiosmtpd_pipelining() -> Iterator[tuple[str, int, RecordingHandler]]:
    handler = _PipeliningHandler()
    controller = _EphemeralController(
        handler, hostname="127.0.0.1", port=0, decode_data=False, ready_timeout=5.0
    )
    controller.start()
    try:
        yield "127.0.0.1", controller.port, handler
    finally:
        controller.stop()


def test_pending_rset_is_pipelined_with_the_next_transaction_aiosmtpd(
    driver: Any, aiosmtpd_pipelining: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a refused transaction, the next send puts RSET in the same write as MAIL,
    RCPT and DATA (no wait for its reply), and a real server takes it in order."""
    host, port, handler = aiosmtpd_pipelining
    writes: list[bytes] = []
    for stream in (SyncStream, AsyncStream):
        original = stream.send

        def record(
            self: Any, data: bytes, stage: str, timeout: float, _original: Any = original
        ) -> Any:
            writes.append(bytes(data))
            return _original(self, data, stage, timeout)

        monkeypatch.setattr(stream, "send", record)
    server = Server(host, port=port, options=Option.EXTENDED, timeout=3)
    first, second = driver.session(
        server,
        [
            call("send", RAW, sender=SENDER, recipients=["nobody@example.org"]),
            call("send", RAW, sender=SENDER, recipients=["b@example.org"]),
        ],
    )
    assert isinstance(first, RecipientsRefused), first
    assert isinstance(second, SubmitResult) and second.accepted == ["b@example.org"]
    (batch,) = [w for w in writes if b"RSET" in w]
    assert batch.startswith(b"RSET\r\nMAIL FROM:<a@example.org>") and batch.endswith(b"DATA\r\n")
    (message,) = handler.messages
    assert message.rcpt_tos == ["b@example.org"] and message.original_content == RAW
