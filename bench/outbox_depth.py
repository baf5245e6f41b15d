"""The outbox with 100,000 queued messages: claim time against depth, its plan, worker memory.

- claim time: the mean of 50 claims of 8 with 1,000 messages waiting, then with 100,000
  (same database, the rest enqueued in between), on SQLite and on PostgreSQL, and each
  claim query's plan (``EXPLAIN QUERY PLAN`` / ``EXPLAIN ANALYZE``);
- memory: one worker process (``python -m bench.outbox_depth rss URL PORT``) drains the
  100,000 SQLite messages into smtp-sink; its resident set once 2,000 are sent, against its
  peak until the queue is empty.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import RECIPIENT, SENDER, raw_message
from bench.servers import ROOT, Sink
from smtpsubmit import Option, Server
from smtpsubmit.outbox import Outbox

DEPTH = 100_000
SHALLOW = 1_000
_DUE = (
    "SELECT id FROM outbox_message{hint} WHERE state IN ('queued', 'deferred') AND due <= {now}"
    " ORDER BY priority DESC, due LIMIT 8{lock}"
)


def _fill(box: Outbox, n: int) -> None:
    for start in range(0, n, 5000):
        count = min(5000, n - start)
        box.enqueue_many(
            [raw_message(start + i, 2048) for i in range(count)],
            sender=SENDER,
            recipients=[RECIPIENT],
        )


def _claim_ms(box: Outbox, rounds: int = 50) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        box.store.claim("bench-depth", 8, time.time(), 600)
    return (time.perf_counter() - started) / rounds * 1000


def claim_depth(url: str, plan: Any) -> dict[str, Any]:
    """Claim time with SHALLOW then DEPTH messages waiting, and the plan at DEPTH."""
    box = Outbox(url)
    _fill(box, SHALLOW)
    shallow = _claim_ms(box)
    _fill(box, DEPTH - SHALLOW + 400)  # what the shallow claims took, given back
    deep = _claim_ms(box)
    waiting = box.stats()["states"]["queued"]
    text = plan(box)
    box.close()
    return {"shallow_ms": shallow, "deep_ms": deep, "waiting": waiting, "plan": text}


def sqlite_plan(path: str) -> Any:
    def plan(_box: Outbox) -> str:
        with sqlite3.connect(path) as conn:
            query = _DUE.format(hint=" INDEXED BY outbox_message_due", now=time.time(), lock="")
            rows = conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
        return "\n".join(str(r[-1]) for r in rows)

    return plan


def postgres_plan(url: str) -> Any:
    def plan(_box: Outbox) -> str:
        import psycopg

        with psycopg.connect(url) as conn:
            conn.execute("ANALYZE")
            query = _DUE.format(hint="", now=time.time(), lock=" FOR UPDATE SKIP LOCKED")
            rows = conn.execute("EXPLAIN ANALYZE " + query).fetchall()
        return "\n".join(r[0] for r in rows)

    return plan


def worker_memory(url: str, sink: Sink) -> dict[str, Any]:
    """Drain the queue of ``url`` with one worker process; its RSS at 2,000 sent and peak."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-m", "bench.outbox_depth", "rss", url, str(sink.port)]
    proc = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=True
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _rss_child(url: str, port: int) -> None:
    from smtpsubmit.outbox.worker import Worker

    server = Server("127.0.0.1", port=port, options=Option.EXTENDED)
    box = Outbox(url, routes={"default": server})
    worker = Worker(box)
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append((worker.sent, _rss_kib()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    worker.run(stop_when_idle=True)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    baseline = next((rss for sent, rss in samples if sent >= 2000), samples[0][1])
    peak = max(rss for _, rss in samples)
    result = {
        "sent": worker.sent,
        "rate": worker.sent / elapsed,
        "rss_at_2000_kib": baseline,
        "rss_peak_kib": peak,
        "growth_kib": peak - baseline,
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        _rss_child(sys.argv[2], int(sys.argv[3]))
