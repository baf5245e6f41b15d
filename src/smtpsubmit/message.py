"""What to send: :class:`Message` (contract §3), the facade over two kinds of source.

A ``Message`` is validated completely when it is constructed — addresses,
header fields, charset, attachment files — so bad input is a
:class:`~smtpsubmit.errors.MessageError` before any connection is made.
The work lives in the modules below it, one concern each:

* :mod:`smtpsubmit.addresses` — the one strict address parser;
* :mod:`smtpsubmit.attachments` — :class:`Attachment`;
* :mod:`smtpsubmit.compose` — a message made from these fields, as MIME;
* :mod:`smtpsubmit.ready` — a ready RFC 5322 message (:meth:`Message.from_bytes`);
* :mod:`smtpsubmit.prepared` — :class:`PreparedMessage`, what both render to;
* :mod:`smtpsubmit.mime` — the streaming MIME writer underneath.

:meth:`Message.prepare` returns a :class:`PreparedMessage` that knows the
envelope, the exact size in octets and whether 8-bit transport is needed,
*without* reading the attachments; its :meth:`~PreparedMessage.iter_bytes`
then produces the bytes piece by piece. Each render is made once per mode
and reused, so :attr:`Message.size` and :meth:`Message.as_bytes` do not
rebuild the MIME tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field
from datetime import datetime
from typing import IO

from smtpsubmit import mime, ready
from smtpsubmit.addresses import HEADER_FACTORY, Address, dedupe, parse_header_addresses
from smtpsubmit.attachments import Attachment
from smtpsubmit.compose import Composed, Encoding
from smtpsubmit.errors import ExtensionUnavailable, MessageError
from smtpsubmit.prepared import PreparedMessage, Source, date_value, new_message_id
from smtpsubmit.ready import ReadyMessage

__all__ = ["Attachment", "Encoding", "Message", "PreparedMessage"]


class _ReadySource(Source):
    """A ready message as a :class:`~smtpsubmit.message.Message` sees it (sendmail -t).

    The envelope comes from the header: From (or Sender), To, Cc, Bcc. A
    missing Message-ID or Date is added.
    """

    def __init__(self, ready: ReadyMessage) -> None:
        self.ready = ready
        self.sender = self._sender()
        self.to, self.cc, self.bcc = (ready.addresses(name) for name in ("to", "cc", "bcc"))
        self.recipients = dedupe(self.to + self.cc + self.bcc)
        if not self.recipients:
            raise MessageError("the message has no recipients in To, Cc or Bcc")
        self.addresses = [self.sender, *self.to, *self.cc, *self.bcc]
        message_id = ready.message_id()
        if message_id is None:
            message_id = new_message_id(self.sender.ascii_domain)
            ready.add("Message-ID", f"<{message_id}>")
        self.message_id = message_id
        date = ready.first("date")
        if date is None:
            date = date_value(None)
            ready.add("Date", date)
        self.date = date

    def _sender(self) -> Address:
        for name in ("from", "sender"):
            value = self.ready.first(name, unique=True)
            addresses = parse_header_addresses(value, name) if value is not None else []
            if len(addresses) == 1:
                return addresses[0]
        raise MessageError("the message has no single From (or Sender) address")

    def subject(self) -> str:
        value = self.ready.first("subject")
        if value is None:
            return ""
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return str(HEADER_FACTORY("Subject", text))

    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> tuple[mime.Segment, ...]:
        return self.ready.segments()


@dataclass(frozen=True, eq=False)
class Message:
    """An email message: the SMTPMESSAGE structure of contract §3.

    Validated on construction (:class:`MessageError` for bad input).
    ``bcc`` is used for the envelope only and never appears in the headers.
    Extra ``headers`` may set ``Date`` and ``Message-ID`` (e.g. to keep the
    same id across retries); ``From``/``To``/``Cc``/``Bcc``/``Subject`` must
    be given as fields, and the MIME fields are always generated.
    """

    sender: str
    to: str | Sequence[str] = ()
    cc: str | Sequence[str] = ()
    bcc: str | Sequence[str] = ()
    date: datetime | str | None = None
    subject: str = ""
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | str = ()
    text: str | None = None
    html: str | None = None
    attachments: str | Sequence[str | os.PathLike[str] | Attachment] = ()
    charset: str = "utf-8"
    encoding: Encoding = Encoding.AUTO
    _: KW_ONLY
    _ready: InitVar[_ReadySource | None] = None
    _source: Source = field(init=False, repr=False)

    def __post_init__(self, _ready: _ReadySource | None) -> None:
        source = _ready if _ready is not None else Composed(self)
        object.__setattr__(self, "_source", source)

    # ---- ready-made messages

    @classmethod
    def from_bytes(cls, raw: bytes) -> Message:
        """A ready RFC 5322 message (sendmail ``-t``): envelope from From/To/Cc/Bcc.

        The bytes are sent as they are except that Bcc and Resent-Bcc fields
        are removed, bare CR/LF become CRLF, and a missing Message-ID or
        Date is added.
        """
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise MessageError("from_bytes expects bytes")
        return cls._of(ready.from_bytes(bytes(raw), strict=True))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Message:
        """Like :meth:`from_bytes`, streaming the file (read once now to scan it).

        A missing or unreadable file is a :class:`MessageError` whose
        ``__cause__`` is the ``OSError``.
        """
        name = os.path.abspath(os.fspath(path))
        try:
            return cls._of(ready.from_path(name))
        except OSError as exc:
            raise MessageError(f"cannot read message file {name!r}: {exc.strerror}") from exc

    @classmethod
    def _of(cls, message: ready.ReadyMessage) -> Message:
        """A Message whose fields describe a ready message (sent as read, not re-rendered)."""
        source = _ReadySource(message)
        return cls(
            sender=source.sender.spec(True),
            to=tuple(a.spec(True) for a in source.to),
            cc=tuple(a.spec(True) for a in source.cc),
            bcc=tuple(a.spec(True) for a in source.bcc),
            date=source.date,
            subject=source.subject(),
            _ready=source,
        )

    # ---- the interface of the submit path

    @property
    def message_id(self) -> str:
        """The Message-ID, without angle brackets."""
        return self._source.message_id

    def needs_smtputf8(self) -> bool:
        """True iff an address has a non-ASCII local part.

        A non-ASCII domain alone does not: it is sent as its IDNA2008 A-label.
        """
        return any(address.needs_utf8 for address in self._source.addresses)

    def prepare(self, *, allow_8bit: bool, smtputf8: bool) -> PreparedMessage:
        """Render for a session; *allow_8bit* = 8BITMIME, *smtputf8* = SMTPUTF8 in use.

        Raises :class:`ExtensionUnavailable` (``extension="SMTPUTF8"``) when
        an address needs SMTPUTF8 and it is not in use; for a ready-made
        message with 8-bit content, ``extension="8BITMIME"`` when 8-bit is
        not allowed (such a message is never re-encoded). Sending does not
        go through these checks: it uses :meth:`render`, and the session
        refuses what the server cannot take.
        """
        if self.needs_smtputf8() and not smtputf8:
            raise ExtensionUnavailable(
                "an address has a non-ASCII local part and SMTPUTF8 is not available",
                extension="SMTPUTF8",
            )
        prepared = self.render(allow_8bit=allow_8bit, smtputf8=smtputf8)
        is_ready = isinstance(self._source, _ReadySource)
        if is_ready and prepared.eight_bit and not allow_8bit:
            raise ExtensionUnavailable(
                "the ready-made message contains 8-bit data and the server lacks 8BITMIME",
                extension="8BITMIME",
            )
        return prepared

    def render(self, *, allow_8bit: bool, smtputf8: bool) -> PreparedMessage:
        """Like :meth:`prepare`, refusing nothing: the caller checks the result."""
        source = self._source
        segments = source.segments(allow_8bit=allow_8bit, smtputf8=smtputf8)
        return PreparedMessage(
            sender=source.sender.spec(smtputf8),
            recipients=[address.spec(smtputf8) for address in source.recipients],
            message_id=source.message_id,
            size=sum(segment.size for segment in segments),
            eight_bit=any(segment.eight_bit for segment in segments),
            _segments=segments,
        )

    # ---- convenience

    def _default(self) -> PreparedMessage:
        return self.prepare(allow_8bit=True, smtputf8=self.needs_smtputf8())

    def envelope_recipients(self) -> list[str]:
        """To + Cc + Bcc addr-specs, de-duplicated, in order."""
        return self._default().recipients

    @property
    def size(self) -> int:
        """Exact size in octets of :meth:`as_bytes`, computed without rendering."""
        return self._default().size

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The message, streamed (attachments read and encoded piece by piece)."""
        return self._default().iter_bytes(chunk_size)

    def write_to(self, binary_file: IO[bytes]) -> int:
        """Stream the message into a binary file; returns the octets written."""
        written = 0
        for chunk in self.iter_bytes():
            binary_file.write(chunk)
            written += len(chunk)
        return written

    def as_bytes(self) -> bytes:
        """The whole message in memory (prefer :meth:`iter_bytes` for big ones)."""
        return b"".join(self.iter_bytes())
