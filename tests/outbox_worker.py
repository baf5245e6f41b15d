"""A worker (or enqueuer) in its own process, for the crash tests to SIGKILL.

``python -m tests.outbox_worker work URL HOST PORT [--lease S] [--concurrency N]
[--no-chunking]`` drains the outbox until idle (``work-direct URL DNS_PORT SMTP_PORT``: its
route ``mx`` is a direct route resolving through 127.0.0.1:DNS_PORT, MX hosts on SMTP_PORT,
no MTA-STS);
``SMTPSUBMIT_TEST_KILL_AT`` (see smtpsubmit.outbox.worker) makes it die at a named point.
``enqueue URL N`` enqueues N messages and kills itself with SIGKILL the moment the last
``enqueue`` returned (Q1); ``enqueue-batches URL`` writes batches of 100 until killed (Q2).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import dns.resolver

from smtpsubmit import Message, Option, Server
from smtpsubmit.outbox import DirectRoute, Outbox, RetryPolicy

POLICY = RetryPolicy(first_delay=0.05, max_delay=0.05, jitter=0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["work", "work-direct", "enqueue", "enqueue-batches"])
    parser.add_argument("url")
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-chunking", action="store_true", help="streams use DATA")
    args = parser.parse_args(argv)
    if args.action == "work":
        host, port = args.rest
        off = frozenset({"CHUNKING"} if args.no_chunking else ())
        server = Server(
            host, port=int(port), options=Option.EXTENDED, timeout=10, disable_extensions=off
        )
        box = Outbox(args.url, routes={"default": server}, lease=args.lease, policy=POLICY)
        box.run(concurrency=args.concurrency, stop_when_idle=True)
        return
    if args.action == "work-direct":
        dns_port, smtp_port = (int(v) for v in args.rest)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], dns_port, 5.0
        direct = DirectRoute(
            resolver=resolver,
            port=smtp_port,
            mta_sts=False,
            timeout=10,
            local_hostname="sender.test",
        )
        box = Outbox(args.url, routes={"mx": direct}, lease=args.lease, policy=POLICY)
        box.run(concurrency=args.concurrency, stop_when_idle=True)
        return
    box = Outbox(args.url, policy=POLICY)
    if args.action == "enqueue":
        for n in range(int(args.rest[0])):
            box.enqueue(Message(sender="a@example.org", to="b@example.org", subject=f"q1 {n}"))
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdout.write("started\n")
    sys.stdout.flush()
    n = 0
    while True:
        recipients = ["b@example.org", "c@example.org", "d@example.org"]
        batch = [
            Message(sender="a@example.org", to=recipients, subject=f"q2 {n + i}")
            for i in range(100)
        ]
        box.enqueue_many(batch)
        n += 100


if __name__ == "__main__":
    main(sys.argv[1:])
