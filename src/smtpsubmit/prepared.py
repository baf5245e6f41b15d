"""What every message renders to: a :class:`PreparedMessage` made from a ``Source``.

Composed messages (:mod:`smtpsubmit.compose`) and ready ones
(:mod:`smtpsubmit.ready`) are two kinds of ``Source``; the
:class:`~smtpsubmit.message.Message` facade and the submit path see only
this interface.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime

from smtpsubmit import mime
from smtpsubmit.addresses import Address
from smtpsubmit.errors import MessageError

__all__ = ["PreparedMessage"]


@dataclass(frozen=True)
class PreparedMessage:
    """One message rendered for one session: envelope, exact size, bytes on demand.

    ``size`` is exact and known before any byte is produced (SIZE=, BDAT);
    ``eight_bit`` says the bytes contain octets above 127 (BODY=8BITMIME).
    :meth:`iter_bytes` may be called more than once and yields the same
    bytes each time; attachments are read while iterating.
    """

    sender: str
    recipients: list[str]
    message_id: str
    size: int
    eight_bit: bool
    _segments: tuple[mime.Segment, ...] = field(repr=False, compare=False)

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The message in chunks of exactly *chunk_size* octets (the last may be shorter)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        return mime.rechunk(
            (chunk for segment in self._segments for chunk in segment.chunks()), chunk_size
        )


class Source(abc.ABC):
    """What a message is made of; composed and ready-made messages differ here."""

    sender: Address
    recipients: list[Address]
    addresses: list[Address]  # every address rendered or used (for SMTPUTF8)
    message_id: str

    @abc.abstractmethod
    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> tuple[mime.Segment, ...]:
        """The message as pieces to stream, rendered for this session.

        Never refuses: whether the server can take the result is decided by
        the session (``Session.check_envelope``) from the envelope.
        """


def date_value(date: object) -> str:
    """RFC 5322 date-time; ``None`` = now, a naive datetime = local time."""
    if date is None:
        return format_datetime(datetime.now().astimezone())
    if isinstance(date, datetime):
        return format_datetime(date if date.tzinfo else date.astimezone())
    if isinstance(date, str):
        if not date.strip() or not date.isascii() or not mime.is_safe_text(date, allow_tab=True):
            raise MessageError(f"date: {date!r} is empty or has CR, LF or control characters")
        return date.strip()
    raise MessageError(f"date: expected a datetime, a string or None, not {type(date).__name__}")


def new_message_id(domain: str) -> str:
    """A Message-ID (without brackets) that no other message will have."""
    return f"{secrets.token_hex(16)}@{domain}"
