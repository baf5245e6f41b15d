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


WITH_BCC = (
    b"From: a@example.org\r\nTo: b@example.org\r\n"
    b"Bcc: hidden@example.org,\r\n second-hidden@example.org\r\n"
    b"Resent-Bcc: also-hidden@example.org\r\nSubject: s\r\n\r\nbody\n"
)
WITHOUT_BCC = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "file"])
def test_ready_message_never_carries_bcc(
    driver: Any, aiosmtpd_server: Any, tmp_path: Any, as_file: bool
) -> None:
    """RFC 5322 §3.6.3: Bcc and Resent-Bcc are removed, and SIZE= counts what is sent."""
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    path = tmp_path / "m.eml"
    path.write_bytes(WITH_BCC)
    with open(path, "rb") as file:
        message = file if as_file else WITH_BCC
        recipients = ["b@example.org", "hidden@example.org"]
        result = driver.submit(message, server, sender="a@example.org", recipients=recipients)
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.original_content == WITHOUT_BCC
    assert received.rcpt_tos == ["b@example.org", "hidden@example.org"]
    assert f"SIZE={len(WITHOUT_BCC)}" in received.mail_options
    assert result.size == len(WITHOUT_BCC)


@pytest.mark.postfix
def test_ready_message_without_bcc_over_bdat_at_postfix(driver: Any, postfix: Any) -> None:
    """BDAT announces the octets before sending them: the count must be of the stripped bytes."""
    postfix.clear()
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED)
    driver.submit(WITH_BCC, server, sender="a@example.org", recipients=["someone@capture.test"])
    assert postfix.wait_for_capture("someone@capture.test") == WITHOUT_BCC
