"""AsyncClient specifics: cancellation safety and concurrency; the sync client in threads
and inside a running event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from smtpsubmit import (
    AsyncClient,
    Client,
    ClientBusyError,
    Option,
    Server,
    SmtpTimeout,
    asubmit_message,
    submit_message,
)
from tests.drivers import RAW
from tests.servers.fakesmtp import Delay, ReadData, Responder, Send, Silent, StopReading

SENDER = "a@example.org"


def numbered(i: int, to: str = "b@example.org") -> bytes:
    return (
        f"From: a@example.org\r\nTo: {to}\r\nSubject: n{i}\r\n"
        f"Message-ID: <n{i}@example.org>\r\n\r\nbody {i}\r\n"
    ).encode()


async def cancel_after(coro: Any, seconds: float) -> None:
    task = asyncio.create_task(coro)
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancel_mid_data_closes_the_connection(fake_smtp: Any) -> None:
    """N10: cancelled while writing the body: the connection is discarded, never reused,
    and the server never sees the end of the data."""
    fake = fake_smtp(
        Responder(
            capabilities=(),
            replies={"DATA": [Send(b"354 go\r\n"), StopReading(3)]},
        ),
        check=False,
        rcvbuf=4096,
    )
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=10)
    body = RAW + b"q" * 20_000_000

    async def main() -> AsyncClient:
        client = AsyncClient(server)
        await client.connect()
        await cancel_after(client.send(body, sender=SENDER, recipients=["b@e.org"]), 0.5)
        return client

    client = asyncio.run(main())
    assert not client.is_connected
    fake.join(5)
    assert fake.data == []
    assert not fake.transcript[0].endswith(b"\r\n.\r\n")


@pytest.mark.parametrize("stage", ["greeting", "ehlo", "rcpt", "final-dot"])
def test_cancel_at_each_stage_leaves_nothing_half_done(fake_smtp: Any, stage: str) -> None:
    replies: dict[str, Any] = {}
    greeting: Any = b"220 fake\r\n"
    if stage == "greeting":
        greeting = None
        replies = {}
    elif stage == "ehlo":
        replies = {"EHLO": [Silent(3)]}
    elif stage == "rcpt":
        replies = {"RCPT": [Silent(3)]}
    else:
        replies = {"DATA": [Send(b"354 go\r\n"), Delay(3)]}
    script: Any = Responder(capabilities=(), replies=replies, greeting=greeting)
    if stage == "greeting":
        script = [Silent(3)]
    fake = fake_smtp(script, check=False)
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=10)

    async def main() -> None:
        await cancel_after(asubmit_message(RAW, server, sender=SENDER, recipients=["b@e.org"]), 0.4)

    asyncio.run(main())
    fake.join(5)
    assert fake.data == []


def test_client_is_reusable_after_a_refusal(fake_smtp: Any) -> None:
    def mail(line: bytes, n: int) -> bytes:
        return b"550 no\r\n" if n == 0 else b"250 ok\r\n"

    fake = fake_smtp(Responder(replies={"MAIL": mail}))
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=5)

    async def main() -> int:
        async with AsyncClient(server) as client:
            with pytest.raises(Exception, match="refused the sender"):
                await client.send(RAW, sender=SENDER, recipients=["b@e.org"])
            result = await client.send(RAW, sender=SENDER, recipients=["b@e.org"])
            return result.reply.code

    assert asyncio.run(main()) == 250
    assert fake.connections == 1


def test_200_concurrent_submissions_to_aiosmtpd(aiosmtpd_server: Any) -> None:
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(
                asubmit_message(numbered(i), server, sender=SENDER, recipients=["b@e.org"])
                for i in range(200)
            )
        )

    results = asyncio.run(main())
    assert sorted(r.message_id for r in results) == sorted(f"n{i}@example.org" for i in range(200))
    received = aiosmtpd_server.wait_for(200, timeout=30)
    bodies = sorted(m.original_content for m in received)
    assert bodies == sorted(numbered(i) for i in range(200))  # each exactly once


@pytest.mark.postfix
def test_200_concurrent_submissions_to_postfix(postfix: Any) -> None:
    postfix.clear()
    server = Server(postfix.host, port=postfix.plain, options=Option.EXTENDED, timeout=30)
    limit = asyncio.Semaphore(50)  # Postfix's default smtpd process limit is 100

    async def one(i: int) -> Any:
        async with limit:
            return await asubmit_message(
                numbered(i, "x@example.org"),
                server,
                sender="alice@example.test",
                recipients=[f"n{i}@example.org"],
            )

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    assert all(r.accepted == [f"n{i}@example.org"] for i, r in enumerate(results))
    stored = postfix.wait_for_maildir("catchall", count=200, timeout=60)
    subjects = sorted(
        line for message in stored for line in message.split(b"\n") if line.startswith(b"Subject:")
    )
    assert subjects == sorted(f"Subject: n{i}".encode() for i in range(200))


def test_sync_clients_in_threads(aiosmtpd_server: Any) -> None:
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            with Client(server) as client:
                for j in range(5):
                    client.send(numbered(t * 10 + j), sender=SENDER, recipients=["b@e.org"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(aiosmtpd_server.wait_for(100, timeout=30)) == 100


def test_sync_api_works_inside_a_running_event_loop(aiosmtpd_server: Any) -> None:
    """The library never calls asyncio.run, so blocking code inside a loop still works."""
    server = Server(aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED)
    done = threading.Event()
    result: list[Any] = []

    def blocking() -> None:
        result.append(submit_message(RAW, server, sender=SENDER, recipients=["b@e.org"]))
        done.set()

    async def main() -> None:
        # aiosmtpd runs in its own thread; calling the sync API from a coroutine is allowed.
        blocking()

    asyncio.run(main())
    assert done.is_set() and result[0].reply.code == 250


def _slow_reader(fake_smtp: Any) -> Any:
    """DATA answered 354, then nothing read for 2.5 s; after that the body is read whole
    and accepted. A client that lets its buffered data drain after giving up would
    complete the message here."""
    return fake_smtp(
        Responder(
            capabilities=(),
            replies={
                "DATA": [
                    Send(b"354 go\r\n"),
                    StopReading(2.5),
                    ReadData(timeout=5),
                    Send(b"250 accepted anyway\r\n"),
                ]
            },
        ),
        check=False,
        rcvbuf=4096,
    )


# Larger than what the kernel takes at once (so part of it waits in asyncio's buffer),
# smaller than one session write batch (so the final dot is in that same buffer).
_SLOW_BODY = RAW + b"z" * 200_000


def test_cancel_mid_data_never_completes_the_message(fake_smtp: Any) -> None:
    """Issue 13.1: the loop and the server keep running after the cancel, long enough for
    a flushed buffer to reach the server: the message must not be accepted."""
    fake = _slow_reader(fake_smtp)
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=10)

    async def main() -> None:
        client = AsyncClient(server)
        await client.connect()
        await cancel_after(client.send(_SLOW_BODY, sender=SENDER, recipients=["b@e.org"]), 0.5)
        assert not client.is_connected
        await asyncio.sleep(4)  # the server reads again after 2.5 s

    asyncio.run(main())
    fake.join(5)
    assert fake.data == []
    assert b"250 accepted anyway" not in fake.sent[0]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_timeout_mid_data_never_completes_the_message(
    fake_smtp: Any, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """Issue 13.1: SmtpTimeout while most of the body (final dot included) still waits in
    a write buffer — a small SO_SNDBUF keeps it out of the kernel. Nothing of it may go out
    afterwards, however long the caller's loop (or process) keeps running."""
    fake = _slow_reader(fake_smtp)
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=1)
    connect = socket.socket.connect

    def small_send_buffer(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[1] == fake.port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", small_send_buffer)
    kw: dict[str, Any] = {"sender": SENDER, "recipients": ["b@e.org"]}

    async def main() -> None:
        with pytest.raises(SmtpTimeout) as info:
            await asubmit_message(_SLOW_BODY, server, **kw)
        assert info.value.stage == "data"
        await asyncio.sleep(4)  # the server reads again after 2.5 s

    if driver == "async":
        asyncio.run(main())
    else:
        with pytest.raises(SmtpTimeout):
            submit_message(_SLOW_BODY, server, **kw)
        time.sleep(4)
    fake.join(5)
    assert fake.data == []


def _slow_data_reply(fake_smtp: Any) -> Any:
    """The answer to the final dot takes 1 s: a window in which a second call could land."""
    return fake_smtp(
        Responder(
            capabilities=(),
            replies={
                "DATA": [Send(b"354 go\r\n"), ReadData(), Delay(1), Send(b"250 2.0.0 queued\r\n")]
            },
            strict=True,
        )
    )


def test_second_send_on_a_busy_async_client_is_refused(fake_smtp: Any) -> None:
    """Issue 13.4: the second call raises ClientBusyError before writing anything; the first
    completes undisturbed."""
    fake = _slow_data_reply(fake_smtp)
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=5)

    async def main() -> list[Any]:
        async with AsyncClient(server) as client:
            first = asyncio.create_task(
                client.send(numbered(1), sender=SENDER, recipients=["b@e.org"])
            )
            await asyncio.sleep(0.3)  # the first is waiting for the answer to its dot
            calls = [
                client.send(numbered(2), sender=SENDER, recipients=["b@e.org"]),
                client.noop(),
                client.reset(),
                client.verify("b@e.org"),
                client.close(),
            ]
            outcomes: list[Any] = []
            for call in calls:
                try:
                    outcomes.append(await call)
                except Exception as exc:
                    outcomes.append(exc)
            outcomes.append(await first)
            return outcomes

    *refused, result = asyncio.run(main())
    for exc in refused:
        assert isinstance(exc, ClientBusyError) and isinstance(exc, RuntimeError), exc
        assert "in progress" in str(exc)
    assert result.reply.code == 250
    fake.assert_ok()
    assert fake.data == [numbered(1) + b".\r\n"]
    verbs = [c.split(b" ")[0] for c in fake.commands[0]]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]


def test_second_send_from_another_thread_is_refused(fake_smtp: Any) -> None:
    """Issue 13.4, the sync Client shared by two threads."""
    fake = _slow_data_reply(fake_smtp)
    server = Server(fake.host, port=fake.port, options=Option.EXTENDED, timeout=5)
    outcome: list[Any] = []
    with Client(server) as client:

        def first() -> None:
            outcome.append(client.send(numbered(1), sender=SENDER, recipients=["b@e.org"]))

        thread = threading.Thread(target=first)
        thread.start()
        time.sleep(0.3)
        with pytest.raises(ClientBusyError):
            client.send(numbered(2), sender=SENDER, recipients=["b@e.org"])
        with pytest.raises(ClientBusyError):
            client.noop()
        thread.join(5)
        assert outcome[0].reply.code == 250
        assert client.noop().code == 250  # usable again once the first call is over
    fake.assert_ok()
    assert len(fake.data) == 1
    assert b"RSET" not in fake.transcript[0]
