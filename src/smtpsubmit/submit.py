"""``submit_message`` and ``asubmit_message``: one call, one session, one message.

The conveniences above the drivers: how a message input becomes an envelope
and bytes is :mod:`smtpsubmit.prepare`, below the drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from smtpsubmit.client import AsyncClient, Client
from smtpsubmit.dkim.stream import Signers, as_signers
from smtpsubmit.envelope import DSN
from smtpsubmit.prepare import MessageInput, check_before_connecting
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server

__all__ = ["asubmit_message", "submit_message"]


def submit_message(
    message: MessageInput,
    server: Server,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    dsn: DSN | None = None,
    progress: Callable[[Progress], object] | None = None,
    require_tls: bool = False,
    dkim: Signers | None = None,
) -> SubmitResult:
    """Compose (when needed) and deliver one message to ``server``.

    ``message`` is a :class:`~smtpsubmit.Message`, or a ready RFC 5322 message
    as ``bytes`` or a binary file, in which case ``sender=`` and
    ``recipients=`` are required. Raises an :class:`~smtpsubmit.SmtpError`
    subclass for any network or server failure and a
    :class:`~smtpsubmit.MessageError` for bad input (before connecting).
    ``dkim`` (a :class:`~smtpsubmit.DkimSigner` or several) signs the message,
    in place of the server's ``dkim``.
    """
    check_before_connecting(message, sender, recipients)
    as_signers(dkim)
    with Client(server) as client:
        return client.send(
            message,
            sender=sender,
            recipients=recipients,
            dsn=dsn,
            progress=progress,
            require_tls=require_tls,
            dkim=dkim,
        )


async def asubmit_message(
    message: MessageInput,
    server: Server,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    dsn: DSN | None = None,
    progress: Callable[[Progress], object] | None = None,
    require_tls: bool = False,
    dkim: Signers | None = None,
) -> SubmitResult:
    """The asyncio form of :func:`submit_message`, with the same behaviour."""
    check_before_connecting(message, sender, recipients)
    as_signers(dkim)
    async with AsyncClient(server) as client:
        return await client.send(
            message,
            sender=sender,
            recipients=recipients,
            dsn=dsn,
            progress=progress,
            require_tls=require_tls,
            dkim=dkim,
        )
