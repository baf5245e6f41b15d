"""AsyncOutbox and aenqueue: the transactional outbox on psycopg's async connection, and the
worker driven from asyncio (signals, cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from smtpsubmit.outbox import AsyncOutbox, Outbox
from tests.outbox_helpers import message, route, serve, subjects
from tests.servers.aiosmtpd_server import AiosmtpdServer


@pytest.fixture
def smtp() -> Iterator[AiosmtpdServer]:
    yield from serve()


def test_aenqueue_in_the_callers_async_transaction(postgres_url: str, smtp: AiosmtpdServer) -> None:
    async def main() -> None:
        box = AsyncOutbox(postgres_url, routes={"default": route(smtp)})
        async with await psycopg.AsyncConnection.connect(postgres_url) as app:
            await app.execute("CREATE TABLE orders (id INTEGER)")
            await app.commit()
            await app.execute("INSERT INTO orders VALUES (1)")
            await box.enqueue(message(1), connection=app)
            await app.rollback()
            await app.execute("INSERT INTO orders VALUES (2)")
            first = await box.enqueue(message(2), connection=app, idempotency_key="order-2")
            again = await box.outbox.aenqueue(message(3), connection=app, idempotency_key="order-2")
            assert first == again
            await app.commit()
        await box.run(stop_when_idle=True)
        assert (await box.stats())["states"]["sent"] == 1
        await box.close()

    asyncio.run(main())
    assert subjects(smtp) == ["outbox message 2"]


def test_async_outbox_on_sqlite(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    async def main() -> list[str]:
        async with AsyncOutbox(
            f"sqlite:///{tmp_path}/o.db", routes={"default": route(smtp)}
        ) as box:
            ids = [await box.enqueue(message(1))]
            ids += await box.enqueue_many([message(2), message(3)])
            await box.run(concurrency=2, stop_when_idle=True)
            shown = await box.show(ids[0])
            assert shown is not None and shown["state"] == "sent"
            return ids

    ids = asyncio.run(main())
    assert len(ids) == 3
    assert sorted(subjects(smtp)) == [f"outbox message {n}" for n in (1, 2, 3)]


def test_cancelling_run_stops_the_worker(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    url = f"sqlite:///{tmp_path}/o.db"

    async def main() -> None:
        box = AsyncOutbox(url, routes={"default": route(smtp)})
        task = asyncio.create_task(box.run())
        await asyncio.sleep(0.3)
        await box.enqueue(message(1))
        for _ in range(100):
            if smtp.messages:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await box.close()

    asyncio.run(main())
    assert subjects(smtp) == ["outbox message 1"]
    with Outbox(url) as box:
        assert box.stats()["states"]["sent"] == 1
