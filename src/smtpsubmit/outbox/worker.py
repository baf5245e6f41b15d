"""The outbox worker: claim, send, record — with the record always ahead of the wire.

For each claimed message a worker thread (1) commits ``sending`` for the
recipients it is about to send, (2) sends through the route's pool, (3)
commits each recipient's outcome right after the reply. A crash between (1)
and (3) leaves ``sending``; when the lease runs out another worker turns it
into ``unknown`` and the retry policy decides (by default: one byte-identical
resend, counted as a possible duplicate).

``concurrency`` threads do this at once. Each claims a batch; the messages of
a batch bound for one server go out as one pipelined stream on one pooled
connection (:mod:`~smtpsubmit.outbox.streaming`), a message alone or bound for
a direct route one at a time (:meth:`Worker._deliver`). Every thread hands its
records to one committer (:mod:`~smtpsubmit.outbox.commit`): one transaction,
one disk flush, for the records of every thread waiting — the disk's latency
is paid per group, not per message.

``SIGTERM`` (and ``SIGINT``) stop claiming; messages in flight finish and the
rest of a claimed batch is released at once for other workers.

Crash tests stop the process at named points: :mod:`~smtpsubmit.outbox.faults`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from smtpsubmit.errors import MessageError, SmtpError
from smtpsubmit.outbox.commit import Committer, Ticket
from smtpsubmit.outbox.direct_route import DirectRoute, DirectSender, Sender
from smtpsubmit.outbox.faults import fault_point
from smtpsubmit.outbox.state import checksum, summarize
from smtpsubmit.outbox.store import (
    Begin,
    Claimed,
    ClaimRequest,
    Finish,
    RecipientUpdate,
    StoreError,
)
from smtpsubmit.outbox.streaming import Planned, StreamedBatch, finish_of
from smtpsubmit.pool import Pool
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server

if TYPE_CHECKING:
    from smtpsubmit.outbox.outbox import Outbox

__all__ = ["Worker"]

log = logging.getLogger("smtpsubmit.outbox")
IDLE_POLL = 1.0  # after a database error, how long before trying again
#: Threads per worker process, each streaming a claimed batch on one connection: the best
#: rate on 2 cores (more threads mostly wait for the interpreter lock).
DEFAULT_CONCURRENCY = 4
#: Messages per claim, and so per stream.
DEFAULT_BATCH = 32
#: Connections per route and worker process. A thread holds one only while it sends (not
#: while it waits for a commit), so more threads than this still fill every connection.
MAX_CONNECTIONS = 8


class _Routes:
    """One :class:`~smtpsubmit.Pool` per route for the whole worker, shared by its threads
    (a direct route gets a :class:`~smtpsubmit.outbox.direct_route.DirectSender` instead).

    ``max_connections`` is the worker's concurrency up to :data:`MAX_CONNECTIONS`: a
    thread holds a connection only while it sends, so the threads waiting for their
    commit leave the connections to the others, and a server sees at most that many
    sessions from one worker. The route's ``RateLimit`` (``Outbox(rate_limits=...)``)
    is the pool's.
    The pool does not retry rate refusals itself (``rate_retries=0``): the retry
    policy owns retries, and a thread must not sleep under a lease it already used.
    """

    def __init__(self, outbox: Outbox, concurrency: int) -> None:
        self.outbox = outbox
        self.concurrency = concurrency
        self.pools: dict[str, Sender] = {}
        self.lock = threading.Lock()

    def pool(self, route: str, server: Server | DirectRoute) -> Sender:
        with self.lock:
            pool = self.pools.get(route)
            if pool is None:
                limit = self.outbox.rate_limits.get(route)
                if isinstance(server, DirectRoute):  # the one place a direct route differs
                    pool = DirectSender(self.outbox, route, server, limit)
                else:
                    pool = Pool(
                        server,
                        max_connections=min(self.concurrency, MAX_CONNECTIONS),
                        rate_limit=limit,
                        rate_retries=0,
                    )
                self.pools[route] = pool
            return pool

    def server_pool(self, route: str, server: Server) -> Pool:
        pool = self.pool(route, server)
        if not isinstance(pool, Pool):  # a route's kind does not change while the worker runs
            raise TypeError(f"route {route!r} is not a server")
        return pool

    def close(self) -> None:
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


def _mid_data(progress: Progress) -> None:
    if progress.stage == "data" and 0 < progress.bytes_sent < progress.bytes_total:
        fault_point("mid-data")


class Worker:
    """Threads that drain an :class:`~smtpsubmit.outbox.Outbox`."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self.outbox = outbox
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.sent = 0
        self._count_lock = threading.Lock()
        self._routes = _Routes(outbox, concurrency)
        self.committer = Committer(outbox.store, self._committed)

    def stop(self) -> None:
        """Stop claiming; messages in flight finish."""
        self.stopping.set()

    def run(self, *, stop_when_idle: bool = False) -> None:
        """Run until :meth:`stop` (or SIGTERM), or until nothing is due when ``stop_when_idle``."""
        with self._signals():
            self.committer.start()
            threads = [
                threading.Thread(
                    target=self._loop, args=(stop_when_idle,), name=f"outbox-{i}", daemon=True
                )
                for i in range(self.concurrency)
            ]
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.2)  # short joins keep the main thread responsive to signals
            finally:
                self.committer.close()
                self._routes.close()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, lambda *_: self.stop())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, stop_when_idle: bool) -> None:
        while not self.stopping.is_set():
            try:
                if not self._step():
                    if stop_when_idle:
                        return
                    self._idle()
            except StoreError as exc:
                # The database is away: keep trying; leases protect what was claimed.
                log.warning("outbox: database error, retrying: %s", exc)
                self.stopping.wait(IDLE_POLL)
            except Exception:
                # A bug must not silently end this thread: what it held is protected by
                # its lease and will be taken over; this thread carries on.
                log.exception("outbox: unexpected error in the worker, carrying on")
                self.stopping.wait(IDLE_POLL)

    def _step(self) -> bool:
        """Claim and deliver one batch; False (after waiting, unless idle stops) if none."""
        outbox = self.outbox
        claim = ClaimRequest(self.owner, self.batch_size, outbox.clock(), outbox.lease)
        batch = self.committer.claim(claim)
        if batch:
            fault_point("after-claim")
            self._work(batch)
            return True
        return False

    def _idle(self) -> None:
        store = self.outbox.store
        next_due = store.next_due()
        wait = store.poll_interval
        if next_due is not None:
            wait = min(wait, next_due - self.outbox.clock())
        store.wait(max(wait, 0.05), self.stopping)

    def _work(self, batch: list[Claimed]) -> None:
        """Deliver a batch, route by route. Each outcome goes to the committer as soon as
        its reply is read; the last one is durable before the thread claims again, so its
        next claim sees it."""
        last: Ticket | None = None
        try:
            for route, share in _by_route(batch):
                if self.stopping.is_set():
                    last = self.release(share) or last
                    continue
                server = (self.outbox.routes or {}).get(route)
                if isinstance(server, Server) and len(share) > 1:
                    last = self._stream(route, server, share) or last
                else:
                    last = self._one_by_one(share) or last
        finally:
            if last is not None:
                with contextlib.suppress(StoreError):  # the committer has said it
                    last.wait()

    def _stream(self, route: str, server: Server, share: list[Claimed]) -> Ticket | None:
        """Several messages for one server: planned, then streamed on pooled connections."""
        last: Ticket | None = None
        planned: list[Planned] = []
        now = self.outbox.clock()
        for claimed in share:
            plan = self._plan(claimed, now)
            if isinstance(plan, Planned):
                planned.append(plan)
            else:
                last = self.committer.finish(plan)
        if planned:
            last = (
                StreamedBatch(self, self._routes.server_pool(route, server), planned).run() or last
            )
        return last

    def _one_by_one(self, share: list[Claimed]) -> Ticket | None:
        last: Ticket | None = None
        for index, claimed in enumerate(share):
            if self.stopping.is_set():
                return self.release(share[index:]) or last
            try:
                finish = self._deliver(claimed)
            except StoreError as exc:
                # The lease runs out and another worker takes over: nothing is lost.
                log.warning("outbox: could not record message %s: %s", claimed.id, exc)
                continue
            if finish is not None:
                last = self.committer.finish(finish)
        return last

    def release(self, rest: list[Claimed]) -> Ticket | None:
        """Hand claimed messages back at once, untouched (the worker is stopping)."""
        now, last = self.outbox.clock(), None
        for claimed in rest:
            state, due = summarize(claimed.recipients, [], now)
            last = self.committer.finish(Finish(claimed.id, self.owner, [], state, due, None, now))
        return last

    def _plan(self, claimed: Claimed, now: float) -> Planned | Finish:
        """What to send of a claimed message, or its record when nothing is to be sent:
        a corrupt body quarantined, or only what the policy decided without sending."""
        if checksum(claimed.body) != claimed.checksum:
            return self._corrupt(claimed)
        to_send, decided = self.outbox.plan(claimed, now)
        planned = Planned(claimed, to_send, decided)
        return planned if to_send else finish_of(self, planned, None)

    def _deliver(self, claimed: Claimed) -> Finish | None:
        """Send one claimed message on its own; returns its outcome, not yet committed
        (None: the lease was lost before anything was sent)."""
        outbox = self.outbox
        planned = self._plan(claimed, outbox.clock())
        if not isinstance(planned, Planned):
            return planned
        to_send = planned.to_send
        server = (outbox.routes or {}).get(claimed.route)
        if server is None:
            error = SmtpError(f"this worker has no route {claimed.route!r}", is_temporary=True)
            return finish_of(self, planned, error)
        pool = self._routes.pool(claimed.route, server)
        # The rate wait comes before ``sending`` is committed: a wait after it
        # could outlast the lease and let another worker call the send unknown.
        granted_at = pool.reserve(len(to_send))
        positions = [r.position for r in to_send]
        begin = Begin(claimed.id, self.owner, positions, outbox.clock(), outbox.lease)
        if not self.committer.begin(begin):
            log.warning("outbox: lease on %s lost before sending", claimed.id)
            return None
        fault_point("after-sending")
        recipients = [r.address for r in to_send]
        result = self._send(claimed, recipients, pool, granted_at)
        fault_point("after-reply")
        return finish_of(self, planned, result)

    def _send(
        self, claimed: Claimed, recipients: list[str], pool: Sender, granted_at: float
    ) -> SubmitResult | BaseException:
        try:
            return pool.send_reserved(
                claimed.body,
                granted_at,
                sender=claimed.sender,
                recipients=recipients,
                progress=_mid_data,
            )
        except (SmtpError, MessageError) as exc:
            return exc
        except Exception as exc:  # a bug must not stop the worker: retried later
            log.exception("outbox: unexpected error sending %s", claimed.id)
            return SmtpError(f"unexpected error: {type(exc).__name__}", is_temporary=True)

    def _committed(self, finish: Finish, ok: bool) -> None:
        """Runs in the committer's thread once ``finish`` is durable (or found unowned)."""
        if not ok:
            log.warning("outbox: lease on %s lost; its outcome was not recorded", finish.message)
            return
        fault_point("after-commit")
        if finish.state == "sent":
            with self._count_lock:
                self.sent += 1

    def _corrupt(self, claimed: Claimed) -> Finish:
        return self._quarantine(claimed, "corrupt: the stored body does not match its checksum")

    def _quarantine(self, claimed: Claimed, reason: str) -> Finish:
        """A corrupt row becomes a dead letter with its reason; the worker keeps going."""
        log.error("outbox: message %s quarantined: %s", claimed.id, reason)
        updates = [
            RecipientUpdate(r.position, "bounced", None, None, reason)
            for r in claimed.recipients
            if r.state not in ("sent", "bounced", "cancelled")
        ]
        now = self.outbox.clock()
        return Finish(claimed.id, self.owner, updates, "bounced", now, reason, now)


def _by_route(batch: list[Claimed]) -> list[tuple[str, list[Claimed]]]:
    """A batch's messages by route, each route's in claim order."""
    shares: dict[str, list[Claimed]] = {}
    for claimed in batch:
        shares.setdefault(claimed.route, []).append(claimed)
    return list(shares.items())
