"""Network streams: a blocking socket and an asyncio stream behind the same
five operations (connect, send, receive, start TLS, close).

This is the only module that sees ``OSError``, ``socket.timeout`` and
``ssl.SSLError``; each is converted here, once, into the contract's exception
tree with the session stage it happened in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import select
import socket
import ssl
from typing import Any
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


def local_hostname_for(server: Server, sockname: Any) -> str:
    """The EHLO name: ``local_hostname``, else this host's FQDN, else an address literal."""
    if server.local_hostname:
        return server.local_hostname
    fqdn = socket.getfqdn()
    if "." in fqdn and fqdn.isascii() and not fqdn.endswith(".localdomain"):
        return fqdn
    address = sockname[0] if isinstance(sockname, tuple) and sockname else "127.0.0.1"
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def _connect_error(exc: BaseException, server: Server) -> SmtpError:
    where = f"{server.host}:{server.effective_port}"
    if server.proxy and Option.TUNNEL not in server.options:
        where += " (through the proxy)"
    if isinstance(exc, socket.gaierror):
        err = ConnectError(f"unknown host {server.host!r}: {exc.strerror}", stage="connect")
        err.unknown_host = True
        return err
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(f"connecting to {where} timed out", stage="connect")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection to {where} refused", stage="connect")
    return ConnectError(f"cannot connect to {where}: {exc}", stage="connect")


def _io_error(exc: BaseException, stage: str, doing: str, server: Server) -> SmtpError:
    clean_eof = isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    if isinstance(exc, ssl.SSLError) and not clean_eof:
        # A TLS alert can arrive after the handshake (TLS 1.3 reports a refused client
        # certificate on the first read): it is a TLS failure whatever the stage.
        return describe_tls_error(exc, server, stage)
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(
            f"no progress {doing} within {server.effective_timeout:g} s", stage=stage
        )
    return ServerDisconnected(f"the connection was lost {doing}: {exc}", stage=stage)


def _handshake_error(exc: BaseException, stage: str, server: Server) -> SmtpError:
    """A failed TLS handshake is a TlsError (a timeout stays an SmtpTimeout)."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) and not isinstance(
        exc, ssl.SSLEOFError
    ):
        return describe_tls_error(exc, server, stage)
    if isinstance(exc, TimeoutError | socket.timeout):
        return SmtpTimeout(
            f"the TLS handshake did not complete within {server.effective_timeout:g} s",
            stage=stage,
        )
    return TlsError(
        f"the connection was lost during the TLS handshake with "
        f"{server.effective_tls_server_name!r} ({exc or type(exc).__name__}); the server "
        "may not accept this client's TLS versions or ciphers, or is not a TLS server",
        stage=stage,
        is_temporary=True,
    )


def _proxy_error(exc: BaseException, server: Server) -> SmtpError:
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

    if isinstance(exc, SmtpError):
        return exc
    if isinstance(exc, ProxyTimeoutError):
        return SmtpTimeout("connecting through the proxy timed out", stage="connect")
    if isinstance(exc, ProxyConnectionError | ProxyError):
        return ConnectError(f"the proxy failed: {exc}", stage="connect")
    return _connect_error(exc, server)


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


def _http_connect(server: Server, host: str, port: int, timeout: float) -> socket.socket:
    address, request = _connect_request(server, host, port)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.sendall(request)
        head = bytearray()
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)  # one at a time: the server's greeting may follow at once
            if not byte or len(head) > _MAX_PROXY_REPLY:
                raise ConnectError("the HTTP proxy did not answer CONNECT", stage="connect")
            head += byte
        _check_connect_reply(bytes(head), host, port)
    except BaseException:
        sock.close()
        raise
    return sock


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
        writer.close()
        raise
    return reader, writer


class SyncStream:
    """A blocking socket (optionally through a proxy, optionally TLS)."""

    def __init__(self, sock: socket.socket, server: Server) -> None:
        self._sock = sock
        self._server = server
        self.tls_info: TlsInfo | None = None
        # settimeout() is a system call: made only when the timeout changes.
        self._timeout = sock.gettimeout()
        # A plain socket is polled for readability without a read (and without
        # switching it to non-blocking and back); a TLS one is not (see poll()).
        self._poller: Any = None
        if not isinstance(sock, ssl.SSLSocket) and hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)

    def _set_timeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout

    @classmethod
    def connect(cls, server: Server, deadline_timeout: float | None = None) -> SyncStream:
        timeout = deadline_timeout or server.effective_timeout
        host, port = server.host, server.effective_port
        try:
            if _is_http_proxy(server):
                sock = _http_connect(server, host, port, timeout)
            elif server.proxy:
                from python_socks.sync import Proxy

                proxy = Proxy.from_url(_socks_url(server), rdns=True)
                sock = proxy.connect(host, port, timeout=timeout)
            else:
                sock = socket.create_connection((host, port), timeout=timeout)
        except Exception as exc:
            raise _proxy_error(exc, server) from None
        sock.settimeout(server.effective_timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = cls(sock, server)
        if Option.SECURE_IMPLICIT in server.options:
            try:
                stream.start_tls("connect")
            except BaseException:
                stream.close()
                raise
        return stream

    @property
    def sockname(self) -> Any:
        try:
            return self._sock.getsockname()
        except OSError:
            return None

    def send(self, data: bytes, stage: str) -> None:
        try:
            # The whole write must finish within the timeout (receive() shortens it).
            self._set_timeout(self._server.effective_timeout)
            self._sock.sendall(data)
        except (OSError, ValueError) as exc:
            raise _io_error(exc, stage, "while sending", self._server) from None

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
            raise _io_error(exc, stage, "while the session was idle", self._server) from None
        if not data:
            raise ServerDisconnected("the server closed the idle connection", stage=stage)
        return data

    def receive(self, stage: str, timeout: float) -> bytes:
        try:
            self._set_timeout(max(timeout, 0.001))
            data = self._sock.recv(READ_SIZE)
        except (OSError, ValueError) as exc:
            raise _io_error(exc, stage, "waiting for the server's reply", self._server) from None
        if not data:
            raise ServerDisconnected(
                "the server closed the connection when a reply was due", stage=stage
            )
        return data

    def start_tls(self, stage: str) -> TlsInfo:
        context = make_ssl_context(self._server)
        try:
            self._set_timeout(self._server.effective_timeout)
            tls = context.wrap_socket(
                self._sock, server_hostname=self._server.effective_tls_server_name
            )
        except (OSError, ValueError) as exc:
            raise _handshake_error(exc, stage, self._server) from None
        self._sock = tls
        self._timeout = tls.gettimeout()
        self._poller = None
        self.tls_info = TlsInfo.from_ssl_object(tls)
        return self.tls_info

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class AsyncStream:
    """An asyncio stream pair (optionally through a proxy, optionally TLS)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self.tls_info: TlsInfo | None = None

    @classmethod
    async def connect(cls, server: Server) -> AsyncStream:
        timeout = server.effective_timeout
        host, port = server.host, server.effective_port
        try:
            async with asyncio.timeout(timeout):
                if _is_http_proxy(server):
                    reader, writer = await _http_connect_async(server, host, port)
                elif server.proxy:
                    from python_socks.async_.asyncio import Proxy

                    proxy = Proxy.from_url(_socks_url(server), rdns=True)
                    sock = await proxy.connect(host, port, timeout=timeout)
                    reader, writer = await asyncio.open_connection(sock=sock)
                else:
                    reader, writer = await asyncio.open_connection(host, port)
        except Exception as exc:
            raise _proxy_error(exc, server) from None
        stream = cls(reader, writer, server)
        if Option.SECURE_IMPLICIT in server.options:
            try:  # TCP first, then TLS: a handshake failure is a TlsError, as in SyncStream
                await stream.start_tls("connect")
            except BaseException:
                stream.close()
                raise
        return stream

    @property
    def sockname(self) -> Any:
        return self._writer.get_extra_info("sockname")

    def _record_tls(self) -> TlsInfo | None:
        obj = self._writer.get_extra_info("ssl_object")
        self.tls_info = TlsInfo.from_ssl_object(obj) if obj is not None else None
        return self.tls_info

    async def send(self, data: bytes, stage: str) -> None:
        try:
            writer = self._writer
            writer.write(data)
            transport = writer.transport
            if transport.get_write_buffer_size() == 0 and not transport.is_closing():
                # Everything went to the socket: drain() cannot wait, so no timer is
                # needed (it still runs, for the errors it reports).
                await writer.drain()
                return
            async with asyncio.timeout(self._server.effective_timeout):
                await writer.drain()
        except (OSError, ValueError, RuntimeError) as exc:
            raise _io_error(exc, stage, "while sending", self._server) from None

    async def poll(self, stage: str) -> bytes:
        """What the server sent while we were idle, without waiting: ``b""`` if nothing."""
        if not getattr(self._reader, "_buffer", b"") and not self._reader.at_eof():
            return b""
        data = await self.receive(stage, self._server.effective_timeout)
        return data

    async def receive(self, stage: str, timeout: float) -> bytes:
        try:
            reader = self._reader
            if getattr(reader, "_buffer", b"") or reader.at_eof():
                data = await reader.read(READ_SIZE)  # already arrived: read() cannot wait
            else:
                async with asyncio.timeout(max(timeout, 0.001)):
                    data = await reader.read(READ_SIZE)
        except (OSError, ValueError) as exc:
            raise _io_error(exc, stage, "waiting for the server's reply", self._server) from None
        if not data:
            raise ServerDisconnected(
                "the server closed the connection when a reply was due", stage=stage
            )
        return data

    async def start_tls(self, stage: str) -> TlsInfo | None:
        context = make_ssl_context(self._server)
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
            async with asyncio.timeout(self._server.effective_timeout):
                await self._writer.start_tls(
                    context, server_hostname=self._server.effective_tls_server_name
                )
        except (OSError, ValueError) as exc:
            raise _handshake_error(exc, stage, self._server) from None
        return self._record_tls()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self._writer.wait_closed()
