"""Ready (pre-rendered) RFC 5322 messages: one streaming reader for all of them.

A ready message reaches the library three ways — ``Message.from_bytes`` /
``Message.from_file``, ``bytes`` or a binary file given to ``send()`` /
``submit_message()`` with an explicit envelope, and ``smtpsubmit sendmail`` —
and every one is read here, the same way:

* the source is read once to *scan* it: newlines normalised to CRLF, the
  header block split into fields, the body measured (size, 8-bit, longest
  line) without being kept;
* on every render the header goes out as read, minus ``Bcc`` and
  ``Resent-Bcc`` (RFC 5322 §3.6.3: a submitting agent removes them), plus
  any field the caller adds, and the body is streamed again from the
  source, so the exact size is known before the first byte and memory does
  not grow with the message;
* addresses in the header are parsed by the one strict parser of
  :mod:`smtpsubmit.addresses`: an ambiguous address list is refused, never
  guessed (CVE-2023-27043).

``strict`` is for messages whose envelope comes from their header
(``from_bytes``/``from_file``): every header line must be a field and no
line may exceed 998 octets. Otherwise the header ends at the first line that
is not a field (as sendmail reads it) and long lines are the server's
business.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO

from smtpsubmit import mime
from smtpsubmit.addresses import HEADER_FACTORY, Address, dedupe, parse_header_addresses
from smtpsubmit.errors import MessageError
from smtpsubmit.prepared import Source, date_value, new_message_id

__all__: list[str] = []

Opener = Callable[[], AbstractContextManager[IO[bytes]]]

MAX_HEADER_BLOCK = 1 << 20  # a ready message's header block, in octets
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a pipe is spooled to disk beyond this
HIDDEN = frozenset({"bcc", "resent-bcc"})  # never sent (RFC 5322 §3.6.3)

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")
CRLF = mime.CRLF


def read_blocks(stream: IO[bytes], size: int = mime.READ_BLOCK) -> Iterator[bytes]:
    """Yield a binary stream's content in blocks of at most *size* bytes."""
    while block := stream.read(size):
        if isinstance(block, str):
            raise MessageError("the message file must be opened in binary mode ('rb')")
        yield bytes(block)


def normalize_newlines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Turn every bare CR or LF into CRLF, across block boundaries.

    A trailing CR is held back until the next block shows whether an LF
    follows, so no yielded piece ends in a lone CR.
    """
    held_cr = False
    for raw in blocks:
        block = raw
        if not block:
            continue
        prefix = b""
        if held_cr:
            prefix = CRLF
            if block.startswith(b"\n"):
                block = block[1:]
        held_cr = block.endswith(b"\r")
        if held_cr:
            block = block[:-1]
        out = prefix + _NEWLINES.sub(CRLF, block)
        if out:
            yield out
    if held_cr:
        yield CRLF


# --------------------------------------------------------------------------- scan


@dataclass(frozen=True)
class HeaderField:
    """One header field as read: lower-case name, and the whole field with CRLF."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value (undecodable octets kept as escapes)."""
        value = self.raw.decode("utf-8", "surrogateescape").partition(":")[2]
        return value.replace("\r\n", "").strip()


@dataclass(frozen=True)
class Scan:
    """What one pass over a ready message learned (newlines normalised)."""

    fields: tuple[HeaderField, ...]
    header_len: int  # normalised octets before the body: header block and blank line
    separated: bool  # a blank line separates header and body
    body_len: int
    body_8bit: bool
    final_crlf: bool  # the body lacks a final line end, which is added


class _Header:
    """Header lines collected one at a time until the header block ends."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.fields: list[HeaderField] = []
        self.first = True

    def line(self, line: bytes) -> bool:
        """Take one line (without CRLF); False when it is not part of the header."""
        first, self.first = self.first, False
        if first and line.startswith(b"From ") and not _FIELD_NAME.match(line):
            return True  # an mbox "From " line, which sendmail drops too
        if self.strict and len(line) > mime.MAX_LINE:
            raise MessageError(f"the message has a header line over {mime.MAX_LINE} octets")
        if line[:1] in (b" ", b"\t"):
            if not self.fields:
                if self.strict:
                    raise MessageError("the message starts with a continuation line")
                return False
            last = self.fields[-1]
            self.fields[-1] = HeaderField(last.name, last.raw + line + CRLF)
            return True
        if not _FIELD_NAME.match(line):
            if self.strict:
                raise MessageError(f"not an RFC 5322 header line: {line[:80]!r}")
            return False
        name = line.partition(b":")[0].rstrip(b" \t").decode("ascii").lower()
        self.fields.append(HeaderField(name, line + CRLF))
        return True


def scan(stream: IO[bytes], *, strict: bool) -> Scan:
    """Read once: split off the header fields, measure and check the body."""
    pieces = normalize_newlines(read_blocks(stream))
    header = _Header(strict)
    buffer = b""
    pos = 0  # start of the first line not yet taken
    body_start = -1
    separated = False
    for piece in pieces:
        buffer += piece
        while (end := buffer.find(CRLF, pos)) >= 0:
            line = buffer[pos:end]
            if not line:
                separated, body_start = True, end + 2
                break
            if not header.line(line):
                body_start = pos  # not a field: the body starts here (sendmail's reading)
                break
            pos = end + 2
        if body_start >= 0:
            break
        if len(buffer) > MAX_HEADER_BLOCK:
            if strict:
                raise MessageError("the message's header block is too large")
            body_start = pos
            break
    else:  # the source ended inside the header block
        tail = buffer[pos:]
        body_start = len(buffer) if tail and header.line(tail) else pos
    if strict and not header.fields:
        raise MessageError("the message has no header fields")
    counter = _BodyCounter()
    counter.feed(buffer[body_start:])
    for piece in pieces:
        counter.feed(piece)
    longest = max(counter.longest, counter.current)
    if strict and longest > mime.MAX_LINE:
        raise MessageError(f"the message has a line longer than {mime.MAX_LINE} octets")
    return Scan(
        fields=tuple(header.fields),
        header_len=body_start,
        separated=separated,
        body_len=counter.size,
        body_8bit=counter.eight_bit,
        final_crlf=counter.current > 0,
    )


class _BodyCounter:
    """Size, 8-bit content and longest line of a CRLF-normalised byte stream."""

    def __init__(self) -> None:
        self.size = 0
        self.eight_bit = False
        self.longest = 0
        self.current = 0

    def feed(self, piece: bytes) -> None:
        if not piece:
            return
        self.size += len(piece)
        self.eight_bit = self.eight_bit or not piece.isascii()
        lines = piece.split(CRLF)
        self.current += len(lines[0])
        if len(lines) > 1:
            self.longest = max(self.longest, self.current, *map(len, lines[1:-1]))
            self.current = len(lines[-1])


@dataclass(frozen=True)
class RawBody(mime.Segment):
    """The body of a ready message, streamed from its source on every render.

    The source is read again, newlines normalised, the first ``skip``
    (normalised) octets — the original header block — dropped. ``length``
    and ``has_8bit`` come from the one scan; ``final_crlf`` adds the line end
    a body may lack.
    """

    opener: Opener
    skip: int
    length: int
    has_8bit: bool
    final_crlf: bool

    @property
    def size(self) -> int:
        return self.length + (2 if self.final_crlf else 0)

    @property
    def eight_bit(self) -> bool:
        return self.has_8bit

    def chunks(self) -> Iterator[bytes]:
        produced = 0
        to_skip = self.skip
        try:
            with self.opener() as stream:
                for piece in normalize_newlines(read_blocks(stream)):
                    if to_skip >= len(piece):
                        to_skip -= len(piece)
                        continue
                    out = piece[to_skip:] if to_skip else piece
                    to_skip = 0
                    produced += len(out)
                    if produced > self.length:
                        break
                    yield out
        except OSError as exc:
            raise MessageError(f"cannot read the message: {exc}") from exc
        if produced != self.length:
            raise MessageError("the message source changed while being sent")
        if self.final_crlf:
            yield CRLF


# --------------------------------------------------------------------------- messages


class ReadyMessage:
    """A ready message: scanned once, streamed on each render, Bcc never sent.

    ``opener`` gives the source from its start each time it is called;
    ``stamp`` (for files) tells whether the source changed since the scan.
    """

    def __init__(
        self, opener: Opener, *, strict: bool, stamp: Callable[[], object] | None = None
    ) -> None:
        self.opener = opener
        self.stamp = stamp
        self.seen = stamp() if stamp else None
        with opener() as stream:
            self.scan = scan(stream, strict=strict)
        self.added: list[bytes] = []

    def values(self, name: str) -> list[str]:
        """The values of every field called *name* (lower-case)."""
        return [f.value for f in self.scan.fields if f.name == name]

    def first(self, name: str, *, unique: bool = False) -> str | None:
        values = self.values(name)
        if unique and len(values) > 1:
            raise MessageError(f"the message has more than one {name.title()} field")
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.scan.fields)

    def addresses(self, *names: str) -> list[Address]:
        """Every address in the fields *names*, parsed strictly, in order."""
        return [
            address
            for f in self.scan.fields
            if f.name in names
            for address in parse_header_addresses(f.value, f.name)
        ]

    def message_id(self) -> str | None:
        """The Message-ID field's id, without angle brackets."""
        value = self.first("message-id")
        if value is None:
            return None
        return value.partition("<")[2].partition(">")[0] or value

    def add(self, name: str, value: str) -> None:
        """Add a header field (a generated value: From, Date, Message-ID)."""
        if not mime.is_safe_text(value):
            raise MessageError(f"{name}: {value!r} contains control characters")
        self.added.append(f"{name}: {value}\r\n".encode())

    def header(self) -> bytes:
        """The header as sent: fields as read minus Bcc/Resent-Bcc, added ones, blank line."""
        kept = [f.raw for f in self.scan.fields if f.name not in HIDDEN]
        block = b"".join(kept + self.added)
        body_follows = self.scan.body_len > 0 or self.scan.final_crlf
        if self.scan.separated or (block and body_follows):
            block += CRLF
        return block

    def segments(self) -> tuple[mime.Segment, ...]:
        if self.stamp is not None and self.stamp() != self.seen:
            raise MessageError("the message file changed since it was read")
        scan = self.scan
        body = RawBody(self.opener, scan.header_len, scan.body_len, scan.body_8bit, scan.final_crlf)
        return (mime.Static(self.header()), body)

    def chunks(self) -> Iterator[bytes]:
        """The message as sent, piece by piece."""
        for segment in self.segments():
            yield from segment.chunks()


class ReadySource(Source):
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


# --------------------------------------------------------------------------- sources


def from_bytes(data: bytes, *, strict: bool) -> ReadyMessage:
    """A ready message held in memory."""
    return ReadyMessage(lambda: io.BytesIO(data), strict=strict)


def from_path(path: str) -> ReadyMessage:
    """A ready message in a file, re-opened on each render; a changed file is refused."""

    def stamp() -> object:
        info = os.stat(path)
        return (info.st_size, info.st_mtime_ns)

    return ReadyMessage(lambda: open(path, "rb"), strict=True, stamp=stamp)


def from_stream(stream: IO[bytes]) -> ReadyMessage:
    """A ready message in the caller's binary file, re-read from where it stands now.

    A pipe cannot be read twice, so it is first spooled (in memory up to
    8 MiB, then to a temporary file); the caller's file is never closed here.
    """
    try:
        seekable = stream.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if not seekable:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        for block in read_blocks(stream):
            spool.write(block)
        stream = spool
        stream.seek(0)
    start = stream.tell()

    def opener() -> AbstractContextManager[IO[bytes]]:
        stream.seek(start)
        return contextlib.nullcontext(stream)

    return ReadyMessage(opener, strict=False)
