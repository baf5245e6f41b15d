"""The outbox against a real SMTP server (aiosmtpd), on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from smtpsubmit import MessageError, Option, RateLimit, Server
from smtpsubmit.outbox import Outbox, RetryPolicy
from smtpsubmit.outbox.store import Begin
from tests.outbox_helpers import Clock, ScriptedHandler, message, route, serve, subjects
from tests.servers.aiosmtpd_server import AUTH_PASSWORD, AiosmtpdServer

DAY = 24 * 3600.0


@pytest.fixture(params=["sqlite", "postgres"])
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/outbox.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def handler() -> ScriptedHandler:
    return ScriptedHandler()


@pytest.fixture
def smtp(handler: ScriptedHandler) -> Iterator[AiosmtpdServer]:
    yield from serve(handler)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(outbox_url: str, smtp: AiosmtpdServer, clock: Clock) -> Iterator[Outbox]:
    box = Outbox(
        outbox_url,
        routes={"default": route(smtp)},
        policy=RetryPolicy(jitter=0),
        clock=clock,
        lease=30,
    )
    yield box
    box.close()


def states(box: Outbox, ident: str) -> dict[str, str]:
    shown = box.show(ident)
    assert shown is not None
    return {r["address"]: r["state"] for r in shown["recipients"]}


def test_enqueued_messages_are_delivered_once_each(outbox: Outbox, smtp: AiosmtpdServer) -> None:
    ids = [outbox.enqueue(message(n, to=("a@example.org", "b@example.org"))) for n in range(3)]
    outbox.run(concurrency=2, stop_when_idle=True)
    assert sorted(subjects(smtp)) == ["outbox message 0", "outbox message 1", "outbox message 2"]
    assert all(m.rcpt_tos == ["a@example.org", "b@example.org"] for m in smtp.messages)
    assert all(m.mail_from == "sender@example.org" for m in smtp.messages)
    for ident in ids:
        assert states(outbox, ident) == {"a@example.org": "sent", "b@example.org": "sent"}
    stats = outbox.stats()
    assert stats["states"]["sent"] == 3
    assert stats["routes"] == {"default": {"sent": 3}}
    assert stats["possible_duplicates"] == 0
    assert stats["send_rate"] == pytest.approx(3 / 60)
    outbox.run(stop_when_idle=True)
    assert len(smtp.messages) == 3


def test_a_retry_sends_the_same_bytes_and_message_id(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler, clock: Clock
) -> None:
    handler.data = ["451 4.3.0 try again later"]
    ident = outbox.enqueue(message(1))
    outbox.run(stop_when_idle=True)
    shown = outbox.show(ident)
    assert shown is not None
    assert shown["state"] == "deferred"
    assert shown["recipients"][0]["reply"] == {"code": 451, "text": "try again later"}
    assert shown["retry_at"] == pytest.approx(clock.now + 60)
    clock.advance(61)
    outbox.run(stop_when_idle=True)
    assert len(smtp.messages) == 1
    assert smtp.messages[0].original_content == handler.refused_data[0]
    assert f"<{shown['message_id']}>".encode() in smtp.messages[0].original_content
    assert states(outbox, ident) == {"rcpt@example.org": "sent"}


def test_ready_bytes_keep_their_message_id(outbox: Outbox, smtp: AiosmtpdServer) -> None:
    raw = b"From: a@example.org\r\nTo: b@example.org\r\nMessage-ID: <fixed@id>\r\n\r\nHi\r\n"
    ident = outbox.enqueue(raw, sender="a@example.org", recipients=["b@example.org"])
    outbox.run(stop_when_idle=True)
    assert smtp.messages[0].original_content == raw
    assert (outbox.show(ident) or {})["message_id"] == "fixed@id"


def test_only_unfinished_recipients_are_retried(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler, clock: Clock
) -> None:
    """Q7: partial acceptance — per-recipient state, the sent ones are never sent again."""
    handler.rcpt = {"later@example.org": ["450 4.2.1 busy"], "nobody@example.org": ["550 no"]}
    to = ("ok@example.org", "later@example.org", "nobody@example.org")
    ident = outbox.enqueue(message(7, to=to))
    outbox.run(stop_when_idle=True)
    assert states(outbox, ident) == {
        "ok@example.org": "sent",
        "later@example.org": "deferred",
        "nobody@example.org": "bounced",
    }
    clock.advance(61)
    outbox.run(stop_when_idle=True)
    assert [m.rcpt_tos for m in smtp.messages] == [["ok@example.org"], ["later@example.org"]]
    assert states(outbox, ident)["later@example.org"] == "sent"
    assert (outbox.show(ident) or {})["state"] == "bounced"  # a dead letter: one bounced


def test_replies_and_times_are_recorded_exactly(
    outbox: Outbox, handler: ScriptedHandler, clock: Clock
) -> None:
    """What a server says comes back byte for byte (quotes, backslashes, commas, braces,
    non-ASCII), and retry times to the bit, through either store's group write."""
    text = 'busy, "really" {x} \\ back\\slash; über-längst'
    handler.rcpt = {"later@example.org": [f"450 4.2.1 {text}"]}
    clock.now = 1_800_000_000.123456789
    ident = outbox.enqueue(message(3, to=("later@example.org",)))
    outbox.run(stop_when_idle=True)
    shown = outbox.show(ident) or {}
    (recipient,) = shown["recipients"]
    assert recipient["reply"] == {"code": 450, "text": text}  # the enhanced code apart
    assert shown["retry_at"] == clock.now + 60.0  # RetryPolicy(jitter=0): first_delay


def test_a_permanent_failure_is_a_dead_letter_at_once(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler, clock: Clock
) -> None:
    """Q11: a poison message is never retried."""
    handler.data = ["554 5.7.1 rejected as spam"]
    ident = outbox.enqueue(message(11))
    outbox.run(stop_when_idle=True)
    clock.advance(10 * DAY)
    outbox.run(stop_when_idle=True)
    shown = outbox.show(ident)
    assert shown is not None
    assert (shown["state"], shown["attempts"]) == ("bounced", 1)
    assert shown["recipients"][0]["reply"]["code"] == 554
    assert len(handler.refused_data) == 1 and smtp.messages == []


def test_repeated_temporary_failures_back_off_then_expire(
    outbox: Outbox, handler: ScriptedHandler, clock: Clock
) -> None:
    """Q12: exponential backoff; after max_age (4 days) a dead letter with the reason."""
    handler.data = ["451 4.3.0 later"] * 200
    ident = outbox.enqueue(message(12))
    delays = []
    for _ in range(8):
        before = clock.now
        outbox.run(stop_when_idle=True)
        retry_at = (outbox.show(ident) or {})["retry_at"]
        delays.append(round(retry_at - before))
        clock.now = retry_at
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    clock.advance(4 * DAY)
    outbox.run(stop_when_idle=True)
    shown = outbox.show(ident)
    assert shown is not None
    assert shown["state"] == "bounced"
    assert shown["reason"].startswith("expired after")


def test_an_idempotency_key_stores_and_sends_once(outbox: Outbox, smtp: AiosmtpdServer) -> None:
    first = outbox.enqueue(message(1), idempotency_key="order-42")
    again = outbox.enqueue(message(2), idempotency_key="order-42")
    assert first == again
    outbox.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    assert outbox.stats()["states"]["sent"] == 1


def test_not_before_and_priority(outbox: Outbox, smtp: AiosmtpdServer, clock: Clock) -> None:
    later = datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=1)
    outbox.enqueue(message(0), not_before=later)
    outbox.enqueue(message(1), priority=0)
    outbox.enqueue(message(2), priority=5)
    outbox.run(concurrency=1, stop_when_idle=True, batch_size=1)  # one at a time: claim order
    assert subjects(smtp) == ["outbox message 2", "outbox message 1"]
    clock.advance(3601)
    outbox.run(stop_when_idle=True)
    assert subjects(smtp)[-1] == "outbox message 0"


def test_enqueue_many_is_one_batch(outbox: Outbox, smtp: AiosmtpdServer) -> None:
    ids = outbox.enqueue_many([message(n) for n in range(20)])
    assert len(set(ids)) == 20
    outbox.run(concurrency=3, stop_when_idle=True)
    assert sorted(subjects(smtp)) == sorted(f"outbox message {n}" for n in range(20))


def test_sqlite_transactional_outbox(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    """Sent if and only if the caller's transaction commits."""
    url = f"sqlite:///{tmp_path}/app.db"
    box = Outbox(url, routes={"default": route(smtp)})
    app = sqlite3.connect(tmp_path / "app.db")
    app.execute("CREATE TABLE orders (id INTEGER)")
    app.execute("INSERT INTO orders VALUES (1)")
    box.enqueue(message(1), connection=app)
    app.rollback()
    app.execute("INSERT INTO orders VALUES (2)")
    box.enqueue(message(2), connection=app)
    app.commit()
    box.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 2"]
    assert app.execute("SELECT id FROM orders").fetchall() == [(2,)]
    app.close()
    box.close()


def test_postgres_transactional_outbox(postgres_url: str, smtp: AiosmtpdServer) -> None:
    box = Outbox(postgres_url, routes={"default": route(smtp)})
    with psycopg.connect(postgres_url) as app:
        app.execute("CREATE TABLE orders (id INTEGER)")
        app.commit()
        app.execute("INSERT INTO orders VALUES (1)")
        box.enqueue(message(1), connection=app)
        app.rollback()
        app.execute("INSERT INTO orders VALUES (2)")
        box.enqueue(message(2), connection=app)
        app.commit()
        assert app.execute("SELECT id FROM orders").fetchall() == [(2,)]
    box.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 2"]
    box.close()


def test_no_password_reaches_the_database(
    outbox_url: str, aiosmtpd_auth_plain: AiosmtpdServer, tmp_path: Path
) -> None:
    server = Server(
        aiosmtpd_auth_plain.host,
        "alice",
        AUTH_PASSWORD,
        port=aiosmtpd_auth_plain.port,
        options=Option.EXTENDED,
        allow_plaintext_auth=True,
    )
    box = Outbox(outbox_url, routes={"default": server})
    box.enqueue(message(1))
    box.enqueue(message(2), priority=1)
    box.run(stop_when_idle=True)
    assert len(aiosmtpd_auth_plain.messages) == 2
    assert aiosmtpd_auth_plain.messages[0].auth_login == "alice"
    canary = AUTH_PASSWORD.encode()
    if outbox_url.startswith("sqlite"):
        box.close()
        files = list(tmp_path.glob("outbox.db*"))
        assert files
        for path in files:
            assert canary not in path.read_bytes()
    else:
        with psycopg.connect(outbox_url) as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                ).fetchall()
            ]
            assert "outbox_message" in tables
            for table in tables:
                dump = conn.execute(f"SELECT t::text FROM {table} t").fetchall()
                assert all(AUTH_PASSWORD not in row[0] for row in dump), table
                assert all("alice" not in row[0] for row in dump), table
        box.close()
    assert AUTH_PASSWORD not in repr(box)


def test_a_lease_left_by_a_dead_worker_is_taken_over_as_unknown(
    outbox: Outbox, smtp: AiosmtpdServer, clock: Clock
) -> None:
    """The dead worker committed ``sending``: the message may have arrived, so it is resent
    once (same bytes) and counted as a possible duplicate."""
    ident = outbox.enqueue(message(5))
    [claimed] = outbox.store.claim("dead-worker", 10, clock(), 30)
    assert outbox.store.begin_send(Begin(ident, "dead-worker", [0], clock(), 30))
    outbox.run(stop_when_idle=True)
    assert smtp.messages == []  # the lease is still valid
    clock.advance(31)
    outbox.run(stop_when_idle=True)
    assert len(smtp.messages) == 1
    assert smtp.messages[0].original_content == claimed.body
    assert states(outbox, ident) == {"rcpt@example.org": "sent"}
    assert outbox.stats()["possible_duplicates"] == 1


def test_unknown_is_held_under_on_unknown_hold(
    outbox_url: str, smtp: AiosmtpdServer, clock: Clock
) -> None:
    box = Outbox(
        outbox_url,
        routes={"default": route(smtp)},
        policy=RetryPolicy(on_unknown="hold"),
        clock=clock,
    )
    ident = box.enqueue(message(6))
    box.store.claim("dead-worker", 10, clock(), 60)
    box.store.begin_send(Begin(ident, "dead-worker", [0], clock(), 60))
    clock.advance(61)
    box.run(stop_when_idle=True)
    assert smtp.messages == []
    shown = box.show(ident)
    assert shown is not None
    assert shown["state"] == "unknown"
    assert box.purge() == 1
    box.close()


def test_a_route_this_worker_lacks_defers(outbox_url: str, clock: Clock) -> None:
    box = Outbox(outbox_url, policy=RetryPolicy(jitter=0), clock=clock, routes=None)
    ident = box.enqueue(message(1), route="bulk")
    box.run(stop_when_idle=True)
    shown = box.show(ident)
    assert shown is not None
    assert shown["state"] == "deferred"
    assert "no route 'bulk'" in shown["reason"]
    box.close()


def test_postgres_notify_wakes_an_idle_worker(postgres_url: str, smtp: AiosmtpdServer) -> None:
    """An idle PostgreSQL worker polls only every 30 s: a delivery within seconds of the
    enqueue proves LISTEN/NOTIFY woke it; stop() ends it promptly."""
    from smtpsubmit.outbox.worker import Worker

    box = Outbox(postgres_url, routes={"default": route(smtp)})
    assert box.store.poll_interval == 30.0
    worker = Worker(box, concurrency=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.5)  # both threads are idle, waiting
        started = time.monotonic()
        box.enqueue(message(1))
        smtp.wait_for(1, timeout=10)
        assert time.monotonic() - started < 5
    finally:
        worker.stop()
        thread.join(5)
    assert not thread.is_alive()
    box.close()


def test_addresses_are_checked_and_stored_in_wire_form(
    outbox: Outbox, smtp: AiosmtpdServer
) -> None:
    with pytest.raises(MessageError):
        outbox.enqueue(b"Subject: x\r\n\r\nx\r\n", sender="a@example.org", recipients=["bad@@x"])
    raw = b"Subject: idn\r\n\r\nhi\r\n"
    ident = outbox.enqueue(
        raw,
        sender="<a@example.org>",
        recipients=["<b@b\u00fccher.example>", "b@xn--bcher-kva.example"],
    )
    outbox.run(stop_when_idle=True)
    assert smtp.messages[0].rcpt_tos == ["b@xn--bcher-kva.example"]
    assert smtp.messages[0].mail_from == "a@example.org"
    assert states(outbox, ident) == {"b@xn--bcher-kva.example": "sent"}


def test_a_wrong_password_defers_the_queue_instead_of_bouncing_it(
    outbox_url: str, aiosmtpd_auth_plain: AiosmtpdServer, clock: Clock
) -> None:
    """535 at AUTH is the route's fault, not the message's: deferred, then delivered once
    the route is fixed."""

    def server(password: str) -> Server:
        return Server(
            aiosmtpd_auth_plain.host,
            "alice",
            password,
            port=aiosmtpd_auth_plain.port,
            options=Option.EXTENDED,
            allow_plaintext_auth=True,
        )

    wrong = Outbox(outbox_url, routes={"default": server("wrong")}, clock=clock)
    ident = wrong.enqueue(message(1))
    wrong.run(stop_when_idle=True)
    shown = wrong.show(ident)
    assert shown is not None
    assert shown["state"] == "deferred"
    assert shown["recipients"][0]["reply"]["code"] == 535
    wrong.close()
    clock.advance(3600)
    fixed = Outbox(outbox_url, routes={"default": server(AUTH_PASSWORD)}, clock=clock)
    fixed.run(stop_when_idle=True)
    assert len(aiosmtpd_auth_plain.messages) == 1
    assert (fixed.show(ident) or {})["state"] == "sent"
    fixed.close()


def test_a_lost_final_answer_is_resent_once_and_counted(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler
) -> None:
    """Q5 without a crash: DeliveryStatusUnknown → ``unknown``, one byte-identical resend."""
    handler.drop_after_data = 1
    ident = outbox.enqueue(message(5, to=("a@example.org", "b@example.org")))
    outbox.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 5"] * 2
    assert smtp.messages[0].original_content == smtp.messages[1].original_content
    assert states(outbox, ident) == {"a@example.org": "sent", "b@example.org": "sent"}
    assert outbox.stats()["possible_duplicates"] == 2  # one resend, two recipients


def test_a_second_lost_answer_is_held(
    outbox: Outbox, smtp: AiosmtpdServer, handler: ScriptedHandler
) -> None:
    handler.drop_after_data = 2
    ident = outbox.enqueue(message(6))
    outbox.run(stop_when_idle=True)
    assert len(smtp.messages) == 2
    shown = outbox.show(ident)
    assert shown is not None
    assert shown["state"] == "unknown"
    assert shown["recipients"][0]["attempts"] == 2
    outbox.run(stop_when_idle=True)
    assert len(smtp.messages) == 2  # held: never sent a third time on its own


def test_a_routes_rate_limit_bounds_the_workers_send_rate(
    outbox_url: str, smtp: AiosmtpdServer, clock: Clock
) -> None:
    """Workers send through the route's Pool and its RateLimit: 6 messages at 2 per 0.4 s
    take at least two more windows however many threads send them."""
    box = Outbox(
        outbox_url,
        routes={"default": route(smtp)},
        rate_limits={"default": RateLimit(2, 0.4)},
        policy=RetryPolicy(jitter=0),
        clock=clock,
    )
    try:
        for n in range(6):
            box.enqueue(message(n))
        started = time.monotonic()
        box.run(concurrency=3, stop_when_idle=True)
        elapsed = time.monotonic() - started
        assert len(smtp.messages) == 6
        assert box.stats()["states"]["sent"] == 6
        assert elapsed >= 0.75, elapsed
    finally:
        box.close()


def test_a_rate_limit_must_name_a_route(tmp_path: Path, smtp: AiosmtpdServer) -> None:
    with pytest.raises(ValueError, match="not a route"):
        Outbox(
            f"sqlite:///{tmp_path}/o.db",
            routes={"default": route(smtp)},
            rate_limits={"bulk": RateLimit(1, 1.0)},
        )
