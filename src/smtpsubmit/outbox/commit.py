"""Group commit: the records of many messages in flight, one transaction (one fsync) for all.

A durable commit costs a disk flush (about a millisecond), and the outbox needs
two per message: ``sending`` before the first byte and the recipients' outcome
right after the reply. Paid one message at a time, the flush, not SMTP, sets
the worker's pace. So every worker thread hands its records to one
:class:`Committer`, whose thread writes *everything pending* in one transaction
(:meth:`~smtpsubmit.outbox.store.Store.commit_group`) and wakes each waiter.
Claims ride the same transactions: a claim is a write as well.
While that commit runs, the records of the other threads pile up and ride the
next one: the more messages are in flight, the more records share a flush.
Nothing waits on purpose for company — a lone record is committed at once.

The guarantees stay per message. A thread sends only after the commit holding
its ``sending`` (:meth:`Committer.begin` blocks until then), and hands an
outcome over the moment the reply is read (:meth:`Committer.finish` does not
block). Records are committed in the order they were handed over, so an
outcome is durable no later than the same thread's next ``sending`` — killed
after that commit, the process never resends the message before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from smtpsubmit.outbox.store import Begin, Claimed, ClaimRequest, Finish, Store, StoreError

__all__ = ["Committer", "Ticket"]

log = logging.getLogger("smtpsubmit.outbox")

#: The most records one transaction takes; a bound on what a failed commit throws away.
MAX_GROUP = 256

OnFinished = Callable[[Finish, bool], None]


class Ticket:
    """One record (or claim) waiting for its commit. Light on purpose: a worker makes two
    per message, and most are never waited for (only a batch's last one is)."""

    __slots__ = ("begin", "claim", "claimed", "done", "error", "finish", "result", "settled")

    def __init__(
        self,
        settled: threading.Condition,
        finish: Finish | None,
        begin: Begin | None,
        claim: ClaimRequest | None = None,
    ) -> None:
        self.settled = settled  # the committer's: notified after every commit
        self.finish = finish
        self.begin = begin
        self.claim = claim
        self.done = False
        self.result = (False, False)
        self.claimed: list[Claimed] = []
        self.error: StoreError | None = None

    def wait(self) -> tuple[bool, bool]:
        """Block until committed: ``(finished, began)`` as ``record_many`` says, or the
        :class:`~smtpsubmit.outbox.store.StoreError` of that commit."""
        if not self.done:
            with self.settled:
                while not self.done:
                    self.settled.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Committer:
    """One thread that commits the records of a worker's threads in groups.

    ``on_finished(finish, recorded)`` runs in the committer's thread after the
    commit that held ``finish`` (``recorded`` is False when its lease was lost);
    it must not block.
    """

    def __init__(self, store: Store, on_finished: OnFinished) -> None:
        self.store = store
        self.on_finished = on_finished
        self._pending: list[Ticket] = []
        self._wake = threading.Condition(threading.Lock())
        self._settled = threading.Condition(threading.Lock())  # one for every ticket
        self._closing = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._wake:
            self._closing = False
        self._thread = threading.Thread(target=self._loop, name="outbox-commit", daemon=True)
        self._thread.start()

    def begin(self, begin: Begin) -> bool:
        """Commit ``sending`` (and everything handed over before it); False: lease lost.

        Raises :class:`~smtpsubmit.outbox.store.StoreError` when that commit failed.
        """
        return self._submit(None, begin).wait()[1]

    def begin_later(self, begin: Begin) -> Ticket:
        """Hand ``sending`` over without waiting; :meth:`Ticket.wait` gives what
        :meth:`begin` returns (a stream commits the next messages' ``sending`` ahead)."""
        return self._submit(None, begin)

    def claim(self, claim: ClaimRequest) -> list[Claimed]:
        """Lease messages in the next group's transaction (a claim is a write too, and
        sharing the commit spares a flush and a wait for the writer lock)."""
        ticket = Ticket(self._settled, None, None, claim)
        self._put(ticket)
        ticket.wait()
        return ticket.claimed

    def finish(self, finish: Finish) -> Ticket:
        """Hand an outcome over to be committed now; the caller goes on at once (and may
        :meth:`Ticket.wait` later)."""
        return self._submit(finish, None)

    def close(self) -> None:
        """Commit what was handed over, then stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _submit(self, finish: Finish | None, begin: Begin | None) -> Ticket:
        return self._put(Ticket(self._settled, finish, begin))

    def _put(self, ticket: Ticket) -> Ticket:
        with self._wake:
            if self._closing:
                raise RuntimeError("the outbox committer is not running")
            self._pending.append(ticket)
            self._wake.notify()
        return ticket

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                group = self._pending[:MAX_GROUP]
                del self._pending[:MAX_GROUP]
            self._commit(group)

    def _commit(self, group: list[Ticket]) -> None:
        records = [t for t in group if t.claim is None]
        claims = [t for t in group if t.claim is not None]
        try:
            results, claimed = self.store.commit_group(
                [(t.finish, t.begin) for t in records], [t.claim for t in claims if t.claim]
            )
        except StoreError as exc:
            # Nothing of the group was written: its senders do not send, and the
            # messages whose outcome was lost are taken over when their lease ends.
            log.warning("outbox: could not record %d message(s): %s", len(group), exc)
            error = exc
        except Exception as exc:  # a bug must not leave senders waiting for ever
            log.exception("outbox: unexpected error recording %d message(s)", len(group))
            error = StoreError(f"unexpected error: {type(exc).__name__}")
        else:
            for ticket, result in zip(records, results, strict=True):
                ticket.result = result
                if ticket.finish is not None:
                    self._finished(ticket.finish, result[0])
                ticket.done = True
            for ticket, leased in zip(claims, claimed, strict=True):
                ticket.claimed = leased
                ticket.done = True
            self._wake_waiters()
            return
        for ticket in group:
            ticket.error = error
            ticket.done = True
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Every ticket of the group is done (set before this lock is taken, so a waiter
        that saw one not done is already waiting when the notice comes)."""
        with self._settled:
            self._settled.notify_all()

    def _finished(self, finish: Finish, recorded: bool) -> None:
        try:
            self.on_finished(finish, recorded)
        except Exception:
            log.exception("outbox: error after recording message %s", finish.message)
