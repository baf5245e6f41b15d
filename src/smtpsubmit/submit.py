"""``submit_message`` and ``asubmit_message``: one call, one session, one message.

Also where any message input — a composed :class:`~smtpsubmit.message.Message`,
ready RFC 5322 ``bytes`` or a binary file — becomes an
:class:`~smtpsubmit.envelope.Envelope` plus a re-readable byte source, fitted
to what the server offers (8BITMIME, SMTPUTF8).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, Union

from smtpsubmit.dkim.stream import Signers, as_signers
from smtpsubmit.envelope import DSN, Envelope, check_envelope_address
from smtpsubmit.errors import ExtensionUnavailable, MessageError
from smtpsubmit.protocol import LineEndingNormalizer
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server

if TYPE_CHECKING:
    from smtpsubmit.message import Message
    from smtpsubmit.session import Session

__all__ = ["asubmit_message", "prepare_submission", "submit_message"]

MessageInput = Union["Message", bytes, bytearray, memoryview, IO[bytes]]
Source = Callable[[], Iterable[bytes]]

READ_CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 8 * 1024 * 1024
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]{1,500})>", re.IGNORECASE | re.MULTILINE)


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
    from smtpsubmit.client import Client

    _check_before_connecting(message, sender, recipients)
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
    from smtpsubmit.client import AsyncClient

    _check_before_connecting(message, sender, recipients)
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


def _check_before_connecting(
    message: MessageInput, sender: str | None, recipients: Iterable[str] | None
) -> None:
    """Bad input fails before a connection is made, not half-way through a session."""
    if _is_message(message):
        if sender is not None:
            check_envelope_address(sender, sender=True)
        for rcpt in recipients or ():
            check_envelope_address(rcpt)
        return
    _raw_envelope(sender, recipients)
    if not isinstance(message, bytes | bytearray | memoryview) and not hasattr(message, "read"):
        raise MessageError(
            "message must be a Message, bytes, or a binary file opened for reading, "
            f"not {type(message).__name__}"
        )


def _is_message(message: object) -> bool:
    return hasattr(message, "prepare") and hasattr(message, "needs_smtputf8")


def _raw_envelope(
    sender: str | None, recipients: Iterable[str] | None
) -> tuple[str, list[str], bool]:
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
    session: Session,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    dsn: DSN | None = None,
    require_tls: bool = False,
) -> tuple[Envelope, Source, bool]:
    """The envelope, a byte source and whether it can be read again, for this session."""
    caps = session.capabilities
    if _is_message(message):
        return _prepare_composed(
            message, caps, sender=sender, recipients=recipients, dsn=dsn, require_tls=require_tls
        )
    wire_sender, wire_rcpts, utf8 = _raw_envelope(sender, recipients)
    if utf8 and "SMTPUTF8" not in caps:
        raise ExtensionUnavailable(
            "a non-ASCII envelope address needs SMTPUTF8, which the server does not offer",
            extension="SMTPUTF8",
            stage="mail",
        )
    source, size, eight_bit, head, rewindable = _raw_source(message)
    match = _MESSAGE_ID.search(head)
    envelope = Envelope(
        wire_sender,
        wire_rcpts,
        size=size,
        smtputf8=utf8,
        eight_bit=eight_bit,
        dsn=dsn,
        require_tls=require_tls,
        message_id=match[1].decode("utf-8", "replace") if match else None,
    )
    return envelope, source, rewindable


def _prepare_composed(
    message: Any,
    caps: Any,
    *,
    sender: str | None,
    recipients: Iterable[str] | None,
    dsn: DSN | None,
    require_tls: bool,
) -> tuple[Envelope, Source, bool]:
    smtputf8 = bool(message.needs_smtputf8())
    if smtputf8 and "SMTPUTF8" not in caps:
        esmtp_off = not caps.keywords
        raise ExtensionUnavailable(
            "the message has a non-ASCII address, which needs SMTPUTF8; the server does not "
            "offer it"
            + (" (no ESMTP extensions in use: set Option.EXTENDED)" if esmtp_off else ""),
            extension="SMTPUTF8",
            stage="mail",
        )
    prepared = message.prepare(allow_8bit="8BITMIME" in caps, smtputf8=smtputf8)
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
    return envelope, prepared.iter_bytes, True


def _raw_source(message: Any) -> tuple[Source, int, bool, bytes, bool]:
    """(source, size, has 8-bit octets, first bytes, rewindable) for bytes or a file."""
    if isinstance(message, bytes | bytearray | memoryview):
        data = bytes(message)

        def pieces() -> Iterator[bytes]:  # pieces, so progress can be reported as they go
            for start in range(0, len(data), READ_CHUNK):
                yield data[start : start + READ_CHUNK]

        return pieces, _wire_size(data), not data.isascii(), data[:READ_CHUNK], True
    stream: IO[bytes] = message
    try:
        seekable = stream.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if not seekable:  # a pipe (sendmail's stdin): spool so we can size, scan and re-read it
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        for chunk in iter(lambda: stream.read(READ_CHUNK), b""):
            spool.write(_as_bytes(chunk))
        spool.seek(0)
        stream = spool
    start = stream.tell()
    eight_bit, head = False, b""
    normalizer = LineEndingNormalizer()
    size = 0
    for chunk in _read_chunks(stream):
        if not head:
            head = chunk
        size += len(normalizer.feed(chunk))
        eight_bit = eight_bit or not chunk.isascii()
    size += len(normalizer.flush())
    stream.seek(start)

    def source() -> Iterator[bytes]:
        stream.seek(start)
        yield from _read_chunks(stream)

    return source, size, eight_bit, head, True


def _wire_size(data: bytes) -> int:
    """The octets the server will store: every bare CR or LF counts as CRLF, and the
    data ends with a line break."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:  # already canonical
        return len(data) + (2 if data and not data.endswith(b"\r\n") else 0)
    normalizer = LineEndingNormalizer()
    return len(normalizer.feed(data)) + len(normalizer.flush())


def _read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            return
        yield _as_bytes(chunk)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, str):
        raise MessageError("the message file must be opened in binary mode ('rb')")
    return bytes(chunk)
