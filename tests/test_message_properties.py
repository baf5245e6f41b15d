"""Property tests: whatever the text, subject, display name or file name, the
output parses back to the input, uses CRLF only, keeps lines within 998
octets and carries no header field the caller did not ask for."""

from __future__ import annotations

import email.header
import email.message
import email.policy
import email.utils
import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smtpsubmit.errors import MessageError
from smtpsubmit.message import Attachment, Encoding, Message
from tests.test_message import assert_wire_clean, header_block, parse, text_of

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# What may appear in header text: no controls, surrogates or line separators.
header_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
name_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=BIDI)
body_text = st.text(st.characters(codec="utf-8"), max_size=3000)  # no surrogates
EXPECTED_FIELDS = {"from", "to", "subject", "date", "message-id", "mime-version"}
EXPECTED_FIELDS |= {"content-type", "content-transfer-encoding"}

SETTINGS = settings(
    max_examples=int(os.environ.get("SMTPSUBMIT_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def field_names(raw: bytes) -> set[str]:
    lines = header_block(raw).split(b"\r\n")[:-1]
    return {line.split(b":", 1)[0].decode().lower() for line in lines if line[:1] not in b" \t"}


def parse_any(raw: bytes) -> email.message.EmailMessage:
    """The stdlib parser reads raw UTF-8 headers (RFC 6532) only from text."""
    if raw.isascii():
        return parse(raw)
    parsed = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def display_name(raw: bytes, field: str) -> str:
    """The display name as RFC 2047 §6.2 reads it.

    The stdlib address parser keeps the whitespace between adjacent
    encoded-words of a phrase (it also misreads its own generator's output
    that way); the RFC drops it, and so do mail clients. So a phrase made of
    encoded-words is decoded with ``email.header``, which follows the RFC.
    """
    legacy = email.message_from_string(raw.decode("utf-8"), policy=email.policy.compat32)
    value = str(legacy[field]).replace("\r\n", "").replace("\n", "")
    phrase = value.rpartition(" <")[0].strip() if value.endswith(">") else ""
    if phrase.startswith("=?"):
        return str(email.header.make_header(email.header.decode_header(phrase)))
    (address,) = parse_any(raw)[field].addresses
    return str(address.display_name)


def renders(message: Message) -> list[bytes]:
    """Every render the submit path can ask for."""
    modes = [(True, True), (False, True)]
    if not message.needs_smtputf8():
        modes += [(True, False), (False, False)]
    out = []
    for allow_8bit, smtputf8 in modes:
        prepared = message.prepare(allow_8bit=allow_8bit, smtputf8=smtputf8)
        raw = b"".join(prepared.iter_bytes(4096))
        assert len(raw) == prepared.size
        assert prepared.eight_bit == (not raw.isascii())
        out.append(raw)
    return out


def expected_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text + "\n" if text and not text.endswith("\n") else text


@SETTINGS
@given(text=body_text, html=st.none() | body_text, encoding=st.sampled_from(Encoding))
def test_body_text_round_trips(text: str, html: str | None, encoding: Encoding) -> None:
    try:
        message = Message(
            sender="a@example.org", to="b@example.org", text=text, html=html, encoding=encoding
        )
    except MessageError:
        assert encoding is Encoding.SEVEN_BIT  # only non-ASCII text under SEVEN_BIT
        return
    for raw in renders(message):
        assert_wire_clean(raw)
        assert field_names(raw) <= EXPECTED_FIELDS
        parsed = parse(raw)
        plain = parsed.get_body(("plain",))
        if text:
            assert plain is not None
            assert text_of(plain) == expected_text(text)
        if html:
            rich = parsed.get_body(("html",))
            assert rich is not None
            assert text_of(rich) == expected_text(html)


@SETTINGS
@given(
    subject=st.text(header_chars | st.just("\t"), max_size=400),
    charset=st.sampled_from(["utf-8", "utf-16", "gb18030"]),
)
def test_subject_round_trips(subject: str, charset: str) -> None:
    message = Message(
        sender="a@example.org", to="b@example.org", subject=subject, text="x", charset=charset
    )
    for raw in renders(message):
        assert_wire_clean(raw)
        assert field_names(raw) <= EXPECTED_FIELDS
        parsed = parse_any(raw) if charset == "utf-8" else parse(raw)
        assert (parsed["Subject"] or "") == subject


@SETTINGS
@given(subject=st.text(max_size=200))
def test_arbitrary_subject_is_refused_or_contained(subject: str) -> None:
    try:
        message = Message(sender="a@example.org", to="b@example.org", subject=subject, text="x")
    except MessageError:
        return
    for raw in renders(message):
        assert_wire_clean(raw)
        assert field_names(raw) <= EXPECTED_FIELDS
        assert raw.count(b"\r\nFrom:") == 0  # From is the first line, once


@SETTINGS
@given(name=st.text(name_chars, max_size=120), local=st.sampled_from(["bob", "zoë"]))
def test_display_names_round_trip(name: str, local: str) -> None:
    written = email.utils.formataddr((name, "x@example.org"))
    written = written.replace("x@example.org", f"{local}@example.org")
    expected = email.policy.default.header_factory("To", written).addresses[0].display_name
    message = Message(sender=written, to=written, text="x")
    for raw in renders(message):
        assert_wire_clean(raw)
        assert field_names(raw) <= EXPECTED_FIELDS
        parsed = parse_any(raw)
        for field in ("From", "To"):
            (address,) = parsed[field].addresses
            assert display_name(raw, field) == expected
            assert address.username == local
            assert address.domain == "example.org"


@SETTINGS
@given(filename=st.text(name_chars, min_size=1, max_size=150))
def test_file_names_round_trip(filename: str) -> None:
    # email.utils.unquote, which get_filename applies even to RFC 2231 values,
    # strips one pair of surrounding <> or "": a stdlib quirk, not ours.
    stripped = filename.strip()
    assume(not (stripped[:1] + stripped[-1:] in ("<>", '""') and len(stripped) > 1))
    message = Message(
        sender="a@example.org",
        to="b@example.org",
        text="x",
        attachments=[Attachment(data=b"\x00\xff" * 40, filename=filename)],
    )
    for raw in renders(message):
        assert_wire_clean(raw)
        assert raw.isascii() or message.needs_smtputf8() is False
        assert field_names(raw) <= EXPECTED_FIELDS
        (_, part) = parse(raw).iter_parts()
        assert part.get_filename() == (filename.strip() or None)
        assert part.get_content() == b"\x00\xff" * 40


@SETTINGS
@given(value=st.text(max_size=300), name=st.sampled_from(["X-Note", "Reply-To", "Comments"]))
def test_extra_header_values_never_inject(value: str, name: str) -> None:
    try:
        message = Message(
            sender="a@example.org", to="b@example.org", text="x", headers={name: value}
        )
    except MessageError:
        return
    for raw in renders(message):
        assert_wire_clean(raw)
        assert field_names(raw) <= EXPECTED_FIELDS | {name.lower()}
    assume(value.strip() != "")
