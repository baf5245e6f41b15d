"""The outbox worker: claim, send, record — with the record always ahead of the wire.

For each claimed message a worker thread (1) commits ``sending`` for the
recipients it is about to send, (2) sends through the route's pool, (3)
commits each recipient's outcome right after the reply. A crash between (1)
and (3) leaves ``sending``; when the lease runs out another worker turns it
into ``unknown`` and the retry policy decides (by default: one byte-identical
resend, counted as a possible duplicate).

``concurrency`` threads do this at once, each with its own pooled connection
and one message in flight, and hand their records to one committer
(:mod:`~smtpsubmit.outbox.commit`): one transaction, one disk flush, for the
records of every thread waiting — the disk's latency is paid per group, not
per message. :meth:`Worker._send` is the one place a claimed message is sent.

``SIGTERM`` (and ``SIGINT``) stop claiming; messages in flight finish and the
rest of a claimed batch is released at once for other workers.

Test hook: when the environment variable ``SMTPSUBMIT_TEST_KILL_AT`` is set
to ``POINT`` or ``POINT@N`` the process kills itself with ``SIGKILL`` at the
N-th (default first) passage through that point — ``after-claim``,
``after-sending`` (committed, nothing sent), ``mid-data`` (part of the data
written), ``after-reply`` (answer received, outcome not committed) or
``after-commit``. It exists for the crash tests and is inert when unset.
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
from smtpsubmit.outbox.state import checksum, summarize
from smtpsubmit.outbox.store import (
    Begin,
    Claimed,
    ClaimRequest,
    Finish,
    RecipientUpdate,
    StoreError,
)
from smtpsubmit.pool import Pool
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Server

if TYPE_CHECKING:
    from smtpsubmit.outbox.outbox import Outbox

__all__ = ["Worker"]

log = logging.getLogger("smtpsubmit.outbox")
IDLE_POLL = 1.0  # after a database error, how long before trying again
#: Messages in flight per worker process (threads, one message each): enough for their
#: records to share commits (see smtpsubmit.outbox.commit); more did not help on 2 cores.
DEFAULT_CONCURRENCY = 16
#: Connections per route and worker process. A thread holds one only while it sends (not
#: while it waits for a commit), so more threads than this still fill every connection.
MAX_CONNECTIONS = 8


class _KillHook:
    """The crash-test hook (see the module docstring); does nothing when unset."""

    def __init__(self, spec: str | None) -> None:
        point, _, count = (spec or "").partition("@")
        self.point = point or None
        self.remaining = int(count or "1")
        self.lock = threading.Lock()

    def __call__(self, point: str) -> None:
        if self.point != point:
            return
        with self.lock:
            self.remaining -= 1
            if self.remaining <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


_hook = _KillHook(os.environ.get("SMTPSUBMIT_TEST_KILL_AT"))


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

    def close(self) -> None:
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


def _mid_data(progress: Progress) -> None:
    if progress.stage == "data" and 0 < progress.bytes_sent < progress.bytes_total:
        _hook("mid-data")


class Worker:
    """Threads that drain an :class:`~smtpsubmit.outbox.Outbox`."""

    def __init__(
        self, outbox: Outbox, *, concurrency: int = DEFAULT_CONCURRENCY, batch_size: int = 8
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
        self._committer = Committer(outbox.store, self._committed)

    def stop(self) -> None:
        """Stop claiming; messages in flight finish."""
        self.stopping.set()

    def run(self, *, stop_when_idle: bool = False) -> None:
        """Run until :meth:`stop` (or SIGTERM), or until nothing is due when ``stop_when_idle``."""
        with self._signals():
            self._committer.start()
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
                self._committer.close()
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
        batch = self._committer.claim(claim)
        if batch:
            _hook("after-claim")
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
        """Deliver a batch, one message at a time. Each outcome goes to the committer as
        soon as its reply is read and is durable before this thread's next ``sending``;
        the last one before the thread claims again, so its next claim sees it."""
        last: Ticket | None = None
        try:
            for index, claimed in enumerate(batch):
                if self.stopping.is_set():
                    last = self._release(batch[index:]) or last
                    return
                try:
                    finish = self._deliver(claimed)
                except StoreError as exc:
                    # The lease runs out and another worker takes over: nothing is lost.
                    log.warning("outbox: could not record message %s: %s", claimed.id, exc)
                    continue
                if finish is not None:
                    last = self._committer.finish(finish)
        finally:
            if last is not None:
                with contextlib.suppress(StoreError):  # the committer has said it
                    last.wait()

    def _release(self, rest: list[Claimed]) -> Ticket | None:
        now, last = self.outbox.clock(), None
        for claimed in rest:
            state, due = summarize(claimed.recipients, [], now)
            last = self._committer.finish(Finish(claimed.id, self.owner, [], state, due, None, now))
        return last

    def _deliver(self, claimed: Claimed) -> Finish | None:
        """Send one claimed message; returns its outcome, not yet committed (None: the
        lease was lost before anything was sent)."""
        outbox, now = self.outbox, self.outbox.clock()
        if checksum(claimed.body) != claimed.checksum:
            return self._quarantine(claimed, "corrupt: the stored body does not match its checksum")
        to_send, decided = outbox.plan(claimed, now)
        if to_send:
            server = (outbox.routes or {}).get(claimed.route)
            if server is None:
                result: SubmitResult | BaseException = SmtpError(
                    f"this worker has no route {claimed.route!r}", is_temporary=True
                )
            else:
                pool = self._routes.pool(claimed.route, server)
                # The rate wait comes before ``sending`` is committed: a wait after it
                # could outlast the lease and let another worker call the send unknown.
                granted_at = pool.reserve(len(to_send))
                now = outbox.clock()
                positions = [r.position for r in to_send]
                begin = Begin(claimed.id, self.owner, positions, now, outbox.lease)
                if not self._committer.begin(begin):
                    log.warning("outbox: lease on %s lost before sending", claimed.id)
                    return None
                _hook("after-sending")
                recipients = [r.address for r in to_send]
                result = self._send(claimed, recipients, pool, granted_at)
                _hook("after-reply")
            now = outbox.clock()
            decided += outbox.outcomes(claimed, to_send, result, now)
        state, due = summarize(claimed.recipients, decided, now)
        reason = next((u.reply_text for u in decided if u.state != "sent"), None)
        return Finish(claimed.id, self.owner, decided, state, due, reason, now)

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
        _hook("after-commit")
        if finish.state == "sent":
            with self._count_lock:
                self.sent += 1

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
