"""Composed messages end to end: submit_message(Message, Server) to aiosmtpd and Postfix."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import (
    Attachment,
    Encoding,
    ExtensionUnavailable,
    Message,
    MessageError,
    Option,
    Server,
)
from tests.servers.fakesmtp import Responder

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def rich_message(tmp_path: Path, to: str) -> Message:
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 100)
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nline two — with a dash\n", encoding="utf-8")
    return Message(
        sender="Zoë Sender <alice@example.test>",
        to=to,
        cc="carol@example.test",
        bcc="dave@example.test",
        subject="Quarterly report — ready ✓",
        headers={"X-Campaign": "q3"},
        text="Hello,\nthe report is attached.\n",
        html='<p>Hello, <img src="cid:logo@example.test"> the report is attached.</p>',
        attachments=[
            str(report),
            notes,
            Attachment(data=PNG, filename="logo.png", inline=True, content_id="logo@example.test"),
        ],
    )


def check_rich(raw: bytes, tmp_path: Path) -> None:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Quarterly report — ready ✓"
    assert parsed["Bcc"] is None and b"dave@example.test" not in raw.split(b"\r\n\r\n")[0]
    assert parsed.get_content_type() == "multipart/mixed"
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Hello,\nthe report is attached.\n"
    assert html is not None and "cid:logo@example.test" in html.get_content()
    related = [p for p in parsed.walk() if p.get_content_type() == "multipart/related"]
    assert related, "the inline image goes in multipart/related with the HTML"
    parts = {p.get_filename(): p for p in parsed.walk() if p.get_filename()}
    assert parts["report.pdf"].get_content() == (tmp_path / "report.pdf").read_bytes()
    assert parts["notes.txt"].get_payload(decode=True) == (tmp_path / "notes.txt").read_bytes()
    assert parts["logo.png"].get_content() == PNG
    assert parts["logo.png"]["Content-ID"] == "<logo@example.test>"


def test_rich_message_arrives_intact_at_aiosmtpd(
    driver: Any, aiosmtpd_server: Any, tmp_path: Path
) -> None:
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    message = rich_message(tmp_path, "bob@example.test")
    result = driver.submit(message, server)
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.rcpt_tos == ["bob@example.test", "carol@example.test", "dave@example.test"]
    assert received.mail_from == "alice@example.test"
    assert result.message_id and f"<{result.message_id}>".encode() in received.original_content
    assert result.size == len(received.original_content)
    check_rich(received.original_content, tmp_path)


@pytest.mark.postfix
def test_rich_message_arrives_intact_at_postfix(driver: Any, postfix: Any, tmp_path: Path) -> None:
    postfix.clear()
    server = Server(
        postfix.host,
        port=postfix.plain,
        options=Option.SECURE,
        ca_file=postfix.ca_file,
        tls_server_name="mx.fixture.test",
    )
    message = rich_message(tmp_path, "someone@capture.test")
    result = driver.submit(message, server)
    assert result.accepted == ["someone@capture.test", "carol@example.test", "dave@example.test"]
    captured = postfix.wait_for_capture("someone@capture.test")
    check_rich(captured, tmp_path)
    assert len(postfix.wait_for_maildir("carol")) == 1
    assert len(postfix.wait_for_maildir("dave")) == 1


def test_eight_bit_text_is_reencoded_for_a_server_without_8bitmime(
    driver: Any, fake_smtp: Any
) -> None:
    fake = fake_smtp(Responder(capabilities=()))
    message = Message(
        sender="a@example.org",
        to="b@example.org",
        text="Grüße " * 20,
        encoding=Encoding.EIGHT_BIT,
    )
    driver.submit(message, Server(fake.host, port=fake.port, options=Option.EXTENDED))
    (data,) = fake.data
    assert data.isascii()
    assert b"Content-Transfer-Encoding: 8bit" not in data
    mail = next(c for c in fake.commands[0] if c.startswith(b"MAIL"))
    assert b"BODY=" not in mail


def test_eight_bit_text_goes_8bit_with_8bitmime(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("8BITMIME",)))
    message = Message(
        sender="a@example.org", to="b@example.org", text="Grüße", encoding=Encoding.EIGHT_BIT
    )
    driver.submit(message, Server(fake.host, port=fake.port, options=Option.EXTENDED))
    (data,) = fake.data
    assert "Grüße".encode() in data
    mail = next(c for c in fake.commands[0] if c.startswith(b"MAIL"))
    assert b"BODY=8BITMIME" in mail


def test_utf8_local_part_needs_smtputf8(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("8BITMIME",)))
    message = Message(sender="a@example.org", to="jörg@example.org", text="hi")
    with pytest.raises(ExtensionUnavailable) as info:
        driver.submit(message, Server(fake.host, port=fake.port, options=Option.EXTENDED))
    assert info.value.extension == "SMTPUTF8"
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


def test_utf8_message_with_smtputf8(driver: Any, aiosmtpd_server: Any) -> None:
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    message = Message(
        sender="Jörg <jörg@exämple.org>", to="zoë@example.org", subject="Grüße", text="hi"
    )
    driver.submit(message, server)
    (received,) = aiosmtpd_server.wait_for(1)
    assert "SMTPUTF8" in received.mail_options
    assert received.rcpt_tos == ["zoë@example.org"]


def test_bad_message_fails_before_connecting(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder())
    with pytest.raises(MessageError):
        Message(sender="a@example.org", to="b@example.org", subject="hi\r\nBcc: evil@x.org")
    message = Message(sender="a@example.org", to="b@example.org", text="x")
    with pytest.raises(MessageError):
        driver.submit(message, Server(fake.host, port=fake.port), recipients=["bad\r\n@x"])
    assert fake.connections == 0


def test_message_from_bytes_strips_bcc(driver: Any, aiosmtpd_server: Any) -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nBcc: hidden@example.org\r\n"
        b"Subject: ready\r\n\r\nbody\r\n"
    )
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    driver.submit(Message.from_bytes(raw), server)
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.rcpt_tos == ["b@example.org", "hidden@example.org"]
    assert b"hidden@example.org" not in received.original_content
    assert b"Bcc" not in received.original_content
