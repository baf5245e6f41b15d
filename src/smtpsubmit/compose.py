"""Composed messages: a :class:`~smtpsubmit.message.Message`'s fields rendered as MIME.

Validation happens once, when the message is made (charset, text bodies,
extra header fields, attachments); rendering then builds the part tree of
:mod:`smtpsubmit.mime` and flattens it into segments. Everything random
(Message-ID, boundaries, the default Date) is drawn once, so every render of
one message with the same options is byte-for-byte identical, and each
render is made once: later renders reuse it (a message with file
attachments checks each file's size with one ``os.stat`` and re-renders only
when one changed).
"""

from __future__ import annotations

import codecs
import email.charset
import enum
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from smtpsubmit import mime
from smtpsubmit.addresses import Address, dedupe, parse_address_field, single_sender
from smtpsubmit.attachments import parse_attachments
from smtpsubmit.errors import MessageError
from smtpsubmit.prepared import Source, date_value, new_message_id

__all__ = ["Encoding"]

_ASCII_PROBE = "\r\n\t !\"#$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~"
_GENERATED = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
_USE_THE_FIELD = frozenset({"from", "to", "cc", "bcc", "resent-bcc", "subject"})
_ADDRESS_FIELDS = frozenset(
    {
        "reply-to",
        "sender",
        "mail-followup-to",
        "mail-reply-to",
        "disposition-notification-to",
        "return-receipt-to",
    }
)
_LINE_END = re.compile(r"\r\n|\n")


class Fields(Protocol):
    """The fields of a :class:`~smtpsubmit.message.Message`, unchecked (as given)."""

    @property
    def sender(self) -> object: ...
    @property
    def to(self) -> object: ...
    @property
    def cc(self) -> object: ...
    @property
    def bcc(self) -> object: ...
    @property
    def date(self) -> object: ...
    @property
    def subject(self) -> object: ...
    @property
    def headers(self) -> object: ...
    @property
    def text(self) -> object: ...
    @property
    def html(self) -> object: ...
    @property
    def attachments(self) -> object: ...
    @property
    def charset(self) -> object: ...
    @property
    def encoding(self) -> object: ...


Sizes = tuple[int | None, ...]  # each attachment's file size in one render (None: data)


class Encoding(enum.Enum):
    """Transfer encoding of the text parts (attachments are always base64).

    ``AUTO`` picks the smallest safe of 7bit / quoted-printable / base64 and
    so never depends on the server. ``EIGHT_BIT`` sends 8bit only when the
    render allows it (the server offers 8BITMIME), otherwise the part is
    re-encoded as ``AUTO`` would. ``SEVEN_BIT`` refuses text that is not
    ASCII. Lines over 998 octets always force quoted-printable (or base64).
    """

    AUTO = "auto"
    SEVEN_BIT = "7bit"
    EIGHT_BIT = "8bit"
    QUOTED_PRINTABLE = "quoted-printable"
    BASE64 = "base64"


# --------------------------------------------------------------------------- charset, text


@dataclass(frozen=True)
class _Charset:
    codec: str  # the name Python encodes with
    label: str  # the name written in MIME headers
    ascii_compatible: bool


def _charset(name: object) -> _Charset:
    if (
        not isinstance(name, str)
        or not name
        or not all(ch.isalnum() or ch in "-_.:" for ch in name)
    ):
        raise MessageError(f"charset: {name!r} is not a charset name")
    try:
        canonical = codecs.lookup(name).name
        "".encode(name)
        compatible = _ASCII_PROBE.encode(name) == _ASCII_PROBE.encode("ascii")
    except LookupError as exc:
        raise MessageError(f"charset: unknown or non-text codec {name!r}") from exc
    except UnicodeError:
        compatible = False
    label = {"utf-8": "utf-8", "ascii": "us-ascii"}.get(
        canonical, email.charset.Charset(name).input_charset
    )
    return _Charset(name, label.lower(), compatible)


@dataclass(frozen=True)
class _TextBody:
    """A text part encoded once: the body when 8bit is not allowed, and when it is."""

    subtype: str
    fallback: tuple[str, bytes]  # (Content-Transfer-Encoding, body)
    eight_bit: tuple[str, bytes] | None  # used only when the render allows 8bit

    def choose(self, allow_8bit: bool) -> tuple[str, bytes]:
        return self.eight_bit if allow_8bit and self.eight_bit else self.fallback

    def literal_bodies(self) -> list[bytes]:
        """Bodies sent unencoded, which a boundary must not occur in."""
        bodies = [self.fallback] + ([self.eight_bit] if self.eight_bit else [])
        return [body for cte, body in bodies if cte in ("7bit", "8bit")]


def _smallest(data: bytes) -> tuple[str, bytes]:
    """Quoted-printable or base64, whichever is shorter (QP on a tie)."""
    qp = mime.quoted_printable(data)
    b64 = mime.base64_lines(data)
    return ("quoted-printable", qp) if len(qp) <= len(b64) else ("base64", b64)


def _text_body(
    subtype: str, text: str, charset: _Charset, encoding: Encoding, what: str = "text"
) -> _TextBody:
    normalized = mime.normalize_text(text)
    data = mime.encode_text(normalized, charset.codec, what)
    binary = not charset.ascii_compatible or data.count(b"\n") != normalized.count("\n")
    if binary or encoding is Encoding.BASE64:
        return _TextBody(subtype, ("base64", mime.base64_lines(data)), None)
    if encoding is Encoding.QUOTED_PRINTABLE:
        return _TextBody(subtype, ("quoted-printable", mime.quoted_printable(data)), None)
    short_lines = mime.longest_line(data) <= mime.MAX_LINE
    if data.isascii() and b"\0" not in data:
        if short_lines:
            return _TextBody(subtype, ("7bit", data), None)
        return _TextBody(subtype, ("quoted-printable", mime.quoted_printable(data)), None)
    if encoding is Encoding.SEVEN_BIT:
        raise MessageError(f"{what}: not 7-bit ASCII text; use Encoding.AUTO")
    eight = ("8bit", data) if encoding is Encoding.EIGHT_BIT and short_lines else None
    if b"\0" in data:
        eight = None
    return _TextBody(subtype, _smallest(data), eight)


# --------------------------------------------------------------------------- header fields


@dataclass(frozen=True)
class _Field:
    """An extra header field given by the caller."""

    name: str
    value: str
    addresses: tuple[Address, ...] | None  # parsed for address fields (Reply-To, ...)


def _check_field(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(value, str):
        raise MessageError("headers: names and values must be strings")
    if not name or not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
        raise MessageError(f"headers: {name!r} is not a valid field name")
    if not mime.is_safe_text(value, allow_tab=True):
        raise MessageError(f"headers: the value of {name!r} contains CR, LF or control characters")
    return name, value.strip()


def _header_pairs(value: object) -> list[tuple[str, str]]:
    """Mapping, sequence of pairs, or ``Name: value`` lines (indented = continued)."""
    if isinstance(value, str):
        return _header_lines(value)
    if isinstance(value, Mapping):
        pairs: Iterable[object] = cast(Mapping[object, object], value).items()
    elif isinstance(value, Iterable):
        pairs = cast(Iterable[object], value)
    else:
        raise MessageError("headers: expected a mapping, a sequence of pairs or a string")
    result = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise MessageError(f"headers: {pair!r} is not a (name, value) pair")
        result.append(_check_field(pair[0], pair[1]))
    return result


def _header_lines(text: str) -> list[tuple[str, str]]:
    """Lines end at CRLF or LF only: any other break character stays in the value,
    where the field check refuses it (``str.splitlines`` would split at U+2028 and
    let a value smuggle in a second field)."""
    pairs: list[tuple[str, str]] = []
    for line in _LINE_END.split(text):
        if not line.strip():
            continue
        if line[0] in " \t":
            if not pairs:
                raise MessageError(f"headers: continuation line {line!r} with no field")
            name, value = pairs.pop()
            pairs.append(_check_field(name, f"{value} {line.strip()}"))
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise MessageError(f"headers: {line!r} is not 'Name: value'")
        pairs.append(_check_field(name.rstrip(), value))
    return pairs


def _check_message_id(value: str) -> str:
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else ""
    left, at, right = inner.partition("@")
    if not (left and at and right) or not inner.isascii() or not inner.isprintable():
        raise MessageError(f"headers: Message-ID {value!r} is not '<left@right>'")
    if any(ch in inner for ch in ' <>"\\'):
        raise MessageError(f"headers: Message-ID {value!r} is not '<left@right>'")
    return inner


def _encoding(value: object) -> Encoding:
    if isinstance(value, Encoding):
        return value
    if isinstance(value, str):
        for member in Encoding:
            if value.lower() in (member.value, member.name.lower()):
                return member
    raise MessageError(f"encoding: {value!r} is not an Encoding")


# --------------------------------------------------------------------------- rendering


class Composed(Source):
    """A message built from the :class:`Message` fields."""

    def __init__(self, message: Fields) -> None:
        self.charset = _charset(message.charset)
        self.encoding = _encoding(message.encoding)
        self.sender = single_sender(message.sender)
        self.to = parse_address_field(message.to, "to")
        self.cc = parse_address_field(message.cc, "cc")
        self.bcc = parse_address_field(message.bcc, "bcc")
        self.recipients = dedupe(self.to + self.cc + self.bcc)
        if not self.recipients:
            raise MessageError("a message needs at least one recipient in to, cc or bcc")
        self.subject = self._subject(message.subject)
        self.fields, date_field, id_field = self._fields(message)
        if date_field is not None and message.date is not None:
            raise MessageError("headers: a Date field and the date argument both given")
        self.date = date_field if date_field is not None else date_value(message.date)
        self.message_id = id_field or new_message_id(self.sender.ascii_domain)
        self.text = self._body("plain", message.text, "text")
        self.html = self._body("html", message.html, "html")
        self.attachments = parse_attachments(message.attachments)
        self.addresses = [self.sender, *self.to, *self.cc, *self.bcc]
        self.addresses += [a for f in self.fields for a in (f.addresses or ())]
        self.boundary = self._boundary()
        # Headers and segments are pure functions of the fields above (and of the
        # files' sizes), so each is rendered once per mode and then reused.
        self._rendered_headers: dict[bool, tuple[bytes, ...]] = {}
        self._rendered: dict[tuple[bool, bool], tuple[Sizes, tuple[mime.Segment, ...]]] = {}
        # Render the header fields now, so folding and charset errors surface
        # here rather than when sending.
        for utf8 in (True, False) if not any(a.needs_utf8 for a in self.addresses) else (True,):
            self._headers(utf8)
        for attachment in self.attachments:
            attachment.part_headers()

    def _subject(self, subject: object) -> str:
        if not isinstance(subject, str) or not mime.is_safe_text(subject, allow_tab=True):
            raise MessageError("subject: must be a string without CR, LF or control characters")
        if not subject.isascii():
            mime.encode_text(subject, self.charset.codec, "subject")
        return subject

    def _fields(self, message: Fields) -> tuple[list[_Field], str | None, str | None]:
        result: list[_Field] = []
        date: str | None = None
        message_id: str | None = None
        for name, value in _header_pairs(message.headers):
            lowered = name.lower()
            if lowered in _GENERATED:
                raise MessageError(f"headers: {name} is generated and cannot be overridden")
            if lowered in _USE_THE_FIELD:
                raise MessageError(f"headers: set {name} with the message field, not a header")
            if lowered == "date":
                if date is not None:
                    raise MessageError("headers: more than one Date field")
                date = date_value(value)
            elif lowered == "message-id":
                if message_id is not None:
                    raise MessageError("headers: more than one Message-ID field")
                message_id = _check_message_id(value)
            elif lowered in _ADDRESS_FIELDS:
                parsed = parse_address_field(value, name)
                result.append(_Field(name, value, tuple(parsed)))
            else:
                if not value.isascii():
                    mime.encode_text(value, self.charset.codec, name)
                result.append(_Field(name, value, None))
        return result, date, message_id

    def _body(self, subtype: str, text: object, what: str) -> _TextBody | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise MessageError(f"{what}: must be a string or None")
        return _text_body(subtype, text, self.charset, self.encoding, what)

    def _boundary(self) -> str:
        """Random once; redrawn in the (astronomically unlikely) case it occurs in a body."""
        literal = [b for body in (self.text, self.html) if body for b in body.literal_bodies()]
        while True:
            base = secrets.token_hex(12)
            if not any(base.encode() in body for body in literal):
                return base

    # ---- rendering

    def _addresses(self, name: str, addresses: Sequence[Address], utf8: bool) -> bytes:
        tokens: list[str] = []
        for index, address in enumerate(addresses):
            phrase = mime.phrase_tokens(
                address.display_name,
                codec=self.charset.codec,
                label=self.charset.label,
                utf8=utf8,
            )
            spec = address.spec(utf8)
            part = [*phrase, f"<{spec}>"] if phrase else [spec]
            if index < len(addresses) - 1:
                part[-1] += ","
            tokens += part
        return mime.fold(name, tokens)

    def _headers(self, utf8: bool) -> tuple[bytes, ...]:
        headers = self._rendered_headers.get(utf8)
        if headers is None:
            headers = self._rendered_headers[utf8] = tuple(self._render_headers(utf8))
        return headers

    def _render_headers(self, utf8: bool) -> list[bytes]:
        headers = [self._addresses("From", [self.sender], utf8)]
        if self.to:
            headers.append(self._addresses("To", self.to, utf8))
        if self.cc:
            headers.append(self._addresses("Cc", self.cc, utf8))
        if not self.to and not self.cc:
            headers.append(b"To: undisclosed-recipients:;\r\n")
        if self.subject:
            tokens = mime.unstructured_tokens(
                "Subject",
                self.subject,
                codec=self.charset.codec,
                label=self.charset.label,
                utf8=utf8,
            )
            headers.append(mime.fold("Subject", tokens))
        headers.append(mime.fold("Date", mime.verbatim_tokens(self.date)))
        headers.append(mime.fold("Message-ID", [f"<{self.message_id}>"]))
        for extra in self.fields:
            headers.append(self._field(extra, utf8))
        headers.append(b"MIME-Version: 1.0\r\n")
        return headers

    def _field(self, extra: _Field, utf8: bool) -> bytes:
        if extra.addresses is not None:
            return self._addresses(extra.name, extra.addresses, utf8)
        if utf8 or extra.value.isascii():
            return mime.fold(extra.name, mime.verbatim_tokens(extra.value))
        words = mime.encoded_words(
            extra.value,
            self.charset.codec,
            self.charset.label,
            mime.FOLD_AT - len(extra.name) - 2,
        )
        return mime.fold(extra.name, words)

    def _text_leaf(self, body: _TextBody, allow_8bit: bool) -> mime.Leaf:
        cte, data = body.choose(allow_8bit)
        content_type = mime.parameter_tokens(
            f"text/{body.subtype}", [("charset", self.charset.label)]
        )
        headers = (
            mime.fold("Content-Type", content_type),
            f"Content-Transfer-Encoding: {cte}\r\n".encode(),
        )
        return mime.Leaf(headers, (mime.Static(data),))

    def _multipart(
        self, subtype: str, parts: Sequence[mime.Leaf | mime.Multipart], **params: str
    ) -> mime.Multipart:
        # A distinct first letter per kind: no boundary is a prefix of another.
        boundary = f"=_{subtype[0]}{self.boundary}"
        tokens = mime.parameter_tokens(
            f"multipart/{subtype}", [("boundary", boundary), *params.items()]
        )
        return mime.Multipart((mime.fold("Content-Type", tokens),), boundary, tuple(parts))

    def _make_tree(self, allow_8bit: bool, sizes: Sizes) -> mime.Leaf | mime.Multipart:
        """text / html / alternative, related around the HTML, mixed around it all."""
        related: list[mime.Leaf] = []
        others: list[mime.Leaf] = []
        for attachment, size in zip(self.attachments, sizes, strict=True):
            grouped = self.html and attachment.inline and attachment.grouped_with_html
            (related if grouped else others).append(attachment.leaf(size))
        core: mime.Leaf | mime.Multipart | None = None
        if self.html:
            core = self._text_leaf(self.html, allow_8bit)
            if related:
                core = self._multipart("related", [core, *related], type="text/html")
        if self.text:
            text = self._text_leaf(self.text, allow_8bit)
            core = self._multipart("alternative", [text, core]) if core else text
        if not others:
            return core or self._text_leaf(
                _text_body("plain", "", self.charset, Encoding.AUTO), False
            )
        return self._multipart("mixed", [core, *others] if core else others)

    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> tuple[mime.Segment, ...]:
        sizes = tuple(attachment.file_size() for attachment in self.attachments)  # one stat each
        key = (allow_8bit, smtputf8)
        cached = self._rendered.get(key)
        if cached is None or cached[0] != sizes:
            tree = self._make_tree(allow_8bit, sizes)
            cached = self._rendered[key] = (
                sizes,
                tuple(mime.render(tree, self._headers(smtputf8))),
            )
        return cached[1]
