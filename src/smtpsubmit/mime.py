"""The hand-written streaming MIME writer behind :class:`smtpsubmit.message.Message`.

Internal module: nothing here is public API.

Why not ``email.generator``? The stdlib generator renders a whole
``EmailMessage`` tree into memory (each part's payload must already be an
encoded ``str``), so a 1 GB attachment costs well over 1 GB of RAM, and the
size of the result is only known after building it. Submission needs the
opposite: the exact octet count *before* sending (for the SIZE extension and
BDAT chunk lengths) and the bytes produced piece by piece while the socket
drains them. So a message is rendered here as a flat sequence of
:class:`Segment` objects, each knowing its exact size in advance and yielding
its bytes on demand: small ``Static`` runs of header and boundary bytes, and
``Base64File`` / ``Base64Data`` segments that read and encode an attachment 57
bytes times N at a time (so every 76-character line is complete) without ever
holding it whole.

Header rules applied here: lines end in CRLF, are folded at 78 octets where
possible and never exceed 998; non-ASCII text becomes RFC 2047 encoded-words
(unless the message goes out under SMTPUTF8, where raw UTF-8 is allowed);
non-ASCII parameter values (file names) use RFC 2231.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from smtpsubmit.errors import MessageError

__all__: list[str] = []

CRLF = b"\r\n"
MAX_LINE = 998  # RFC 5322 §2.1.1 hard limit, excluding CRLF
FOLD_AT = 78  # RFC 5322 §2.1.1 recommendation
B64_LINE = 76  # RFC 2045 §6.8 maximum encoded line length
B64_GROUP = 57  # input bytes that make exactly one 76-character base64 line
READ_BLOCK = B64_GROUP * 1150  # ~64 KiB per read: whole base64 lines only
MAX_ENCODED_WORD = 75  # RFC 2047 §2

_TEXT_NEWLINES = re.compile(r"\r\n|\r|\n")
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)
# RFC 2231 attribute-char, minus nothing: what may stay unescaped in ext-value.
_ATTR_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


# --------------------------------------------------------------------------- segments


class Segment(ABC):
    """A run of output bytes whose exact length is known before it is produced."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Exact number of octets :meth:`chunks` yields."""

    @property
    @abstractmethod
    def eight_bit(self) -> bool:
        """Whether any yielded octet is above 127."""

    @abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """Yield the bytes, in pieces of bounded size."""


@dataclass(frozen=True)
class Static(Segment):
    """Bytes already in memory (headers, boundaries, encoded text bodies)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def eight_bit(self) -> bool:
        return not self.data.isascii()

    def chunks(self) -> Iterator[bytes]:
        if self.data:
            yield self.data


def base64_size(length: int) -> int:
    """Octets of the CRLF-terminated 76-column base64 encoding of *length* bytes.

    Pure arithmetic, so a message's size is known without reading attachments.
    """
    chars = 4 * ((length + 2) // 3)
    lines = (chars + B64_LINE - 1) // B64_LINE
    return chars + 2 * lines


def base64_lines(block: bytes | memoryview) -> bytes:
    """Encode *block* as complete CRLF-terminated base64 lines.

    Only the last block of a body may have a length that is not a multiple
    of 57; every other block then ends exactly on a line boundary.
    """
    encoded = binascii.b2a_base64(block, newline=False)
    if not encoded:
        return b""
    lines = [encoded[i : i + B64_LINE] for i in range(0, len(encoded), B64_LINE)]
    return CRLF.join(lines) + CRLF


@dataclass(frozen=True)
class Base64Data(Segment):
    """An in-memory attachment, encoded block by block (no full-size copy)."""

    data: bytes

    @property
    def size(self) -> int:
        return base64_size(len(self.data))

    @property
    def eight_bit(self) -> bool:
        return False

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), READ_BLOCK):
            yield base64_lines(view[start : start + READ_BLOCK])


@dataclass(frozen=True)
class Base64File(Segment):
    """A file attachment, read and encoded block by block while streaming.

    ``length`` is the file size from ``os.stat`` when the message was
    prepared; a file that changes size meanwhile raises :class:`MessageError`
    rather than sending a message whose size was announced wrongly.
    """

    path: str
    length: int

    @property
    def size(self) -> int:
        return base64_size(self.length)

    @property
    def eight_bit(self) -> bool:
        return False

    def chunks(self) -> Iterator[bytes]:
        remaining = self.length
        try:
            with open(self.path, "rb") as stream:
                while remaining > 0:
                    block = stream.read(min(READ_BLOCK, remaining))
                    if not block:
                        break
                    remaining -= len(block)
                    yield base64_lines(block)
                grew = bool(stream.read(1))
        except OSError as exc:
            raise MessageError(f"cannot read attachment {self.path!r}: {exc}") from exc
        if remaining or grew:
            raise MessageError(f"attachment {self.path!r} changed size while being sent")


def rechunk(pieces: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Regroup *pieces* into chunks of exactly *chunk_size* (the last may be shorter)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    held: list[bytes] = []
    held_len = 0
    for piece in pieces:
        start = 0
        if held:
            need = chunk_size - held_len
            if len(piece) < need:
                held.append(piece)
                held_len += len(piece)
                continue
            held.append(piece[:need])
            yield b"".join(held)
            held, held_len, start = [], 0, need
        while len(piece) - start >= chunk_size:
            yield piece[start : start + chunk_size]
            start += chunk_size
        if start < len(piece):
            held.append(piece[start:])
            held_len = len(piece) - start
    if held:
        yield b"".join(held)


# --------------------------------------------------------------------------- part tree


@dataclass(frozen=True)
class Leaf:
    """One MIME part: its header fields (complete, folded) and its body."""

    headers: tuple[bytes, ...]
    body: tuple[Segment, ...]


@dataclass(frozen=True)
class Multipart:
    """A multipart container; its Content-Type field carries ``boundary``."""

    headers: tuple[bytes, ...]
    boundary: str
    parts: tuple[Leaf | Multipart, ...]


def render(node: Leaf | Multipart, top_headers: Sequence[bytes] = ()) -> Iterator[Segment]:
    """Flatten a part tree into segments (RFC 2046 §5.1.1 layout, no preamble).

    The CRLF before each delimiter belongs to the delimiter, so a body keeps
    its own final line end.
    """
    yield Static(b"".join(top_headers) + b"".join(node.headers) + CRLF)
    if isinstance(node, Leaf):
        yield from node.body
        return
    delimiter = b"--" + node.boundary.encode("ascii")
    for index, part in enumerate(node.parts):
        yield Static((CRLF if index else b"") + delimiter + CRLF)
        yield from render(part)
    yield Static(CRLF + delimiter + b"--" + CRLF)


# --------------------------------------------------------------------------- bodies


def normalize_text(text: str) -> str:
    """CRLF line ends everywhere, and a final line end on non-empty text."""
    text = _TEXT_NEWLINES.sub("\r\n", text)
    if text and not text.endswith("\r\n"):
        text += "\r\n"
    return text


def longest_line(data: bytes) -> int:
    """Length of the longest CRLF-separated line, in octets."""
    return max(map(len, data.split(CRLF)), default=0)


def quoted_printable(data: bytes) -> bytes:
    """RFC 2045 quoted-printable of CRLF-separated text, with CRLF soft breaks."""
    lines = data.split(CRLF)
    encoded = (binascii.b2a_qp(line, quotetabs=False, istext=True) for line in lines)
    return CRLF.join(line.replace(b"\n", CRLF) for line in encoded)


# --------------------------------------------------------------------------- headers


def is_safe_text(text: str, *, allow_tab: bool = False) -> bool:
    """No control, surrogate, or line/paragraph separator characters."""
    # Fast path: a printable string has no character in a C* or Z* category
    # (bar the space), so none of the unsafe ones; otherwise check each.
    if text.isprintable() or (allow_tab and text.replace("\t", " ").isprintable()):
        return True
    return all(
        (allow_tab and ch == "\t") or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
        for ch in text
    )


def check_name(text: str, what: str) -> None:
    """A display name or file name: no control, separator or bidi characters.

    Bidi overrides make a name read differently from what it is (``gpj.exe``
    shown as ``exe.jpg``), so they are refused wherever a name is shown.
    """
    if not is_safe_text(text) or any(ch in _BIDI_CONTROLS for ch in text):
        raise MessageError(f"{what} {text!r} has control or bidi characters")


def fold(name: str, tokens: Sequence[str]) -> bytes:
    """Render a header field, folding between tokens to stay within 78 octets.

    A fold goes only before a non-empty token, so no line is whitespace
    only; a token is never split. A line over 998 octets raises
    :class:`MessageError` (the caller chooses tokens so that cannot happen
    for generated fields).
    """
    lines: list[str] = []
    line = f"{name}:"
    octets = len(line.encode())  # of the current line
    longest = 0
    has_token = False
    for token in tokens:
        size = len(token) if token.isascii() else len(token.encode())
        if has_token and token and octets + 1 + size > FOLD_AT:
            lines.append(line)
            longest = max(longest, octets)
            line = " " + token
            octets = 1 + size
        else:
            line += " " + token
            octets += 1 + size
        has_token = True
    lines.append(line)
    if max(longest, octets) > MAX_LINE:
        raise MessageError(f"header {name!r} has a line longer than {MAX_LINE} octets")
    return "\r\n".join(lines).encode() + CRLF


def _q_payload(raw: bytes) -> str:
    return "".join(
        chr(octet) if octet in _Q_SAFE else "_" if octet == 0x20 else f"={octet:02X}"
        for octet in raw
    )


def _b_payload(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def encode_text(text: str, codec: str, what: str = "text") -> bytes:
    """*text* in *codec*; text the charset cannot hold is the caller's error."""
    try:
        return text.encode(codec)
    except UnicodeError as exc:
        raise MessageError(f"{what}: cannot be encoded in charset {codec!r}") from exc


def _words(text: str, codec: str, label: str, kind: str, first: int) -> list[str]:
    """Greedy split of *text* into encoded-words of at most *first*, then 75, chars.

    Splits fall between characters (never inside one), and each word is
    encoded on its own, so stateful codecs stay self-contained per word.
    """
    payload = _q_payload if kind == "Q" else _b_payload
    overhead = len(label) + 7  # "=?" label "?Q?" ... "?="
    words: list[str] = []
    start, budget = 0, first
    while start < len(text):

        def encoded(end: int, begin: int = start) -> str:
            return payload(encode_text(text[begin:end], codec))

        low, high = start + 1, min(len(text), start + MAX_ENCODED_WORD)
        if len(encoded(low)) + overhead > budget and budget < MAX_ENCODED_WORD:
            budget = MAX_ENCODED_WORD
        while low < high:  # largest end that fits; at least one character
            mid = (low + high + 1) // 2
            if len(encoded(mid)) + overhead <= budget:
                low = mid
            else:
                high = mid - 1
        words.append(f"=?{label}?{kind}?{encoded(low)}?=")
        start, budget = low, MAX_ENCODED_WORD
    return words


def encoded_words(text: str, codec: str, label: str, first: int = MAX_ENCODED_WORD) -> list[str]:
    """RFC 2047 encoded-words for *text*, Q or B, whichever is shorter.

    Q uses the restricted character set of RFC 2047 §5(3), so the words are
    safe in phrases (display names) as well as in unstructured fields.
    """
    first = max(min(first, MAX_ENCODED_WORD), 1)
    options = [_words(text, codec, label, kind, first) for kind in ("Q", "B")]
    return min(options, key=lambda words: sum(len(word) + 1 for word in words))


def _plain_words(text: str, utf8: bool, limit: int) -> list[str] | None:
    """*text* as space-separated words when it can go out literally, else None.

    Literal only when a parser gives back exactly *text*: printable, single
    spaces, no leading/trailing space, nothing that looks like an
    encoded-word, no word too long to fold.
    """
    if not text or not (utf8 or text.isascii()) or "=?" in text or not is_safe_text(text):
        return None
    if any(ch.isspace() and ch != " " for ch in text):
        return None
    words = text.split(" ")
    if any(not word or len(word.encode()) > limit for word in words):
        return None
    return words


def unstructured_tokens(name: str, text: str, *, codec: str, label: str, utf8: bool) -> list[str]:
    """Tokens for an unstructured field (RFC 5322 §3.2.5), e.g. Subject."""
    words = _plain_words(text, utf8, MAX_LINE - len(name) - 2)
    if words is not None:
        return words
    return encoded_words(text, codec, label, FOLD_AT - len(name) - 2)


def verbatim_tokens(value: str) -> list[str]:
    """Tokens of a caller-given field value: folded at its spaces, else kept."""
    return value.split(" ") if value else []


def phrase_tokens(display_name: str, *, codec: str, label: str, utf8: bool) -> list[str]:
    """A display name as atoms, one quoted-string, or encoded-words."""
    if not display_name:
        return []
    words = _plain_words(display_name, utf8, FOLD_AT - 2)
    if words is not None and all(_is_atom(word) for word in words):
        return words
    quoted = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    literal_ok = utf8 or display_name.isascii()
    if literal_ok and "=?" not in display_name and len(quoted.encode()) <= FOLD_AT - 2:
        return [quoted]
    return encoded_words(display_name, codec, label)


def _is_atom(word: str) -> bool:
    return all(ch in _ATEXT or not ch.isascii() for ch in word)


def parameter_tokens(value: str, params: Sequence[tuple[str, str]]) -> list[str]:
    """``value; a="b"; c*=utf-8''...`` as tokens, RFC 2231 where needed."""
    pieces = [piece for key, text in params for piece in _parameter(key, text)]
    tokens = [value, *pieces]
    return [token + ";" for token in tokens[:-1]] + tokens[-1:]


def _parameter(key: str, text: str) -> list[str]:
    """One parameter: a quoted string if short printable ASCII, else RFC 2231.

    RFC 2231 values are percent-encoded UTF-8, split into continuations
    between characters so each fits a 78-octet folded line.
    """
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if text.isascii() and text.isprintable() and len(key) + len(quoted) < 60:
        return [f"{key}={quoted}"]
    room = FOLD_AT - 3 - len(f"{key}*00*=utf-8''")  # leading space, ";", prefix
    chunks: list[str] = []
    current = ""
    for ch in text:
        escaped = ch if ch in _ATTR_SAFE else "".join(f"%{octet:02X}" for octet in ch.encode())
        if current and len(current) + len(escaped) > room:
            chunks.append(current)
            current = ""
        current += escaped
    chunks.append(current)
    if len(chunks) == 1:
        return [f"{key}*=utf-8''{chunks[0]}"]
    first = [f"{key}*0*=utf-8''{chunks[0]}"]
    return first + [f"{key}*{index}*={chunk}" for index, chunk in enumerate(chunks[1:], 1)]
