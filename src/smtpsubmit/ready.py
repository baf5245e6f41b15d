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
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, NamedTuple

from smtpsubmit import mime
from smtpsubmit.addresses import Address, parse_header_addresses
from smtpsubmit.errors import MessageError

__all__: list[str] = []

Opener = Callable[[], AbstractContextManager[IO[bytes]]]

MAX_HEADER_BLOCK = 1 << 20  # a ready message's header block, in octets
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a pipe is spooled to disk beyond this
HIDDEN = frozenset({"bcc", "resent-bcc"})  # never sent (RFC 5322 §3.6.3)

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")
_MESSAGE_ID = re.compile(
    rb"^message-id[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
_HIDDEN = re.compile(rb"^(?:resent-)?bcc[ \t]*:", re.IGNORECASE | re.MULTILINE)
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
_FIELDS = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+")
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


class HeaderField(NamedTuple):
    """One header field as read: lower-case name, and the whole field with CRLF."""

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value (undecodable octets kept as escapes)."""
        value = self.raw.decode("utf-8", "surrogateescape").partition(":")[2]
        return value.replace("\r\n", "").strip()


class Scan(NamedTuple):
    """What one pass over a ready message learned (newlines normalised)."""

    header_block: bytes  # the header fields as read (each ending CRLF), nothing else
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

    def block(self) -> bytes:
        return b"".join(field.raw for field in self.fields)


def _take_lines(header: _Header, buffer: bytes, pos: int) -> tuple[int, int, bool]:
    """Feed *header* the complete lines from *pos*: (next pos, body start or -1, separated)."""
    while (end := buffer.find(CRLF, pos)) >= 0:
        line = buffer[pos:end]
        if not line:
            return pos, end + 2, True
        if not header.line(line):
            return pos, pos, False  # not a field: the body starts here (sendmail's reading)
        pos = end + 2
    return pos, -1, False


def _at_end(header: _Header, buffer: bytes, pos: int) -> int:
    """The source ended inside the header block: where its body (if any) starts."""
    tail = buffer[pos:]
    return len(buffer) if tail and header.line(tail) else pos


def _checked(
    strict: bool, block: bytes, header_len: int, separated: bool, body: _BodyCounter
) -> Scan:
    if strict and not block:
        raise MessageError("the message has no header fields")
    if strict and max(body.longest, body.current) > mime.MAX_LINE:
        raise MessageError(f"the message has a line longer than {mime.MAX_LINE} octets")
    return Scan(
        header_block=block,
        header_len=header_len,
        separated=separated,
        body_len=body.size,
        body_8bit=body.eight_bit,
        final_crlf=body.current > 0,
    )


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
        pos, body_start, separated = _take_lines(header, buffer, pos)
        if body_start >= 0:
            break
        if len(buffer) > MAX_HEADER_BLOCK:
            if strict:
                raise MessageError("the message's header block is too large")
            body_start = pos
            break
    else:
        body_start = _at_end(header, buffer, pos)
    counter = _BodyCounter()
    counter.feed(buffer[body_start:])
    for piece in pieces:
        counter.feed(piece)
    return _checked(strict, header.block(), body_start, separated, counter)


def canonical(data: bytes) -> bytes:
    """*data* with CRLF line ends (the same object when it already has only those)."""
    crlf = data.count(CRLF)
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return b"".join(normalize_newlines([data]))


def scan_bytes(data: bytes, *, strict: bool) -> Scan:
    """:func:`scan` for a message already in memory (and in CRLF form): no copy of the body."""
    # The common case in one regex pass: fields only, then a blank line or the end.
    fields = None if strict or data.startswith(b"From ") else _FIELDS.match(data)
    end = fields.end() if fields else 0
    if fields and data.startswith(CRLF, end):
        block, body_start, separated = data[:end], end + 2, True
    elif fields and end == len(data):
        block, body_start, separated = data, end, False
    else:  # anything else is read line by line
        header = _Header(strict)
        pos, body_start, separated = _take_lines(header, data, 0)
        if body_start < 0:
            body_start = _at_end(header, data, pos)
        block = header.block()
    if strict:  # the line check needs every line
        if body_start > MAX_HEADER_BLOCK:
            raise MessageError("the message's header block is too large")
        counter = _BodyCounter()
        counter.feed(data[body_start:])
        return _checked(strict, block, body_start, separated, counter)
    size = len(data) - body_start
    eight_bit = not data.isascii() and not data[body_start:].isascii()
    final_crlf = size > 0 and not data.endswith(CRLF)
    return Scan(block, body_start, separated, size, eight_bit, final_crlf)


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
    """A ready message: scanned once, its body streamed on each render, Bcc never sent.

    ``load`` gives the scan and the body segment (called at most once);
    ``stamp`` (for files) tells whether the source changed since the scan.
    ``verbatim`` is for a message in memory that has nothing to remove: it is
    sent as that one segment unless a field is added, and not taken apart
    unless asked about its fields (what keeps bulk sends of bytes cheap).
    """

    def __init__(
        self,
        load: Callable[[], tuple[Scan, mime.Segment]],
        *,
        stamp: Callable[[], object] | None = None,
        seen: object = None,
        verbatim: MemoryBody | None = None,
        head_end: int = 0,
        id_from: int = 0,
    ) -> None:
        self._load = load
        self._loaded: tuple[Scan, mime.Segment] | None = None
        self.stamp = stamp
        self.seen = seen  # what stamp() said before the scan
        self.verbatim = verbatim
        self.head_end = head_end  # of verbatim: the header ends here at the latest
        self.id_from = id_from  # of verbatim: where a Message-ID field can start; -1: none
        self.added: list[bytes] = []
        self._header: bytes | None = None
        self._fields: list[HeaderField] | None = None
        self._segments: tuple[mime.Segment, ...] | None = None

    @property
    def scan(self) -> Scan:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded[0]

    @property
    def body(self) -> mime.Segment:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded[1]

    @property
    def fields(self) -> list[HeaderField]:
        """The header fields as read (split from the block when first asked for)."""
        if self._fields is None:
            self._fields = [
                HeaderField(m[1].decode("ascii").lower(), m[0])
                for m in _FIELD.finditer(self.scan.header_block)
            ]
        return self._fields

    def values(self, name: str) -> list[str]:
        """The values of every field called *name* (lower-case)."""
        return [f.value for f in self.fields if f.name == name]

    def first(self, name: str, *, unique: bool = False) -> str | None:
        values = self.values(name)
        if unique and len(values) > 1:
            raise MessageError(f"the message has more than one {name.title()} field")
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def addresses(self, *names: str) -> list[Address]:
        """Every address in the fields *names*, parsed strictly, in order."""
        return [
            address
            for f in self.fields
            if f.name in names
            for address in parse_header_addresses(f.value, f.name)
        ]

    def message_id(self) -> str | None:
        """The (first) Message-ID field's id, without angle brackets."""
        if self.verbatim is not None:  # no need to take the header apart
            if self.id_from < 0:
                return None
            found = _MESSAGE_ID.search(self.verbatim.data, self.id_from, self.head_end)
        else:
            found = _MESSAGE_ID.search(self.scan.header_block)
        if found is None:
            return None
        value = found[1].replace(CRLF, b"").strip().decode("utf-8", "replace")
        return value.partition("<")[2].partition(">")[0] or value

    def add(self, name: str, value: str) -> None:
        """Add a header field (a generated value: From, Date, Message-ID)."""
        if not mime.is_safe_text(value):
            raise MessageError(f"{name}: {value!r} contains control characters")
        self.added.append(f"{name}: {value}\r\n".encode())
        self._header = self._segments = None

    def header(self) -> bytes:
        """The header as sent: fields as read minus Bcc/Resent-Bcc, added ones, blank line."""
        if self._header is None:
            self._header = self._render_header()
        return self._header

    def _render_header(self) -> bytes:
        block = self.scan.header_block
        if _HIDDEN.search(block):  # only then is the header taken apart
            block = b"".join(f.raw for f in self.fields if f.name not in HIDDEN)
        block += b"".join(self.added)
        body_follows = self.scan.body_len > 0 or self.scan.final_crlf
        if self.scan.separated or (block and body_follows):
            block += CRLF
        return block

    def segments(self) -> tuple[mime.Segment, ...]:
        if self.stamp is not None and self.stamp() != self.seen:
            raise MessageError("the message file changed since it was read")
        if self._segments is None:
            if self.verbatim is not None and not self.added:
                self._segments = (self.verbatim,)
            else:
                self._segments = (mime.Static(self.header()), self.body)
        return self._segments

    def measure(self) -> tuple[int, bool]:
        """(exact size in octets, whether any octet is above 127) of what is sent."""
        segments = self.segments()
        if len(segments) == 1:
            return segments[0].size, segments[0].eight_bit
        return sum(s.size for s in segments), any(s.eight_bit for s in segments)

    def chunks(self) -> Iterator[bytes]:
        """The message as sent, piece by piece."""
        segments = self.segments()
        if len(segments) == 1:
            return segments[0].chunks()
        return itertools.chain.from_iterable(segment.chunks() for segment in segments)


class MemoryBody(mime.Segment):
    """The body of a ready message held in memory: slices of it, never a copy of it all.

    A plain class with slots rather than a frozen dataclass: one is made per
    message sent as bytes, and bulk senders send many.
    """

    __slots__ = ("_eight_bit", "_size", "data", "final_crlf", "start")

    def __init__(self, data: bytes, start: int, eight_bit: bool, final_crlf: bool) -> None:
        self.data, self.start, self.final_crlf = data, start, final_crlf
        self._eight_bit = eight_bit
        self._size = len(data) - start + (2 if final_crlf else 0)

    @property
    def size(self) -> int:
        return self._size

    @property
    def eight_bit(self) -> bool:
        return self._eight_bit

    def chunks(self) -> Iterator[bytes]:
        data = self.data
        for start in range(self.start, len(data), mime.READ_BLOCK):
            yield data[start : start + mime.READ_BLOCK]
        if self.final_crlf:
            yield CRLF


def _head_end(data: bytes) -> int:
    """Where the header block ends at the latest: the first blank line."""
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def from_bytes(data: bytes, *, strict: bool) -> ReadyMessage:
    """A ready message held in memory."""
    data = canonical(data)

    def load() -> tuple[Scan, mime.Segment]:
        found = scan_bytes(data, strict=strict)
        return found, MemoryBody(data, found.header_len, found.body_8bit, found.final_crlf)

    # Nothing to remove when "bcc" appears nowhere up to the first blank line
    # (and there is no mbox "From " line): the bytes then go out as they are.
    end = _head_end(data)
    head = data[:end].lower()
    if not strict and not head.startswith(b"from ") and b"bcc" not in head:
        whole = MemoryBody(data, 0, not data.isascii(), bool(data) and not data.endswith(CRLF))
        # The Message-ID search starts at the line of the first "message-id" (a plain
        # search of the lower-cased head, much cheaper than the regex from the top).
        at = head.find(b"message-id")
        id_from = -1 if at < 0 else head.rfind(b"\n", 0, at) + 1
        return ReadyMessage(load, verbatim=whole, head_end=end, id_from=id_from)
    message = ReadyMessage(load)
    message.scan  # noqa: B018 - scanned now, so bad input fails here
    return message


def _streamed(opener: Opener, strict: bool, stamp: Callable[[], object] | None) -> ReadyMessage:
    seen = stamp() if stamp else None
    with opener() as stream:
        found = scan(stream, strict=strict)
    body = RawBody(opener, found.header_len, found.body_len, found.body_8bit, found.final_crlf)
    return ReadyMessage(lambda: (found, body), stamp=stamp, seen=seen)


def from_path(path: str) -> ReadyMessage:
    """A ready message in a file, re-opened on each render; a changed file is refused."""

    def stamp() -> object:
        info = os.stat(path)
        return (info.st_size, info.st_mtime_ns)

    return _streamed(lambda: open(path, "rb"), True, stamp)


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

    return _streamed(opener, False, None)
