"""SMTP AUTH over the network: every mechanism against a server that checks it, the A faults,
plaintext-auth rules and secrecy of the password in logs, transcripts, exceptions and reprs.

SASL maths is tested without sockets in test_auth.py; here the session and both drivers
(``Client`` and ``AsyncClient``) drive it against real Postfix + Dovecot, aiosmtpd and
scripted fake servers. Fault IDs (A1-A8) refer to /work/shared/notes/fault-catalogue.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from smtpsubmit import (
    AsyncClient,
    AuthError,
    Client,
    Option,
    ProtocolError,
    Server,
    SmtpError,
    SubmitResult,
)
from tests.drivers import EACH_DRIVER as DRIVERS
from tests.drivers import send_one, wait_for_token
from tests.servers.fakesmtp import Expect, Responder, Send, ehlo_reply

CANARY = "S3cr3t-CANARY"
ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256")


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def make_raw(token: str, sender: str = ALICE, rcpt: str = ALICE) -> bytes:
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: auth {token}\r\n"
        f"Message-ID: <{token}@example.test>\r\n\r\nbody {token}\r\n"
    ).encode()


def run(
    driver: str,
    server: Server,
    raw: bytes | None = None,
    *,
    sender: str = ALICE,
    recipients: tuple[str, ...] = (ALICE,),
) -> SubmitResult:
    """Connect (EHLO, STARTTLS, AUTH), send one message, QUIT — sync or asyncio."""
    raw = raw or make_raw(uuid.uuid4().hex, sender, recipients[0])
    return send_one(
        driver, server, raw, sender=sender, recipients=recipients, observe=lambda _, r: r
    )


def attempt(driver: str, server: Server) -> tuple[Client | AsyncClient, BaseException | None]:
    """Like ``run`` but keep the client object and the exception, for secrecy checks."""
    raw = make_raw(uuid.uuid4().hex)
    if driver == "sync":
        client: Client | AsyncClient = Client(server)
        try:
            with client:  # type: ignore[union-attr]
                client.send(raw, sender=ALICE, recipients=[ALICE])  # type: ignore[union-attr]
        except SmtpError as exc:
            return client, exc
        return client, None
    aclient = AsyncClient(server)

    async def main() -> None:
        async with aclient:
            await aclient.send(raw, sender=ALICE, recipients=[ALICE])

    try:
        asyncio.run(main())
    except SmtpError as exc:
        return aclient, exc
    return aclient, None


def fails(driver: str, server: Server, exc: type[BaseException] = SmtpError) -> Any:
    with pytest.raises(exc) as info:
        run(driver, server, sender="a@example.org", recipients=("b@example.org",))
    return info.value


# --------------------------------------------------------------------------------------
# Secrets: what must never appear
# --------------------------------------------------------------------------------------


def secret_forms(secret: str = CANARY, username: str = ALICE) -> list[str]:
    """The secret, its base64 alone and inside any SASL payload, and PLAIN's whole payload."""
    raw = secret.encode()
    forms = [secret, b64(raw), b64(f"\0{username}\0{secret}")]
    for pad in range(3):  # base64 of the secret whatever bytes precede it
        encoded = b64(b"\0" * pad + raw)
        inner = encoded[4 if pad else 0 : -4]
        if len(inner) >= 8:
            forms.append(inner)
    return forms


def assert_no_secret(text: str, secret: str = CANARY, username: str = ALICE) -> None:
    for form in secret_forms(secret, username):
        assert form not in text, f"secret form {form!r} leaked into {text[:300]!r}"


def exception_texts(exc: BaseException) -> list[str]:
    texts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(getattr(current, "reply", None))]
        texts.append("".join(traceback.format_exception_only(type(current), current)))
        current = current.__cause__ or current.__context__
    return texts


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for record in self.records:
            out.append(record.getMessage())
            out.append(repr(record.args))
            if record.exc_info and record.exc_info[1] is not None:
                out.extend(exception_texts(record.exc_info[1]))
        return out

    def transcript(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == "smtpsubmit.transcript"]


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Every record of the ``smtpsubmit`` logger tree at DEBUG."""
    handler = Capture()
    logger = logging.getLogger("smtpsubmit")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def check_secrecy(
    client: Any, exc: BaseException | None, captured: Capture, username: str = ALICE
) -> None:
    texts = [repr(client), str(client), repr(client.server), str(client.server)]
    texts += captured.texts()
    if exc is not None:
        texts += exception_texts(exc)
        texts += traceback.format_exception(exc)
    for text in texts:
        assert_no_secret(text, CANARY, username)


# --------------------------------------------------------------------------------------
# Every password mechanism against real Postfix + Dovecot
# --------------------------------------------------------------------------------------


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("mechanism", PASSWORD_MECHANISMS)
def test_postfix_mechanism_delivers_to_maildir(driver, mechanism, postfix):
    token = uuid.uuid4().hex
    server = Server(
        "127.0.0.1",
        ALICE,
        postfix.users[ALICE],
        postfix.submission,
        10,
        Option.SECURE,
        ca_file=str(postfix.ca_file),
        auth_mechanisms=(mechanism,),
    )
    result = run(driver, server, make_raw(token))
    assert result.accepted == [ALICE]
    wait_for_token(postfix, "alice", token)
    assert f"sasl_method={mechanism}" in postfix.maillog()


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("port_name", ["plain", "smtps"])
def test_postfix_default_preference_picks_scram(driver, port_name, postfix):
    token = uuid.uuid4().hex
    options = Option.SECURE if port_name == "plain" else Option.SECURE_IMPLICIT
    server = Server(
        "127.0.0.1",
        BOB,
        postfix.users[BOB],
        getattr(postfix, port_name),
        10,
        options,
        ca_file=str(postfix.ca_file),
    )
    run(driver, server, make_raw(token, BOB, BOB), sender=BOB, recipients=(BOB,))
    wait_for_token(postfix, "bob", token)
    assert "sasl_method=SCRAM-SHA-256, sasl_username=bob@example.test" in postfix.maillog()


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("mechanism", PASSWORD_MECHANISMS)
def test_postfix_bad_password(driver, mechanism, postfix):
    server = Server(
        "127.0.0.1",
        ALICE,
        "wrong-password",
        postfix.submission,
        10,
        Option.SECURE,
        ca_file=str(postfix.ca_file),
        auth_mechanisms=(mechanism,),
    )
    err = fails(driver, server, AuthError)
    assert err.stage == "auth"
    assert not err.is_temporary
    assert err.reply is not None and err.reply.code == 535


@pytest.mark.postfix
@DRIVERS
def test_postfix_plain_auth_port_with_tunnel(driver, postfix):
    """No TLS and no loopback exemption: SCRAM is fine, PLAIN is refused before AUTH."""
    token = uuid.uuid4().hex
    scram = Server("127.0.0.1", ALICE, CANARY, postfix.plain_auth, 10, Option.TUNNEL)
    run(driver, scram, make_raw(token))
    wait_for_token(postfix, "alice", token)
    plain = Server(
        "127.0.0.1",
        ALICE,
        CANARY,
        postfix.plain_auth,
        10,
        Option.TUNNEL,
        auth_mechanisms=("PLAIN", "LOGIN"),
    )
    err = fails(driver, plain, AuthError)
    assert "allow_plaintext_auth" in str(err)


# --------------------------------------------------------------------------------------
# aiosmtpd: PLAIN and LOGIN after STARTTLS, and over plaintext on loopback
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtpd_starttls_auth(driver, mechanism, aiosmtpd_starttls, ca_file):
    server = Server(
        "127.0.0.1",
        "alice",
        CANARY,
        aiosmtpd_starttls.port,
        5,
        Option.SECURE,
        ca_file=ca_file,
        auth_mechanisms=(mechanism,),
    )
    run(driver, server, sender="a@example.org", recipients=("b@example.org",))
    [msg] = aiosmtpd_starttls.wait_for(1)
    assert msg.auth_login == "alice"


@DRIVERS
def test_aiosmtpd_bad_password(driver, aiosmtpd_starttls, ca_file):
    server = Server(
        "127.0.0.1", "alice", "nope", aiosmtpd_starttls.port, 5, Option.SECURE, ca_file=ca_file
    )
    err = fails(driver, server, AuthError)
    assert err.reply is not None and err.reply.code == 535 and not err.is_temporary
    assert aiosmtpd_starttls.messages == []


@DRIVERS
def test_a1_plaintext_auth_allowed_on_loopback_by_default(driver, aiosmtpd_auth_plain):
    server = Server("127.0.0.1", "alice", CANARY, aiosmtpd_auth_plain.port, 5)
    run(driver, server, sender="a@example.org", recipients=("b@example.org",))
    [msg] = aiosmtpd_auth_plain.wait_for(1)
    assert msg.auth_login == "alice"


# --------------------------------------------------------------------------------------
# A1: plaintext AUTH on an unprotected, non-loopback path
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize("mechanisms", [None, ("PLAIN",), ("LOGIN",), ("XOAUTH2",)])
def test_a1_plaintext_auth_refused_before_any_auth_byte(driver, mechanisms, fake_smtp):
    fake = fake_smtp(Responder(capabilities=("AUTH PLAIN LOGIN XOAUTH2",)), check=False)
    server = Server(
        "127.0.0.1", "user", CANARY, fake.port, 3, Option.TUNNEL, auth_mechanisms=mechanisms
    )
    err = fails(driver, server, AuthError)
    assert err.stage == "auth" and not err.is_temporary
    assert "allow_plaintext_auth" in str(err) and "SECURE" in str(err)
    fake.join(3)
    assert b"AUTH" not in fake.transcript[0]
    assert CANARY.encode() not in fake.transcript[0]


@DRIVERS
def test_a1_allow_plaintext_auth(driver, fake_smtp):
    fake = fake_smtp(
        Responder(
            capabilities=("AUTH PLAIN LOGIN",),
            replies={f"AUTH PLAIN {b64(chr(0) + 'user' + chr(0) + CANARY)}": "235 2.7.0 ok"},
        )
    )
    server = Server(
        "127.0.0.1", "user", CANARY, fake.port, 3, Option.TUNNEL, allow_plaintext_auth=True
    )
    run(driver, server, sender="a@example.org", recipients=("b@example.org",))
    fake.assert_ok()
    assert len(fake.data) == 1


# --------------------------------------------------------------------------------------
# A2, A3: refused credentials
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize(
    ("reply", "code", "temporary"),
    [
        ("535 5.7.8 Authentication credentials invalid", 535, False),
        ("454 4.7.0 Temporary authentication failure", 454, True),
        ("534 5.7.9 Authentication mechanism is too weak", 534, False),
    ],
)
def test_a2_a3_auth_refused(driver, reply, code, temporary, fake_smtp):
    fake = fake_smtp(Responder(capabilities=("AUTH PLAIN",), replies={"AUTH": reply}), check=False)
    server = Server("127.0.0.1", "user", CANARY, fake.port, 3)
    err = fails(driver, server, AuthError)
    assert err.stage == "auth"
    assert err.reply is not None and err.reply.code == code
    assert err.is_temporary is temporary
    fake.join(3)
    auth_lines = [c for c in fake.commands[0] if c.startswith(b"AUTH")]
    assert len(auth_lines) == 1  # no retry loop, no second mechanism
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


# --------------------------------------------------------------------------------------
# A4: no mechanism downgrade
# --------------------------------------------------------------------------------------


@DRIVERS
@pytest.mark.parametrize("wanted", [("SCRAM-SHA-256",), ("SCRAM-SHA-1", "CRAM-MD5"), ("XOAUTH2",)])
def test_a4_mechanism_downgrade_refused(driver, wanted, fake_smtp):
    fake = fake_smtp(Responder(capabilities=("AUTH PLAIN LOGIN",)), check=False)
    server = Server(
        "127.0.0.1", "user", CANARY, fake.port, 3, auth_mechanisms=wanted, allow_plaintext_auth=True
    )
    err = fails(driver, server, AuthError)
    assert "PLAIN LOGIN" in str(err) and wanted[0] in str(err)
    fake.join(3)
    after_ehlo = fake.commands[0][1:]
    assert after_ehlo in ([], [b"QUIT"]), after_ehlo


@DRIVERS
def test_a4_no_auth_offered(driver, fake_smtp):
    fake = fake_smtp(Responder(capabilities=("PIPELINING",)), check=False)
    server = Server("127.0.0.1", "user", CANARY, fake.port, 3)
    err = fails(driver, server, AuthError)
    assert "offers no AUTH" in str(err)
    fake.join(3)
    assert not any(c.startswith((b"AUTH", b"MAIL")) for c in fake.commands[0])


# --------------------------------------------------------------------------------------
# A5: endless or garbage challenges
# --------------------------------------------------------------------------------------


def _challenge_script(mechanism: str, challenge: bytes, rounds: int = 15) -> list[Any]:
    steps: list[Any] = [
        Send(b"220 fake.test ESMTP\r\n"),
        Expect(rb"EHLO .*"),
        Send(ehlo_reply(f"AUTH {mechanism}")),
        Expect(rf"AUTH {mechanism}.*".encode()),
    ]
    for _ in range(rounds):
        steps += [Send(b"334 " + challenge + b"\r\n"), Expect(rb".*", timeout=2)]
    return steps


@DRIVERS
@pytest.mark.parametrize(
    "mechanism", ["LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"]
)
def test_a5_endless_challenges(driver, mechanism, fake_smtp):
    challenge = base64.b64encode(b"more please")
    fake = fake_smtp(_challenge_script(mechanism, challenge), check=False)
    server = Server(
        "127.0.0.1",
        "user",
        CANARY,
        fake.port,
        3,
        auth_mechanisms=(mechanism,),
        allow_plaintext_auth=True,
    )
    started = time.monotonic()
    err = fails(driver, server, ProtocolError)
    assert time.monotonic() - started < 3
    assert err.stage == "auth"
    fake.join(4)
    assert len(fake.commands[0]) <= 2 + 11  # EHLO, AUTH, at most MAX_CHALLENGES answers


@DRIVERS
def test_a5_garbage_challenge(driver, fake_smtp):
    fake = fake_smtp(_challenge_script("LOGIN", b"!!!not base64!!!", rounds=2), check=False)
    server = Server("127.0.0.1", "user", CANARY, fake.port, 3)
    err = fails(driver, server, ProtocolError)
    assert "base64" in str(err)
    fake.join(3)
    assert CANARY.encode() not in fake.transcript[0]
    assert b64(CANARY).encode() not in fake.transcript[0]


# --------------------------------------------------------------------------------------
# XOAUTH2 / OAUTHBEARER against a fake that checks the exact payload
# --------------------------------------------------------------------------------------


def xoauth2_payload(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauthbearer_payload(user: str, token: str) -> str:
    return b64(f"n,a={user},\x01auth=Bearer {token}\x01\x01")


PAYLOADS = {"XOAUTH2": xoauth2_payload, "OAUTHBEARER": oauthbearer_payload}
ERROR_JSON = b64(
    json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
)


def oauth_responder(mechanism: str, user: str, tokens: set[str], seen: list[bytes]) -> Responder:
    """235 for exactly ``AUTH <mechanism> <payload(user, token)>`` with a known token; else the
    error flow: 334 base64-JSON, the client's answer, 535 5.7.8."""
    good = {f"AUTH {mechanism} {PAYLOADS[mechanism](user, t)}".encode() for t in tokens}
    answer = rb"" if mechanism == "XOAUTH2" else rb"AQ=="

    def reply(line: bytes, n: int) -> Any:
        seen.append(line)
        if line in good:
            return "235 2.7.0 Accepted"
        return [
            Send(f"334 {ERROR_JSON}\r\n".encode()),
            Expect(answer),
            Send(b"535 5.7.8 Username and Password not accepted\r\n"),
        ]

    return Responder(capabilities=(f"AUTH {mechanism} PLAIN",), replies={"AUTH": reply})


@DRIVERS
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_exact_payload(driver, mechanism, server_ssl_context, ca_file, fake_smtp):
    seen: list[bytes] = []
    responder = oauth_responder(mechanism, ALICE, {CANARY}, seen)
    responder.tls_context = server_ssl_context
    fake = fake_smtp(responder)
    server = Server(
        "127.0.0.1",
        ALICE,
        CANARY,
        fake.port,
        3,
        Option.SECURE,
        ca_file=ca_file,
        auth_mechanisms=(mechanism,),
    )
    run(driver, server)
    fake.assert_ok()
    assert seen == [f"AUTH {mechanism} {PAYLOADS[mechanism](ALICE, CANARY)}".encode()]
    assert len(fake.data) == 1


@DRIVERS
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_error_flow(driver, mechanism, server_ssl_context, ca_file, fake_smtp):
    seen: list[bytes] = []
    responder = oauth_responder(mechanism, ALICE, {"the-right-token"}, seen)
    responder.tls_context = server_ssl_context
    fake = fake_smtp(responder, check=False)
    server = Server(
        "127.0.0.1",
        ALICE,
        CANARY,
        fake.port,
        3,
        Option.SECURE,
        ca_file=ca_file,
        auth_mechanisms=(mechanism,),
    )
    err = fails(driver, server, AuthError)
    assert err.reply is not None and err.reply.code == 535 and not err.is_temporary
    fake.join(3)
    lines = fake.commands[0]
    auth_at = next(i for i, line in enumerate(lines) if line.startswith(b"AUTH"))
    # the answer to the error challenge, then nothing but (maybe) QUIT
    assert lines[auth_at + 1] == (b"" if mechanism == "XOAUTH2" else b"AQ==")
    assert lines[auth_at + 2 :] in ([], [b"QUIT"])
    assert not [e for e in fake.errors if "expected" in e]


@DRIVERS
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_token_provider_called_on_each_authentication(
    driver, mechanism, server_ssl_context, ca_file, fake_smtp
):
    calls: list[str] = []

    def provider() -> str:
        token = f"token-{len(calls) + 1}"
        calls.append(token)
        return token

    seen: list[bytes] = []
    responder = oauth_responder(mechanism, ALICE, {"token-1", "token-2"}, seen)
    responder.tls_context = server_ssl_context
    fake = fake_smtp(responder)
    server = Server(
        "127.0.0.1",
        ALICE,
        provider,
        fake.port,
        3,
        Option.SECURE,
        ca_file=ca_file,
        auth_mechanisms=(mechanism,),
    )
    run(driver, server)
    run(driver, server)
    assert calls == ["token-1", "token-2"]
    assert seen == [
        f"AUTH {mechanism} {PAYLOADS[mechanism](ALICE, token)}".encode() for token in calls
    ]
    assert "token-" not in repr(server)
    fake.assert_ok()


@DRIVERS
def test_failing_token_provider_is_an_auth_error(driver, fake_smtp):
    def provider() -> str:
        raise RuntimeError(f"vault unreachable {CANARY}")

    fake = fake_smtp(Responder(capabilities=("AUTH XOAUTH2",)), check=False)
    server = Server(
        "127.0.0.1",
        ALICE,
        provider,
        fake.port,
        3,
        auth_mechanisms=("XOAUTH2",),
        allow_plaintext_auth=True,
    )
    err = fails(driver, server, AuthError)
    assert err.is_temporary
    assert CANARY not in str(err)
    fake.join(3)
    assert b"AUTH" not in fake.transcript[0]


# --------------------------------------------------------------------------------------
# A7, A8: the secret never leaks
# --------------------------------------------------------------------------------------


@pytest.mark.postfix
@DRIVERS
@pytest.mark.parametrize("mechanism", PASSWORD_MECHANISMS)
@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a7_a8_secret_never_leaks_postfix(driver, mechanism, outcome, postfix, captured):
    # failure: bob's account with alice's password (bob's is "bobpw")
    user = ALICE if outcome == "success" else BOB
    server = Server(
        "127.0.0.1",
        user,
        CANARY,
        postfix.submission,
        10,
        Option.SECURE,
        ca_file=str(postfix.ca_file),
        auth_mechanisms=(mechanism,),
    )
    client, exc = attempt(driver, server)
    if outcome == "success":
        assert exc is None
    else:
        assert isinstance(exc, AuthError) and exc.reply is not None and exc.reply.code == 535
    check_secrecy(client, exc, captured, user)
    transcript = captured.transcript()
    auth_lines = [line for line in transcript if line.startswith("C: AUTH")]
    if mechanism in ("PLAIN",):
        assert auth_lines == ["C: AUTH PLAIN ***"]
    else:
        assert auth_lines in (["C: AUTH " + mechanism], [f"C: AUTH {mechanism} ***"])
    assert any(line == "C: ***" for line in transcript) or mechanism == "PLAIN"


@DRIVERS
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a7_a8_secret_never_leaks_fake(
    driver, mechanism, outcome, server_ssl_context, ca_file, fake_smtp, captured
):
    seen: list[bytes] = []
    if mechanism in PAYLOADS:
        responder = oauth_responder(
            mechanism, ALICE, {CANARY} if outcome == "success" else {"x"}, seen
        )
    else:
        good = "235 2.7.0 ok" if outcome == "success" else "535 5.7.8 bad credentials"
        login = [
            Send(b"334 VXNlcm5hbWU6\r\n"),
            Expect(b64(ALICE).encode()),
            Send(b"334 UGFzc3dvcmQ6\r\n"),
            Expect(b64(CANARY).encode()),
            Send(good.encode() + b"\r\n"),
        ]
        responder = Responder(
            capabilities=("AUTH PLAIN LOGIN",), replies={"AUTH PLAIN": good, "AUTH LOGIN": login}
        )
    responder.tls_context = server_ssl_context
    fake = fake_smtp(responder, check=False)
    server = Server(
        "127.0.0.1",
        ALICE,
        CANARY,
        fake.port,
        3,
        Option.SECURE,
        ca_file=ca_file,
        auth_mechanisms=(mechanism,),
    )
    client, exc = attempt(driver, server)
    assert (exc is None) is (outcome == "success"), exc
    if exc is not None:
        assert isinstance(exc, AuthError)
    check_secrecy(client, exc, captured)
    fake.join(3)
    wire = fake.transcript[0].decode()
    assert any(form in wire for form in secret_forms()[1:])  # it did cross the (TLS) wire
    transcript = captured.transcript()
    assert any(line.startswith(f"C: AUTH {mechanism}") for line in transcript)
    if mechanism != "LOGIN":
        assert f"C: AUTH {mechanism} ***" in transcript
    assert not any("334 " in line and line != "S: 334 ***" for line in transcript)


def test_a8_reprs_hide_password_and_provider():
    server = Server(
        "smtp.example.org",
        ALICE,
        CANARY,
        587,
        options=Option.SECURE,
        proxy=f"socks5://proxyuser:{CANARY}@127.0.0.1:1080",
    )
    for text in (repr(server), str(server), repr(Client(server)), repr(AsyncClient(server))):
        assert_no_secret(text)
    assert "password='***'" in repr(server)
    assert "proxyuser:***@" in repr(server)

    def provider() -> str:
        return CANARY

    with_provider = Server("smtp.example.org", ALICE, provider)
    assert_no_secret(repr(with_provider))
    assert "provider" not in repr(with_provider)


def test_a8_to_url_without_password_hides_the_proxy_password_too():
    server = Server(
        "smtp.example.org",
        ALICE,
        CANARY,
        587,
        options=Option.SECURE,
        proxy=f"socks5://proxyuser:{CANARY}@127.0.0.1:1080",
    )
    assert_no_secret(server.to_url())
    assert CANARY in server.to_url(include_password=True)  # only when asked
