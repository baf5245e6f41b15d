"""Run the same scenario through the sync Client and the AsyncClient.

Tests parametrised with ``driver`` call ``driver.submit(...)``,
``driver.deliver_direct(...)`` or
``driver.session(server, [call("send", ...), call("noop")])`` and get identical
results from either, which is how the suite keeps the two drivers from drifting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from smtpsubmit import (
    AsyncClient,
    Client,
    Option,
    Server,
    SubmitResult,
    asubmit_message,
    submit_message,
)
from smtpsubmit.direct import adeliver_direct, deliver_direct

RAW = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n"
    b"Message-ID: <t1@example.org>\r\n\r\nHello.\r\n"
)


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """One step of a session scenario: a Client method name and its arguments."""
    return (method, args, kwargs)


class SyncDriver:
    name = "sync"

    def submit(self, message: Any, server: Server, **kw: Any) -> Any:
        return submit_message(message, server, **kw)

    def session(self, server: Server, calls: list[Call]) -> list[Any]:
        """Run the calls on one connection; each result, or the exception it raised."""
        out: list[Any] = []
        with Client(server) as client:
            for method, args, kwargs in calls:
                try:
                    out.append(getattr(client, method)(*args, **kwargs))
                except Exception as exc:
                    out.append(exc)
        return out

    def deliver_direct(self, message: Any, **kw: Any) -> Any:
        return deliver_direct(message, **kw)


class AsyncDriver:
    name = "async"

    def submit(self, message: Any, server: Server, **kw: Any) -> Any:
        return asyncio.run(asubmit_message(message, server, **kw))

    def session(self, server: Server, calls: list[Call]) -> list[Any]:
        async def main() -> list[Any]:
            out: list[Any] = []
            async with AsyncClient(server) as client:
                for method, args, kwargs in calls:
                    try:
                        out.append(await getattr(client, method)(*args, **kwargs))
                    except Exception as exc:
                        out.append(exc)
            return out

        return asyncio.run(main())

    def deliver_direct(self, message: Any, **kw: Any) -> Any:
        return asyncio.run(adeliver_direct(message, **kw))


DRIVERS = [SyncDriver(), AsyncDriver()]


@pytest.fixture(params=DRIVERS, ids=lambda d: d.name)
def driver(request: pytest.FixtureRequest) -> Any:
    return request.param


# Tests that take the driver by name ("sync" / "async") rather than as a driver object.
EACH_DRIVER = pytest.mark.parametrize("driver", ["sync", "async"])

T = TypeVar("T")


def send_one(
    driver: str,
    server: Server,
    raw: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    observe: Callable[[Client | AsyncClient, SubmitResult], T],
) -> T:
    """Connect, send one ready message and QUIT with the named driver.

    ``observe`` reads what the test needs (the result, ``is_tls``…) while the
    connection is still open, so both drivers are inspected at the same moment.
    """
    if driver == "sync":
        with Client(server) as client:
            return observe(client, client.send(raw, sender=sender, recipients=list(recipients)))

    async def main() -> T:
        async with AsyncClient(server) as aclient:
            result = await aclient.send(raw, sender=sender, recipients=list(recipients))
            return observe(aclient, result)

    return asyncio.run(main())


def server_for(fake: Any, **kw: Any) -> Server:
    """A ``Server`` for a scripted fake: short timeout, EXTENDED options, EHLO ``client.test``."""
    kw.setdefault("timeout", 3)
    kw.setdefault("options", Option.EXTENDED)
    kw.setdefault("local_hostname", "client.test")
    return Server(fake.host, port=fake.port, **kw)


def wait_for_token(postfix: Any, user: str, token: str, timeout: float = 10) -> bytes:
    """The message carrying ``token`` once Postfix has delivered it to ``user``'s Maildir."""
    deadline = time.monotonic() + timeout
    while True:
        for message in postfix.maildir_messages(user):
            if token.encode() in message:
                return message
        if time.monotonic() > deadline:
            raise AssertionError(f"no message with {token} for {user}\n{postfix.maillog()}")
        time.sleep(0.02)
