"""The fault catalogue (``fault-catalogue.md``), one named test per scenario.

Each test name carries its catalogue ID (``test_S3_...``). Scenarios that an
existing test already proves exactly are not repeated here; ``docs/guarantees.md``
maps every ID to its tests (or says why it does not apply yet).

The assertions common to every case (catalogue §3 preamble) live in
:func:`check_failure`: exactly one typed error with ``.stage`` (and ``.reply``
where the server sent one); no bytes written after the failure point; no
:class:`SubmitResult` unless a 2xx followed the final dot; and the secret canary
— the password of every fake-server test, plus its base64 and SASL forms — in
no log record, exception text or ``repr``.

Fault flags of Postfix's ``smtp-sink`` (see ``real-servers.md`` §4) provide a
second, independent server for the faults it can produce.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import (
    DSN,
    AsyncClient,
    Attachment,
    AuthError,
    Client,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    Message,
    MessageError,
    Option,
    Progress,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    Server,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    SubmitResult,
)
from smtpsubmit.envelope import check_envelope_address
from tests import drivers
from tests.drivers import RAW, call
from tests.servers.fakesmtp import (
    DEFAULT_CAPABILITIES,
    Close,
    Delay,
    Expect,
    ReadBytes,
    ReadData,
    Reset,
    Responder,
    Send,
    Silent,
    Step,
    Trickle,
    _Conn,
    _Ended,
    ehlo_reply,
)

SENDER = "a@example.org"
RCPT = ["b@example.org"]
USER = "user"
CANARY = "S3cr3t-CANARY"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# The canary and the forms it takes on the wire (AUTH PLAIN, LOGIN, bare base64).
SECRET_FORMS = [
    CANARY,
    _b64(CANARY),
    _b64(f"\0{USER}\0{CANARY}"),
    _b64(f"{USER}\0{USER}\0{CANARY}"),
]

AUTH_CAPS = (*DEFAULT_CAPABILITIES, "AUTH PLAIN")
AUTH_OK = {"AUTH": "235 2.7.0 Authentication successful"}


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every ``smtpsubmit`` log record, transcript included, at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="smtpsubmit")
    return caplog


def server_for(fake: Any, *, credentials: bool = True, **kw: Any) -> Server:
    """A server for the fake; with the canary as password unless ``credentials=False``."""
    kw.setdefault("timeout", 2)
    if credentials:
        kw.setdefault("username", USER)
        kw.setdefault("password", CANARY)
    return drivers.server_for(fake, **kw)


def responder(**kw: Any) -> Responder:
    """The rule-driven fake, advertising AUTH PLAIN and accepting the canary."""
    kw.setdefault("capabilities", AUTH_CAPS)
    kw["replies"] = {**AUTH_OK, **kw.get("replies", {})}
    return Responder(**kw)


def opening(*caps: str, greeting: bytes = b"220 fake ESMTP\r\n") -> list[Step]:
    """Greeting, EHLO and a successful AUTH PLAIN, as scripted steps."""
    return [
        Send(greeting),
        Expect(rb"EHLO client\.test"),
        Send(ehlo_reply(*caps, "AUTH PLAIN")),
        Expect(rb"AUTH PLAIN \S+"),
        Send(b"235 2.7.0 ok\r\n"),
    ]


def assert_no_secret(logs: pytest.LogCaptureFixture, *objects: object) -> None:
    """The canary is in no log record and in no ``str``/``repr`` of ``objects``
    (exceptions are followed along their cause and context chains)."""
    texts = [record.getMessage() for record in logs.records]
    texts += [str(record.args) for record in logs.records]
    for obj in objects:
        seen: set[int] = set()
        while obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            texts += [str(obj), repr(obj)]
            if isinstance(obj, BaseException):
                texts += [str(arg) for arg in obj.args]
                obj = obj.__cause__ or obj.__context__
            else:
                obj = None
    for text in texts:
        for form in SECRET_FORMS:
            assert form not in text, f"secret leaked: {text!r}"


def check_failure(
    info: pytest.ExceptionInfo[BaseException],
    kind: type[SmtpError],
    *,
    stage: str,
    code: int | None = None,
    logs: pytest.LogCaptureFixture,
    temporary: bool | None = None,
) -> SmtpError:
    """The assertions common to every catalogue case, for the raised error."""
    err = info.value
    assert isinstance(err, kind), f"expected {kind.__name__}, got {err!r}"
    assert err.stage == stage, err
    if code is None:
        assert err.reply is None or err.reply.code >= 400, err
    else:
        assert err.reply is not None and err.reply.code == code, err
    if temporary is not None:
        assert err.is_temporary is temporary, err
    assert_no_secret(logs, err)
    return err


def wire_ends_with(fake: Any, tail: bytes, index: int = 0) -> None:
    """Nothing was written after ``tail`` (the command at the failure point)."""
    assert fake.join(5), "the fake server did not finish"
    assert fake.transcript[index].endswith(tail), fake.transcript[index][-300:]


def submit(driver: Any, fake: Any, message: Any = RAW, **kw: Any) -> Any:
    server = kw.pop("server", None) or server_for(fake)
    if isinstance(message, bytes):
        kw.setdefault("sender", SENDER)
        kw.setdefault("recipients", RCPT)
    return driver.submit(message, server, **kw)


def idle_then(
    driver: Any, server: Server, pause: float, method: str, *args: Any, **kwargs: Any
) -> Any:
    """Connect, stay idle for ``pause`` s, then call one client method; its result or
    error, and whether the client still holds its connection afterwards."""
    if driver.name == "sync":
        with Client(server) as client:
            time.sleep(pause)
            try:
                return getattr(client, method)(*args, **kwargs), client.is_connected
            except SmtpError as exc:
                return exc, client.is_connected

    async def main() -> Any:
        async with AsyncClient(server) as client:
            await asyncio.sleep(pause)
            try:
                return await getattr(client, method)(*args, **kwargs), client.is_connected
            except SmtpError as exc:
                return exc, client.is_connected

    return asyncio.run(main())


# --------------------------------------------------------------------------- fake steps


@dataclass
class Stream(Step):
    """Send ``unit`` over and over (up to ``total`` octets) until the client gives up."""

    unit: bytes
    total: int = 64 << 20
    batch: int = 1000

    def run(self, c: _Conn) -> None:
        block = self.unit * self.batch
        sent = 0
        while sent < self.total:
            c.send(block)  # raises _Ended once the client has closed
            sent += len(block)


@dataclass
class SlowReader(Step):
    """Read one byte every ``interval`` s for at most ``seconds`` (a trickling reader)."""

    seconds: float
    interval: float = 0.1

    def run(self, c: _Conn) -> None:
        c.buf.clear()
        deadline = time.monotonic() + self.seconds
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        while time.monotonic() < deadline:
            c.wait(self.interval)
            c.sock.settimeout(self.interval)
            try:
                if not c.sock.recv(1):
                    raise _Ended("eof")
            except TimeoutError:
                continue
            except OSError as exc:
                raise _Ended("reset") from exc


@dataclass
class Sink(Step):
    """Read a DATA body without keeping it (for bodies too large for ``ReadData``),
    pausing ``pause`` s once ``pause_after`` octets have arrived."""

    pause_after: int = 0
    pause: float = 0.0
    received: list[int] = field(default_factory=list)

    def run(self, c: _Conn) -> None:
        tail, count, paused = bytes(c.buf), len(c.buf), False
        c.buf.clear()
        deadline = time.monotonic() + 30
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = c.recv_some(deadline)
            if not chunk:
                raise _Ended("eof")
            count += len(chunk)
            tail = (tail + chunk)[-5:]
            if self.pause and not paused and count >= self.pause_after:
                paused = True
                c.wait(self.pause)
        self.received.append(count)


def ReadBytesOf(line: bytes) -> ReadBytes:
    """Read the chunk announced by a ``BDAT n [LAST]`` line."""
    return ReadBytes(int(line.split()[1]))


# --------------------------------------------------------------------------- smtp-sink

SMTP_SINK = "/usr/sbin/smtp-sink"
needs_sink = pytest.mark.skipif(
    not os.path.exists(SMTP_SINK), reason="Postfix's smtp-sink is not installed"
)


@dataclass
class Sink_:
    host: str
    port: int
    dump: Path

    def dumps(self, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        """The dumped messages, oldest first, once ``count`` are there (or at the
        timeout; ``count=0`` waits the whole timeout). smtp-sink removes the file of
        an aborted transaction, so files may vanish while we look."""
        deadline = time.monotonic() + timeout
        while True:
            if (count and len(self._read()) >= count) or time.monotonic() > deadline:
                time.sleep(0.1)  # let the last write finish
                return self._read()
            time.sleep(0.05)

    def _read(self) -> list[bytes]:
        found = []
        for path in self.dump.iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime_ns, path.name, path.read_bytes()))
        return [data for _, _, data in sorted(found)]

    def server(self, **kw: Any) -> Server:
        kw.setdefault("timeout", 2)
        kw.setdefault("options", Option.EXTENDED)
        return Server(self.host, port=self.port, local_hostname="client.test", **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink_]]:
    """Factory ``start(*flags) -> Sink_``: smtp-sink on a free port, dumping each message
    into its own file; killed by PID at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    dirs: list[str] = []

    def start(*flags: str, dump: bool = True) -> Sink_:
        where = tempfile.mkdtemp(prefix="smtp-sink-")
        dirs.append(where)
        os.chmod(where, 0o777)  # smtp-sink writes as "nobody"
        dumping = ["-d", f"{where}/%Y%m%d%H%M%S."] if dump else []
        for _ in range(5):  # the free port can be taken between the probe and the bind
            port = _free_port()
            args = [SMTP_SINK, "-u", "nobody", *dumping, *flags]
            proc = subprocess.Popen(
                [*args, f"127.0.0.1:{port}", "64"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            started.append(proc)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    # A probe connection with no command is a session smtp-sink logs and drops.
                    return Sink_("127.0.0.1", port, Path(where))
                time.sleep(0.05)
            proc.kill()
            proc.wait(5)
        pytest.fail("smtp-sink did not start")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    for where in dirs:
        shutil.rmtree(where, ignore_errors=True)


# =========================================================================== 3.1 bad server input


def test_S1_greeting_never_arrives(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """SmtpTimeout(stage=greeting) within the timeout; nothing written; socket closed."""
    fake = fake_smtp([Silent(10)], check=False)
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, server=server_for(fake, timeout=1))
    assert time.monotonic() - started < 2.5
    check_failure(info, SmtpTimeout, stage="greeting", logs=logs)
    assert fake.join(3), "the client did not close the socket"
    assert fake.transcript[0] == b""
    assert any("client closed" in event for event in fake.events)


@pytest.mark.parametrize(("code", "temporary"), [(554, False), (421, True)])
def test_S2_refusing_greeting_gets_quit_only(
    driver: Any, fake_smtp: Any, logs: Any, code: int, temporary: bool
) -> None:
    """ConnectError with the reply; QUIT attempted; no EHLO, no AUTH."""
    fake = fake_smtp([Send(f"{code} 5.3.2 go away\r\n".encode()), Silent(1)], check=False)
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    check_failure(info, ConnectError, stage="greeting", code=code, logs=logs, temporary=temporary)
    assert fake.join(3)
    # 554: QUIT as RFC 5321 §3.1 asks; 421: the server is already closing, QUIT optional.
    assert fake.transcript[0] in ((b"QUIT\r\n",) if code == 554 else (b"QUIT\r\n", b""))


@needs_sink
@pytest.mark.parametrize(("flag", "code", "temporary"), [("-f", 500, False), ("-Q", 421, True)])
def test_S2_smtp_sink_refuses_the_connection(
    driver: Any, smtp_sink: Any, logs: Any, flag: str, code: int, temporary: bool
) -> None:
    sink = smtp_sink(flag, "connect")
    with pytest.raises(SmtpError) as info:
        driver.submit(RAW, sink.server(), sender=SENDER, recipients=RCPT)
    check_failure(info, ConnectError, stage="greeting", code=code, logs=logs, temporary=temporary)
    assert sink.dumps(0, timeout=0.2) == []


def test_S3_endless_continuation(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """``250-x`` forever: ProtocolError at the reply cap; memory bounded; nothing more
    written after EHLO (no AUTH, no QUIT on a broken connection)."""
    fake = fake_smtp(
        [Send(b"220 fake\r\n"), Expect(rb"EHLO client\.test"), Stream(b"250-x\r\n")], check=False
    )
    tracemalloc.start()
    try:
        with pytest.raises(SmtpError) as info:
            submit(driver, fake)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = check_failure(info, ProtocolError, stage="ehlo", logs=logs)
    assert "too large" in str(err)
    assert peak < 16 << 20, f"peak {peak} octets"
    wire_ends_with(fake, b"EHLO client.test\r\n")


def test_S4_reply_line_without_crlf(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """``2`` x 1 MB with no line end: ProtocolError at the 4 KiB line cap."""
    fake = fake_smtp([Stream(b"2", total=1 << 20, batch=4096)], check=False)
    tracemalloc.start()
    try:
        with pytest.raises(SmtpError) as info:
            submit(driver, fake)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = check_failure(info, ProtocolError, stage="greeting", logs=logs)
    assert "longer than" in str(err)
    assert peak < 16 << 20, f"peak {peak} octets"
    assert fake.join(5)
    assert fake.transcript[0] == b""


def test_S5_trickled_ehlo_reply(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """Every byte arrives within the timeout, the reply as a whole does not."""
    fake = fake_smtp(
        [
            Send(b"220 fake\r\n"),
            Expect(rb"EHLO client\.test"),
            Trickle(b"250-fake.test\r\n250 PIPELINING\r\n", interval=0.1),
        ],
        check=False,
    )
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, server=server_for(fake, timeout=1))
    assert time.monotonic() - started < 2
    check_failure(info, SmtpTimeout, stage="ehlo", logs=logs)
    wire_ends_with(fake, b"EHLO client.test\r\n")


def test_S5_trickled_final_reply_is_delivery_status_unknown(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """The deadline also bounds the answer to the final dot, which then leaves the
    delivery unknown (never a plain timeout that invites a blind retry)."""
    slow = [Send(b"354 go\r\n"), ReadData(), Trickle(b"250 2.0.0 queued as X\r\n", 0.1)]
    fake = fake_smtp(responder(replies={"DATA": slow}), check=False)
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, server=server_for(fake, timeout=1))
    assert time.monotonic() - started < 2.5
    check_failure(info, DeliveryStatusUnknown, stage="data", logs=logs, temporary=True)
    assert len(fake.data) == 1
    wire_ends_with(fake, b"\r\n.\r\n")  # no QUIT, no RSET on a connection in doubt


def test_S5_trickling_reader_cannot_hold_a_write(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """A server that reads one byte at a time: the blocked write times out."""
    script = [
        *opening(),
        Expect(rb"MAIL .*"),
        Send(b"250 ok\r\n"),
        Expect(rb"RCPT .*"),
        Send(b"250 ok\r\n"),
        Expect(rb"DATA"),
        Send(b"354 go\r\n"),
        SlowReader(8),
    ]
    fake = fake_smtp(script, check=False, rcvbuf=1024)
    body = RAW + b"w" * 20_000_000
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, body, server=server_for(fake, timeout=1))
    assert time.monotonic() - started < 3.5
    check_failure(info, SmtpTimeout, stage="data", logs=logs, temporary=True)
    assert not isinstance(info.value, DeliveryStatusUnknown)  # the dot never went out


def test_S5_write_after_a_slow_reply_gets_the_full_timeout(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """A reply that used most of the timeout must not shorten the next blocked write
    (the per-reply deadline is not the write deadline)."""
    sink = Sink(pause_after=6_000_000, pause=0.6)
    fake = fake_smtp(
        responder(
            capabilities=("AUTH PLAIN",),
            replies={
                "DATA": [Trickle(b"354 go\r\n", 0.11), sink, Send(b"250 ok\r\n")],
            },
        ),
        rcvbuf=4096,
    )
    result = submit(driver, fake, RAW + b"v" * 20_000_000, server=server_for(fake, timeout=1))
    assert isinstance(result, SubmitResult) and result.reply.code == 250
    assert_no_secret(logs, result)


MALFORMED = [
    b"25\r\n",
    b"2x0 hi\r\n",
    b"250-a\r\n251 b\r\n",
    b"250 nul\x00\r\n",
    b"250 \xff\xfe\r\n",
]


@pytest.mark.parametrize("bad", MALFORMED, ids=["short", "2x0", "mixed", "nul", "not-utf8"])
def test_S6_malformed_reply_closes_and_never_reuses(
    driver: Any, fake_smtp: Any, logs: Any, bad: bytes
) -> None:
    """ProtocolError; nothing written after the command; the connection is gone, so
    the next send on the same client fails without touching the network."""
    fake = fake_smtp(
        [*opening(), Expect(rb"MAIL FROM:<a@example\.org>.*"), Send(bad), Silent(2)],
        check=False,
    )
    first, second = driver.session(
        server_for(fake),
        [
            call("send", RAW, sender=SENDER, recipients=RCPT),
            call("send", RAW, sender=SENDER, recipients=RCPT),
        ],
    )
    assert isinstance(first, ProtocolError) and first.stage == "mail", first
    assert isinstance(second, ServerDisconnected) and "not connected" in str(second)
    assert_no_secret(logs, first, second)
    assert fake.connections == 1
    assert fake.join(5)
    assert fake.transcript[0].endswith(b"MAIL FROM:<a@example.org>\r\n")


def test_S7_unsolicited_reply_while_idle(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """A reply nobody asked for is a ProtocolError, never the next command's reply."""
    fake = fake_smtp([*opening(), Delay(0.1), Send(b"250 surprise\r\n"), Silent(3)], check=False)
    err, connected = idle_then(driver, server_for(fake), 0.5, "noop")
    assert isinstance(err, ProtocolError), err
    assert err.stage is not None and not connected
    assert_no_secret(logs, err)
    assert fake.join(5)
    assert b"NOOP" not in fake.transcript[0]


def test_S7_extra_reply_in_the_same_segment(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """Two replies to one command: the second is not taken as the next command's."""
    fake = fake_smtp(
        [*opening(), Expect(rb"NOOP"), Send(b"250 ok\r\n250 extra\r\n"), Silent(3)], check=False
    )
    first, second = driver.session(server_for(fake), [call("noop"), call("noop")])
    assert first.code == 250 and first.text == "ok"
    assert isinstance(second, ProtocolError), second
    assert_no_secret(logs, second)
    assert fake.join(5)
    assert fake.transcript[0].count(b"NOOP") == 1


def test_S7_idle_421_is_a_session_end(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """A server may close an idle session with 421 (RFC 5321 §3.8): the next command
    sees ServerDisconnected carrying the 421, and writes nothing."""
    fake = fake_smtp(
        [*opening(), Delay(0.1), Send(b"421 4.4.2 idle too long\r\n"), Silent(3)], check=False
    )
    err, connected = idle_then(
        driver, server_for(fake), 0.5, "send", RAW, sender=SENDER, recipients=RCPT
    )
    assert isinstance(err, ServerDisconnected), err
    assert err.reply is not None and err.reply.code == 421 and err.is_temporary
    assert not connected
    assert_no_secret(logs, err)
    assert fake.join(5)
    assert b"MAIL" not in fake.transcript[0]


def test_S10_fewer_pipelined_replies_then_close(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """Replies to MAIL only, then close: ServerDisconnected(stage=rcpt); no body sent;
    nothing reported as sent."""
    fake = fake_smtp(
        [*opening("PIPELINING"), Expect(rb"MAIL .*"), Send(b"250 ok\r\n"), Delay(0.2)],
        check=False,
        end_drain=1.0,
    )
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    check_failure(info, ServerDisconnected, stage="rcpt", logs=logs, temporary=True)
    assert not isinstance(info.value, DeliveryStatusUnknown)
    assert fake.join(5)
    assert b"Hello." not in fake.transcript[0]
    assert fake.transcript[0].endswith(b"DATA\r\n")


def test_S12_absurd_size_is_no_limit(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """``SIZE 99999999999999999999`` parses safely and the message goes out."""
    fake = fake_smtp(responder(capabilities=("SIZE 99999999999999999999", "AUTH PLAIN")))
    result = submit(driver, fake)
    assert isinstance(result, SubmitResult) and result.accepted == RCPT
    fake.assert_ok()
    (mail,) = [c for c in fake.commands[0] if c.startswith(b"MAIL")]
    assert mail == f"MAIL FROM:<a@example.org> SIZE={len(RAW)}".encode()
    assert_no_secret(logs, result)


# =========================================================================== 3.2 network faults


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_N3_reset_after_mail(driver: Any, fake_smtp: Any, logs: Any, pipelining: bool) -> None:
    """RST after MAIL: ServerDisconnected(stage=mail), retryable, nothing marked sent."""
    caps = ("PIPELINING", "AUTH PLAIN") if pipelining else ("AUTH PLAIN",)
    fake = fake_smtp(responder(capabilities=caps, replies={"MAIL": [Reset()]}), check=False)
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    check_failure(info, ServerDisconnected, stage="mail", logs=logs, temporary=True)
    assert fake.data == []


@needs_sink
def test_N5_close_after_dot_smtp_sink(driver: Any, smtp_sink: Any, logs: Any) -> None:
    """``smtp-sink -q .``: DeliveryStatusUnknown; a retry of the same Message keeps
    its Message-ID (the server can recognise the duplicate)."""
    sink = smtp_sink("-q", ".")
    message = Message(sender=SENDER, to=RCPT, subject="n5", text="at least once")
    for _ in range(2):
        with pytest.raises(SmtpError) as info:
            driver.submit(message, sink.server())
        check_failure(info, DeliveryStatusUnknown, stage="data", logs=logs, temporary=True)
    dumps = sink.dumps(2)
    assert len(dumps) == 2
    ids = {line for dump in dumps for line in dump.split(b"\n") if line.startswith(b"Message-ID:")}
    assert ids == {f"Message-ID: <{message.message_id}>".encode()}


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_N5_close_after_end_of_data(driver: Any, fake_smtp: Any, logs: Any, chunking: bool) -> None:
    """The end of the data went out, then the connection closed: delivery unknown, for
    DATA and for BDAT LAST alike; no QUIT or RSET follows."""
    if chunking:
        caps = ("CHUNKING", "AUTH PLAIN")
        replies: dict[str, Any] = {"BDAT": lambda line, n: [ReadBytesOf(line), Close()]}
    else:
        caps = ("AUTH PLAIN",)
        replies = {"DATA": [Send(b"354 go\r\n"), ReadData(), Close()]}
    fake = fake_smtp(responder(capabilities=caps, replies=replies), check=False)
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    check_failure(info, DeliveryStatusUnknown, stage="data", logs=logs, temporary=True)
    assert fake.join(5)
    assert fake.transcript[0].endswith(RAW if chunking else b"\r\n.\r\n")


@needs_sink
def test_N6_no_reply_to_dot_smtp_sink(driver: Any, smtp_sink: Any, logs: Any) -> None:
    """``smtp-sink -W .:30``: the end-of-data timeout gives DeliveryStatusUnknown."""
    sink = smtp_sink("-W", ".:30")
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        driver.submit(RAW, sink.server(timeout=1), sender=SENDER, recipients=RCPT)
    assert time.monotonic() - started < 3
    err = check_failure(info, DeliveryStatusUnknown, stage="data", logs=logs, temporary=True)
    assert isinstance(err.__cause__, SmtpTimeout)


@needs_sink
def test_N7_421_mid_transaction_smtp_sink(driver: Any, smtp_sink: Any, logs: Any) -> None:
    """``smtp-sink -Q RCPT``: a 421 ends the session; not a recipient refusal."""
    sink = smtp_sink("-Q", "RCPT")
    with pytest.raises(SmtpError) as info:
        driver.submit(RAW, sink.server(), sender=SENDER, recipients=RCPT)
    err = check_failure(info, ServerDisconnected, stage="rcpt", code=421, logs=logs)
    assert err.is_temporary and not isinstance(err, RecipientsRefused)
    assert sink.dumps(0, timeout=0.3) == []


@needs_sink
@pytest.mark.parametrize("size", [0, 20_000_000], ids=["small", "large"])
def test_N8_server_stops_reading_smtp_sink(
    driver: Any, smtp_sink: Any, logs: Any, size: int
) -> None:
    """``smtp-sink -A 0``: 550 right after the 354, then no more reading. A small body
    still fits the buffers and the 550 is surfaced; a large one cannot hang the write."""
    sink = smtp_sink("-A", "0")
    body = RAW + b"z" * size
    started = time.monotonic()
    with pytest.raises(SmtpError) as info:
        driver.submit(body, sink.server(timeout=1), sender=SENDER, recipients=RCPT)
    assert time.monotonic() - started < 4
    err = info.value
    assert err.stage == "data", err
    if size == 0:
        check_failure(info, DataRefused, stage="data", code=550, logs=logs, temporary=False)
    else:
        assert isinstance(err, (SmtpTimeout, ServerDisconnected, DataRefused)), err
        assert not isinstance(err, DeliveryStatusUnknown)
        assert_no_secret(logs, err)


def test_N9_stale_connection_detected_before_reuse(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """The server closed an idle connection: the next send fails before writing
    anything (the caller reconnects); nothing is marked sent. Pools: see guarantees.md."""
    fake = fake_smtp([*opening(), Delay(0.1), Close()], check=False)
    err, connected = idle_then(
        driver, server_for(fake), 0.5, "send", RAW, sender=SENDER, recipients=RCPT
    )
    assert isinstance(err, ServerDisconnected) and err.is_temporary, err
    assert err.stage == "mail" and not connected
    assert_no_secret(logs, err)
    assert b"MAIL" not in fake.transcript[0]


# =========================================================================== 3.5 hostile user input

HOSTILE_CHARS = ["\r", "\n", "\r\n", "\x00", "\t", "\x7f"]


@pytest.mark.parametrize("char", HOSTILE_CHARS, ids=["CR", "LF", "CRLF", "NUL", "TAB", "DEL"])
@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_U1_control_characters_in_envelope_addresses(
    driver: Any, fake_smtp: Any, logs: Any, char: str, where: str
) -> None:
    """On an open connection: MessageError, zero bytes written for it, and the
    connection stays usable (the next message goes out normally)."""
    bad = f"a@b.example{char}RCPT TO:<x@evil.example>"
    fake = fake_smtp(responder())
    kwargs = {"sender": bad, "recipients": RCPT} if where == "sender" else {"recipients": [bad]}
    kwargs.setdefault("sender", SENDER)
    first, second = driver.session(
        server_for(fake),
        [call("send", RAW, **kwargs), call("send", RAW, sender=SENDER, recipients=RCPT)],
    )
    assert isinstance(first, MessageError), first
    assert isinstance(second, SubmitResult)
    assert_no_secret(logs, first)
    fake.assert_ok()
    assert b"evil" not in fake.transcript[0]
    assert sum(1 for c in fake.commands[0] if c.startswith(b"MAIL")) == 1


def test_U1_injection_string_fails_before_connecting(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(responder())
    for kwargs in (
        {"sender": "a@b.c>\r\nRCPT TO:<x@evil>", "recipients": RCPT},
        {"sender": SENDER, "recipients": ["a@b.c>\r\nRCPT TO:<x@evil>"]},
    ):
        with pytest.raises(MessageError):
            driver.submit(RAW, server_for(fake), **kwargs)
    assert fake.connections == 0


def test_U2_injection_through_command_parameters(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """EHLO name, ENVID, ORCPT, NOTIFY, RET: refused, enum-checked or xtext-encoded; the
    only MAIL/RCPT lines on the wire are the ones we meant."""
    with pytest.raises(ValueError, match="control"):
        Server("127.0.0.1", local_hostname="x\r\nRSET")
    with pytest.raises(ValueError, match="control"):
        DSN(envid="x\r\nRSET")
    for notify in (("SUCCESS\r\nRSET",), ("SUCCESS RET=FULL",)):
        with pytest.raises(ValueError):
            DSN(notify=notify)
    with pytest.raises(ValueError):
        DSN(ret="FULL\r\nRSET")
    fake = fake_smtp(responder(capabilities=("DSN", "AUTH PLAIN")))
    dsn = DSN(notify=("FAILURE",), ret="HDRS", envid="x RET=FULL")
    submit(driver, fake, recipients=["b+x=y@example.org"], dsn=dsn)
    (mail,) = [c for c in fake.commands[0] if c.startswith(b"MAIL")]
    (rcpt,) = [c for c in fake.commands[0] if c.startswith(b"RCPT")]
    assert mail == b"MAIL FROM:<a@example.org> RET=HDRS ENVID=x+20RET+3DFULL"
    assert rcpt == b"RCPT TO:<b+x=y@example.org> NOTIFY=FAILURE ORCPT=rfc822;b+2Bx+3Dy@example.org"


def test_U2_injection_through_vrfy_is_refused_unsent(driver: Any, fake_smtp: Any) -> None:
    """A bad command argument is a MessageError before any I/O; the connection stays."""
    fake = fake_smtp(responder())
    result, noop = driver.session(
        server_for(fake), [call("verify", "x@example.org\r\nRSET"), call("noop")]
    )
    assert isinstance(result, MessageError), result
    assert noop.code == 250
    fake.assert_ok()
    assert b"VRFY" not in fake.transcript[0] and b"RSET" not in fake.transcript[0]


U4_AMBIGUOUS = [
    "alice@example.org)<bob@example.com>",
    "alice@example.org>",
    "<alice@example.org",
    "a@b@example.com",
    '"unbalanced@example.com',
    "alice@example.org (comment",
    "Alice <alice@example.org>",
    "alice@example.org, bob@example.org",
    "a..b@example.org",
    "alice@",
    "@example.org",
]


@pytest.mark.parametrize("address", U4_AMBIGUOUS)
def test_U4_ambiguous_envelope_addresses_rejected(
    driver: Any, fake_smtp: Any, address: str
) -> None:
    """The envelope path (ready messages, sender=/recipients=) rejects, never repairs;
    composed messages: tests/test_message.py::test_bad_addresses_rejected_never_repaired."""
    with pytest.raises(MessageError):
        check_envelope_address(address)
    fake = fake_smtp(responder())
    with pytest.raises(MessageError):
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=[address])
    assert fake.connections == 0


SMUGGLING = [
    b"a\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<v@example.org>\nDATA\nevil\n.\n",
    b"a\r.\rMAIL FROM:<evil@example.org>\r",
    b"a\n.\r\nMAIL FROM:<evil@example.org>\r\n",
    b"a\r\n.\nQUIT\r\n",
    b".\r\nfirst line is a dot\r\n",
    b"no final line end",
    b"..double\r\n.\r\n",
    b"lone\rcr\r\n",
]


def _expected_dump_body(body: bytes) -> bytes:
    """What smtp-sink stores: LF line ends, dot-unstuffed, a final line end."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return text if text.endswith(b"\n") else text + b"\n"


@needs_sink
@pytest.mark.parametrize("body", SMUGGLING, ids=range(len(SMUGGLING)))
def test_U5_smuggling_sequences_stay_one_message(driver: Any, smtp_sink: Any, body: bytes) -> None:
    """A real MTA parser sees exactly one transaction whose body is the input with its
    line ends normalised (smtp-sink dump, dot-unstuffed)."""
    sink = smtp_sink()
    raw = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: u5\r\n\r\n" + body
    result = driver.submit(raw, sink.server(), sender=SENDER, recipients=RCPT)
    assert result.reply.code == 250
    time.sleep(0.3)  # a smuggled second transaction would be dumped too
    (dump,) = sink.dumps(1)
    assert dump.count(b"X-Mail-Args:") == 1 and dump.count(b"X-Rcpt-Args:") == 1
    # smtp-sink stores LF line ends, un-stuffed, plus one empty line at the end.
    assert dump.endswith(b"Subject: u5\n\n" + _expected_dump_body(body) + b"\n")


@needs_sink
def test_U6_eight_bit_and_long_lines_to_a_7bit_server(driver: Any, smtp_sink: Any) -> None:
    """``smtp-sink -8`` (no 8BITMIME): the composed message is transfer-encoded, never
    raw 8-bit; every line within 998 octets; no BODY=8BITMIME."""
    sink = smtp_sink("-8")
    message = Message(
        sender=SENDER,
        to=RCPT,
        subject="Grüße " * 60,
        headers={"X-Long": "w" * 200 + " " + "v" * 900},
        text="Grüße aus Köln\n" + "x" * 3000 + "\n",
    )
    driver.submit(message, sink.server())
    (dump,) = sink.dumps(1)
    head, _, content = dump.partition(b"\nReceived:")
    assert b"BODY=8BITMIME" not in head
    assert content.isascii()
    assert max(len(line) for line in content.split(b"\n")) <= 998


def _limited_rcpt(limit: int) -> dict[str, Any]:
    """Responder rules: at most ``limit`` recipients per transaction, then 452."""
    count = [0]

    def mail(line: bytes, n: int) -> bytes:
        count[0] = 0
        return b"250 2.1.0 ok\r\n"

    def rcpt(line: bytes, n: int) -> bytes:
        count[0] += 1
        return b"250 2.1.5 ok\r\n" if count[0] <= limit else b"452 4.5.3 too many recipients\r\n"

    return {"MAIL": mail, "RCPT": rcpt}


def test_U10_ten_thousand_recipients_batched_by_452(driver: Any, fake_smtp: Any) -> None:
    """10,000 recipients to a server that takes 100 per transaction (the RFC 5321
    minimum): all accepted, in 100 transactions on one connection; each follow-up
    transaction carries only as many recipients as the server took."""
    fake = fake_smtp(responder(replies=_limited_rcpt(100), timeout=30))
    rcpts = [f"r{i}@example.org" for i in range(10_000)]
    started = time.monotonic()
    result = submit(driver, fake, recipients=rcpts, server=server_for(fake, timeout=10))
    assert time.monotonic() - started < 30
    assert result.accepted == rcpts and result.refused == {}
    assert fake.connections == 1 and len(fake.data) == 100
    fake.assert_ok()
    rcpt_lines = sum(1 for c in fake.commands[0] if c.startswith(b"RCPT"))
    assert rcpt_lines < 2 * len(rcpts), rcpt_lines  # not 10,000 + 9,900 + 9,800 + ...


@needs_sink
def test_U10_large_attachment_streams_in_bounded_memory(
    driver: Any, smtp_sink: Any, tmp_path: Path
) -> None:
    """A large attachment file is read and encoded piece by piece: the traced peak stays
    far below its size (set SMTPSUBMIT_BIG_MB=1024 for the catalogue's 1 GB)."""
    size = int(os.environ.get("SMTPSUBMIT_BIG_MB", "64")) << 20
    path = tmp_path / "big.bin"
    with path.open("wb") as handle:
        handle.truncate(size)  # sparse: cheap to create, read back as zeros
    message = Message(sender=SENDER, to=RCPT, text="big", attachments=[Attachment(path=path)])
    sink = smtp_sink(dump=False)
    tracemalloc.start()
    try:
        result = driver.submit(message, sink.server(timeout=30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.size > size
    assert peak < 24 << 20, f"peak {peak >> 20} MiB for a {size >> 20} MiB attachment"


def test_U10_mime_nesting_is_bounded_by_construction() -> None:
    """Message has no caller-controlled nesting: at most mixed > related > alternative."""
    message = Message(
        sender=SENDER,
        to=RCPT,
        text="t",
        html='<img src="cid:i@x">',
        attachments=[
            Attachment(data=b"i", filename="i.png", inline=True, content_id="i@x"),
            Attachment(data=b"a", filename="a.bin"),
        ],
    )
    raw = message.as_bytes()
    assert raw.count(b"Content-Type: multipart/") == 3


# =========================================================================== 3.6 transactions


def test_X1_mixed_recipient_replies(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """250/550/450: the message goes to the accepted one; per-recipient results with
    the right permanence, so only the 450 one needs a retry."""
    fake = fake_smtp(
        responder(
            replies={
                "RCPT TO:<gone@example.org>": "550 5.1.1 no such user",
                "RCPT TO:<full@example.org>": "450 4.2.2 mailbox full, later",
            }
        )
    )
    rcpts = ["ok@example.org", "gone@example.org", "full@example.org"]
    result = submit(driver, fake, recipients=rcpts)
    assert result.accepted == ["ok@example.org"]
    assert result.refused["gone@example.org"].is_permanent
    assert result.refused["full@example.org"].is_temporary
    assert result.refused["full@example.org"].enhanced == "4.2.2"
    assert len(fake.data) == 1
    assert_no_secret(logs, result)


def test_X3_follow_up_refusal_keeps_what_was_delivered(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """452 after two recipients, then the follow-up transaction is refused outright:
    the first delivery is still reported (a raise would make the caller resend it)."""

    def rcpt(line: bytes, n: int) -> bytes:
        if n < 2:
            return b"250 ok\r\n"
        return b"452 4.5.3 too many\r\n" if n < 4 else b"550 5.7.1 no more today\r\n"

    fake = fake_smtp(responder(replies={"RCPT": rcpt}))
    rcpts = [f"r{i}@example.org" for i in range(4)]
    result = submit(driver, fake, recipients=rcpts)
    assert result.accepted == rcpts[:2]
    assert {r: reply.code for r, reply in result.refused.items()} == {rcpts[2]: 550, rcpts[3]: 550}
    assert fake.data[0].endswith(b"Hello.\r\n.\r\n")
    assert fake.data[1:] == [b".\r\n"]  # X2: the pipelined DATA got 354, the body never went
    assert_no_secret(logs, result)


def test_X4_bdat_chunk_rejected(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """5xx to the second BDAT: no further chunk, RSET, DataRefused with the code; the
    connection is reused only after that clean RSET."""

    def bdat(line: bytes, n: int) -> list[Step]:
        answer = b"250 2.0.0 chunk ok\r\n" if n == 0 else b"554 5.6.0 chunk refused\r\n"
        return [ReadBytesOf(line), Send(answer)]

    fake = fake_smtp(
        responder(capabilities=("CHUNKING", "PIPELINING", "AUTH PLAIN"), replies={"BDAT": bdat})
    )
    body = RAW + b"c" * 3_000_000  # three BDAT chunks of 1 MiB at least
    first, second = driver.session(
        server_for(fake),
        [
            call("send", body, sender=SENDER, recipients=RCPT),
            call("noop"),
        ],
    )
    assert isinstance(first, DataRefused), first
    assert first.stage == "data" and first.reply is not None and first.reply.code == 554
    assert not first.is_temporary
    assert second.code == 250
    assert_no_secret(logs, first)
    fake.assert_ok()
    verbs = [c.split(b" ")[0] for c in fake.commands[0] if not c.startswith(b"AUTH")]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"BDAT", b"BDAT", b"RSET", b"NOOP", b"QUIT"]


@needs_sink
def test_X5_error_then_reuse_smtp_sink(driver: Any, smtp_sink: Any, logs: Any) -> None:
    """``smtp-sink -r mail``: every MAIL gets 450; the second message on the same
    connection gets its own 450 (after an RSET), not a reply left over from the first."""
    sink = smtp_sink("-r", "mail")
    first, second, noop = driver.session(
        sink.server(),
        [
            call("send", RAW, sender=SENDER, recipients=RCPT),
            call("send", RAW, sender=SENDER, recipients=RCPT),
            call("noop"),
        ],
    )
    for err in (first, second):
        assert isinstance(err, SenderRefused) and err.is_temporary, err
        assert err.reply is not None and err.reply.code == 450 and err.stage == "mail"
    assert noop.code == 250
    assert_no_secret(logs, first, second)


def test_X6_enhanced_code_disagreeing_with_basic_code(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """``550 4.2.2``: permanent by the basic code, and the mismatch is logged."""
    fake = fake_smtp(responder(replies={"RCPT": "550 4.2.2 mailbox full"}))
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    err = check_failure(info, RecipientsRefused, stage="rcpt", code=550, logs=logs)
    assert not err.is_temporary and err.refused[RCPT[0]].is_permanent
    assert any("4.2.2" in r.getMessage() and r.levelno >= logging.WARNING for r in logs.records), (
        "mismatch not logged"
    )


# =========================================================================== 3.7 endings


def _follow_up_fails_with(fault: list[Step]) -> dict[str, Any]:
    """Two recipients per transaction (452 after them); the follow-up MAIL meets ``fault``."""
    rules = _limited_rcpt(2)
    first_mail = rules["MAIL"]

    def mail(line: bytes, n: int) -> Any:
        return first_mail(line, n) if n == 0 else fault

    return {**rules, "MAIL": mail}


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ([Send(b"421 4.3.2 shutting down\r\n"), Close()], 421),
        ([Close()], 451),
        ([Reset()], 451),
        ([Delay(3)], 451),
    ],
    ids=["421", "close", "reset", "timeout"],
)
def test_X3_follow_up_cut_keeps_what_was_delivered(
    driver: Any, fake_smtp: Any, logs: Any, fault: list[Step], code: int
) -> None:
    """The first transaction was delivered; the follow-up for the deferred recipients
    loses the connection: the partial result comes back (a raise would make the caller
    send the message to the first two again), the rest refused and temporary."""
    fake = fake_smtp(responder(replies=_follow_up_fails_with(fault)), check=False)
    rcpts = [f"r{i}@example.org" for i in range(4)]
    result = submit(driver, fake, recipients=rcpts, server=server_for(fake, timeout=1))
    assert isinstance(result, SubmitResult), result
    assert result.accepted == rcpts[:2] and result.unknown == []
    assert {r: reply.code for r, reply in result.refused.items()} == dict.fromkeys(rcpts[2:], code)
    assert all(reply.is_temporary for reply in result.refused.values())
    assert len(fake.data) == 1
    assert_no_secret(logs, result)


def test_X3_follow_up_answer_lost_marks_those_recipients_unknown(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """The follow-up's dot went out and the connection closed: the first batch stays
    delivered, the second is ``unknown`` (it may have been delivered too)."""
    rules = _limited_rcpt(2)

    def data(line: bytes, n: int) -> Any:
        if n == 0:
            return [Send(b"354 go\r\n"), ReadData(), Send(b"250 2.0.0 queued\r\n")]
        return [Send(b"354 go\r\n"), ReadData(), Close()]

    fake = fake_smtp(responder(replies={**rules, "DATA": data}), check=False)
    rcpts = [f"r{i}@example.org" for i in range(4)]
    result = submit(driver, fake, recipients=rcpts)
    assert result.accepted == rcpts[:2] and result.unknown == rcpts[2:]
    assert all("unknown" in result.refused[r].text for r in rcpts[2:])
    assert len(fake.data) == 2
    assert_no_secret(logs, result)


def test_X3_452_before_any_acceptance_is_a_temporary_refusal(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """A 452 to the first (or only) RCPT: nothing was accepted, so it is a refusal —
    temporary, with the 452 for each address — and no data goes out."""
    for rcpts in (RCPT, ["x@example.org", "y@example.org"]):
        rules = {"RCPT": "452 4.5.3 too many recipients", "DATA": "554 5.5.1 no recipients"}
        fake = fake_smtp(responder(replies=rules))
        with pytest.raises(SmtpError) as info:
            submit(driver, fake, recipients=rcpts)
        err = check_failure(info, RecipientsRefused, stage="rcpt", code=452, logs=logs)
        assert err.is_temporary
        assert {r: reply.code for r, reply in err.refused.items()} == dict.fromkeys(rcpts, 452)
        assert fake.data == []


def test_S7_reply_glued_to_354_is_never_the_answer(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """``354`` and ``250 early`` in one segment, then 554 after the dot: the early 250
    answers nothing. A ProtocolError, no SubmitResult, and the body never goes out."""
    fake = fake_smtp(
        responder(
            replies={
                "DATA": [
                    Send(b"354 go\r\n250 2.0.0 early\r\n"),
                    ReadData(timeout=2),
                    Send(b"554 5.7.1 no\r\n"),
                ]
            }
        ),
        check=False,
    )
    with pytest.raises(SmtpError) as info:
        submit(driver, fake)
    check_failure(info, ProtocolError, stage="data", logs=logs)
    assert fake.join(5)
    assert b"Hello." not in fake.transcript[0] and fake.data == []


@pytest.mark.parametrize("where", ["after-rcpt", "after-chunk"])
def test_S7_extra_reply_before_bdat_last_is_never_the_answer(
    driver: Any, fake_smtp: Any, logs: Any, where: str
) -> None:
    """With CHUNKING: one reply too many (after the RCPT, or after a chunk) must not
    be taken as the answer to ``BDAT LAST``."""
    caps = ("CHUNKING", "PIPELINING", "AUTH PLAIN")
    if where == "after-rcpt":
        body = RAW
        replies: dict[str, Any] = {"RCPT": "250 2.1.5 ok\r\n250 2.0.0 early"}
    else:
        body = RAW + b"c" * 1_100_000

        def bdat(line: bytes, n: int) -> list[Step]:
            answer = b"250 chunk\r\n250 2.0.0 early\r\n" if n == 0 else b"554 5.7.1 no\r\n"
            return [ReadBytesOf(line), Send(answer)]

        replies = {"BDAT": bdat}
    fake = fake_smtp(responder(capabilities=caps, replies=replies), check=False)
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, body)
    check_failure(info, ProtocolError, stage="data", logs=logs)
    assert fake.join(5)
    assert b"LAST" not in fake.transcript[0] and fake.data == []


@pytest.mark.parametrize("tail", [b"Hello.", b"Hello.\r"], ids=["no-newline", "bare-CR"])
def test_X4_bdat_last_counts_the_final_crlf(
    driver: Any, fake_smtp: Any, logs: Any, tail: bytes
) -> None:
    """A ready message that does not end in CRLF: ``BDAT n LAST`` declares exactly the
    octets sent, and the stored message ends in CRLF."""
    fake = fake_smtp(responder(capabilities=("CHUNKING", "PIPELINING", "AUTH PLAIN")))
    body = RAW.removesuffix(b"Hello.\r\n") + tail
    result = submit(driver, fake, body, server=server_for(fake))
    fake.assert_ok()
    (stored,) = fake.data
    assert stored == RAW and result.size == len(RAW)
    (bdat,) = [c for c in fake.commands[0] if c.startswith(b"BDAT")]
    assert bdat == f"BDAT {len(RAW)} LAST".encode()


def test_X4_server_reading_a_refused_chunk_as_commands_loses_the_connection(
    driver: Any, fake_smtp: Any, logs: Any
) -> None:
    """Exim answers 552 in the middle of a BDAT chunk and reads the rest as commands:
    the RSET after the refusal gets a 500, so the connection is closed (DataRefused
    carries the 552) and the next call finds the client disconnected."""
    refuse = [
        ReadBytes(1000),
        Send(b"552 5.3.4 message too big\r\n"),
        Expect(rb".*"),
        Send(b"500 5.5.1 unrecognized command\r\n"),
        Expect(rb".*"),
        Send(b"500 5.5.1 too many unrecognized commands\r\n"),
        Close(),
    ]
    fake = fake_smtp(
        responder(capabilities=("CHUNKING", "PIPELINING", "AUTH PLAIN"), replies={"BDAT": refuse}),
        check=False,
    )
    body = RAW + b"c" * 70 * 20_000
    first, second = driver.session(
        server_for(fake), [call("send", body, sender=SENDER, recipients=RCPT), call("noop")]
    )
    assert isinstance(first, DataRefused), first
    assert first.reply is not None and first.reply.code == 552 and first.stage == "data"
    assert isinstance(second, ServerDisconnected), second
    assert_no_secret(logs, first, second)


def _first_rcpt_refused() -> dict[str, Any]:
    """The first transaction's only recipient is refused (and its pipelined DATA too)."""

    def rcpt(line: bytes, n: int) -> bytes:
        return b"550 5.1.1 nobody\r\n" if n == 0 else b"250 2.1.5 ok\r\n"

    def data(line: bytes, n: int) -> Any:
        if n == 0:
            return b"554 5.5.1 no valid recipients\r\n"
        return [Send(b"354 go\r\n"), ReadData(), Send(b"250 2.0.0 queued\r\n")]

    return {"RCPT": rcpt, "DATA": data}


def test_X5_pending_rset_rides_with_the_next_mail(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """After a refusal on a pipelining server, the next send writes RSET, MAIL, RCPT and
    DATA at once and never waits for the RSET reply on its own: one read per round trip
    on the server side (EHLO, AUTH, envelope, RSET+envelope, data, QUIT)."""

    fake = fake_smtp(responder(replies=_first_rcpt_refused()))
    first, second = driver.session(
        server_for(fake),
        [call("send", RAW, sender=SENDER, recipients=RCPT) for _ in range(2)],
    )
    assert isinstance(first, RecipientsRefused), first
    assert isinstance(second, SubmitResult) and second.accepted == RCPT
    fake.assert_ok()
    verbs = [c.split(b" ")[0] for c in fake.commands[0] if not c.startswith(b"AUTH")]
    assert verbs == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"RSET",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"QUIT",
    ]
    assert fake.reads[0] == 6, fake.reads[0]
    assert_no_secret(logs, first, second)


def test_X5_refused_pipelined_rset_fails_cleanly(driver: Any, fake_smtp: Any, logs: Any) -> None:
    """The RSET that rides with the next transaction is refused: that send fails with
    the reply, writes no message data, and the connection is given up."""

    rules = {**_first_rcpt_refused(), "RSET": "502 5.5.2 no RSET here"}
    fake = fake_smtp(responder(replies=rules), check=False)
    first, second, third = driver.session(
        server_for(fake),
        [call("send", RAW, sender=SENDER, recipients=RCPT) for _ in range(2)] + [call("noop")],
    )
    assert isinstance(first, RecipientsRefused), first
    assert isinstance(second, ProtocolError), second
    assert second.reply is not None and second.reply.code == 502 and second.stage == "mail"
    assert isinstance(third, ServerDisconnected), third
    assert fake.join(5)
    assert b"Hello." not in fake.transcript[0] and fake.data == []
    assert_no_secret(logs, first, second, third)


@dataclass
class EchoRefusal(Step):
    """Read one line (an AUTH command or a SASL answer) and refuse it, echoing it."""

    def run(self, c: _Conn) -> None:
        line = c.read_line(5, "an AUTH line")
        c.send(b"535 5.7.8 authentication failed for " + line + b"\r\n")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_A7_refusal_echoing_the_auth_argument_is_masked(
    driver: Any, fake_smtp: Any, logs: Any, mechanism: str
) -> None:
    """A server that echoes what it was sent in its 535 (AUTH PLAIN's argument, LOGIN's
    base64 password): masked in the AuthError, its reply and the transcript."""
    steps: list[Step] = [
        Send(b"220 fake ESMTP\r\n"),
        Expect(rb"EHLO client\.test"),
        Send(ehlo_reply(f"AUTH {mechanism}")),
    ]
    if mechanism == "LOGIN":
        steps += [
            Expect(rb"AUTH LOGIN"),
            Send(b"334 VXNlcm5hbWU6\r\n"),
            Expect(rb"\S+"),
            Send(b"334 UGFzc3dvcmQ6\r\n"),
        ]
    fake = fake_smtp([*steps, EchoRefusal(), Expect(rb"QUIT"), Send(b"221 bye\r\n")])
    with pytest.raises(SmtpError) as info:
        submit(driver, fake, server=server_for(fake, allow_plaintext_auth=True))
    err = check_failure(info, AuthError, stage="auth", code=535, logs=logs)
    assert err.reply is not None and "***" in err.reply.text
    transcript = [r.getMessage() for r in logs.records if r.name == "smtpsubmit.transcript"]
    assert any(line.startswith("S: 535") and "***" in line for line in transcript), transcript


def test_progress_done_reports_the_elapsed_time(driver: Any, fake_smtp: Any) -> None:
    """The last Progress (``done``) carries the time the data took, not the clock."""
    fake = fake_smtp(responder())
    seen: list[Progress] = []
    started = time.monotonic()
    submit(driver, fake, progress=seen.append)
    took = time.monotonic() - started
    done = seen[-1]
    assert done.stage == "done" and done.bytes_sent == done.bytes_total == len(RAW)
    assert 0 <= done.elapsed <= took, (done, took)
