"""A scripted fake SMTP server for the behaviour real servers will not produce on demand.

The server listens on 127.0.0.1 with an ephemeral port. An acceptor thread hands every
connection to its own thread, which runs the *script* for that connection with plain blocking
sockets (so sync clients in the main thread and asyncio clients in any loop can both use it).
Every step is bounded in time, and ``stop()`` ends everything within about a second.

Script = a list of steps run in order for each connection::

    fake = FakeSMTP([
        Send(b"220 fake ESMTP\\r\\n"),
        Expect(rb"EHLO .*"),
        Send(ehlo_reply("PIPELINING", "8BITMIME")),
        Expect(rb"MAIL FROM:<a@b>.*"), Send(b"250 ok\\r\\n"),
        Expect(rb"RCPT TO:<c@d>"), Send(b"250 ok\\r\\n"),
        Expect(rb"DATA"), Send(b"354 go\\r\\n"),
        ReadData(), Send(b"250 queued\\r\\n"),
        Expect(rb"QUIT"), Send(b"221 bye\\r\\n"),
    ])

Steps:

- ``Send(data)``: write raw bytes (nothing is added).
- ``Expect(pattern, timeout=5)``: read ONE command line; ``re.fullmatch(pattern, line)`` (line
  without its CRLF, ``re.DOTALL``). A mismatch, timeout or EOF is recorded in ``errors``; on a
  mismatch the server answers ``500 5.5.1 fake: unexpected command`` and closes.
  A line ending in a bare LF is also recorded as an error.
- ``ReadData(timeout=10)``: read a DATA body up to and including the terminating ``.\\r\\n``;
  the wire bytes (still dot-stuffed, terminator included) are appended to ``fake.data``.
- ``ReadBytes(n, timeout=10)``: read exactly ``n`` bytes (e.g. part of a body, before Close()).
- ``Delay(seconds)``: do nothing (the socket is not read).
- ``Trickle(data, interval=1.0)``: send ``data`` one byte at a time, ``interval`` apart.
- ``StopReading(seconds)``: stop reading for ``seconds``. The listening socket gets a small
  ``SO_RCVBUF`` (4096, or ``FakeSMTP(rcvbuf=...)``) when the script contains this step, so the
  client's writes block soon.
- ``Silent(seconds)``: send nothing but keep reading until ``seconds`` pass or the client
  closes; what arrives is in the transcript but is otherwise ignored (not left for Expect).
  ``[Silent(30)]`` as a whole script = a greeting that never comes.
- ``ExpectClose(timeout=5)``: the client must close without sending anything else.
- ``Close(close_notify=True)``: FIN (``shutdown(SHUT_WR)``; under TLS after a close_notify
  unless ``close_notify=False``) then close; ends the connection.
- ``Reset()``: ``SO_LINGER (1, 0)`` then close -> RST; ends the connection.
- ``StartTLS(context, timeout=5, may_fail=False)``: server-side TLS handshake on the connection
  (also the first step of an implicit-TLS script). Bytes the client sent in plaintext before the
  handshake are recorded as an error (STARTTLS pipelining). A failed handshake ends the
  connection and is an error unless ``may_fail=True``.
- ``Responder(...)``: a rule-driven SMTP server (see its docstring) - most tests need only this.

When the script runs out, the server sends FIN, reads what is left (up to 1 s) and closes.

``FakeSMTP(script, host="127.0.0.1", port=0)`` (port 0: ephemeral; a fixed address and port
let it stand in for an MX host of the direct-delivery tests) where ``script`` is a list of
steps (run for every connection), a single ``Responder``, or a callable
``f(connection_index) -> list of steps``.

Records (per connection lists are indexed by accept order):

- ``connections``: number of accepted connections.
- ``transcript[i]``: every byte received (after TLS: decrypted); ``sent[i]``: every byte sent.
- ``reads[i]``: number of ``recv()`` calls that returned data (pipelining proof).
- ``commands[i]``: command lines (without CRLF) read by Expect / Responder.
- ``data``: DATA bodies (wire bytes incl. ``.\\r\\n``) and BDAT messages (chunks joined), in
  order of completion; ``chunks``: every BDAT chunk.
- ``errors``: everything the script did not expect; ``assert_ok()`` raises if non-empty.
- ``events``: informational notes (peer reset, TLS handshake failure, ...).

Fixtures: ``fake_smtp`` (a factory ``make(script, **kwargs) -> started FakeSMTP``; all are
stopped at teardown and, unless ``make(..., check=False)``, their ``errors`` fail the test),
``closed_port`` (nothing listens), ``blackhole_port`` (connect hangs: full ``listen(0)``
backlog), ``silent_port`` (accepts, never sends a greeting).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

_SLICE = 0.1  # seconds: how often blocked reads look at the stop flag
MAX_LINE = 1 << 20
MAX_DATA = 64 << 20


class _Ended(Exception):
    """The connection is over (closed by us, by the peer, or by stop())."""


def ehlo_reply(*capabilities: str, hostname: str = "fake.test", code: int = 250) -> bytes:
    """Build a multi-line EHLO reply: ``250-hostname`` then one line per capability."""
    lines = [hostname, *capabilities]
    out = [
        f"{code}{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
        for i, text in enumerate(lines)
    ]
    return b"".join(out)


def steps_to_data(*capabilities: str) -> list[Step]:
    """Greeting, EHLO, one MAIL and one RCPT accepted, DATA answered 354: the usual
    way into a message body, for scripts that then misbehave during or after it."""
    return [
        Send(b"220 hi\r\n"),
        Expect(rb"EHLO .*"),
        Send(ehlo_reply(*capabilities)),
        Expect(rb"MAIL .*"),
        Send(b"250 ok\r\n"),
        Expect(rb"RCPT .*"),
        Send(b"250 ok\r\n"),
        Expect(rb"DATA"),
        Send(b"354 go\r\n"),
    ]


def _as_bytes(reply: bytes | str) -> bytes:
    data = reply.encode() if isinstance(reply, str) else bytes(reply)
    if not data.endswith(b"\n"):
        data += b"\r\n"
    return data


# --------------------------------------------------------------------------- connection


class _Conn:
    """One accepted connection, driven by its own thread."""

    def __init__(self, server: FakeSMTP, index: int, sock: socket.socket) -> None:
        self.server = server
        self.index = index
        self.sock: socket.socket = sock
        self.buf = bytearray()
        self.tls = False
        self.bdat_parts: list[bytes] = []
        self.closed = False

    # -- recording
    def error(self, msg: str) -> None:
        self.server.errors.append(f"conn#{self.index}: {msg}")

    def event(self, msg: str) -> None:
        self.server.events.append(f"conn#{self.index}: {msg}")

    # -- low level
    def _check_stop(self) -> None:
        if self.server._stopping.is_set():
            raise _Ended("server stopping")

    def recv_some(self, deadline: float) -> bytes:
        """One recv(); b"" on EOF; raises TimeoutError at the deadline, _Ended on stop."""
        while True:
            self._check_stop()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(min(_SLICE, remaining))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.event(f"recv: {exc!r}")
                return b""
            except OSError as exc:
                if self.server._stopping.is_set():
                    raise _Ended("server stopping") from exc
                self.event(f"recv: {exc!r}")
                return b""
            if chunk:
                self.server._transcript[self.index] += chunk
                self.server.reads[self.index] += 1
            return chunk

    def fill(self, deadline: float, what: str) -> None:
        """Read more into the buffer; EOF/timeout are recorded as errors and end the conn."""
        try:
            chunk = self.recv_some(deadline)
        except TimeoutError:
            self.error(f"timed out waiting for {what}")
            raise _Ended("timeout") from None
        if not chunk:
            self.error(f"connection closed by client while waiting for {what}")
            raise _Ended("eof")
        self.buf += chunk

    def read_line(self, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                raw = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                if not raw.endswith(b"\r\n"):
                    self.error(f"line not terminated by CRLF: {raw!r}")
                    line = raw[:-1]
                else:
                    line = raw[:-2]
                self.server.commands[self.index].append(line)
                return line
            if len(self.buf) > MAX_LINE:
                self.error(f"line longer than {MAX_LINE} bytes")
                raise _Ended("line too long")
            self.fill(deadline, what)

    def read_exact(self, n: int, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self.fill(deadline, what)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_data(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            # The CRLF that ended the DATA command counts as the start of the terminator,
            # so an empty body is just b".\r\n".
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                end = i + 5
                break
            if len(self.buf) > MAX_DATA:
                self.error("DATA body larger than MAX_DATA")
                raise _Ended("data too large")
            self.fill(deadline, "end of DATA (CRLF.CRLF)")
        body = bytes(self.buf[:end])
        del self.buf[:end]
        self.server.data.append(body)
        return body

    def send(self, data: bytes) -> None:
        self._check_stop()
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.event(f"send failed: {exc!r}")
            raise _Ended("send failed") from exc
        self.server._sent[self.index] += data

    def wait(self, seconds: float) -> None:
        if self.server._stopping.wait(seconds):
            raise _Ended("server stopping")

    def close(self, *, drain: float = 0.0, close_notify: bool = True) -> None:
        """FIN (after a TLS close_notify), read what is left for ``drain`` s, then close."""
        if self.closed:
            return
        self.closed = True
        raw_read = False
        if isinstance(self.sock, ssl.SSLSocket):
            raw_read = True  # after our close_notify, whatever arrives is not recorded
            if close_notify:
                try:
                    self.sock.settimeout(0.3)
                    self.sock.unwrap()  # sends close_notify; waits briefly for the peer's
                except (OSError, ValueError):
                    pass
        with contextlib.suppress(OSError):
            # socket.socket.shutdown: on an SSLSocket this skips the TLS layer (raw FIN).
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        if drain > 0:
            deadline = time.monotonic() + drain
            try:
                if raw_read:
                    while (left := deadline - time.monotonic()) > 0:
                        self.sock.settimeout(min(_SLICE, left))
                        try:
                            if not socket.socket.recv(self.sock, 65536):
                                break
                        except TimeoutError:
                            continue
                else:
                    while self.recv_some(deadline):
                        pass
            except (TimeoutError, _Ended, OSError):
                pass
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()

    def run_steps(self, steps: Sequence[Step]) -> None:
        for step in steps:
            step.run(self)


# --------------------------------------------------------------------------- steps


class Step:
    """Base class: a step is anything with ``run(conn)``; raise ``_Ended`` to stop."""

    def run(self, c: _Conn) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Send(Step):
    data: bytes

    def run(self, c: _Conn) -> None:
        c.send(self.data)


@dataclass
class Expect(Step):
    pattern: bytes
    timeout: float = 5.0

    def run(self, c: _Conn) -> None:
        line = c.read_line(self.timeout, f"a line matching {self.pattern!r}")
        if re.fullmatch(self.pattern, line, re.DOTALL) is None:
            c.error(f"expected {self.pattern!r}, got {line!r}")
            try:
                c.send(b"500 5.5.1 fake: unexpected command\r\n")
            finally:
                c.close(drain=0.2)
            raise _Ended("unexpected command")


@dataclass
class ReadData(Step):
    timeout: float = 10.0

    def run(self, c: _Conn) -> None:
        c.read_data(self.timeout)


@dataclass
class ReadBytes(Step):
    n: int
    timeout: float = 10.0

    def run(self, c: _Conn) -> None:
        c.read_exact(self.n, self.timeout, f"{self.n} bytes")


@dataclass
class Delay(Step):
    seconds: float

    def run(self, c: _Conn) -> None:
        c.wait(self.seconds)


@dataclass
class Trickle(Step):
    data: bytes
    interval: float = 1.0

    def run(self, c: _Conn) -> None:
        for i in range(len(self.data)):
            if i:
                c.wait(self.interval)
            c.send(self.data[i : i + 1])


@dataclass
class StopReading(Step):
    seconds: float

    def run(self, c: _Conn) -> None:
        c.wait(self.seconds)


@dataclass
class Silent(Step):
    seconds: float

    def run(self, c: _Conn) -> None:
        c.buf.clear()
        deadline = time.monotonic() + self.seconds
        while True:
            try:
                chunk = c.recv_some(deadline)
            except TimeoutError:
                return
            if not chunk:
                c.event("client closed during Silent")
                c.close()
                raise _Ended("eof")


@dataclass
class ExpectClose(Step):
    timeout: float = 5.0

    def run(self, c: _Conn) -> None:
        if c.buf:
            c.error(f"expected close, but client had sent {bytes(c.buf)!r}")
            c.buf.clear()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                chunk = c.recv_some(deadline)
            except TimeoutError:
                c.error("expected the client to close, it did not")
                raise _Ended("timeout") from None
            if not chunk:
                c.close()
                raise _Ended("eof")
            c.error(f"expected close, but client sent {chunk!r}")


@dataclass
class Close(Step):
    close_notify: bool = True  # False: drop the TCP connection without a TLS close_notify

    def run(self, c: _Conn) -> None:
        c.close(close_notify=self.close_notify)
        raise _Ended("closed")


@dataclass
class Reset(Step):
    def run(self, c: _Conn) -> None:
        c.reset()
        raise _Ended("reset")


@dataclass
class StartTLS(Step):
    context: ssl.SSLContext
    timeout: float = 5.0
    may_fail: bool = False

    def run(self, c: _Conn) -> None:
        if c.buf:
            c.error(f"plaintext bytes pipelined before the TLS handshake: {bytes(c.buf)!r}")
            c.buf.clear()
        raw = c.sock
        raw.settimeout(self.timeout)
        try:
            tls = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            c.sock = tls
            tls.do_handshake()
        except (OSError, ValueError) as exc:
            if self.may_fail:
                c.event(f"TLS handshake failed: {exc!r}")
            else:
                c.error(f"TLS handshake failed: {exc!r}")
            c.reset()
            raise _Ended("tls failed") from exc
        c.tls = True
        c.event(f"TLS established: {tls.version()}")


ReplyValue = bytes | str | Sequence[Step]
Reply = ReplyValue | Callable[[bytes, int], ReplyValue]

DEFAULT_CAPABILITIES = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 10485760")


@dataclass
class Responder(Step):
    """A small rule-driven ESMTP server (the rest of the connection is handled by it).

    Defaults: EHLO -> ``ehlo_reply(*capabilities)`` (+ ``STARTTLS`` when ``tls_context`` is set
    and TLS is not up yet; after TLS ``caps_after_tls`` if given); HELO/MAIL/RCPT/RSET/NOOP ->
    250; DATA -> 354, body recorded in ``fake.data``, then ``data_reply``; ``BDAT n [LAST]`` ->
    the chunk is read and recorded in ``fake.chunks``, 250, and after LAST the joined message
    goes to ``fake.data`` and ``data_reply`` is sent; STARTTLS -> 220 + handshake if
    ``tls_context`` else 502; AUTH -> 504 (give a rule); QUIT -> 221 and close; anything else
    -> 502 (an error in ``fake.errors`` if ``strict``).

    ``replies`` maps a command prefix (case-insensitive, longest prefix wins, e.g. ``"RCPT"``,
    ``"RCPT TO:<bad@x.test>"``) to a reply: bytes/str (CRLF appended if missing), a list of
    steps (e.g. ``[Send(b"354 go\\r\\n"), ReadBytes(100), Reset()]``), or a callable
    ``f(line, n) -> reply`` where ``n`` counts earlier matches of that key on this connection.
    """

    capabilities: Sequence[str] = DEFAULT_CAPABILITIES
    replies: Mapping[str, Reply] = field(default_factory=dict)
    greeting: bytes | str | None = b"220 fake.test ESMTP fake\r\n"
    hostname: str = "fake.test"
    tls_context: ssl.SSLContext | None = None
    caps_after_tls: Sequence[str] | None = None
    data_reply: Reply = b"250 2.0.0 Ok: queued as FAKE\r\n"
    strict: bool = False
    timeout: float = 10.0

    def _send_reply(self, c: _Conn, reply: Reply, line: bytes, n: int) -> None:
        if callable(reply):
            reply = reply(line, n)
        if isinstance(reply, bytes | str):
            c.send(_as_bytes(reply))
        else:
            c.run_steps(reply)

    def run(self, c: _Conn) -> None:
        counts: dict[str, int] = {}
        if self.greeting is not None:
            c.send(_as_bytes(self.greeting))
        while True:
            line = c.read_line(self.timeout, "a command")
            upper = line.upper()
            matches = [k for k in self.replies if upper.startswith(k.upper().encode())]
            if matches:
                key = max(matches, key=len)
                n = counts.get(key, 0)
                counts[key] = n + 1
                self._send_reply(c, self.replies[key], line, n)
                continue
            verb = upper.split(b" ", 1)[0]
            if verb == b"EHLO":
                caps = list(self.capabilities)
                if c.tls and self.caps_after_tls is not None:
                    caps = list(self.caps_after_tls)
                if self.tls_context is not None and not c.tls:
                    caps.append("STARTTLS")
                c.send(ehlo_reply(*caps, hostname=self.hostname))
            elif verb == b"HELO":
                c.send(f"250 {self.hostname}\r\n".encode())
            elif verb == b"MAIL":
                c.bdat_parts.clear()
                c.send(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                c.send(b"250 2.1.5 Ok\r\n")
            elif verb in (b"RSET", b"NOOP"):
                c.bdat_parts.clear()
                c.send(b"250 2.0.0 Ok\r\n")
            elif verb == b"DATA":
                c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                c.read_data(self.timeout)
                self._send_reply(c, self.data_reply, line, 0)
            elif verb == b"BDAT":
                self._bdat(c, line)
            elif verb == b"STARTTLS" and self.tls_context is not None and not c.tls:
                c.send(b"220 2.0.0 Ready to start TLS\r\n")
                StartTLS(self.tls_context).run(c)
            elif verb == b"AUTH":
                c.send(b"504 5.5.4 fake: AUTH not configured\r\n")
            elif verb == b"QUIT":
                c.send(b"221 2.0.0 Bye\r\n")
                c.close(drain=0.5)
                raise _Ended("quit")
            else:
                if self.strict:
                    c.error(f"unexpected command {line!r}")
                c.send(b"502 5.5.2 fake: command not recognized\r\n")

    def _bdat(self, c: _Conn, line: bytes) -> None:
        parts = line.split()
        try:
            size = int(parts[1])
            last = len(parts) > 2 and parts[2].upper() == b"LAST"
            if size < 0 or len(parts) > 3 or (len(parts) == 3 and not last):
                raise ValueError
        except (IndexError, ValueError):
            c.error(f"malformed BDAT: {line!r}")
            c.send(b"501 5.5.4 fake: syntax error in BDAT\r\n")
            return
        chunk = c.read_exact(size, self.timeout, f"BDAT chunk of {size} bytes")
        c.server.chunks.append(chunk)
        c.bdat_parts.append(chunk)
        if last:
            c.server.data.append(b"".join(c.bdat_parts))
            c.bdat_parts.clear()
            self._send_reply(c, self.data_reply, line, 0)
        else:
            c.send(f"250 2.0.0 {size} octets received\r\n".encode())


# --------------------------------------------------------------------------- server

Script = Sequence[Step] | Step | Callable[[int], Sequence[Step]]


def _contains(steps: object, kind: type) -> bool:
    if isinstance(steps, kind):
        return True
    if isinstance(steps, Sequence) and not isinstance(steps, bytes | str):
        return any(_contains(s, kind) for s in steps)
    return False


class FakeSMTP:
    """The scripted server. Use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(
        self,
        script: Script,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rcvbuf: int | None = None,
        end_drain: float = 1.0,
    ) -> None:
        self.script = script
        self.host = host
        self.port = port  # 0: an ephemeral port
        if rcvbuf is None and _contains(script, StopReading):
            rcvbuf = 4096
        self.rcvbuf = rcvbuf
        self.end_drain = end_drain
        self.connections = 0
        self._transcript: list[bytearray] = []
        self._sent: list[bytearray] = []
        self.reads: list[int] = []
        self.commands: list[list[bytes]] = []
        self.data: list[bytes] = []
        self.chunks: list[bytes] = []
        self.errors: list[str] = []
        self.events: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # -- public views
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def transcript(self) -> list[bytes]:
        return [bytes(t) for t in self._transcript]

    @property
    def sent(self) -> list[bytes]:
        return [bytes(t) for t in self._sent]

    def __repr__(self) -> str:
        return f"<FakeSMTP {self.host}:{self.port} connections={self.connections}>"

    # -- lifecycle
    def start(self) -> FakeSMTP:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        lsock.bind((self.host, self.port))
        lsock.listen(16)
        lsock.settimeout(_SLICE)
        self._listener = lsock
        self.port = lsock.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"fakesmtp-accept-{self.port}", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, end every connection; returns within about ``timeout`` s."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        for c in list(self._conns):
            if not c.closed:
                c.reset()
        for t in list(self._threads):
            t.join(0.5)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")

    def __enter__(self) -> FakeSMTP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def join(self, timeout: float = 5.0) -> bool:
        """Wait until every connection accepted so far has finished its script."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def wait_connections(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.connections < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def assert_ok(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for the connections to finish, then fail on any recorded error."""
        if not self.join(timeout):
            self.errors.append(f"connections still running after {timeout}s")
        if self.errors:
            lines = "\n  ".join(self.errors)
            notes = "\n  ".join(self.events)
            raise AssertionError(f"fake SMTP server saw problems:\n  {lines}\nevents:\n  {notes}")

    # -- internals
    def _steps_for(self, index: int) -> Sequence[Step]:
        script = self.script
        if isinstance(script, Step):
            return [script]
        if callable(script):
            return script(index)
        return script

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = self.connections
                self._transcript.append(bytearray())
                self._sent.append(bytearray())
                self.reads.append(0)
                self.commands.append([])
                conn = _Conn(self, index, sock)
                self._conns.append(conn)
                t = threading.Thread(
                    target=self._serve,
                    args=(conn,),
                    name=f"fakesmtp-{self.port}-{index}",
                    daemon=True,
                )
                self._threads.append(t)
                self.connections += 1
            t.start()

    def _serve(self, c: _Conn) -> None:
        try:
            c.run_steps(self._steps_for(c.index))
            c.close(drain=self.end_drain)
        except _Ended:
            pass
        except Exception as exc:  # a bug in a step or a custom reply: surface it
            c.error(f"script raised {exc!r}")
        finally:
            if not c.closed:
                c.reset()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_smtp() -> Iterator[Callable[..., FakeSMTP]]:
    """Factory ``make(script, *, check=True, **FakeSMTP_kwargs) -> started FakeSMTP``."""
    made: list[tuple[FakeSMTP, bool]] = []

    def make(script: Script, *, check: bool = True, **kwargs: object) -> FakeSMTP:
        fake = FakeSMTP(script, **kwargs)  # type: ignore[arg-type]
        fake.start()
        made.append((fake, check))
        return fake

    yield make
    problems = []
    for fake, check in made:
        fake.stop()
        if check and fake.errors:
            problems.append(f"{fake!r}: " + "; ".join(fake.errors))
    if problems:
        pytest.fail("fake SMTP server errors:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port on which nothing listens (connect -> ConnectionRefusedError)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A 127.0.0.1 port where connect() hangs: listen(0), accept queue filled, SYNs dropped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(64):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.fail("could not fill the listen backlog")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never sends a greeting (30 s max)."""
    with FakeSMTP([Silent(30)], end_drain=0) as fake:
        yield fake.port
