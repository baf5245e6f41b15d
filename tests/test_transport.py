"""The network streams (transport.py) on their own, and the peer-address rule they feed.

The streams take every limit from their caller: these tests give them short ones and check
they are kept, whatever ``Server.timeout`` says. ``abort`` must drop unsent data (RST), so
a session given up mid-message can never complete it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smtpsubmit import AuthError, Option, Server, SmtpTimeout
from smtpsubmit.session import Receive, Send, Session
from smtpsubmit.transport import AsyncStream, SyncStream
from tests.servers.fakesmtp import Responder
from tests.test_auth_session import DRIVERS, run

STREAMS = pytest.mark.parametrize("kind", ["sync", "async"])
SLOW_NAME = "slow-dns.example.test"


class Listener:
    """A peer that accepts one connection and reads nothing until told to."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.peer: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.sock.settimeout(5)
        self.peer, _ = self.sock.accept()
        return self.peer

    def read_all(self, limit: float = 5.0) -> tuple[int, bool]:
        """Octets read until EOF or error, and whether the connection was reset."""
        assert self.peer is not None
        self.peer.settimeout(limit)
        total = 0
        try:
            while chunk := self.peer.recv(65536):
                total += len(chunk)
        except ConnectionResetError:
            return total, True
        return total, False

    def close(self) -> None:
        for sock in (self.peer, self.sock):
            if sock is not None:
                sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    peer = Listener()
    yield peer
    peer.close()


def with_stream(kind: str, server: Server, body: Callable[[Any], Any]) -> Any:
    """Connect a stream of ``kind`` and run ``body(stream)`` (awaited for async)."""
    if kind == "sync":
        stream = SyncStream.connect(server, 5)
        try:
            return body(stream)
        finally:
            stream.abort()

    async def main() -> Any:
        stream = await AsyncStream.connect(server, 5)
        try:
            return await body(stream)
        finally:
            stream.abort()

    return asyncio.run(main())


# -- abort: nothing unsent goes out ----------------------------------------------------------


@STREAMS
def test_abort_drops_what_the_peer_has_not_read(kind: str, listener: Listener) -> None:
    """Issue 13.1: the data is handed to the kernel, the peer is not reading; abort() must
    reset the connection so that the tail (a message's final dot) never arrives."""
    payload = b"x" * 300_000 + b"\r\n.\r\n"
    server = Server("127.0.0.1", port=listener.port)

    if kind == "sync":
        stream = SyncStream.connect(server, 5)
        listener.accept()
        stream.send(payload, "data", 5)
        stream.abort()
    else:

        async def main() -> None:
            stream = await AsyncStream.connect(server, 5)
            listener.accept()
            stream._writer.write(payload)  # buffered: what a cancelled send leaves behind
            stream.abort()
            await asyncio.sleep(0.5)  # the loop keeps running after the abort

        asyncio.run(main())
    received, reset = listener.read_all()
    assert reset
    assert received < len(payload)


@STREAMS
def test_close_lets_written_data_go_out(kind: str, listener: Listener) -> None:
    """The graceful close (after QUIT) still delivers what was written."""
    server = Server("127.0.0.1", port=listener.port)
    payload = b"QUIT\r\n" * 1000

    if kind == "sync":
        stream = SyncStream.connect(server, 5)
        listener.accept()
        stream.send(payload, "quit", 5)
        stream.close()
    else:

        async def main() -> None:
            stream = await AsyncStream.connect(server, 5)
            listener.accept()
            await stream.send(payload, "quit", 5)
            await stream.aclose(5)

        asyncio.run(main())
    assert listener.read_all() == (len(payload), False)


# -- the caller's timeout, not the server's ------------------------------------------------


@STREAMS
def test_receive_waits_only_as_long_as_told(kind: str, listener: Listener) -> None:
    server = Server("127.0.0.1", port=listener.port, timeout=30)

    def body(stream: Any) -> Any:
        listener.accept()
        return stream.receive("greeting", 0.3)

    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        with_stream(kind, server, body)
    assert time.monotonic() - started < 2
    assert info.value.stage == "greeting"


@STREAMS
def test_tls_handshake_waits_only_as_long_as_told(kind: str, listener: Listener) -> None:
    """A peer that never answers the ClientHello: the whole handshake is bounded."""
    server = Server("127.0.0.1", port=listener.port, timeout=30, options=Option.SECURE)

    def body(stream: Any) -> Any:
        listener.accept()
        return stream.start_tls(server, "starttls", 0.5)

    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        with_stream(kind, server, body)
    assert time.monotonic() - started < 2.5
    assert info.value.stage == "starttls"


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name lookups of SLOW_NAME hang for 2.5 s, then give 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_NAME:
            time.sleep(2.5)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@STREAMS
@pytest.mark.usefixtures("slow_dns")
def test_name_lookup_is_inside_the_connect_deadline(kind: str, listener: Listener) -> None:
    """Issue 13.11: the connect budget covers DNS too."""
    server = Server(SLOW_NAME, port=listener.port)
    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        if kind == "sync":
            SyncStream.connect(server, 1)
        else:
            asyncio.run(AsyncStream.connect(server, 1))
    assert info.value.stage == "connect"
    # The async run waits for the executor's lookup thread when the loop shuts down;
    # the timeout itself fired at 1 s.
    assert time.monotonic() - started < (2 if kind == "sync" else 3.5)


# -- the peer address: plaintext AUTH only to a loopback peer ------------------------------


@STREAMS
def test_stream_reports_the_connected_address(kind: str, listener: Listener) -> None:
    server = Server("localhost", port=listener.port)
    peer = with_stream(kind, server, _peer_of(kind))
    assert peer in ("127.0.0.1", "::1")


def _peer_of(kind: str) -> Callable[[Any], Any]:
    if kind == "sync":
        return lambda stream: stream.peer

    async def peer(stream: Any) -> Any:
        return stream.peer

    return peer


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),  # private is not loopback
        ("192.168.1.20", False),
        ("172.16.0.9", False),
        ("169.254.0.1", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),
        ("203.0.113.7", False),
        ("localhost", False),  # a name is not an address
        (None, False),  # unknown (or a proxy's)
    ],
)
def test_plaintext_auth_exemption_follows_the_peer_address(peer: str | None, allowed: bool) -> None:
    """Issue 13.13: ``localhost.`` can resolve anywhere; only the address reached counts."""
    for host in ("localhost", "127.0.0.1", "mail.example.org"):
        assert Server(host, "u", "p").plaintext_auth_allowed_to(peer) is allowed


def test_no_exemption_through_a_tunnel_or_proxy_and_always_when_allowed() -> None:
    assert not Server("127.0.0.1", "u", "p", options=Option.TUNNEL).plaintext_auth_allowed_to(
        "127.0.0.1"
    )
    proxied = Server("127.0.0.1", "u", "p", proxy="socks5://127.0.0.1:1080")
    assert not proxied.plaintext_auth_allowed_to("127.0.0.1")
    allowed = Server("mx.example.org", "u", "p", allow_plaintext_auth=True)
    assert allowed.plaintext_auth_allowed_to("203.0.113.7")


def _open_session(server: Server, peer: str | None) -> list[bytes]:
    """Run Session.open on scripted replies (no socket); what the client sent."""
    session = Session(server, peer=peer)
    replies = [b"220 mx ESMTP\r\n", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", b"235 ok\r\n"]
    sent: list[bytes] = []
    flow = session.open("client.test")
    value: Any = None
    try:
        while True:
            op = flow.send(value)
            value = None
            if isinstance(op, Send):
                sent.append(op.data)
            elif isinstance(op, Receive):
                value = b"" if op.poll else replies.pop(0)
    except StopIteration:
        return sent
    except AuthError as exc:
        assert "allow_plaintext_auth" in str(exc)
        return sent


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.20", None])
def test_session_refuses_plaintext_auth_to_localhost_name_on_another_peer(
    peer: str | None,
) -> None:
    sent = _open_session(Server("localhost", "user", "secret"), peer)
    assert not any(line.startswith(b"AUTH") for line in sent)


def test_session_allows_plaintext_auth_to_a_loopback_peer_whatever_the_name() -> None:
    sent = _open_session(Server("relay.example.test", "user", "secret"), "127.0.0.1")
    assert any(line.startswith(b"AUTH PLAIN ") for line in sent)


@pytest.fixture
def relay_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """``relay.example.test`` resolves to 127.0.0.1 (a name that says nothing about loopback)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "relay.example.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "relay.example.test"


@DRIVERS
def test_plaintext_auth_to_a_name_that_reaches_loopback(driver: str, relay_name: str, fake_smtp):
    """The drivers hand the connected address to the session: the exemption follows it."""
    fake = fake_smtp(
        Responder(capabilities=("AUTH PLAIN",), replies={"AUTH PLAIN ": "235 2.7.0 ok"})
    )
    server = Server(relay_name, "user", "secret", fake.port, 3)
    run(driver, server, sender="a@example.org", recipients=("b@example.org",))
    fake.assert_ok()
    assert len(fake.data) == 1
