"""One route's share of a claimed batch, streamed on a pooled connection.

Sent one at a time, a message costs the worker two round trips and several
thread hand-overs; on a pipelining server a stream (``Pool.send_stream``) costs
one write per message and no wait in between. The outbox's two records keep
their places inside the stream:

* ``sending`` is committed before a message's first byte: the stream takes a
  message only through ``before_send``, which waits for the commit of its
  ``sending``. So that this wait is nearly always over already, the
  ``sending`` of the next :data:`LOOKAHEAD` messages is handed to the
  committer ahead of time (not under a ``RateLimit``: there each one follows
  its rate token, so that no wait for a token can come after a ``sending``);
* each outcome goes to the committer the moment the stream has it
  (``on_outcome``: the reply read and proven in step), while the stream goes on.

The price is a wider window of doubt: a worker killed mid-stream leaves up to
``1 + LOOKAHEAD`` messages per stream marked ``sending`` without an outcome
(the one answered, the ones begun ahead), where one at a time left one. Each
is resent once and counted as a possible duplicate; only those whose end of
data had gone out can really be one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpsubmit.errors import PoolTimeout, ServerDisconnected, SmtpError
from smtpsubmit.outbox.commit import Ticket
from smtpsubmit.outbox.faults import fault_point
from smtpsubmit.outbox.state import summarize
from smtpsubmit.outbox.store import Begin, Claimed, Finish, Recipient, RecipientUpdate, StoreError
from smtpsubmit.pool import Pool
from smtpsubmit.result import SubmitResult

if TYPE_CHECKING:
    from smtpsubmit.outbox.worker import Worker

__all__ = ["LOOKAHEAD", "Planned", "StreamedBatch", "finish_of"]

log = logging.getLogger("smtpsubmit.outbox")

#: ``sending`` committed ahead of the stream, per stream: enough that a group commit
#: (a few milliseconds under load) is over before the stream reaches the message
#: (measured on 2 cores: 1 and 2 were 20 % and 10 % slower, 8 no faster).
LOOKAHEAD = 4
#: Transactions in flight per stream on a CHUNKING server: the most a crash can leave
#: really delivered and not recorded.
WINDOW = 8


@dataclass(slots=True)
class Planned:
    """A claimed message and what this attempt does with its recipients."""

    claimed: Claimed
    to_send: list[Recipient]
    decided: list[RecipientUpdate]


def finish_of(
    worker: Worker, planned: Planned, result: SubmitResult | BaseException | None
) -> Finish:
    """The record of one attempt (``result`` None: nothing was sent): each recipient's
    outcome and the message's new state."""
    outbox, claimed = worker.outbox, planned.claimed
    now = outbox.clock()
    decided = planned.decided
    if result is not None:
        decided = decided + outbox.outcomes(claimed, planned.to_send, result, now)
    state, due = summarize(claimed.recipients, decided, now)
    reason = next((u.reply_text for u in decided if u.state != "sent"), None)
    return Finish(claimed.id, worker.owner, decided, state, due, reason, now)


class StreamedBatch:
    """Sends ``planned`` (one route, in claim order) through ``pool``'s streams.

    A message the server never got — its connection lost or closed (421) before its
    data went out — is sent once more on a fresh connection within the batch, as a
    pool does, instead of waiting out a retry delay; ``sending`` is already durable
    for it, so it goes before the rest.
    """

    def __init__(self, worker: Worker, pool: Pool, planned: list[Planned]) -> None:
        self.worker = worker
        self.pool = pool
        self.planned = planned
        self.items = [
            (p.claimed.body, p.claimed.sender, [r.address for r in p.to_send]) for p in planned
        ]
        self.began: list[Ticket | None] = [None] * len(planned)
        self.retried: set[int] = set()
        self.lookahead = LOOKAHEAD if pool.rate_limit is None else 0
        self.queue = list(range(len(planned)))  # what is left to send, in sending order
        self.stream: list[int] = []  # what the running stream was given
        self.again: list[int] = []  # lost by the running stream before the server got them
        self.skip = False  # the stream ended at a message whose lease was lost
        self.last: Ticket | None = None

    def run(self) -> Ticket | None:
        """Stream every message (or release those not begun once the worker stops);
        returns the ticket of the last record handed over."""
        stalls = 0
        while self.queue:
            self.skip, self.again, self.stream = False, [], self.queue
            try:
                taken = self.pool.send_stream(
                    [self.items[j] for j in self.stream],
                    self._told,
                    before_send=self._before,
                    window=WINDOW,
                )
            except PoolTimeout:  # every connection busy for long: nothing was sent
                if self._stopped_here():
                    break
                continue  # wait again (what is begun must go: its recipients are sending)
            except SmtpError as exc:  # could not connect: nothing of the rest went out
                self._fail_rest(exc)
                break
            self.queue = self.again + self.stream[taken + self.skip :]
            if self._stopped_here():
                break
            stalls = 0 if taken or self.skip else stalls + 1
            if stalls >= 3:  # never expected; a guard against spinning
                self._fail_rest(SmtpError("no stream could start", is_temporary=True))
                break
        self._release_rest()
        return self.last

    def _stopped_here(self) -> bool:
        return (
            self.worker.stopping.is_set() and bool(self.queue) and self.began[self.queue[0]] is None
        )

    def _before(self, i: int) -> bool:
        """Message ``stream[i]`` is next: its ``sending`` must be durable first."""
        index, stream = self.stream[i], self.stream
        stopping = self.worker.stopping.is_set()
        if stopping and self.began[index] is None:
            return False  # not begun: released for another worker
        ahead = [] if stopping or i + 1 >= len(stream) else stream[i + 1 : i + 1 + self.lookahead]
        for j in (index, *ahead):
            if self.began[j] is None:
                self.began[j] = self._begin(self.planned[j])
        ticket = self.began[index] or self._begin(self.planned[index])  # begun just above
        try:
            began = ticket.wait()[1]
        except StoreError as exc:
            log.warning("outbox: could not record sending of %s: %s", self._id(index), exc)
            began = False
        if not began:
            log.warning("outbox: lease on %s lost before sending", self._id(index))
            self.skip = True
            return False
        fault_point("after-sending")
        return True

    def _begin(self, planned: Planned) -> Ticket:
        outbox, claimed = self.worker.outbox, planned.claimed
        positions = [r.position for r in planned.to_send]
        begin = Begin(claimed.id, self.worker.owner, positions, outbox.clock(), outbox.lease)
        return self.worker.committer.begin_later(begin)

    def _told(self, i: int, outcome: SubmitResult | BaseException) -> None:
        index = self.stream[i]
        if isinstance(outcome, ServerDisconnected) and index not in self.retried:
            self.retried.add(index)  # the server never got it: once more, on a new connection
            self.again.append(index)
            return
        fault_point("after-reply")
        finish = finish_of(self.worker, self.planned[index], outcome)
        self.last = self.worker.committer.finish(finish)

    def _fail_rest(self, error: SmtpError) -> None:
        for index in self.queue:
            self.last = self.worker.committer.finish(
                finish_of(self.worker, self.planned[index], error)
            )
        self.queue = []

    def _release_rest(self) -> None:
        """Messages never begun go back to the queue at once (the worker is stopping).
        Begun ones are never left here: each is sent or gets the error that stopped it."""
        rest = [self.planned[j].claimed for j in self.queue]
        if rest:
            self.last = self.worker.release(rest) or self.last

    def _id(self, index: int) -> str:
        return self.planned[index].claimed.id
