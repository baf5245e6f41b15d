"""What to send: :class:`Message` (contract §3), rendered by a streaming writer.

A ``Message`` is validated completely when it is constructed — addresses,
header fields, charset, attachment files — so bad input is a
:class:`~smtpsubmit.errors.MessageError` before any connection is made.

Rendering is hand-written (see :mod:`smtpsubmit.mime` for why the stdlib
generator is not used): :meth:`Message.prepare` returns a
:class:`PreparedMessage` that knows the envelope, the exact size in octets and
whether 8-bit transport is needed, *without* reading the attachments; its
:meth:`~PreparedMessage.iter_bytes` then produces the bytes piece by piece, so
memory does not grow with attachment size. Everything random (Message-ID,
boundaries, the default Date) is drawn once at construction, so every render
of one message with the same options is byte-for-byte identical.

Addresses are parsed by the stdlib header parser (``email.headerregistry``)
and checked by ``email-validator``; anything the parser flags as a defect —
the ambiguous forms behind CVE-2023-27043 among them — is rejected, never
repaired. There are no hand-written address regexes.
"""

from __future__ import annotations

import abc
import codecs
import email.charset
import email.errors
import email.policy
import enum
import functools
import io
import mimetypes
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from email.utils import format_datetime
from typing import IO, Any, BinaryIO, cast

from smtpsubmit import mime
from smtpsubmit.envelope import validate_addr_spec
from smtpsubmit.errors import ExtensionUnavailable, MessageError

__all__ = ["Attachment", "Encoding", "Message", "PreparedMessage"]

_HEADER_FACTORY = email.policy.default.header_factory
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
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
_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}
_MAX_HEADER_BLOCK = 1 << 20  # a ready-made message's header block, in octets


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


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class _Address:
    """A validated mailbox; ``domain`` as written when ASCII, else the U-label."""

    display_name: str
    local: str
    domain: str
    ascii_domain: str

    @property
    def needs_utf8(self) -> bool:
        return not self.local.isascii()

    @property
    def key(self) -> tuple[str, str]:
        """Identity for de-duplication: domains compare case-insensitively."""
        return (self.local, self.ascii_domain.lower())

    def spec(self, utf8: bool) -> str:
        return f"{self.local}@{self.domain if utf8 else self.ascii_domain}"


def _split_address_list(text: str, what: str) -> list[str]:
    """Split at top-level ``,`` / ``;``, refusing unbalanced quotes, comments or ``<>``.

    This only finds the separators; each piece is then parsed by the stdlib.
    An unbalanced delimiter is the CVE-2023-27043 family and is rejected.
    """
    pieces: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    depth = 0
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif ch == ")":
            if not depth:
                raise MessageError(f"{what}: unbalanced ')' in {text!r}")
            depth -= 1
        elif depth:
            pass
        elif ch == '"':
            quoted = True
        elif ch in "<>":
            if angle == (ch == "<"):
                raise MessageError(f"{what}: unbalanced '{ch}' in {text!r}")
            angle = ch == "<"
        elif ch in ",;" and not angle:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted or angle or depth or escaped:
        raise MessageError(f"{what}: unbalanced quote, comment or '<' in {text!r}")
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _parse_address_header(value: str) -> tuple[Any, list[email.errors.MessageDefect]]:
    """The stdlib's address-list parse and its defects (bar a non-ASCII local part).

    The parser can also crash on hostile input (e.g. ``alice@``): that too is
    an invalid address, not a bug to pass on.
    """
    try:
        header = _HEADER_FACTORY("To", value)
    except Exception as exc:
        raise MessageError(f"{value!r} cannot be parsed as an address") from exc
    defects = [d for d in header.defects if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
    return header, defects


def _check_display_name(name: str, what: str) -> None:
    if not mime.is_safe_text(name) or any(ch in _BIDI_CONTROLS for ch in name):
        raise MessageError(f"{what}: display name {name!r} has control or bidi characters")


def _parse_address(text: str, what: str, *, check_name: bool = True) -> _Address:
    """One mailbox, ``Name <a@b>`` or ``a@b``; anything ambiguous is refused."""
    return _parse_address_cached(text, what, check_name)


# A pure function of immutable strings with an immutable result (errors are not
# cached): bulk senders repeat the same sender and recipients message after message.
@functools.lru_cache(maxsize=4096)
def _parse_address_cached(text: str, what: str, check_name: bool) -> _Address:
    if not mime.is_safe_text(text):
        raise MessageError(f"{what}: {text!r} contains control characters")
    header, defects = _parse_address_header(text)
    groups = header.groups
    if defects or len(groups) != 1 or groups[0].display_name is not None:
        raise MessageError(f"{what}: {text!r} is not a single unambiguous address")
    (address,) = header.addresses
    if check_name:
        _check_display_name(address.display_name, what)
    return _validated(address.display_name, address.addr_spec, what)


@functools.lru_cache(maxsize=4096)  # pure, immutable result; see _parse_address_cached
def _validated(display_name: str, spec: str, what: str) -> _Address:
    try:
        valid = validate_addr_spec(spec)  # the one address check, shared with the envelope
    except MessageError as exc:
        raise MessageError(f"{what}: {exc}") from exc
    written = spec.rpartition("@")[2]
    if written.isascii():  # keep the caller's spelling (and case) of an ASCII domain
        return _Address(display_name, valid.local_part, written, written)
    return _Address(display_name, valid.local_part, valid.domain, str(valid.ascii_domain))


def _parse_address_field(value: object, what: str) -> list[_Address]:
    """``str`` with ``,``/``;`` separators, or a sequence of such strings."""
    items: Iterable[object] = [value] if isinstance(value, str) else cast(Iterable[object], value)
    if not isinstance(items, Iterable):
        raise MessageError(f"{what}: expected a string or a sequence of strings")
    result: list[_Address] = []
    for item in items:
        if not isinstance(item, str):
            raise MessageError(f"{what}: expected a string, got {type(item).__name__}")
        if not mime.is_safe_text(item):
            raise MessageError(f"{what}: {item!r} contains control characters")
        result.extend(_parse_address(piece, what) for piece in _split_address_list(item, what))
    return result


def _dedupe(addresses: Iterable[_Address]) -> list[_Address]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for address in addresses:
        if address.key not in seen:
            seen.add(address.key)
            unique.append(address)
    return unique


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


def _encode_text(text: str, charset: _Charset, what: str) -> bytes:
    try:
        return text.encode(charset.codec)
    except UnicodeError as exc:
        raise MessageError(f"{what}: cannot be encoded in charset {charset.codec!r}") from exc


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
    data = _encode_text(normalized, charset, what)
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


# --------------------------------------------------------------------------- attachments


def _check_filename(name: str) -> None:
    if not mime.is_safe_text(name) or any(ch in _BIDI_CONTROLS for ch in name):
        raise MessageError(f"attachment file name {name!r} has control or bidi characters")


def _check_content_type(value: str) -> None:
    main, slash, sub = value.partition("/")
    tspecials = set('()<>@,;:\\"/[]?= ')
    for token in (main, sub):
        if not slash or not token or not token.isascii() or not token.isprintable():
            raise MessageError(f"attachment content type {value!r} is not 'type/subtype'")
        if tspecials & set(token):
            raise MessageError(f"attachment content type {value!r} is not 'type/subtype'")
    if main.lower() in ("multipart", "message"):
        raise MessageError(f"attachment content type {value!r}: use application/octet-stream")


def _guess_type(filename: str | None) -> str:
    if not filename:
        return "application/octet-stream"
    guessed, compression = mimetypes.guess_type(filename, strict=False)
    if compression:
        return _COMPRESSED_TYPES.get(compression, "application/octet-stream")
    if not guessed or guessed.split("/")[0] in ("multipart", "message"):
        return "application/octet-stream"
    return guessed


@dataclass(frozen=True)
class Attachment:
    """A file (``path``) or bytes (``data``) to attach: exactly one of the two.

    ``filename`` defaults to the path's base name; ``content_type`` is
    guessed from the file name. An ``inline`` attachment with a
    ``content_id`` is grouped with the HTML body in ``multipart/related`` so
    the HTML can show it with ``src="cid:..."``. A missing or unreadable file
    is a :class:`MessageError` here, not when sending.
    """

    path: str | os.PathLike[str] | None = None
    data: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    inline: bool = False
    content_id: str | None = None
    _file: str | None = field(init=False, default=None, repr=False, compare=False)
    _name: str | None = field(init=False, default=None, repr=False, compare=False)
    _type: str = field(init=False, default="", repr=False, compare=False)
    _cid: str | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise MessageError("Attachment needs exactly one of 'path' or 'data'")
        name = self.filename
        if self.data is not None:
            if not isinstance(self.data, bytes | bytearray | memoryview):
                raise MessageError("Attachment 'data' must be bytes")
            object.__setattr__(self, "data", bytes(self.data))
        else:
            path = self._check_file()
            object.__setattr__(self, "_file", path)
            name = name if name is not None else os.path.basename(path)
        if name is not None and not isinstance(name, str):
            raise MessageError("Attachment 'filename' must be a string")
        name = name.strip() if name else None  # receivers strip it anyway
        if name:
            _check_filename(name)
        object.__setattr__(self, "_name", name or None)
        content_type = self.content_type or _guess_type(name)
        if not isinstance(content_type, str):
            raise MessageError("Attachment 'content_type' must be a string")
        _check_content_type(content_type)
        object.__setattr__(self, "_type", content_type.lower())
        object.__setattr__(self, "_cid", self._check_cid())

    def _check_file(self) -> str:
        try:
            path = os.path.abspath(os.fspath(cast(Any, self.path)))
        except TypeError as exc:
            raise MessageError(f"attachment path {self.path!r} is not a path") from exc
        if not isinstance(path, str):
            raise MessageError(f"attachment path {self.path!r} must be a str path")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise MessageError(f"attachment {path!r} cannot be read: {exc.strerror}") from exc
        if not os.path.isfile(path):
            raise MessageError(f"attachment {path!r} is not a regular file")
        return path

    def _check_cid(self) -> str | None:
        if self.content_id is None:
            return None
        cid = self.content_id
        if not isinstance(cid, str):
            raise MessageError("Attachment 'content_id' must be a string")
        if cid.startswith("<") and cid.endswith(">"):
            cid = cid[1:-1]
        bad = set(' \t<>"()[]\\,;:')
        if not cid or not cid.isascii() or not cid.isprintable() or bad & set(cid):
            raise MessageError(f"attachment content_id {self.content_id!r} is not a valid id")
        return cid

    def _leaf(self) -> mime.Leaf:
        """This attachment as a base64 part; files are sized by ``os.stat`` now."""
        name_params = [("name", self._name)] if self._name else []
        disposition_params = [("filename", self._name)] if self._name else []
        headers = [
            mime.fold("Content-Type", mime.parameter_tokens(self._type, name_params)),
            b"Content-Transfer-Encoding: base64\r\n",
            mime.fold(
                "Content-Disposition",
                mime.parameter_tokens(
                    "inline" if self.inline else "attachment", disposition_params
                ),
            ),
        ]
        if self._cid:
            headers.append(mime.fold("Content-ID", [f"<{self._cid}>"]))
        return mime.Leaf(tuple(headers), (self._body(),))

    def _body(self) -> mime.Segment:
        if self._file is None:
            return mime.Base64Data(cast(bytes, self.data))
        try:
            length = os.stat(self._file).st_size
        except OSError as exc:
            raise MessageError(f"attachment {self._file!r} cannot be read: {exc}") from exc
        return mime.Base64File(self._file, length)


def _parse_attachments(value: object) -> list[Attachment]:
    if isinstance(value, str):
        items: list[object] = [piece.strip() for piece in value.split(";") if piece.strip()]
    elif isinstance(value, Iterable):
        items = list(cast(Iterable[object], value))
    else:
        raise MessageError("attachments: expected a string or a sequence")
    result = []
    for item in items:
        if isinstance(item, Attachment):
            result.append(item)
        elif isinstance(item, str | os.PathLike):
            result.append(Attachment(path=cast("str | os.PathLike[str]", item)))
        else:
            raise MessageError(f"attachments: unexpected {type(item).__name__}")
    return result


# --------------------------------------------------------------------------- header fields


@dataclass(frozen=True)
class _Field:
    """An extra header field given by the caller."""

    name: str
    value: str
    addresses: tuple[_Address, ...] | None  # parsed for address fields (Reply-To, ...)


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
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
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


def _date_value(date: object) -> str:
    """RFC 5322 date-time; ``None`` = now, a naive datetime = local time."""
    if date is None:
        return format_datetime(datetime.now().astimezone())
    if isinstance(date, datetime):
        return format_datetime(date if date.tzinfo else date.astimezone())
    if isinstance(date, str):
        if not date.strip() or not date.isascii() or not mime.is_safe_text(date, allow_tab=True):
            raise MessageError(f"date: {date!r} is empty or has CR, LF or control characters")
        return date.strip()
    raise MessageError(f"date: expected a datetime, a string or None, not {type(date).__name__}")


def _new_message_id(domain: str) -> str:
    return f"{secrets.token_hex(16)}@{domain}"


# --------------------------------------------------------------------------- prepared


@dataclass(frozen=True)
class PreparedMessage:
    """One message rendered for one session: envelope, exact size, bytes on demand.

    ``size`` is exact and known before any byte is produced (SIZE=, BDAT);
    ``eight_bit`` says the bytes contain octets above 127 (BODY=8BITMIME).
    :meth:`iter_bytes` may be called more than once and yields the same
    bytes each time; attachments are read while iterating.
    """

    sender: str
    recipients: list[str]
    message_id: str
    size: int
    eight_bit: bool
    _segments: tuple[mime.Segment, ...] = field(repr=False, compare=False)

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The message in chunks of exactly *chunk_size* octets (the last may be shorter)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        return mime.rechunk(
            (chunk for segment in self._segments for chunk in segment.chunks()), chunk_size
        )


# --------------------------------------------------------------------------- sources


class _Source(abc.ABC):
    """What a message is made of; composed and ready-made messages differ here."""

    sender: _Address
    recipients: list[_Address]
    addresses: list[_Address]  # every address rendered or used (for SMTPUTF8)
    message_id: str

    @abc.abstractmethod
    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> list[mime.Segment]:
        """The message as a list of pieces to stream, rendered for this session."""


class _Composed(_Source):
    """A message built from the :class:`Message` fields."""

    def __init__(self, message: Message) -> None:
        self.charset = _charset(message.charset)
        self.encoding = _encoding(message.encoding)
        self.sender = _single_sender(message.sender)
        self.to = _parse_address_field(message.to, "to")
        self.cc = _parse_address_field(message.cc, "cc")
        self.bcc = _parse_address_field(message.bcc, "bcc")
        self.recipients = _dedupe(self.to + self.cc + self.bcc)
        if not self.recipients:
            raise MessageError("a message needs at least one recipient in to, cc or bcc")
        self.subject = self._subject(message.subject)
        self.fields, date_field, id_field = self._fields(message)
        if date_field is not None and message.date is not None:
            raise MessageError("headers: a Date field and the date argument both given")
        self.date = date_field if date_field is not None else _date_value(message.date)
        self.message_id = id_field or _new_message_id(self.sender.ascii_domain)
        self.text = self._body("plain", message.text, "text")
        self.html = self._body("html", message.html, "html")
        self.attachments = _parse_attachments(message.attachments)
        self.addresses = [self.sender, *self.to, *self.cc, *self.bcc]
        self.addresses += [a for f in self.fields for a in (f.addresses or ())]
        self.boundary = self._boundary()
        # Rendered headers, trees and segments are pure functions of the fields
        # above, so each is made once per mode; not trees with file attachments,
        # which are sized by os.stat on every render.
        self._rendered_headers: dict[bool, tuple[bytes, ...]] = {}
        self._rendered_trees: dict[bool, mime.Leaf | mime.Multipart] = {}
        self._rendered: dict[tuple[bool, bool], tuple[mime.Segment, ...]] = {}
        self._pure = all(attachment._file is None for attachment in self.attachments)
        # Render everything but attachment bodies once per mode now, so folding
        # and charset errors surface here rather than when sending.
        for utf8 in (True, False) if not any(a.needs_utf8 for a in self.addresses) else (True,):
            self._headers(utf8)
        for allow_8bit in (True, False):
            self._tree(allow_8bit)

    def _subject(self, subject: object) -> str:
        if not isinstance(subject, str) or not mime.is_safe_text(subject, allow_tab=True):
            raise MessageError("subject: must be a string without CR, LF or control characters")
        if not subject.isascii():
            _encode_text(subject, self.charset, "subject")
        return subject

    def _fields(self, message: Message) -> tuple[list[_Field], str | None, str | None]:
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
                date = _date_value(value)
            elif lowered == "message-id":
                if message_id is not None:
                    raise MessageError("headers: more than one Message-ID field")
                message_id = _check_message_id(value)
            elif lowered in _ADDRESS_FIELDS:
                parsed = _parse_address_field(value, name)
                result.append(_Field(name, value, tuple(parsed)))
            else:
                if not value.isascii():
                    _encode_text(value, self.charset, name)
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

    def _addresses(self, name: str, addresses: Sequence[_Address], utf8: bool) -> bytes:
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

    def _tree(self, allow_8bit: bool) -> mime.Leaf | mime.Multipart:
        if not self._pure:
            return self._make_tree(allow_8bit)
        tree = self._rendered_trees.get(allow_8bit)
        if tree is None:
            tree = self._rendered_trees[allow_8bit] = self._make_tree(allow_8bit)
        return tree

    def _make_tree(self, allow_8bit: bool) -> mime.Leaf | mime.Multipart:
        """text / html / alternative, related around the HTML, mixed around it all."""
        related: list[Attachment] = []
        others: list[Attachment] = []
        for attachment in self.attachments:
            grouped = self.html and attachment.inline and attachment._cid
            (related if grouped else others).append(attachment)
        core: mime.Leaf | mime.Multipart | None = None
        if self.html:
            core = self._text_leaf(self.html, allow_8bit)
            if related:
                parts = [core, *(a._leaf() for a in related)]
                core = self._multipart("related", parts, type="text/html")
        if self.text:
            text = self._text_leaf(self.text, allow_8bit)
            core = self._multipart("alternative", [text, core]) if core else text
        if not others:
            return core or self._text_leaf(
                _text_body("plain", "", self.charset, Encoding.AUTO), False
            )
        leaves = [a._leaf() for a in others]
        return self._multipart("mixed", [core, *leaves] if core else leaves)

    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> list[mime.Segment]:
        if not self._pure:
            return list(mime.render(self._tree(allow_8bit), self._headers(smtputf8)))
        key = (allow_8bit, smtputf8)
        segments = self._rendered.get(key)
        if segments is None:
            segments = tuple(mime.render(self._tree(allow_8bit), self._headers(smtputf8)))
            self._rendered[key] = segments
        return list(segments)


def _encoding(value: object) -> Encoding:
    if isinstance(value, Encoding):
        return value
    if isinstance(value, str):
        for member in Encoding:
            if value.lower() in (member.value, member.name.lower()):
                return member
    raise MessageError(f"encoding: {value!r} is not an Encoding")


def _single_sender(value: object) -> _Address:
    if not isinstance(value, str) or not value.strip():
        raise MessageError("sender: a sender address is required")
    if not mime.is_safe_text(value):
        raise MessageError(f"sender: {value!r} contains control characters")
    addresses = _split_address_list(value, "sender")
    if len(addresses) != 1:
        raise MessageError(f"sender: {value!r} must be exactly one address")
    return _parse_address(addresses[0], "sender")


# --------------------------------------------------------------------------- ready-made


@dataclass(frozen=True)
class _Scan:
    """What one pass over a ready-made message learned (newlines normalised)."""

    header_block: bytes  # the header fields as read, each ending CRLF
    header_len: int  # normalised octets to skip: the header block and its blank line
    separated: bool  # a blank line separates header and body
    body_len: int
    body_8bit: bool
    final_crlf: bool  # the body lacks a final line end, which is added


def _scan(stream: BinaryIO) -> _Scan:
    """Read once: split off the header block, measure and check the body."""
    pieces = mime.normalize_newlines(mime.read_blocks(stream))
    buffer = b""
    header_len = -1
    for piece in pieces:
        buffer += piece
        if buffer.startswith(mime.CRLF):
            raise MessageError("the message has no header fields")
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            header_len = end + 4
            break
        if len(buffer) > _MAX_HEADER_BLOCK:
            raise MessageError("the message's header block is too large")
    if header_len < 0:  # header fields only, no body
        block = buffer if buffer.endswith(mime.CRLF) or not buffer else buffer + mime.CRLF
        return _Scan(block, len(buffer), False, 0, False, False)
    counter = _BodyCounter()
    counter.feed(buffer[header_len:])
    for piece in pieces:
        counter.feed(piece)
    if max(counter.longest, counter.current) > mime.MAX_LINE:
        raise MessageError(f"the message has a line longer than {mime.MAX_LINE} octets")
    return _Scan(
        header_block=buffer[: header_len - 2],
        header_len=header_len,
        separated=True,
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
        lines = piece.split(mime.CRLF)
        self.current += len(lines[0])
        if len(lines) > 1:
            self.longest = max(self.longest, self.current, *map(len, lines[1:-1]))
            self.current = len(lines[-1])


def _header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """Split a header block into (lower-case name, whole field with CRLF)."""
    result: list[tuple[str, bytes]] = []
    lines = block.split(mime.CRLF)[:-1]
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]  # an mbox "From " line, which sendmail -t ignores too
    for line in lines:
        if len(line) > mime.MAX_LINE:
            raise MessageError(f"the message has a header line over {mime.MAX_LINE} octets")
        if line[:1] in (b" ", b"\t"):
            if not result:
                raise MessageError("the message starts with a continuation line")
            previous, raw = result[-1]
            result[-1] = (previous, raw + line + mime.CRLF)
            continue
        head, colon, _ = line.partition(b":")
        head = head.rstrip(b" \t")
        if not colon or not head or not all(33 <= c <= 126 for c in head):
            raise MessageError(f"not an RFC 5322 header line: {line[:80]!r}")
        result.append((head.decode("ascii").lower(), line + mime.CRLF))
    return result


def _field_value(raw: bytes) -> str:
    """The unfolded value of a raw header field (undecodable octets kept as escapes)."""
    value = raw.decode("utf-8", "surrogateescape").partition(":")[2]
    return value.replace("\r\n", "").strip()


def _raw_addresses(value: str, what: str) -> list[_Address]:
    """Addresses of a raw address field; groups allowed, defects refused."""
    if not mime.is_safe_text(value, allow_tab=True):
        raise MessageError(f"{what}: {value!r} has control characters or is not UTF-8")
    header, defects = _parse_address_header(value)
    if defects:
        raise MessageError(f"{what}: {value!r} is not an unambiguous address list")
    return [_validated(a.display_name, a.addr_spec, what) for a in header.addresses]


class _Ready(_Source):
    """A ready RFC 5322 message: streamed through, Bcc removed (sendmail -t).

    Nothing is re-generated: the header fields go out as read, minus Bcc and
    Resent-Bcc, plus a Message-ID and a Date when the message has none; the
    body is streamed from the source on every render.
    """

    def __init__(
        self, opener: Callable[[], BinaryIO], stamp: Callable[[], object] | None = None
    ) -> None:
        self.opener = opener
        self.stamp = stamp
        self.seen = stamp() if stamp else None
        with opener() as stream:
            self.scan = _scan(stream)
        raw_fields = _header_fields(self.scan.header_block)
        self.values: dict[str, list[str]] = {}
        for name, raw in raw_fields:
            self.values.setdefault(name, []).append(_field_value(raw))
        self.sender = self._sender()
        self.to, self.cc, self.bcc = (self._addresses(name) for name in ("to", "cc", "bcc"))
        self.recipients = _dedupe(self.to + self.cc + self.bcc)
        if not self.recipients:
            raise MessageError("the message has no recipients in To, Cc or Bcc")
        self.addresses = [self.sender, *self.to, *self.cc, *self.bcc]
        kept = [raw for name, raw in raw_fields if name not in ("bcc", "resent-bcc")]
        self.message_id = self._message_id(kept)
        self.date = self._first("date")
        if self.date is None:
            self.date = _date_value(None)
            kept.append(f"Date: {self.date}\r\n".encode())
        self.header = b"".join(kept) + (mime.CRLF if self.scan.separated else b"")

    def _first(self, name: str, *, unique: bool = False) -> str | None:
        values = self.values.get(name, [])
        if unique and len(values) > 1:
            raise MessageError(f"the message has more than one {name.title()} field")
        return values[0] if values else None

    def _addresses(self, name: str) -> list[_Address]:
        return [a for value in self.values.get(name, []) for a in _raw_addresses(value, name)]

    def _sender(self) -> _Address:
        for name in ("from", "sender"):
            value = self._first(name, unique=True)
            addresses = _raw_addresses(value, name) if value is not None else []
            if len(addresses) == 1:
                return addresses[0]
        raise MessageError("the message has no single From (or Sender) address")

    def _message_id(self, kept: list[bytes]) -> str:
        value = self._first("message-id")
        if value is not None:
            inner = value.partition("<")[2].partition(">")[0]
            return inner or value
        message_id = _new_message_id(self.sender.ascii_domain)
        kept.append(f"Message-ID: <{message_id}>\r\n".encode())
        return message_id

    def subject(self) -> str:
        value = self._first("subject")
        if value is None:
            return ""
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return str(_HEADER_FACTORY("Subject", text))

    def segments(self, *, allow_8bit: bool, smtputf8: bool) -> list[mime.Segment]:
        if self.stamp is not None and self.stamp() != self.seen:
            raise MessageError("the message file changed since it was read")
        header = mime.Static(self.header)
        body = mime.RawBody(
            self.opener,
            self.scan.header_len,
            self.scan.body_len,
            self.scan.body_8bit,
            self.scan.final_crlf,
        )
        if (header.eight_bit or body.eight_bit) and not allow_8bit:
            raise ExtensionUnavailable(
                "the ready-made message contains 8-bit data and the server lacks 8BITMIME",
                extension="8BITMIME",
            )
        return [header, body]


# --------------------------------------------------------------------------- Message


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
    _source: _Source = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_source", _Composed(self))

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
        data = bytes(raw)
        return cls._ready(_Ready(lambda: io.BytesIO(data)))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Message:
        """Like :meth:`from_bytes`, streaming the file (read once now to scan it).

        A missing or unreadable file is a :class:`MessageError` whose
        ``__cause__`` is the ``OSError``.
        """
        name = os.path.abspath(os.fspath(path))

        def opener() -> BinaryIO:
            return open(name, "rb")  # the caller closes it

        def stamp() -> object:
            info = os.stat(name)
            return (info.st_size, info.st_mtime_ns)

        try:
            return cls._ready(_Ready(opener, stamp))
        except OSError as exc:
            raise MessageError(f"cannot read message file {name!r}: {exc.strerror}") from exc

    @classmethod
    def _ready(cls, source: _Ready) -> Message:
        """A Message whose fields describe *source* (no re-validation, no rendering)."""
        message = cls.__new__(cls)
        values: dict[str, object] = {f.name: f.default for f in fields(cls) if f.init}
        values |= {
            "sender": source.sender.spec(True),
            "to": tuple(a.spec(True) for a in source.to),
            "cc": tuple(a.spec(True) for a in source.cc),
            "bcc": tuple(a.spec(True) for a in source.bcc),
            "date": source.date,
            "subject": source.subject(),
            "_source": source,
        }
        for name, value in values.items():
            object.__setattr__(message, name, value)
        return message

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
        not allowed (such a message is never re-encoded).
        """
        if self.needs_smtputf8() and not smtputf8:
            raise ExtensionUnavailable(
                "an address has a non-ASCII local part and SMTPUTF8 is not available",
                extension="SMTPUTF8",
            )
        source = self._source
        segments = tuple(source.segments(allow_8bit=allow_8bit, smtputf8=smtputf8))
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
