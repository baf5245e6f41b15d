"""The outbox store for many workers on many machines: PostgreSQL through psycopg 3.

Claims take rows with ``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent
workers never block on, or double-claim, the same message; a lease
(``lease_until``) lets another worker take over the mail of one that died.
Enqueue sends ``NOTIFY smtpsubmit_outbox`` in the same transaction, so idle
workers (``LISTEN``) wake the moment the row commits, not at the next poll.

Each thread uses its own connection; the password of the database URL is
never shown in an error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from smtpsubmit.outbox.records import POSTGRES_RECORD, postgres_params
from smtpsubmit.outbox.sql import Connections, Cursor, SqlStore, translate_errors
from smtpsubmit.outbox.store import Claimed, ClaimRequest, Record, StoreError

__all__ = ["CHANNEL", "PostgresStore", "redact_url"]

CHANNEL = "smtpsubmit_outbox"

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the installed extras
    psycopg = None  # type: ignore[assignment]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _require_psycopg() -> Any:
    if psycopg is None:
        raise StoreError("a PostgreSQL outbox needs psycopg 3: pip install 'smtpsubmit[postgres]'")
    return psycopg


class PostgresStore(SqlStore):
    """An outbox in a PostgreSQL database shared by any number of workers."""

    blob_type = "BYTEA"
    lock_clause = " FOR UPDATE SKIP LOCKED"
    poll_interval = 30.0  # NOTIFY wakes idle workers; this is only a safety net

    def __init__(self, url: str) -> None:
        self._pg = _require_psycopg()
        self.url = url
        self._where = redact_url(url)
        self._connections = Connections()
        self._listeners = Connections()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _connect(self) -> Any:
        with translate_errors((self._pg.Error,), f"cannot connect to the outbox {self._where}"):
            return self._pg.connect(self.url, autocommit=True)

    def _connection(self) -> Any:
        conn = self._connections.get()
        if conn is None or conn.closed:
            conn = self._connections.add(self._connect())
        return conn

    @contextlib.contextmanager
    def _tx(self, connection: Any = None) -> Iterator[Cursor]:
        if connection is not None:
            if not isinstance(connection, self._pg.Connection):
                raise TypeError("a PostgreSQL outbox needs a psycopg.Connection as connection=")
            with translate_errors((self._pg.Error,), "cannot write to the outbox"):
                yield connection.cursor()
            return
        where = f"outbox {self._where}"
        with translate_errors((self._pg.Error,), where), contextlib.ExitStack() as stack:
            yield self._open_transaction(stack).cursor()

    def _open_transaction(self, stack: contextlib.ExitStack) -> Any:
        """Open a transaction; a connection found dead at BEGIN (the server restarted, an
        administrator cut it) is replaced once — nothing of the transaction ran yet."""
        conn = self._connection()
        try:
            stack.enter_context(conn.transaction())
        except self._pg.OperationalError:
            if not conn.closed:
                raise
            conn = self._connection()  # a new one: the dead one is closed
            stack.enter_context(conn.transaction())
        return conn

    def commit_group(
        self, records: Sequence[Record], claims: Sequence[ClaimRequest]
    ) -> tuple[list[tuple[bool, bool]], list[list[Claimed]]]:
        """Records alone are one statement, so one round trip: no ``BEGIN``/``COMMIT``
        around it (the connection is in autocommit; the statement is its transaction).
        A group with claims is an explicit transaction, whose ``BEGIN`` also replaces a
        connection found dead — as one is after idling, for a worker's first write
        after an idle spell is always a claim."""
        if claims or not records:
            return super().commit_group(records, claims)
        with translate_errors((self._pg.Error,), f"outbox {self._where}"):
            cur = self._connection().execute(self._sql(POSTGRES_RECORD), postgres_params(records))
            return self._results(records, cur.fetchall()), []

    def _record(self, cur: Cursor, records: Sequence[Record]) -> list[tuple[bool, bool]]:
        """The whole group in one statement (:data:`~.records.POSTGRES_RECORD`)."""
        rows = self._run(cur, POSTGRES_RECORD, postgres_params(records)).fetchall()
        return self._results(records, rows)

    @staticmethod
    def _results(records: Sequence[Record], rows: list[Any]) -> list[tuple[bool, bool]]:
        finished = {str(i) for kind, i in rows if kind == "f"}
        began = {str(i) for kind, i in rows if kind == "b"}
        return [
            (f is not None and f.message in finished, b is not None and b.message in began)
            for f, b in records
        ]

    def _before_claim(self, cur: Cursor) -> None:
        # psycopg prepares a statement run five times, and PostgreSQL may then plan it
        # once for any parameters: for the claim (``due <= $1 … LIMIT $2``) that plan
        # sorts every waiting row, 40 ms a claim with 100,000 waiting instead of 0.1. So
        # claims are planned for their parameters — and only claims: the group write's
        # one statement keeps its generic plan, planning it each time cost as much as
        # running it.
        cur.execute("SET LOCAL plan_cache_mode = force_custom_plan")

    def _lock_schema(self, cur: Cursor) -> None:
        # Two workers starting together must not both create the tables.
        cur.execute("SELECT pg_advisory_xact_lock(7104316485)")

    def _after_insert(self, cur: Cursor) -> None:
        cur.execute(f"NOTIFY {CHANNEL}")

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Sleep until an enqueue commits (NOTIFY), ``timeout`` passes or ``stop`` is set."""
        listener = self._listeners.get()
        if listener is None or listener.closed:
            listener = self._listeners.add(self._connect())
            with translate_errors((self._pg.Error,), f"outbox {self._where}"):
                listener.execute(f"LISTEN {CHANNEL}")
        deadline = time.monotonic() + timeout
        with translate_errors((self._pg.Error,), f"outbox {self._where}"):
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                    return

    def close(self) -> None:
        self._connections.close_all()
        self._listeners.close_all()
