"""A Django email backend: ``EMAIL_BACKEND = "smtpsubmit.django.EmailBackend"``.

Django's own SMTP backend is smtplib underneath: no pipelining, untyped
errors, a recipient without a domain passed to the server as it is. This one
reads the same ``EMAIL_*`` settings (or ``SMTPSUBMIT_SERVER``, a URL as
:meth:`smtpsubmit.Server.from_url` takes it) and sends through one
:class:`~smtpsubmit.Client` per open connection, with ``send_many`` so a
batch of messages costs one round trip each. It behaves like Django's
backend wherever Django documents it — ``fail_silently``, the number sent,
``open``/``close`` and the context manager, Bcc recipients without a Bcc
header — and keeps this library's rules where Django's are laxer: an address
without a domain is a ``ValueError`` (or, with ``fail_silently``, not sent).

Django renders the message (``EmailMessage.message()``); this backend only
takes the bytes and the envelope, so nothing of Django's message API is
re-implemented here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from smtpsubmit.addresses import parse_address as parse_mailbox
from smtpsubmit.client import Client
from smtpsubmit.errors import MessageError, SmtpError
from smtpsubmit.outbox import Outbox
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Option, Server

__all__ = ["EmailBackend", "server_from_settings"]


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django ships no type hints
    """Send Django email through smtpsubmit, one connection per ``open()``."""

    def __init__(  # noqa: PLR0917 - Django's backend signature, positional as Django's is
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | None = None,
        ssl_certfile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.server = server_from_settings(
            host=host,
            port=port,
            username=username,
            password=password,
            use_tls=use_tls,
            use_ssl=use_ssl,
            timeout=timeout,
            ssl_keyfile=ssl_keyfile,
            ssl_certfile=ssl_certfile,
        )
        self.connection: Client | None = None
        outbox_url = getattr(settings, "SMTPSUBMIT_OUTBOX", None)
        self.outbox = Outbox(outbox_url) if outbox_url else None
        self._lock = threading.RLock()

    def open(self) -> bool | None:
        """Connect; True if a new connection was opened, False if one was open already.

        ``None`` when connecting failed and ``fail_silently`` is set — Django's
        convention, which ``send_messages`` relies on.
        """
        if self.connection is not None or self.outbox is not None:
            return False  # already open, or enqueuing: no connection to open
        client = Client(self.server)
        try:
            client.connect()
        except SmtpError:
            if not self.fail_silently:
                raise
            return None
        self.connection = client
        return True

    def close(self) -> None:
        """QUIT and close; never raises when ``fail_silently`` is set."""
        client, self.connection = self.connection, None
        if client is None:
            return
        try:
            client.close()
        except SmtpError:  # pragma: no cover - Client.close swallows network errors itself
            if not self.fail_silently:
                raise

    def send_messages(self, email_messages: Iterable[EmailMessage]) -> int:
        """Send each message; return how many were sent (accepted for at least one recipient).

        The batch is streamed on one connection (``Client.send_many``). Without
        ``fail_silently`` the first failure is raised once the batch has been
        through — the other messages of the batch were still sent.
        """
        messages = [m for m in email_messages if m.recipients()]
        if not messages:
            return 0
        with self._lock:
            batch = self._envelopes(messages)
            if not batch:
                return 0
            if self.outbox is not None:
                return self._enqueue(self.outbox, batch)
            new_connection = self.open()
            if self.connection is None or new_connection is None:
                return 0
            try:
                results = self.connection.send_many(batch)
                if not self.connection.is_connected:
                    self.connection = None
            finally:
                if new_connection:
                    self.close()
        failures = [r for r in results if not isinstance(r, SubmitResult)]
        if failures and not self.fail_silently:
            raise failures[0]
        return len(results) - len(failures)

    def _enqueue(self, outbox: Outbox, batch: list[tuple[bytes, str, list[str]]]) -> int:
        """``SMTPSUBMIT_OUTBOX``: store the batch durably; a worker sends it."""
        results = outbox.send_many(batch)
        failures = [r for r in results if not isinstance(r, SubmitResult)]
        if failures and not self.fail_silently:
            raise failures[0]
        return len(results) - len(failures)

    def _envelopes(self, messages: Sequence[EmailMessage]) -> list[tuple[bytes, str, list[str]]]:
        """Each message's bytes and envelope; bad addresses raise unless ``fail_silently``."""
        batch = []
        for message in messages:
            try:
                batch.append(_envelope(message))
            except MessageError:
                if not self.fail_silently:
                    raise
        return batch


def _envelope(message: EmailMessage) -> tuple[bytes, str, list[str]]:
    """The bytes Django renders and the envelope: addr-specs from ``from_email``/recipients().

    Django leaves Bcc out of the rendered headers; the Bcc recipients are in
    ``recipients()`` and so in the envelope.
    """
    sender = _addr_spec(str(message.from_email), "from_email")
    recipients = [_addr_spec(str(address), "recipient") for address in message.recipients()]
    return message.message().as_bytes(linesep="\r\n"), sender, recipients


def _addr_spec(text: str, what: str) -> str:
    """The bare address of ``Name <a@b>`` (IDN domains as A-labels), strictly parsed."""
    mailbox = parse_mailbox(text, what)
    return mailbox.spec(utf8=mailbox.needs_utf8)


def server_from_settings(
    *,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
    use_tls: bool | None = None,
    use_ssl: bool | None = None,
    timeout: float | None = None,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
) -> Server:
    """The :class:`~smtpsubmit.Server` Django's settings (or the arguments) describe.

    ``SMTPSUBMIT_SERVER`` — a URL, or a ``Server`` for what a URL cannot say
    (``ca_file``, ``auth_mechanisms``...) — wins over the ``EMAIL_*`` settings;
    explicit arguments win over both, as in Django's backend. EHLO is always used
    (smtplib does too), falling back to HELO when the server refuses it.
    """
    configured = getattr(settings, "SMTPSUBMIT_SERVER", None)
    explicit = any(v is not None for v in (host, port, username, password, use_tls, use_ssl))
    if isinstance(configured, Server) and not explicit:
        return configured
    if configured and not explicit:
        return Server.from_url(str(configured))
    use_tls = settings.EMAIL_USE_TLS if use_tls is None else use_tls
    use_ssl = settings.EMAIL_USE_SSL if use_ssl is None else use_ssl
    if use_tls and use_ssl:
        raise ValueError(
            "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those "
            "settings to True."
        )
    options = Option.EXTENDED
    if use_tls:
        options |= Option.SECURE
    if use_ssl:
        options |= Option.SECURE_IMPLICIT
    timeout = settings.EMAIL_TIMEOUT if timeout is None else timeout
    return Server(
        host or settings.EMAIL_HOST,
        username=settings.EMAIL_HOST_USER if username is None else username,
        password=settings.EMAIL_HOST_PASSWORD if password is None else password,
        port=int(settings.EMAIL_PORT if port is None else port),
        timeout=float(timeout or 0),
        options=options,
        client_cert=settings.EMAIL_SSL_CERTFILE if ssl_certfile is None else ssl_certfile,
        client_key=settings.EMAIL_SSL_KEYFILE if ssl_keyfile is None else ssl_keyfile,
    )
