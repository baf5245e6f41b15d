"""Operating an outbox: cancel, retry, purge, metrics, bad input and broken databases
(Q8, Q9), on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smtpsubmit import Message
from smtpsubmit.outbox import Outbox, StoreError
from smtpsubmit.outbox.records import _array_literal
from smtpsubmit.outbox.sql import MIGRATIONS, SCHEMA_VERSION
from smtpsubmit.outbox.state import checksum
from tests.outbox_helpers import Clock, ScriptedHandler, message, route, subjects
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.test_outbox import clock, handler, outbox, outbox_url, smtp, states
from tests.test_readme import readme_server

__all__ = ["clock", "handler", "outbox", "outbox_url", "readme_server", "smtp"]


def test_cancel_retry_and_purge(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler
) -> None:
    handler.data = ["554 5.7.1 no"]
    bounced = outbox.enqueue(message(1))
    outbox.run(stop_when_idle=True)
    waiting = outbox.enqueue(message(2), not_before=outbox.clock() + 3600)
    cancelled = outbox.enqueue(message(3), not_before=outbox.clock() + 3600)
    assert outbox.cancel(cancelled) is True
    assert outbox.cancel(bounced) is False  # only waiting mail can be cancelled
    assert states(outbox, cancelled) == {"rcpt@example.org": "cancelled"}
    assert outbox.retry(bounced) is True
    outbox.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    assert outbox.retry(bounced) is False  # sent: nothing to retry
    assert outbox.purge() == 1  # the cancelled one; never the waiting one
    assert outbox.show(cancelled) is None
    assert (outbox.show(waiting) or {})["state"] == "queued"
    assert outbox.purge(sent=True) == 1
    assert outbox.show(bounced) is None
    assert [m["id"] for m in outbox.list_messages()] == [waiting]


def test_read_only_database_refuses_enqueue(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    """Q8: a read-only outbox raises at enqueue; what was durable stays."""
    url = f"sqlite:///{tmp_path}/ro.db"
    writer = Outbox(url, routes={"default": route(smtp)})
    kept = writer.enqueue(message(1))
    reader = Outbox(url + "?mode=ro")
    with pytest.raises(StoreError, match="readonly"):
        reader.enqueue(message(2))
    assert [m["id"] for m in reader.list_messages()] == [kept]
    writer.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    reader.close()
    writer.close()


def test_full_disk_at_enqueue_raises_and_loses_nothing(
    tmp_path: Path, smtp: AiosmtpdServer
) -> None:
    """Q8: SQLITE_FULL (the database may not grow) → StoreError, earlier mail intact."""
    box = Outbox(f"sqlite:///{tmp_path}/full.db", routes={"default": route(smtp)})
    kept = box.enqueue(message(1))
    conn = box.store._connection()  # type: ignore[attr-defined]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    big = Message(sender="a@example.org", to="b@example.org", text="x" * 200_000)
    with pytest.raises(StoreError, match="full"):
        box.enqueue(big)
    assert [m["id"] for m in box.list_messages()] == [kept]
    box.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    box.close()


def test_a_corrupt_row_is_quarantined_and_the_worker_goes_on(
    outbox_url: str, outbox: Outbox, smtp: AiosmtpdServer
) -> None:
    """Q9: a body that no longer matches its checksum becomes a dead letter with a reason."""
    bad = outbox.enqueue(message(1))
    outbox.enqueue(message(2))
    if outbox_url.startswith("sqlite"):
        with sqlite3.connect(outbox_url.removeprefix("sqlite://")) as conn:
            conn.execute("UPDATE outbox_body SET body = X'00' WHERE message = ?", (bad,))
    else:
        with psycopg.connect(outbox_url) as conn:
            conn.execute("UPDATE outbox_body SET body = '\\x00' WHERE message = %s", (bad,))
    outbox.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 2"]
    shown = outbox.show(bad)
    assert shown is not None
    assert shown["state"] == "bounced"
    assert "checksum" in shown["reason"]


def test_bad_urls_and_routes_are_clear_errors(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    with pytest.raises(StoreError, match="unknown outbox URL scheme 'mysql'"):
        Outbox("mysql://localhost/mail")
    with pytest.raises(StoreError, match="no path"):
        Outbox("sqlite://")
    (tmp_path / "adir").mkdir()
    with pytest.raises(StoreError, match="adir"):
        Outbox(f"sqlite:///{tmp_path}/adir")
    box = Outbox(f"sqlite:///{tmp_path}/o.db", routes={"default": route(smtp)})
    with pytest.raises(ValueError, match="no route 'bulk'"):
        box.enqueue(message(1), route="bulk")
    with pytest.raises(TypeError, match="route 'x' must be a Server, DIRECT or an account name"):
        Outbox(f"sqlite:///{tmp_path}/o.db", routes={"x": 25})  # type: ignore[dict-item]
    box.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    Outbox(url).close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        conn.execute("UPDATE outbox_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="version 99, newer"):
        Outbox(url)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_version_1_outbox_is_migrated_and_its_mail_sent_unchanged(
    store: str, tmp_path: Path, request: pytest.FixtureRequest, smtp: AiosmtpdServer
) -> None:
    """Schema 2 moved the bodies out of ``outbox_message``: a queue written by version 1
    (bodies inline) is migrated on opening and sends the same bytes."""
    if store == "sqlite":
        url = f"sqlite:///{tmp_path}/v1.db"
        conn: Any = sqlite3.connect(tmp_path / "v1.db")
        mark = "?"
    else:
        url = request.getfixturevalue("postgres_url")
        conn = psycopg.connect(url)
        mark = "%s"
    blob = "BLOB" if store == "sqlite" else "BYTEA"
    with conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement.format(blob=blob))
        conn.execute("CREATE TABLE outbox_meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO outbox_meta VALUES ('schema_version', '1')")
        body = message(7).as_bytes()
        conn.execute(
            "INSERT INTO outbox_message (id, route, sender, body, checksum, size, state,"
            f" created, since, due) VALUES ('m1', 'default', 'a@example.org', {mark}, {mark},"
            f" {mark}, 'queued', 0, 0, 0)",
            (body, checksum(body), len(body)),
        )
        conn.execute(
            "INSERT INTO outbox_recipient (message, position, address, state)"
            " VALUES ('m1', 0, 'b@example.org', 'queued')"
        )
    conn.close()
    box = Outbox(url, routes={"default": route(smtp)})
    box.run(stop_when_idle=True)
    assert [m.original_content for m in smtp.messages] == [body]
    assert (box.show("m1") or {})["state"] == "sent"
    assert box.purge(sent=True) == 1  # the body goes with its message
    box.close()
    with sqlite3.connect(tmp_path / "v1.db") if store == "sqlite" else psycopg.connect(url) as c:
        version = c.execute("SELECT value FROM outbox_meta WHERE name = 'schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
        assert c.execute("SELECT COUNT(*) FROM outbox_body").fetchone()[0] == 0


def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        Outbox("postgresql://user:hunter2-CANARY@127.0.0.1:1/db")
    assert "hunter2-CANARY" not in str(info.value)
    assert "user:***@127.0.0.1:1" in str(info.value)


def test_readme_outbox_section_runs(readme_server: AiosmtpdServer) -> None:
    from tests.test_readme import python_blocks, run_block

    namespace: dict[str, object] = {}
    for number, block in enumerate(python_blocks("Outbox"), 1):
        run_block(block, namespace, f"README.md Outbox block {number}")
    assert len(readme_server.messages) == 1
    assert readme_server.messages[0].auth_login == readme_server.username
    box = namespace["outbox"]
    assert isinstance(box, Outbox)
    assert box.show(str(namespace["ident"]))["state"] == "sent"  # type: ignore[index]
    box.close()


def test_prometheus_metrics_read_the_outbox(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler, clock: Clock
) -> None:
    import urllib.request

    from smtpsubmit.outbox.metrics import serve_metrics

    handler.data = ["554 5.7.1 no"]
    outbox.enqueue(message(1))
    outbox.run(stop_when_idle=True)
    outbox.enqueue(message(2))
    clock.advance(30)
    server = serve_metrics(outbox, 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        server.shutdown()
    lines = set(text.splitlines())
    assert 'smtpsubmit_outbox_messages{state="bounced"} 1.0' in lines
    assert 'smtpsubmit_outbox_messages{state="queued"} 1.0' in lines
    assert 'smtpsubmit_outbox_route_messages{route="default",state="queued"} 1.0' in lines
    assert "smtpsubmit_outbox_oldest_age_seconds 30.0" in lines
    assert "smtpsubmit_outbox_possible_duplicates 0.0" in lines
    assert any(line.startswith("smtpsubmit_outbox_send_rate ") for line in lines)


def test_read_only_postgres_refuses_enqueue(postgres_url: str, smtp: AiosmtpdServer) -> None:
    """Q8 on PostgreSQL: a read-only session (as on a standby) raises, nothing is stored."""
    writer = Outbox(postgres_url, routes={"default": route(smtp)})
    kept = writer.enqueue(message(1))
    reader = Outbox(postgres_url + "%20-cdefault_transaction_read_only%3Don", migrate=False)
    with pytest.raises(StoreError, match="read-only transaction"):
        reader.enqueue(message(2))
    assert [m["id"] for m in reader.list_messages()] == [kept]
    writer.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    reader.close()
    writer.close()


def test_connections_of_ended_threads_are_closed(outbox_url: str) -> None:
    """A web server's thread pool churns: each thread's connection must not outlive it."""
    box = Outbox(outbox_url)

    def enqueue_once() -> None:
        box.enqueue(message(1))

    for _ in range(5):
        thread = threading.Thread(target=enqueue_once)
        thread.start()
        thread.join()
    connections = box.store._connections  # type: ignore[attr-defined]
    # Each new thread's connection closed the ended threads' ones: what is left is the
    # main thread's (it migrated the schema) and the last thread's, until the next opening.
    assert len(connections._open) == 2
    assert box.stats()["states"]["queued"] == 5
    box.close()
    assert connections._open == []


def test_a_worker_survives_its_database_connections_being_cut(
    postgres_url: str, smtp: AiosmtpdServer
) -> None:
    """Every server-side connection is terminated while the worker idles: it reconnects
    (claims and LISTEN alike) and delivers what is enqueued afterwards."""
    from smtpsubmit.outbox.worker import Worker

    box = Outbox(postgres_url, routes={"default": route(smtp)})
    worker = Worker(box, concurrency=1)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.5)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 2  # the worker's claim and LISTEN connections
        enqueuer = Outbox(postgres_url, migrate=False)
        enqueuer.enqueue(message(1))
        smtp.wait_for(1, timeout=15)
        enqueuer.close()
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert box.stats()["states"]["sent"] == 1
    box.close()


def test_an_unexpected_error_does_not_end_the_worker(
    tmp_path: Path, smtp: AiosmtpdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one delivery is logged; the thread carries on and the lease hands the
    message to the next claim."""
    from smtpsubmit.outbox.worker import Worker

    box = Outbox(f"sqlite:///{tmp_path}/o.db", routes={"default": route(smtp)}, lease=0.5)
    real_plan = Outbox.plan
    calls = []

    def flaky_plan(self: Outbox, *args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_plan(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "plan", flaky_plan)
    box.enqueue(message(1))
    worker = Worker(box)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        smtp.wait_for(1, timeout=10)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert len(calls) >= 2
    assert box.stats()["states"]["sent"] == 1
    box.close()


def test_group_arrays_reach_postgres_unchanged(postgres_url: str) -> None:
    """The group write's arrays are written as literals by smtpsubmit, not psycopg: every
    text, float and NULL comes back as it went."""
    texts = ['a "quoted" word', "back\\slash", "{braces},commas", "", "NULL", "ünï", None, " x "]
    floats = [1796285388.2557678, 0.1, -1e-300, 1.7976931348623157e308, None]
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT %s::text[], %s::float8[], %s::int[]",
            [_array_literal(texts), _array_literal(floats), _array_literal([0, 7, True, None])],
        ).fetchone()
    assert row == (texts, floats, [0, 7, 1, None])
