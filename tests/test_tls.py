"""TLS: every option combination against aiosmtpd and real Postfix, and the T faults.

Each network scenario runs with both drivers (``Client`` and ``AsyncClient``): the protocol is
written once, but sockets, ``ssl`` wrapping and error mapping are not.

Fault IDs (T1-T8, S8, S9) are the scenario IDs listed in docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from smtpsubmit import (
    Option,
    ProtocolError,
    Server,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    SubmitResult,
    TlsError,
)
from tests.drivers import EACH_DRIVER as DRIVERS
from tests.drivers import send_one, wait_for_token
from tests.servers.certs import client_cert_files, make_server_context
from tests.servers.fakesmtp import (
    Close,
    Delay,
    Expect,
    FakeSMTP,
    Responder,
    Send,
    Silent,
    StartTLS,
    _Ended,
    ehlo_reply,
)

SENDER = "sender@example.org"
RCPT = "rcpt@example.org"


def make_raw(token: str = "") -> bytes:
    token = token or uuid.uuid4().hex
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: tls test {token}\r\n"
        f"Message-ID: <{token}@example.org>\r\n\r\nhello {token}\r\n"
    ).encode()


RAW = make_raw("fixed")


@dataclass
class Outcome:
    result: SubmitResult
    is_tls: bool
    capabilities: dict[str, str]
    tls_info: Any


def run(
    driver: str,
    server: Server,
    raw: bytes = RAW,
    *,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (RCPT,),
) -> Outcome:
    """Connect, send one ready message, QUIT — with ``Client`` or ``AsyncClient``."""
    return send_one(
        driver,
        server,
        raw,
        sender=sender,
        recipients=recipients,
        observe=lambda c, r: Outcome(r, c.is_tls, c.capabilities, c.tls_info),
    )


def fails(driver: str, server: Server, exc: type[BaseException] = SmtpError) -> Any:
    """Run the scenario expecting ``exc``; return the exception info."""
    with pytest.raises(exc) as info:
        run(driver, server)
    return info.value


def client_lines(fake: FakeSMTP, index: int = 0) -> list[bytes]:
    return fake.commands[index]


def starttls_prelude() -> list[Any]:
    """Greeting, EHLO offering STARTTLS, and the 220 to STARTTLS: up to the handshake."""
    return [
        Send(b"220 fake.test ESMTP\r\n"),
        Expect(rb"EHLO .*"),
        Send(ehlo_reply("PIPELINING", "STARTTLS")),
        Expect(rb"STARTTLS"),
        Send(b"220 2.0.0 go ahead\r\n"),
    ]


def starttls_script(context: ssl.SSLContext, *after: Any, may_fail: bool = True) -> list[Any]:
    """The prelude, the handshake, then ``after``."""
    return [*starttls_prelude(), StartTLS(context, may_fail=may_fail), *after]


def tls_responder(**kwargs: Any) -> Responder:
    """What a well-behaved server does after the handshake (no greeting: it is STARTTLS)."""
    return Responder(greeting=None, **kwargs)


# --------------------------------------------------------------------------------------
# Options against aiosmtpd (trustme certificates)
# --------------------------------------------------------------------------------------


@DRIVERS
def test_secure_starttls_aiosmtpd(driver, aiosmtpd_starttls, ca_file):
    server = Server(
        "127.0.0.1",
        "alice",
        "S3cr3t-CANARY",
        aiosmtpd_starttls.port,
        5,
        Option.SECURE,
        ca_file=ca_file,
    )
    out = run(driver, server)
    assert out.is_tls
    assert out.tls_info.version in ("TLSv1.2", "TLSv1.3")
    assert "STARTTLS" not in out.capabilities  # post-TLS EHLO
    assert "AUTH" in out.capabilities
    [msg] = aiosmtpd_starttls.wait_for(1)
    assert msg.auth_login == "alice"
    assert msg.original_content == RAW


@DRIVERS
def test_secure_implicit_aiosmtpd_explicit_port(driver, aiosmtpd_implicit_tls, ca_file):
    server = Server(
        "127.0.0.1",
        "alice",
        "S3cr3t-CANARY",
        aiosmtpd_implicit_tls.port,
        5,
        Option.SECURE_IMPLICIT,
        ca_file=ca_file,
    )
    out = run(driver, server)
    assert out.is_tls
    [msg] = aiosmtpd_implicit_tls.wait_for(1)
    assert msg.auth_login == "alice"


@DRIVERS
def test_secure_optional_uses_starttls_when_offered(driver, aiosmtpd_starttls, ca_file):
    server = Server(
        "127.0.0.1",
        port=aiosmtpd_starttls.port,
        timeout=5,
        options=Option.SECURE_OPTIONAL,
        ca_file=ca_file,
    )
    out = run(driver, server)
    assert out.is_tls
    aiosmtpd_starttls.wait_for(1)


@DRIVERS
def test_secure_optional_continues_plain_when_not_offered(driver, aiosmtpd_server):
    server = Server(
        "127.0.0.1", port=aiosmtpd_server.port, timeout=5, options=Option.SECURE_OPTIONAL
    )
    out = run(driver, server)
    assert not out.is_tls
    assert "SMTPUTF8" in out.capabilities  # EXTENDED switched on by SECURE_OPTIONAL
    aiosmtpd_server.wait_for(1)


@DRIVERS
def test_untrusted_certificate_fails_by_default_and_trustedsite_accepts_it(
    driver, aiosmtpd_starttls
):
    # No ca_file: the trustme CA is unknown to the system trust store.
    base = Server("127.0.0.1", port=aiosmtpd_starttls.port, timeout=5, options=Option.SECURE)
    err = fails(driver, base, TlsError)
    assert err.stage == "starttls"
    assert "ca_file" in str(err) and "TRUSTEDSITE" in str(err)
    trusted = Server(
        "127.0.0.1",
        port=aiosmtpd_starttls.port,
        timeout=5,
        options=Option.SECURE | Option.TRUSTEDSITE,
    )
    out = run(driver, trusted)
    assert out.is_tls
    assert len(aiosmtpd_starttls.wait_for(1)) == 1


@DRIVERS
def test_trustedsite_implicit_with_untrusted_certificate(driver, aiosmtpd_implicit_tls):
    base = Server(
        "127.0.0.1", port=aiosmtpd_implicit_tls.port, timeout=5, options=Option.SECURE_IMPLICIT
    )
    err = fails(driver, base, TlsError)
    assert err.stage == "connect"
    out = run(
        driver,
        Server(
            "127.0.0.1",
            port=aiosmtpd_implicit_tls.port,
            timeout=5,
            options=Option.SECURE_IMPLICIT | Option.TRUSTEDSITE,
        ),
    )
    assert out.is_tls


@DRIVERS
def test_plain_none_uses_helo_and_no_extensions(driver, fake_smtp):
    fake = fake_smtp(Responder(capabilities=("PIPELINING", "8BITMIME")))
    server = Server("127.0.0.1", port=fake.port, timeout=5)
    out = run(driver, server)
    assert not out.is_tls and out.capabilities == {}
    assert client_lines(fake)[0].startswith(b"HELO ")
    fake.assert_ok()


@DRIVERS
def test_extended_switched_on_by_credentials(driver, fake_smtp):
    fake = fake_smtp(
        Responder(
            capabilities=("AUTH PLAIN",),
            replies={"AUTH PLAIN": "235 2.7.0 ok"},
        )
    )
    server = Server("127.0.0.1", "u", "pw", fake.port, 5)  # loopback: PLAIN allowed
    run(driver, server)
    assert client_lines(fake)[0].startswith(b"EHLO ")
    fake.assert_ok()


def test_extended_auto_rules():
    assert Option.EXTENDED not in Server("mx.example.org").effective_options
    assert Option.EXTENDED in Server("mx.example.org", port=587).effective_options
    assert Option.EXTENDED in Server("mx.example.org", "u", "p").effective_options
    assert Option.EXTENDED in Server("mx.example.org", options=Option.SECURE).effective_options
    assert (
        Option.EXTENDED
        in Server("mx.example.org", options=Option.SECURE_OPTIONAL).effective_options
    )
    assert (
        Option.EXTENDED
        not in Server("mx.example.org", options=Option.SECURE_IMPLICIT).effective_options
    )
    assert Server("mx.example.org", options=Option.SECURE_IMPLICIT).effective_port == 465
    # TUNNEL: the port number says nothing.
    assert (
        Option.EXTENDED
        not in Server("127.0.0.1", port=587, options=Option.TUNNEL).effective_options
    )
    assert (
        Option.EXTENDED
        in Server("127.0.0.1", "u", "p", 587, options=Option.TUNNEL).effective_options
    )


def test_tls_modes_are_exclusive():
    for pair in (
        Option.SECURE | Option.SECURE_IMPLICIT,
        Option.SECURE | Option.SECURE_OPTIONAL,
        Option.SECURE_IMPLICIT | Option.SECURE_OPTIONAL,
    ):
        with pytest.raises(ValueError, match="at most one"):
            Server("mx.example.org", options=pair)


# --------------------------------------------------------------------------------------
# Options against real Postfix
# --------------------------------------------------------------------------------------


def postfix_server(postfix, port: int, options: Option, **kwargs: Any) -> Server:
    kwargs.setdefault("ca_file", str(postfix.ca_file))
    return Server("127.0.0.1", port=port, timeout=10, options=options, **kwargs)


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("port_name", ["plain", "submission"])
def test_postfix_secure_starttls(driver, port_name, postfix):
    token = uuid.uuid4().hex
    server = postfix_server(
        postfix, getattr(postfix, port_name), Option.SECURE, tls_server_name="mx.fixture.test"
    )
    out = run(driver, server, make_raw(token))
    assert out.is_tls
    assert "STARTTLS" not in out.capabilities
    assert out.result.reply.code == 250
    wait_for_token(postfix, "catchall", token)


@pytest.mark.postfix
@DRIVERS
def test_postfix_secure_implicit_on_smtps(driver, postfix):
    token = uuid.uuid4().hex
    server = postfix_server(postfix, postfix.smtps, Option.SECURE_IMPLICIT)
    assert server.effective_port == postfix.smtps
    out = run(driver, server, make_raw(token))
    assert out.is_tls
    wait_for_token(postfix, "catchall", token)


@pytest.mark.postfix
@DRIVERS
def test_postfix_secure_optional(driver, postfix):
    with_tls = run(driver, postfix_server(postfix, postfix.plain, Option.SECURE_OPTIONAL))
    assert with_tls.is_tls
    without = run(driver, postfix_server(postfix, postfix.plain_auth, Option.SECURE_OPTIONAL))
    assert not without.is_tls
    assert "AUTH" in without.capabilities


@pytest.mark.postfix
@DRIVERS
def test_postfix_secure_required_but_not_offered(driver, postfix):
    err = fails(driver, postfix_server(postfix, postfix.plain_auth, Option.SECURE), TlsError)
    assert err.stage == "starttls"


@pytest.mark.postfix
@DRIVERS
def test_postfix_trustedsite(driver, postfix):
    untrusted = Server("127.0.0.1", port=postfix.submission, timeout=10, options=Option.SECURE)
    err = fails(driver, untrusted, TlsError)
    assert "ca_file" in str(err)
    trusted = Server(
        "127.0.0.1", port=postfix.submission, timeout=10, options=Option.SECURE | Option.TRUSTEDSITE
    )
    assert run(driver, trusted).is_tls


@pytest.mark.postfix
@DRIVERS
def test_postfix_submission_without_tls_is_refused_by_the_server(driver, postfix):
    # The server demands TLS (530 at MAIL): a plain client gets a typed refusal, not a hang.
    server = Server("127.0.0.1", port=postfix.submission, timeout=10, options=Option.EXTENDED)
    err = fails(driver, server)
    assert err.reply is not None and err.reply.code == 530


# --------------------------------------------------------------------------------------
# T1, T2: STARTTLS missing or refused
# --------------------------------------------------------------------------------------


@DRIVERS
def test_t1_secure_without_starttls_sends_nothing_after_ehlo(driver, fake_smtp):
    fake = fake_smtp(
        [
            Send(b"220 fake.test ESMTP\r\n"),
            Expect(rb"EHLO .*"),
            Send(ehlo_reply("PIPELINING", "AUTH PLAIN LOGIN")),
            Silent(2),
        ],
        check=False,
    )
    server = Server("127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE)
    err = fails(driver, server, TlsError)
    assert err.stage == "starttls"
    assert "STARTTLS" in str(err)
    fake.join(3)
    after_ehlo = fake.transcript[0].split(b"\r\n", 1)[1]
    assert after_ehlo in (b"", b"QUIT\r\n"), after_ehlo
    assert b"AUTH" not in fake.transcript[0] and b"MAIL" not in fake.transcript[0]


@DRIVERS
@pytest.mark.parametrize(("code", "temporary"), [(454, True), (502, False)])
def test_t2_starttls_refused(driver, code, temporary, fake_smtp):
    fake = fake_smtp(
        Responder(
            capabilities=("STARTTLS", "AUTH PLAIN"),
            replies={"STARTTLS": f"{code} 4.7.0 TLS not available now"},
        )
    )
    server = Server("127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE)
    err = fails(driver, server, TlsError)
    assert err.stage == "starttls"
    assert err.reply is not None and err.reply.code == code
    assert err.is_temporary is temporary
    fake.join(3)
    lines = client_lines(fake)
    assert lines[1] == b"STARTTLS"
    assert all(not line.startswith((b"AUTH", b"MAIL", b"RCPT")) for line in lines)


@DRIVERS
def test_secure_optional_refused_starttls_is_not_a_silent_downgrade(driver, fake_smtp):
    """Offered, then refused: SECURE_OPTIONAL continues only when STARTTLS is *not offered*."""
    fake = fake_smtp(
        Responder(
            capabilities=("STARTTLS",),
            replies={"STARTTLS": "454 4.7.0 not now"},
        )
    )
    server = Server("127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE_OPTIONAL)
    err = fails(driver, server, TlsError)
    assert err.reply is not None and err.reply.code == 454


# --------------------------------------------------------------------------------------
# T3, T4: certificate problems
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("expired", ("expired", "TRUSTEDSITE")),
        ("untrusted", ("unknown certificate authority", "ca_file", "TRUSTEDSITE")),
        ("wrong-name", ("does not match", "tls_server_name", "TRUSTEDSITE")),
    ],
)
def test_t3_t4_bad_certificate(driver, kind, words, tls_ca, ca_file, fake_smtp):
    context = {
        "expired": lambda: make_server_context(tls_ca, expired=True),
        "untrusted": lambda: make_server_context(trustme.CA()),
        "wrong-name": lambda: make_server_context(tls_ca, "other.test"),
    }[kind]()
    fake = fake_smtp(starttls_script(context, tls_responder()), check=False)
    server = Server(
        "127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE, ca_file=ca_file
    )
    err = fails(driver, server, TlsError)
    assert err.stage == "starttls"
    for word in words:
        assert word in str(err), (word, str(err))
    fake.join(3)
    assert b"AUTH" not in fake.transcript[0]  # nothing went out after the failed handshake


@DRIVERS
def test_t3_self_signed_certificate(driver, fake_smtp):
    ca = trustme.CA()
    context = make_server_context(ca)  # a different CA: self-signed root in the chain
    fake = fake_smtp(starttls_script(context, tls_responder()), check=False)
    err = fails(
        driver, Server("127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE), TlsError
    )
    assert "certificate" in str(err) and "TRUSTEDSITE" in str(err)


@DRIVERS
def test_t4_wrong_name_fixed_by_tls_server_name(driver, tls_ca, ca_file, fake_smtp):
    context = make_server_context(tls_ca, "other.test")
    fake = fake_smtp(starttls_script(context, tls_responder()))
    server = Server(
        "127.0.0.1",
        port=fake.port,
        timeout=3,
        options=Option.SECURE,
        ca_file=ca_file,
        tls_server_name="other.test",
    )
    assert run(driver, server).is_tls
    fake.assert_ok()


@DRIVERS
def test_t4_ip_connection_needs_tls_server_name(driver, tls_ca, ca_file, fake_smtp):
    """The certificate names only mx.fixture.test: 127.0.0.1 fails, tls_server_name fixes it."""
    context = make_server_context(tls_ca, "mx.fixture.test")
    fake = fake_smtp(lambda i: starttls_script(context, tls_responder()), check=False)
    plain = Server("127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE, ca_file=ca_file)
    err = fails(driver, plain, TlsError)
    assert "'127.0.0.1'" in str(err) and "tls_server_name" in str(err)
    named = Server(
        "127.0.0.1",
        port=fake.port,
        timeout=3,
        options=Option.SECURE,
        ca_file=ca_file,
        tls_server_name="mx.fixture.test",
    )
    assert run(driver, named).is_tls


@DRIVERS
def test_trustedsite_accepts_expired_and_wrong_name(driver, tls_ca, fake_smtp):
    context = make_server_context(tls_ca, "other.test", expired=True)
    fake = fake_smtp(starttls_script(context, tls_responder()))
    server = Server(
        "127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE | Option.TRUSTEDSITE
    )
    assert run(driver, server).is_tls
    fake.assert_ok()


# --------------------------------------------------------------------------------------
# T5: old protocol versions
# --------------------------------------------------------------------------------------


@DRIVERS
def test_t5_tls10_only_server_refused(driver, tls_ca, ca_file, fake_smtp):
    context = make_server_context(tls_ca, tls_max=ssl.TLSVersion.TLSv1)
    fake = fake_smtp(starttls_script(context, tls_responder()), check=False)
    server = Server("127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE, ca_file=ca_file)
    err = fails(driver, server, TlsError)
    assert "1.2" in str(err) and "version" in str(err).lower()


@DRIVERS
def test_t5_trustedsite_does_not_lower_the_version_floor(driver, tls_ca, fake_smtp):
    context = make_server_context(tls_ca, tls_max=ssl.TLSVersion.TLSv1_1)
    fake = fake_smtp(starttls_script(context, tls_responder()), check=False)
    server = Server(
        "127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE | Option.TRUSTEDSITE
    )
    err = fails(driver, server, TlsError)
    assert "1.2" in str(err)


# --------------------------------------------------------------------------------------
# T6: the wrong kind of port
# --------------------------------------------------------------------------------------


@DRIVERS
def test_t6_plaintext_server_on_implicit_port(driver, fake_smtp):
    fake = fake_smtp(Responder(), check=False)
    server = Server("127.0.0.1", port=fake.port, timeout=5, options=Option.SECURE_IMPLICIT)
    started = time.monotonic()
    err = fails(driver, server, TlsError)
    assert time.monotonic() - started < 5
    assert err.stage == "connect"
    assert "did not answer with TLS" in str(err)


@DRIVERS
def test_t6_tls_server_on_plain_port(driver, server_ssl_context, fake_smtp):
    fake = fake_smtp([StartTLS(server_ssl_context, timeout=3, may_fail=True)], check=False)
    server = Server("127.0.0.1", port=fake.port, timeout=2, options=Option.SECURE)
    started = time.monotonic()
    err = fails(driver, server)
    assert time.monotonic() - started < 4
    # A TLS server waits for a ClientHello: no greeting ever comes.
    assert isinstance(err, SmtpTimeout | ServerDisconnected | ProtocolError)
    assert err.stage == "greeting"


# --------------------------------------------------------------------------------------
# T7: handshake stalled or reset
# --------------------------------------------------------------------------------------


@DRIVERS
def test_t7_starttls_handshake_stalled(driver, fake_smtp):
    fake = fake_smtp(
        [*starttls_prelude(), Silent(6)],
        check=False,
    )
    server = Server("127.0.0.1", port=fake.port, timeout=1.5, options=Option.SECURE)
    started = time.monotonic()
    err = fails(driver, server, SmtpError)
    assert time.monotonic() - started < 3.5
    assert isinstance(err, SmtpTimeout | TlsError)
    assert err.stage == "starttls"


@DRIVERS
def test_t7_implicit_handshake_stalled(driver, fake_smtp):
    fake = fake_smtp([Silent(6)], check=False)
    server = Server("127.0.0.1", port=fake.port, timeout=1.5, options=Option.SECURE_IMPLICIT)
    started = time.monotonic()
    err = fails(driver, server, SmtpError)
    assert time.monotonic() - started < 3.5
    assert isinstance(err, SmtpTimeout | TlsError)
    assert err.stage == "connect"


@DRIVERS
def test_t7_handshake_reset(driver, fake_smtp):
    from tests.servers.fakesmtp import Reset

    fake = fake_smtp(
        [*starttls_prelude(), Delay(0.2), Reset()],
        check=False,
    )
    server = Server("127.0.0.1", port=fake.port, timeout=3, options=Option.SECURE)
    err = fails(driver, server, TlsError)
    assert err.stage == "starttls"


# --------------------------------------------------------------------------------------
# T8: no close_notify after 221
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_t8_missing_close_notify_after_quit(driver, mode, server_ssl_context, ca_file, fake_smtp):
    quit_reply = [Send(b"221 2.0.0 bye\r\n"), Close(close_notify=False)]
    if mode == "starttls":
        script = [Responder(tls_context=server_ssl_context, replies={"QUIT": quit_reply})]
        options = Option.SECURE
    else:
        script = [StartTLS(server_ssl_context), Responder(replies={"QUIT": quit_reply})]
        options = Option.SECURE_IMPLICIT
    fake = fake_smtp(script)
    server = Server("127.0.0.1", port=fake.port, timeout=3, options=options, ca_file=ca_file)
    out = run(driver, server)  # no exception
    assert out.is_tls and out.result.reply.code == 250
    fake.assert_ok()
    assert fake.commands[0][-1] == b"QUIT"


# --------------------------------------------------------------------------------------
# Client certificates
# --------------------------------------------------------------------------------------


class GracefulStartTLS(StartTLS):
    """Like StartTLS, but a failed handshake ends with the alert and a FIN, not an RST.

    A real server (Postfix) closes this way; with an RST the client's kernel may drop the
    alert before the client reads it (TLS 1.3 sends it after the client thinks it is done).
    """

    def run(self, c: Any) -> None:
        c.sock.settimeout(self.timeout)
        tls = self.context.wrap_socket(c.sock, server_side=True, do_handshake_on_connect=False)
        c.sock = tls
        try:
            tls.do_handshake()
        except (OSError, ValueError) as exc:
            c.event(f"TLS handshake failed: {exc!r}")
            c.close(drain=1.0, close_notify=False)
            raise _Ended("tls failed") from None
        c.tls = True


@DRIVERS
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("tls_max", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_client_certificate(driver, mode, tls_max, tls_ca, ca_file, fake_smtp):
    context = make_server_context(tls_ca, require_client_cert=True, tls_max=tls_max)
    cert, key = client_cert_files(tls_ca)
    if mode == "starttls":
        fake = fake_smtp(
            [*starttls_script(context)[:-1], GracefulStartTLS(context), tls_responder()]
        )
        options = Option.SECURE
    else:
        fake = fake_smtp([GracefulStartTLS(context), Responder()])
        options = Option.SECURE_IMPLICIT
    good = Server(
        "127.0.0.1",
        port=fake.port,
        timeout=3,
        options=options,
        ca_file=ca_file,
        client_cert=cert,
        client_key=key,
    )
    out = run(driver, good)
    assert out.is_tls
    assert len(fake.data) == 1
    bad = Server("127.0.0.1", port=fake.port, timeout=3, options=options, ca_file=ca_file)
    err = fails(driver, bad, TlsError)
    assert "client_cert" in str(err)
    assert len(fake.data) == 1


def test_client_certificate_unreadable_is_a_tls_error(tmp_path):
    from smtpsubmit.tls import make_ssl_context

    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TlsError, match="client certificate"):
        make_ssl_context(Server("mx.example.org", options=Option.SECURE, client_cert=missing))


@DRIVERS
def test_ca_file_replaces_the_system_trust_store(
    driver, aiosmtpd_starttls, ca_file, tmp_path, monkeypatch
):
    # The fixture's CA stands in for a public CA: SSL_CERT_FILE makes it the system store
    # (OpenSSL reads the variable each time a context loads its default paths).
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    base = Server("127.0.0.1", port=aiosmtpd_starttls.port, timeout=5, options=Option.SECURE)
    assert run(driver, base).is_tls  # the "system store" alone is enough
    unrelated = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(unrelated))
    pinned = Server(
        "127.0.0.1",
        port=aiosmtpd_starttls.port,
        timeout=5,
        options=Option.SECURE,
        ca_file=str(unrelated),
    )
    err = fails(driver, pinned, TlsError)  # the system CA is not trusted next to ca_file
    assert err.stage == "starttls" and "unknown certificate authority" in str(err)
    assert len(aiosmtpd_starttls.wait_for(1)) == 1  # only the first connection delivered


def test_ca_path_replaces_the_system_trust_store(tls_ca, tmp_path, monkeypatch):
    from smtpsubmit.tls import make_ssl_context

    system = tmp_path / "system.pem"
    tls_ca.cert_pem.write_to_path(str(system))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "empty"))
    assert make_ssl_context(Server("h")).cert_store_stats()["x509_ca"] == 1
    # ca_path is read lazily, by hash, during a handshake: no CA is loaded up front.
    context = make_ssl_context(Server("h", ca_path=str(tmp_path / "empty")))
    assert context.cert_store_stats()["x509_ca"] == 0


def _encrypted_client_key(tmp_path) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    cert, key = client_cert_files(trustme.CA(), tmp_path)
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key pass phrase"),
    )
    with open(key, "wb") as f:
        f.write(encrypted)
    return cert, key


def test_encrypted_client_key_is_a_tls_error_without_a_prompt(tmp_path):
    """On a terminal, OpenSSL would ask for the pass phrase and wait; it must fail instead."""
    import fcntl
    import os
    import select
    import subprocess
    import sys
    import termios

    cert, key = _encrypted_client_key(tmp_path)
    code = (
        "from smtpsubmit import Server, TlsError\n"
        "from smtpsubmit.tls import make_ssl_context\n"
        "try:\n"
        f"    make_ssl_context(Server('h', client_cert={cert!r}, client_key={key!r}))\n"
        "except TlsError as exc:\n"
        "    print('TlsError:', exc)\n"
    )
    master, slave = os.openpty()

    def controlling_tty() -> None:  # runs in the child after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_tty,  # noqa: PLW1509 - makes the pty the controlling terminal
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and b"pass phrase" not in output.lower():
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(master)
    text = output.decode("utf-8", "replace")
    assert "pass phrase" not in text.lower(), text
    assert "TlsError: the client key" in text and "encrypted" in text, text


def test_encrypted_client_key_never_reaches_openssls_prompt(tmp_path, monkeypatch):
    """In process: the password callback is what load_cert_chain gets, and it refuses."""
    from smtpsubmit import tls

    cert, key = _encrypted_client_key(tmp_path)
    seen: list[Any] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, password=None):
        seen.append(password)
        return real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    with pytest.raises(TlsError, match="encrypted") as info:
        tls.make_ssl_context(Server("h", client_cert=cert, client_key=key))
    assert callable(seen[0])
    assert info.value.__cause__ is None and info.value.__context__ is None
    # An unencrypted key never calls the callback.
    (tmp_path / "plain").mkdir()
    plain_cert, plain_key = client_cert_files(trustme.CA(), tmp_path / "plain")
    tls.make_ssl_context(Server("h", client_cert=plain_cert, client_key=plain_key))


# --------------------------------------------------------------------------------------
# S8: STARTTLS response injection; S9: capabilities after TLS
# --------------------------------------------------------------------------------------

LOGIN_EXCHANGE = [
    Send(b"334 VXNlcm5hbWU6\r\n"),
    Expect(base64.b64encode(b"user")),
    Send(b"334 UGFzc3dvcmQ6\r\n"),
    Expect(base64.b64encode(b"S3cr3t-CANARY")),
    Send(b"235 2.7.0 ok\r\n"),
]


@DRIVERS
def test_s8_starttls_response_injection_is_discarded(
    driver, server_ssl_context, ca_file, fake_smtp
):
    fake = fake_smtp(
        [
            Send(b"220 fake.test ESMTP\r\n"),
            Expect(rb"EHLO .*"),
            Send(ehlo_reply("STARTTLS", "AUTH LOGIN")),
            Expect(rb"STARTTLS"),
            Send(b"220 go\r\n250-x\r\n250 AUTH PLAIN\r\n"),  # one segment: reply + injection
            StartTLS(server_ssl_context),
            tls_responder(capabilities=("AUTH LOGIN",), replies={"AUTH LOGIN": LOGIN_EXCHANGE}),
        ]
    )
    server = Server(
        "127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE, ca_file=ca_file
    )
    out = run(driver, server)
    assert out.is_tls
    fake.assert_ok()
    lines = client_lines(fake)
    after_tls = lines[lines.index(b"STARTTLS") + 1 :]
    assert after_tls[0].startswith(b"EHLO ")  # a fresh EHLO, not the injected reply
    assert after_tls[1] == b"AUTH LOGIN"
    assert not any(line.startswith(b"AUTH PLAIN") for line in lines)
    assert out.capabilities.get("AUTH") == "LOGIN"


@DRIVERS
def test_s8_late_injection_breaks_the_handshake_cleanly(
    driver, server_ssl_context, ca_file, fake_smtp
):
    """Injected bytes that arrive after the client started TLS are no TLS record: TlsError."""
    fake = fake_smtp(
        [
            Send(b"220 fake.test ESMTP\r\n"),
            Expect(rb"EHLO .*"),
            Send(ehlo_reply("STARTTLS", "AUTH LOGIN")),
            Expect(rb"STARTTLS"),
            Send(b"220 go\r\n"),
            Delay(0.3),
            Send(b"250-x\r\n250 AUTH PLAIN\r\n"),
            Silent(3),
        ],
        check=False,
    )
    server = Server(
        "127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE, ca_file=ca_file
    )
    err = fails(driver, server, TlsError)
    assert err.stage == "starttls"
    fake.join(4)
    assert b"AUTH" not in fake.transcript[0]


@DRIVERS
def test_s9_only_post_tls_capabilities_are_used(driver, server_ssl_context, ca_file, fake_smtp):
    fake = fake_smtp(
        Responder(
            tls_context=server_ssl_context,
            capabilities=("AUTH PLAIN", "SIZE 100", "PIPELINING"),
            caps_after_tls=("AUTH LOGIN", "8BITMIME"),
            replies={"AUTH LOGIN": LOGIN_EXCHANGE},
            strict=True,
        )
    )
    server = Server(
        "127.0.0.1", "user", "S3cr3t-CANARY", fake.port, 3, Option.SECURE, ca_file=ca_file
    )
    big = RAW + b"x" * 500  # over the pre-TLS SIZE 100: must not be refused on it
    out = run(driver, server, big)
    assert set(out.capabilities) == {"AUTH", "8BITMIME"}
    fake.assert_ok()
    lines = client_lines(fake)
    assert b"AUTH LOGIN" in lines
    assert not any(line.startswith(b"AUTH PLAIN") for line in lines)
    assert not any(b"SIZE=" in line for line in lines)  # SIZE was not offered after TLS
    # No PIPELINING after TLS: MAIL and RCPT went out in separate reads.
    assert fake.data and fake.data[0].endswith(b"\r\n.\r\n")


# --------------------------------------------------------------------------------------
# TUNNEL
# --------------------------------------------------------------------------------------


def test_tunnel_with_tls_and_ip_host_requires_tls_server_name():
    for mode in (Option.SECURE, Option.SECURE_IMPLICIT, Option.SECURE_OPTIONAL):
        with pytest.raises(ValueError, match="tls_server_name"):
            Server("127.0.0.1", port=2525, options=Option.TUNNEL | mode)
        Server(
            "127.0.0.1", port=2525, options=Option.TUNNEL | mode, tls_server_name="mx.fixture.test"
        )
    # a host name is its own server name; TRUSTEDSITE checks no name
    Server("localhost", port=2525, options=Option.TUNNEL | Option.SECURE)
    Server("127.0.0.1", port=2525, options=Option.TUNNEL | Option.SECURE | Option.TRUSTEDSITE)


def test_tunnel_has_no_loopback_exemption():
    assert Server("127.0.0.1", "u", "p").plaintext_auth_allowed
    assert not Server("127.0.0.1", "u", "p", options=Option.TUNNEL).plaintext_auth_allowed
    assert not Server("localhost", "u", "p", options=Option.TUNNEL).plaintext_auth_allowed
    assert Server(
        "127.0.0.1", "u", "p", options=Option.TUNNEL, allow_plaintext_auth=True
    ).plaintext_auth_allowed


@DRIVERS
def test_tunnel_verifies_against_tls_server_name(driver, tls_ca, ca_file, fake_smtp):
    context = make_server_context(tls_ca, "mx.fixture.test")
    fake = fake_smtp(lambda i: starttls_script(context, tls_responder()), check=False)
    good = Server(
        "127.0.0.1",
        port=fake.port,
        timeout=3,
        options=Option.TUNNEL | Option.SECURE,
        ca_file=ca_file,
        tls_server_name="mx.fixture.test",
    )
    assert run(driver, good).is_tls
    bad = Server(
        "127.0.0.1",
        port=fake.port,
        timeout=3,
        options=Option.TUNNEL | Option.SECURE,
        ca_file=ca_file,
        tls_server_name="other.fixture.test",
    )
    err = fails(driver, bad, TlsError)
    assert "other.fixture.test" in str(err)


@DRIVERS
def test_tunnel_port_587_does_not_switch_on_extended(driver, fake_smtp):
    """Over a tunnel the local port is meaningless; HELO unless EXTENDED is asked for."""
    fake = fake_smtp(Responder())
    server = Server("127.0.0.1", port=fake.port, timeout=3, options=Option.TUNNEL)
    run(driver, server)
    assert client_lines(fake)[0].startswith(b"HELO ")
    fake.assert_ok()


@DRIVERS
def test_implicit_tls_with_auth_on_tunnel(driver, server_ssl_context, ca_file, fake_smtp):
    fake = fake_smtp(
        [
            StartTLS(server_ssl_context),
            Responder(capabilities=("AUTH PLAIN",), replies={"AUTH PLAIN": "235 2.7.0 ok"}),
        ]
    )
    server = Server(
        "127.0.0.1",
        "user",
        "S3cr3t-CANARY",
        fake.port,
        3,
        Option.TUNNEL | Option.SECURE_IMPLICIT,
        ca_file=ca_file,
        tls_server_name="mx.fixture.test",
    )
    out = run(driver, server)
    assert out.is_tls
    fake.assert_ok()
    assert any(line.startswith(b"AUTH PLAIN ") for line in client_lines(fake))


def test_s8_async_stream_refuses_plaintext_buffered_before_the_handshake():
    """Bytes that reached the asyncio reader after the STARTTLS reply would outlive the
    handshake in its buffer (the sync socket feeds them to OpenSSL, which fails): refused."""
    from smtpsubmit.transport import AsyncStream

    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"250-x\r\n250 AUTH PLAIN\r\n")
        stream = AsyncStream(reader, None)  # type: ignore[arg-type]
        server = Server("127.0.0.1", options=Option.SECURE)
        with pytest.raises(TlsError, match="plaintext after its STARTTLS reply") as info:
            await stream.start_tls(server, "starttls", 5.0)
        assert info.value.stage == "starttls"

    asyncio.run(main())
