"""Enqueue inside the caller's asyncio transaction (psycopg's async connection).

Its own module so that :mod:`smtpsubmit.outbox.outbox` can reach it lazily
without importing the asyncio front end that itself imports the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from smtpsubmit.outbox.sql import (
    INSERT_BODY,
    INSERT_MESSAGE,
    INSERT_RECIPIENT,
    SELECT_BY_KEY,
    message_params,
    recipient_params,
)
from smtpsubmit.outbox.store import NewMessage

if TYPE_CHECKING:
    from smtpsubmit.outbox.outbox import Outbox

__all__ = ["ainsert"]


async def ainsert(outbox: Outbox, items: Sequence[NewMessage], connection: Any) -> list[str]:
    """Insert into the caller's transaction: psycopg's async connection, awaited; a sqlite3
    connection (no network wait) directly."""
    from smtpsubmit.outbox.postgres import CHANNEL, PostgresStore

    store = outbox.store
    if not (isinstance(store, PostgresStore) and isinstance(connection, store._pg.AsyncConnection)):
        return store.insert(items, connection)
    ids: list[str] = []
    async with connection.cursor() as cur:
        for m in items:
            await cur.execute(store._sql(INSERT_MESSAGE), message_params(m))
            if cur.rowcount == 0:
                await cur.execute(store._sql(SELECT_BY_KEY), [m.idempotency_key])
                row = await cur.fetchone()
                ids.append(str(row[0]))
                continue
            await cur.execute(store._sql(INSERT_BODY), [m.id, m.body])
            await cur.executemany(store._sql(INSERT_RECIPIENT), recipient_params(m))
            ids.append(m.id)
        await cur.execute(f"NOTIFY {CHANNEL}")
    return ids
