"""``Pool``: many messages over a bounded set of blocking :class:`~smtpsubmit.Client`
connections, safe to share between threads.

The rules live in :mod:`smtpsubmit.pool._core`; this module only waits (a
``threading.Condition``), connects and sends. ``send_many`` runs one worker per
connection it may use — the calling thread and at most ``max_connections - 1``
more threads per call, never one per message — and each worker sends batches
of messages on the connection it holds (:meth:`Pool._send_batch`, the one
place that talks to the client). ``send_iter`` runs the same workers, all in
threads of their own, while the calling thread takes the outcomes as they come.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from types import TracebackType
from typing import Any

from smtpsubmit.batch import WINDOW, OnOutcome
from smtpsubmit.client import Client
from smtpsubmit.errors import MessageError, PoolTimeout, SmtpError
from smtpsubmit.pool._core import (
    BATCH,
    Conn,
    Job,
    Jobs,
    Outcome,
    PoolConfig,
    Slots,
    describe,
    hand_over,
    keep,
    left_unclean,
    normalise,
    pool_timeout,
    retire_after,
    session_alive,
    settle,
    slow_down_if_refused,
    streamable,
)
from smtpsubmit.ratelimit import Grant, RateLimit, is_rate_refusal
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Server

__all__ = ["Pool"]

log = logging.getLogger("smtpsubmit")


class Pool:
    """Up to ``max_connections`` reused connections to one server, for many threads.

    ``with Pool(server) as pool: pool.send(message)`` or
    ``pool.send_many(messages)``. Connections open on demand, go back to the
    pool only when clean, retire after ``max_messages_per_connection``
    messages or a 421, and close after ``idle_timeout`` seconds unused.
    Waiting more than ``acquire_timeout`` for a connection raises
    :class:`~smtpsubmit.PoolTimeout`. ``rate_limit`` is shared by every
    connection; without one the pool still backs off when the server says it
    is sending too fast. ``rate_retries``: how often a message refused for
    its rate is tried again within the call.
    """

    def __init__(
        self,
        server: Server,
        *,
        max_connections: int = 4,
        max_messages_per_connection: int = 1000,
        idle_timeout: float = 60.0,
        acquire_timeout: float = 30.0,
        rate_limit: RateLimit | None = None,
        rate_retries: int = 6,
    ) -> None:
        self.config = PoolConfig(
            server,
            max_connections,
            max_messages_per_connection,
            idle_timeout,
            acquire_timeout,
            rate_retries,
        )
        self.server = server
        self.rate_limit = rate_limit
        self._limit = rate_limit if rate_limit is not None else RateLimit._backoff_only()
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # a slot or idle connection appeared
        self._reaper_wake = threading.Condition(self._lock)
        self._slots: Slots[Client] = Slots(max_connections, idle_timeout)
        self._reaper: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, message: Any, **envelope: Any) -> SubmitResult:
        """Send one message on a pooled connection; raises like ``Client.send``."""
        return self._send(message, envelope, None)

    def reserve(self, recipients: int = 1) -> float:
        """Wait for one message's rate token now; give the value to ``send_reserved``.

        For a caller that must not wait between recording a send and making it
        (the outbox commits ``sending`` under a lease, then sends).
        """
        return self._limit.acquire(recipients if self._limit.recipients is not None else 1)

    def send_reserved(self, message: Any, granted_at: float, **envelope: Any) -> SubmitResult:
        """``send`` with the rate token taken by :meth:`reserve` (never waits for another)."""
        return self._send(message, envelope, granted_at)

    def _send(
        self, message: Any, envelope: dict[str, Any], granted_at: float | None
    ) -> SubmitResult:
        jobs = Jobs.single(normalise(message, envelope), granted_at)
        self._work(jobs, threading.Condition())
        outcome = jobs.outcomes()[0]
        if isinstance(outcome, SubmitResult):
            return outcome
        raise outcome

    def send_many(self, messages: Iterable[object]) -> list[Outcome]:
        """Send every message, spread over the connections; results in input order.

        Each result is a ``SubmitResult`` or the ``SmtpError``/``MessageError`` of
        that message: one failure never stops the others.
        """
        size = len(messages) if isinstance(messages, Sized) else self.config.max_connections
        workers = max(1, min(self.config.max_connections, size))
        jobs = Jobs(messages, workers)
        call = threading.Condition()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._work(jobs, call)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, daemon=True) for _ in range(workers - 1)]
        for thread in threads:
            thread.start()
        run()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return jobs.outcomes()

    def send_iter(self, messages: Iterable[object]) -> Iterator[Outcome]:
        """``send_many`` as a stream: each outcome as soon as it and every earlier one are
        decided, in input order; memory stays flat however many messages.

        The input is read lazily and only what is in flight is kept (at most
        ``2 x max_connections x 32`` messages ahead of the caller: the workers
        wait while the caller is busy). Stopping early (``break``, ``close()``)
        lets the messages in flight finish, starts nothing more, returns the
        connections and joins the worker threads before ``close()`` returns.
        """
        size = len(messages) if isinstance(messages, Sized) else self.config.max_connections
        workers = max(1, min(self.config.max_connections, size))
        jobs = Jobs(messages, workers, ahead=2 * workers * BATCH)
        call = threading.Condition()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._work(jobs, call)
            except BaseException as exc:
                with call:
                    errors.append(exc)
                    jobs.stop()
                    call.notify_all()

        threads = [
            threading.Thread(target=run, name="smtpsubmit-pool-send", daemon=True)
            for _ in range(workers)
        ]
        pending: deque[Outcome] = deque()
        try:
            for thread in threads:
                thread.start()
            while True:
                with call:
                    while not jobs.ready and jobs.active and not errors:
                        call.wait()
                    if errors:
                        raise errors[0]
                    pending.extend(jobs.pop_ready())
                    call.notify_all()  # room for the workers
                    if not pending and not jobs.active:
                        break
                while pending:
                    yield pending.popleft()
            for thread in threads:
                thread.join()
            if errors:  # a worker's last words may come after it counted itself out
                raise errors[0]
        finally:
            with call:
                jobs.stop()
                call.notify_all()
            with self._lock:
                self._free.notify_all()  # a worker waiting for a connection gives up
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            decided, unsent = jobs.unreported()
            if decided + len(pending) or unsent:
                log.info(
                    "send_iter stopped early: %d message(s) sent whose outcome was not "
                    "taken, %d drawn from the input and never sent",
                    decided + len(pending),
                    unsent,
                )

    def send_stream(
        self,
        messages: Sequence[object],
        on_outcome: OnOutcome,
        *,
        before_send: Callable[[int], bool] | None = None,
        window: int = WINDOW,
    ) -> int:
        """Send a prefix of ``messages`` on one pooled connection, as one stream; returns
        its length: ``messages[:n]`` went, ``messages[n:]`` were not touched.

        For a caller that acts on each message at the last moment before it goes
        out and on each reply as it comes (the outbox commits ``sending`` before
        the first byte and the outcome right after the reply). Each message must
        be a ``Message`` or a ``(raw, sender, recipients)`` tuple. One is taken
        only when it can go at once: the connection is up and under its message
        cap and its rate token is granted — the first one waited for, a later one
        that would have to wait ends the stream (so no message's end waits on a
        sleep). ``before_send(i)`` runs then, right before message ``i`` is
        handed to the stream; False ends the stream there. Every message taken
        gets one ``on_outcome(i, outcome)`` as soon as its outcome is final
        (see ``Client.send_many``, whose ``window`` bounds the transactions in
        flight on a CHUNKING server). Nothing is retried: a refusal or a lost
        connection is that message's outcome. Raises ``PoolTimeout`` or the
        ``SmtpError`` of a failed connect before anything is taken.
        """
        normalised = [normalise(m) for m in messages]
        items = [streamable(n) for n in normalised]
        if any(item is None for item in items):
            raise ValueError("send_stream takes Message objects or (raw, sender, recipients)")
        conn = self._checkout(False)
        if conn is None:  # only a call that can stop gets None; this one waits or raises
            raise RuntimeError("no connection")
        limit = self._limit
        grants: list[Grant | None] = [None] * len(items)
        recipients_limited = limit.recipients is not None

        def feed() -> Iterator[object]:
            room = self.config.max_messages_per_connection - conn.sent
            for i, item in enumerate(items[:room]):
                cost = normalised[i].recipient_count() if recipients_limited else 1
                if i and (not session_alive(conn.client) or conn.retire):
                    return
                grant = limit._acquire_grant(cost) if i == 0 else limit._grant(cost)
                if grant is None or (before_send is not None and not before_send(i)):
                    return
                grants[i] = grant
                conn.sent += 1
                conn.fresh = False
                yield item

        def told(i: int, outcome: Outcome) -> None:
            grant = grants[i]
            limit._delivered(grant)
            retire_after(conn, outcome)
            slow_down_if_refused(limit, outcome, grant.at if grant is not None else None)
            on_outcome(i, outcome)

        try:
            taken = len(conn.client.send_many(feed(), window=window, on_outcome=told))
            if left_unclean(conn.client):
                try:
                    conn.client.reset()
                except SmtpError:
                    conn.retire = True
        except BaseException:
            conn.retire = True
            raise
        finally:
            self._checkin(conn)
        return taken

    def close(self) -> None:
        """Close the idle connections now and the busy ones when they come back."""
        with self._lock:
            idle = self._slots.close()
            self._free.notify_all()
            self._reaper_wake.notify_all()
            reaper = self._reaper
        for conn in idle:
            conn.client.close()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()

    def __repr__(self) -> str:
        with self._lock:
            return describe("Pool", self.server, self._slots)

    # -- one worker ---------------------------------------------------------------------

    def _work(self, jobs: Jobs, call: threading.Condition) -> None:
        """Take batches of jobs and send them until none is left (or no connection comes).

        ``call`` guards ``jobs`` and is notified whenever outcomes are ready or room
        appears (``send_iter``'s caller and its workers wait on it)."""
        try:
            self._work_loop(jobs, call)
        finally:
            with call:
                jobs.active -= 1
                call.notify_all()

    def _work_loop(self, jobs: Jobs, call: threading.Condition) -> None:
        connect_refusals = 0

        def report(job: Job, outcome: Outcome) -> None:
            """Settle each message as its outcome comes (send_iter yields it now)."""
            with call:
                settle(jobs, [job], [outcome], self._limit, self.config.rate_retries)
                call.notify_all()

        while True:
            with call:
                while not jobs.queued():
                    if jobs.exhausted():
                        return
                    call.wait()  # send_iter: the caller has not taken enough yet
                fresh = jobs.wants_fresh()
            attempt_at = self._limit.now()
            try:
                conn = self._checkout(fresh, jobs)
            except PoolTimeout as exc:
                with call:
                    if jobs.active == 1:  # the last worker: nobody else will send the rest
                        while not jobs.fail_rest(exc):
                            call.notify_all()
                            call.wait()
                        call.notify_all()
                return
            except SmtpError as exc:  # could not connect
                if is_rate_refusal(exc.reply) and connect_refusals < self.config.rate_retries:
                    connect_refusals += 1
                    self._limit.slow_down(attempt_at)
                    continue
                with call:
                    for job in jobs.take(1, fresh=True):
                        jobs.finish(job, exc)
                    call.notify_all()
                continue
            if conn is None:  # the call stopped while waiting for a connection
                return
            connect_refusals = 0
            with call:
                batch = jobs.take(
                    min(BATCH, self.config.max_messages_per_connection - conn.sent), conn.fresh
                )
            if not batch:
                self._checkin(conn)
                continue
            try:
                done = self._send_batch(conn, batch, jobs, report)
            except BaseException:
                conn.retire = True
                self._checkin(conn)
                raise
            self._checkin(conn)
            with call:
                for job in batch[done:]:  # never tried: queued again
                    jobs.requeue(job)
                call.notify_all()

    def _send_batch(
        self,
        conn: Conn[Client],
        batch: list[Job],
        jobs: Jobs,
        report: Callable[[Job, Outcome], None],
    ) -> int:
        """Send ``batch`` on ``conn``, giving each outcome to ``report`` as it comes; returns
        how many were tried (the rest, never started, go back to the queue).

        Runs of messages go through one ``Client.send_many`` stream (pipelined:
        one write per message, or none to wait for with CHUNKING); a batch of
        one, or a message with envelope options the stream does not take, goes
        through ``Client.send``. Every message waits for its own rate token first.
        Once the call stops (``send_iter`` closed) nothing more is started.
        """
        client = conn.client
        done = 0
        while done < len(batch) and not conn.retire and client.is_connected and not jobs.stopped:
            job = batch[done]
            if not job.prepaid:
                job.grant = self._limit._acquire_grant(self._cost(job))
                job.granted_at = job.grant.at
                if jobs.stopped:  # stopped during the wait: its token goes unused
                    break
            if streamable(job.item) is None or len(batch) == 1:
                report(job, self._send_one(conn, job))
                done += 1
                continue
            feed = hand_over(
                conn,
                batch[done:],
                self._limit,
                lambda: session_alive(client) and not jobs.stopped,
            )
            done += len(client.send_many(feed, on_outcome=self._teller(conn, batch[done:], report)))
            if left_unclean(client):
                try:
                    client.reset()
                except SmtpError:
                    conn.retire = True
        return done

    @staticmethod
    def _teller(
        conn: Conn[Client], jobs: list[Job], report: Callable[[Job, Outcome], None]
    ) -> OnOutcome:
        """Each outcome of a stream reported as its reply comes, not when the stream ends."""

        def told(index: int, outcome: Outcome) -> None:
            retire_after(conn, outcome)
            report(jobs[index], outcome)

        return told

    def _send_one(self, conn: Conn[Client], job: Job) -> Outcome:
        conn.sent += 1
        conn.fresh = False
        try:
            return conn.client.send(job.item.message, **job.item.options)
        except (SmtpError, MessageError) as exc:
            retire_after(conn, exc)
            return exc

    def _cost(self, job: Job) -> int:
        return job.item.recipient_count() if self._limit.recipients is not None else 1

    # -- connections --------------------------------------------------------------------

    def _checkout(self, fresh: bool, jobs: Jobs | None = None) -> Conn[Client] | None:
        """A connection, or None once ``jobs`` stopped while waiting for one."""
        deadline = time.monotonic() + self.config.acquire_timeout
        to_close: list[Conn[Client]] = []
        try:
            with self._lock:
                while True:
                    if self._slots.closed:
                        raise RuntimeError("the pool is closed")
                    if jobs is not None and jobs.stopped:
                        return None
                    now = time.monotonic()
                    got = self._slots.checkout(now, fresh, to_close)
                    if got is not False:
                        break
                    if now >= deadline:
                        raise pool_timeout(self.config, self._slots)
                    self._slots.waiting += 1
                    try:
                        self._free.wait(deadline - now)
                    finally:
                        self._slots.waiting -= 1
        finally:
            for old in to_close:
                old.client.close()
        if isinstance(got, Conn):
            return got
        return self._open()

    def _open(self) -> Conn[Client]:
        try:
            self._limit.acquire_connection()
            client = Client(self.server)
            client.connect()
        except BaseException:
            with self._lock:
                self._slots.failed_open()
                self._free.notify()
            raise
        return Conn(client)

    def _checkin(self, conn: Conn[Client]) -> None:
        reusable = keep(conn, conn.client.is_connected, self.config.max_messages_per_connection)
        with self._lock:
            was_empty = not self._slots.idle
            kept = self._slots.checkin(conn, time.monotonic(), reusable)
            self._free.notify()
            if kept and was_empty:
                self._start_reaper()
                self._reaper_wake.notify()
        if not kept:
            conn.client.close()

    def _start_reaper(self) -> None:
        """One thread per pool closes connections idle for ``idle_timeout`` (lock held)."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="smtpsubmit-pool", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._lock:
                if self._slots.closed:
                    return
                expiry = self._slots.next_expiry()
                now = time.monotonic()
                if expiry is None or expiry > now:
                    self._reaper_wake.wait(None if expiry is None else expiry - now)
                    continue
                expired = self._slots.expire(now)
                self._free.notify(len(expired))
            for conn in expired:
                conn.client.close()
