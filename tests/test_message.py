"""Message composition (contract §3): validation, structure, headers, streaming.

Every rendered variant is parsed back with the stdlib parser; each §3 rule has
a test that fails without it.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import io
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from smtpsubmit.errors import ExtensionUnavailable, MessageError
from smtpsubmit.message import Attachment, Encoding, Message, PreparedMessage

SENDER = "Alice <alice@example.org>"
TO = "bob@example.org"


def parse(raw: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def assert_wire_clean(raw: bytes) -> None:
    """CRLF line ends only, every line at most 998 octets, a final CRLF."""
    assert raw.endswith(b"\r\n")
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None, "bare CR or LF on the wire"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def header_lines(raw: bytes) -> list[bytes]:
    return header_block(raw).split(b"\r\n")[:-1]


def text_of(part: email.message.MIMEPart) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def make(**kwargs: object) -> Message:
    kwargs.setdefault("sender", SENDER)
    kwargs.setdefault("to", TO)
    return Message(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- addresses


def test_needs_at_least_one_recipient() -> None:
    with pytest.raises(MessageError, match="recipient"):
        Message(sender=SENDER, text="hi")


def test_bcc_alone_is_enough_and_gets_undisclosed_to() -> None:
    message = Message(sender=SENDER, bcc="hidden@example.org", text="hi")
    raw = message.as_bytes()
    assert message.envelope_recipients() == ["hidden@example.org"]
    assert b"To: undisclosed-recipients:;\r\n" in raw
    assert b"hidden" not in raw


def test_recipient_strings_split_on_comma_and_semicolon() -> None:
    message = make(
        to='x@example.org, "Doe, Jane" <jane@example.org>; y@example.org;',
        cc=["c1@example.org; c2@example.org", "Carl <c3@example.org>"],
        bcc=("b@example.org",),
        text="hi",
    )
    assert message.envelope_recipients() == [
        "x@example.org",
        "jane@example.org",
        "y@example.org",
        "c1@example.org",
        "c2@example.org",
        "c3@example.org",
        "b@example.org",
    ]
    parsed = parse(message.as_bytes())
    to = parsed["To"]
    assert [a.display_name for a in to.addresses] == ["", "Doe, Jane", ""]


def test_envelope_recipients_deduplicated_in_order() -> None:
    message = make(
        to="b@example.org, a@example.org",
        cc="B@example.org, b@EXAMPLE.org",
        bcc="a@Example.Org, c@example.org",
        text="x",
    )
    # Local parts are case-sensitive, domains are not.
    assert message.envelope_recipients() == [
        "b@example.org",
        "a@example.org",
        "B@example.org",
        "c@example.org",
    ]


def test_bcc_never_in_headers() -> None:
    message = make(bcc="Secret Person <secret@example.org>", text="hi")
    raw = message.as_bytes()
    assert b"secret" not in raw.lower()
    assert parse(raw)["Bcc"] is None
    assert "secret@example.org" in message.envelope_recipients()


AMBIGUOUS = [
    "alice@example.org)<bob@example.com>",
    "alice@example.org>",
    "<alice@example.org",
    "a@b@example.com",
    "alice@example.org@example.com",
    '"unbalanced <a@example.com>',
    'Al"ice <a@example.com>',
    "x (comment <a@example.com>",
    "Alice <a@example.com> trailing",
    "a@example.com <c@example.net>",
    "alice@example.org (unclosed",
    "((nested) <a@example.com>",
    "alice@example.org\\",
    "group: a@example.com",
    '"a b"@example.org',
    "a..b@example.org",
    "@example.org",
    "alice",
    "alice@",
    "<>",
    "Alice <>",
]
INJECTIONS = [
    "a@example.org>\r\nRCPT TO:<x@evil.example>",
    "a@example.org\r\nRCPT TO:<x@evil.example>",
    "a@example.org\nBcc: x@evil.example",
    "a@exa\rmple.org",
    "a@example.org\x00",
    "a\t@example.org",
    "a@example.org\x7f",
    "Name\r\n <a@example.org>",
    "a@example.org\u2028",
]


@pytest.mark.parametrize("address", ["root@localhost", "ops@corp.local", "alice@[192.0.2.1]"])
def test_local_and_literal_domains_are_accepted(address: str) -> None:
    """A submission server is where root@localhost (cron) or a .local domain belongs."""
    message = Message(sender=address, to=address, text="x")
    assert message.envelope_recipients() == [address]


@pytest.mark.parametrize("address", AMBIGUOUS + INJECTIONS)
def test_bad_addresses_rejected_never_repaired(address: str) -> None:
    with pytest.raises(MessageError):
        Message(sender=SENDER, to=address, text="x")
    with pytest.raises(MessageError):
        Message(sender=address, to=TO, text="x")


@pytest.mark.parametrize(
    "sender",
    ["a@example.org, b@example.org", "a@example.org; b@example.org", "", "   "],
)
def test_sender_must_be_exactly_one_address(sender: str) -> None:
    with pytest.raises(MessageError):
        Message(sender=sender, to=TO, text="x")


@pytest.mark.parametrize(
    "name",
    [
        "\u202eevil",
        "a\u2066b",
        "left\u200fright",
        "bell\x07",
        "tab\there",
        "=?utf-8?q?line=0Abreak?=",
        "=?utf-8?q?cr=0Dhere?=",
        "=?utf-8?q?=E2=80=AE?=",
    ],
)
def test_display_names_with_control_or_bidi_rejected(name: str) -> None:
    quoted = f'"{name}"' if not name.startswith("=?") else name
    with pytest.raises(MessageError):
        make(to=f"{quoted} <x@example.org>", text="x")


@pytest.mark.parametrize("value", [42, b"a@example.org", [b"a@example.org"], None])
def test_recipient_types_checked(value: object) -> None:
    with pytest.raises(MessageError):
        make(to=value, text="x")


def test_idn_domain_becomes_a_label_without_smtputf8() -> None:
    message = Message(
        sender="Jörg <joerg@bücher.example.org>", to="kunde@straße.example.org", text="x"
    )
    assert not message.needs_smtputf8()
    prepared = message.prepare(allow_8bit=False, smtputf8=False)
    assert prepared.sender == "joerg@xn--bcher-kva.example.org"
    assert prepared.recipients == ["kunde@xn--strae-oqa.example.org"]
    raw = message.as_bytes()
    assert raw.isascii()
    assert b"<joerg@xn--bcher-kva.example.org>" in raw
    assert prepared.message_id.endswith("@xn--bcher-kva.example.org")
    parsed = parse(raw)
    assert parsed["From"].addresses[0].display_name == "Jörg"


def test_non_ascii_local_part_needs_smtputf8() -> None:
    message = Message(sender="Zoë <zoë@exämple.org>", to="ü@example.org", subject="Grüße", text="x")
    assert message.needs_smtputf8()
    with pytest.raises(ExtensionUnavailable) as info:
        message.prepare(allow_8bit=True, smtputf8=False)
    assert info.value.extension == "SMTPUTF8"
    prepared = message.prepare(allow_8bit=True, smtputf8=True)
    assert prepared.sender == "zoë@exämple.org"
    assert prepared.recipients == ["ü@example.org"]
    assert prepared.eight_bit
    raw = b"".join(prepared.iter_bytes())
    assert "From: Zoë <zoë@exämple.org>\r\n".encode() in raw
    assert "Subject: Grüße\r\n".encode() in raw
    # The Message-ID stays ASCII: the sender's domain as an A-label.
    assert prepared.message_id.endswith("@xn--exmple-cua.org")
    assert raw == message.as_bytes()  # the public render uses SMTPUTF8 when needed


def test_smtputf8_render_on_request_keeps_non_ascii_raw() -> None:
    message = make(subject="Grüße", to="Zoë <z@exämple.org>", text="x")
    assert not message.needs_smtputf8()
    raw = b"".join(message.prepare(allow_8bit=True, smtputf8=True).iter_bytes())
    assert "Subject: Grüße\r\n".encode() in raw
    assert "To: Zoë <z@exämple.org>\r\n".encode() in raw
    plain = message.as_bytes()
    assert plain.isascii()


def test_ascii_domain_spelling_kept() -> None:
    message = make(to="Bob@Example.ORG", text="x")
    assert message.envelope_recipients() == ["Bob@Example.ORG"]


# --------------------------------------------------------------------------- header fields


@pytest.mark.parametrize(
    "subject",
    ["hi\r\nBcc: x@evil.example", "hi\nBcc: x@evil.example", "hi\rthere", "nul\x00", "\x1b[1m"],
)
def test_subject_injection_rejected(subject: str) -> None:
    with pytest.raises(MessageError):
        make(subject=subject, text="x")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Test": "a\r\nBcc: x@evil.example"},
        {"X-Test": "a\nb"},
        {"X-Test": "a\rb"},
        {"X-Te st": "a"},
        {"X-Test:": "a"},
        {"": "a"},
        {"X-Tëst": "a"},
        [("X-Test", "a\r\nb")],
        [("X-Test",)],
        "X-Test a",
        " leading continuation",
        {"X-Test": "nul\x00"},
    ],
)
def test_header_injection_rejected(headers: object) -> None:
    with pytest.raises(MessageError):
        make(headers=headers, text="x")


@pytest.mark.parametrize(
    "name", ["Content-Type", "content-transfer-encoding", "MIME-Version", "MIME-VERSION"]
)
def test_overriding_generated_headers_rejected(name: str) -> None:
    with pytest.raises(MessageError, match="generated"):
        make(headers={name: "text/html"}, text="x")


@pytest.mark.parametrize("name", ["From", "To", "Cc", "Bcc", "subject", "Resent-Bcc"])
def test_fields_set_by_arguments_rejected_as_headers(name: str) -> None:
    with pytest.raises(MessageError):
        make(headers=[(name, "x@example.org")], text="x")


def test_extra_headers_three_forms() -> None:
    forms = [
        {"X-One": "1", "X-Two": "two words"},
        [("X-One", "1"), ("X-Two", "two words")],
        "X-One: 1\nX-Two: two\n words\n",
    ]
    for headers in forms:
        parsed = parse(make(headers=headers, text="x").as_bytes())
        assert parsed["X-One"] == "1"
        assert parsed["X-Two"] == "two words"


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]
)
def test_header_string_splits_on_crlf_and_lf_only(separator: str) -> None:
    """str.splitlines() also breaks at these, which let one value smuggle in a second field."""
    smuggled = f"X-Ticket: 42{separator}Reply-To: attacker@evil.example"
    with pytest.raises(MessageError, match="X-Ticket"):
        make(headers=smuggled, text="x")
    raw = make(headers="X-A: 1\r\nX-B: 2\nX-C: 3\r\n", text="x").as_bytes()
    assert b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n" in raw


def test_extra_header_non_ascii_is_encoded_and_address_fields_parsed() -> None:
    message = make(headers={"X-Note": "café crème", "Reply-To": "Zoë <zoe@exämple.org>"}, text="x")
    raw = message.as_bytes()
    assert raw.isascii()
    parsed = parse(raw)
    assert parsed["X-Note"] == "café crème"
    reply_to = parsed["Reply-To"].addresses[0]
    assert (reply_to.display_name, reply_to.addr_spec) == ("Zoë", "zoe@xn--exmple-cua.org")
    with pytest.raises(MessageError):
        make(headers={"Reply-To": "alice@example.org)<bob@example.com>"}, text="x")


def test_long_extra_header_folded_and_unbreakable_one_rejected() -> None:
    value = " ".join(f"word{i}" for i in range(100))
    raw = make(headers={"X-Long": value}, text="x").as_bytes()
    lines = header_lines(raw)
    assert all(len(line) <= 78 for line in lines)
    assert parse(raw)["X-Long"] == value
    with pytest.raises(MessageError, match="998"):
        make(headers={"X-Long": "x" * 1000}, text="x")


def test_message_id_unique_and_on_sender_domain() -> None:
    first = make(sender="a@mail.example.net", text="x")
    second = make(sender="a@mail.example.net", text="x")
    assert first.message_id != second.message_id
    assert first.message_id.endswith("@mail.example.net")
    parsed = parse(first.as_bytes())
    assert parsed["Message-ID"] == f"<{first.message_id}>"
    assert first.prepare(allow_8bit=True, smtputf8=False).message_id == first.message_id


def test_message_id_override() -> None:
    message = make(headers={"Message-ID": "<fixed.1@example.org>"}, text="x")
    assert message.message_id == "fixed.1@example.org"
    raw = message.as_bytes()
    assert raw.count(b"Message-ID:") == 1
    with pytest.raises(MessageError):
        make(headers={"Message-ID": "no brackets"}, text="x")


def test_date_default_is_now_local_with_offset() -> None:
    message = make(text="x")
    value = parse(message.as_bytes())["Date"]
    parsed = email.utils.parsedate_to_datetime(str(value))
    assert parsed.tzinfo is not None
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)
    expected = datetime.now().astimezone().utcoffset()
    assert parsed.utcoffset() == expected
    assert re.search(
        rb"Date: \w{3}, \d{2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n", message.as_bytes()
    )


def test_date_forms() -> None:
    aware = datetime(2024, 2, 29, 13, 5, 9, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert b"Date: Thu, 29 Feb 2024 13:05:09 +0530\r\n" in make(date=aware, text="x").as_bytes()
    naive = datetime(2024, 2, 29, 13, 5, 9)
    value = parse(make(date=naive, text="x").as_bytes())["Date"]
    assert email.utils.parsedate_to_datetime(str(value)) == naive.astimezone()
    given = "Fri, 01 Mar 2024 00:00:00 -0000"
    assert f"Date: {given}\r\n".encode() in make(date=given, text="x").as_bytes()
    for bad in ("Fri, 01 Mar 2024\r\nBcc: x@evil.example", "", 20240301):
        with pytest.raises(MessageError):
            make(date=bad, text="x")
    with pytest.raises(MessageError):
        make(date=aware, headers={"Date": given}, text="x")
    assert f"Date: {given}\r\n".encode() in make(headers={"Date": given}, text="x").as_bytes()


def test_date_is_fixed_at_construction() -> None:
    message = make(text="x")
    assert message.as_bytes() == message.as_bytes()


def test_subject_rfc2047_in_charset() -> None:
    for charset, label in (("utf-8", b"utf-8"), ("latin-1", b"iso-8859-1")):
        message = make(subject="Café déjà vu", charset=charset, text="x")
        raw = message.as_bytes()
        assert raw.isascii()
        assert b"=?" + label + b"?" in raw
        assert parse(raw)["Subject"] == "Café déjà vu"


def test_subject_that_looks_encoded_round_trips_literally() -> None:
    subject = "=?utf-8?q?not_encoded?= really"
    assert parse(make(subject=subject, text="x").as_bytes())["Subject"] == subject


def test_long_subjects_fold() -> None:
    subject = "A fairly long subject line " * 10
    raw = make(subject=subject.strip(), text="x").as_bytes()
    assert all(len(line) <= 78 for line in header_lines(raw))
    assert parse(raw)["Subject"] == subject.strip()
    word = "x" * 3000
    raw = make(subject=word, text="x").as_bytes()
    assert_wire_clean(raw)
    assert all(len(line) <= 78 for line in header_lines(raw))
    assert parse(raw)["Subject"] == word


def test_empty_subject_omitted() -> None:
    assert parse(make(text="x").as_bytes())["Subject"] is None


def test_addresses_never_encoded_words() -> None:
    message = make(to="Zoë Ünïcode Name That Is Long Enough To Fold <z@example.org>", text="x")
    raw = message.as_bytes()
    assert b"<z@example.org>" in raw
    assert all(len(line) <= 78 for line in header_lines(raw))
    assert parse(raw)["To"].addresses[0].display_name == (
        "Zoë Ünïcode Name That Is Long Enough To Fold"
    )


# --------------------------------------------------------------------------- bodies


def test_text_only_is_single_part() -> None:
    parsed = parse(make(text="Hello\nworld").as_bytes())
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert not parsed.is_multipart()
    assert text_of(parsed) == "Hello\nworld\n"
    assert parsed["MIME-Version"] == "1.0"


def test_html_only() -> None:
    parsed = parse(make(html="<p>Hi</p>").as_bytes())
    assert parsed.get_content_type() == "text/html"
    assert text_of(parsed) == "<p>Hi</p>\n"


def test_text_and_html_alternative() -> None:
    parsed = parse(make(text="plain", html="<b>rich</b>").as_bytes())
    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    body = parsed.get_body(("html",))
    assert body is not None
    assert text_of(body) == "<b>rich</b>\n"


def test_no_body_at_all_is_empty_text() -> None:
    parsed = parse(make().as_bytes())
    assert parsed.get_content_type() == "text/plain"
    assert text_of(parsed) == ""


def test_inline_cid_goes_to_related_with_html(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    message = make(
        text="see the logo",
        html='<img src="cid:logo@example.org">',
        attachments=[
            Attachment(path=logo, inline=True, content_id="<logo@example.org>"),
            Attachment(data=b"%PDF-1.4", filename="report.pdf"),
        ],
    )
    parsed = parse(message.as_bytes())
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, report = parsed.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    _plain, related = alternative.iter_parts()
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<logo@example.org>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == logo.read_bytes()
    assert report.get_content_type() == "application/pdf"
    assert report.get_content_disposition() == "attachment"
    assert report.get_content() == b"%PDF-1.4"


def test_inline_without_html_goes_to_mixed() -> None:
    parsed = parse(
        make(
            text="x", attachments=[Attachment(data=b"1", inline=True, content_id="a@b")]
        ).as_bytes()
    )
    assert [p.get_content_type() for p in parsed.iter_parts()] == [
        "text/plain",
        "application/octet-stream",
    ]


def test_attachments_only() -> None:
    parsed = parse(make(attachments=[Attachment(data=b"abc", filename="a.txt")]).as_bytes())
    assert parsed.get_content_type() == "multipart/mixed"
    (only,) = parsed.iter_parts()
    assert only.get_content_type() == "text/plain"
    assert only.get_content() in ("abc", b"abc")
    assert only["Content-Transfer-Encoding"] == "base64"


@pytest.mark.parametrize(
    "length", [0, 1, 2, 3, 56, 57, 58, 114, 1000, 57 * 1150, 57 * 1150 + 1, 200_003]
)
def test_attachment_bytes_identical(tmp_path: Path, length: int) -> None:
    data = os.urandom(length)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    message = make(text="x", attachments=[str(path), Attachment(data=data, filename="d.bin")])
    raw = message.as_bytes()
    assert message.size == len(raw)
    assert_wire_clean(raw)
    parsed = parse(raw)
    _, from_path, from_data = parsed.iter_parts()
    assert from_path.get_content() == data
    assert from_data.get_content() == data
    assert from_path.get_filename() == "blob.bin"
    body = raw.split(b'blob.bin"\r\n\r\n', 1)[1].split(b"\r\n--", 1)[0]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_attachment_string_paths_and_types(tmp_path: Path) -> None:
    names = ["a.pdf", "b.tar.gz", "c.unknownext", "d.eml", "e.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"data")
    joined = " ; ".join(str(tmp_path / name) for name in names) + ";"
    parsed = parse(make(text="x", attachments=joined).as_bytes())
    kinds = [part.get_content_type() for part in list(parsed.iter_parts())[1:]]
    assert kinds == [
        "application/pdf",
        "application/gzip",
        "application/octet-stream",
        "application/octet-stream",
        "image/png",
    ]


def test_missing_attachment_rejected_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pdf"
    with pytest.raises(MessageError, match=r"nope\.pdf") as info:
        make(text="x", attachments=str(missing))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(MessageError):
        make(text="x", attachments=[missing])
    with pytest.raises(MessageError):
        make(text="x", attachments=[tmp_path])  # a directory
    with pytest.raises(MessageError):
        Attachment(path=missing)


def test_attachment_needs_exactly_one_source(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(MessageError):
        Attachment()
    with pytest.raises(MessageError):
        Attachment(path=tmp_path / "f", data=b"x")
    with pytest.raises(MessageError):
        make(text="x", attachments=[42])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filename": "a\r\n.txt"},
        {"filename": "a\n.txt"},
        {"filename": "a\x00.txt"},
        {"filename": "\u202etxt.exe"},
        {"content_type": "text/plain\r\nBcc: x@evil.example"},
        {"content_type": "text"},
        {"content_type": "text/plain; charset=x"},
        {"content_type": "multipart/mixed"},
        {"content_id": "a b@c"},
        {"content_id": "a@b\r\nX: y"},
        {"content_id": ""},
    ],
)
def test_attachment_injection_rejected(kwargs: dict[str, str]) -> None:
    with pytest.raises(MessageError):
        Attachment(data=b"x", **kwargs)  # type: ignore[arg-type]


def test_rfc2231_filename() -> None:
    names = [
        "résumé.pdf",
        "日本語のファイル名.txt",
        "a" * 100 + ".bin",
        'quote"and\\slash.txt',
        "x" * 3 + "é" * 200,
    ]
    message = make(text="x", attachments=[Attachment(data=b"1", filename=n) for n in names])
    raw = message.as_bytes()
    assert raw.isascii()
    assert b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf" in raw
    assert all(len(line) <= 78 for line in raw.split(b"\r\n") if b"name" in line)
    got = [part.get_filename() for part in list(parse(raw).iter_parts())[1:]]
    assert got == names


# --------------------------------------------------------------------------- encodings


def cte(raw: bytes) -> str:
    return str(parse(raw)["Content-Transfer-Encoding"])


def test_auto_picks_7bit_for_ascii() -> None:
    assert cte(make(text="plain ascii\n").as_bytes()) == "7bit"


def test_long_lines_force_quoted_printable() -> None:
    text = "word " * 400  # one 2000-character line
    for encoding in (Encoding.AUTO, Encoding.SEVEN_BIT, Encoding.EIGHT_BIT):
        raw = make(text=text, encoding=encoding).as_bytes()
        assert cte(raw) == "quoted-printable"
        assert_wire_clean(raw)
        assert text_of(parse(raw)) == text + "\n"
    raw = make(text="é" + "x" * 1200, encoding=Encoding.EIGHT_BIT).as_bytes()
    assert cte(raw) in ("quoted-printable", "base64")
    assert_wire_clean(raw)


def test_auto_picks_smaller_of_qp_and_base64() -> None:
    assert cte(make(text="Mostly ASCII with one é\n").as_bytes()) == "quoted-printable"
    assert cte(make(text="日本語のテキストです。" * 5).as_bytes()) == "base64"


def test_eight_bit_only_when_allowed() -> None:
    message = make(
        text="Grüße aus Köln, a text that is mostly ASCII\n", encoding=Encoding.EIGHT_BIT
    )
    allowed = message.prepare(allow_8bit=True, smtputf8=False)
    raw8 = b"".join(allowed.iter_bytes())
    assert allowed.eight_bit
    assert cte(raw8) == "8bit"
    assert "Grüße aus Köln".encode() in raw8
    refused = message.prepare(allow_8bit=False, smtputf8=False)
    raw7 = b"".join(refused.iter_bytes())
    assert not refused.eight_bit
    assert raw7.isascii()
    assert cte(raw7) == "quoted-printable"
    assert (
        text_of(parse(raw7))
        == text_of(parse(raw8))
        == "Grüße aus Köln, a text that is mostly ASCII\n"
    )
    assert refused.size == len(raw7)
    assert allowed.size == len(raw8)


def test_auto_never_uses_8bit() -> None:
    prepared = make(text="Grüße\n").prepare(allow_8bit=True, smtputf8=False)
    assert not prepared.eight_bit


def test_forced_encodings() -> None:
    raw = make(text="plain\n", encoding=Encoding.BASE64).as_bytes()
    assert cte(raw) == "base64"
    assert text_of(parse(raw)) == "plain\n"
    raw = make(text="plain\n", encoding=Encoding.QUOTED_PRINTABLE).as_bytes()
    assert cte(raw) == "quoted-printable"
    with pytest.raises(MessageError):
        make(text="é", encoding=Encoding.SEVEN_BIT)
    assert cte(make(text="x", encoding="base64").as_bytes()) == "base64"
    with pytest.raises(MessageError):
        make(text="x", encoding="binary")


def test_bare_cr_and_lf_become_crlf() -> None:
    text = "one\rtwo\nthree\r\nfour\r\rfive\n\nsix"
    for encoding in Encoding:
        message = make(text=text, html=text, encoding=encoding)
        for allow_8bit in (True, False):
            prepared = message.prepare(allow_8bit=allow_8bit, smtputf8=False)
            raw = b"".join(prepared.iter_bytes())
            assert_wire_clean(raw)
            expected = "one\ntwo\nthree\nfour\n\nfive\n\nsix\n"
            parsed = parse(raw)
            for kind in ("plain", "html"):
                body = parsed.get_body((kind,))
                assert body is not None
                assert text_of(body) == expected
    assert b"one\r\ntwo\r\nthree\r\nfour\r\n\r\nfive" in make(text=text).as_bytes()


def test_dots_and_nul_in_text() -> None:
    text = ".\nfirst\n.\n..\nnul\x00here"
    raw = make(text=text).as_bytes()
    assert_wire_clean(raw)
    assert cte(raw) == "quoted-printable"  # NUL is not 7bit
    assert text_of(parse(raw)) == text.replace("\r\n", "\n") + "\n"


def test_charset_latin1_and_errors() -> None:
    raw = make(text="Déjà vu\n", subject="Déjà", charset="latin-1").as_bytes()
    parsed = parse(raw)
    assert parsed.get_content_charset() == "iso-8859-1"
    assert text_of(parsed) == "Déjà vu\n"
    with pytest.raises(MessageError, match="charset"):
        make(text="price: €5", charset="latin-1")
    with pytest.raises(MessageError):
        make(subject="price: €5", text="x", charset="latin-1")
    with pytest.raises(MessageError):
        make(to="Zoë € <z@example.org>", text="x", charset="latin-1")
    with pytest.raises(MessageError):
        make(text="x", charset="no-such-charset")
    with pytest.raises(MessageError):
        make(text="x", charset="rot13")
    with pytest.raises(MessageError):
        make(text="x", charset='utf-8"; x="y')
    with pytest.raises(MessageError):
        make(text="\ud800 lone surrogate")


@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "shift_jis", "iso-2022-jp", "koi8-r"])
def test_other_charsets_round_trip(charset: str) -> None:
    text = {"koi8-r": "Привет, мир\n"}.get(charset, "こんにちは、世界\n")
    subject = text.strip()
    raw = make(text=text, subject=subject, charset=charset).as_bytes()
    assert_wire_clean(raw)
    parsed = parse(raw)
    assert text_of(parsed) == text
    assert parsed["Subject"] == subject


# --------------------------------------------------------------------------- sizes and streaming


def variants(tmp_path: Path) -> list[Message]:
    blob = tmp_path / "blob.dat"
    blob.write_bytes(os.urandom(100_000))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    return [
        make(text="hi"),
        make(html="<p>hi</p>"),
        make(text="a", html="<b>b</b>"),
        make(text="x" * 5000, subject="long line"),
        make(text="Grüße\r\n" * 100, encoding=Encoding.EIGHT_BIT),
        make(text="日本語" * 300, subject="件名", charset="utf-8"),
        make(text="x", attachments=[str(blob), str(empty)]),
        make(
            text="t",
            html="<img src=cid:i@x>",
            attachments=[
                Attachment(data=b"i" * 1000, inline=True, content_id="i@x"),
                Attachment(path=blob, filename="ünïcode näme.dat"),
            ],
        ),
        Message(sender="Zoë <zoë@exämple.org>", to="ü@exämple.org", text="ü", subject="ü"),
        make(to=", ".join(f"User {i} <u{i}@example.org>" for i in range(50)), text="x"),
        make(text="x", charset="utf-16"),
        make(attachments=[Attachment(data=b"")]),
    ]


def test_size_is_exact(tmp_path: Path) -> None:
    for message in variants(tmp_path):
        raw = message.as_bytes()
        assert message.size == len(raw)
        assert_wire_clean(raw)
        smtputf8 = message.needs_smtputf8()
        for allow_8bit in (True, False):
            prepared = message.prepare(allow_8bit=allow_8bit, smtputf8=smtputf8)
            data = b"".join(prepared.iter_bytes())
            assert prepared.size == len(data)
            assert prepared.eight_bit == (not data.isascii())
            assert_wire_clean(data)
            parse(data)


def test_streaming_forms_agree(tmp_path: Path) -> None:
    for message in variants(tmp_path):
        whole = message.as_bytes()
        for chunk_size in (1, 7, 76, 1000, 4096, 65536, 10**7):
            chunks = list(message.iter_bytes(chunk_size))
            assert b"".join(chunks) == whole
            assert all(len(c) == chunk_size for c in chunks[:-1])
            assert 0 < len(chunks[-1]) <= chunk_size
        sink = io.BytesIO()
        assert message.write_to(sink) == len(whole)
        assert sink.getvalue() == whole
        assert message.as_bytes() == whole  # renders are repeatable
    with pytest.raises(ValueError):
        make(text="x").iter_bytes(0)


def test_prepared_message_shape() -> None:
    message = make(cc="c@example.org", bcc="d@example.org", text="x")
    prepared = message.prepare(allow_8bit=False, smtputf8=False)
    assert isinstance(prepared, PreparedMessage)
    assert prepared.sender == "alice@example.org"
    assert prepared.recipients == ["bob@example.org", "c@example.org", "d@example.org"]
    assert prepared.message_id == message.message_id
    assert "<" not in prepared.message_id
    assert not prepared.eight_bit
    assert b"".join(prepared.iter_bytes()) == b"".join(prepared.iter_bytes())
    assert "_segments" not in repr(prepared)


def test_attachment_changing_size_after_prepare_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "grows.bin"
    path.write_bytes(b"a" * 1000)
    prepared = make(text="x", attachments=[path]).prepare(allow_8bit=True, smtputf8=False)
    path.write_bytes(b"a" * 2000)
    with pytest.raises(MessageError, match="changed"):
        b"".join(prepared.iter_bytes())
    path.write_bytes(b"a" * 10)
    with pytest.raises(MessageError, match="changed"):
        b"".join(prepared.iter_bytes())


def test_boundaries_deterministic_and_nested_distinct() -> None:
    message = make(
        text="t",
        html="<img src=cid:a@b>",
        attachments=[Attachment(data=b"1", inline=True, content_id="a@b"), Attachment(data=b"2")],
    )
    raw = message.as_bytes()
    boundaries = re.findall(rb'boundary="([^"]+)"', raw)
    assert len(set(boundaries)) == 3
    for one in boundaries:
        for other in boundaries:
            assert one == other or not other.startswith(one)
    assert raw == message.as_bytes()


# --------------------------------------------------------------------------- ready-made messages


READY = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.org, Carol <carol@example.org>\r\n"
    b"Cc: dave@example.org\r\n"
    b"Bcc: eve@example.org,\r\n"
    b"  frank@example.org\r\n"
    b"Resent-Bcc: grace@example.org\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <ready.1@example.org>\r\n"
    b"Date: Fri, 01 Mar 2024 00:00:00 +0000\r\n"
    b"X-Keep:   spacing  kept \r\n"
    b"\r\n"
    b"Body line 1\r\n"
    b"Bcc: this is body text, not a header\r\n"
)


def test_from_bytes_envelope_and_bcc_removed() -> None:
    message = Message.from_bytes(READY)
    assert message.envelope_recipients() == [
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
        "eve@example.org",
        "frank@example.org",
    ]
    prepared = message.prepare(allow_8bit=False, smtputf8=False)
    assert prepared.sender == "alice@example.org"
    assert prepared.message_id == "ready.1@example.org"
    assert message.subject == "Grüße"
    raw = b"".join(prepared.iter_bytes())
    expected = READY.replace(b"Bcc: eve@example.org,\r\n  frank@example.org\r\n", b"")
    expected = expected.replace(b"Resent-Bcc: grace@example.org\r\n", b"")
    assert raw == expected
    assert prepared.size == len(raw)
    assert message.as_bytes() == raw
    assert not prepared.eight_bit


def test_from_bytes_normalises_newlines_and_adds_missing_fields() -> None:
    raw = b"From: a@example.org\nTo: b@example.org\n\nline one\rline two\n\nno final newline"
    message = Message.from_bytes(raw)
    out = message.as_bytes()
    assert_wire_clean(out)
    assert message.size == len(out)
    _head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"line one\r\nline two\r\n\r\nno final newline\r\n"
    parsed = parse(out)
    assert parsed["Message-ID"] == f"<{message.message_id}>"
    assert message.message_id.endswith("@example.org")
    assert parsed["Date"] is not None
    assert out == message.as_bytes()


def test_from_bytes_mbox_from_line_and_headers_only() -> None:
    raw = b"From alice@example.org Fri Mar  1 00:00:00 2024\nFrom: a@example.org\nTo: b@example.org"
    message = Message.from_bytes(raw)
    out = message.as_bytes()
    assert not out.startswith(b"From alice")
    assert out.startswith(b"From: a@example.org\r\nTo: b@example.org\r\n")
    assert message.size == len(out)
    assert_wire_clean(out)


def test_from_bytes_groups_and_sender_field() -> None:
    raw = (
        b"From: a@example.org, b@example.org\r\nSender: s@example.org\r\n"
        b"To: undisclosed-recipients:;\r\nBcc: x@example.org\r\n\r\nhi\r\n"
    )
    message = Message.from_bytes(raw)
    prepared = message.prepare(allow_8bit=False, smtputf8=False)
    assert prepared.sender == "s@example.org"
    assert prepared.recipients == ["x@example.org"]
    assert b"x@example.org" not in b"".join(prepared.iter_bytes())


@pytest.mark.parametrize(
    "raw",
    [
        b"To: b@example.org\r\n\r\nno sender\r\n",
        b"From: a@example.org\r\n\r\nno recipients\r\n",
        b"From: a@example.org\r\nFrom: c@example.org\r\nTo: b@example.org\r\n\r\n",
        b"From: a@example.org\r\nTo: alice@example.org)<bob@example.com>\r\n\r\n",
        b"From: a@example.org\r\nTo: b@b@example.org\r\n\r\n",
        b"From: a@example.org\r\nTo: b@example.org\r\n\r\n" + b"x" * 999 + b"\r\n",
        b"From: a@example.org\r\nX-Long: " + b"x" * 1000 + b"\r\nTo: b@example.org\r\n\r\n",
        b"\r\nbody only\r\n",
        b"not a header line\r\nFrom: a@example.org\r\n\r\n",
        b" continuation first\r\nFrom: a@example.org\r\n\r\n",
        b"From: a@example.org\r\nTo: b\xff@example.org\r\n\r\n",
    ],
)
def test_from_bytes_rejects_bad_input(raw: bytes) -> None:
    with pytest.raises(MessageError):
        Message.from_bytes(raw)


def test_from_bytes_eight_bit_needs_8bitmime() -> None:
    raw = (
        "From: a@example.org\r\nTo: b@example.org\r\nMessage-ID: <1@example.org>\r\n"
        "Date: Fri, 01 Mar 2024 00:00:00 +0000\r\n\r\nGrüße\r\n"
    ).encode()
    message = Message.from_bytes(raw)
    prepared = message.prepare(allow_8bit=True, smtputf8=False)
    assert prepared.eight_bit
    assert b"".join(prepared.iter_bytes()) == raw
    with pytest.raises(ExtensionUnavailable) as info:
        message.prepare(allow_8bit=False, smtputf8=False)
    assert info.value.extension == "8BITMIME"


def test_from_bytes_utf8_addresses() -> None:
    raw = "From: zoë@exämple.org\r\nTo: b@exämple.org\r\n\r\nx\r\n".encode()
    message = Message.from_bytes(raw)
    assert message.needs_smtputf8()
    with pytest.raises(ExtensionUnavailable):
        message.prepare(allow_8bit=True, smtputf8=False)
    prepared = message.prepare(allow_8bit=True, smtputf8=True)
    assert prepared.recipients == ["b@exämple.org"]
    idn = Message.from_bytes(
        b"From: a@example.org\r\nTo: =?utf-8?q?Z?= <b@xn--exmple-cua.org>\r\n\r\n"
    )
    assert idn.envelope_recipients() == ["b@xn--exmple-cua.org"]


def test_from_file_streams_the_same_bytes(tmp_path: Path) -> None:
    body = b"".join(b"line %d\n" % i for i in range(100_000))
    path = tmp_path / "msg.eml"
    path.write_bytes(READY.replace(b"\r\n", b"\n") + body)
    from_file = Message.from_file(path)
    from_bytes = Message.from_bytes(path.read_bytes())
    out = from_file.as_bytes()
    assert out == from_bytes.as_bytes()
    assert from_file.size == len(out)
    assert b"eve@example.org" not in out
    assert out.endswith(b"line 99999\r\n")
    for chunk_size in (1000, 65536):
        assert b"".join(from_file.iter_bytes(chunk_size)) == out


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MessageError) as info:
        Message.from_file(tmp_path / "missing.eml")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    path = tmp_path / "msg.eml"
    path.write_bytes(READY)
    message = Message.from_file(path)
    path.write_bytes(READY + b"more\r\n")
    with pytest.raises(MessageError, match="changed"):
        message.prepare(allow_8bit=True, smtputf8=False)
