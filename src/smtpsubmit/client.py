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
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from smtpsubmit.dkim.stream import Signers, sign_source
from smtpsubmit.envelope import DSN
from smtpsubmit.errors import AuthError, ServerDisconnected, SmtpError, SmtpTimeout
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server
from smtpsubmit.session import Flow, Receive, Send, Session, StartTls
from smtpsubmit.submit import MessageInput, prepare_submission
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
        self._session: Session | None = None
        self._deadline = 0.0

    @property
    def capabilities(self) -> dict[str, str]:
        """The server's EHLO keywords (upper case) and their parameters."""
        return self._session.capabilities.as_dict() if self._session else {}

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
        envelope, source, rewindable = prepare_submission(
            message,
            session,
            sender=sender,
            recipients=recipients,
            dsn=dsn,
            require_tls=require_tls,
        )
        # Signed last, over the final bytes; the hash pass runs before MAIL so SIZE is exact.
        signers = self.server.dkim if dkim is None else dkim
        envelope, source = sign_source(envelope, source, signers, rewindable=rewindable)
        return session.send_message(envelope, source, progress)

    def _receive_timeout(self, op: Receive) -> float:
        """Each reply must complete within the timeout, however slowly it trickles."""
        now = time.monotonic()
        if op.new_reply:
            timeout = self.server.effective_timeout
            self._deadline = now + timeout
            if timeout > 0:
                return timeout  # exactly, so the stream need not reset an unchanged timeout
        remaining = self._deadline - now
        if remaining <= 0:
            raise SmtpTimeout(
                f"the server's reply did not complete within {self.server.effective_timeout:g} s",
                stage=op.stage,
            )
        return remaining

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
        if self._session is not None:
            return
        stream = SyncStream.connect(self.server)
        session = Session(self.server, clock=time.monotonic, tls_info=stream.tls_info)
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
                    if not session.reusable:  # e.g. a follow-up transaction lost the line
                        self._discard()
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(op, Send):
                        stream.send(op.data, op.stage)
                    elif isinstance(op, Receive) and op.poll:
                        value = stream.poll(op.stage)
                    elif isinstance(op, Receive):
                        value = stream.receive(op.stage, self._receive_timeout(op))
                    elif isinstance(op, StartTls):
                        value = stream.start_tls(op.stage)
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

    def verify(self, address: str) -> Reply:
        """VRFY: the server's reply as it is (252 means "cannot verify, will try")."""
        return self._run(self._require_session().simple("VRFY", address))

    def expand(self, mailing_list: str) -> Reply:
        """EXPN: the members of a mailing list, one per reply line, if the server tells."""
        return self._run(self._require_session().simple("EXPN", mailing_list))

    def noop(self) -> Reply:
        return self._run(self._require_session().simple("NOOP"))

    def reset(self) -> Reply:
        return self._run(self._require_session().reset())

    def close(self) -> None:
        """QUIT (when the session is healthy) and close; never raises."""
        session = self._session
        if session is not None and session.reusable:
            with contextlib.suppress(SmtpError):
                self._run(session.quit())
        self._discard()

    def _discard(self) -> None:
        if self._stream is not None:
            self._stream.close()
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
        if self._session is not None:
            return
        stream = await AsyncStream.connect(self.server)
        session = Session(self.server, clock=time.monotonic, tls_info=stream.tls_info)
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
                    if not session.reusable:  # e.g. a follow-up transaction lost the line
                        self._discard()
                    return stop.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    if isinstance(op, Send):
                        await stream.send(op.data, op.stage)
                    elif isinstance(op, Receive) and op.poll:
                        value = await stream.poll(op.stage)
                    elif isinstance(op, Receive):
                        value = await stream.receive(op.stage, self._receive_timeout(op))
                    elif isinstance(op, StartTls):
                        value = await stream.start_tls(op.stage)
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

    async def verify(self, address: str) -> Reply:
        return await self._run(self._require_session().simple("VRFY", address))

    async def expand(self, mailing_list: str) -> Reply:
        return await self._run(self._require_session().simple("EXPN", mailing_list))

    async def noop(self) -> Reply:
        return await self._run(self._require_session().simple("NOOP"))

    async def reset(self) -> Reply:
        return await self._run(self._require_session().reset())

    async def close(self) -> None:
        session, stream = self._session, self._stream
        if session is not None and session.reusable:
            with contextlib.suppress(SmtpError):
                await self._run(session.quit())
        self._discard()
        if stream is not None:
            await stream.aclose()

    def _discard(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream, self._session = None, None


def _polite_quit(session: Session, exc: SmtpError) -> bool:
    """Whether a failed opening still deserves a QUIT: only after AUTH was refused.

    A refused greeting already said QUIT, and a TLS failure must send nothing
    more on a connection that may be under attack.
    """
    return isinstance(exc, AuthError) and session.reusable
