"""The SMTP session, written once for every driver.

Each operation (open, send a message, VRFY, NOOP, QUIT, ...) is a generator
that yields I/O requests — :class:`Send`, :class:`Receive`, :class:`StartTls`
— and receives their results. The sync :class:`~smtpsubmit.client.Client` and
the :class:`~smtpsubmit.client.AsyncClient` only carry out those requests on a
socket or an asyncio stream; neither knows the protocol. A fix to the session
therefore lands once for both, which is the point (see ``style.md``: never
write the protocol twice). Failures the drivers meet (timeout, disconnect) are
thrown back into the generator, so the session decides what they mean — for
instance that a lost answer to the final dot is :class:`DeliveryStatusUnknown`.

The session also owns connection health: :attr:`Session.reusable` says whether
another operation may follow on this connection, :attr:`Session.closed` whether
the connection is over and must be closed without another word. The drivers
ask; they never guess from the exception they saw.

Like :mod:`smtpsubmit.protocol`, this module does no I/O and reads no clock
(the driver passes one in for progress reports).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from smtpsubmit import auth
from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import (
    AuthError,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    MessageError,
    ProtocolError,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    TlsError,
)
from smtpsubmit.protocol import (
    Capabilities,
    Command,
    DataEncoder,
    LineEndingNormalizer,
    LocalProtocolError,
    SmtpProtocol,
    State,
    check_argument,
)
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Option, Server
from smtpsubmit.transaction import (
    REFUSALS,
    ProgressReporter,
    check_envelope,
    envelope_failure,
    mail_command,
    merge_results,
    partial_result,
    rcpt_command,
    sort_recipients,
)

__all__ = ["Receive", "Send", "Session", "StartTls"]

log = logging.getLogger("smtpsubmit")
transcript = logging.getLogger("smtpsubmit.transcript")

T = TypeVar("T")

WRITE_BATCH = 256 * 1024  # coalesce small encoded pieces into writes of up to this size
BDAT_CHUNK = 1024 * 1024  # octets per BDAT command (memory stays bounded by this)


@dataclass(frozen=True, slots=True)
class Send:
    """Write all of ``data``."""

    data: bytes
    stage: str


@dataclass(frozen=True, slots=True)
class Receive:
    """Read what the server sent next; ``new_reply`` starts a reply deadline.

    ``poll``: return only what has already arrived (``b""`` when nothing has),
    without waiting; used before a command on an idle connection, and before
    the end of the message data goes out (nothing may answer it early).
    """

    stage: str
    new_reply: bool = True
    poll: bool = False


@dataclass(frozen=True, slots=True)
class StartTls:
    """Run the TLS handshake on the open connection; returns a ``TlsInfo``."""

    stage: str = "starttls"


Op = Send | Receive | StartTls
Flow = Generator[Op, Any, T]


_RSET = Command("RSET", "", "mail")
_DATA = Command("DATA", "", "data")


class Session:
    """One SMTP connection's protocol logic and what it has learnt.

    The drivers call the flow methods and execute what they yield; after each
    flow (returned or raised) they keep the connection only while
    :attr:`reusable` is true.
    """

    def __init__(
        self,
        server: Server,
        clock: Callable[[], float] = lambda: 0.0,
        *,
        tls_info: Any = None,
        peer: str | None = None,
    ) -> None:
        """``tls_info`` is given when the transport already runs TLS (implicit TLS);
        ``peer`` is the IP address connected to (None through a proxy)."""
        self.server = server
        self.peer = peer
        self.core = SmtpProtocol()
        self.capabilities = Capabilities()
        self.esmtp = False
        self.is_tls = tls_info is not None
        self.tls_info: Any = tls_info
        self.greeting: Reply | None = None
        self.needs_reset = False  # a refused transaction is still open on the server
        self._broken = False
        self._clock = clock

    # -- health ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The session is over (QUIT, 421) or the connection is in an unknown state:
        close it without sending anything more."""
        return self._broken or self.core.closed

    @property
    def reusable(self) -> bool:
        """Another operation may start now: healthy, in step, between transactions."""
        core = self.core
        return (
            not self.closed
            and not core.waiting
            and core.state in (State.READY, State.MAIL)
            and not core.data_in_progress
        )

    def _failed(self, exc: BaseException) -> None:
        """Take note of a failure on its way out: only a refusal keeps the connection."""
        if not isinstance(exc, (*REFUSALS, LocalProtocolError)):
            self._broken = True

    def _guard(self, flow: Flow[T]) -> Flow[T]:
        try:
            return (yield from flow)
        except BaseException as exc:  # GeneratorExit too: the driver abandoned the flow
            self._failed(exc)
            raise

    # -- plumbing -------------------------------------------------------------------

    def _reply(self, stage: str) -> Flow[Reply]:
        new = True
        while True:
            reply = self._buffered_reply(stage)
            if reply is not None:
                return reply
            data = yield Receive(stage, new)
            new = False
            self.core.receive_data(data)

    def _buffered_reply(self, stage: str) -> Reply | None:
        """The next reply if it has already arrived whole, else None (no I/O).

        What ``_reply`` does before it asks for bytes; callers that expect
        replies to be buffered (pipelining) use it to skip a generator.
        """
        try:
            reply = self.core.next_reply()
        except ProtocolError as exc:
            exc.stage = exc.stage or stage
            raise
        if reply is not None and reply.code == 421 and stage not in ("quit", "greeting"):
            raise ServerDisconnected(
                "the server is closing the connection", reply=reply, stage=stage
            )
        return reply

    def _read(self, command: Command) -> Flow[Reply]:
        """The reply to a command already sent (pipelined): buffered, or read."""
        reply = self._buffered_reply(command.stage)
        if reply is None:
            reply = yield from self._reply(command.stage)
        return reply

    def _command(self, command: Command) -> Flow[Reply]:
        self._check_unsolicited(command.stage)
        yield Send(self.core.send(command), command.stage)
        return (yield from self._reply(command.stage))

    def _check_unsolicited(self, stage: str) -> None:
        """Refuse bytes the server sent while no command was waiting (catalogue S7).

        Taken as the answer to the next command (or to the end of the message
        data) they would shift every later reply by one. A 421 is the server
        closing the session (RFC 5321 §3.8): ServerDisconnected; anything else
        is a ProtocolError.
        """
        if self.core.waiting or not self.core.has_buffered:
            return
        self._broken = True
        in_data = self.core.data_in_progress
        try:
            reply = self.core.unsolicited_reply()
        except ProtocolError as exc:
            exc.stage = exc.stage or stage
            raise
        if reply is not None and reply.code == 421:
            raise ServerDisconnected("the server closed the session", reply=reply, stage=stage)
        if reply is not None and not reply.is_positive and in_data:
            # A refusal before the end of the data (a server that stops reading): no
            # answer to our dot, but it does say that the message was not taken.
            raise DataRefused(
                "the server refused the message before all of it was sent", reply=reply, stage=stage
            )
        during = " before the message data was complete" if in_data else ""
        raise ProtocolError(
            f"the server sent {reply or 'data'}{during} while no command was waiting for a reply",
            stage=stage,
        )

    def _idle_check(self, stage: str) -> Flow[None]:
        """Read what arrived while nothing was asked (idle, or the data going out)."""
        if not self.core.waiting and not self.core.has_buffered:
            data = yield Receive(stage, poll=True)
            if data:
                self.core.receive_data(data)
        self._check_unsolicited(stage)

    # -- opening --------------------------------------------------------------------

    def open(self, local_hostname: str) -> Flow[None]:
        """Greeting, EHLO/HELO, STARTTLS when wanted, EHLO again, AUTH."""
        return self._guard(self._open(local_hostname))

    def _open(self, local_hostname: str) -> Flow[None]:
        greeting = yield from self._reply("greeting")
        self.greeting = greeting
        if greeting.code != 220:
            yield from self._quit_quietly()
            raise ConnectError(
                "the server refused the session at the greeting", reply=greeting, stage="greeting"
            )
        yield from self._hello(local_hostname)
        yield from self._maybe_starttls(local_hostname)
        if self.server.has_credentials:
            yield from self._authenticate()

    def _hello(self, name: str) -> Flow[None]:
        extended = Option.EXTENDED in self.server.effective_options
        if extended:
            reply = yield from self._command(Command("EHLO", name, "ehlo"))
            if reply.is_positive:
                self.capabilities = Capabilities.parse(reply, self.server.disable_extensions)
                self.esmtp = True
                return
            if self.is_tls:  # after STARTTLS there is no going back to HELO
                raise ConnectError(
                    "the server refused EHLO after STARTTLS", reply=reply, stage="ehlo"
                )
            log.info("EHLO refused (%s); falling back to HELO without extensions", reply)
        reply = yield from self._command(Command("HELO", name, "ehlo"))
        if not reply.is_positive:
            raise ConnectError("the server refused HELO", reply=reply, stage="ehlo")
        self.capabilities = Capabilities()
        self.esmtp = False

    def _maybe_starttls(self, name: str) -> Flow[None]:
        opts = self.server.effective_options
        if self.is_tls or not opts & (Option.SECURE | Option.SECURE_OPTIONAL):
            return
        offered = "STARTTLS" in self.capabilities
        if Option.SECURE_OPTIONAL in opts and not offered:
            log.info("STARTTLS not offered; continuing without TLS (SECURE_OPTIONAL)")
            return
        if not offered:
            yield from self._quit_quietly()
            raise TlsError(
                "Option.SECURE requires STARTTLS but the server does not offer it; no "
                "credentials or mail were sent (this may be a downgrade attack — use "
                "SECURE_OPTIONAL only for relays where plaintext is acceptable)",
                stage="starttls",
            )
        reply = yield from self._command(Command("STARTTLS", "", "starttls"))
        if reply.code != 220:
            yield from self._quit_quietly()
            raise TlsError("the server refused STARTTLS", reply=reply, stage="starttls")
        self.core.discard_buffered()  # anything sent before the handshake is an injection
        self.tls_info = yield StartTls()
        self.core.tls_started()
        self.is_tls = True
        self.capabilities = Capabilities()
        yield from self._hello(name)

    def _authenticate(self) -> Flow[None]:
        """The SASL exchange; every reply in it is masked for every form of the secret.

        The mechanism counts the challenges (:data:`auth.MAX_CHALLENGES`).
        """
        server = self.server
        offered = self.capabilities.auth_mechanisms
        if not offered:
            hint = "" if self.is_tls else " (many servers offer AUTH only after STARTTLS: try "
            hint += "" if self.is_tls else "Option.SECURE or Option.SECURE_IMPLICIT)"
            raise AuthError(
                f"credentials were given but the server offers no AUTH{hint}", stage="auth"
            )
        mechanism_class = auth.choose_mechanism(
            offered,
            server.auth_mechanisms,
            protected=self.is_tls,
            allow_plaintext=server.plaintext_auth_allowed_to(self.peer),
        )
        secret = auth.resolve_secret(server.password or "")
        mechanism = mechanism_class(server.username or "", secret)
        self.core.hide(secret, auth.b64(secret.encode("utf-8", "replace")))
        try:
            initial = mechanism.initial_response()
            argument = mechanism.name
            if initial is not None:
                argument += " " + (self._hidden_b64(initial) or "=")
            # Only an argument that carries a response is a secret in the transcript.
            auth_command = Command("AUTH", argument, "auth", secret=initial is not None)
            reply = yield from self._command(auth_command)
            while reply.code == 334:
                challenge = auth.unb64(reply.text.strip())
                try:
                    response = mechanism.respond(challenge)
                except SmtpError:
                    yield Send(self.core.send_auth_response("*"), "auth")  # cancel the exchange
                    yield from self._reply("auth")
                    raise
                yield Send(self.core.send_auth_response(self._hidden_b64(response)), "auth")
                reply = yield from self._reply("auth")
        finally:
            self.core.unhide()
        if reply.code != 235:
            raise AuthError(
                f"authentication as {server.username!r} with {mechanism.name} failed",
                reply=reply,
                stage="auth",
            )
        mechanism.finish(None)

    def _hidden_b64(self, response: bytes) -> str:
        """The base64 form of a SASL response, registered as a secret to mask."""
        encoded = auth.b64(response)
        self.core.hide(encoded)
        return encoded

    # -- the mail transaction -------------------------------------------------------

    def send_message(
        self,
        envelope: Envelope,
        source: Callable[[], Iterable[bytes]],
        progress: Callable[[Progress], object] | None = None,
    ) -> Flow[SubmitResult]:
        """MAIL, RCPT for each recipient, then DATA or BDAT.

        ``source()`` yields the message bytes; it is called again for
        recipients a server deferred with 452 (too many recipients), which go
        in a follow-up transaction on the same connection.
        """
        return self._guard(self._send_message(envelope, source, progress))

    def _send_message(
        self,
        envelope: Envelope,
        source: Callable[[], Iterable[bytes]],
        progress: Callable[[Progress], object] | None,
    ) -> Flow[SubmitResult]:
        self.check_envelope(envelope)
        yield from self._idle_check("mail")
        if self.core.state is not State.READY:
            self.needs_reset = True
        result = yield from self._transaction(envelope, envelope.recipients, source(), progress)
        done = {*result.accepted, *result.refused}
        deferred = [r for r in envelope.recipients if r not in done]
        limit = max(len(result.accepted), 1)  # the server's per-transaction limit, as seen
        while deferred:
            batch = deferred[:limit]
            try:
                more = yield from self._transaction(envelope, batch, source(), progress)
            except (SmtpError, MessageError) as exc:
                # The message already went to the accepted recipients: report the rest
                # rather than raise, which would invite a retry that duplicates it.
                self._failed(exc)
                return partial_result(result, batch, deferred[limit:], exc)
            result = merge_results(result, more)
            done = {*more.accepted, *more.refused}
            deferred = [r for r in deferred if r not in done]
        return result

    def check_envelope(self, envelope: Envelope) -> None:
        """Refuse, before anything is sent, what this server cannot take."""
        check_envelope(envelope, self.capabilities, is_tls=self.is_tls, esmtp=self.esmtp)

    def _transaction(
        self,
        envelope: Envelope,
        recipients: list[str],
        chunks: Iterable[bytes],
        progress: Callable[[Progress], object] | None,
    ) -> Flow[SubmitResult]:
        caps = self.capabilities
        chunking = "CHUNKING" in caps
        mail = mail_command(envelope, caps)
        rcpts = [rcpt_command(envelope, r, caps) for r in recipients]
        if "PIPELINING" in caps:
            replies = yield from self._pipelined([mail, *rcpts] + ([] if chunking else [_DATA]))
            mail_reply, rcpt_replies = replies[0], replies[1 : 1 + len(rcpts)]
            data_reply = None if chunking else replies[-1]
        else:
            if self.needs_reset:
                yield from self._rset()
            mail_reply = yield from self._command(mail)
            rcpt_replies = []
            if mail_reply.is_positive:
                for command in rcpts:
                    rcpt_replies.append((yield from self._command(command)))
            data_reply = None
        accepted, refused = sort_recipients(recipients, rcpt_replies)
        failure = envelope_failure(envelope, mail_reply, accepted, refused)
        if failure is not None:
            yield from self._abandon(data_reply)
            raise failure
        report = ProgressReporter(progress, envelope.size, self._clock)
        if chunking:
            final, size = yield from self._send_bdat(chunks, report)
        else:
            if data_reply is None:
                data_reply = yield from self._command(_DATA)
            if data_reply.code != 354:
                yield from self._after_refusal()
                raise DataRefused("the server refused DATA", reply=data_reply, stage="data")
            final, size = yield from self._send_data(chunks, report)
        if not final.is_positive:  # the answer to the end of the data ends the transaction
            raise DataRefused("the server refused the message", reply=final, stage="data")
        report("done", size)
        return SubmitResult(envelope.message_id, envelope.sender, accepted, refused, final, size)

    def _pipelined(self, batch: list[Command]) -> Flow[list[Reply]]:
        """Send the commands in one write (after a pending RSET) and read their replies.

        A pending RSET rides in the same write and its reply is read first: a
        single send on a used connection never waits for it. Refused, the
        connection is out of step (the MAIL behind it may have been taken): it
        is given up before any message data is sent.
        """
        reset = self.needs_reset
        self._check_unsolicited("mail")
        commands = [_RSET, *batch] if reset else batch
        yield Send(b"".join(self.core.send(c) for c in commands), "mail")
        if reset:
            self._check_reset((yield from self._read(_RSET)))
        replies = []
        for command in batch:
            replies.append((yield from self._read(command)))
        return replies

    def _abandon(self, data_reply: Reply | None) -> Flow[None]:
        """End a transaction whose envelope failed."""
        if data_reply is None or data_reply.code != 354:
            yield from self._after_refusal()
            return
        # A server that said 354 with nobody to deliver to gets an empty message
        # that it must refuse; the body is never sent. It broke the rules once:
        # reset now, to know at once whether it is still in step.
        yield from self._idle_check("data")
        self.core.send_data_end()
        yield Send(b".\r\n", "data")
        yield from self._reply("data")
        yield from self._reset_after_failure()

    def _after_refusal(self) -> Flow[None]:
        """Leave a refused transaction: RSET now, or with the next MAIL when pipelining."""
        self.needs_reset = True
        if "PIPELINING" not in self.capabilities:
            yield from self._reset_after_failure()

    def _send_data(
        self, chunks: Iterable[bytes], report: ProgressReporter
    ) -> Flow[tuple[Reply, int]]:
        self._check_unsolicited("data")  # a reply glued to the 354 answers nothing
        encoder = DataEncoder()
        pending: list[bytes] = []
        pending_size = 0
        for chunk in chunks:
            out = encoder.feed(chunk)
            if not out:
                continue
            pending.append(out)
            pending_size += len(out)
            if pending_size >= WRITE_BATCH:
                yield Send(b"".join(pending), "data")
                pending, pending_size = [], 0
                report("data", encoder.octets)
        pending.append(encoder.end())
        yield from self._idle_check("data")  # nothing may answer the dot before it is sent
        self.core.send_data_end()
        transcript.debug("C: <message data: %d octets>", encoder.octets)
        transcript.debug("C: .")
        yield Send(b"".join(pending), "data")
        final = yield from self._final_reply()
        return final, encoder.octets

    def _send_bdat(
        self, chunks: Iterable[bytes], report: ProgressReporter
    ) -> Flow[tuple[Reply, int]]:
        normalizer = LineEndingNormalizer()
        pending = bytearray()
        sent = 0
        for chunk in chunks:
            pending += normalizer.feed(chunk)
            while len(pending) >= BDAT_CHUNK:
                piece = bytes(pending[:BDAT_CHUNK])
                del pending[:BDAT_CHUNK]
                yield from self._bdat(piece, last=False)
                reply = yield from self._reply("data")
                sent += len(piece)
                if not reply.is_positive:
                    # Reset at once: a server that refused in the middle of a chunk and
                    # read the rest as commands shows it here (then the connection goes).
                    yield from self._reset_after_failure()
                    raise DataRefused("the server refused a BDAT chunk", reply=reply, stage="data")
                report("data", sent)
        pending += normalizer.flush()  # the size is declared after the final CRLF is added
        yield from self._idle_check("data")
        yield from self._bdat(bytes(pending), last=True)
        sent += len(pending)
        final = yield from self._final_reply()
        return final, sent

    def _bdat(self, piece: bytes, *, last: bool) -> Flow[None]:
        """One ``BDAT`` command with its chunk, in one write."""
        self._check_unsolicited("data")
        size = f"{len(piece)} LAST" if last else str(len(piece))
        header = self.core.send(Command("BDAT", size, "data"))
        transcript.debug("C: <message data: %d octets>", len(piece))
        yield Send(header + piece, "data")

    def _final_reply(self) -> Flow[Reply]:
        """The answer to the end of the data; losing it leaves delivery unknown."""
        try:
            return (yield from self._reply("data"))
        except (ServerDisconnected, SmtpTimeout) as exc:
            if exc.reply is not None and exc.reply.code == 421:
                raise  # an explicit 421 says the message was not taken
            raise DeliveryStatusUnknown(
                "the connection was lost after the end of the message data was sent and "
                "before the server answered: the message may or may not have been accepted "
                "(retrying can deliver it twice)",
                stage="data",
            ) from exc

    # -- other commands -------------------------------------------------------------

    def reset(self) -> Flow[Reply]:
        """RSET, as the caller asks for it (after an idle period)."""
        return self._guard(self._after_idle("mail", self._rset()))

    def _rset(self) -> Flow[Reply]:
        return self._check_reset((yield from self._command(_RSET)))

    def _check_reset(self, reply: Reply) -> Reply:
        if not reply.is_positive:
            self._broken = True
            raise ProtocolError(
                "the server refused RSET; the connection is given up", reply=reply, stage="mail"
            )
        self.needs_reset = False
        return reply

    def _reset_after_failure(self) -> Flow[None]:
        """RSET so the connection can be reused; if even that fails, it cannot be."""
        try:
            yield from self._rset()
        except SmtpError:
            self._broken = True

    def simple(self, verb: str, argument: str = "", stage: str = "mail") -> Flow[Reply]:
        """NOOP, VRFY, EXPN, HELP: one command, one reply, returned as it is."""
        check_argument(argument, f"{verb} argument")  # bad input fails before any I/O
        return self._guard(self._after_idle(stage, self._command(Command(verb, argument, stage))))

    def _after_idle(self, stage: str, flow: Flow[T]) -> Flow[T]:
        yield from self._idle_check(stage)
        return (yield from flow)

    def quit(self) -> Flow[Reply]:
        return self._guard(self._command(Command("QUIT", "", "quit")))

    def _quit_quietly(self) -> Flow[None]:
        """Say QUIT without waiting for the answer; a failure here changes nothing."""
        with contextlib.suppress(SmtpError, LocalProtocolError):
            yield Send(self.core.send(Command("QUIT", "", "quit")), "quit")
