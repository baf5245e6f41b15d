"""Writing a group of worker records in a handful of statements, whatever its size.

A group (:mod:`~smtpsubmit.outbox.commit`) holds the ``sending`` marks and the
outcomes of many messages. Written one row at a time it costs a statement per
row — a round trip each on PostgreSQL and, in SQLite, a release and
re-acquisition of the GIL each, which under a busy worker is what the
committer then waits for. So the group is written as: one ``SELECT`` of the
leases (``FOR UPDATE`` on PostgreSQL, so no claim can take a message over
between the check and the write; SQLite has one writer anyway), then at most
four ``UPDATE … FROM (VALUES …)`` — outcomes of messages, of recipients,
``sending`` of messages, of recipients — each for the whole group (in chunks
that stay under the databases' parameter limits). The SQL is the same for both
databases; SQLite older than 3.33 (no ``UPDATE … FROM``) gets the same
updates row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from smtpsubmit.outbox.store import Begin, Finish, Record

__all__ = ["record_group"]

#: Rows per ``VALUES`` list: 7 parameters each stays under SQLite's 32,766 and
#: PostgreSQL's 65,535 parameters per statement.
CHUNK = 1000

_WAITING = ("queued", "deferred")  # not finished: no ``finished`` time
_TEXT, _INT, _REAL = "CAST(? AS TEXT)", "CAST(? AS INTEGER)", "CAST(? AS DOUBLE PRECISION)"


class _Cursor(Protocol):
    def fetchall(self) -> list[Any]: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...


Run = Callable[[Any, str, Sequence[Any]], _Cursor]


class _Update:
    """One update of the group: ``UPDATE target … FROM (VALUES …) AS v`` joined on the
    first ``keys`` columns, or (``single``) the same update for one row."""

    def __init__(
        self, target: str, columns: list[tuple[str, str]], keys: int, sets: str, single: str
    ) -> None:
        self.target = target
        self.names = [name for name, _ in columns]
        self.row = "(" + ", ".join(kind for _, kind in columns) + ")"
        self.join = " AND ".join(f"{target}.{k} = v.{k}" for k in self.names[:keys])
        self.sets = sets
        self.single = single  # its "?" in column order, the keys last

    def batched(self, n: int) -> str:
        return (
            f"WITH v ({', '.join(self.names)}) AS (VALUES {', '.join([self.row] * n)})"
            f" UPDATE {self.target} SET {self.sets} FROM v WHERE {self.join}"
        )


def _single_order(row: tuple[Any, ...], keys: int) -> tuple[Any, ...]:
    return row[keys:] + row[:keys]


_FINISH_MESSAGES = _Update(
    "outbox_message",
    [("id", _TEXT), ("state", _TEXT), ("due", _REAL), ("reason", _TEXT), ("finished", _REAL)],
    1,
    "state = v.state, due = v.due, reason = v.reason, lease_owner = NULL,"
    " lease_until = NULL, finished = v.finished",
    "UPDATE outbox_message SET state = ?, due = ?, reason = ?, lease_owner = NULL,"
    " lease_until = NULL, finished = ? WHERE id = ?",
)
_FINISH_RECIPIENTS = _Update(
    "outbox_recipient",
    [
        ("message", _TEXT),
        ("position", _INT),
        ("state", _TEXT),
        ("retry_at", _REAL),
        ("reply_code", _INT),
        ("reply_text", _TEXT),
        ("unknown", _INT),
    ],
    2,
    "state = v.state, retry_at = v.retry_at, reply_code = v.reply_code,"
    " reply_text = v.reply_text, unknowns = outbox_recipient.unknowns + v.unknown",
    "UPDATE outbox_recipient SET state = ?, retry_at = ?, reply_code = ?, reply_text = ?,"
    " unknowns = unknowns + ? WHERE message = ? AND position = ?",
)
_BEGIN_MESSAGES = _Update(
    "outbox_message",
    [("id", _TEXT), ("lease_until", _REAL)],
    1,
    "lease_until = v.lease_until, attempts = outbox_message.attempts + 1",
    "UPDATE outbox_message SET lease_until = ?, attempts = attempts + 1 WHERE id = ?",
)
_BEGIN_RECIPIENTS = _Update(
    "outbox_recipient",
    [("message", _TEXT), ("position", _INT)],
    2,
    "state = 'sending', attempts = outbox_recipient.attempts + 1, resent ="
    " outbox_recipient.resent + CASE WHEN outbox_recipient.unknowns > 0 THEN 1 ELSE 0 END",
    "UPDATE outbox_recipient SET state = 'sending', attempts = attempts + 1,"
    " resent = resent + CASE WHEN unknowns > 0 THEN 1 ELSE 0 END"
    " WHERE message = ? AND position = ?",
)


def record_group(
    run: Run,
    cur: Any,
    records: Sequence[Record],
    *,
    row_lock: str,
    batched: bool,
    sql: Callable[[str], str],
) -> list[tuple[bool, bool]]:
    """Write ``records`` in ``cur``'s transaction; ``(finished, began)`` for each, False
    where the message's lease is no longer its writer's (nothing of it is written)."""
    ids = sorted(
        {f.message for f, _ in records if f is not None}
        | {b.message for _, b in records if b is not None}
    )
    if not ids:
        return [(False, False)] * len(records)
    held: dict[str, tuple[Any, Any]] = {}
    for start in range(0, len(ids), CHUNK):
        part = ids[start : start + CHUNK]
        rows = run(
            cur,
            "SELECT id, lease_owner, state FROM outbox_message"
            f" WHERE id IN ({', '.join('?' * len(part))}) ORDER BY id{row_lock}",
            part,
        ).fetchall()
        held.update({str(r[0]): (r[1], r[2]) for r in rows})
    results: list[tuple[bool, bool]] = []
    finishes: list[Finish] = []
    begins: list[Begin] = []
    for finish, begin in records:
        finished = finish is not None and held.get(finish.message, (None, None))[0] == finish.owner
        began = begin is not None and held.get(begin.message) == (begin.owner, "sending")
        if finished and finish is not None:
            finishes.append(finish)
        if began and begin is not None:
            begins.append(begin)
        results.append((finished, began))

    def write(update: _Update, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if not batched:
            keys = update.join.count(" = ")
            cur.executemany(sql(update.single), [_single_order(r, keys) for r in rows])
            return
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            run(cur, update.batched(len(part)), [v for row in part for v in row])

    write(
        _FINISH_MESSAGES,
        [
            (
                f.message,
                f.state,
                f.due,
                f.reason,
                None if f.state in ("queued", "deferred") else f.now,
            )
            for f in finishes
        ],
    )
    write(
        _FINISH_RECIPIENTS,
        [
            (
                f.message,
                u.position,
                u.state,
                u.retry_at,
                u.reply_code,
                u.reply_text,
                int(u.unknown),
            )
            for f in finishes
            for u in f.updates
        ],
    )
    write(_BEGIN_MESSAGES, [(b.message, b.now + b.lease) for b in begins])
    write(_BEGIN_RECIPIENTS, [(b.message, p) for b in begins for p in b.positions])
    return results


# PostgreSQL writes a whole group in one statement: the lease checks are the updates' own
# WHERE (a row a claimer took over meanwhile is re-checked at its newest version, so a lost
# lease writes nothing), recipients are updated only for the messages those updates
# returned, and the arrays keep the text fixed, so psycopg prepares it once.
POSTGRES_RECORD = """WITH
fv AS (SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::float8[], ?::text[],
    ?::float8[]) AS v (id, owner, state, due, reason, finished)),
bv AS (SELECT * FROM unnest(?::text[], ?::text[], ?::float8[]) AS v (id, owner, lease_until)),
fm AS (UPDATE outbox_message m SET state = fv.state, due = fv.due, reason = fv.reason,
    lease_owner = NULL, lease_until = NULL, finished = fv.finished
    FROM fv WHERE m.id = fv.id AND m.lease_owner = fv.owner RETURNING m.id),
bm AS (UPDATE outbox_message m SET lease_until = bv.lease_until, attempts = m.attempts + 1
    FROM bv WHERE m.id = bv.id AND m.lease_owner = bv.owner AND m.state = 'sending'
    RETURNING m.id),
fr AS (UPDATE outbox_recipient r SET state = v.state, retry_at = v.retry_at,
    reply_code = v.reply_code, reply_text = v.reply_text, unknowns = r.unknowns + v.unknown
    FROM unnest(?::text[], ?::int[], ?::text[], ?::float8[], ?::int[], ?::text[], ?::int[])
        AS v (message, position, state, retry_at, reply_code, reply_text, unknown)
    WHERE r.message = v.message AND r.position = v.position
        AND v.message IN (SELECT id FROM fm)),
br AS (UPDATE outbox_recipient r SET state = 'sending', attempts = r.attempts + 1,
    resent = r.resent + CASE WHEN r.unknowns > 0 THEN 1 ELSE 0 END
    FROM unnest(?::text[], ?::int[]) AS v (message, position)
    WHERE r.message = v.message AND r.position = v.position
        AND v.message IN (SELECT id FROM bm))
SELECT 'f', id FROM fm UNION ALL SELECT 'b', id FROM bm"""


def postgres_params(records: Sequence[Record]) -> list[str]:
    """The arrays :data:`POSTGRES_RECORD` takes, column by column, as array literals.

    Written here rather than by psycopg, which dumps a list element by element in Python
    and looks for its element type on every call: with eighteen arrays per group that was
    most of a busy worker's time. Every element is quoted (``"``, ``\\`` escaped) or
    ``NULL``; floats in ``repr``, which PostgreSQL reads back to the same double."""
    finishes = [f for f, _ in records if f is not None]
    begins = [b for _, b in records if b is not None]
    updates = [(f.message, u) for f in finishes for u in f.updates]
    columns: list[list[Any]] = [
        [f.message for f in finishes],
        [f.owner for f in finishes],
        [f.state for f in finishes],
        [f.due for f in finishes],
        [f.reason for f in finishes],
        [None if f.state in _WAITING else f.now for f in finishes],
        [b.message for b in begins],
        [b.owner for b in begins],
        [b.now + b.lease for b in begins],
        [m for m, _ in updates],
        [u.position for _, u in updates],
        [u.state for _, u in updates],
        [u.retry_at for _, u in updates],
        [u.reply_code for _, u in updates],
        [u.reply_text for _, u in updates],
        [int(u.unknown) for _, u in updates],
        [b.message for b in begins for _ in b.positions],
        [p for b in begins for p in b.positions],
    ]
    return [_array_literal(column) for column in columns]


def _array_literal(values: list[Any]) -> str:
    return "{" + ",".join([_element(v) for v in values]) + "}"


def _element(value: Any) -> str:
    kind = type(value)
    if kind is str:
        text: str = value
        if '"' in text or "\\" in text:
            text = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + text + '"'
    if value is None:
        return "NULL"
    if kind is float:
        return repr(value)
    return str(int(value))  # int (bool as 0/1)
