"""Property tests for everything that parses hostile input or renders user input:
the reply parser, the EHLO capability parser, envelope and message addresses, and
the MIME writer (beyond ``test_message_properties.py``: arbitrary attachment
bytes, chunking independence, ready messages, unbreakable header words).

``fuzz/`` runs the reply parser and the message writer for a time budget
(``python -m fuzz --seconds 60``); these tests are the bounded, every-run part.
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpsubmit.envelope import check_envelope_address
from smtpsubmit.errors import MessageError, ProtocolError
from smtpsubmit.message import Attachment, Message
from smtpsubmit.protocol import MAX_LINE, MAX_REPLY, Capabilities, Command, ReplyParser
from smtpsubmit.reply import Reply
from tests.test_message import assert_wire_clean, parse
from tests.test_message_properties import EXPECTED_FIELDS, field_names

SETTINGS = settings(
    max_examples=int(os.environ.get("SMTPSUBMIT_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Reply text as a server may legitimately send it: UTF-8, no controls.
reply_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80)
reply_code = st.integers(200, 599)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def render_reply(code: int, lines: list[str]) -> bytes:
    return b"".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


def drain(parser: ReplyParser) -> list[Reply]:
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


# --------------------------------------------------------------------------- reply parser


@SETTINGS
@given(
    replies=st.lists(
        st.tuples(reply_code, st.lists(reply_text, min_size=1, max_size=6)), max_size=6
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_reply_parser_round_trips_however_the_bytes_are_split(
    replies: list[tuple[int, list[str]]], cuts: list[int]
) -> None:
    wire = b"".join(render_reply(code, lines) for code, lines in replies)
    parser = ReplyParser()
    got: list[Reply] = []
    for piece in split_at(wire, cuts):
        parser.feed(piece)
        got += drain(parser)
    # Trailing spaces are kept; the text is exactly what the server sent per line.
    assert got == [Reply.from_lines(code, lines) for code, lines in replies]
    assert parser.buffered == 0


@SETTINGS
@given(st.lists(st.binary(max_size=3000), max_size=30))
def test_reply_parser_memory_is_bounded_and_errors_are_typed(chunks: list[bytes]) -> None:
    """Whatever arrives, in whatever pieces: replies, or a ProtocolError, and what it
    holds between reads never exceeds one line plus one reply."""
    parser = ReplyParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for reply in drain(parser):
                assert 200 <= reply.code <= 599
                assert "\r" not in reply.text and "\x00" not in reply.text
            assert parser.buffered <= MAX_LINE + MAX_REPLY
    except ProtocolError:
        pass


@SETTINGS
@given(
    code=reply_code,
    klass=st.sampled_from("245"),
    subject=st.integers(0, 999),
    detail=st.integers(0, 999),
    text=reply_text,
)
def test_enhanced_codes_are_peeled_and_classification_follows_the_basic_code(
    code: int, klass: str, subject: int, detail: int, text: str
) -> None:
    parser = ReplyParser()
    parser.feed(f"{code} {klass}.{subject}.{detail} {text}\r\n".encode())
    (reply,) = drain(parser)
    assert reply.enhanced == f"{klass}.{subject}.{detail}"
    assert reply.is_temporary == (400 <= code < 500)
    assert reply.is_permanent == (code >= 500)


# --------------------------------------------------------------------------- capabilities

keyword = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,15}", fullmatch=True)
ehlo_line = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)


@SETTINGS
@given(
    lines=st.lists(ehlo_line, max_size=20),
    disabled=st.sets(keyword, max_size=3),
)
def test_capability_parser_never_fails_and_stays_well_formed(
    lines: list[str], disabled: set[str]
) -> None:
    caps = Capabilities.parse(Reply(250, "\n".join(["mx.example", *lines])), disabled)
    for key in caps.keywords:
        assert key == key.upper() and re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", key)
        assert key not in {d.upper() for d in disabled}
    limit = caps.size_limit
    assert limit is None or 0 < limit < 10**18
    mechanisms = caps.auth_mechanisms
    assert len(mechanisms) == len(set(mechanisms))
    assert all(m == m.upper() and " " not in m for m in mechanisms)


@SETTINGS
@given(
    st.dictionaries(
        keyword,
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
        max_size=10,
    )
)
def test_capabilities_round_trip(advertised: dict[str, str]) -> None:
    lines = [f"{k} {v}".strip() for k, v in advertised.items()]
    caps = Capabilities.parse(Reply(250, "\n".join(["mx.example", *lines])))
    assert set(caps.keywords) >= {k.upper() for k in advertised}
    for key in advertised:
        assert key in caps
        if key.upper() != "AUTH":
            # A later duplicate with other case wins; compare with the last one written.
            last = [v for k, v in advertised.items() if k.upper() == key.upper()][-1]
            assert caps.get(key) == last


# --------------------------------------------------------------------------- addresses

address_like = (
    st.text(st.sampled_from('abcXYZ09.-_+@"()<>[]\\,;: \t\r\n\x00\x7féü\u202e'), max_size=40)
    | st.emails()
)


@SETTINGS
@given(address_like, st.booleans())
def test_envelope_addresses_are_safe_and_idempotent(text: str, sender: bool) -> None:
    """Refused, or a single wire token that renders as one command line and is a
    fixed point of the check (never 'repaired' into something else later)."""
    try:
        address, utf8 = check_envelope_address(text, sender=sender)
    except MessageError:
        return
    if address == "":
        assert sender
        return
    assert not _CONTROL.search(address)
    assert not re.search(r"[<>\s]", address.replace('" "', ""))  # no breaking out of <...>
    assert utf8 == (not address.isascii())
    assert check_envelope_address(address, sender=sender) == (address, utf8)
    line = Command("RCPT", f"TO:<{address}>").render()
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")


@SETTINGS
@given(address_like)
def test_message_recipients_never_inject_and_match_the_envelope(text: str) -> None:
    try:
        message = Message(sender="a@example.org", to=text, text="x")
    except MessageError:
        return
    raw = message.as_bytes()
    assert_wire_clean(raw)
    assert field_names(raw) <= EXPECTED_FIELDS
    for rcpt in message.envelope_recipients():
        wire, _ = check_envelope_address(rcpt)
        assert wire == rcpt or wire.lower() == rcpt.lower()


# --------------------------------------------------------------------------- MIME writer


@SETTINGS
@given(
    data=st.binary(max_size=5000),
    text=st.text(max_size=500),
    chunk=st.sampled_from([1, 7, 76, 4096, 65536]),
)
def test_attachment_bytes_round_trip_and_chunking_does_not_matter(
    data: bytes, text: str, chunk: int
) -> None:
    try:
        message = Message(
            sender="a@example.org",
            to="b@example.org",
            text=text,
            attachments=[Attachment(data=data, filename="blob.bin")],
        )
    except MessageError:
        return
    prepared = message.prepare(allow_8bit=False, smtputf8=False)
    whole = b"".join(prepared.iter_bytes())
    assert b"".join(prepared.iter_bytes(chunk)) == whole
    assert len(whole) == prepared.size
    assert_wire_clean(whole)
    assert whole.isascii()
    parts = [p for p in parse(whole).walk() if p.get_filename() == "blob.bin"]
    assert len(parts) == 1 and parts[0].get_payload(decode=True) == data


@SETTINGS
@given(
    word=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=900, max_size=2500),
    name=st.sampled_from(["X-Long", "Comments", "Subject"]),
)
def test_unbreakable_header_words_are_refused_or_folded(word: str, name: str) -> None:
    try:
        if name == "Subject":
            message = Message(sender="a@example.org", to="b@example.org", subject=word, text="x")
        else:
            message = Message(
                sender="a@example.org", to="b@example.org", headers={name: word}, text="x"
            )
    except MessageError:
        return
    raw = message.as_bytes()
    assert_wire_clean(raw)
    assert field_names(raw) <= EXPECTED_FIELDS | {name.lower()}


ready_line = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=200
)


@SETTINGS
@given(
    headers=st.lists(st.tuples(st.sampled_from(["X-A", "Comments", "Bcc", "Cc"]), ready_line)),
    body=st.lists(ready_line, max_size=20),
    newline=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_ready_messages_are_refused_or_wire_clean_without_bcc(
    headers: list[tuple[str, str]], body: list[str], newline: str
) -> None:
    head = ["From: a@example.org", "To: b@example.org", *(f"{k}: {v}" for k, v in headers)]
    raw = (newline.join(head) + newline + newline + newline.join(body)).encode()
    try:
        message = Message.from_bytes(raw)
        out = message.as_bytes() if message.needs_smtputf8() is False else None
    except MessageError:
        return
    if out is None:
        return
    assert_wire_clean(out)
    head_out = out.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"(?im)^bcc:", head_out)
