"""``AsyncPool``: the asyncio twin of :class:`~smtpsubmit.Pool`, over
:class:`~smtpsubmit.AsyncClient` connections, safe to share between tasks of one
event loop.

Same rules (:mod:`smtpsubmit.pool._core`), same arguments, same results; it
waits on an ``asyncio.Condition`` and ``send_many`` runs one task per
connection it may use. ``send_iter`` runs the same tasks while the caller
takes the outcomes as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sized
from types import TracebackType
from typing import Any

from smtpsubmit.client import AsyncClient
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
    streamable,
)
from smtpsubmit.ratelimit import RateLimit, is_rate_refusal
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Server

__all__ = ["AsyncPool"]

log = logging.getLogger("smtpsubmit")


class AsyncPool:
    """Up to ``max_connections`` reused asyncio connections to one server.

    ``async with AsyncPool(server) as pool: await pool.send(message)``; see
    :class:`~smtpsubmit.Pool` for the rules, which are the same.
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
        self._slots: Slots[AsyncClient] = Slots(max_connections, idle_timeout)
        self._free: asyncio.Condition | None = None  # made on first use, inside the loop
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_wake: asyncio.Event | None = None

    # -- public API ---------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, message: Any, **envelope: Any) -> SubmitResult:
        """Send one message on a pooled connection; raises like ``AsyncClient.send``."""
        jobs = Jobs.single(normalise(message, envelope))
        await self._work(jobs)
        outcome = jobs.outcomes()[0]
        if isinstance(outcome, SubmitResult):
            return outcome
        raise outcome

    async def send_many(self, messages: Iterable[object]) -> list[Outcome]:
        """Send every message, spread over the connections; results in input order."""
        size = len(messages) if isinstance(messages, Sized) else self.config.max_connections
        workers = max(1, min(self.config.max_connections, size))
        jobs = Jobs(messages, workers)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(self._work(jobs))
        except BaseExceptionGroup as failed:  # not a server fault: raise it as it was
            raise failed.exceptions[0] from None
        return jobs.outcomes()

    async def send_iter(self, messages: Iterable[object]) -> AsyncIterator[Outcome]:
        """``send_many`` as a stream; see :meth:`Pool.send_iter` for the rules.

        Stopping early: leave the loop inside ``contextlib.aclosing(pool.send_iter(…))``
        (or call ``aclose()``) and the messages in flight finish, nothing more
        starts and the tasks end before ``aclose()`` returns. Cancelling the
        caller cancels the tasks (their messages in flight end as a lost
        connection does).
        """
        size = len(messages) if isinstance(messages, Sized) else self.config.max_connections
        workers = max(1, min(self.config.max_connections, size))
        jobs = Jobs(messages, workers, ahead=2 * workers * BATCH)
        call = asyncio.Condition()
        errors: list[BaseException] = []

        async def run() -> None:
            try:
                await self._work(jobs, call)
            except Exception as exc:
                errors.append(exc)
                jobs.stop()
                async with call:
                    call.notify_all()

        tasks: list[asyncio.Task[None]] = []
        pending: deque[Outcome] = deque()
        try:
            tasks = [asyncio.create_task(run()) for _ in range(workers)]
            while True:
                async with call:
                    await call.wait_for(lambda: bool(jobs.ready) or not jobs.active or bool(errors))
                    if errors:
                        raise errors[0]
                    pending.extend(jobs.pop_ready())
                    call.notify_all()  # room for the workers
                if not pending and not jobs.active:
                    break
                while pending:
                    yield pending.popleft()
            await asyncio.gather(*tasks)
            if errors:
                raise errors[0]
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            jobs.stop()
            async with call:
                call.notify_all()
            if self._free is not None:
                async with self._free:
                    self._free.notify_all()  # a task waiting for a connection gives up
            await asyncio.gather(*tasks, return_exceptions=True)
            decided, unsent = jobs.unreported()
            if decided + len(pending) or unsent:
                log.info(
                    "send_iter stopped early: %d message(s) sent whose outcome was not "
                    "taken, %d drawn from the input and never sent",
                    decided + len(pending),
                    unsent,
                )

    async def close(self) -> None:
        """Close the idle connections now and the busy ones when they come back."""
        idle = self._slots.close()
        if self._free is not None:
            async with self._free:
                self._free.notify_all()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for conn in idle:
            await conn.client.close()

    def __repr__(self) -> str:
        return describe("AsyncPool", self.server, self._slots)

    # -- one worker ---------------------------------------------------------------------

    async def _work(self, jobs: Jobs, call: asyncio.Condition | None = None) -> None:
        """Send batches until none is left; ``call`` (``send_iter``) is notified whenever
        outcomes are ready, and waited on while the caller has not made room."""
        try:
            await self._work_loop(jobs, call)
        finally:
            jobs.active -= 1
            if call is not None:
                async with call:
                    call.notify_all()

    async def _work_loop(self, jobs: Jobs, call: asyncio.Condition | None) -> None:
        connect_refusals = 0

        async def report(job: Job, outcome: Outcome) -> None:
            """Settle each message as its outcome comes (send_iter yields it now)."""
            settle(jobs, [job], [outcome], self._limit, self.config.rate_retries)
            await _notify(call)

        while True:
            if not jobs.queued():
                if jobs.exhausted() or call is None:
                    return
                async with call:  # send_iter: wait until the caller takes outcomes
                    await call.wait_for(lambda: jobs.queued() or jobs.exhausted())
                continue
            attempt_at = self._limit.now()
            try:
                conn = await self._checkout(jobs.wants_fresh(), jobs)
            except PoolTimeout as exc:
                if jobs.active == 1:  # the last worker: nobody else will send the rest
                    await _fail_rest(jobs, call, exc)
                return
            except SmtpError as exc:  # could not connect
                if is_rate_refusal(exc.reply) and connect_refusals < self.config.rate_retries:
                    connect_refusals += 1
                    self._limit.slow_down(attempt_at)
                    continue
                for job in jobs.take(1, fresh=True):
                    jobs.finish(job, exc)
                continue
            if conn is None:  # the call stopped while waiting for a connection
                return
            connect_refusals = 0
            batch = jobs.take(
                min(BATCH, self.config.max_messages_per_connection - conn.sent), conn.fresh
            )
            if not batch:
                await self._checkin(conn)
                continue
            try:
                done = await self._send_batch(conn, batch, jobs, report)
            except BaseException:
                conn.retire = True
                await self._checkin(conn)
                raise
            await self._checkin(conn)
            for job in batch[done:]:  # never tried: queued again
                jobs.requeue(job)
            await _notify(call)

    async def _send_batch(
        self,
        conn: Conn[AsyncClient],
        batch: list[Job],
        jobs: Jobs,
        report: Callable[[Job, Outcome], Awaitable[None]],
    ) -> int:
        """Send ``batch`` on ``conn`` (the one place that talks to the client).

        As :meth:`Pool._send_batch`: runs of messages stream through one
        ``AsyncClient.send_many``, each message after its own rate token.
        """
        client = conn.client
        done = 0
        while done < len(batch) and not conn.retire and client.is_connected and not jobs.stopped:
            job = batch[done]
            if not job.prepaid:
                job.grant = await self._limit._aacquire_grant(self._cost(job))
                job.granted_at = job.grant.at
                if jobs.stopped:  # stopped during the wait: its token goes unused
                    break
            if streamable(job.item) is None or len(batch) == 1:
                await report(job, await self._send_one(conn, job))
                done += 1
                continue
            feed = hand_over(
                conn,
                batch[done:],
                self._limit,
                lambda: session_alive(client) and not jobs.stopped,
            )
            for outcome in await client.send_many(feed):
                retire_after(conn, outcome)
                await report(batch[done], outcome)
                done += 1
            if left_unclean(client):
                try:
                    await client.reset()
                except SmtpError:
                    conn.retire = True
        return done

    async def _send_one(self, conn: Conn[AsyncClient], job: Job) -> Outcome:
        conn.sent += 1
        conn.fresh = False
        try:
            return await conn.client.send(job.item.message, **job.item.options)
        except (SmtpError, MessageError) as exc:
            retire_after(conn, exc)
            return exc

    def _cost(self, job: Job) -> int:
        return job.item.recipient_count() if self._limit.recipients is not None else 1

    # -- connections --------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._free is None:
            self._free = asyncio.Condition()
        return self._free

    async def _checkout(self, fresh: bool, jobs: Jobs | None = None) -> Conn[AsyncClient] | None:
        """A connection, or None once ``jobs`` stopped while waiting for one."""
        deadline = time.monotonic() + self.config.acquire_timeout
        to_close: list[Conn[AsyncClient]] = []
        free = self._condition()
        try:
            async with free:
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
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(deadline - now):
                                await free.wait()
                    finally:
                        self._slots.waiting -= 1
        finally:
            for old in to_close:
                await old.client.close()
        if isinstance(got, Conn):
            return got
        return await self._open()

    async def _open(self) -> Conn[AsyncClient]:
        try:
            await self._limit.aacquire_connection()
            client = AsyncClient(self.server)
            await client.connect()
        except BaseException:
            self._slots.failed_open()
            await self._notify()
            raise
        return Conn(client)

    async def _notify(self) -> None:
        free = self._condition()
        async with free:
            free.notify()

    async def _checkin(self, conn: Conn[AsyncClient]) -> None:
        reusable = keep(conn, conn.client.is_connected, self.config.max_messages_per_connection)
        was_empty = not self._slots.idle
        kept = self._slots.checkin(conn, time.monotonic(), reusable)
        await self._notify()
        if kept and was_empty:
            self._start_reaper()
        if not kept:
            await conn.client.close()

    def _start_reaper(self) -> None:
        """One task per pool closes connections idle for ``idle_timeout``."""
        if self._reaper_wake is None:
            self._reaper_wake = asyncio.Event()
        self._reaper_wake.set()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        wake = self._reaper_wake or asyncio.Event()
        while not self._slots.closed:
            expiry = self._slots.next_expiry()
            now = time.monotonic()
            if expiry is None or expiry > now:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if expiry is None else expiry - now):
                        await wake.wait()
                continue
            for conn in self._slots.expire(now):
                await conn.client.close()
            await self._notify()


async def _notify(call: asyncio.Condition | None) -> None:
    """Wake ``send_iter``'s caller and workers (outcomes ready, or room)."""
    if call is not None:
        async with call:
            call.notify_all()


async def _fail_rest(jobs: Jobs, call: asyncio.Condition | None, error: PoolTimeout) -> None:
    """The last worker gave up: fail the rest, as fast as the caller makes room."""
    while not jobs.fail_rest(error):
        if call is None:  # pragma: no cover - without a bound everything fails at once
            break
        async with call:
            call.notify_all()
            await call.wait_for(lambda: not jobs.full() or jobs.exhausted())
    await _notify(call)
