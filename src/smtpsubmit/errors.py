"""The one exception tree of smtpsubmit (contract §5).

Every network or server fault that reaches a caller is an :class:`SmtpError`
subclass carrying the server's :class:`~smtpsubmit.reply.Reply` (when there was
one), the ``stage`` of the session it happened in and whether a retry later may
succeed (``is_temporary``) — which is what a retrying outbox needs to decide.
``OSError`` and ``ssl.SSLError`` are converted at the transport boundary only.

Bad input is a :class:`MessageError`, a ``ValueError``, raised before anything is
sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpsubmit.reply import Reply

__all__ = [
    "AuthError",
    "ClientBusyError",
    "ConnectError",
    "DataRefused",
    "DeliveryStatusUnknown",
    "ExtensionUnavailable",
    "MessageError",
    "MessageTooLarge",
    "PoolTimeout",
    "ProtocolError",
    "RecipientsRefused",
    "SenderRefused",
    "ServerDisconnected",
    "SmtpError",
    "SmtpTimeout",
    "TlsError",
]


class SmtpError(Exception):
    """Base of every network, protocol or server failure.

    ``is_temporary`` follows the reply's basic code when there is a reply (4xx
    temporary, 5xx permanent); without one it is the class default, which says
    whether the failure is typically transient (a dropped connection is, a
    protocol violation is not).
    """

    temporary_default = False

    def __init__(
        self,
        message: str,
        *,
        reply: Reply | None = None,
        stage: str | None = None,
        is_temporary: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.reply = reply
        self.stage = stage
        if is_temporary is None:
            is_temporary = reply.is_temporary if reply is not None else self.temporary_default
        self.is_temporary = is_temporary

    def __str__(self) -> str:
        text = super().__str__()
        if self.reply is not None and str(self.reply) not in text:
            text = f"{text} (server said: {self.reply})"
        return text


class ConnectError(SmtpError):
    """The TCP connection (or proxy, or greeting) could not be established.

    ``unknown_host`` is True when the host name did not resolve (the CLI's
    exit code 68).
    """

    temporary_default = True
    unknown_host = False


class SmtpTimeout(SmtpError, TimeoutError):
    """The server did not answer (or accept our bytes) within the timeout."""

    temporary_default = True


class TlsError(SmtpError):
    """TLS was required and could not be set up or verified."""


class AuthError(SmtpError):
    """Authentication was refused, impossible, or not allowed on this connection."""


class SenderRefused(SmtpError):
    """MAIL FROM was refused."""


class RecipientsRefused(SmtpError):
    """Every recipient was refused; no message data was sent."""

    def __init__(
        self,
        message: str,
        *,
        refused: dict[str, Reply],
        reply: Reply | None = None,
        stage: str | None = "rcpt",
        is_temporary: bool | None = None,
    ) -> None:
        if is_temporary is None:
            # Temporary only when retrying later could help every recipient.
            is_temporary = bool(refused) and all(r.is_temporary for r in refused.values())
        super().__init__(message, reply=reply, stage=stage, is_temporary=is_temporary)
        self.refused = refused


class DataRefused(SmtpError):
    """DATA, BDAT or the end of the message data was refused."""


class MessageTooLarge(SmtpError):
    """The message is larger than the server's advertised SIZE limit."""


class ServerDisconnected(SmtpError):
    """The server closed the connection when an answer was due."""

    temporary_default = True


class ProtocolError(SmtpError):
    """The server sent something that is not valid SMTP (or too much of it)."""


class ExtensionUnavailable(SmtpError):
    """The message needs an ESMTP extension the server (or the options) lack."""

    def __init__(
        self,
        message: str,
        *,
        extension: str,
        reply: Reply | None = None,
        stage: str | None = None,
        is_temporary: bool | None = None,
    ) -> None:
        super().__init__(message, reply=reply, stage=stage, is_temporary=is_temporary)
        self.extension = extension


class DeliveryStatusUnknown(SmtpError):
    """The end of the data was sent but no answer came: the message may have
    been accepted, so a retry can deliver it twice."""

    temporary_default = True


class PoolTimeout(SmtpError):
    """No pooled connection became free within the pool's ``acquire_timeout``."""

    temporary_default = True

    def __init__(self, message: str, *, stage: str | None = "connect") -> None:
        super().__init__(message, stage=stage)


class MessageError(ValueError):
    """Bad input (message, address, header, attachment), raised before sending."""


class ClientBusyError(RuntimeError):
    """A call on a ``Client``/``AsyncClient`` while another is in progress on it.

    Misuse, not a network fault: raised before anything is written, and the
    call in progress carries on undisturbed.
    """
