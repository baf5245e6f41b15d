"""Self-tests of the test servers (tests/servers/*), using only smtplib, ssl and socket."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
import warnings

import pytest
import trustme

from tests.servers.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER
from tests.servers.certs import client_cert_files, make_server_context
from tests.servers.fakesmtp import (
    Close,
    Delay,
    Expect,
    ExpectClose,
    FakeSMTP,
    ReadBytes,
    ReadData,
    Reset,
    Responder,
    Send,
    Silent,
    StartTLS,
    StopReading,
    Trickle,
    ehlo_reply,
)

pytestmark = pytest.mark.timeout(30)

BODY = b"Subject: hi\r\n\r\n.leading dot\r\nline two\r\n"


def _recv_until(sock: socket.socket, marker: bytes, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


# ----------------------------------------------------------------------------- fake server


def test_fake_script_transcript_and_pipelined_reads(fake_smtp):
    fake = fake_smtp(
        [
            Send(b"220 fake ESMTP\r\n"),
            Expect(rb"EHLO .*"),
            Send(ehlo_reply("PIPELINING", "8BITMIME")),
            Expect(rb"MAIL FROM:<a@b\.test>.*"),
            Expect(rb"RCPT TO:<c@d\.test>"),
            Expect(rb"DATA"),
            Send(b"250 ok\r\n250 ok\r\n354 go\r\n"),
            ReadData(),
            Send(b"250 queued\r\n"),
            Expect(rb"QUIT"),
            Send(b"221 bye\r\n"),
        ]
    )
    with socket.create_connection(fake.address, timeout=3) as s:
        assert _recv_until(s, b"\r\n").startswith(b"220")
        s.sendall(b"EHLO me\r\n")
        assert b"250 8BITMIME" in _recv_until(s, b"250 8BITMIME\r\n")
        # one write, as a pipelining client would do
        s.sendall(b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        assert _recv_until(s, b"354 go\r\n").endswith(b"354 go\r\n")
        s.sendall(b"Subject: hi\r\n\r\n..dot\r\n.\r\n")
        assert _recv_until(s, b"queued\r\n") == b"250 queued\r\n"
        s.sendall(b"QUIT\r\n")
        assert _recv_until(s, b"221 bye\r\n") == b"221 bye\r\n"
    fake.assert_ok()
    assert fake.connections == 1
    assert fake.reads[0] == 4  # EHLO, the pipelined group, the body, QUIT
    assert fake.data == [b"Subject: hi\r\n\r\n..dot\r\n.\r\n"]
    assert fake.commands[0][:4] == [
        b"EHLO me",
        b"MAIL FROM:<a@b.test> BODY=8BITMIME",
        b"RCPT TO:<c@d.test>",
        b"DATA",
    ]
    assert fake.transcript[0].startswith(b"EHLO me\r\nMAIL FROM:")
    assert fake.transcript[0].endswith(b"QUIT\r\n")
    assert fake.sent[0].startswith(b"220 fake ESMTP\r\n")


def test_fake_with_smtplib_and_responder(fake_smtp):
    fake = fake_smtp(Responder(capabilities=["PIPELINING", "8BITMIME", "SIZE 1000"]))
    with smtplib.SMTP(fake.host, fake.port, timeout=5) as c:
        c.ehlo("client.test")
        assert c.has_extn("pipelining")
        assert c.esmtp_features["size"] == "1000"
        c.sendmail("a@b.test", ["c@d.test", "e@f.test"], BODY)
    fake.assert_ok()
    assert fake.data == [b"Subject: hi\r\n\r\n..leading dot\r\nline two\r\n.\r\n"]
    assert b"QUIT" in fake.commands[0]


def test_responder_rules_bdat_and_strict(fake_smtp):
    def rcpt(line: bytes, n: int) -> bytes:
        return b"550 5.1.1 no" if b"bad@" in line else b"250 2.1.5 ok"

    fake = fake_smtp(
        Responder(
            capabilities=["CHUNKING"],
            replies={"RCPT": rcpt, "RCPT TO:<tmp@": b"450 4.2.0 later", "MAIL FROM:<x@": "553"},
            strict=True,
        ),
        check=False,
    )
    with smtplib.SMTP(fake.host, fake.port, timeout=5) as c:
        c.ehlo()
        assert c.mail("a@b.test") == (250, b"2.1.0 Ok")
        assert c.rcpt("bad@d.test")[0] == 550
        assert c.rcpt("tmp@d.test")[0] == 450
        assert c.rcpt("ok@d.test")[0] == 250
        c.send(b"BDAT 5\r\nhelloBDAT 3 LAST\r\nabc")
        assert c.getreply() == (250, b"2.0.0 5 octets received")
        assert c.getreply()[0] == 250
        assert c.docmd("XFOO")[0] == 502
    fake.join()
    assert fake.chunks == [b"hello", b"abc"]
    assert fake.data == [b"helloabc"]
    assert any("XFOO" in e for e in fake.errors)


def test_unexpected_command_is_flagged(fake_smtp):
    fake = fake_smtp([Send(b"220 x\r\n"), Expect(rb"EHLO .*"), Send(b"250 x\r\n")], check=False)
    with smtplib.SMTP(fake.host, fake.port, timeout=5) as c:
        code, _ = c.helo("me")
        assert code == 500
    with pytest.raises(AssertionError, match="expected b'EHLO"):
        fake.assert_ok()


def test_bare_lf_and_missing_command_are_flagged(fake_smtp):
    fake = fake_smtp([Expect(rb"NOOP"), Expect(rb"QUIT", timeout=0.3)], check=False)
    with socket.create_connection(fake.address, timeout=3) as s:
        s.sendall(b"NOOP\n")
        time.sleep(0.6)
    fake.join()
    assert any("CRLF" in e for e in fake.errors)
    assert any("timed out" in e for e in fake.errors)


def test_reset_gives_connection_reset(fake_smtp):
    fake = fake_smtp([Send(b"220 x\r\n"), Expect(rb"MAIL .*"), Reset()])
    with socket.create_connection(fake.address, timeout=3) as s:
        _recv_until(s, b"\r\n")
        s.sendall(b"MAIL FROM:<a@b>\r\n")
        with pytest.raises(ConnectionResetError):
            s.recv(100)
            s.recv(100)
    fake.assert_ok()


def test_close_gives_eof_and_readbytes(fake_smtp):
    fake = fake_smtp([Send(b"354 go\r\n"), ReadBytes(10), Close()])
    with socket.create_connection(fake.address, timeout=3) as s:
        _recv_until(s, b"\r\n")
        s.sendall(b"0123456789")
        assert s.recv(100) == b""
    fake.assert_ok()
    assert fake.transcript[0] == b"0123456789"


def test_silent_and_delay(fake_smtp):
    fake = fake_smtp([Silent(0.5), Delay(0.3), Send(b"220 late\r\n"), ExpectClose(2)])
    t0 = time.monotonic()
    with socket.create_connection(fake.address, timeout=3) as s:
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)  # greeting never comes (S1)
        s.sendall(b"hello?\r\n")
        s.settimeout(3)
        assert s.recv(100) == b"220 late\r\n"
        assert time.monotonic() - t0 >= 0.75
    fake.assert_ok()
    assert fake.transcript[0] == b"hello?\r\n"


def test_silent_port_fixture(silent_port):
    with socket.create_connection(("127.0.0.1", silent_port), timeout=3) as s:
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)


def test_trickle(fake_smtp):
    fake = fake_smtp([Trickle(b"220 ok\r\n", interval=0.05)])
    with socket.create_connection(fake.address, timeout=3) as s:
        s.settimeout(3)
        pieces = []
        t0 = time.monotonic()
        while (chunk := s.recv(100)) != b"":
            pieces.append(chunk)
        assert b"".join(pieces) == b"220 ok\r\n"
        assert len(pieces) >= 4
        assert time.monotonic() - t0 >= 0.3


def test_stop_reading_blocks_writes(fake_smtp):
    fake = fake_smtp([Send(b"354 go\r\n"), StopReading(1.0)])
    with socket.create_connection(fake.address, timeout=3) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _recv_until(s, b"\r\n")
        s.settimeout(0.3)
        sent = 0
        with pytest.raises(TimeoutError):
            for _ in range(10_000):
                sent += s.send(b"x" * 65536)
        assert sent < 10 * 1024 * 1024
    fake.assert_ok()


def test_client_close_during_trickle_is_not_an_error(fake_smtp):
    fake = fake_smtp([Trickle(b"220 " + b"x" * 50 + b"\r\n", interval=0.02)])
    with socket.create_connection(fake.address, timeout=3) as s:
        s.recv(1)
    fake.assert_ok()


def test_stop_is_bounded_with_long_steps():
    fake = FakeSMTP([Delay(60)]).start()
    with socket.create_connection(fake.address, timeout=3):
        assert fake.wait_connections(1)
        t0 = time.monotonic()
        fake.stop()
        assert time.monotonic() - t0 < 2
    assert not fake.errors


def test_several_connections_get_scripts_by_index(fake_smtp):
    fake = fake_smtp(lambda i: [Send(f"220 conn {i}\r\n".encode())])
    for i in range(3):
        with socket.create_connection(fake.address, timeout=3) as s:
            assert _recv_until(s, b"\r\n") == f"220 conn {i}\r\n".encode()
    fake.assert_ok()
    assert fake.connections == 3


def test_fake_starttls(fake_smtp, server_ssl_context, ca_file):
    fake = fake_smtp(
        Responder(
            capabilities=["AUTH PLAIN"],
            caps_after_tls=["AUTH SCRAM-SHA-256"],
            tls_context=server_ssl_context,
        )
    )
    ctx = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP("localhost", fake.port, timeout=5) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        assert c.esmtp_features["auth"].split() == ["PLAIN"]
        c.starttls(context=ctx)
        c.ehlo()
        assert not c.has_extn("starttls")
        assert c.esmtp_features["auth"].split() == ["SCRAM-SHA-256"]
        c.noop()
    fake.assert_ok()
    assert any("TLS established" in e for e in fake.events)
    assert fake.commands[0][-2:] == [b"noop", b"QUIT"]  # decrypted after the handshake


def test_fake_implicit_tls_and_pipelined_plaintext_flagged(fake_smtp, server_ssl_context):
    fake = fake_smtp(
        [
            Send(b"220 x\r\n"),
            Expect(rb"STARTTLS"),
            Send(b"220 go\r\n"),
            StartTLS(server_ssl_context, may_fail=True),
        ],
        check=False,
    )
    with socket.create_connection(fake.address, timeout=3) as s:
        _recv_until(s, b"\r\n")
        s.sendall(b"STARTTLS\r\nEHLO injected\r\n")
        _recv_until(s, b"\r\n")
    fake.join()
    assert any("pipelined before the TLS handshake" in e for e in fake.errors)


# ----------------------------------------------------------------------------- certificates


def _tls_connect(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.version() or ""


def _implicit_tls_fake(fake_smtp, server_ctx: ssl.SSLContext) -> FakeSMTP:
    return fake_smtp([StartTLS(server_ctx, may_fail=True), Send(b"220 tls\r\n")])


def test_good_cert_verifies(fake_smtp, server_ssl_context, ca_file):
    fake = _implicit_tls_fake(fake_smtp, server_ssl_context)
    ctx = ssl.create_default_context(cafile=ca_file)
    for name in ("localhost", "mx.fixture.test", "127.0.0.1"):
        assert _tls_connect(fake.port, ctx, name).startswith("TLSv1.")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("expired", "expired"), ("wrong-name", "mismatch"), ("untrusted", "unable to get local")],
)
def test_bad_certs_fail_verification(fake_smtp, tls_ca, ca_file, kind, reason):
    if kind == "expired":
        server_ctx = make_server_context(tls_ca, expired=True)
    elif kind == "wrong-name":
        server_ctx = make_server_context(tls_ca, "other.test")
    else:
        server_ctx = make_server_context(trustme.CA())
    fake = _implicit_tls_fake(fake_smtp, server_ctx)
    ctx = ssl.create_default_context(cafile=ca_file)
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        _tls_connect(fake.port, ctx)
    if kind == "wrong-name":
        assert _tls_connect(fake.port, ctx, "other.test")


def test_tls10_only_server(fake_smtp, tls_ca, ca_file):
    server_ctx = make_server_context(tls_ca, tls_max=ssl.TLSVersion.TLSv1)
    fake = _implicit_tls_fake(fake_smtp, server_ctx)
    with pytest.raises(ssl.SSLError) as info:
        _tls_connect(fake.port, ssl.create_default_context(cafile=ca_file))
    assert not isinstance(info.value, ssl.SSLCertVerificationError)
    # and the server really speaks TLS 1.0 to a client that allows it
    old = ssl.create_default_context(cafile=ca_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "TLSv1 is deprecated"
        old.minimum_version = ssl.TLSVersion.TLSv1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert _tls_connect(fake.port, old) == "TLSv1"


def test_client_certificate_required(fake_smtp, tls_ca, ca_file, tmp_path):
    server_ctx = make_server_context(tls_ca, require_client_cert=True)
    fake = _implicit_tls_fake(fake_smtp, server_ctx)
    cert, key = client_cert_files(tls_ca, tmp_path)
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(fake.address, timeout=3) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.recv(100) == b"220 tls\r\n"
    fake.join()
    assert not fake.errors


# ----------------------------------------------------------------------------- network faults


def test_closed_port_refuses(closed_port):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=2)


def test_blackhole_connect_times_out(blackhole_port):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection(("127.0.0.1", blackhole_port), timeout=1)
    assert 0.9 <= time.monotonic() - t0 < 3


# ----------------------------------------------------------------------------- aiosmtpd


MESSAGE = (
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: exact\r\n\r\n"
    b".starts with a dot\r\n\xc3\xa9 8bit\r\n\r\nlast\r\n"
)


def test_aiosmtpd_plain_byte_exact(aiosmtpd_server):
    srv = aiosmtpd_server
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as c:
        c.ehlo("client.test")
        assert c.has_extn("smtputf8")
        assert not c.has_extn("auth")
        c.sendmail(
            "a@example.test", ["b@example.test", "c@example.test"], MESSAGE, ["BODY=8BITMIME"]
        )
    (msg,) = srv.wait_for(1)
    assert msg.original_content == MESSAGE
    assert msg.mail_from == "a@example.test"
    assert msg.rcpt_tos == ["b@example.test", "c@example.test"]
    assert "BODY=8BITMIME" in msg.mail_options
    assert msg.auth_login is None


def test_aiosmtpd_starttls_auth(aiosmtpd_starttls, ca_file):
    srv = aiosmtpd_starttls
    ctx = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        assert not c.has_extn("auth")
        code, _ = c.mail("a@example.test")
        assert code == 530  # STARTTLS required
        c.starttls(context=ctx)  # verified against the 127.0.0.1 IP SAN
        c.ehlo()
        assert "PLAIN" in c.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.login(AUTH_USER, "wrong")
        assert info.value.smtp_code == 535
        c.login(AUTH_USER, AUTH_PASSWORD)
        c.sendmail("a@example.test", ["b@example.test"], MESSAGE)
    (msg,) = srv.wait_for(1)
    assert msg.original_content == MESSAGE
    assert msg.auth_login == "alice"


def test_aiosmtpd_starttls_rejects_wrong_ca(aiosmtpd_starttls):
    srv = aiosmtpd_starttls
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as c:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=ssl.create_default_context())
        c.close()


def test_aiosmtpd_implicit_tls(aiosmtpd_implicit_tls, ca_file):
    srv = aiosmtpd_implicit_tls
    ctx = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP_SSL("localhost", srv.port, timeout=5, context=ctx) as c:
        c.ehlo()
        assert c.has_extn("auth")
        c.login(AUTH_USER, AUTH_PASSWORD)
        c.sendmail("a@example.test", ["b@example.test"], MESSAGE)
    assert srv.wait_for(1)[0].original_content == MESSAGE


def test_aiosmtpd_auth_plain(aiosmtpd_auth_plain):
    srv = aiosmtpd_auth_plain
    with smtplib.SMTP(srv.host, srv.port, timeout=5) as c:
        c.ehlo()
        assert c.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("mallory", AUTH_PASSWORD)
        c.login(AUTH_USER, AUTH_PASSWORD)
        c.sendmail("a@example.test", ["b@example.test"], MESSAGE)
    assert srv.wait_for(1)[0].auth_login == "alice"


def test_aiosmtpd_wait_for_times_out(aiosmtpd_server):
    with pytest.raises(AssertionError, match="got 0 message"):
        aiosmtpd_server.wait_for(1, timeout=0.2)
