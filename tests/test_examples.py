"""Every script in examples/ runs, as a user would run it, against a test server.

Each example reads its server from environment variables; here they point at the in-process
test servers (aiosmtpd, the scripted fake server, the test proxy, Postfix) and the script runs
as a subprocess with a timeout. The test then checks the message really arrived, so an example
cannot silently rot when the API changes.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.servers.fakesmtp import Responder
from tests.servers.proxy import proxy_factory  # noqa: F401 (fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30  # seconds per example run
SENDER = "sender@example.org"
RCPT = "rcpt@example.org"


def run_example(name: str, env: dict[str, str], *args: str) -> str:
    """Run examples/<name> with ``env`` added to a clean environment; return its stdout."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "MAIL_"))}
    base.update(env)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def url(server: Any) -> str:
    return f"smtp://{server.host}:{server.port}"


def test_every_example_has_a_test() -> None:
    tested = {
        "plain.py",
        "starttls_auth.py",
        "implicit_tls.py",
        "oauth2_token_provider.py",
        "attachments_inline.py",
        "async_bulk.py",
        "proxy.py",
        "ready_message.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_plain(aiosmtpd_server: Any) -> None:
    out = run_example(
        "plain.py", {"SMTP_URL": url(aiosmtpd_server), "MAIL_FROM": SENDER, "MAIL_TO": RCPT}
    )
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RCPT]
    message = parse(received.original_content)
    assert message["Subject"] == "Hello from smtpsubmit"
    assert message["Message-ID"].strip("<>") in out
    assert f"to {RCPT}" in out


def test_starttls_auth_aiosmtpd(aiosmtpd_starttls: Any, ca_file: str) -> None:
    server = aiosmtpd_starttls
    env = {
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_USER": server.username,
        "SMTP_PASSWORD": server.password,
        "SMTP_CA_FILE": ca_file,
        "MAIL_FROM": SENDER,
        "MAIL_TO": RCPT,
    }
    out = run_example("starttls_auth.py", env)
    (received,) = server.wait_for(1)
    assert received.auth_login == server.username
    assert received.rcpt_tos == [RCPT]
    assert "sent " in out


def test_starttls_auth_wrong_password_exits_69(aiosmtpd_starttls: Any, ca_file: str) -> None:
    server = aiosmtpd_starttls
    env = {
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_USER": server.username,
        "SMTP_PASSWORD": "wrong",
        "SMTP_CA_FILE": ca_file,
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "MAIL_"))}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "starttls_auth.py")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 69, proc.stderr
    assert "failed at auth" in proc.stderr
    assert "wrong" not in proc.stderr
    assert server.messages == []


@pytest.mark.postfix
def test_starttls_auth_postfix(postfix: Any) -> None:
    postfix.clear()
    user, password = next(iter(postfix.users.items()))
    token = uuid.uuid4().hex
    env = {
        "SMTP_HOST": postfix.host,
        "SMTP_PORT": str(postfix.submission),
        "SMTP_USER": user,
        "SMTP_PASSWORD": password,
        "SMTP_CA_FILE": str(postfix.ca_file),
        "MAIL_FROM": user,
        "MAIL_TO": f"{token}@capture.test",
    }
    out = run_example("starttls_auth.py", env)
    captured = postfix.wait_for_capture(f"{token}@capture.test")
    assert parse(captured)["Subject"] == "Submitted over STARTTLS"
    assert "sent " in out


def test_implicit_tls(aiosmtpd_implicit_tls: Any, ca_file: str) -> None:
    server = aiosmtpd_implicit_tls
    env = {
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_USER": server.username,
        "SMTP_PASSWORD": server.password,
        "SMTP_CA_FILE": ca_file,
        "MAIL_FROM": SENDER,
        "MAIL_TO": RCPT,
    }
    out = run_example("implicit_tls.py", env)
    (received,) = server.wait_for(1)
    assert received.auth_login == server.username
    assert "TLS: True" in out


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth2_token_provider(
    mechanism: str, fake_smtp: Any, server_ssl_context: Any, ca_file: str
) -> None:
    user, token = "me@example.org", "ya29.test-access-token"
    prefix = b"user=" + user.encode() if mechanism == "XOAUTH2" else b"n,a=" + user.encode() + b","
    expected = base64.b64encode(prefix + b"\x01auth=Bearer " + token.encode() + b"\x01\x01")
    seen: list[bytes] = []

    def check_auth(line: bytes, n: int) -> bytes:
        seen.append(line)
        if line == f"AUTH {mechanism} ".encode() + expected:
            return b"235 2.7.0 Accepted"
        return b"535 5.7.8 bad token"

    fake = fake_smtp(
        Responder(
            capabilities=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
            caps_after_tls=("PIPELINING", "8BITMIME", "AUTH XOAUTH2 OAUTHBEARER PLAIN"),
            tls_context=server_ssl_context,
            replies={"AUTH": check_auth},
        )
    )
    env = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(fake.port),
        "SMTP_USER": user,
        "SMTP_OAUTH_TOKEN": token,
        "SMTP_AUTH_MECHANISM": mechanism,
        "SMTP_CA_FILE": ca_file,
        "MAIL_FROM": SENDER,
        "MAIL_TO": RCPT,
    }
    out = run_example("oauth2_token_provider.py", env)
    assert len(seen) == 1, seen
    assert len(fake.data) == 1
    assert b"Subject: Sent with an OAuth 2.0 token" in fake.data[0]
    assert b"STARTTLS" in fake.commands[0]  # the token went only after the handshake
    assert "token fetched 1 time(s)" in out
    assert token not in out


def test_attachments_inline(aiosmtpd_server: Any) -> None:
    run_example(
        "attachments_inline.py",
        {"SMTP_URL": url(aiosmtpd_server), "MAIL_FROM": SENDER, "MAIL_TO": RCPT},
    )
    (received,) = aiosmtpd_server.wait_for(1)
    message = parse(received.original_content)
    assert message.get_content_type() == "multipart/mixed"
    types = [part.get_content_type() for part in message.walk()]
    assert "multipart/alternative" in types
    assert "multipart/related" in types
    logo = next(p for p in message.walk() if p.get_filename() == "logo.png")
    assert logo["Content-ID"] == "<logo>"
    assert logo.get_content_disposition() == "inline"
    html = next(p for p in message.walk() if p.get_content_type() == "text/html")
    assert 'src="cid:logo"' in html.get_content()
    names = {p.get_filename() for p in message.iter_attachments()}
    assert {"figures.csv", "attachments_inline.py"} <= names
    script = next(p for p in message.walk() if p.get_filename() == "attachments_inline.py")
    assert script.get_payload(decode=True) == (EXAMPLES / "attachments_inline.py").read_bytes()


def test_async_bulk(aiosmtpd_server: Any) -> None:
    env = {
        "SMTP_URL": url(aiosmtpd_server),
        "MAIL_FROM": SENDER,
        "MAIL_TO": "a@example.org,b@example.org",
        "BULK_COUNT": "6",
        "BULK_CONNECTIONS": "2",
    }
    out = run_example("async_bulk.py", env)
    received = aiosmtpd_server.wait_for(6)
    assert len(received) == 6
    subjects = sorted(parse(m.original_content)["Subject"] for m in received)
    assert subjects == sorted(f"Bulk message {n} of 6" for n in range(1, 7))
    assert sorted(m.rcpt_tos[0] for m in received) == ["a@example.org"] * 3 + ["b@example.org"] * 3
    assert "sent 6 of 6 messages over 2 connection(s)" in out


@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_proxy(kind: str, proxy_factory: Any, aiosmtpd_starttls: Any, ca_file: str) -> None:  # noqa: F811
    proxy = proxy_factory(kind, username="proxyuser", password="proxy-secret")
    server = aiosmtpd_starttls
    env = {
        "SMTP_PROXY": proxy.url(),
        "SMTP_HOST": "mx.fixture.test",  # resolved by the proxy, as a remote proxy would
        "SMTP_PORT": str(server.port),
        "SMTP_USER": server.username,
        "SMTP_PASSWORD": server.password,
        "SMTP_SECURITY": "starttls",
        "SMTP_CA_FILE": ca_file,
        "MAIL_FROM": SENDER,
        "MAIL_TO": RCPT,
    }
    out = run_example("proxy.py", env)
    (received,) = server.wait_for(1)
    assert received.auth_login == server.username
    assert proxy.targets == [("mx.fixture.test", server.port)]
    assert "proxy-secret" not in out
    assert server.password not in out


READY = (
    b"From: Me <sender@example.org>\r\n"
    b"To: to@example.org\r\n"
    b"Cc: cc@example.org\r\n"
    b"Bcc: hidden@example.org\r\n"
    b"Subject: A ready message\r\n"
    b"Message-ID: <ready-1@example.org>\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"\r\n"
    b"Written elsewhere, sent by smtpsubmit.\r\n"
)


def test_ready_message_headers_give_the_envelope(aiosmtpd_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(READY)
    out = run_example("ready_message.py", {"SMTP_URL": url(aiosmtpd_server)}, str(path))
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["to@example.org", "cc@example.org", "hidden@example.org"]
    assert b"Bcc:" not in received.original_content
    assert "sent ready-1@example.org" in out


def test_ready_message_explicit_envelope(aiosmtpd_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(READY)
    env = {"SMTP_URL": url(aiosmtpd_server), "MAIL_FROM": "bounce@example.org", "MAIL_TO": RCPT}
    run_example("ready_message.py", env, str(path))
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.mail_from == "bounce@example.org"
    assert received.rcpt_tos == [RCPT]
    # byte for byte, except that the Bcc field is never sent (RFC 5322 §3.6.3)
    assert received.original_content == READY.replace(b"Bcc: hidden@example.org\r\n", b"")
