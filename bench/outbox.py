"""``python -m bench.outbox``: what the durable outbox costs, measured beside the pool.

- enqueue: ``enqueue_many`` (one transaction per 1,000) and single ``enqueue`` (each one
  committed, ``synchronous=FULL``) into SQLite;
- delivery into Postfix's ``smtp-sink`` of N x 2 KB messages: one worker on SQLite, four
  worker processes on PostgreSQL (a private cluster with fsync on; timed from the sink's
  first message to its last, so the interpreters' start is not counted), each with its
  default concurrency; as the references, the same messages with ``Pool.send_many`` (its default
  four connections, and one) and ``Client.send`` over one connection, no queue at all;
- the anchors, what Django sites run today, from the same PostgreSQL into the same sink
  (``bench/anchors.py``): django-post_office and django-mailer;
- with 100,000 queued messages (``bench/outbox_depth.py``, skipped by ``--quick``): claim
  time against depth and the claim's plan on both stores, a worker's memory.

Every delivery run checks that the sink received every message. Prints Markdown tables.
The anchors need the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RECIPIENT, SENDER, raw_message
from bench.outbox_depth import SHALLOW, claim_depth, postgres_plan, sqlite_plan, worker_memory
from bench.servers import ROOT, Sink
from smtpsubmit import Client, Option, Pool, Server
from smtpsubmit.outbox import Outbox, RetryPolicy
from smtpsubmit.outbox.worker import DEFAULT_CONCURRENCY


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


def bench_pool(sink: Sink, n: int, connections: int) -> float:
    raws = _messages(n)
    before = sink.messages()
    server = Server("127.0.0.1", port=sink.port, options=Option.EXTENDED)
    started = time.perf_counter()
    with Pool(server, max_connections=connections) as pool:
        outcomes = pool.send_many([(raw, SENDER, [RECIPIENT]) for raw in raws])
    elapsed = time.perf_counter() - started
    assert all(not isinstance(o, BaseException) for o in outcomes)
    assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
    return n / elapsed


def bench_sqlite_worker(workdir: Path, sink: Sink, n: int) -> float:
    url = f"sqlite:///{workdir}/drain.db"
    server = Server("127.0.0.1", port=sink.port, options=Option.EXTENDED)
    box = Outbox(url, routes={"default": server}, policy=RetryPolicy())
    box.enqueue_many(_messages(n), sender=SENDER, recipients=[RECIPIENT])
    before = sink.messages()
    started = time.perf_counter()
    box.run(stop_when_idle=True)
    elapsed = time.perf_counter() - started
    assert box.stats()["states"]["sent"] == n
    assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
    box.close()
    return n / elapsed


def bench_postgres_workers(cluster: Any, sink: Sink, n: int, workers: int) -> float:
    url = cluster.url(_database(cluster, "outbox"))
    box = Outbox(url)
    box.enqueue_many(_messages(n), sender=SENDER, recipients=[RECIPIENT])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [
        sys.executable, "-m", "tests.outbox_worker", "work", url, "127.0.0.1",
        str(sink.port), "--lease", "60", "--concurrency", str(DEFAULT_CONCURRENCY),
    ]  # fmt: skip
    before = sink.messages()
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT) for _ in range(workers)]
    # Timed from the sink's first message to its last: workers are long-running, and four
    # interpreters starting on two cores would otherwise be a good part of the measure.
    deadline = time.monotonic() + 120
    while sink.messages() == before and time.monotonic() < deadline:
        time.sleep(0.002)
    started = time.perf_counter()
    while sink.messages() < before + n and time.monotonic() < deadline + 480:
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.wait(600)
    assert box.stats()["states"]["sent"] == n
    assert sink.wait_for_messages(before + n) >= before + n, "smtp-sink missed messages"
    box.close()
    return n / elapsed


def bench_anchor(cluster: Any, sink: Sink, workdir: Path, kind: str, n: int) -> float:
    """django-post_office or django-mailer draining n messages, in their own process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "BENCH_DB_NAME": _database(cluster, kind),
        "BENCH_DB_PORT": str(cluster.port),
        "BENCH_SINK_PORT": str(sink.port),
        "BENCH_WORKDIR": str(workdir),
    }
    before = sink.messages()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.anchors", kind, str(n)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"anchor {kind} failed: {proc.stderr[-2000:]}")
    assert sink.wait_for_messages(before + n) >= before + n, f"{kind}: smtp-sink missed messages"
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["rate"])


def _database(cluster: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="messages per delivery run")
    parser.add_argument("--quick", action="store_true", help="skip the 100,000-message checks")
    parser.add_argument("--no-anchors", action="store_true", help="skip the Django anchors")
    args = parser.parse_args(argv)
    from tests.servers.postgres import start_postgres

    workdir = Path(tempfile.mkdtemp(prefix="smtpsubmit-bench-outbox-"))
    sink = Sink(workdir)
    cluster = start_postgres(fsync=True)
    anchors: dict[str, float] = {}
    depth: dict[str, Any] = {}
    try:
        enqueue = bench_enqueue(workdir, 5000)
        client = bench_client(sink, args.n)
        pool = bench_pool(sink, args.n, 4)
        pool1 = bench_pool(sink, args.n, 1)
        sqlite = bench_sqlite_worker(workdir, sink, args.n)
        postgres = bench_postgres_workers(cluster, sink, args.n, 4)
        if not args.no_anchors:
            anchors["post_office"] = bench_anchor(cluster, sink, workdir, "post_office", args.n)
            anchors["mailer"] = bench_anchor(cluster, sink, workdir, "mailer", args.n)
        if not args.quick:
            path = workdir / "depth.db"
            depth["SQLite"] = claim_depth(f"sqlite:///{path}", sqlite_plan(str(path)))
            pg_url = cluster.url(_database(cluster, "depth"))
            depth["PostgreSQL"] = claim_depth(pg_url, postgres_plan(pg_url))
            depth["memory"] = worker_memory(f"sqlite:///{path}", sink)
    finally:
        sink.stop()
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    _report(args.n, enqueue, client, pool, pool1, sqlite, postgres, anchors, depth)


def _report(
    n: int,
    enqueue: dict[str, float],
    client: float,
    pool: float,
    pool1: float,
    sqlite: float,
    postgres: float,
    anchors: dict[str, float],
    depth: dict[str, Any],
) -> None:
    print(f"Delivery of {n:,} x 2 KB into smtp-sink; ratios against `Pool.send_many` (4 conns):\n")
    print("| measure | rate | vs Pool.send_many | vs 1-conn Pool |")
    print("|---|---:|---:|---:|")
    rows = [
        ("enqueue_many, SQLite (5,000 x 2 KB)", enqueue["enqueue_many"], False),
        ("enqueue, SQLite, each committed", enqueue["enqueue"], False),
        ("`Pool.send_many`, 4 connections (the default)", pool, True),
        ("`Pool.send_many`, 1 connection", pool1, True),
        ("`Client.send`, one connection, no queue", client, True),
        ("1 worker, SQLite", sqlite, True),
        ("4 worker processes, PostgreSQL (fsync on)", postgres, True),
    ]
    names = {"post_office": "django-post_office", "mailer": "django-mailer"}
    rows += [(f"{names[k]}, PostgreSQL (fsync on)", v, True) for k, v in anchors.items()]
    for name, rate, ratio in rows:
        cells = f"{rate / pool:.2f} | {rate / pool1:.2f}" if ratio else " | "
        print(f"| {name} | {rate:,.0f} msg/s | {cells} |")
    for kind, rate in anchors.items():
        print(f"\n4 PostgreSQL workers / {names[kind]}: {postgres / rate:.1f}x")
    for store in ("SQLite", "PostgreSQL"):
        if store in depth:
            d = depth[store]
            print(
                f"\n{store}: a claim of 8 takes {d['shallow_ms']:.2f} ms with {SHALLOW:,} waiting,"
                f" {d['deep_ms']:.2f} ms with {d['waiting']:,} waiting. Plan:\n"
            )
            print("\n".join("    " + line for line in d["plan"].splitlines()))
    if "memory" in depth:
        m = depth["memory"]
        print(
            f"\nOne SQLite worker draining {m['sent']:,} queued messages ({m['rate']:,.0f} msg/s):"
            f" RSS {m['rss_at_2000_kib'] / 1024:.1f} MiB after 2,000, peak"
            f" {m['rss_peak_kib'] / 1024:.1f} MiB, growth {m['growth_kib'] / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
