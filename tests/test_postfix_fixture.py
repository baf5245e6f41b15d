"""Self-tests of the private Postfix + Dovecot fixture (tests/servers/postfix.py), stdlib only."""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Iterator

import pytest

from tests.servers import postfix as postfix_module
from tests.servers.postfix import PostfixServer

pytestmark = pytest.mark.postfix

ALICE = "alice@example.test"


@pytest.fixture
def pf(postfix: PostfixServer) -> Iterator[PostfixServer]:
    postfix.clear()
    yield postfix


def _ehlo_keywords(client: smtplib.SMTP) -> set[str]:
    code, _ = client.ehlo("client.fixture.test")
    assert code == 250
    return set(client.esmtp_features)  # smtplib lower-cases the keywords


def test_plain_port_ehlo(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        keywords = _ehlo_keywords(c)
        for kw in ("PIPELINING", "SIZE", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"):
            assert kw.lower() in keywords, kw
        assert "auth" not in keywords  # AUTH only after STARTTLS
        assert c.esmtp_features["size"] == "10240000"
        c.starttls(context=pf.client_context())
        keywords = _ehlo_keywords(c)
        assert "starttls" not in keywords
        mechanisms = set(c.esmtp_features["auth"].split())
        assert mechanisms == {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"}


def test_submission_requires_starttls(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.submission, timeout=10) as c:
        keywords = _ehlo_keywords(c)
        assert "starttls" in keywords
        assert "auth" not in keywords
        code, msg = c.mail("x@example.test")
        assert code == 530, msg
        assert b"STARTTLS" in msg


def test_submission_starttls_login_delivers_to_maildir(pf: PostfixServer) -> None:
    message = (
        "From: Alice <alice@example.test>\r\n"
        "To: Alice <alice@example.test>\r\n"
        "Subject: fixture self-test\r\n"
        "\r\n"
        "hello maildir\r\n"
    )
    with smtplib.SMTP(pf.host, pf.submission, timeout=10) as c:
        c.ehlo()
        c.starttls(context=ssl.create_default_context(cafile=str(pf.ca_file)))
        c.ehlo()
        c.login(ALICE, pf.users[ALICE])
        assert c.sendmail(ALICE, [ALICE], message) == {}
    (received,) = pf.wait_for_maildir("alice")
    assert b"Subject: fixture self-test\n" in received
    assert received.endswith(b"\nhello maildir\n")
    assert "sasl_username=alice@example.test" in pf.maillog()


def test_smtps_implicit_tls(pf: PostfixServer) -> None:
    ctx = pf.client_context()
    with smtplib.SMTP_SSL(pf.host, pf.smtps, context=ctx, timeout=10) as c:
        keywords = _ehlo_keywords(c)
        assert "auth" in keywords
        assert "starttls" not in keywords
        version = c.sock.version()  # type: ignore[union-attr]
        c.login("bob@example.test", pf.users["bob@example.test"])
        c.sendmail("bob@example.test", ["bob@example.test"], b"Subject: s\r\n\r\nvia smtps\r\n")
    assert version in ("TLSv1.2", "TLSv1.3")
    (received,) = pf.wait_for_maildir("bob")
    assert received.endswith(b"\nvia smtps\n")


def test_smtps_by_name_localhost(pf: PostfixServer) -> None:
    with smtplib.SMTP_SSL("localhost", pf.smtps, context=pf.client_context(), timeout=10) as c:
        assert c.noop()[0] == 250


def test_smtps_wrong_ca_fails(pf: PostfixServer) -> None:
    ctx = ssl.create_default_context()  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(pf.host, pf.smtps, context=ctx, timeout=10)


def test_capture_is_byte_exact(pf: PostfixServer) -> None:
    message = (
        b"Received: from elsewhere by foreign.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"From: a@example.test\r\n"
        b"To: someone@capture.test\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"X-Long: " + b"x" * 3000 + b"\r\n"
        b"\r\n"
        b".leading dot\r\n"
        b"..two dots\r\n"
        b"raw 8-bit: caf\xc3\xa9 \xff\r\n" + b"y" * 1500 + b"\r\n"
        b"last line\r\n"
    )
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        c.sendmail("a@example.test", ["someone@capture.test"], message)
    assert pf.wait_for_capture("someone@capture.test") == message


def test_capture_per_recipient(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        c.sendmail("a@example.test", ["one@capture.test", "two@capture.test"], b"X: 1\r\n\r\nb\r\n")
    assert pf.wait_for_capture("one@capture.test") == b"X: 1\r\n\r\nb\r\n"
    assert pf.wait_for_capture("two@capture.test") == b"X: 1\r\n\r\nb\r\n"
    pf.clear()
    assert pf.capture_files("one@capture.test") == []


def test_bad_password_535(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.submission, timeout=10) as c:
        c.starttls(context=pf.client_context())
        c.ehlo()
        c.user, c.password = ALICE, "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.auth("PLAIN", c.auth_plain)
        assert info.value.smtp_code == 535
        # The same connection can still authenticate (no anvil penalty to wait out).
        c.user, c.password = ALICE, pf.users[ALICE]
        assert c.auth("CRAM-MD5", c.auth_cram_md5)[0] == 235


def test_recipient_replies(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        c.ehlo()
        assert c.mail("a@example.test")[0] == 250
        code, msg = c.rcpt("tempfail@example.test")
        assert (code, msg[:5]) == (450, b"4.2.0"), msg
        code, msg = c.rcpt("reject@example.test")
        assert (code, msg[:5]) == (554, b"5.7.1"), msg
        code, msg = c.rcpt("nobody@example.test")  # not in the virtual mailbox table
        assert (code, msg[:5]) == (550, b"5.1.1"), msg
        code, msg = c.rcpt("someone@elsewhere.example")  # nothing is relayed
        assert code == 550, msg
        assert c.rcpt("anything@example.org")[0] == 250  # catch-all
        assert c.rcpt("carol@example.test")[0] == 250


def test_plain_auth_port_offers_auth_in_clear(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.plain_auth, timeout=10) as c:
        keywords = _ehlo_keywords(c)
        assert "starttls" not in keywords
        assert "PLAIN" in c.esmtp_features["auth"].split()
        c.login(ALICE, pf.users[ALICE])


def test_size_limited_port(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.size_limited, timeout=10) as c:
        c.ehlo()
        assert c.esmtp_features["size"] == str(pf.size_limit)
        code, msg = c.mail("a@example.test", [f"SIZE={pf.size_limit + 1}"])
        assert code == 552, msg


def test_nochunking_port(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.nochunking, timeout=10) as c:
        keywords = _ehlo_keywords(c)
        assert "chunking" not in keywords
        assert "pipelining" not in keywords
        assert "8bitmime" in keywords


def test_strict8bit_port(pf: PostfixServer) -> None:
    # strict_8bitmime looks at the MIME headers, not at BODY=8BITMIME.
    bare = b"Subject: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
    mime = (
        b"Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
    )
    with smtplib.SMTP(pf.host, pf.strict8bit, timeout=10) as c:
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail("a@example.test", ["someone@capture.test"], bare, ["BODY=8BITMIME"])
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (550, b"5.6.0")
        c.sendmail("a@example.test", ["someone@capture.test"], mime, ["BODY=8BITMIME"])
    assert pf.wait_for_capture("someone@capture.test") == mime
    # The other ports are lenient.
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        c.sendmail("a@example.test", ["lenient@capture.test"], bare)
    assert pf.wait_for_capture("lenient@capture.test") == bare


def test_maillog_has_envelope(pf: PostfixServer) -> None:
    with smtplib.SMTP(pf.host, pf.plain, timeout=10) as c:
        c.sendmail("env@example.test", ["dave@example.test"], b"Subject: e\r\n\r\nx\r\n")
    pf.wait_for_maildir("dave")
    log = pf.maillog()
    assert "from=<env@example.test>" in log
    assert "to=<dave@example.test>" in log


def test_missing_postfix_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postfix_module, "POSTFIX", "/nonexistent/postfix")
    with pytest.raises(pytest.fail.Exception, match=r"scripts/install-system-deps\.sh"):
        postfix_module.start_postfix()


def test_second_instance_starts_and_stops_cleanly() -> None:
    server = postfix_module.start_postfix()
    root = server.root
    master_pgid = server._master.pid  # type: ignore[union-attr]
    dovecot_pgid = server._dovecot.pid  # type: ignore[union-attr]
    with smtplib.SMTP(server.host, server.plain, timeout=10) as c:
        assert c.noop()[0] == 250
    server.stop()
    assert not root.exists()
    assert postfix_module._pgroup_alive(master_pgid) == []
    assert postfix_module._pgroup_alive(dovecot_pgid) == []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            assert str(root).encode() not in cmdline, cmdline
