"""The sans-IO SMTP core: commands out as bytes, server bytes in as replies.

Nothing here touches a socket, a clock or an event loop (a test enforces the
imports), so the same core is driven by the sync and the asyncio transports
and can be tested against scripted bytes in memory, the way h11 is built.

Rules of the state machine, all enforced in :class:`SmtpProtocol`:

* The session starts in ``GREETING``; only a 2xx greeting leads to
  ``CONNECTED``. EHLO/HELO with a 2xx reply leads to ``READY``.
* ``MAIL`` is allowed in ``READY``; ``RCPT`` and ``DATA``/``BDAT`` only after a
  ``MAIL``. Commands may be pipelined: state moves when a command is *sent*
  (optimistically) and is corrected when its reply arrives (a refused MAIL
  returns to ``READY``). Replies are matched to commands strictly in order.
* After a 354 reply to DATA the core is in ``DATA`` and accepts only message
  data until the terminating ``CRLF.CRLF``; the reply to that dot ends the
  transaction (``READY``). With CHUNKING, a ``BDAT`` without ``LAST`` leads to
  ``CHUNKING``, where only further ``BDAT`` commands are allowed; ``BDAT …
  LAST`` (or a refused chunk) ends the transaction.
* ``RSET`` returns to ``READY`` from any transaction state; ``QUIT`` closes.
  Neither is allowed while message data is in progress (after ``DATA`` until
  the end of the data is sent, between the first ``BDAT`` and ``BDAT LAST``):
  written there they would become part of the message.
* Commands sent in the wrong state raise :class:`LocalProtocolError` before
  anything is rendered (our misuse); a misbehaving server raises
  :class:`ProtocolError` (theirs).
* While secrets are registered with :meth:`SmtpProtocol.hide` (the AUTH
  exchange), every form of them is masked in the replies returned and logged.
* A reply line over 4 KiB, a reply over 100 lines or 64 KiB, a malformed code,
  a NUL or bytes that are not UTF-8 are a :class:`ProtocolError` (the peer is
  hostile or broken; the connection must not be reused).
* A command argument containing CR, LF, NUL or any other control character
  is refused before anything is rendered.

Why hand-written: no maintained library offers a reusable SMTP client state
machine without I/O (smtplib and aiosmtplib bury parsing inside their sockets).
"""

from __future__ import annotations

import enum
import functools
import logging
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from smtpsubmit.errors import MessageError, ProtocolError
from smtpsubmit.reply import Reply

__all__ = [
    "Capabilities",
    "Command",
    "DataEncoder",
    "LineEndingNormalizer",
    "LocalProtocolError",
    "SmtpProtocol",
    "State",
    "xtext",
]

transcript = logging.getLogger("smtpsubmit.transcript")
log = logging.getLogger("smtpsubmit")

MAX_LINE = 4096
MAX_LINES = 100
MAX_REPLY = 64 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class LocalProtocolError(RuntimeError):
    """A command was issued in a state that does not allow it: misuse on our side,
    not the peer's (h11's name). Raised before anything is written."""


class State(enum.Enum):
    GREETING = "greeting"
    CONNECTED = "connected"
    READY = "ready"
    MAIL = "mail"
    DATA = "data"
    CHUNKING = "chunking"
    CLOSED = "closed"


_DATA_IN_PROGRESS = (State.DATA, State.CHUNKING)
_DIGITS = "0123456789"


def check_argument(value: str, what: str = "command argument") -> str:
    """Refuse control characters: they could end a command and start another.

    The error is a :class:`MessageError` (a ``ValueError``): it is bad input.
    """
    if _CONTROL.search(value):
        raise MessageError(f"{what} contains a control character (CR, LF, NUL, ...): {value!r}")
    return value


def xtext(value: str) -> str:
    """RFC 3461 xtext: ``+`` and ``=`` and anything outside ``!``..``~`` as ``+HH``."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Command:
    """One SMTP command: a verb, an argument, and the session stage it belongs to."""

    verb: str
    argument: str = ""
    stage: str = "ehlo"
    secret: bool = False  # the argument carries a credential: never log it

    def render(self) -> bytes:
        check_argument(self.argument)
        line = f"{self.verb} {self.argument}" if self.argument else self.verb
        return line.encode("utf-8") + b"\r\n"

    def loggable(self) -> str:
        if self.secret:  # keep the SASL mechanism name, never what follows it
            head = " ".join(filter(None, [self.verb, self.argument.split(" ", 1)[0]]))
            return f"{head} ***" if self.verb else "***"
        return f"{self.verb} {self.argument}" if self.argument else self.verb


@dataclass(frozen=True, eq=False)
class Capabilities(Mapping[str, str]):
    """The EHLO keywords and their parameters: a read-only mapping with upper-case
    keys (looked up in any case), equal to a dict with the same items."""

    keywords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: Reply, disabled: Iterable[str] = ()) -> Capabilities:
        """Read keywords from every EHLO line after the first (the greeting name)."""
        off = {d.upper() for d in disabled}
        found: dict[str, str] = {}
        for line in reply.lines[1:]:
            words = line.strip().split(None, 1)
            if not words or not _KEYWORD.match(words[0]):
                continue
            key = words[0].upper()
            if key in off:
                continue
            params = words[1] if len(words) > 1 else ""
            if key == "AUTH" and "AUTH" in found:  # "AUTH=LOGIN" variants add up
                params = f"{found['AUTH']} {params}".strip()
            found[key] = params
        for line in reply.lines[1:]:  # old "AUTH=PLAIN LOGIN" form
            if line.upper().startswith("AUTH=") and "AUTH" not in off:
                more = line[5:].strip()
                found["AUTH"] = f"{found.get('AUTH', '')} {more}".strip()
        return cls(found)

    def __getitem__(self, key: str) -> str:
        if not isinstance(key, str):
            raise KeyError(key)
        return self.keywords[key.upper()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keywords)

    def __len__(self) -> int:
        return len(self.keywords)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self.keywords

    def has(self, keyword: str) -> bool:
        """Whether the server offers ``keyword`` (any case), e.g. ``has("STARTTLS")``."""
        return keyword in self

    @property
    def size(self) -> int | None:
        """The SIZE limit in octets, or None when there is none."""
        return self.size_limit

    @functools.cached_property  # read for every message sent; the keywords never change
    def size_limit(self) -> int | None:
        """The SIZE limit, or None when there is none (0, absent, absurd or garbage)."""
        if "SIZE" not in self:
            return None
        text = self.keywords.get("SIZE", "").strip()
        if not text.isdigit() or len(text) > 18:
            return None
        value = int(text)
        return value or None

    @property
    def auth_mechanisms(self) -> list[str]:
        seen: list[str] = []
        for name in self.keywords.get("AUTH", "").upper().split():
            if name not in seen:
                seen.append(name)
        return seen

    def as_dict(self) -> dict[str, str]:
        return dict(self.keywords)


class ReplyParser:
    """Bounded, incremental reply parser: feed bytes, take whole replies.

    What was fed is kept as one ``bytes`` object and a read position: taking a
    line is a slice, and a read that ends on a line end (the usual case) leaves
    nothing to copy. Single-line replies are looked up by their exact bytes
    first, since a server repeats the same few lines ("250 2.1.5 Ok") for every
    message.
    """

    def __init__(
        self, max_line: int = MAX_LINE, max_lines: int = MAX_LINES, max_reply: int = MAX_REPLY
    ) -> None:
        self._data = b""
        self._pos = 0  # start of the first line not yet taken
        self._lines: list[str] = []
        self._code: bytes | None = None
        self._size = 0
        self._max_line, self._max_lines, self._max_reply = max_line, max_lines, max_reply
        # The shared cache only holds lines these limits allow.
        defaults = (max_line, max_lines, max_reply) == (MAX_LINE, MAX_LINES, MAX_REPLY)
        self._short: dict[bytes, Reply] = _SHORT_REPLIES if defaults else {}

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._data):
            self._data, self._pos = bytes(data), 0
        else:
            self._data, self._pos = self._data[self._pos :] + data, 0

    @property
    def buffered(self) -> int:
        return len(self._data) - self._pos + self._size

    def discard(self) -> bytes:
        """Drop everything buffered (used before a TLS handshake)."""
        dropped = self._data[self._pos :]
        self._data, self._pos = b"", 0
        self._lines, self._code, self._size = [], None, 0
        return dropped

    def next_reply(self) -> Reply | None:
        data = self._data
        while True:
            pos = self._pos
            end = data.find(b"\n", pos) + 1
            if not end:
                if len(data) - pos > self._max_line:
                    raise ProtocolError(f"reply line longer than {self._max_line} octets")
                return None
            raw = data[pos:end]
            self._pos = end
            if not self._lines:
                reply = self._short.get(raw)
                if reply is not None:
                    return reply
            reply = self._take_line(raw)
            if reply is not None:
                return reply

    def _take_line(self, raw: bytes) -> Reply | None:
        if len(raw) > self._max_line + 2:
            raise ProtocolError(f"reply line longer than {self._max_line} octets")
        self._size += len(raw)
        if self._size > self._max_reply or len(self._lines) >= self._max_lines:
            raise ProtocolError(
                f"reply too large (over {self._max_lines} lines or {self._max_reply} octets)"
            )
        code, more, text = (_parse_short_line if len(raw) <= 200 else _parse_line)(raw)
        if self._code is not None and code != self._code:
            raise ProtocolError(
                f"reply code changed inside a multi-line reply ({self._code!r} then {code!r})"
            )
        if more:
            self._lines.append(text)
            self._code = code
            return None
        if self._lines:
            self._lines.append(text)
            reply = Reply.from_lines(int(code), self._lines)
        else:
            reply = _single_line_reply(code, text)
            if len(raw) <= 200:
                if len(self._short) >= 256:
                    self._short.clear()
                self._short[raw] = reply
        self._lines, self._code, self._size = [], None, 0
        return reply


def _parse_line(raw: bytes) -> tuple[bytes, bool, str]:
    """One reply line (with its line end): code, whether more lines follow, text."""
    line = raw.rstrip(b"\n").removesuffix(b"\r")
    if b"\x00" in line or b"\r" in line:
        raise ProtocolError(f"malformed reply line {line[:80]!r}")
    match = _REPLY_LINE.match(line)
    if not match:
        raise ProtocolError(f"malformed reply line {line[:80]!r}")
    code, sep, text = match[1], match[2], match[3] or b""
    try:
        return code, sep == b"-", text.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"reply text is not UTF-8: {line[:80]!r}") from None


# Servers repeat the same short lines ("250 2.1.5 Ok") for every message; both are
# pure functions with immutable results (errors are raised, never cached).
_parse_short_line = functools.lru_cache(maxsize=256)(_parse_line)


# Whole single-line replies by their exact bytes (line end included): what
# ReplyParser looks up before parsing. Bounded; emptied when full.
_SHORT_REPLIES: dict[bytes, Reply] = {}


@functools.lru_cache(maxsize=256)
def _single_line_reply(code: bytes, text: str) -> Reply:
    return Reply.from_lines(int(code), [text])


class SmtpProtocol:
    """The SMTP client state machine (see the module docstring for its rules).

    ``send(command)`` returns the bytes to write; ``receive_data(bytes)``
    buffers what the server sent; ``next_reply()`` returns the reply to the
    oldest command still waiting, or None when more bytes are needed.
    """

    def __init__(self) -> None:
        self.state = State.GREETING
        self._parser = ReplyParser()
        self._waiting: deque[Command] = deque([Command("<greeting>", stage="greeting")])
        self._projected = State.GREETING
        self._secrets: tuple[str, ...] = ()

    # -- outgoing -------------------------------------------------------------------

    def send(self, command: Command) -> bytes:
        data = command.render()
        self._check_order(command)
        self._waiting.append(command)
        if transcript.isEnabledFor(logging.DEBUG):
            transcript.debug("C: %s", command.loggable())
        return data

    def send_rendered(self, commands: Iterable[Command], data: bytes) -> None:
        """Pipeline ``commands`` whose bytes ``data`` an earlier ``render()`` of each made.

        For a stream of messages that repeats the same envelope: the order rules and
        the transcript are as for :meth:`send`, only the rendering is not done again.
        """
        waiting, check = self._waiting, self._check_order
        for command in commands:
            check(command)
            waiting.append(command)
        if transcript.isEnabledFor(logging.DEBUG):
            for command in commands:
                transcript.debug("C: %s", command.loggable())

    def send_auth_response(self, encoded: str, stage: str = "auth") -> bytes:
        """A SASL continuation line (base64), logged as ``***``."""
        check_argument(encoded)
        self._waiting.append(Command("", encoded, stage=stage, secret=True))
        transcript.debug("C: ***")
        return encoded.encode("ascii") + b"\r\n"

    def send_data_end(self, stage: str = "data") -> None:
        """Record that the end of the DATA data (``CRLF.CRLF``) goes out now."""
        if self._projected is not State.DATA:
            raise LocalProtocolError(
                f"no message data is in progress (state {self._projected.value})"
            )
        self._waiting.append(Command("<end of data>", stage=stage))
        self._projected = State.READY  # optimistic, like every command: the reply corrects it

    @property
    def data_in_progress(self) -> bool:
        """Whether message data has started and its end has not been sent."""
        return self._projected in _DATA_IN_PROGRESS

    @property
    def closed(self) -> bool:
        """QUIT was sent or the server closed the session (421)."""
        return State.CLOSED in (self.state, self._projected)

    def hide(self, *secrets: str) -> None:
        """Also mask these strings in every reply until :meth:`unhide` (the AUTH
        exchange: a server may echo what it was sent). Longest first, so a secret
        inside another form is never left half-masked."""
        found = {*self._secrets, *(s for s in secrets if s)}
        self._secrets = tuple(sorted(found, key=len, reverse=True))

    def unhide(self) -> None:
        self._secrets = ()

    def _check_order(self, command: Command) -> None:
        verb, state = command.verb, self._projected
        if state is State.CLOSED:
            raise LocalProtocolError("the session is closed")
        if state in _DATA_IN_PROGRESS and verb != "BDAT":
            raise LocalProtocolError(
                f"{verb} is not allowed while message data is in progress (state {state.value})"
            )
        if verb in ("EHLO", "HELO"):
            if state not in (State.CONNECTED, State.READY):
                raise LocalProtocolError(f"{verb} is not allowed in state {state.value}")
            self._projected = State.READY
        elif verb == "MAIL":
            if state is not State.READY:
                raise LocalProtocolError(f"MAIL is not allowed in state {state.value}")
            self._projected = State.MAIL
        elif verb in ("RCPT", "DATA") or (verb == "BDAT" and state is not State.CHUNKING):
            if state is not State.MAIL:
                raise LocalProtocolError(f"{verb} needs a MAIL command first (state {state.value})")
            if verb == "DATA":
                self._projected = State.DATA
        elif verb == "RSET":
            self._projected = State.READY if state is not State.CONNECTED else state
        elif verb == "QUIT":
            self._projected = State.CLOSED
        elif state is State.GREETING:
            raise LocalProtocolError(f"{verb} is not allowed in state {state.value}")
        if verb == "BDAT":
            self._projected = State.READY if _is_last(command) else State.CHUNKING

    # -- incoming -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._parser.feed(data)

    def next_reply(self) -> Reply | None:
        """The reply to the oldest waiting command, or None until it is complete.

        A reply with no command waiting is a :class:`ProtocolError`, except a
        421 (a server may close an idle session, RFC 5321 §3.8).
        """
        if not self._waiting:
            reply = self.unsolicited_reply()
            if reply is None or reply.code == 421:
                return reply
            raise ProtocolError(f"unexpected reply with no command waiting: {reply}")
        reply = self._take()
        if reply is not None:
            self._advance(self._waiting.popleft(), reply)
        return reply

    def unsolicited_reply(self) -> Reply | None:
        """A reply that arrived while no command was waiting, for the caller to judge.

        The session is over either way: a 421 closes it, anything else means the
        server is out of step with us.
        """
        if self._waiting:
            raise LocalProtocolError("a command is waiting for this reply")
        reply = self._take()
        if reply is not None:
            self.state = self._projected = State.CLOSED
        return reply

    def _take(self) -> Reply | None:
        reply = self._parser.next_reply()
        if reply is None:
            return None
        if self._secrets and reply.code != 334:  # a 334 is logged masked and must stay intact
            reply = _masked(reply, self._secrets)
        if transcript.isEnabledFor(logging.DEBUG):
            for line in _loggable_reply(reply):
                transcript.debug("S: %s", line)
        if reply.enhanced and reply.enhanced[0] != _DIGITS[reply.code // 100]:
            log.warning(  # RFC 3463 §2: the basic code wins, which is how it is classified
                "reply %d has the enhanced code %s of another class; classified by %d",
                reply.code,
                reply.enhanced,
                reply.code,
            )
        return reply

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def discard_buffered(self) -> bytes:
        """Drop unread bytes (before TLS starts: a plaintext injection cannot survive)."""
        dropped = self._parser.discard()
        if dropped:
            transcript.debug("S: <discarded %d octets received before TLS>", len(dropped))
        return dropped

    @property
    def has_buffered(self) -> bool:
        return self._parser.buffered > 0

    def tls_started(self) -> None:
        """After STARTTLS the session is new: EHLO must be sent again (RFC 3207)."""
        self.state = self._projected = State.CONNECTED

    def _advance(self, command: Command, reply: Reply) -> None:
        code = reply.code
        ok = 200 <= code < 400
        verb = command.verb
        # The verbs of a mail transaction first: a stream answers them for every message.
        if verb == "RCPT":
            pass  # a refused recipient leaves the transaction as it was
        elif verb == "MAIL":
            self.state = State.MAIL if ok else State.READY
        elif verb == "<end of data>":
            self.state = State.READY
        elif verb == "DATA":
            if code == 354:
                self.state = State.DATA
        elif verb == "<greeting>":
            self.state = State.CONNECTED  # a 554 greeting still expects QUIT (RFC 5321 3.1)
        elif verb in ("EHLO", "HELO"):
            self.state = State.READY if ok else State.CONNECTED
        elif verb == "BDAT" and ok and not _is_last(command):
            self.state = State.CHUNKING
        elif verb == "BDAT" or (verb == "RSET" and ok):
            self.state = State.READY
        elif verb == "QUIT":
            self.state = State.CLOSED
        if code == 421:  # the server is closing the session
            self.state = State.CLOSED
        if not self._waiting:  # the pipeline drained: what we projected is now known
            self._projected = self.state


def _is_last(command: Command) -> bool:
    return "LAST" in command.argument.upper().split()[1:]


def _masked(reply: Reply, secrets: tuple[str, ...]) -> Reply:
    """The reply with every registered secret form replaced by ``***``.

    A server may echo the AUTH argument in its refusal (``535 … AGFsaWNl…``).
    """
    text = reply.text
    for secret in secrets:
        text = text.replace(secret, "***")
    return reply if text == reply.text else Reply(reply.code, text, reply.enhanced)


def _loggable_reply(reply: Reply) -> list[str]:
    """The reply as it came, one line per line (``250-...`` then ``250 ...``)."""
    if reply.code == 334:  # SASL challenges can echo secrets (XOAUTH2 error JSON, SCRAM)
        return ["334 ***"]
    lines = reply.lines
    enhanced = f"{reply.enhanced} " if reply.enhanced else ""
    return [
        f"{reply.code}{'-' if i < len(lines) - 1 else ' '}{enhanced if i == 0 else ''}{text}"
        for i, text in enumerate(lines)
    ]


class LineEndingNormalizer:
    """Turn every bare CR or LF into CRLF, across chunk boundaries.

    ``crlf=True`` says the chunks are known to have CRLF line ends only (a
    ready message, normalised when it was read), so they are not searched
    again; a CRLF split between two chunks is still put back together.
    """

    _BREAK = re.compile(rb"\r\n|\r|\n")

    def __init__(self, *, crlf: bool = False) -> None:
        self._carry = b""
        self._crlf = crlf
        self.ends_with_crlf = True  # an empty message "ends" at a line start

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):  # may be the first half of a CRLF split by the chunking
            data, self._carry = data[:-1], b"\r"
        if not data:
            return b""
        if self._crlf:
            out = data
        else:
            crlf = data.count(b"\r\n")
            if data.count(b"\n") == crlf and data.count(b"\r") == crlf:  # already canonical
                out = data
            else:
                out = self._BREAK.sub(b"\r\n", data)
        self.ends_with_crlf = out.endswith(b"\r\n")
        return out

    def flush(self) -> bytes:
        """What the carry holds, plus a final CRLF when the data did not end a line."""
        out = b"\r\n" if (self._carry or not self.ends_with_crlf) else b""
        self._carry = b""
        self.ends_with_crlf = True
        return out


class DataEncoder:
    """Message data for DATA: CRLF line ends, dot-stuffing, one ``CRLF.CRLF``.

    The order matters and makes the end unambiguous: line endings are fixed
    first, so a smuggled ``\\n.\\n`` becomes ``\\r\\n..\\r\\n`` and can never
    end the data early.
    """

    def __init__(self, *, crlf: bool = False) -> None:
        self._lines = LineEndingNormalizer(crlf=crlf)  # crlf: see LineEndingNormalizer
        self._at_line_start = True
        self.octets = 0  # message octets (before stuffing), what the server stores

    def feed(self, chunk: bytes) -> bytes:
        return self._stuff(self._lines.feed(chunk))

    def end(self) -> bytes:
        return self._stuff(self._lines.flush()) + b".\r\n"

    @staticmethod
    def whole(data: bytes) -> bytes:
        """``feed(data) + end()`` of a fresh ``DataEncoder(crlf=True)``, for a whole
        message already in CRLF form that ends a line (its octets: ``len(data)``).

        The same rules in three steps and no objects: most messages of a stream
        are one such piece.
        """
        if not data.endswith(b"\r\n"):
            raise ValueError("DataEncoder.whole() needs data that ends with CRLF")
        if data.startswith(b"."):
            data = b"." + data
        return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        self.octets += len(data)
        if self._at_line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = data.endswith(b"\r\n")
        return data
