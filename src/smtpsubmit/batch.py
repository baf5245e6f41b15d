"""Many messages on one connection: mail transactions streamed behind each other.

``Client.send_many`` and ``AsyncClient.send_many`` run :func:`send_many_flow`,
a session flow like those of :mod:`smtpsubmit.session` (it yields ``Send`` /
``Receive`` and is carried out by the same two driver loops). It owns what a
single ``send`` never needs:

* **Streaming.** With PIPELINING (RFC 2920) a message's data, its final dot
  and the next message's ``MAIL``/``RCPT``/``DATA`` go out in one write, so a
  message costs one round trip (the wait for 354). With CHUNKING (RFC 3030)
  ``BDAT ... LAST`` needs no 354 at all: up to ``window`` transactions (and
  ``window_bytes`` octets) are in flight and replies are read as they come
  (when the server also offers ENHANCEDSTATUSCODES, which is what proves the
  replies in step; otherwise one transaction at a time).
  Without PIPELINING each message is an ordinary ``send``.
* **Matching replies in order.** Every command written gets a slot in a
  queue; replies fill the slots strictly in order. A reply that cannot belong
  to its slot (a 354 to anything but DATA, a 2xx to DATA, an address code on
  the end of the data when the server uses enhanced codes) proves the server
  answered out of order or too often: those messages, every message not yet
  proven aligned, and the rest become :class:`ProtocolError` — never a success
  attributed to the wrong message.
* **The failure split.** When the connection is lost, a message whose end of
  data was written and whose answer never came is
  :class:`DeliveryStatusUnknown`; one whose data was not completely written,
  or that was never started, is :class:`ServerDisconnected` (nothing of it can
  have been delivered, so it is safe to retry).
* **Keeping the server in step.** A failed envelope in the middle of a stream
  leaves the server with a half-open transaction (RFC 3030 §2: a BDAT after a
  refused MAIL is refused and its bytes discarded), so an ``RSET`` is
  pipelined in front of the next ``MAIL`` whenever an earlier transaction may
  not have ended cleanly — and in a CHUNKING stream whenever one is still in
  flight, because its outcome is not known when the next one is written.

Recipients deferred with 452 ("too many recipients") inside a stream are
reported in that message's ``refused`` with the 452 (temporary): a stream does
not keep bodies to send them again. Memory stays bounded: what is kept per
message in flight is its envelope and its replies, never its body.

Like the session, this module does no I/O and reads no clock.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from smtpsubmit.dkim.stream import sign_source
from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import (
    DeliveryStatusUnknown,
    MessageError,
    ProtocolError,
    ServerDisconnected,
    SmtpError,
)
from smtpsubmit.prepare import Source, crlf_only, prepare_submission
from smtpsubmit.protocol import Command, DataEncoder, LineEndingNormalizer, State
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult
from smtpsubmit.session import BDAT_CHUNK, WRITE_BATCH, Flow, Receive, Send, Session
from smtpsubmit.streamed import (
    MAYBE_WRITTEN,
    NOT_WRITTEN,
    WRITTEN,
    Outcome,
    Txn,
    never_started,
    outcome_of,
    stream_error,
    take_source,
    unpack,
)
from smtpsubmit.transaction import mail_command, rcpt_command

__all__ = ["WINDOW", "WINDOW_BYTES", "OnOutcome", "Outcome", "send_many_flow"]

#: Told each message's outcome (its index in the input, the outcome) once it is final.
OnOutcome = Callable[[int, Outcome], None]

transcript = logging.getLogger("smtpsubmit.transcript")

WINDOW = 100  # CHUNKING: transactions in flight at most
WINDOW_BYTES = 4 * 1024 * 1024  # CHUNKING: message octets in flight at most
# CHUNKING: replies owed at most. Unread replies fill the socket buffers; a server that
# cannot write them stops reading, and a client writing a large chunk would then wait on
# it for ever. A thousand short replies stay far below any buffer size.
MAX_REPLIES_OWED = 1000

_STAGE = {"rset": "mail", "mail": "mail", "rcpt": "rcpt"}


# A command waiting for its reply: the message it belongs to and what it is (rset,
# mail, rcpt, data, chunk, end, void: a dot after a wrong 354). A plain tuple: a
# stream makes several per message.
_Slot = tuple[Txn, str]
# The read requests of a stream, made once (they are immutable).
_POLL = Receive("data", poll=True)
_WAIT = {
    (stage, new): Receive(stage, new) for stage in ("mail", "rcpt", "data") for new in (True, False)
}
# A group of envelope commands, rendered: the commands, what each slot is, the bytes.
_Group = tuple[tuple[Command, ...], tuple[str, ...], bytes]
_GROUPS_MAX = 256  # distinct envelopes remembered per stream
_RSET = Command("RSET", "", "mail")
_DATA = Command("DATA", "", "data")


def send_many_flow(
    session: Session,
    items: Iterable[Any],
    *,
    window: int = WINDOW,
    window_bytes: int = WINDOW_BYTES,
    on_outcome: OnOutcome | None = None,
) -> Flow[list[Outcome]]:
    """The flow behind ``send_many``: one outcome per item, in input order.

    ``on_outcome`` hears each outcome as soon as it is final: when a later reply
    proves the replies in step (the next message's 354 or an address code where
    one belongs), at once for a message refused before anything was sent, and at
    the end for the rest. It runs inside the stream and must not block for long.
    """
    if window < 1 or window_bytes < 1:
        raise ValueError("window and window_bytes must be at least 1")
    return _Stream(session, window, window_bytes, on_outcome).run(iter(items))


class _Stream:
    def __init__(
        self, session: Session, window: int, window_bytes: int, on_outcome: OnOutcome | None
    ) -> None:
        self.session = session
        self.core = session.core
        caps = session.capabilities
        self.chunking = "CHUNKING" in caps
        self.pipelining = "PIPELINING" in caps
        self.enhanced = "ENHANCEDSTATUSCODES" in caps
        # Replies are proven in step by their enhanced codes; without them a CHUNKING
        # stream keeps one transaction in flight, as a single send does.
        self.window = window if self.enhanced else 1
        self.window_bytes = window_bytes
        self.results: list[Outcome | None] = []
        self.slots: deque[_Slot] = deque()
        self.inflight: deque[Txn] = deque()
        self.inflight_bytes = 0
        self.unconfirmed: list[int] = []  # settled since the last proof of alignment
        self.on_outcome = on_outcome
        self.told: list[bool] = []  # per index: on_outcome has heard it
        self.dirty = False  # the server may hold a transaction: RSET before the next MAIL
        self.closing: Txn | None = None  # whose command the server answered with 421
        self.started: deque[Txn] = deque()  # prepared and without an outcome, in order
        # Bulk sends repeat their envelopes: each distinct one is rendered once.
        self.groups: dict[tuple[Any, ...], _Group] = {}
        self.size_offered = "SIZE" in caps
        self.dkim = session.server.dkim

    # -- the flow --------------------------------------------------------------------

    def run(self, items: Iterator[Any]) -> Flow[list[Outcome]]:
        session = self.session
        try:
            yield from session._idle_check("mail")
            unclean = session.needs_reset or self.core.state is not State.READY
            if unclean and not self.pipelining:
                yield from session._rset()
            self.dirty = unclean  # pipelined: the RSET rides with the first MAIL
            if not self.pipelining:
                yield from self._one_by_one(items)
            else:
                session.needs_reset = True  # until the stream ends in step
                if self.chunking:
                    yield from self._bdat_stream(items)
                else:
                    yield from self._data_stream(items)
                yield from self._finish()
                session.needs_reset = self.dirty
        except ProtocolError as exc:
            session._failed(exc)
            self._desync(exc, items)
        except SmtpError as exc:
            session._failed(exc)
            self._lost(exc, items)
        results = [r if r is not None else never_started(None) for r in self.results]
        if self.on_outcome is not None:
            for index, told in enumerate(self.told):
                if not told:
                    self.on_outcome(index, results[index])
        return results

    def _prepare(self, message: Any, sender: Any, recipients: Any) -> tuple[Envelope, Source]:
        """Envelope and bytes as a single send makes them, signed with the server's DKIM."""
        envelope, source = prepare_submission(
            message, self.session, sender=sender, recipients=recipients
        )
        if self.dkim is None:
            return envelope, source
        return sign_source(envelope, source, self.dkim)

    def _one_by_one(self, items: Iterator[Any]) -> Flow[None]:
        """No PIPELINING: each message is an ordinary send, errors kept as values."""
        for item in items:
            index = self._new_index()
            try:
                message, sender, recipients = unpack(item)
                envelope, source = self._prepare(message, sender, recipients)
            except (MessageError, SmtpError) as exc:
                self._tell(index, exc)
                continue
            try:
                self._tell(index, (yield from self.session.send_message(envelope, source)))
            except SmtpError as exc:
                self.results[index] = exc
                if self.session.closed:
                    raise  # the rest cannot go on this connection
                self._tell(index, exc)

    def _data_stream(self, items: Iterator[Any]) -> Flow[None]:
        """PIPELINING without CHUNKING: one write and one round trip per message."""
        carry, carry_txn = b"", None  # the previous message's end, written with the next envelope
        txn = self._next(items)
        while txn is not None:
            head = self._envelope(txn, data_command=True)
            # _write, inlined: this runs once per message.
            if carry_txn is not None:
                carry_txn.end = MAYBE_WRITTEN  # followed by other bytes: any prefix may go
            yield Send(carry + head if carry else head, "data")
            if carry_txn is not None:
                carry_txn.end = WRITTEN
            carry, carry_txn = b"", None
            # While the server answers: this message's first data and the next message.
            piece, pieces = self._data_pieces(txn)
            following = self._next(items)
            while txn.data is None:
                yield from self._receive(block=True)
            if not self.slots:
                self.session._check_unsolicited("data")  # nothing may answer the data early
            if txn.data.code == 354 and self._envelope_ok(txn):
                for more in pieces:
                    yield from self._write(piece, None)
                    piece = more
                self.core.send_data_end()
                if transcript.isEnabledFor(logging.DEBUG):
                    transcript.debug("C: <message data: %d octets>", txn.size)
                    transcript.debug("C: .")
                self.slots.append((txn, "end"))
                txn.pending += 1
                carry, carry_txn = piece, txn
            elif txn.data.code == 354:
                # A 354 with nobody to deliver to gets an empty message that the server
                # must refuse; the body is never sent.
                self.core.send_data_end()
                self._slot(txn, "void")
                carry = b".\r\n"
                self.dirty = True  # the refused transaction may still be open
            txn.complete = True
            self._settle_if_done(txn)
            txn = following
        if carry:
            yield from self._write(carry, carry_txn, at_tail=True)

    def _bdat_stream(self, items: Iterator[Any]) -> Flow[None]:
        """CHUNKING: whole transactions in one write each, up to the window in flight."""
        for item in items:
            txn = self._start(item)
            if txn is None:
                continue
            if self._window_full(txn, 1):
                # Wait until half the window is free: the next writes then go out back to
                # back, and a slow server costs one wake-up per half window, not per message.
                while self.inflight and self._window_full(txn, 2):
                    yield from self._receive(block=True)
            else:
                yield from self._receive(block=False)
            pending = self._envelope(txn, data_command=False)
            self.inflight.append(txn)
            self.inflight_bytes += txn.envelope.size
            for piece, last in self._bdat_pieces(txn):
                argument = f"{len(piece)} LAST" if last else str(len(piece))
                header = self.core.send(Command("BDAT", argument, "data"))
                transcript.debug("C: <message data: %d octets>", len(piece))
                self._slot(txn, "end" if last else "chunk")
                txn.complete = last
                yield from self._write(pending + header + piece, txn if last else None)
                pending = b""
                if last:
                    break
                yield from self._receive(block=False)
                if txn.chunk_error is not None or not self._envelope_ok(txn, partial=True):
                    # RFC 3030: no more chunks after a refused one. The transaction ends
                    # without its LAST; every reply in, the core knows it is over.
                    txn.complete = True
                    self.dirty = True
                    while self.slots:
                        yield from self._receive(block=True)
                    self._settle_if_done(txn)
                    break

    def _window_full(self, txn: Txn, divisor: int) -> bool:
        """Whether ``txn`` would not fit in the window (``divisor`` 2: in half of it)."""
        owed = len(txn.envelope.recipients) + 3
        return bool(self.inflight) and (
            len(self.inflight) >= self.window // divisor
            or self.inflight_bytes + txn.envelope.size > self.window_bytes // divisor
            or len(self.slots) + owed > MAX_REPLIES_OWED // divisor
        )

    def _finish(self) -> Flow[None]:
        """Every reply in; then nothing more may have come (a reply too many)."""
        while self.slots:
            yield from self._receive(block=True)
        extra = self.core.has_buffered
        if not extra:
            data = yield Receive("mail", poll=True)
            extra = bool(data)
            if data:
                self.core.receive_data(data)
        if extra:
            raise ProtocolError(
                "the server sent more replies than commands were sent", stage="data"
            )

    # -- transactions ----------------------------------------------------------------

    def _new_index(self) -> int:
        self.results.append(None)
        self.told.append(False)
        return len(self.results) - 1

    def _tell(self, index: int, outcome: Outcome) -> None:
        """A final outcome: kept, and told now."""
        self.results[index] = outcome
        if self.on_outcome is not None:
            self.told[index] = True
            self.on_outcome(index, outcome)

    def _confirm(self) -> None:
        """A reply proved the stream in step: what settled before it is final."""
        unconfirmed = self.unconfirmed
        if self.on_outcome is not None:
            results, told, on_outcome = self.results, self.told, self.on_outcome
            for index in unconfirmed:
                told[index] = True
                on_outcome(index, results[index])  # type: ignore[arg-type]  # settled
        unconfirmed.clear()

    def _start(self, item: Any) -> Txn | None:
        """Prepare one message; a bad one becomes its own outcome, nothing of it sent."""
        index = self._new_index()
        try:
            if type(item) is tuple and len(item) == 3:  # the common form, checked first
                message, sender, recipients = item
            else:
                message, sender, recipients = unpack(item)
            envelope, source = self._prepare(message, sender, recipients)
            self.session.check_envelope(envelope)
        except (MessageError, SmtpError) as exc:
            self._tell(index, exc)
            return None
        txn = Txn(index, envelope, source)
        self.started.append(txn)
        return txn

    def _next(self, items: Iterator[Any]) -> Txn | None:
        """The next message that can be sent; bad ones before it get their outcome."""
        for item in items:
            txn = self._start(item)
            if txn is not None:
                return txn
        return None

    def _envelope(self, txn: Txn, *, data_command: bool) -> bytes:
        """[RSET] MAIL RCPT... [DATA] for one message, registered in order."""
        if not self.slots:
            self.session._check_unsolicited("mail")  # a reply too many, already here
        reset = self.dirty or (self.chunking and bool(self.inflight))
        self.dirty = False
        envelope = txn.envelope
        key = (
            envelope.sender,
            tuple(envelope.recipients),
            envelope.size if self.size_offered else 0,
            envelope.eight_bit,
            envelope.smtputf8,
            envelope.dsn,
            envelope.require_tls,
            envelope.extra_mail_params,
            reset,
            data_command,
        )
        group = self.groups.get(key)
        if group is None:
            group = self._group(envelope, reset=reset, data_command=data_command)
            if len(self.groups) >= _GROUPS_MAX:
                self.groups.clear()
            self.groups[key] = group
        commands, kinds, data = group
        self.core.send_rendered(commands, data)
        self.slots.extend([(txn, kind) for kind in kinds])
        txn.pending += len(kinds)
        return data

    def _group(self, envelope: Envelope, *, reset: bool, data_command: bool) -> _Group:
        """The envelope's commands, what each one's slot is, and their bytes."""
        caps = self.session.capabilities
        commands = [_RSET] if reset else []
        commands.append(mail_command(envelope, caps))
        commands += [rcpt_command(envelope, r, caps) for r in envelope.recipients]
        if data_command:
            commands.append(_DATA)
        kinds = ["rset"] if reset else []
        kinds += ["mail", *["rcpt"] * len(envelope.recipients)]
        if data_command:
            kinds.append("data")
        data = b"".join([command.render() for command in commands])
        return tuple(commands), tuple(kinds), data

    def _slot(self, txn: Txn, kind: str) -> None:
        self.slots.append((txn, kind))
        txn.pending += 1

    def _data_pieces(self, txn: Txn) -> tuple[bytes, Iterator[bytes]]:
        """The DATA payload in writes of about WRITE_BATCH octets: the first one, and an
        iterator of the rest (empty for most messages); the last piece ends with the dot."""
        source = take_source(txn)
        crlf = crlf_only(source)
        chunks = iter(source())
        first = next(chunks, b"")
        if crlf and first.endswith(b"\r\n") and len(first) < WRITE_BATCH:
            second = next(chunks, None)
            if second is None:  # the usual small ready message: one piece, no encoder
                txn.size = len(first)
                return DataEncoder.whole(first), iter(())
            chunks = itertools.chain((first, second), chunks)
        else:
            chunks = itertools.chain((first,), chunks)
        # The first write now; the rest only read when the server said 354.
        pieces = self._encoded_pieces(txn, DataEncoder(crlf=crlf), chunks)
        return next(pieces), pieces

    def _encoded_pieces(
        self, txn: Txn, encoder: DataEncoder, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        """``chunks`` encoded in writes of about WRITE_BATCH octets, the dot in the last."""
        pending: list[bytes] = []
        size = 0
        for chunk in chunks:
            out = encoder.feed(chunk)
            if out:
                pending.append(out)
                size += len(out)
            if size >= WRITE_BATCH:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(encoder.end())
        txn.size = encoder.octets
        yield b"".join(pending)

    def _bdat_pieces(self, txn: Txn) -> Iterator[tuple[bytes, bool]]:
        """BDAT chunks of at most BDAT_CHUNK octets, the last one flagged."""
        source = take_source(txn)
        normalizer = LineEndingNormalizer(crlf=crlf_only(source))
        pending = bytearray()
        for chunk in source():
            pending += normalizer.feed(chunk)
            while len(pending) >= BDAT_CHUNK:
                piece = bytes(pending[:BDAT_CHUNK])
                del pending[:BDAT_CHUNK]
                txn.size += len(piece)
                yield piece, False
        pending += normalizer.flush()
        txn.size += len(pending)
        yield bytes(pending), True

    def _write(self, data: bytes, ends: Txn | None, *, at_tail: bool = True) -> Flow[None]:
        """Write; ``ends`` is the message whose end of data is in ``data``.

        When the write fails, the system may have taken any prefix of it: an end
        followed by other bytes may have gone out (unknown), one at the very tail
        cannot have.
        """
        if ends is not None and not at_tail:
            ends.end = MAYBE_WRITTEN
        yield Send(data, "data")
        if ends is not None:
            ends.end = WRITTEN

    # -- replies ---------------------------------------------------------------------

    def _receive(self, *, block: bool) -> Flow[None]:
        """Take every reply already here; if ``block``, wait until at least one came."""
        core = self.core
        while self.slots:
            if self._take_buffered():
                return
            if block:
                stage = _STAGE.get(self.slots[0][1], "data")
                data = yield _WAIT[stage, not core.has_buffered]
            else:
                data = yield _POLL
                if not data:
                    return
            core.receive_data(data)
            if not block:
                self._take_buffered()
                return

    def _take_buffered(self) -> bool:
        took = False
        slots, next_reply, take = self.slots, self.core.next_reply, self._take
        while slots:
            try:
                reply = next_reply()
            except ProtocolError as exc:
                exc.stage = exc.stage or "data"
                raise
            if reply is None:
                break
            take(slots.popleft(), reply)
            took = True
        return took

    def _take(self, slot: _Slot, reply: Reply) -> None:
        """Match one reply to its command; refuse one that cannot answer it."""
        txn, kind = slot
        code = reply.code
        if code == 421:
            self.closing = txn
            raise ServerDisconnected(
                "the server is closing the connection",
                reply=reply,
                stage=_STAGE.get(kind, "data"),
            )
        # Only DATA gets 354, and every other command no 3xx at all; with enhanced
        # codes, a 2xx address code (2.1.x) answers MAIL or RCPT and nothing else.
        fits = (code == 354 or code >= 400) if kind == "data" else (code < 300 or code >= 400)
        if fits and self.enhanced and 200 <= code < 300 and reply.enhanced:
            addressing = reply.enhanced.startswith("2.1.")
            fits = addressing if kind in ("mail", "rcpt") else not addressing
        if not fits:
            raise ProtocolError(
                f"the reply {reply} does not fit the {kind.upper()} it was matched to: the "
                "server answered out of order or more than once",
                reply=reply,
                stage=_STAGE.get(kind, "data"),
            )
        txn.pending -= 1
        if kind == "rcpt":
            txn.rcpts.append(reply)
        elif kind == "mail":
            txn.mail = reply
            if self.enhanced and reply.enhanced and 200 <= code < 300:
                self._confirm()  # an address code where one belongs: in step
        elif kind == "data":
            txn.data = reply
            if code == 354:
                self._confirm()  # the one reply that only DATA gets: in step
        elif kind == "end":
            txn.final = reply
        elif kind == "chunk":
            if code >= 400 and txn.chunk_error is None:
                txn.chunk_error = reply
        elif kind == "rset" and not 200 <= code < 300:
            raise ProtocolError("the server refused RSET", reply=reply, stage="mail")
        if not txn.pending and txn.complete:
            self._settle_if_done(txn)

    def _envelope_ok(self, txn: Txn, *, partial: bool = False) -> bool:
        """Whether MAIL and at least one RCPT were accepted (``partial``: not refused yet)."""
        if txn.mail is not None and not 200 <= txn.mail.code < 300:
            return False
        if partial and len(txn.rcpts) < len(txn.envelope.recipients):
            return True
        for reply in txn.rcpts:  # noqa: SIM110 - a loop, not any(): no generator per message
            if 200 <= reply.code < 300:
                return True
        return False

    def _settle_if_done(self, txn: Txn) -> None:
        if not txn.complete or txn.pending or self.results[txn.index] is not None:
            return
        outcome = outcome_of(txn)
        self.results[txn.index] = outcome
        self.unconfirmed.append(txn.index)
        started = self.started
        if started and started[0] is txn:
            started.popleft()
        inflight = self.inflight
        if inflight:
            if inflight[0] is txn:  # replies come in order: the oldest settles first
                inflight.popleft()
                self.inflight_bytes -= txn.envelope.size
            elif txn in inflight:
                inflight.remove(txn)
                self.inflight_bytes -= txn.envelope.size
        if not isinstance(outcome, SubmitResult) and (self.chunking or txn.final is None):
            self.dirty = True

    # -- failures --------------------------------------------------------------------

    def _lost(self, cause: SmtpError, items: Iterator[Any]) -> None:
        """The connection is gone: each message in flight by how far its end got."""
        for txn in list(self._unsettled()):
            self.results[txn.index] = self._lost_outcome(txn, cause)
        for index, outcome in enumerate(self.results):
            if outcome is None:
                self.results[index] = never_started(cause)
        for _ in items:
            self.results[self._new_index()] = never_started(cause)

    def _unsettled(self) -> Iterator[Txn]:
        """Messages started and without an outcome, oldest first."""
        return (txn for txn in self.started if self.results[txn.index] is None)

    def _lost_outcome(self, txn: Txn, cause: SmtpError) -> Outcome:
        if txn.mail is not None and not self._envelope_ok(txn, partial=True):
            return outcome_of(txn)  # already refused: whatever followed was discarded
        if txn is self.closing:
            return stream_error(ServerDisconnected, "the server closed the connection (421)", cause)
        if txn.end != NOT_WRITTEN:
            return stream_error(
                DeliveryStatusUnknown,
                "the connection was lost after the end of the message data was sent and "
                "before the server answered: the message may or may not have been accepted "
                "(retrying can deliver it twice)",
                cause,
            )
        return stream_error(
            ServerDisconnected,
            "the connection was lost before the message data was completely sent; "
            "nothing was delivered (safe to retry)",
            cause,
        )

    def _desync(self, cause: ProtocolError, items: Iterator[Any]) -> None:
        """Replies no longer match commands: nothing since the last proof is trusted."""
        suspect = set(self.unconfirmed)
        for index, outcome in enumerate(self.results):
            if outcome is None or index in suspect:
                self.results[index] = stream_error(ProtocolError, str(cause), cause)
        for _ in items:
            self.results[self._new_index()] = stream_error(ProtocolError, str(cause), cause)
