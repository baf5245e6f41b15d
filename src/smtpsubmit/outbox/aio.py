"""``AsyncOutbox``: the outbox from asyncio code.

Enqueueing inside the caller's own ``psycopg.AsyncConnection`` transaction
runs on that connection, awaiting it (the transactional outbox for async web
applications). Everything else — enqueue on the outbox's own connections,
the operations, and the worker — runs the blocking implementation in a
thread, so one implementation decides and records, and the event loop is
never blocked. ``run()`` stops on SIGTERM/SIGINT (when the loop can take
signal handlers) and on cancellation, finishing the messages in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from smtpsubmit.message import Message
from smtpsubmit.outbox.ainsert import ainsert
from smtpsubmit.outbox.outbox import Outbox

__all__ = ["AsyncOutbox", "ainsert"]


class AsyncOutbox:
    """The asyncio twin of :class:`~smtpsubmit.outbox.Outbox` (same arguments)."""

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        self.outbox = Outbox(url, **kwargs)

    async def enqueue(
        self,
        message: Message | bytes,
        *,
        route: str = "default",
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        not_before: datetime | float | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> str:
        """Like :meth:`Outbox.enqueue`; ``connection`` may be a ``psycopg.AsyncConnection``."""
        return await self.outbox.aenqueue(
            message,
            route=route,
            sender=sender,
            recipients=recipients,
            not_before=not_before,
            priority=priority,
            idempotency_key=idempotency_key,
            connection=connection,
        )

    aenqueue = enqueue

    async def enqueue_many(self, messages: Iterable[Message | bytes], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(
            functools.partial(self.outbox.enqueue_many, messages, **kwargs)
        )

    async def stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.outbox.stats)

    async def show(self, message: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.outbox.show, message)

    async def retry(self, message: str) -> bool:
        return await asyncio.to_thread(self.outbox.retry, message)

    async def cancel(self, message: str) -> bool:
        return await asyncio.to_thread(self.outbox.cancel, message)

    async def purge(self, *, sent: bool = False) -> int:
        return await asyncio.to_thread(functools.partial(self.outbox.purge, sent=sent))

    async def run(
        self, concurrency: int = 4, *, stop_when_idle: bool = False, batch_size: int = 32
    ) -> None:
        """Deliver until SIGTERM, cancellation or (``stop_when_idle``) nothing is due."""
        from smtpsubmit.outbox.worker import Worker

        worker = Worker(self.outbox, concurrency=concurrency, batch_size=batch_size)
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, worker.stop)
                installed.append(sig)
        task = asyncio.ensure_future(
            asyncio.to_thread(functools.partial(worker.run, stop_when_idle=stop_when_idle))
        )
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            worker.stop()  # finish what is in flight, then let the cancellation through
            await task
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def close(self) -> None:
        await asyncio.to_thread(self.outbox.close)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
