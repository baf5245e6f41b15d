"""The outbox's SQL, written once for SQLite and PostgreSQL.

:class:`SqlStore` implements :class:`~smtpsubmit.outbox.store.Store` over a
DB-API cursor; a subclass supplies transactions (``_tx``), the placeholder
style, the binary column type and the row-lock clause (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``).

Schema versions are listed in ``MIGRATIONS``; ``outbox_meta.schema_version``
records the one applied, and a database newer than this library is refused
rather than misread.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from smtpsubmit.outbox.records import record_group
from smtpsubmit.outbox.store import (
    DEAD_STATES,
    MESSAGE_STATES,
    Claimed,
    ClaimRequest,
    NewMessage,
    Recipient,
    Record,
    Store,
    StoreError,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqlStore"]

MIGRATIONS: list[list[str]] = [
    [  # version 1
        """CREATE TABLE outbox_message (
            id TEXT PRIMARY KEY,
            route TEXT NOT NULL,
            sender TEXT NOT NULL,
            message_id TEXT,
            body {blob} NOT NULL,
            checksum TEXT NOT NULL,
            size BIGINT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            idempotency_key TEXT UNIQUE,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created DOUBLE PRECISION NOT NULL,
            since DOUBLE PRECISION NOT NULL,
            due DOUBLE PRECISION NOT NULL,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION,
            finished DOUBLE PRECISION,
            reason TEXT)""",
        """CREATE TABLE outbox_recipient (
            message TEXT NOT NULL REFERENCES outbox_message (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            address TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            unknowns INTEGER NOT NULL DEFAULT 0,
            resent INTEGER NOT NULL DEFAULT 0,
            retry_at DOUBLE PRECISION,
            reply_code INTEGER,
            reply_text TEXT,
            PRIMARY KEY (message, position))""",
        # Claims walk this index in order and stop at the batch size: independent of depth.
        """CREATE INDEX outbox_message_due ON outbox_message (priority DESC, due)
            WHERE state IN ('queued', 'deferred')""",
        """CREATE INDEX outbox_message_lease ON outbox_message (lease_until)
            WHERE state = 'sending'""",
        "CREATE INDEX outbox_message_state ON outbox_message (state, route)",
        "CREATE INDEX outbox_message_finished ON outbox_message (finished)",
    ],
    [  # version 2: bodies in a table of their own. Every claim, ``sending`` and outcome
        # rewrites its message's row (SQLite: its page into the WAL; PostgreSQL: a new row
        # version): with the body inline that was a page per record, and the disk writes,
        # not SQL, set the worker's pace. ``outbox_message.body`` stays, empty: SQLite
        # before 3.35 cannot drop a column.
        """CREATE TABLE outbox_body (
            message TEXT PRIMARY KEY REFERENCES outbox_message (id) ON DELETE CASCADE,
            body {blob} NOT NULL)""",
        "INSERT INTO outbox_body (message, body) SELECT id, body FROM outbox_message",
        "UPDATE outbox_message SET body = CAST('' AS {blob})",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_PENDING = "state IN ('queued', 'deferred')"

# Enqueue, shared with the asyncio path (smtpsubmit.outbox.aio).
INSERT_MESSAGE = (
    "INSERT INTO outbox_message (id, route, sender, message_id, body, checksum, size,"
    " priority, idempotency_key, state, created, since, due)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)"
    " ON CONFLICT (idempotency_key) DO NOTHING"
)
SELECT_BY_KEY = "SELECT id FROM outbox_message WHERE idempotency_key = ?"
INSERT_BODY = "INSERT INTO outbox_body (message, body) VALUES (?, ?)"
INSERT_RECIPIENT = (
    "INSERT INTO outbox_recipient (message, position, address, state) VALUES (?, ?, ?, 'queued')"
)


def message_params(m: NewMessage) -> list[Any]:
    return [
        m.id,
        m.route,
        m.sender,
        m.message_id,
        b"",  # the body is in outbox_body (schema version 2)
        m.checksum,
        len(m.body),
        m.priority,
        m.idempotency_key,
        m.created,
        m.created,
        m.due,
    ]


def recipient_params(m: NewMessage) -> list[tuple[str, int, str]]:
    return [(m.id, i, address) for i, address in enumerate(m.recipients)]


_MESSAGE_COLUMNS = "m.id, m.route, m.sender, b.body, m.checksum, m.message_id, m.since, m.attempts"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlStore(Store):
    """The store logic over any DB-API cursor (``?`` placeholders in the source)."""

    blob_type = "BLOB"
    lock_clause = ""
    row_lock = ""  # locks rows read to be written in this transaction (PostgreSQL)
    batched_updates = True  # ``UPDATE … FROM (VALUES …)`` (SQLite 3.33+)

    @abc.abstractmethod
    def _tx(self, connection: Any = None) -> contextlib.AbstractContextManager[Cursor]:
        """One write transaction (``connection``: the caller's, left uncommitted)."""

    def _sql(self, sql: str) -> str:
        return sql

    def _run(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def _use_index(self, index: str) -> str:
        """Hook: make the claim walk its partial index (SQLite's planner, without
        statistics, prefers the state index and sorts every waiting row: a claim would
        then cost as much as the queue is deep)."""
        return ""

    def _after_insert(self, cur: Cursor) -> None:
        """Hook: wake idle workers (PostgreSQL NOTIFY)."""

    def _before_claim(self, cur: Cursor) -> None:
        """Set up the claim's transaction (PostgreSQL: how its statements are planned)."""

    def _lock_schema(self, cur: Cursor) -> None:
        """Hook: serialise concurrent migrations (SQLite's BEGIN IMMEDIATE already does)."""

    # ---- schema

    def _version(self, cur: Cursor) -> int:
        self._run(cur, "CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, value TEXT)")
        row = self._run(
            cur, "SELECT value FROM outbox_meta WHERE name = 'schema_version'"
        ).fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> int:
        with self._tx() as cur:
            self._lock_schema(cur)
            version = self._version(cur)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the outbox schema is version {version}, newer than this smtpsubmit "
                    f"understands ({SCHEMA_VERSION}); upgrade smtpsubmit"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    self._run(cur, statement.format(blob=self.blob_type))
            if version == 0:
                self._run(cur, "INSERT INTO outbox_meta VALUES ('schema_version', ?)", ["0"])
            self._run(
                cur,
                "UPDATE outbox_meta SET value = ? WHERE name = 'schema_version'",
                [str(SCHEMA_VERSION)],
            )
        return SCHEMA_VERSION

    # ---- enqueue

    def insert(self, messages: Sequence[NewMessage], connection: Any = None) -> list[str]:
        ids: list[str] = []
        with self._tx(connection) as cur:
            for m in messages:
                ids.append(self._insert_one(cur, m))
            self._after_insert(cur)
        return ids

    def _insert_one(self, cur: Cursor, m: NewMessage) -> str:
        self._run(cur, INSERT_MESSAGE, message_params(m))
        if cur.rowcount == 0:  # the idempotency key exists: the first id, nothing stored
            return str(self._run(cur, SELECT_BY_KEY, [m.idempotency_key]).fetchone()[0])
        self._run(cur, INSERT_BODY, [m.id, m.body])
        cur.executemany(self._sql(INSERT_RECIPIENT), recipient_params(m))
        return m.id

    # ---- workers

    def commit_group(
        self, records: Sequence[Record], claims: Sequence[ClaimRequest]
    ) -> tuple[list[tuple[bool, bool]], list[list[Claimed]]]:
        with self._tx() as cur:
            results = self._record(cur, records) if records else []
            claimed = [self._claim(cur, c.owner, c.limit, c.now, c.lease) for c in claims]
        return results, claimed

    def _record(self, cur: Cursor, records: Sequence[Record]) -> list[tuple[bool, bool]]:
        return record_group(
            self._run,
            cur,
            records,
            row_lock=self.row_lock,
            batched=self.batched_updates,
            sql=self._sql,
        )

    def _claim(
        self, cur: Cursor, owner: str, limit: int, now: float, lease: float
    ) -> list[Claimed]:
        self._before_claim(cur)
        expired = [
            str(r[0])
            for r in self._run(
                cur,
                f"SELECT id FROM outbox_message{self._use_index('outbox_message_lease')}"
                " WHERE state = 'sending' AND lease_until < ?"
                f" ORDER BY lease_until LIMIT ?{self.lock_clause}",
                [now, limit],
            ).fetchall()
        ]
        due = [
            str(r[0])
            for r in self._run(
                cur,
                f"SELECT id FROM outbox_message{self._use_index('outbox_message_due')}"
                f" WHERE {_PENDING} AND due <= ?"
                f" ORDER BY priority DESC, due LIMIT ?{self.lock_clause}",
                [now, limit - len(expired)],
            ).fetchall()
        ]
        ids = expired + due
        if not ids:
            return []
        self._run(
            cur,
            "UPDATE outbox_message SET state = 'sending', lease_owner = ?, lease_until = ?"
            f" WHERE id IN ({_marks(len(ids))})",
            [owner, now + lease, *ids],
        )
        if expired:  # a worker died holding these: whatever it was sending may have arrived
            self._run(
                cur,
                "UPDATE outbox_recipient SET state = 'unknown', unknowns = unknowns + 1,"
                " retry_at = ? WHERE state = 'sending'"
                f" AND message IN ({_marks(len(expired))})",
                [now, *expired],
            )
        return self._load(cur, ids)

    def _load(self, cur: Cursor, ids: list[str]) -> list[Claimed]:
        marks = _marks(len(ids))
        rows = self._run(
            cur,
            f"SELECT {_MESSAGE_COLUMNS} FROM outbox_message m"
            f" JOIN outbox_body b ON b.message = m.id WHERE m.id IN ({marks})",
            ids,
        ).fetchall()
        recipients: dict[str, list[Recipient]] = {i: [] for i in ids}
        for r in self._run(
            cur,
            "SELECT message, position, address, state, attempts, unknowns, retry_at"
            f" FROM outbox_recipient WHERE message IN ({marks}) ORDER BY message, position",
            ids,
        ).fetchall():
            recipients[str(r[0])].append(Recipient(*r[1:]))
        by_id = {
            str(r[0]): Claimed(
                str(r[0]),
                r[1],
                r[2],
                bytes(r[3]),
                r[4],
                r[5],
                float(r[6]),
                int(r[7]),
                recipients[str(r[0])],
            )
            for r in rows
        }
        return [by_id[i] for i in ids if i in by_id]

    def next_due(self) -> float | None:
        with self._tx() as cur:
            row = self._run(cur, f"SELECT MIN(due) FROM outbox_message WHERE {_PENDING}").fetchone()
            lease = self._run(
                cur, "SELECT MIN(lease_until) FROM outbox_message WHERE state = 'sending'"
            ).fetchone()
        times = [float(v) for v in (row[0], lease[0]) if v is not None]
        return min(times) if times else None

    # ---- operations

    def stats(self, now: float) -> dict[str, Any]:
        with self._tx() as cur:
            states: dict[str, int] = dict.fromkeys(MESSAGE_STATES, 0)
            routes: dict[str, dict[str, int]] = {}
            for state, route, count in self._run(
                cur, "SELECT state, route, COUNT(*) FROM outbox_message GROUP BY state, route"
            ).fetchall():
                states[state] = states.get(state, 0) + int(count)
                routes.setdefault(route, {})[state] = int(count)
            oldest = self._run(
                cur,
                "SELECT MIN(created) FROM outbox_message"
                " WHERE state IN ('queued', 'deferred', 'sending')",
            ).fetchone()[0]
            recent = self._run(
                cur,
                "SELECT COUNT(*) FROM outbox_message WHERE finished >= ? AND state = 'sent'",
                [now - 60.0],
            ).fetchone()[0]
            duplicates = self._run(
                cur, "SELECT COALESCE(SUM(resent), 0) FROM outbox_recipient"
            ).fetchone()[0]
        return {
            "states": states,
            "routes": routes,
            "oldest_age": max(0.0, now - float(oldest)) if oldest is not None else 0.0,
            "send_rate": int(recent) / 60.0,
            "possible_duplicates": int(duplicates),
        }

    def list_messages(self, states: Sequence[str] | None, limit: int) -> list[dict[str, Any]]:
        where = f"WHERE state IN ({_marks(len(states))})" if states else ""
        with self._tx() as cur:
            rows = self._run(
                cur,
                "SELECT id, route, message_id, state, attempts, created, due, reason, sender,"
                " (SELECT COUNT(*) FROM outbox_recipient r WHERE r.message = m.id)"
                f" FROM outbox_message m {where} ORDER BY created, id LIMIT ?",
                [*(states or ()), limit],
            ).fetchall()
        return [_message_dict(r) | {"sender": r[8], "recipient_count": int(r[9])} for r in rows]

    def show(self, message: str) -> dict[str, Any] | None:
        with self._tx() as cur:
            row = self._run(
                cur,
                "SELECT id, route, message_id, state, attempts, created, due, reason, sender"
                " FROM outbox_message WHERE id = ?",
                [message],
            ).fetchone()
            if row is None:
                return None
            recipients = self._run(
                cur,
                "SELECT address, state, reply_code, reply_text, attempts, retry_at"
                " FROM outbox_recipient WHERE message = ? ORDER BY position",
                [message],
            ).fetchall()
        return _message_dict(row) | {
            "sender": row[8],
            "recipients": [
                {
                    "address": r[0],
                    "state": r[1],
                    "reply": None if r[2] is None else {"code": int(r[2]), "text": r[3] or ""},
                    "attempts": int(r[4]),
                    "retry_at": r[5],
                }
                for r in recipients
            ],
        }

    def retry(self, message: str, now: float) -> bool:
        """Requeue a dead letter or a deferred message now; sent recipients stay sent."""
        with self._tx() as cur:
            self._run(
                cur,
                "UPDATE outbox_message SET state = 'queued', due = ?, since = ?, reason = NULL,"
                " finished = NULL WHERE id = ?"
                f" AND state IN ('deferred', {_marks(len(DEAD_STATES))})",
                [now, now, message, *DEAD_STATES],
            )
            if cur.rowcount != 1:
                return False
            self._run(
                cur,
                "UPDATE outbox_recipient SET state = 'queued', retry_at = NULL"
                " WHERE message = ? AND state <> 'sent'",
                [message],
            )
        return True

    def cancel(self, message: str, now: float) -> bool:
        """Stop a waiting message; one being sent right now cannot be called back."""
        with self._tx() as cur:
            self._run(
                cur,
                "UPDATE outbox_message SET state = 'cancelled', finished = ?,"
                f" reason = 'cancelled' WHERE id = ? AND {_PENDING}",
                [now, message],
            )
            if cur.rowcount != 1:
                return False
            self._run(
                cur,
                "UPDATE outbox_recipient SET state = 'cancelled', retry_at = NULL"
                " WHERE message = ? AND state IN ('queued', 'deferred', 'unknown')",
                [message],
            )
        return True

    def purge(self, *, sent: bool = False) -> int:
        """Delete dead letters (and, with ``sent``, delivered mail); never anything pending."""
        states = [*DEAD_STATES, *(["sent"] if sent else [])]
        marks = _marks(len(states))
        with self._tx() as cur:
            self._run(
                cur,
                "DELETE FROM outbox_recipient WHERE message IN"
                f" (SELECT id FROM outbox_message WHERE state IN ({marks}))",
                states,
            )
            self._run(
                cur,
                "DELETE FROM outbox_body WHERE message IN"
                f" (SELECT id FROM outbox_message WHERE state IN ({marks}))",
                states,
            )
            self._run(cur, f"DELETE FROM outbox_message WHERE state IN ({marks})", states)
            return max(0, cur.rowcount)


def _message_dict(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": r[0],
        "route": r[1],
        "message_id": r[2],
        "state": r[3],
        "attempts": int(r[4]),
        "created": float(r[5]),
        "retry_at": float(r[6]) if r[3] in ("queued", "deferred") else None,
        "reason": r[7],
    }


class Connections:
    """Each thread's own connection, closed when its thread has ended (checked whenever a
    new one is opened) or on :meth:`close_all`, so thread churn does not leak them."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._open: list[tuple[threading.Thread, Any]] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        return getattr(self._local, "conn", None)

    def add(self, conn: Any) -> Any:
        with self._lock:
            alive = []
            for thread, other in self._open:
                if thread.is_alive():
                    alive.append((thread, other))
                else:
                    _close(other)
            alive.append((threading.current_thread(), conn))
            self._open = alive
        self._local.conn = conn
        return conn

    def close_all(self) -> None:
        with self._lock:
            for _thread, conn in self._open:
                _close(conn)
            self._open = []
        self._local = threading.local()


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


@contextlib.contextmanager
def translate_errors(kinds: tuple[type[BaseException], ...], what: str) -> Iterator[None]:
    """Database exceptions leave the store as :class:`StoreError` (the cause chained)."""
    try:
        yield
    except kinds as exc:
        raise StoreError(f"{what}: {exc}") from exc
