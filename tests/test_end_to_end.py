"""Ready messages end to end against real servers: aiosmtpd and Postfix."""

from __future__ import annotations

from typing import Any

import pytest

from smtpsubmit import Option, Server

TRICKY = (
    b"From: a@example.org\r\nTo: someone@capture.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Message-ID: <tricky@example.org>\r\nX-Long: " + b"h" * 3000 + b"\r\n\r\n"
    b".leading dot\r\n..two dots\r\n" + b"L" * 1500 + b"\r\nraw 8-bit \xc3\xa9\r\n.\r\nend\r\n"
)


def test_ready_message_arrives_byte_exact_at_aiosmtpd(driver: Any, aiosmtpd_server: Any) -> None:
    # aiosmtpd refuses lines over 1000 octets, so its copy has no overlong line.
    tricky = TRICKY.replace(b"h" * 3000, b"h" * 900).replace(b"L" * 1500, b"L" * 900)
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    result = driver.submit(tricky, server, sender="a@example.org", recipients=["b@example.org"])
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.original_content == tricky
    assert received.mail_from == "a@example.org"
    assert received.rcpt_tos == ["b@example.org"]
    assert "BODY=8BITMIME" in received.mail_options
    assert f"SIZE={len(tricky)}" in received.mail_options
    assert result.message_id == "tricky@example.org"


@pytest.mark.postfix
def test_ready_message_arrives_byte_exact_at_postfix(driver: Any, postfix: Any) -> None:
    """Through PIPELINING and CHUNKING (BDAT), which Postfix offers."""
    postfix.clear()
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    result = driver.submit(
        TRICKY, server, sender="a@example.org", recipients=["someone@capture.test"]
    )
    assert result.accepted == ["someone@capture.test"]
    assert "queued as" in result.reply.text
    assert postfix.wait_for_capture("someone@capture.test") == TRICKY


@pytest.mark.postfix
def test_ready_message_with_data_instead_of_bdat(driver: Any, postfix: Any) -> None:
    postfix.clear()
    server = Server(
        postfix.host,
        port=postfix.plain,
        options=Option.EXTENDED,
        disable_extensions={"CHUNKING"},
    )
    driver.submit(TRICKY, server, sender="a@example.org", recipients=["someone@capture.test"])
    assert postfix.wait_for_capture("someone@capture.test") == TRICKY
