"""The one reader of ready RFC 5322 messages (smtpsubmit.ready), without a network."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from smtpsubmit import ready
from smtpsubmit.errors import MessageError

HEADER = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n"


def sent(message: ready.ReadyMessage) -> bytes:
    """What goes out, checked against the size announced before the first byte."""
    data = b"".join(message.chunks())
    assert message.measure() == (len(data), not data.isascii())
    return data


class Trickle(io.RawIOBase):
    """A pipe-like stream that returns a few octets per read and cannot seek."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self.data[self.pos : self.pos + min(self.step, len(buffer))]
        buffer[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (HEADER + b"Bcc: x@example.org\r\n\r\nbody\r\n", HEADER + b"\r\nbody\r\n"),
        # folded Bcc with its continuation lines, and Resent-Bcc, in any case
        (
            b"From: a@example.org\nBCC: x@example.org,\n  y@example.org\nResent-bcc: z@e.org\n"
            b"To: b@example.org\n\nbody",
            b"From: a@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n",
        ),
        # bare CR and LF become CRLF; a body without a final line end gets one
        (
            b"To: b@example.org\rX: 1\n\nline\rtwo",
            b"To: b@example.org\r\nX: 1\r\n\r\nline\r\ntwo\r\n",
        ),
        # header fields only, the last one without a line end
        (b"To: b@example.org\nSubject: s", b"To: b@example.org\r\nSubject: s\r\n"),
        # an mbox "From " line is dropped
        (
            b"From a@example.org Mon Jan  1 00:00:00 2024\nTo: b@example.org\n\nx\n",
            b"To: b@example.org\r\n\r\nx\r\n",
        ),
        # a line that is not a field ends the header: left as it is when nothing is removed,
        (
            b"To: b@example.org\nnot a field\nmore\n",
            b"To: b@example.org\r\nnot a field\r\nmore\r\n",
        ),
        # and written with a blank line when the header is rewritten
        (
            b"To: b@example.org\nBcc: x@example.org\nnot a field\nBcc: kept in the body\n",
            b"To: b@example.org\r\n\r\nnot a field\r\nBcc: kept in the body\r\n",
        ),
        # "bcc" elsewhere in the header changes nothing
        (b"Subject: re: bcc\n\nx\n", b"Subject: re: bcc\r\n\r\nx\r\n"),
        # no header at all: sent as it is
        (b"just text\n", b"just text\r\n"),
        (b"", b""),
    ],
)
def test_lenient_reader_strips_bcc_and_sizes_exactly(raw: bytes, expected: bytes) -> None:
    assert sent(ready.from_bytes(raw, strict=False)) == expected


def test_block_boundaries_do_not_change_the_result() -> None:
    raw = b"To: b@example.org\r\nBcc: x@example.org\r\n\r\n" + b"line\r\n" * 30_000 + b"a\rb\nc"
    whole = sent(ready.from_bytes(raw, strict=False))
    for step in (1, 2, 3, 7, 4096):
        message = ready.from_stream(io.BufferedReader(Trickle(raw, step), buffer_size=step))
        assert sent(message) == whole
    assert b"Bcc" not in whole and whole.endswith(b"a\r\nb\r\nc\r\n")


def test_a_pipe_is_spooled_and_read_again_for_each_render() -> None:
    raw = HEADER + b"Bcc: x@example.org\r\n\r\n" + b"z" * 100_000 + b"\r\n"
    message = ready.from_stream(io.BufferedReader(Trickle(raw, 4096)))
    first = sent(message)
    assert sent(message) == first == raw.replace(b"Bcc: x@example.org\r\n", b"")


def test_a_seekable_file_is_read_from_where_it_stands_and_left_open() -> None:
    stream = io.BytesIO(b"ignored prefix" + HEADER + b"\r\nbody\r\n")
    stream.seek(len(b"ignored prefix"))
    message = ready.from_stream(stream)
    assert sent(message) == HEADER + b"\r\nbody\r\n"
    assert sent(message) == HEADER + b"\r\nbody\r\n"
    assert not stream.closed


def test_text_mode_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(HEADER)
    with open(path, encoding="ascii") as text, pytest.raises(MessageError, match="binary"):
        ready.from_stream(text)  # type: ignore[arg-type]


def test_addresses_are_parsed_strictly_cve_2023_27043() -> None:
    message = ready.from_bytes(
        b"From: a@example.org\r\nTo: alice@example.org <bob@evil.example>\r\n\r\nx\r\n",
        strict=False,
    )
    with pytest.raises(MessageError, match="unambiguous"):
        message.addresses("to")
    good = ready.from_bytes(
        b"To: Alice <alice@example.org>, team: c@example.org, d@example.org;\r\n"
        b"Cc: =?utf-8?q?Z=C3=B6e?= <zoe@example.org>\r\n\r\n",
        strict=False,
    )
    assert [a.spec(True) for a in good.addresses("to", "cc")] == [
        "alice@example.org",
        "c@example.org",
        "d@example.org",
        "zoe@example.org",
    ]


def test_added_fields_go_before_the_blank_line_and_refuse_line_breaks() -> None:
    message = ready.from_bytes(HEADER + b"\r\nbody\r\n", strict=False)
    message.add("Date", "Mon, 01 Jan 2024 00:00:00 +0000")
    assert sent(message) == HEADER + b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
    with pytest.raises(MessageError):
        message.add("X-Name", "a\r\nBcc: x@example.org")


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\nbody\r\n",  # no header fields
        b"not a header\r\nTo: b@example.org\r\n\r\n",
        b" continued\r\nTo: b@example.org\r\n\r\n",
        b"To: b@example.org\r\nX: " + b"x" * 1000 + b"\r\n\r\n",
        b"To: b@example.org\r\n\r\n" + b"x" * 999 + b"\r\n",
        b"To: b@example.org\r\nX: " + b"x" * (ready.MAX_HEADER_BLOCK + 10),
    ],
)
def test_strict_reader_refuses_what_it_cannot_read_as_rfc_5322(raw: bytes) -> None:
    with pytest.raises(MessageError):
        ready.from_bytes(raw, strict=True)
    assert sent(ready.from_bytes(raw, strict=False))  # sent as written when the caller asks


def test_a_file_that_changes_after_the_scan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(HEADER + b"\r\nbody\r\n")
    message = ready.from_path(str(path))
    assert sent(message).endswith(b"body\r\n")
    path.write_bytes(HEADER + b"\r\nanother body\r\n")
    os.utime(path, ns=(1, 1))
    with pytest.raises(MessageError, match="changed"):
        sent(message)
