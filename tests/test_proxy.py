"""Submission through SOCKS5, SOCKS4 and HTTP CONNECT proxies, with both drivers.

The proxy (tests/servers/proxy.py) runs on 127.0.0.1, records the target each client asked for
and resolves names itself (``mx.fixture.test`` -> 127.0.0.1), as a remote proxy would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smtpsubmit import (
    AsyncClient,
    AuthError,
    Client,
    ConnectError,
    Option,
    Server,
    SmtpError,
    SmtpTimeout,
    SubmitResult,
    TlsError,
)
from tests.drivers import EACH_DRIVER as DRIVERS
from tests.drivers import send_one, wait_for_token
from tests.servers.fakesmtp import Responder, Silent, Trickle
from tests.servers.proxy import TestProxy, proxy_pool

SENDER = "sender@example.org"
RCPT = "rcpt@example.org"
CANARY = "S3cr3t-CANARY"
KINDS = pytest.mark.parametrize(
    ("kind", "credentials"),
    [
        ("socks5", False),
        ("socks5", True),
        ("socks4", False),
        ("http", False),
        ("http", True),
    ],
    ids=["socks5", "socks5-auth", "socks4", "http", "http-auth"],
)


@pytest.fixture
def proxies() -> Iterator[Callable[..., TestProxy]]:
    """``make(kind, **kwargs) -> started TestProxy`` (tests/servers/proxy.py)."""
    with proxy_pool() as make:
        yield make


def make_raw(token: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: proxy {token}\r\n"
        f"Message-ID: <{token}@example.org>\r\n\r\nvia proxy {token}\r\n"
    ).encode()


def run(driver: str, server: Server, raw: bytes | None = None) -> tuple[SubmitResult, bool]:
    raw = raw or make_raw(uuid.uuid4().hex)
    return send_one(
        driver, server, raw, sender=SENDER, recipients=[RCPT], observe=lambda c, r: (r, c.is_tls)
    )


def fails(driver: str, server: Server, exc: type[BaseException] = SmtpError) -> Any:
    with pytest.raises(exc) as info:
        run(driver, server)
    return info.value


def make_proxy(factory: Any, kind: str, credentials: bool, **kwargs: Any) -> TestProxy:
    if credentials:
        kwargs.update(username="proxyuser", password=CANARY)
    return factory(kind, **kwargs)


# --------------------------------------------------------------------------------------
# Plain SMTP to aiosmtpd through every proxy type
# --------------------------------------------------------------------------------------


@DRIVERS
@KINDS
def test_submit_through_proxy_to_aiosmtpd(driver, kind, credentials, proxies, aiosmtpd_server):
    proxy = make_proxy(proxies, kind, credentials)
    server = Server("127.0.0.1", port=aiosmtpd_server.port, timeout=5, proxy=proxy.url())
    result, is_tls = run(driver, server)
    assert result.accepted == [RCPT] and not is_tls
    assert proxy.targets == [("127.0.0.1", aiosmtpd_server.port)]
    assert proxy.connections == 1
    assert len(aiosmtpd_server.wait_for(1)) == 1


@DRIVERS
@pytest.mark.parametrize("credentials", [False, True])
def test_http_proxy_greeting_in_the_same_segment_as_200(
    driver, credentials, proxies, aiosmtpd_server
):
    """The bytes after the proxy's reply belong to SMTP: none may be lost with the reply."""
    proxy = make_proxy(proxies, "http", credentials, coalesce=True)
    server = Server("127.0.0.1", port=aiosmtpd_server.port, timeout=3, proxy=proxy.url())
    result, _ = run(driver, server)
    assert result.accepted == [RCPT]


@DRIVERS
@pytest.mark.parametrize("scheme", ["socks5h", "socks4a"])
def test_remote_dns_proxy_schemes(driver, scheme, proxies, aiosmtpd_server):
    proxy = proxies(scheme[:6])
    server = Server(
        "mx.fixture.test",
        port=aiosmtpd_server.port,
        timeout=5,
        proxy=f"{scheme}://127.0.0.1:{proxy.port}",
    )
    run(driver, server)
    assert proxy.targets == [("mx.fixture.test", aiosmtpd_server.port)]


@DRIVERS
@pytest.mark.parametrize("kind", ["socks5", "socks4", "http"])
def test_proxy_resolves_the_host_name(driver, kind, proxies, aiosmtpd_server):
    """The name goes to the proxy unresolved (it need not resolve on the client)."""
    proxy = proxies(kind)
    server = Server("mx.fixture.test", port=aiosmtpd_server.port, timeout=5, proxy=proxy.url())
    run(driver, server)
    assert proxy.targets == [("mx.fixture.test", aiosmtpd_server.port)]


@DRIVERS
@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_implicit_tls_through_proxy(driver, kind, proxies, aiosmtpd_implicit_tls, ca_file):
    proxy = proxies(kind)
    server = Server(
        "mx.fixture.test",
        "alice",
        CANARY,
        aiosmtpd_implicit_tls.port,
        5,
        Option.SECURE_IMPLICIT,
        ca_file=ca_file,
        proxy=proxy.url(),
    )
    _, is_tls = run(driver, server)
    assert is_tls
    assert proxy.targets == [("mx.fixture.test", aiosmtpd_implicit_tls.port)]
    assert aiosmtpd_implicit_tls.wait_for(1)[0].auth_login == "alice"


# --------------------------------------------------------------------------------------
# Postfix with STARTTLS verified against tls_server_name, through SOCKS5 with a password
# --------------------------------------------------------------------------------------


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("tunnel", [False, True], ids=["direct-options", "tunnel"])
def test_postfix_starttls_through_socks5(driver, tunnel, proxies, postfix):
    proxy = proxies("socks5", username="user", password="pass")
    token = uuid.uuid4().hex
    options = Option.SECURE | (Option.TUNNEL if tunnel else Option.NONE)
    server = Server(
        "127.0.0.1",
        "alice@example.test",
        postfix.users["alice@example.test"],
        postfix.submission,
        10,
        options,
        ca_file=str(postfix.ca_file),
        tls_server_name="mx.fixture.test",
        proxy=f"socks5://user:pass@127.0.0.1:{proxy.port}",
    )
    result, is_tls = run(driver, server, make_raw(token))
    assert is_tls and result.reply.code == 250
    assert proxy.targets == [("127.0.0.1", postfix.submission)]
    wait_for_token(postfix, "catchall", token)


@pytest.mark.postfix
@DRIVERS
def test_postfix_through_proxy_wrong_tls_server_name(driver, proxies, postfix):
    proxy = proxies("socks5")
    server = Server(
        "127.0.0.1",
        port=postfix.submission,
        timeout=10,
        options=Option.SECURE | Option.TUNNEL,
        ca_file=str(postfix.ca_file),
        tls_server_name="not-the-server.test",
        proxy=proxy.url(),
    )
    err = fails(driver, server, TlsError)
    assert "not-the-server.test" in str(err)


def test_tunnel_with_proxy_and_ip_host_requires_tls_server_name():
    with pytest.raises(ValueError, match="tls_server_name"):
        Server(
            "127.0.0.1",
            port=587,
            options=Option.SECURE | Option.TUNNEL,
            proxy="socks5://127.0.0.1:1080",
        )


# --------------------------------------------------------------------------------------
# Failures: refused, bad proxy credentials, no proxy listening
# --------------------------------------------------------------------------------------


@DRIVERS
@KINDS
def test_proxy_refusing_is_a_connect_error(driver, kind, credentials, proxies, aiosmtpd_server):
    proxy = make_proxy(proxies, kind, credentials, refuse=True)
    server = Server("127.0.0.1", port=aiosmtpd_server.port, timeout=5, proxy=proxy.url())
    err = fails(driver, server, ConnectError)
    assert err.stage == "connect"
    assert CANARY not in str(err) and CANARY not in repr(err)
    assert aiosmtpd_server.messages == []


@DRIVERS
@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_proxy_wrong_password_is_a_connect_error(driver, kind, proxies, aiosmtpd_server):
    proxy = proxies(kind, username="proxyuser", password="right")
    url = proxy.url(password=CANARY)
    server = Server("127.0.0.1", port=aiosmtpd_server.port, timeout=5, proxy=url)
    err = fails(driver, server, ConnectError)
    assert proxy.auth_failures == 1
    assert proxy.targets == []
    for text in (str(err), repr(err), repr(server), str(server)):
        assert CANARY not in text


@DRIVERS
@pytest.mark.parametrize("scheme", ["socks5", "socks4", "http"])
def test_no_proxy_listening_is_a_connect_error(driver, scheme, closed_port):
    server = Server(
        "mx.fixture.test",
        port=25,
        timeout=3,
        proxy=f"{scheme}://u:{CANARY}@127.0.0.1:{closed_port}",
    )
    started = time.monotonic()
    err = fails(driver, server, ConnectError)
    assert time.monotonic() - started < 3
    assert err.is_temporary
    assert CANARY not in str(err)


@DRIVERS
def test_proxy_target_unreachable_is_a_connect_error(driver, proxies, closed_port):
    proxy = proxies("socks5")
    server = Server("127.0.0.1", port=closed_port, timeout=3, proxy=proxy.url())
    err = fails(driver, server, ConnectError)
    assert proxy.targets == [("127.0.0.1", closed_port)]
    assert err.stage == "connect"


def test_proxy_password_never_in_repr():
    for scheme in ("socks5", "socks4", "http"):
        server = Server(
            "smtp.example.org", "alice", "pw", proxy=f"{scheme}://proxyuser:{CANARY}@127.0.0.1:1080"
        )
        for text in (repr(server), str(server), repr(Client(server)), repr(AsyncClient(server))):
            assert CANARY not in text
            assert "proxyuser:***@127.0.0.1:1080" in text


def test_bad_proxy_url_is_a_value_error():
    for url in ("ftp://127.0.0.1:21", "socks5://", "127.0.0.1:1080"):
        with pytest.raises(ValueError, match="proxy"):
            Server("smtp.example.org", proxy=url)


# --------------------------------------------------------------------------------------
# One deadline for the whole connect phase (issue 13.11)
# --------------------------------------------------------------------------------------


@DRIVERS
def test_trickling_http_proxy_is_bounded_by_the_timeout(driver, fake_smtp):
    """A proxy that answers CONNECT one byte every 0.3 s: each byte is in time, the reply
    as a whole is not. timeout=1 bounds the exchange (it took 16 s in the sync driver)."""
    reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
    proxy = fake_smtp([Trickle(reply, interval=0.3)], check=False)
    server = Server("127.0.0.1", port=25, timeout=1, proxy=f"http://127.0.0.1:{proxy.port}")
    started = time.monotonic()
    err = fails(driver, server, SmtpTimeout)
    assert err.stage == "connect"
    assert time.monotonic() - started < 2.5


@DRIVERS
def test_silent_socks_proxy_is_bounded_by_the_timeout(driver, fake_smtp):
    proxy = fake_smtp([Silent(5)], check=False)
    server = Server("127.0.0.1", port=25, timeout=1, proxy=f"socks5://127.0.0.1:{proxy.port}")
    started = time.monotonic()
    err = fails(driver, server, SmtpTimeout)
    assert err.stage == "connect"
    assert time.monotonic() - started < 2.5


@DRIVERS
def test_no_loopback_exemption_through_a_proxy(driver, proxies, fake_smtp):
    """The connected peer is the proxy: plaintext AUTH stays refused, even to 127.0.0.1."""
    fake = fake_smtp(Responder(capabilities=("AUTH PLAIN",)), check=False)
    proxy = proxies("socks5")
    server = Server("127.0.0.1", "user", CANARY, fake.port, 3, proxy=proxy.url())
    err = fails(driver, server, AuthError)
    assert "allow_plaintext_auth" in str(err)
    fake.join(3)
    assert b"AUTH" not in fake.transcript[0]


@DRIVERS
def test_proxy_and_implicit_tls_share_one_connect_budget(driver, fake_smtp):
    """The proxy answers slowly (about 0.85 s), then nothing answers the TLS handshake: the
    connect phase still ends at timeout=1, not 1 s after the proxy's reply."""
    proxy = fake_smtp([Trickle(b"HTTP/1.1 200 OK\r\n\r\n", interval=0.045), Silent(5)], check=False)
    server = Server(
        "127.0.0.1",
        port=465,
        timeout=1,
        options=Option.SECURE_IMPLICIT,
        proxy=f"http://127.0.0.1:{proxy.port}",
    )
    started = time.monotonic()
    err = fails(driver, server, SmtpTimeout)
    assert err.stage == "connect"
    assert time.monotonic() - started < 1.5
