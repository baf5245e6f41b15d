"""Network streams: a blocking socket and an asyncio stream behind the same
operations (connect, send, poll, receive, start TLS, close, abort).

This is the only module that sees ``OSError``, ``socket.timeout`` and
``ssl.SSLError``; each is converted here, once, into the contract's exception
tree with the session stage it happened in.

A stream decides no limits: the driver passes the time left into every call
(as httpcore does), so one authority — the driver's deadline — bounds each
wait. ``connect`` takes one budget for the whole connect phase: name lookup,
every address tried, the proxy exchange and an implicit-TLS handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from smtpsubmit.errors import (
    ConnectError,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    TlsError,
)
from smtpsubmit.server import Option, Server
from smtpsubmit.tls import TlsInfo, describe_tls_error, make_ssl_context

__all__ = ["AsyncStream", "SyncStream", "local_hostname_for"]

READ_SIZE = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)  # close() sends RST and drops unsent data

T = TypeVar("T")
TlsErrors = Callable[[BaseException, str], SmtpError]


def local_hostname_for(server: Server, sockname: Any) -> str:
    """The EHLO name: ``local_hostname``, else this host's FQDN, else an address literal."""
    if server.local_hostname:
        return server.local_hostname
    fqdn = socket.getfqdn()
    if "." in fqdn and fqdn.isascii() and not fqdn.endswith(".localdomain"):
        return fqdn
    address = sockname[0] if isinstance(sockname, tuple) and sockname else "127.0.0.1"
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def _connect_error(exc: BaseException, server: Server, timeout: float) -> SmtpError:
    where = f"{server.host}:{server.effective_port}"
    if server.proxy and Option.TUNNEL not in server.options:
        where += " (through the proxy)"
    if isinstance(exc, socket.gaierror):
        err = ConnectError(f"unknown host {server.host!r}: {exc.strerror}", stage="connect")
        err.unknown_host = True
        return err
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(
            f"connecting to {where} did not complete within {timeout:.3g} s",
            stage="connect",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection to {where} refused", stage="connect")
    return ConnectError(f"cannot connect to {where}: {exc}", stage="connect")


def _io_error(
    exc: BaseException, stage: str, doing: str, timeout: float, tls_errors: TlsErrors | None
) -> SmtpError:
    clean_eof = isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    if isinstance(exc, ssl.SSLError) and not clean_eof and tls_errors is not None:
        # A TLS alert can arrive after the handshake (TLS 1.3 reports a refused client
        # certificate on the first read): it is a TLS failure whatever the stage.
        return tls_errors(exc, stage)
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(f"no progress {doing} within {timeout:.3g} s", stage=stage)
    return ServerDisconnected(f"the connection was lost {doing}: {exc}", stage=stage)


def _handshake_error(exc: BaseException, stage: str, server: Server, timeout: float) -> SmtpError:
    """A failed TLS handshake is a TlsError (a timeout stays an SmtpTimeout)."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) and not isinstance(
        exc, ssl.SSLEOFError
    ):
        return describe_tls_error(exc, server, stage)
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(
            f"the TLS handshake did not complete within {timeout:.3g} s", stage=stage
        )
    return TlsError(
        f"the connection was lost during the TLS handshake with "
        f"{server.effective_tls_server_name!r} ({exc or type(exc).__name__}); the server "
        "may not accept this client's TLS versions or ciphers, or is not a TLS server",
        stage=stage,
        is_temporary=True,
    )


def _proxy_error(exc: BaseException, server: Server, timeout: float) -> SmtpError:
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

    if isinstance(exc, SmtpError):
        return exc
    if isinstance(exc, ProxyTimeoutError):
        return SmtpTimeout("connecting through the proxy timed out", stage="connect")
    if isinstance(exc, ProxyConnectionError | ProxyError):
        return ConnectError(f"the proxy failed: {exc}", stage="connect")
    return _connect_error(exc, server, timeout)


def _socks_url(server: Server) -> str:
    """python_socks knows socks5/socks4; socks5h/socks4a are the same with remote DNS."""
    scheme, sep, rest = (server.proxy or "").partition("://")
    scheme = scheme.lower()
    return {"socks5h": "socks5", "socks4a": "socks4"}.get(scheme, scheme) + sep + rest


def _is_http_proxy(server: Server) -> bool:
    return bool(server.proxy) and urlsplit(server.proxy or "").scheme.lower() == "http"


_MAX_PROXY_REPLY = 16 * 1024


def _connect_request(server: Server, host: str, port: int) -> tuple[tuple[str, int], bytes]:
    """Our own HTTP CONNECT (python_socks reads past the proxy's reply and loses the
    SMTP greeting that follows it in the same segment)."""
    parts = urlsplit(server.proxy or "")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair.encode()).decode())
    return (parts.hostname or "", parts.port or 8080), ("\r\n".join(lines) + "\r\n\r\n").encode()


def _check_connect_reply(head: bytes, host: str, port: int) -> None:
    status = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    words = status.split(None, 2)
    if len(words) >= 2 and words[0].startswith("HTTP/") and words[1][:1] == "2":
        return
    raise ConnectError(
        f"the HTTP proxy refused the connection to {host}:{port}: {status[:200]!r}",
        stage="connect",
        is_temporary=status[9:10] == "5" if len(status) > 9 else True,
    )


def _peer_ip(peername: Any, server: Server) -> str | None:
    """The address actually connected to; None through a proxy (that is the proxy's)."""
    if server.proxy or not isinstance(peername, tuple) or not peername:
        return None
    return str(peername[0])


def _peername(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return None


# -- the blocking connect phase, under one deadline ---------------------------------------


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the connect phase ran out of time")
    return left


def _within(deadline: float, work: Callable[[], T], discard: Callable[[T], None]) -> T:
    """``work()`` in a helper thread, abandoned at the deadline.

    For blocking calls that take no overall timeout (``getaddrinfo``, python_socks'
    per-operation timeouts); a result that comes too late is discarded by the helper.
    """
    results: list[Any] = []
    abandoned: list[bool] = []
    lock = threading.Lock()
    done = threading.Event()

    def run() -> None:
        try:
            value: Any = work()
        except BaseException as exc:  # handed to the waiting thread
            value = exc
        with lock:
            if not abandoned:
                results.append(value)
                done.set()
                return
        if not isinstance(value, BaseException):
            discard(value)

    threading.Thread(target=run, name="smtpsubmit-connect", daemon=True).start()
    done.wait(max(deadline - time.monotonic(), 0))
    with lock:
        if not results:
            abandoned.append(True)
            raise TimeoutError("the connect phase ran out of time")
    if isinstance(results[0], BaseException):
        raise results[0]
    return results[0]  # type: ignore[no-any-return]


def _addresses(host: str, port: int, deadline: float) -> list[Any]:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return _within(
            deadline, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), _drop
        )
    return socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)


def _drop(_: object) -> None:
    """Nothing to release (a late name lookup)."""


def _open_tcp(host: str, port: int, deadline: float) -> socket.socket:
    """Each address in turn, all within the one deadline."""
    error: BaseException | None = None
    for family, kind, proto, _, address in _addresses(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError) or isinstance(exc, TimeoutError | socket.timeout):
                raise
            error = exc
            continue
        return sock
    raise error or OSError(f"no address for {host!r}")


def _http_connect(server: Server, host: str, port: int, deadline: float) -> socket.socket:
    address, request = _connect_request(server, host, port)
    sock = _open_tcp(*address, deadline)
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        head = bytearray()
        while not head.endswith(b"\r\n\r\n"):
            sock.settimeout(_left(deadline))  # a trickled reply cannot extend the deadline
            byte = sock.recv(1)  # one at a time: the server's greeting may follow at once
            if not byte or len(head) > _MAX_PROXY_REPLY:
                raise ConnectError("the HTTP proxy did not answer CONNECT", stage="connect")
            head += byte
        _check_connect_reply(bytes(head), host, port)
    except BaseException:
        sock.close()
        raise
    return sock


def _socks_connect(server: Server, host: str, port: int, deadline: float) -> socket.socket:
    from python_socks.sync import Proxy

    proxy = Proxy.from_url(_socks_url(server), rdns=True)
    return _within(
        deadline, lambda: proxy.connect(host, port, timeout=_left(deadline)), _close_socket
    )


def _close_socket(sock: socket.socket) -> None:
    sock.close()


def _sync_handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """The whole handshake within ``timeout``, however slowly the peer trickles it."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.0)
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            ready = select.select([sock], [], [], _left(deadline))[0]
        except ssl.SSLWantWriteError:
            ready = select.select([], [sock], [], _left(deadline))[1]
        if not ready:
            raise TimeoutError("the TLS handshake ran out of time")


class SyncStream:
    """A blocking socket (optionally through a proxy, optionally TLS)."""

    def __init__(self, sock: socket.socket, peer: str | None = None) -> None:
        self._sock = sock
        self.peer = peer  # the connected address (None through a proxy)
        self.tls_info: TlsInfo | None = None
        self._tls_errors: TlsErrors | None = None
        # settimeout() is a system call: made only when the timeout changes.
        self._timeout = sock.gettimeout()
        # A plain socket is polled for readability without a read; a TLS one is not
        # (see poll()). A plain socket also stays non-blocking: a socket with a timeout
        # makes Python poll() before every send and recv, two system calls per message
        # of a stream that finds its replies already there and its writes taken at once.
        # send() and receive() wait with these pollers only when the socket is not ready.
        self._poller: Any = None
        self._writable: Any = None
        if not isinstance(sock, ssl.SSLSocket) and hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
            self._writable = select.poll()
            self._writable.register(sock, select.POLLOUT)

    def _set_timeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout

    @classmethod
    def connect(cls, server: Server, timeout: float) -> SyncStream:
        """Connect within ``timeout`` seconds in all (lookup, proxy, implicit TLS)."""
        deadline = time.monotonic() + timeout
        host, port = server.host, server.effective_port
        try:
            if _is_http_proxy(server):
                sock = _http_connect(server, host, port, deadline)
            elif server.proxy:
                sock = _socks_connect(server, host, port, deadline)
            else:
                sock = _open_tcp(host, port, deadline)
        except Exception as exc:
            raise _proxy_error(exc, server, timeout) from None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = cls(sock, _peer_ip(_peername(sock), server))
        if Option.SECURE_IMPLICIT in server.options:
            try:
                stream.start_tls(server, "connect", max(deadline - time.monotonic(), 0.001))
            except BaseException:
                stream.abort()
                raise
        return stream

    @property
    def sockname(self) -> Any:
        try:
            return self._sock.getsockname()
        except OSError:
            return None

    def send(self, data: bytes, stage: str, timeout: float) -> None:
        """Write all of ``data`` within ``timeout`` seconds (the whole write, not each part)."""
        try:
            if self._writable is not None:
                self._send_plain(data, max(timeout, 0.001))
            else:
                self._set_timeout(max(timeout, 0.001))
                self._sock.sendall(data)
        except (OSError, ValueError) as exc:
            raise _io_error(exc, stage, "while sending", timeout, self._tls_errors) from None

    def _send_plain(self, data: bytes, timeout: float) -> None:
        """``sendall`` on the non-blocking plain socket: a write that fits is one call."""
        self._set_timeout(0.0)
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        deadline = time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the write did not complete in time")
            self._writable.poll(left * 1000)
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                continue

    def poll(self, stage: str) -> bytes:
        """What the server sent while we were idle, without waiting: ``b""`` if nothing.

        A non-blocking read, not ``select``: on TLS a readable socket may hold only a
        session ticket, and a blocking read would then wait for the full timeout. A
        plain socket is asked with ``poll`` first, which costs no exception when idle.
        """
        try:
            if self._poller is not None and not self._poller.poll(0):
                return b""
            self._set_timeout(0.0)
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return b""
        except (OSError, ValueError) as exc:
            raise _io_error(exc, stage, "while idle", 0.0, self._tls_errors) from None
        if not data:
            raise ServerDisconnected("the server closed the idle connection", stage=stage)
        return data

    def receive(self, stage: str, timeout: float) -> bytes:
        try:
            if self._poller is not None:
                data = self._receive_plain(max(timeout, 0.001))
            else:
                self._set_timeout(max(timeout, 0.001))
                data = self._sock.recv(READ_SIZE)
        except (OSError, ValueError) as exc:
            doing = "waiting for the server's reply"
            raise _io_error(exc, stage, doing, timeout, self._tls_errors) from None
        if not data:
            raise ServerDisconnected(
                "the server closed the connection when a reply was due", stage=stage
            )
        return data

    def _receive_plain(self, timeout: float) -> bytes:
        """``recv`` on the non-blocking plain socket: what is already here costs one call."""
        self._set_timeout(0.0)
        sock = self._sock
        try:
            return sock.recv(READ_SIZE)
        except BlockingIOError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no data in time")
            self._poller.poll(left * 1000)
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                continue

    def start_tls(self, server: Server, stage: str, timeout: float) -> TlsInfo:
        """Handshake with ``server``'s TLS settings, the whole of it within ``timeout``."""
        context = make_ssl_context(server)
        try:
            tls = context.wrap_socket(
                self._sock,
                server_hostname=server.effective_tls_server_name,
                do_handshake_on_connect=False,
            )
            self._sock = tls
            _sync_handshake(tls, timeout)
        except (OSError, ValueError) as exc:
            raise _handshake_error(exc, stage, server, timeout) from None
        self._timeout = tls.gettimeout()
        self._poller = self._writable = None
        self._tls_errors = lambda exc, stage: describe_tls_error(exc, server, stage)
        self.tls_info = TlsInfo.from_ssl_object(tls)
        return self.tls_info

    def close(self) -> None:
        """Close after the session ended cleanly (what was written still goes out)."""
        with contextlib.suppress(OSError):
            self._sock.close()

    def abort(self) -> None:
        """Close at once, dropping whatever is still unsent (RST): a session given up
        mid-transaction must never complete it afterwards."""
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.close()


async def _http_connect_async(
    server: Server, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address, request = _connect_request(server, host, port)
    reader, writer = await asyncio.open_connection(*address, limit=_MAX_PROXY_REPLY)
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # the rest stays buffered
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise ConnectError("the HTTP proxy did not answer CONNECT", stage="connect") from None
        _check_connect_reply(head, host, port)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def _open_async(
    server: Server, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.host, server.effective_port
    if _is_http_proxy(server):
        return await _http_connect_async(server, host, port)
    if server.proxy:
        from python_socks.async_.asyncio import Proxy

        proxy = Proxy.from_url(_socks_url(server), rdns=True)
        sock = await proxy.connect(host, port, timeout=timeout)
        return await asyncio.open_connection(sock=sock)
    return await asyncio.open_connection(host, port)


class AsyncStream:
    """An asyncio stream pair (optionally through a proxy, optionally TLS)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer  # the connected address (None through a proxy)
        self.tls_info: TlsInfo | None = None
        self._tls_errors: TlsErrors | None = None

    @classmethod
    async def connect(cls, server: Server, timeout: float) -> AsyncStream:
        """Connect within ``timeout`` seconds in all (lookup, proxy, implicit TLS)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await _open_async(server, timeout)
        except Exception as exc:
            raise _proxy_error(exc, server, timeout) from None
        stream = cls(reader, writer, _peer_ip(writer.get_extra_info("peername"), server))
        if Option.SECURE_IMPLICIT in server.options:
            try:  # TCP first, then TLS: a handshake failure is a TlsError, as in SyncStream
                await stream.start_tls(server, "connect", max(deadline - loop.time(), 0.001))
            except BaseException:
                stream.abort()
                raise
        return stream

    @property
    def sockname(self) -> Any:
        return self._writer.get_extra_info("sockname")

    def _record_tls(self) -> TlsInfo | None:
        obj = self._writer.get_extra_info("ssl_object")
        self.tls_info = TlsInfo.from_ssl_object(obj) if obj is not None else None
        return self.tls_info

    async def send(self, data: bytes, stage: str, timeout: float) -> None:
        try:
            writer = self._writer
            writer.write(data)
            transport = writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                # Everything went to the socket: drain() cannot wait, so no timer is
                # needed (it still runs, for the errors it reports).
                await writer.drain()
                return
            async with asyncio.timeout(max(timeout, 0.001)):
                await writer.drain()
        except (OSError, ValueError, RuntimeError) as exc:
            raise _io_error(exc, stage, "while sending", timeout, self._tls_errors) from None

    async def poll(self, stage: str) -> bytes:
        """What the server sent while we were idle, without waiting: ``b""`` if nothing."""
        if not getattr(self._reader, "_buffer", b"") and not self._reader.at_eof():
            return b""
        return await self._read(stage, None)  # already arrived: read() cannot wait

    async def receive(self, stage: str, timeout: float) -> bytes:
        reader = self._reader
        if getattr(reader, "_buffer", b"") or reader.at_eof():
            return await self._read(stage, None)  # already arrived: read() cannot wait
        return await self._read(stage, max(timeout, 0.001))

    async def _read(self, stage: str, timeout: float | None) -> bytes:
        try:
            if timeout is None:  # the bytes are already here: no timer to arm and cancel
                data = await self._reader.read(READ_SIZE)
            else:
                async with asyncio.timeout(timeout):
                    data = await self._reader.read(READ_SIZE)
        except (OSError, ValueError) as exc:
            doing = "waiting for the server's reply"
            raise _io_error(exc, stage, doing, timeout or 0.0, self._tls_errors) from None
        if not data:
            raise ServerDisconnected(
                "the server closed the connection when a reply was due", stage=stage
            )
        return data

    async def start_tls(self, server: Server, stage: str, timeout: float) -> TlsInfo | None:
        """Handshake with ``server``'s TLS settings, the whole of it within ``timeout``."""
        context = make_ssl_context(server)
        if getattr(self._reader, "_buffer", b""):
            # Plaintext that arrived after the STARTTLS reply would survive the handshake
            # in the reader's buffer and be read as if it came over TLS (fault S8).
            what = "after its STARTTLS reply" if stage == "starttls" else "before TLS started"
            raise TlsError(
                f"the server sent plaintext {what} (a plaintext port, a broken server, or an "
                "attempt to inject commands); the TLS handshake was not started",
                stage=stage,
            )
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                await self._writer.start_tls(
                    context, server_hostname=server.effective_tls_server_name
                )
        except (OSError, ValueError) as exc:
            raise _handshake_error(exc, stage, server, timeout) from None
        self._tls_errors = lambda exc, stage: describe_tls_error(exc, server, stage)
        return self._record_tls()

    def close(self) -> None:
        """Close after the session ended cleanly (buffered writes still go out)."""
        with contextlib.suppress(Exception):
            self._writer.close()

    def abort(self) -> None:
        """Close at once, dropping what is buffered here and in the kernel (RST).

        ``writer.close()`` would still flush the write buffer — the final dot of a
        message the caller was told failed or was cancelled included.
        """
        transport = self._writer.transport
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        with contextlib.suppress(Exception):
            transport.abort()

    async def aclose(self, timeout: float) -> None:
        """``close()``, then wait (at most ``timeout`` s) until the connection is closed."""
        self.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(timeout, 0.001)):
                await self._writer.wait_closed()
