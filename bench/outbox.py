"""``python -m bench.outbox``: what the durable outbox costs, measured beside a bare connection.

- enqueue: ``enqueue_many`` (one transaction per 1,000) and single ``enqueue`` (each one
  committed, ``synchronous=FULL``) into SQLite;
- delivery into Postfix's ``smtp-sink`` of N x 2 KB messages: one worker on SQLite, four
  worker processes on PostgreSQL (a private cluster with fsync on), and, as the reference, the
  same messages sent with ``Client.send`` over one connection, no queue at all;
- the PostgreSQL claim query's plan with a deep queue (``EXPLAIN``).

Every delivery run checks that the sink received every message. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RECIPIENT, SENDER, raw_message
from bench.servers import ROOT, Sink
from smtpsubmit import Client, Option, Server
from smtpsubmit.outbox import Outbox, RetryPolicy


def _messages(n: int) -> list[bytes]:
    return [raw_message(i, 2048) for i in range(n)]


def bench_enqueue(workdir: Path, n: int) -> dict[str, float]:
    raws = _messages(n)
    box = Outbox(f"sqlite:///{workdir}/enqueue.db")
    started = time.perf_counter()
    for start in range(0, n, 1000):
        box.enqueue_many(raws[start : start + 1000], sender=SENDER, recipients=[RECIPIENT])
    many = n / (time.perf_counter() - started)
    single_n = min(n, 2000)
    started = time.perf_counter()
    for raw in raws[:single_n]:
        box.enqueue(raw, sender=SENDER, recipients=[RECIPIENT])
    single = single_n / (time.perf_counter() - started)
    box.close()
    return {"enqueue_many": many, "enqueue": single}


def bench_client(sink: Sink, n: int) -> float:
    raws = _messages(n)
    before = sink.messages()
    server = Server("127.0.0.1", port=sink.port, options=Option.EXTENDED)
    started = time.perf_counter()
    with Client(server) as client:
        for raw in raws:
            client.send(raw, sender=SENDER, recipients=[RECIPIENT])
    elapsed = time.perf_counter() - started
    assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
    return n / elapsed


def bench_sqlite_worker(workdir: Path, sink: Sink, n: int) -> float:
    url = f"sqlite:///{workdir}/drain.db"
    server = Server("127.0.0.1", port=sink.port, options=Option.EXTENDED)
    box = Outbox(url, routes={"default": server}, policy=RetryPolicy())
    box.enqueue_many(_messages(n), sender=SENDER, recipients=[RECIPIENT])
    before = sink.messages()
    started = time.perf_counter()
    box.run(concurrency=1, stop_when_idle=True)
    elapsed = time.perf_counter() - started
    assert box.stats()["states"]["sent"] == n
    assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
    box.close()
    return n / elapsed


def bench_postgres_workers(sink: Sink, n: int, workers: int) -> tuple[float, str]:
    from tests.servers.postgres import start_postgres

    cluster = start_postgres(fsync=True)
    try:
        url = cluster.url()
        box = Outbox(url)
        box.enqueue_many(_messages(n), sender=SENDER, recipients=[RECIPIENT])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable, "-m", "tests.outbox_worker", "work", url, "127.0.0.1",
            str(sink.port), "--lease", "60",
        ]  # fmt: skip
        before = sink.messages()
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, cwd=ROOT) for _ in range(workers)]
        for proc in procs:
            proc.wait(600)
        elapsed = time.perf_counter() - started
        assert box.stats()["states"]["sent"] == n
        assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
        plan = _claim_plan(box, url)
        box.close()
        return n / elapsed, plan
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def _claim_plan(box: Outbox, url: str) -> str:
    """The claim's plan with 20,000 waiting messages (sent ones stay in the table too)."""
    import psycopg

    box.enqueue_many(_messages(20_000), sender=SENDER, recipients=[RECIPIENT])
    with psycopg.connect(url) as conn:
        conn.execute("ANALYZE")
        rows = conn.execute(
            "EXPLAIN ANALYZE SELECT id FROM outbox_message WHERE state IN ('queued', 'deferred')"
            " AND due <= %s ORDER BY priority DESC, due LIMIT 8 FOR UPDATE SKIP LOCKED",
            [time.time()],
        ).fetchall()
    return "\n".join(r[0] for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="messages per delivery run")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="smtpsubmit-bench-outbox-"))
    sink = Sink(workdir)
    try:
        enqueue = bench_enqueue(workdir, 5000)
        client = bench_client(sink, args.n)
        sqlite = bench_sqlite_worker(workdir, sink, args.n)
        postgres, plan = bench_postgres_workers(sink, args.n, 4)
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        ("enqueue_many, SQLite (5,000 x 2 KB)", enqueue["enqueue_many"], None),
        ("enqueue, SQLite, each committed", enqueue["enqueue"], None),
        (f"Client.send, one connection, no queue ({args.n:,} x 2 KB)", client, client),
        ("1 worker, SQLite", sqlite, client),
        ("4 worker processes, PostgreSQL (fsync on)", postgres, client),
    ]
    print("| measure | rate | vs one bare connection |")
    print("|---|---:|---:|")
    for name, rate, base in rows:
        ratio = f"{rate / base:.2f}" if base else ""
        print(f"| {name} | {rate:,.0f} msg/s | {ratio} |")
    print("\nClaim plan with 20,000 waiting messages:\n")
    print("\n".join("    " + line for line in plan.splitlines()))


if __name__ == "__main__":
    main()
