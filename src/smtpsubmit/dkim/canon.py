"""DKIM canonicalization (RFC 6376 §3.4): the body while it streams, the header fields at once.

The body canonicalizers are small state machines fed in chunks of any size.
Their input is the message as the server stores it (CRLF line ends only, see
:class:`~smtpsubmit.protocol.LineEndingNormalizer`); they hold back only what a
later chunk could still change — a count of trailing line breaks and whether
whitespace is pending — so the hash is the same for every chunking and memory
does not grow with the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "HeaderField",
    "RelaxedBody",
    "SimpleBody",
    "canonicalize_header",
    "parse_header_block",
]

Sink = Callable[[bytes], object]

_WSP_RUN = re.compile(rb"[\t ]+")
_FOLD = re.compile(rb"\r\n(?=[\t ])")
_CRLF_BLOCK = 4096  # held-back empty lines are written out in blocks of this many


class SimpleBody:
    """``simple`` body canonicalization: trailing empty lines are dropped; never empty."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._crlfs = 0  # line breaks seen after the last content, not yet written

    def feed(self, chunk: bytes) -> None:
        content_end = len(chunk.rstrip(b"\r\n"))
        if content_end:
            _write_crlfs(self._sink, self._crlfs)
            self._sink(chunk[:content_end])
            self._crlfs = 0
        self._crlfs += chunk.count(b"\r\n", content_end)

    def finish(self) -> None:
        # Content ends with its own line break; an empty body is one CRLF.
        self._sink(b"\r\n")


class RelaxedBody:
    """``relaxed`` body canonicalization: whitespace runs become one space, whitespace
    at line ends and trailing empty lines go; a body with no content hashes as empty."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._crlfs = 0
        self._space = False  # whitespace after the last line break, not yet written
        self._content = False

    def feed(self, chunk: bytes) -> None:
        data = b" " + chunk if self._space else chunk
        content_end = len(data.rstrip(b"\t \r\n"))
        if content_end:
            _write_crlfs(self._sink, self._crlfs)
            self._sink(_relax(data[:content_end]))
            self._crlfs = 0
            self._content = True
        tail = data[content_end:]
        if tail:
            self._crlfs += tail.count(b"\r\n")
            self._space = not tail.endswith(b"\r\n")
        elif content_end:
            self._space = False

    def finish(self) -> None:
        if self._content:
            # The stored message always ends with CRLF, so pending whitespace is at a
            # line end and is dropped; the last content line keeps its line break.
            self._sink(b"\r\n")


def _relax(data: bytes) -> bytes:
    """Whitespace runs to one space, none before a line break: the regular expressions
    of RFC 6376 §3.4.4 done with C-speed replaces (equal, and several times faster)."""
    if b" " not in data and b"\t" not in data:  # base64 and most encoded bodies
        return data
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data.replace(b" \r\n", b"\r\n")


def _write_crlfs(sink: Sink, count: int) -> None:
    while count > 0:
        step = min(count, _CRLF_BLOCK)
        sink(b"\r\n" * step)
        count -= step


class HeaderField:
    """One header field as it appears in the message: ``name`` and the raw bytes
    (name, colon, value with any folding, final CRLF)."""

    __slots__ = ("name", "raw")

    def __init__(self, name: bytes, raw: bytes) -> None:
        self.name = name
        self.raw = raw

    def __repr__(self) -> str:
        return f"HeaderField({self.name!r})"


def parse_header_block(block: bytes) -> list[HeaderField]:
    """Split a header section (CRLF line ends) into fields; continuation lines join the
    field above, and a line with no colon is kept out of signing."""
    fields: list[HeaderField] = []
    current: list[bytes] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        _close(fields, current)
        current = [line]
    _close(fields, current)
    return fields


def _close(fields: list[HeaderField], lines: list[bytes]) -> None:
    if not lines:
        return
    raw = b"".join(lines)
    name, colon, _ = raw.partition(b":")
    if colon and name and not name[:1].isspace():
        fields.append(HeaderField(name, raw))


def canonicalize_header(raw: bytes, method: str) -> bytes:
    """One header field in ``simple`` or ``relaxed`` form, with its CRLF."""
    if method == "simple":
        return raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    name, _, value = raw.partition(b":")
    if value.endswith(b"\r\n"):
        value = value[:-2]
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b"\t ")
    return name.rstrip(b"\t ").lower() + b":" + value + b"\r\n"
