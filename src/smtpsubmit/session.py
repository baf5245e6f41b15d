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
    ExtensionUnavailable,
    MessageTooLarge,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
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
    SmtpProtocol,
    State,
    UsageError,
    check_argument,
    xtext,
)
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Option, Server

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
    without waiting; used before a command on an idle connection.
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


class Session:
    """One SMTP connection's protocol logic and what it has learnt.

    The drivers call the flow methods and execute what they yield. After a
    failure that leaves the connection in an unknown state ``broken`` is set,
    and the driver must close the socket rather than reuse it.
    """

    def __init__(
        self,
        server: Server,
        clock: Callable[[], float] = lambda: 0.0,
        *,
        tls_info: Any = None,
    ) -> None:
        """``tls_info`` is given when the transport already runs TLS (implicit TLS)."""
        self.server = server
        self.core = SmtpProtocol()
        self.capabilities = Capabilities()
        self.esmtp = False
        self.is_tls = tls_info is not None
        self.tls_info: Any = tls_info
        self.greeting: Reply | None = None
        self.broken = False
        self.needs_reset = False
        self._clock = clock

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
            self.broken = True
            exc.stage = exc.stage or stage
            raise
        if reply is not None and reply.code == 421 and stage not in ("quit", "greeting"):
            self.broken = True
            raise ServerDisconnected(
                "the server is closing the connection", reply=reply, stage=stage
            )
        return reply

    def _command(self, command: Command) -> Flow[Reply]:
        self._check_unsolicited(command.stage)
        yield Send(self.core.send(command), command.stage)
        return (yield from self._reply(command.stage))

    def _check_unsolicited(self, stage: str) -> None:
        """Refuse bytes the server sent while no command was waiting (catalogue S7).

        Taken as the answer to the next command they would shift every later
        reply by one. A 421 is the server closing an idle session (RFC 5321
        §3.8): ServerDisconnected; anything else is a ProtocolError.
        """
        if self.core.waiting or not self.core.has_buffered:
            return
        self.broken = True
        try:
            reply = self.core.next_reply()
        except ProtocolError as exc:
            exc.stage = exc.stage or stage
            raise
        if reply is not None and reply.code == 421:
            raise ServerDisconnected("the server closed the idle session", reply=reply, stage=stage)
        raise ProtocolError(
            "the server sent data while no command was waiting for a reply", stage=stage
        )

    def _idle_check(self, stage: str) -> Flow[None]:
        """Before the first command after an idle period: read what arrived meanwhile."""
        if not self.core.waiting and not self.core.has_buffered:
            data = yield Receive(stage, poll=True)
            if data:
                self.core.receive_data(data)
        self._check_unsolicited(stage)

    def _guard(self, flow: Flow[T]) -> Flow[T]:
        """Mark the session broken when a network-level failure passes through."""
        try:
            return (yield from flow)
        except (ServerDisconnected, SmtpTimeout, ProtocolError, DeliveryStatusUnknown):
            self.broken = True
            raise
        except GeneratorExit:
            self.broken = True
            raise

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
            allow_plaintext=server.plaintext_auth_allowed,
        )
        secret = auth.resolve_secret(server.password or "")
        mechanism = mechanism_class(server.username or "", secret)
        initial = mechanism.initial_response()
        argument = mechanism.name
        if initial is not None:
            argument += " " + (auth.b64(initial) or "=")
        reply = yield from self._command(Command("AUTH", argument, "auth", secret=True))
        rounds = 0
        while reply.code == 334:
            rounds += 1
            if rounds > auth.MAX_CHALLENGES:
                raise ProtocolError("too many SASL challenges", stage="auth")
            challenge = auth.unb64(reply.text.strip())
            try:
                response = mechanism.respond(challenge)
            except SmtpError:
                yield Send(self.core.send_auth_response("*"), "auth")  # cancel the exchange
                yield from self._reply("auth")
                raise
            yield Send(self.core.send_auth_response(auth.b64(response)), "auth")
            reply = yield from self._reply("auth")
        if reply.code != 235:
            raise AuthError(
                f"authentication as {server.username!r} with {mechanism.name} failed",
                reply=reply,
                stage="auth",
            )
        mechanism.finish(None)

    # -- the mail transaction -------------------------------------------------------

    def send_message(
        self,
        envelope: Envelope,
        source: Callable[[], Iterable[bytes]],
        progress: Callable[[Progress], object] | None = None,
        *,
        rewindable: bool = True,
    ) -> Flow[SubmitResult]:
        """MAIL, RCPT for each recipient, then DATA or BDAT.

        ``source()`` yields the message bytes; when ``rewindable`` it is called
        again for recipients a server deferred with 452 (too many recipients),
        which go in a follow-up transaction on the same connection.
        """
        return self._guard(self._send_message(envelope, source, progress, rewindable))

    def _send_message(
        self,
        envelope: Envelope,
        source: Callable[[], Iterable[bytes]],
        progress: Callable[[Progress], object] | None,
        rewindable: bool,
    ) -> Flow[SubmitResult]:
        self.check_envelope(envelope)
        yield from self._idle_check("mail")
        if self.needs_reset or self.core.state is not State.READY:
            yield from self._rset()
        result = yield from self._transaction(envelope, envelope.recipients, source(), progress)
        done = {*result.accepted, *result.refused}
        deferred = [r for r in envelope.recipients if r not in done]
        limit = max(len(result.accepted), 1)  # the server's per-transaction limit, as seen
        while deferred and rewindable:
            try:
                more = yield from self._transaction(envelope, deferred[:limit], source(), progress)
            except (RecipientsRefused, SenderRefused, DataRefused) as exc:
                # The message already went to the accepted recipients: report the rest
                # as refused rather than raise, which would invite a duplicating retry.
                refused = getattr(exc, "refused", {})
                for rcpt in deferred[:limit]:
                    result.refused[rcpt] = refused.get(rcpt, exc.reply or Reply(451, str(exc)))
                deferred = deferred[limit:]
                break
            result = SubmitResult(
                result.message_id,
                result.sender,
                result.accepted + more.accepted,
                {**result.refused, **more.refused},
                more.reply,
                result.size,
            )
            done = {*more.accepted, *more.refused}
            deferred = [r for r in deferred if r not in done]
        for rcpt in deferred:
            result.refused[rcpt] = Reply(452, "too many recipients; not retried", "4.5.3")
        return result

    def check_envelope(self, envelope: Envelope) -> None:
        """Refuse, before anything is sent, what this server cannot take."""
        caps = self.capabilities
        if envelope.smtputf8 and "SMTPUTF8" not in caps:
            raise ExtensionUnavailable(
                "the message has a non-ASCII address but the server does not offer SMTPUTF8"
                + ("" if self.esmtp else " (ESMTP is off: set Option.EXTENDED)"),
                extension="SMTPUTF8",
                stage="mail",
            )
        if envelope.eight_bit and "8BITMIME" not in caps:
            raise ExtensionUnavailable(
                "the message has 8-bit data but the server does not offer 8BITMIME",
                extension="8BITMIME",
                stage="mail",
            )
        if envelope.dsn is not None and envelope.dsn.required and "DSN" not in caps:
            raise ExtensionUnavailable(
                "delivery status notifications were asked for but the server does not offer "
                "DSN (use DSN(required=False) to send without)",
                extension="DSN",
                stage="mail",
            )
        if envelope.require_tls and not (self.is_tls and "REQUIRETLS" in caps):
            raise ExtensionUnavailable(
                "REQUIRETLS needs a TLS connection to a server that offers REQUIRETLS",
                extension="REQUIRETLS",
                stage="mail",
            )
        limit = caps.size_limit
        if limit is not None and envelope.size > limit:
            raise MessageTooLarge(
                f"the message ({envelope.size} octets) is larger than the server's limit "
                f"({limit} octets)",
                stage="mail",
            )

    def _mail_command(self, envelope: Envelope) -> Command:
        caps = self.capabilities
        params: list[str] = []
        if "SIZE" in caps and envelope.size:
            params.append(f"SIZE={envelope.size}")
        if envelope.eight_bit:
            # RFC 3030: with BDAT, BINARYMIME is the body type that needs no line rules.
            binary = "CHUNKING" in caps and "BINARYMIME" in caps
            params.append("BODY=BINARYMIME" if binary else "BODY=8BITMIME")
        if envelope.smtputf8:
            params.append("SMTPUTF8")
        dsn = envelope.dsn
        if dsn is not None and "DSN" in caps:
            if dsn.ret:
                params.append(f"RET={dsn.ret}")
            if dsn.envid:
                params.append(f"ENVID={xtext(dsn.envid)}")
        if envelope.require_tls:
            params.append("REQUIRETLS")
        params.extend(envelope.extra_mail_params)
        return Command("MAIL", " ".join([f"FROM:<{envelope.sender}>", *params]), "mail")

    def _rcpt_command(self, envelope: Envelope, recipient: str) -> Command:
        params: list[str] = []
        dsn = envelope.dsn
        if dsn is not None and "DSN" in self.capabilities:
            params.append("NOTIFY=" + ",".join(dsn.notify))
            if recipient.isascii():
                params.append(f"ORCPT=rfc822;{xtext(recipient)}")
        return Command("RCPT", " ".join([f"TO:<{recipient}>", *params]), "rcpt")

    def _transaction(
        self,
        envelope: Envelope,
        recipients: list[str],
        chunks: Iterable[bytes],
        progress: Callable[[Progress], object] | None,
    ) -> Flow[SubmitResult]:
        chunking = "CHUNKING" in self.capabilities
        mail = self._mail_command(envelope)
        rcpts = [self._rcpt_command(envelope, r) for r in recipients]
        self.needs_reset = True  # until the transaction ends cleanly
        if "PIPELINING" in self.capabilities:
            batch = [mail, *rcpts] + ([] if chunking else [Command("DATA", "", "data")])
            self._check_unsolicited("mail")
            yield Send(b"".join(self.core.send(c) for c in batch), "mail")
            replies = []
            for command in batch:
                reply = self._buffered_reply(command.stage)
                if reply is None:
                    reply = yield from self._reply(command.stage)
                replies.append(reply)
            mail_reply, rcpt_replies = replies[0], replies[1 : 1 + len(rcpts)]
            data_reply = None if chunking else replies[-1]
        else:
            mail_reply = yield from self._command(mail)
            rcpt_replies = []
            if mail_reply.is_positive:
                for command in rcpts:
                    rcpt_replies.append((yield from self._command(command)))
            data_reply = None
        accepted, refused = _sort_recipients(recipients, rcpt_replies)
        failure = self._envelope_failure(mail_reply, accepted, refused, envelope)
        if failure is not None:
            if data_reply is not None and data_reply.code == 354:
                # A server that said 354 with nobody to deliver to gets an empty message
                # that it must refuse; the body is never sent.
                self.core.send_data_end()
                yield Send(b".\r\n", "data")
                yield from self._reply("data")
            yield from self._reset_after_failure()
            raise failure
        if chunking:
            final, size = yield from self._send_bdat(envelope, chunks, progress)
        else:
            if data_reply is None:
                data_reply = yield from self._command(Command("DATA", "", "data"))
            if data_reply.code != 354:
                yield from self._reset_after_failure()
                raise DataRefused("the server refused DATA", reply=data_reply, stage="data")
            final, size = yield from self._send_data(envelope, chunks, progress)
        if not final.is_positive:
            yield from self._reset_after_failure()
            raise DataRefused("the server refused the message", reply=final, stage="data")
        self.needs_reset = False
        if progress is not None:
            progress(Progress("done", size, envelope.size or size, self._clock()))
        return SubmitResult(envelope.message_id, envelope.sender, accepted, refused, final, size)

    def _envelope_failure(
        self,
        mail_reply: Reply,
        accepted: list[str],
        refused: dict[str, Reply],
        envelope: Envelope,
    ) -> SmtpError | None:
        if not mail_reply.is_positive:
            return SenderRefused(
                f"the server refused the sender <{envelope.sender}>", reply=mail_reply, stage="mail"
            )
        if accepted:
            return None
        first = next(iter(refused.values()), None)
        return RecipientsRefused(
            "the server refused every recipient; no message data was sent",
            refused=refused,
            reply=first,
        )

    def _send_data(
        self,
        envelope: Envelope,
        chunks: Iterable[bytes],
        progress: Callable[[Progress], object] | None,
    ) -> Flow[tuple[Reply, int]]:
        encoder = DataEncoder()
        started = self._clock()
        total = envelope.size
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
                if progress is not None:
                    progress(Progress("data", encoder.octets, total, self._clock() - started))
        pending.append(encoder.end())
        self.core.send_data_end()
        transcript.debug("C: <message data: %d octets>", encoder.octets)
        transcript.debug("C: .")
        yield Send(b"".join(pending), "data")
        final = yield from self._final_reply()
        return final, encoder.octets

    def _send_bdat(
        self,
        envelope: Envelope,
        chunks: Iterable[bytes],
        progress: Callable[[Progress], object] | None,
    ) -> Flow[tuple[Reply, int]]:
        normalizer = LineEndingNormalizer()
        started = self._clock()
        pending = bytearray()
        sent = 0
        for chunk in chunks:
            pending += normalizer.feed(chunk)
            while len(pending) >= BDAT_CHUNK:
                piece = bytes(pending[:BDAT_CHUNK])
                del pending[:BDAT_CHUNK]
                header = self.core.send(Command("BDAT", str(len(piece)), "data"))
                transcript.debug("C: <message data: %d octets>", len(piece))
                yield Send(header + piece, "data")
                reply = yield from self._reply("data")
                sent += len(piece)
                if not reply.is_positive:
                    yield from self._reset_after_failure()
                    raise DataRefused("the server refused a BDAT chunk", reply=reply, stage="data")
                if progress is not None:
                    progress(Progress("data", sent, envelope.size, self._clock() - started))
        pending += normalizer.flush()
        header = self.core.send(Command("BDAT", f"{len(pending)} LAST", "data"))
        transcript.debug("C: <message data: %d octets>", len(pending))
        yield Send(header + bytes(pending), "data")
        sent += len(pending)
        final = yield from self._final_reply()
        return final, sent

    def _final_reply(self) -> Flow[Reply]:
        """The answer to the end of the data; losing it leaves delivery unknown."""
        try:
            return (yield from self._reply("data"))
        except (ServerDisconnected, SmtpTimeout) as exc:
            if exc.reply is not None and exc.reply.code == 421:
                raise  # an explicit 421 says the message was not taken
            self.broken = True
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
        reply = yield from self._command(Command("RSET", "", "mail"))
        if not reply.is_positive:
            self.broken = True
            raise ProtocolError("the server refused RSET", reply=reply, stage="mail")
        self.needs_reset = False
        return reply

    def _reset_after_failure(self) -> Flow[None]:
        """RSET so the connection can be reused; if even that fails, it cannot be."""
        try:
            yield from self._rset()
        except SmtpError:
            self.broken = True

    def simple(self, verb: str, argument: str = "", stage: str = "mail") -> Flow[Reply]:
        """NOOP, VRFY, EXPN, HELP: one command, one reply, returned as it is."""
        check_argument(argument, f"{verb} argument")  # bad input fails before any I/O
        return self._guard(self._after_idle(stage, self._command(Command(verb, argument, stage))))

    def _after_idle(self, stage: str, flow: Flow[T]) -> Flow[T]:
        yield from self._idle_check(stage)
        return (yield from flow)

    def quit(self) -> Flow[Reply]:
        reply = yield from self._command(Command("QUIT", "", "quit"))
        return reply

    def _quit_quietly(self) -> Flow[None]:
        """Say QUIT without waiting for the answer; a failure here changes nothing."""
        with contextlib.suppress(SmtpError, UsageError):
            yield Send(self.core.send(Command("QUIT", "", "quit")), "quit")


def _sort_recipients(
    recipients: list[str], replies: list[Reply]
) -> tuple[list[str], dict[str, Reply]]:
    """Accepted, refused; a 452 after an accepted recipient is deferred, not refused."""
    accepted: list[str] = []
    refused: dict[str, Reply] = {}
    for recipient, reply in zip(recipients, replies, strict=False):
        if reply.is_positive:
            accepted.append(recipient)
        elif reply.code == 452 and accepted:
            continue  # "too many recipients": sent in a follow-up transaction
        else:
            refused[recipient] = reply
    for recipient in recipients[len(replies) :]:
        refused[recipient] = Reply(503, "not tried: the sender was refused")
    return accepted, refused
