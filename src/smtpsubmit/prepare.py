"""From any message input to an envelope and a byte source, for one session.

A composed or ready :class:`~smtpsubmit.message.Message`, or ready RFC 5322
``bytes`` or a binary file with an explicit envelope, becomes an
:class:`~smtpsubmit.envelope.Envelope` plus a re-readable byte source,
rendered for what the server offers (8BITMIME, SMTPUTF8). Nothing here
refuses an extension: ``Session.check_envelope`` decides that, in one place.

This module sits below the drivers (``client.py`` imports it, it imports no
driver), so there is no import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import IO, Protocol

from smtpsubmit import ready
from smtpsubmit.envelope import DSN, Envelope, check_envelope_address
from smtpsubmit.errors import MessageError
from smtpsubmit.message import Message

__all__ = [
    "MessageInput",
    "Offers",
    "SessionState",
    "check_before_connecting",
    "crlf_only",
    "prepare_submission",
]

MessageInput = Message | bytes | bytearray | memoryview | IO[bytes]
Source = Callable[[], Iterable[bytes]]


class Offers(Protocol):
    """The server's extensions, as far as rendering needs them."""

    def __contains__(self, keyword: object, /) -> bool: ...


class SessionState(Protocol):
    """What rendering needs to know of a session."""

    @property
    def capabilities(self) -> Offers: ...


def crlf_only(source: Source) -> bool:
    """Whether every chunk of ``source`` is known to have CRLF line ends only.

    A ready message's chunks are: it is read through the newline normaliser
    (:mod:`smtpsubmit.ready`), so the data encoder need not search them for
    bare CR or LF a second time. Any other source (composed, DKIM-signed) is
    checked as it goes out.
    """
    return isinstance(getattr(source, "__self__", None), ready.ReadyMessage)


def check_before_connecting(
    message: MessageInput, sender: str | None, recipients: Iterable[str] | None
) -> None:
    """Bad input fails before a connection is made, not half-way through a session."""
    if isinstance(message, Message):
        if sender is not None:
            check_envelope_address(sender, sender=True)
        for rcpt in recipients or ():
            check_envelope_address(rcpt)
        return
    raw_envelope(sender, recipients)
    if not isinstance(message, bytes | bytearray | memoryview) and not hasattr(message, "read"):
        raise MessageError(
            "message must be a Message, bytes, or a binary file opened for reading, "
            f"not {type(message).__name__}"
        )


def raw_envelope(
    sender: str | None, recipients: Iterable[str] | None
) -> tuple[str, list[str], bool]:
    """(sender, recipients, needs SMTPUTF8) given for a ready message sent as bytes or a file."""
    if sender is None or recipients is None:
        raise MessageError("a ready message (bytes or a file) needs sender= and recipients=")
    if isinstance(recipients, str):
        recipients = [recipients]
    wire_sender, utf8 = check_envelope_address(sender, sender=True)
    wire_rcpts: list[str] = []
    for rcpt in recipients:
        address, needs = check_envelope_address(rcpt)
        utf8 = utf8 or needs
        if address not in wire_rcpts:
            wire_rcpts.append(address)
    if not wire_rcpts:
        raise MessageError("at least one recipient is required")
    return wire_sender, wire_rcpts, utf8


def prepare_submission(
    message: MessageInput,
    session: SessionState,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    dsn: DSN | None = None,
    require_tls: bool = False,
) -> tuple[Envelope, Source]:
    """The envelope and a byte source (re-readable, for a follow-up) for this session."""
    if isinstance(message, Message):
        return _prepare_composed(
            message,
            "8BITMIME" in session.capabilities,
            sender=sender,
            recipients=recipients,
            dsn=dsn,
            require_tls=require_tls,
        )
    wire_sender, wire_rcpts, utf8 = raw_envelope(sender, recipients)
    if type(message) is bytes or isinstance(message, bytes | bytearray | memoryview):
        source = ready.from_bytes(bytes(message), strict=False)
    else:
        source = ready.from_stream(message)
    size, eight_bit = source.measure()
    # Positional (sender, recipients, size, smtputf8, eight_bit, dsn, require_tls,
    # message_id): one is made per message, and bulk sends make many.
    envelope = Envelope(
        wire_sender, wire_rcpts, size, utf8, eight_bit, dsn, require_tls, source.message_id()
    )
    return envelope, source.chunks


def _prepare_composed(
    message: Message,
    allow_8bit: bool,
    *,
    sender: str | None,
    recipients: Iterable[str] | None,
    dsn: DSN | None,
    require_tls: bool,
) -> tuple[Envelope, Source]:
    smtputf8 = message.needs_smtputf8()
    prepared = message.render(allow_8bit=allow_8bit, smtputf8=smtputf8)
    wire_sender = prepared.sender
    if sender is not None:
        wire_sender, needs = check_envelope_address(sender, sender=True)
        smtputf8 = smtputf8 or needs
    wire_rcpts = list(prepared.recipients)
    if recipients is not None:
        wire_rcpts = []
        for rcpt in [recipients] if isinstance(recipients, str) else recipients:
            address, needs = check_envelope_address(rcpt)
            smtputf8 = smtputf8 or needs
            wire_rcpts.append(address)
    envelope = Envelope(
        wire_sender,
        wire_rcpts,
        size=prepared.size,
        smtputf8=smtputf8,
        eight_bit=prepared.eight_bit,
        dsn=dsn,
        require_tls=require_tls,
        message_id=prepared.message_id,
    )
    return envelope, prepared.iter_bytes
