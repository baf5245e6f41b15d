"""In-process aiosmtpd 1.4.6 servers (a second, independent SMTP implementation).

Each fixture starts an ``aiosmtpd.controller.Controller`` on 127.0.0.1 with an ephemeral port in
its own thread and yields an ``AiosmtpdServer`` (``.host``, ``.port``, ``.messages``,
``.wait_for(n, timeout=5)``); the controller is stopped at teardown. Fixtures (function scope):

- ``aiosmtpd_server``: plain ESMTP, SMTPUTF8 on, ``decode_data=False``, no AUTH.
- ``aiosmtpd_starttls``: STARTTLS required (``server_ssl_context``, trust ``ca_file``), AUTH
  PLAIN/LOGIN only after TLS, user ``alice`` / ``S3cr3t-CANARY`` (anything else: 535 5.7.8).
- ``aiosmtpd_implicit_tls``: TLS from the first byte, same AUTH (advertised at once).
- ``aiosmtpd_auth_plain``: no TLS at all, same AUTH allowed over plaintext.

EHLO of aiosmtpd: SIZE, 8BITMIME, SMTPUTF8, (STARTTLS), HELP, (AUTH PLAIN LOGIN). It has no
PIPELINING, CHUNKING, DSN or ENHANCEDSTATUSCODES. Server name: ``mx.fixture.test``.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

AUTH_USER = "alice"
AUTH_PASSWORD = "S3cr3t-CANARY"
SERVER_HOSTNAME = "mx.fixture.test"

# aiosmtpd logs every command at INFO/DEBUG on "mail.log"; keep warnings and errors only.
logging.getLogger("mail.log").setLevel(logging.WARNING)


@dataclass
class ReceivedMessage:
    """One envelope as aiosmtpd saw it."""

    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    rcpt_options: list[str]
    original_content: bytes  # exact bytes after un-dot-stuffing, with CRLF
    auth_login: str | None = None  # who authenticated on that session, if anyone
    smtp_utf8: bool = False


@dataclass
class RecordingHandler:
    """aiosmtpd handler that stores every accepted message and answers 250."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        msg = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            original_content=bytes(envelope.original_content or b""),
            auth_login=login if isinstance(login, str) else None,
            smtp_utf8=bool(envelope.smtp_utf8),
        )
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()
        return "250 2.0.0 OK: queued"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accept exactly alice / S3cr3t-CANARY (PLAIN or LOGIN); aiosmtpd answers 535 otherwise."""
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == AUTH_USER.encode()
        and auth_data.password == AUTH_PASSWORD.encode()
    ):
        return AuthResult(success=True, auth_data=AUTH_USER)
    return AuthResult(success=False, handled=False)


class _EphemeralController(Controller):
    """Controller bound to port 0: learn the real port before aiosmtpd's self-test connect."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class AiosmtpdServer:
    host: str
    port: int
    handler: RecordingHandler
    controller: Controller
    tls: str | None = None  # None, "starttls" or "implicit"
    username: str | None = None
    password: str | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least ``n`` messages arrived; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.handler.cond:
            while len(self.handler.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"aiosmtpd got {len(self.handler.messages)} message(s), expected {n}"
                    )
                self.handler.cond.wait(left)
            return list(self.handler.messages)


def _start(tls: str | None = None, **kwargs: Any) -> AiosmtpdServer:
    handler = RecordingHandler()
    auth = kwargs.get("authenticator") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Requiring AUTH while not requiring TLS", deprecations
        controller = _EphemeralController(
            handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname=SERVER_HOSTNAME,
            decode_data=False,
            enable_SMTPUTF8=True,
            ready_timeout=5.0,
            **kwargs,
        )
        controller.start()
    return AiosmtpdServer(
        host="127.0.0.1",
        port=controller.port,
        handler=handler,
        controller=controller,
        tls=tls,
        username=AUTH_USER if auth else None,
        password=AUTH_PASSWORD if auth else None,
    )


def _serve(server: AiosmtpdServer) -> Iterator[AiosmtpdServer]:
    try:
        yield server
    finally:
        server.controller.stop()


@pytest.fixture
def aiosmtpd_server() -> Iterator[AiosmtpdServer]:
    """Plain ESMTP aiosmtpd (SMTPUTF8, no AUTH, no TLS)."""
    yield from _serve(_start())


@pytest.fixture
def aiosmtpd_starttls(server_ssl_context: ssl.SSLContext) -> Iterator[AiosmtpdServer]:
    """STARTTLS required; AUTH (alice / S3cr3t-CANARY) only after TLS."""
    yield from _serve(
        _start(
            "starttls",
            tls_context=server_ssl_context,
            require_starttls=True,
            authenticator=authenticator,
            auth_require_tls=True,
        )
    )


@pytest.fixture
def aiosmtpd_implicit_tls(server_ssl_context: ssl.SSLContext) -> Iterator[AiosmtpdServer]:
    """Implicit TLS (SMTPS); AUTH (alice / S3cr3t-CANARY) advertised immediately."""
    yield from _serve(
        _start(
            "implicit",
            ssl_context=server_ssl_context,
            authenticator=authenticator,
            auth_require_tls=False,
        )
    )


@pytest.fixture
def aiosmtpd_auth_plain() -> Iterator[AiosmtpdServer]:
    """No TLS; AUTH (alice / S3cr3t-CANARY) allowed over plaintext."""
    yield from _serve(_start(authenticator=authenticator, auth_require_tls=False))
