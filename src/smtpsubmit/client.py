"""Sessions: :class:`Client` (blocking sockets) and :class:`AsyncClient` (asyncio).

Both are thin drivers of the one :class:`~smtpsubmit.session.Session`: they
open a stream, then carry out the ``Send`` / ``Receive`` / ``StartTls``
requests its flows yield, throwing stream failures back in. Everything the
protocol decides lives in the session; everything a socket does lives in
:mod:`smtpsubmit.transport`. The two ``_run`` loops below are the only code
written twice, and a test checks they handle the same requests.

The sync client never calls ``asyncio.run``, so it works in threads and
inside code that already runs an event loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from smtpsubmit.batch import WINDOW, WINDOW_BYTES, OnOutcome, Outcome, send_many_flow
from smtpsubmit.dkim.stream import Signers, sign_source
from smtpsubmit.envelope import DSN
from smtpsubmit.errors import (
    AuthError,
    ClientBusyError,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
)
from smtpsubmit.prepare import MessageInput, prepare_submission
from smtpsubmit.protocol import Capabilities
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server
from smtpsubmit.session import Flow, Receive, Send, Session, StartTls
from smtpsubmit.transport import AsyncStream, SyncStream, local_hostname_for

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
ProgressCallback = Callable[[Progress], object]


class _Base:
    """What both clients share that involves no I/O."""

    def __init__(self, server: Server) -> None:
        if not isinstance(server, Server):
            raise TypeError(f"Client needs a Server, not {type(server).__name__}")
        self.server = server
        # The one reading of the timeout: every wait below is derived from it.
        self._timeout = server.effective_timeout
        self._session: Session | None = None
        self._deadline = 0.0
        self._busy = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        """The server's EHLO keywords (upper case) and their parameters: a read-only
        ``Mapping[str, str]`` with ``size``, ``auth_mechanisms`` and ``has()``."""
        return self._session.capabilities if self._session else Capabilities()

    @property
    def is_tls(self) -> bool:
        return bool(self._session and self._session.is_tls)

    @property
    def tls_info(self) -> Any:
        return self._session.tls_info if self._session else None

    @property
    def greeting(self) -> Reply | None:
        return self._session.greeting if self._session else None

    @property
    def is_connected(self) -> bool:
        return self._session is not None

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """One call at a time: a second one would write into the middle of the first."""
        if not self._busy.acquire(blocking=False):
            raise ClientBusyError(
                f"{type(self).__name__}.{what}() called while another call on the same client "
                "is in progress; nothing was sent (use one client per task or thread, or wait "
                "for the call to finish)"
            )
        try:
            yield
        finally:
            self._busy.release()

    def _require_session(self) -> Session:
        if self._session is None:
            raise ServerDisconnected(
                "not connected (use the client as a context manager, or call connect())",
                stage="connect",
            )
        return self._session

    def _send_flow(
        self,
        message: MessageInput,
        *,
        sender: str | None,
        recipients: Iterable[str] | None,
        dsn: DSN | None,
        progress: ProgressCallback | None,
        require_tls: bool,
        dkim: Signers | None = None,
    ) -> Flow[SubmitResult]:
        """The session flow that sends one message (both drivers run it)."""
        session = self._require_session()
        envelope, source = prepare_submission(
            message,
            session,
            sender=sender,
            recipients=recipients,
            dsn=dsn,
            require_tls=require_tls,
        )
        # Signed last, over the final bytes; the hash pass runs before MAIL so SIZE is exact.
        signers = self.server.dkim if dkim is None else dkim
        envelope, source = sign_source(envelope, source, signers)
        return session.send_message(envelope, source, progress)

    def _many_flow(
        self,
        messages: Iterable[Any],
        window: int,
        window_bytes: int,
        on_outcome: OnOutcome | None,
    ) -> Flow[Any]:
        """The session flow that streams many messages (both drivers run it)."""
        return send_many_flow(
            self._require_session(),
            messages,
            window=window,
            window_bytes=window_bytes,
            on_outcome=on_outcome,
        )

    def _receive_timeout(self, op: Receive) -> float:
        """Each reply must complete within the timeout, however slowly it trickles."""
        now = time.monotonic()
        if op.new_reply:
            self._deadline = now + self._timeout
            return self._timeout  # exactly, so the stream need not reset an unchanged timeout
        remaining = self._deadline - now
        if remaining <= 0:
            raise SmtpTimeout(
                f"the server's reply did not complete within {self._timeout:g} s",
                stage=op.stage,
            )
        return remaining

    def _new_session(self, stream: SyncStream | AsyncStream) -> Session:
        """The session for a fresh connection; ``peer`` is the address actually reached."""
        return Session(
            self.server, clock=time.monotonic, tls_info=stream.tls_info, peer=stream.peer
        )

    def __repr__(self) -> str:
        state = "connected" if self._session else "closed"
        return f"<{type(self).__name__} {self.server!r} {state}>"


class Client(_Base):
    """A blocking SMTP session for many messages over one connection.

    ``with Client(server) as client: client.send(message)`` connects on
    enter and says QUIT on exit.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._stream: SyncStream | None = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as configured."""
        with self._exclusive("connect"):
            self._connect()

    def _connect(self) -> None:
        if self._session is not None:
            return
        stream = SyncStream.connect(self.server, self._timeout)
        session = self._new_session(stream)
        self._stream, self._session = stream, session
        try:
            self._run(session.open(local_hostname_for(self.server, stream.sockname)))
        except SmtpError as exc:
            if _polite_quit(session, exc):  # e.g. AUTH refused: the session itself is sound
                with contextlib.suppress(SmtpError):
                    self._run(session.quit())
            self._discard()
            raise
        except BaseException:
            self._discard()
            raise

    def _run(self, flow: Flow[T]) -> T:
        stream, session = self._stream, self._session
        if stream is None or session is None:
            raise ServerDisconnected("not connected", stage="connect")
        value: Any = None
        error: SmtpError | None = None
        try:
            while True:
                try:
                    op = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    if not session.reusable:  # QUIT answered, or a follow-up lost the line
                        self._discard(graceful=session.core.closed)
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(op, Send):
                        stream.send(op.data, op.stage, self._timeout)
                    elif isinstance(op, Receive) and op.poll:
                        value = stream.poll(op.stage)
                    elif isinstance(op, Receive):
                        value = stream.receive(op.stage, self._receive_timeout(op))
                    elif isinstance(op, StartTls):
                        value = stream.start_tls(self.server, op.stage, self._timeout)
                    else:  # pragma: no cover - a new request type must be handled here
                        raise TypeError(f"unknown session request {op!r}")
                except SmtpError as exc:
                    error = exc
        except BaseException:
            flow.close()
            if not session.reusable:  # the session decides: a refusal keeps the connection
                self._discard()
            raise

    def send(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        dsn: DSN | None = None,
        progress: ProgressCallback | None = None,
        require_tls: bool = False,
        dkim: Signers | None = None,
    ) -> SubmitResult:
        """Send one message on this connection; see :func:`smtpsubmit.submit_message`."""
        with self._exclusive("send"):
            return self._run(
                self._send_flow(
                    message,
                    sender=sender,
                    recipients=recipients,
                    dsn=dsn,
                    progress=progress,
                    require_tls=require_tls,
                    dkim=dkim,
                )
            )

    def send_many(
        self,
        messages: Iterable[Any],
        *,
        window: int = WINDOW,
        window_bytes: int = WINDOW_BYTES,
        on_outcome: OnOutcome | None = None,
    ) -> list[Outcome]:
        """Send many messages on this connection, streamed; one outcome per message.

        Each item is a ``Message``, a ``(raw, sender, recipients)`` tuple or an
        object with those attributes. Errors are returned in place, never raised:
        see "Sending many messages" in the docs for the failure split. The input
        is drawn lazily, one message just before it is written.
        ``on_outcome(index, outcome)`` is called once per message as soon as its
        outcome is final (its reply read and proven in step), before the call
        returns: for acting on each reply while the stream goes on.
        """
        with self._exclusive("send_many"):
            return self._run(self._many_flow(messages, window, window_bytes, on_outcome))

    def verify(self, address: str) -> Reply:
        """VRFY: the server's reply as it is (252 means "cannot verify, will try")."""
        with self._exclusive("verify"):
            return self._run(self._require_session().simple("VRFY", address))

    def expand(self, mailing_list: str) -> Reply:
        """EXPN: the members of a mailing list, one per reply line, if the server tells."""
        with self._exclusive("expand"):
            return self._run(self._require_session().simple("EXPN", mailing_list))

    def noop(self) -> Reply:
        with self._exclusive("noop"):
            return self._run(self._require_session().simple("NOOP"))

    def reset(self) -> Reply:
        with self._exclusive("reset"):
            return self._run(self._require_session().reset())

    def close(self) -> None:
        """QUIT (when the session is healthy) and close; raises only ClientBusyError."""
        with self._exclusive("close"):
            session = self._session
            if session is not None and session.reusable:
                with contextlib.suppress(SmtpError):
                    self._run(session.quit())  # the session ends: _run closes the connection
            self._discard()

    def _discard(self, *, graceful: bool = False) -> None:
        """Drop the connection; unless the session ended (QUIT, 421), abort it, so
        nothing still buffered goes out."""
        if self._stream is not None:
            if graceful:
                self._stream.close()
            else:
                self._stream.abort()
        self._stream, self._session = None, None


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: same names, same results, same errors.

    Cancelled while a message is going out, the connection is closed rather
    than reused, so no half-sent message can ever be completed by accident.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._stream: AsyncStream | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        with self._exclusive("connect"):
            await self._connect()

    async def _connect(self) -> None:
        if self._session is not None:
            return
        stream = await AsyncStream.connect(self.server, self._timeout)
        session = self._new_session(stream)
        self._stream, self._session = stream, session
        try:
            await self._run(session.open(local_hostname_for(self.server, stream.sockname)))
        except SmtpError as exc:
            if _polite_quit(session, exc):
                with contextlib.suppress(SmtpError):
                    await self._run(session.quit())
            self._discard()
            raise
        except BaseException:
            self._discard()
            raise

    async def _run(self, flow: Flow[T]) -> T:
        stream, session = self._stream, self._session
        if stream is None or session is None:
            raise ServerDisconnected("not connected", stage="connect")
        value: Any = None
        error: SmtpError | None = None
        try:
            while True:
                try:
                    op = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    if not session.reusable:  # QUIT answered, or a follow-up lost the line
                        self._discard(graceful=session.core.closed)
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(op, Send):
                        await stream.send(op.data, op.stage, self._timeout)
                    elif isinstance(op, Receive) and op.poll:
                        value = await stream.poll(op.stage)
                    elif isinstance(op, Receive):
                        value = await stream.receive(op.stage, self._receive_timeout(op))
                    elif isinstance(op, StartTls):
                        value = await stream.start_tls(self.server, op.stage, self._timeout)
                    else:  # pragma: no cover - a new request type must be handled here
                        raise TypeError(f"unknown session request {op!r}")
                except SmtpError as exc:
                    error = exc
        except BaseException:
            flow.close()
            if not session.reusable:  # cancelled, interrupted, lost: the state is unknown
                self._discard()
            raise

    async def send(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        dsn: DSN | None = None,
        progress: ProgressCallback | None = None,
        require_tls: bool = False,
        dkim: Signers | None = None,
    ) -> SubmitResult:
        """Send one message on this connection; see :func:`smtpsubmit.asubmit_message`."""
        with self._exclusive("send"):
            return await self._run(
                self._send_flow(
                    message,
                    sender=sender,
                    recipients=recipients,
                    dsn=dsn,
                    progress=progress,
                    require_tls=require_tls,
                    dkim=dkim,
                )
            )

    async def send_many(
        self,
        messages: Iterable[Any],
        *,
        window: int = WINDOW,
        window_bytes: int = WINDOW_BYTES,
        on_outcome: OnOutcome | None = None,
    ) -> list[Outcome]:
        """Send many messages on this connection; see :meth:`Client.send_many`."""
        with self._exclusive("send_many"):
            return await self._run(self._many_flow(messages, window, window_bytes, on_outcome))

    async def verify(self, address: str) -> Reply:
        with self._exclusive("verify"):
            return await self._run(self._require_session().simple("VRFY", address))

    async def expand(self, mailing_list: str) -> Reply:
        with self._exclusive("expand"):
            return await self._run(self._require_session().simple("EXPN", mailing_list))

    async def noop(self) -> Reply:
        with self._exclusive("noop"):
            return await self._run(self._require_session().simple("NOOP"))

    async def reset(self) -> Reply:
        with self._exclusive("reset"):
            return await self._run(self._require_session().reset())

    async def close(self) -> None:
        """QUIT (when the session is healthy) and close; raises only ClientBusyError."""
        with self._exclusive("close"):
            session, stream = self._session, self._stream
            if session is not None and session.reusable:
                with contextlib.suppress(SmtpError):
                    await self._run(session.quit())  # the session ends: _run closes it
            self._discard()
            if stream is not None:
                await stream.aclose(self._timeout)

    def _discard(self, *, graceful: bool = False) -> None:
        """Drop the connection; unless the session ended (QUIT, 421), abort it, so
        nothing still buffered goes out."""
        if self._stream is not None:
            if graceful:
                self._stream.close()
            else:
                self._stream.abort()
        self._stream, self._session = None, None


def _polite_quit(session: Session, exc: SmtpError) -> bool:
    """Whether a failed opening still deserves a QUIT: only after AUTH was refused.

    A refused greeting already said QUIT, and a TLS failure must send nothing
    more on a connection that may be under attack.
    """
    return isinstance(exc, AuthError) and session.reusable
