"""The outbox against a real Postfix: per-recipient outcomes from a real MTA's replies, and two
worker processes sharing PostgreSQL counted in Postfix's own Maildir."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import Message, Option, Server
from smtpsubmit.outbox import Outbox, RetryPolicy

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.postfix


def route(postfix: Any) -> Server:
    return Server(postfix.host, port=postfix.plain, options=Option.EXTENDED, timeout=10)


def tagged(postfix: Any, user: str, tag: str) -> list[bytes]:
    return [m for m in postfix.maildir_messages(user) if tag.encode() in m]


def test_postfix_replies_become_recipient_states(postfix: Any, tmp_path: Path) -> None:
    """Q7/Q11 with a real MTA: alice gets it, tempfail@ (450) is deferred, reject@ (554)
    bounced, and a retry goes to the deferred recipient only."""
    tag = uuid.uuid4().hex
    box = Outbox(
        f"sqlite:///{tmp_path}/o.db",
        routes={"default": route(postfix)},
        policy=RetryPolicy(first_delay=0.01, max_delay=0.01, jitter=0),
    )
    to = ["alice@example.test", "tempfail@example.test", "reject@example.test"]
    ident = box.enqueue(Message(sender="s@example.org", to=to, subject=tag, text="hi"))
    box.run(stop_when_idle=True)
    shown = box.show(ident)
    assert shown is not None
    got = {r["address"]: (r["state"], (r["reply"] or {}).get("code")) for r in shown["recipients"]}
    assert got == {
        "alice@example.test": ("sent", 250),
        "tempfail@example.test": ("deferred", 450),
        "reject@example.test": ("bounced", 554),
    }
    postfix.wait_for_maildir("alice", 1)
    assert len(tagged(postfix, "alice", tag)) == 1
    time.sleep(0.05)  # past the deferred recipient's retry_at (first_delay 0.01 s)
    box.run(stop_when_idle=True)  # 450 again for it; alice is not sent again
    shown = box.show(ident)
    assert shown is not None
    assert [r["attempts"] for r in shown["recipients"]] == [1, 2, 1]
    assert len(tagged(postfix, "alice", tag)) == 1
    box.close()


def test_two_workers_on_postgres_into_postfix(postfix: Any, postgres_url: str) -> None:
    """Q10 with a real MTA: 2 worker processes, 80 messages, each in the Maildir once."""
    tag = uuid.uuid4().hex
    box = Outbox(postgres_url)
    box.enqueue_many(
        Message(sender="s@example.org", to="bob@example.test", subject=f"{tag} {n}", text="x")
        for n in range(80)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("SMTPSUBMIT_TEST_KILL_AT", None)
    cmd = [
        sys.executable, "-m", "tests.outbox_worker", "work", postgres_url, postfix.host,
        str(postfix.plain), "--concurrency", "2",
    ]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT) for _ in range(2)]
    assert [p.wait(90) for p in procs] == [0, 0]
    assert box.stats()["states"]["sent"] == 80
    deadline = time.monotonic() + 30  # Postfix delivers to the Maildir asynchronously
    while len(messages := tagged(postfix, "bob", tag)) < 80 and time.monotonic() < deadline:
        time.sleep(0.05)
    subjects = sorted(
        line for m in messages for line in m.split(b"\n") if line.startswith(b"Subject: ")
    )
    assert subjects == sorted({f"Subject: {tag} {n}".encode() for n in range(80)})
    box.close()
