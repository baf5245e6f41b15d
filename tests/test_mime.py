"""The streaming MIME writer (smtpsubmit.mime): sizes known before bytes, lines bounded."""

from __future__ import annotations

import base64
import binascii
import email.header
from pathlib import Path

import pytest

from smtpsubmit import mime
from smtpsubmit.errors import MessageError


@pytest.mark.parametrize("length", [0, 1, 2, 3, 56, 57, 58, 114, mime.READ_BLOCK + 1])
def test_base64_segments_announce_their_exact_size(length: int, tmp_path: Path) -> None:
    data = bytes(range(256)) * (length // 256 + 1)
    data = data[:length]
    path = tmp_path / "blob"
    path.write_bytes(data)
    for segment in (mime.Base64Data(data), mime.Base64File(str(path), length)):
        out = b"".join(segment.chunks())
        assert len(out) == segment.size == mime.base64_size(length)
        assert base64.b64decode(out.replace(b"\r\n", b"")) == data
        assert all(len(line) <= mime.B64_LINE for line in out.split(b"\r\n"))


def test_a_file_that_changes_size_while_sent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100)
    segment = mime.Base64File(str(path), 50)
    with pytest.raises(MessageError, match="changed size"):
        b"".join(segment.chunks())


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_rechunk_gives_exact_chunks(size: int) -> None:
    pieces = [b"abc", b"", b"defghij", b"k" * 70, b"l"]
    chunks = list(mime.rechunk(pieces, size))
    assert b"".join(chunks) == b"".join(pieces)
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size
    with pytest.raises(ValueError):
        list(mime.rechunk(pieces, 0))


def test_render_lays_out_a_multipart_tree() -> None:
    leaf = mime.Leaf((b"Content-Type: text/plain\r\n",), (mime.Static(b"hi\r\n"),))
    tree = mime.Multipart((b"Content-Type: multipart/mixed; boundary=b\r\n",), "b", (leaf, leaf))
    out = b"".join(c for s in mime.render(tree, [b"To: x@example.org\r\n"]) for c in s.chunks())
    assert out == (
        b"To: x@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"\r\n--b--\r\n"
    )


def test_fold_keeps_lines_short_and_refuses_overlong_ones() -> None:
    folded = mime.fold("Subject", ["word"] * 40)
    assert all(len(line) <= mime.FOLD_AT for line in folded.split(b"\r\n"))
    assert folded.replace(b"\r\n ", b" ") == b"Subject: " + b" ".join([b"word"] * 40) + b"\r\n"
    with pytest.raises(MessageError, match="998"):
        mime.fold("X", ["y" * 1000])


def test_quoted_printable_keeps_crlf_and_short_lines() -> None:
    data = b"caf\xc3\xa9 " + b"x" * 200 + b"\r\nend"
    out = mime.quoted_printable(data)
    assert all(len(line) <= 76 for line in out.split(b"\r\n"))
    assert binascii.a2b_qp(out.replace(b"=\r\n", b"")) == data


def test_encoded_words_decode_back_and_fit() -> None:
    text = "Grüße aus Köln — " * 8
    words = mime.encoded_words(text, "utf-8", "utf-8")
    assert all(len(word) <= mime.MAX_ENCODED_WORD for word in words)
    decoded = "".join(
        part.decode(charset or "ascii") if isinstance(part, bytes) else part
        for part, charset in email.header.decode_header(" ".join(words))
    )
    assert decoded == text


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "a\u2028b", "a\u2029b", "a\x85b"])
def test_unsafe_text_and_names(bad: str) -> None:
    assert not mime.is_safe_text(bad)
    with pytest.raises(MessageError, match="control or bidi"):
        mime.check_name(bad, "name")


def test_bidi_overrides_are_refused_in_names_only() -> None:
    spoof = "invoice\u202egpj.exe"
    assert mime.is_safe_text(spoof)
    with pytest.raises(MessageError):
        mime.check_name(spoof, "attachment file name")
    mime.check_name("Zoë Ünïcode", "display name")


def test_encode_text_names_what_failed() -> None:
    assert mime.encode_text("abc", "ascii") == b"abc"
    with pytest.raises(MessageError, match="subject: cannot be encoded in charset 'ascii'"):
        mime.encode_text("é", "ascii", "subject")


def test_parameters_use_rfc_2231_for_non_ascii() -> None:
    tokens = mime.parameter_tokens("attachment", [("filename", "Grüße " * 20 + ".txt")])
    field = mime.fold("Content-Disposition", tokens)
    assert b"filename*0*=utf-8''Gr%C3%BC%C3%9Fe" in field
    assert all(len(line) <= mime.FOLD_AT for line in field.split(b"\r\n"))
