"""A small threaded proxy on 127.0.0.1 for the proxy tests: SOCKS5, SOCKS4(a), HTTP CONNECT.

``TestProxy(kind, *, username=None, password=None, refuse=False, resolve=None)`` listens on an
ephemeral port; ``start()`` / ``stop()`` (or use it as a context manager). Kinds:

- ``"socks5"``: RFC 1928, CONNECT only. With ``username``/``password`` it demands RFC 1929
  username/password authentication (method 0x02) and refuses everything else; without them it
  offers "no authentication" (method 0x00). IPv4, IPv6 and domain-name targets.
- ``"socks4"``: SOCKS4 and SOCKS4a (``0.0.0.x`` + a domain name) CONNECT.
- ``"http"``: ``CONNECT host:port HTTP/1.1``; with credentials it checks
  ``Proxy-Authorization: Basic ...`` and answers 407 otherwise.

``refuse=True`` makes every request fail the way the protocol says (SOCKS5 reply 0x05
"connection refused", SOCKS4 0x5B, HTTP 403), after the handshake and authentication.
``coalesce=True`` (HTTP) waits for the server's first bytes (an SMTP greeting) and sends them
in the same segment as the ``200`` reply, as a busy proxy may. ``resolve`` maps host names to
addresses the proxy connects to instead (the proxy resolves names, as a remote proxy would;
``mx.fixture.test`` -> ``127.0.0.1`` by default).

Records: ``connections`` (accepted client connections), ``targets`` (``(host, port)`` as the
client asked for them, host a ``str``: an IP literal or a name), ``auth_failures`` and
``errors`` (anything the proxy did not expect). Relaying is byte-exact in both directions; a
connection ends when either side closes; ``stop()`` ends everything within about a second.

Fixture: ``proxy_factory`` -> ``make(kind, **kwargs) -> started TestProxy``; all are stopped at
teardown (load this module as a pytest plugin). ``proxy_pool()`` is the same as a context
manager, for a module that defines its own fixture.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping

import pytest

__all__ = ["TestProxy", "proxy_factory", "proxy_pool"]

KINDS = ("socks5", "socks4", "http")
_IO_TIMEOUT = 5.0
_DEFAULT_RESOLVE = {"mx.fixture.test": "127.0.0.1", "localhost": "127.0.0.1"}


class _Refused(Exception):
    """The request cannot be served; the protocol's failure reply has been sent."""


class TestProxy:
    """One proxy server (see the module docstring)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        kind: str,
        *,
        username: str | None = None,
        password: str | None = None,
        refuse: bool = False,
        resolve: Mapping[str, str] | None = None,
        coalesce: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.username = username
        self.password = password
        self.refuse = refuse
        self.resolve = dict(_DEFAULT_RESOLVE if resolve is None else resolve)
        self.coalesce = coalesce
        self.port = 0
        self.connections = 0
        self.targets: list[tuple[str, int]] = []
        self.auth_failures = 0
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    # -- public ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, *, username: str | None = None, password: str | None = None) -> str:
        """``scheme://[user:pass@]127.0.0.1:port`` with this proxy's credentials by default."""
        user = self.username if username is None else username
        secret = self.password if password is None else password
        auth = f"{user}:{secret}@" if user is not None else ""
        return f"{self.kind}://{auth}127.0.0.1:{self.port}"

    def start(self) -> TestProxy:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        lsock.settimeout(0.1)
        self._listener = lsock
        self.port = lsock.getsockname()[1]
        self._spawn(self._accept_loop, f"proxy-accept-{self.port}")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            thread.join(timeout)

    def __enter__(self) -> TestProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TestProxy {self.kind} 127.0.0.1:{self.port} connections={self.connections}>"

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            with self._lock:
                self.connections += 1
                index = self.connections
            self._spawn(self._serve, f"proxy-{self.port}-{index}", client)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_IO_TIMEOUT)
        upstream: socket.socket | None = None
        try:
            handshake = {"socks5": self._socks5, "socks4": self._socks4, "http": self._http}
            upstream = handshake[self.kind](client)
            if upstream is not None:
                self._relay(client, upstream)
        except _Refused:
            pass
        except (OSError, ValueError, struct.error) as exc:
            if not self._stopping.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _connect(self, host: str, port: int) -> socket.socket:
        self.targets.append((host, port))
        address = self.resolve.get(host.lower(), host)
        sock = socket.create_connection((address, port), timeout=_IO_TIMEOUT)
        self._track(sock)
        return sock

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        a.setblocking(False)
        b.setblocking(False)
        peers = {a: b, b: a}
        while not self._stopping.is_set():
            readable, _, _ = select.select(list(peers), [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                other = peers[sock]
                other.setblocking(True)
                other.settimeout(_IO_TIMEOUT)
                try:
                    other.sendall(data)
                except OSError:
                    return
                finally:
                    other.setblocking(False)

    # -- SOCKS5 (RFC 1928, RFC 1929) -------------------------------------------------------

    def _socks5(self, client: socket.socket) -> socket.socket | None:
        version, count = _recv_exact(client, 2)
        if version != 5:
            raise ValueError(f"not SOCKS5 (version {version})")
        methods = _recv_exact(client, count)
        wanted = 2 if self.username is not None else 0
        if wanted not in methods:
            self.auth_failures += 1
            client.sendall(b"\x05\xff")
            raise _Refused
        client.sendall(bytes([5, wanted]))
        if wanted == 2:
            sub, ulen = _recv_exact(client, 2)
            user = _recv_exact(client, ulen).decode("utf-8", "replace")
            (plen,) = _recv_exact(client, 1)
            secret = _recv_exact(client, plen).decode("utf-8", "replace")
            if sub != 1 or user != self.username or secret != self.password:
                self.auth_failures += 1
                client.sendall(b"\x01\x01")
                raise _Refused
            client.sendall(b"\x01\x00")
        version, command, _, atyp = _recv_exact(client, 4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(_recv_exact(client, 4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(_recv_exact(client, 16)))
        elif atyp == 3:
            (length,) = _recv_exact(client, 1)
            host = _recv_exact(client, length).decode("idna")
        else:
            raise ValueError(f"bad SOCKS5 address type {atyp}")
        (port,) = struct.unpack("!H", _recv_exact(client, 2))
        failure = b"\x05\x05\x00\x01" + bytes(6)  # 0x05: connection refused
        if command != 1:
            client.sendall(b"\x05\x07\x00\x01" + bytes(6))  # command not supported
            raise _Refused
        if self.refuse:
            self.targets.append((host, port))
            client.sendall(failure)
            raise _Refused
        try:
            upstream = self._connect(host, port)
        except OSError:
            client.sendall(failure)
            raise _Refused from None
        bound_host, bound_port = upstream.getsockname()[:2]
        client.sendall(
            b"\x05\x00\x00\x01" + socket.inet_aton(bound_host) + struct.pack("!H", bound_port)
        )
        return upstream

    # -- SOCKS4 / SOCKS4a -----------------------------------------------------------------

    def _socks4(self, client: socket.socket) -> socket.socket | None:
        version, command = _recv_exact(client, 2)
        if version != 4:
            raise ValueError(f"not SOCKS4 (version {version})")
        (port,) = struct.unpack("!H", _recv_exact(client, 2))
        raw_ip = _recv_exact(client, 4)
        user = _recv_until_nul(client)
        host = socket.inet_ntoa(raw_ip)
        if raw_ip[:3] == b"\0\0\0" and raw_ip[3] != 0:  # SOCKS4a: a name follows
            host = _recv_until_nul(client).decode("idna")
        failure = b"\x00\x5b" + bytes(6)
        if self.username is not None and user.decode("utf-8", "replace") != self.username:
            self.auth_failures += 1
            client.sendall(failure)
            raise _Refused
        if command != 1 or self.refuse:
            self.targets.append((host, port))
            client.sendall(failure)
            raise _Refused
        try:
            upstream = self._connect(host, port)
        except OSError:
            client.sendall(failure)
            raise _Refused from None
        client.sendall(b"\x00\x5a" + bytes(6))
        return upstream

    # -- HTTP CONNECT ---------------------------------------------------------------------

    def _http(self, client: socket.socket) -> socket.socket | None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                raise ValueError("client closed during the CONNECT request")
            head += chunk
            if len(head) > 16384:
                raise ValueError("CONNECT request too long")
        request, _, _ = head.partition(b"\r\n\r\n")
        lines = request.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method.upper() != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            raise _Refused
        if self.username is not None:
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if headers.get("proxy-authorization") != f"Basic {expected}":
                self.auth_failures += 1
                client.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
                raise _Refused
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        port = int(port_text)
        if self.refuse:
            self.targets.append((host, port))
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            raise _Refused
        try:
            upstream = self._connect(host, port)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            raise _Refused from None
        reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
        if self.coalesce:  # the server's first bytes in the same segment as the 200
            upstream.settimeout(_IO_TIMEOUT)
            reply += upstream.recv(65536)
        client.sendall(reply)
        return upstream


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ValueError(f"client closed the connection ({len(out)} of {n} bytes read)")
        out += chunk
    return out


def _recv_until_nul(sock: socket.socket, limit: int = 512) -> bytes:
    out = b""
    while True:
        byte = _recv_exact(sock, 1)
        if byte == b"\0":
            return out
        out += byte
        if len(out) > limit:
            raise ValueError("SOCKS4 field too long")


@contextlib.contextmanager
def proxy_pool() -> Iterator[Callable[..., TestProxy]]:
    """``with proxy_pool() as make:`` -> ``make(kind, **kwargs) -> started TestProxy``.

    Every proxy is stopped on exit; a proxy that recorded an unexpected error fails the test.
    """
    made: list[TestProxy] = []

    def make(kind: str, **kwargs: object) -> TestProxy:
        proxy = TestProxy(kind, **kwargs)  # type: ignore[arg-type]
        made.append(proxy.start())
        return proxy

    yield make
    problems = []
    for proxy in made:
        proxy.stop()
        if proxy.errors:
            problems.append(f"{proxy!r}: " + "; ".join(proxy.errors))
    if problems:
        pytest.fail("proxy errors:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., TestProxy]]:
    """``make(kind, **kwargs) -> started TestProxy``; stopped at teardown (see proxy_pool)."""
    with proxy_pool() as make:
        yield make
