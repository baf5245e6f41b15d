"""Shared pieces of the outbox tests: a scriptable aiosmtpd, a settable clock, stores."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtpsubmit import Message, Option, Server
from tests.servers.aiosmtpd_server import (
    SERVER_HOSTNAME,
    AiosmtpdServer,
    RecordingHandler,
    _EphemeralController,
)


class Clock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedHandler(RecordingHandler):
    """Records like the fixture's handler; ``rcpt`` maps an address to a list of replies
    (one per attempt, then 250), ``data`` is a list of replies to the end of data (then
    250). ``on_data`` runs when a message's data has arrived, before the reply."""

    rcpt: dict[str, list[str]] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    on_data: Callable[[bytes], None] | None = None
    refused_data: list[bytes] = field(default_factory=list)
    drop_after_data: int = 0  # keep this many messages, then hang up instead of answering

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        script = self.rcpt.get(address)
        if script:
            return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = bytes(envelope.original_content or b"")
        if self.on_data is not None:
            self.on_data(content)
        if self.data:
            self.refused_data.append(content)
            return self.data.pop(0)
        reply = await super().handle_DATA(server, session, envelope)
        if self.drop_after_data > 0:  # the message is kept; its 250 never reaches the client
            self.drop_after_data -= 1
            assert server.transport is not None
            server.transport.abort()
        return reply


def start_smtp(handler: RecordingHandler | None = None) -> AiosmtpdServer:
    handler = handler or ScriptedHandler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        controller = _EphemeralController(
            handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname=SERVER_HOSTNAME,
            decode_data=False,
            enable_SMTPUTF8=True,
            ready_timeout=5.0,
        )
        controller.start()
    return AiosmtpdServer("127.0.0.1", controller.port, handler, controller)


def serve(handler: RecordingHandler | None = None) -> Iterator[AiosmtpdServer]:
    server = start_smtp(handler)
    try:
        yield server
    finally:
        server.controller.stop()


def route(server: AiosmtpdServer, **kwargs: Any) -> Server:
    return Server(server.host, port=server.port, options=Option.EXTENDED, timeout=5, **kwargs)


def message(n: int = 0, to: tuple[str, ...] = ("rcpt@example.org",), **kwargs: Any) -> Message:
    return Message(
        sender="Outbox Test <sender@example.org>",
        to=list(to),
        subject=f"outbox message {n}",
        text=f"body of message {n}\n",
        **kwargs,
    )


def subjects(server: AiosmtpdServer) -> list[str]:
    out = []
    for m in server.messages:
        for line in m.original_content.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
    return out
