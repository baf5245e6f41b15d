"""Pool and AsyncPool: exactly-once delivery under concurrency, input order, the
per-connection cap, idle expiry, the clean-return rule and repr against aiosmtpd;
stale connections (N9), exhaustion (N11), 421 and rate refusals against the
scripted server. Every scenario runs through both drivers (tests/pool_drivers.py)."""

from __future__ import annotations

import itertools
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from smtpsubmit import (
    AsyncPool,
    AsyncTransport,
    DeliveryStatusUnknown,
    Message,
    MessageError,
    Option,
    Pool,
    PoolTimeout,
    RateLimit,
    RecipientsRefused,
    Server,
    SmtpError,
    SubmitResult,
    Transport,
)
from smtpsubmit.errors import DataRefused
from tests.pool_drivers import POOL_DRIVERS, AsyncPools, SyncPools
from tests.servers.aiosmtpd_server import SERVER_HOSTNAME, _EphemeralController
from tests.servers.fakesmtp import (
    Close,
    Delay,
    Expect,
    FakeSMTP,
    ReadData,
    Responder,
    Send,
    Step,
    ehlo_reply,
)
from tests.servers.postfix import ANVIL_MESSAGES, CATCHALL, PostfixServer
from tests.test_readme import python_blocks

__all__ = ["POOL_DRIVERS"]

MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
Pools = SyncPools | AsyncPools


@pytest.fixture(params=POOL_DRIVERS, ids=lambda d: d.name)
def pools(request: pytest.FixtureRequest) -> Pools:
    return request.param  # type: ignore[no-any-return]


def make_messages(n: int, tag: str = "m") -> list[Message]:
    return [
        Message(sender="a@example.org", to="b@example.org", subject=f"{tag}{i}", text=f"n{i}")
        for i in range(n)
    ]


# --------------------------------------------------------------------- aiosmtpd, counted


@dataclass
class Counting:
    """aiosmtpd handler that knows which session (connection) carried each message."""

    refuse: set[str] = field(default_factory=set)
    received: list[tuple[int, bytes]] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: Iterator[int] = field(default_factory=itertools.count)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not hasattr(session, "pool_test_id"):
            session.pool_test_id = next(self.sessions)  # type: ignore[attr-defined]
        with self.lock:
            self.stamps.append(time.monotonic())
            self.received.append(
                (session.pool_test_id, bytes(envelope.original_content or b""))  # type: ignore[attr-defined]
            )
        return "250 2.0.0 OK: queued"

    def ids(self) -> list[bytes]:
        return [m.group(1) for _, raw in self.received if (m := MESSAGE_ID.search(raw))]

    def per_session(self) -> Counter[int]:
        return Counter(session for session, _ in self.received)


@pytest.fixture
def counted() -> Iterator[tuple[Server, Counting]]:
    handler = Counting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        controller = _EphemeralController(
            handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname=SERVER_HOSTNAME,
            decode_data=False,
            ready_timeout=5.0,
        )
        controller.start()
    try:
        yield Server("127.0.0.1", port=controller.port, timeout=10), handler
    finally:
        controller.stop()


def assert_delivered_once(handler: Counting, results: list[Any], messages: list[Message]) -> None:
    assert all(isinstance(r, SubmitResult) for r in results), [
        r for r in results if not isinstance(r, SubmitResult)
    ]
    ids = handler.ids()
    assert len(ids) == len(messages)
    assert len(set(ids)) == len(ids)  # nothing twice
    assert set(ids) == {r.message_id.encode() for r in results}
    # Results in input order: result i carries message i (found by its Message-ID).
    for message, result in zip(messages, results, strict=True):
        assert _subject_of(handler, result.message_id) == message.subject


@pytest.mark.parametrize("concurrency", [8, 50])
def test_parallel_sends_deliver_every_message_exactly_once(
    pools: Pools, counted: tuple[Server, Counting], concurrency: int
) -> None:
    server, handler = counted
    messages = make_messages(200)
    started = time.monotonic()
    [results, shown] = pools.run(
        server, [("parallel", messages, concurrency), ("repr",)], max_connections=4
    )
    assert time.monotonic() - started < 60
    assert_delivered_once(handler, results, messages)
    assert len(handler.per_session()) <= 4  # never more than max_connections
    assert "busy=0 waiting=0" in shown


def test_send_many_results_are_in_input_order(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    messages = make_messages(120)
    # Mixed items: Message, (raw, sender, recipients), an object with .raw/.sender/.recipients,
    # and one bad item whose error comes back in its place.
    raw = (
        b"From: a@example.org\r\nTo: c@example.org\r\nMessage-ID: <raw-1@example.org>\r\n\r\nx\r\n"
    )

    @dataclass
    class Ready:
        raw: bytes
        sender: str
        recipients: list[str]

    ready = Ready(raw.replace(b"raw-1", b"raw-2"), "a@example.org", ["c@example.org"])
    items: list[object] = [*messages[:60], (raw, "a@example.org", ["c@example.org"]), 42, ready]
    items += messages[60:]
    [results] = pools.run(server, [("send_many", items)], max_connections=4)
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        if isinstance(item, Message):
            assert isinstance(result, SubmitResult)
            assert result.message_id is not None
            assert item.subject in _subject_of(handler, result.message_id)
    assert results[60].message_id == "raw-1@example.org"
    assert isinstance(results[61], MessageError)
    assert results[62].message_id == "raw-2@example.org"
    assert len(handler.received) == 122
    assert len(set(handler.ids())) == 122


def _subject_of(handler: Counting, message_id: str) -> str:
    for _, raw in handler.received:
        if f"<{message_id}>".encode() in raw:
            found = re.search(rb"^Subject: (.*)\r$", raw, re.MULTILINE)
            return found.group(1).decode() if found else ""
    raise AssertionError(f"{message_id} not received")


def test_per_connection_cap_retires_connections(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    messages = make_messages(50)
    [results] = pools.run(
        server, [("send_many", messages)], max_connections=2, max_messages_per_connection=10
    )
    assert all(isinstance(r, SubmitResult) for r in results)
    per_session = handler.per_session()
    assert max(per_session.values()) <= 10
    assert len(per_session) >= 5


def test_idle_connections_close_after_idle_timeout(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    one, two = make_messages(2)
    results = pools.run(
        server,
        [("send", one), ("repr",), ("sleep", 0.8), ("repr",), ("send", two)],
        idle_timeout=0.3,
    )
    assert "open=1 idle=1 busy=0" in results[1]
    assert "open=0 idle=0 busy=0" in results[3]  # closed by the pool, not by the server
    assert isinstance(results[4], SubmitResult)
    assert len(handler.per_session()) == 2


def test_connection_reused_after_a_refusal_and_rset(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    handler.refuse.add("nobody@example.org")
    refused = Message(sender="a@example.org", to="nobody@example.org", text="x")
    one, two = make_messages(2)
    results = pools.run(server, [("send", one), ("send", refused), ("send", two), ("repr",)])
    assert isinstance(results[1], RecipientsRefused)
    assert isinstance(results[2], SubmitResult)
    assert len(handler.per_session()) == 1  # clean after RSET: the same connection
    assert "open=1 idle=1" in results[3]


def test_shared_rate_limit_holds_on_the_server_side(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    limit = RateLimit(5, 0.5)
    started = time.monotonic()
    [results] = pools.run(
        server, [("send_many", make_messages(16))], max_connections=4, rate_limit=limit
    )
    assert all(isinstance(r, SubmitResult) for r in results)
    assert time.monotonic() - started >= 1.4  # 16 messages at 5 per 0.5 s: three refills
    stamps = sorted(handler.stamps)
    # Counted where the server counts: a message holds its place in the window until
    # 0.5 s after its reply, so no 0.5 s of arrivals holds more than 5, jitter or not.
    assert all(stamps[k + 5] - stamps[k] >= 0.5 for k in range(len(stamps) - 5))


def test_ready_message_with_envelope_keywords(
    pools: Pools, counted: tuple[Server, Counting]
) -> None:
    server, handler = counted
    raw = b"From: a@example.org\r\nMessage-ID: <kw-1@example.org>\r\n\r\nx\r\n"
    results = pools.run(
        server,
        [
            ("send", raw, {"sender": "a@example.org", "recipients": ["b@example.org"]}),
            ("send", raw),
            ("send_many", [object()]),
        ],
    )
    assert isinstance(results[0], SubmitResult) and results[0].message_id == "kw-1@example.org"
    assert isinstance(results[1], MessageError)  # a ready message needs its envelope
    assert isinstance(results[2][0], MessageError)
    assert handler.ids() == [b"kw-1@example.org"]


def test_empty_input_opens_no_connection(pools: Pools, counted: tuple[Server, Counting]) -> None:
    server, _ = counted
    results = pools.run(server, [("send_many", []), ("send_many", iter(())), ("repr",)])
    assert results[:2] == [[], []]
    assert "open=0" in results[2]


def test_repr_shows_counts_and_never_the_password(counted: tuple[Server, Counting]) -> None:
    server, _ = counted
    secret = Server("127.0.0.1", "alice", "S3cr3t-CANARY", port=server.port)
    with Pool(secret, max_connections=3) as pool:
        text = repr(pool)
    assert text == f"<Pool 127.0.0.1:{server.port} open=0 idle=0 busy=0 waiting=0>"
    assert "S3cr3t" not in text and "alice" not in text


def test_bad_pool_arguments_are_refused(counted: tuple[Server, Counting]) -> None:
    server, _ = counted
    with pytest.raises(ValueError):
        Pool(server, max_connections=0)
    with pytest.raises(ValueError):
        Pool(server, idle_timeout=-1)
    with pytest.raises(TypeError):
        Pool("smtp.example.org")  # type: ignore[arg-type]


# --------------------------------------------------------------------- scripted faults

GREET = [Send(b"220 fake ESMTP\r\n"), Expect(rb"EHLO .*"), Send(ehlo_reply("8BITMIME"))]


def one_message(delay: float = 0.0) -> list[Step]:
    return [
        Expect(rb"MAIL FROM:.*"),
        Send(b"250 ok\r\n"),
        Expect(rb"RCPT TO:.*"),
        Send(b"250 ok\r\n"),
        Expect(rb"DATA"),
        Send(b"354 go\r\n"),
        ReadData(),
        Delay(delay),
        Send(b"250 2.0.0 queued\r\n"),
    ]


def fake_server(fake: FakeSMTP) -> Server:
    return Server(fake.host, port=fake.port, timeout=5, options=Option.EXTENDED)


def data_ids(fake: FakeSMTP) -> list[bytes]:
    return [m.group(1) for body in fake.data if (m := MESSAGE_ID.search(body))]


@pytest.mark.parametrize("with_421", [False, True], ids=["fin", "421-then-fin"])
def test_n9_connection_closed_while_idle_is_replaced_and_sent_once(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP], with_421: bool
) -> None:
    goodbye = [Send(b"421 4.4.2 fake.test idle timeout\r\n")] if with_421 else []

    def script(index: int) -> list[Step]:
        if index == 0:
            return [*GREET, *one_message(), *goodbye, Close()]
        return [Responder()]

    fake = fake_smtp(script)
    one, two = make_messages(2)
    results = pools.run(fake_server(fake), [("send", one), ("sleep", 0.3), ("send", two)])
    assert isinstance(results[0], SubmitResult)
    assert isinstance(results[2], SubmitResult), results[2]
    assert fake.connections == 2
    assert data_ids(fake) == [results[0].message_id.encode(), results[2].message_id.encode()]
    assert fake.commands[0].count(b"QUIT") == 0
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0][2:])  # nothing more written


def test_n9_every_idle_connection_stale_message_sent_once(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    """Several idle connections all closed by the server: one retry, on a new connection."""

    def script(index: int) -> list[Step]:
        if index < 3:  # slow enough that the three warm-up sends overlap
            return [*GREET, *one_message(0.3), Close()]
        return [Responder()]

    fake = fake_smtp(script)
    first = make_messages(3, "first")
    [warm, _, after] = pools.run(
        fake_server(fake),
        [("parallel", first, 3), ("sleep", 0.3), ("send_many", make_messages(1, "late"))],
        max_connections=3,
    )
    assert all(isinstance(r, SubmitResult) for r in warm)
    assert isinstance(after[0], SubmitResult), after
    assert fake.connections == 4
    assert len(fake.data) == 4


def test_n11_pool_exhaustion_raises_pool_timeout_and_bounds_sockets(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    fake = fake_smtp(Responder(data_reply=[Delay(0.6), Send(b"250 2.0.0 queued\r\n")]))
    messages = make_messages(10)
    [results] = pools.run(
        fake_server(fake), [("parallel", messages, 10)], max_connections=2, acquire_timeout=0.3
    )
    timeouts = [r for r in results if isinstance(r, PoolTimeout)]
    sent = [r for r in results if isinstance(r, SubmitResult)]
    assert timeouts and sent
    assert len(timeouts) + len(sent) == 10
    assert fake.connections <= 2
    assert len(fake.data) == len(sent)
    error = timeouts[0]
    assert isinstance(error, SmtpError) and error.is_temporary and error.stage == "connect"
    assert "acquire" in str(error) or "within" in str(error)


def test_n11_send_many_waits_then_fails_the_rest_with_pool_timeout(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    fake = fake_smtp(Responder(data_reply=[Delay(1.0), Send(b"250 2.0.0 queued\r\n")]))
    messages = make_messages(6)
    [holder, many] = _run_holding_one(pools, fake_server(fake), messages)
    assert isinstance(holder, SubmitResult)
    assert all(isinstance(r, PoolTimeout) for r in many)
    assert fake.connections == 1


def _run_holding_one(pools: Pools, server: Server, messages: list[Message]) -> list[Any]:
    """One send occupies the only connection while send_many waits for it."""
    [results] = pools.run(
        server,
        [("together", [[("send", messages[0])], [("sleep", 0.2), ("send_many", messages[1:])]])],
        max_connections=1,
        acquire_timeout=0.3,
    )
    return list(results)


def test_421_retires_the_connection_and_the_message_goes_on_a_new_one(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    def mail(line: bytes, n: int) -> Any:
        return b"250 ok\r\n" if n == 0 else [Send(b"421 4.3.2 shutting down\r\n"), Close()]

    fake = fake_smtp(lambda i: [Responder(replies={"MAIL": mail} if i == 0 else {})])
    messages = make_messages(3)
    results = pools.run(fake_server(fake), [("send", m) for m in messages])
    assert all(isinstance(r, SubmitResult) for r in results), results
    assert fake.connections == 2  # the third message reused the replacement
    assert len(fake.data) == 3
    assert data_ids(fake) == [r.message_id.encode() for r in results]


def test_rate_refusal_backs_off_and_retries_delivered_once(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    lock = threading.Lock()
    seen = [0]

    def mail(line: bytes, n: int) -> bytes:
        with lock:
            seen[0] += 1
            first = seen[0] == 2
        return b"451 4.7.1 Rate limit exceeded, slow down\r\n" if first else b"250 ok\r\n"

    fake = fake_smtp(Responder(replies={"MAIL": mail}))
    limit = RateLimit(1000, 1.0)
    messages = make_messages(4)
    started = time.monotonic()
    [results] = pools.run(
        fake_server(fake), [("send_many", messages)], max_connections=2, rate_limit=limit
    )
    elapsed = time.monotonic() - started
    assert all(isinstance(r, SubmitResult) for r in results), results
    assert sorted(data_ids(fake)) == sorted(r.message_id.encode() for r in results)
    # The refused one once, after the retry (its pipelined DATA got only an empty body).
    assert len(data_ids(fake)) == 4
    assert seen[0] == 5
    assert elapsed >= 0.9  # paused by the backoff before the retry
    assert limit.slowdown == 2


def test_rate_refusal_after_the_data_is_not_retried(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    fake = fake_smtp(Responder(data_reply=b"451 4.7.1 rate limited, message not taken\r\n"))
    [result] = pools.run(fake_server(fake), [("send", make_messages(1)[0])])
    assert isinstance(result, DataRefused)
    assert sum(c.startswith(b"MAIL") for cmds in fake.commands for c in cmds) == 1


def test_delivery_status_unknown_is_never_retried(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    steps = [*GREET, *one_message()[:-1], Close()]  # the final dot's answer never comes
    fake = fake_smtp(lambda i: steps if i == 0 else [Responder()])
    [result] = pools.run(fake_server(fake), [("send_many", make_messages(1))])
    assert isinstance(result[0], DeliveryStatusUnknown)
    assert fake.connections == 1


# --------------------------------------------------------------------- real Postfix anvil


def test_postfix_anvil_limits_every_message_delivered_exactly_once(
    pools: Pools, postfix: PostfixServer
) -> None:
    """More messages, recipients and connections than anvil allows per time unit: the pool
    slows down by itself on 421/450 "too many"/"too much" and finishes with each message
    delivered once."""
    count = 3 * ANVIL_MESSAGES
    tag = f"anvil-{pools.name}-{time.monotonic_ns()}"
    messages = [
        Message(
            sender="a@example.org",
            to=[f"r{i}@example.org"] + ([f"s{i}@example.org"] if i % 5 == 0 else []),
            subject=f"{tag}-{i}",
            text="x",
        )
        for i in range(count)
    ]
    server = Server(postfix.host, port=postfix.anvil, timeout=10, options=Option.EXTENDED)
    started = time.monotonic()
    [results] = pools.run(
        server,
        [("send_many", messages)],
        max_connections=3,
        max_messages_per_connection=4,  # more connections than anvil allows per unit
    )
    elapsed = time.monotonic() - started
    assert all(isinstance(r, SubmitResult) and not r.refused for r in results), [
        r for r in results if not isinstance(r, SubmitResult) or r.refused
    ]
    assert elapsed < 30
    hit = [
        line
        for line in postfix.maillog().splitlines()
        if "rate limit exceeded" in line and line.endswith(f"127.0.0.1:{postfix.anvil}")
    ]
    assert any("Message delivery request" in line for line in hit)  # the limits really hit
    assert any("Connection rate" in line for line in hit)
    ids = {r.message_id for r in results}
    deadline = time.monotonic() + 15
    while True:
        seen = Counter(
            m.group(1).decode()
            for raw in postfix.maildir_messages(CATCHALL)
            if (m := MESSAGE_ID.search(raw)) and m.group(1).decode() in ids
        )
        expected = sum(2 if i % 5 == 0 else 1 for i in range(count))  # one copy per recipient
        if sum(seen.values()) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(seen.values()) == expected
    for i, result in enumerate(results):
        assert seen[result.message_id] == (2 if i % 5 == 0 else 1)


def test_readme_pool_example_runs(counted: tuple[Server, Counting]) -> None:
    """README's "Many messages" block, as written, against aiosmtpd."""
    server, handler = counted
    [block] = python_blocks("Many messages: pools and rate limits")
    namespace: dict[str, Any] = {"server": server, "messages": make_messages(5)}
    exec(compile(block, "README.md", "exec"), namespace)
    assert all(isinstance(r, SubmitResult) for r in namespace["results"])
    assert len(handler.received) == 5


def test_connection_not_returned_when_rset_fails(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    """Clean-return rule: a refusal whose RSET is refused leaves the session unclean, so the
    connection is closed and the next message goes on a new one."""
    first = Responder(
        replies={"MAIL": b"550 5.7.1 sender refused", "RSET": b"500 5.5.1 no reset for you"}
    )
    fake = fake_smtp(lambda i: [first if i == 0 else Responder()], check=False)
    one, two = make_messages(2)
    results = pools.run(fake_server(fake), [("send", one), ("send", two), ("repr",)])
    assert isinstance(results[0], SmtpError) and results[0].reply is not None
    assert results[0].reply.code == 550
    assert isinstance(results[1], SubmitResult)
    assert fake.connections == 2
    assert data_ids(fake) == [results[1].message_id.encode()]
    assert "open=1 idle=1" in results[2]
    fake.join()
    # The broken session is dropped without another command (not even QUIT).
    assert fake.errors == ["conn#0: connection closed by client while waiting for a command"]


def test_pools_are_transports(counted: tuple[Server, Counting]) -> None:
    """Contract §11: application code can take any Transport; a pool is one."""
    server, _ = counted
    pool: Transport = Pool(server)
    apool: AsyncTransport = AsyncPool(server)
    assert isinstance(pool, Transport)
    assert isinstance(apool, AsyncTransport)


@pytest.mark.parametrize("chunking", [False, True], ids=["pipelining", "chunking"])
def test_pooled_batch_is_one_streamed_write_per_message(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP], chunking: bool
) -> None:
    """A pooled send_many streams each connection's batch through Client.send_many: with
    PIPELINING a message's data, its dot and the next envelope share one write (a send per
    message needs two: the envelope, then the data after the 354); with CHUNKING too."""
    caps = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME") + (("CHUNKING",) if chunking else ())
    fake = fake_smtp(Responder(capabilities=caps))
    messages = make_messages(12)
    [results] = pools.run(
        fake_server(fake), [("send_many", messages)], max_connections=1, rate_limit=None
    )
    assert all(isinstance(r, SubmitResult) for r in results), results
    assert data_ids(fake) == [r.message_id.encode() for r in results]
    fake.join()
    assert fake.connections == 1
    # EHLO, then one write per message (the last dot alone), then QUIT.
    assert fake.reads[0] <= len(messages) + 3, fake.reads[0]


def test_a_stream_lost_mid_batch_retries_only_what_never_reached_the_server(
    pools: Pools, fake_smtp: Callable[..., FakeSMTP]
) -> None:
    """The first connection answers message 0 and hangs up after message 1's final dot:
    message 1 is DeliveryStatusUnknown (never retried); the messages after it, streamed but
    not completely written, go again on a fresh connection, once each."""
    answered = [0]

    def first_data(line: bytes, n: int) -> Any:
        answered[0] += 1
        return b"250 2.0.0 ok\r\n" if answered[0] == 1 else [Close()]

    fake = fake_smtp(lambda i: [Responder(data_reply=first_data if i == 0 else b"250 ok\r\n")])
    messages = make_messages(5)
    [results] = pools.run(fake_server(fake), [("send_many", messages)], max_connections=1)
    assert isinstance(results[0], SubmitResult)
    assert isinstance(results[1], DeliveryStatusUnknown), results[1]
    assert all(isinstance(r, SubmitResult) for r in results[2:]), results
    assert fake.connections == 2
    received = Counter(data_ids(fake))
    assert len(received) == 5 and set(received.values()) == {1}  # message 1 arrived, once
    assert all(received[r.message_id.encode()] == 1 for r in results if isinstance(r, SubmitResult))
