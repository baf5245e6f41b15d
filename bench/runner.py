"""One client, one workload, one process: ``python -m bench.runner CLIENT WORKLOAD [options]``.

Prints one JSON line: what was done (messages, octets), the wall time and CPU
time of the timed part, and this process's peak RSS (VmHWM) at its end. The
inputs (message bytes, attachment file) are prepared before the clock starts
and are the same for every client.

Clients: ``smtpsubmit`` (sync Client), ``smtpsubmit-async`` (AsyncClient),
``smtpsubmit-nochunking`` (sync, ``disable_extensions={"CHUNKING"}``),
``smtpsubmit-many`` / ``smtpsubmit-many-async`` (the whole share in one ``send_many``;
``smtpsubmit-many-nochunking``: with ``disable_extensions={"CHUNKING"}``, a DATA stream),
``smtpsubmit-pool`` / ``smtpsubmit-pool-async`` (every message in one
``Pool.send_many`` / ``AsyncPool.send_many`` with ``--conns`` connections),
``smtpsubmit-pool-iter`` / ``smtpsubmit-pool-iter-async`` (the same through
``Pool.send_iter`` / ``AsyncPool.send_iter``: each outcome checked and dropped),
``smtplib`` (with ``email.message.EmailMessage`` where a message is composed)
and ``aiosmtplib``. ``--window`` sets ``send_many``'s window (CHUNKING).
Kind ``stream`` (W7) makes its messages lazily, in a generator, so the input
itself costs no memory. Kind ``rate`` (RL): ``smtpsubmit-pool-rate`` sends through
one ``Pool`` with a ``RateLimit``.

The sync smtpsubmit clients also count their *reply waits*: each read of a
reply is checked first with a zero-timeout ``select``, and one that finds
nothing to read is a wait (the client blocks on the server); the check costs
about a microsecond per read. In a ``send_many`` stream a wait is further told
apart by why the stream read: its CHUNKING window was full (``window_waits``:
the server sets the pace, the client has sent all it may), the stream was
ending (``drain_waits``: the last replies), or neither — a *round trip* the
protocol made the client wait for (``waits`` minus both). The reasons are read
from the stream's own decisions (``_window_full``, ``_finish``); if those change
name, every wait counts as a round trip, never the other way round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    LOCAL_HOSTNAME,
    RECIPIENT,
    SENDER,
    WORKLOADS,
    cpu_seconds,
    html_body,
    raw_message,
    recipients,
    status_kib,
    text_body,
)

CLIENTS = (
    "smtpsubmit",
    "smtpsubmit-async",
    "smtpsubmit-nochunking",
    "smtpsubmit-many",
    "smtpsubmit-many-async",
    "smtpsubmit-many-nochunking",
    "smtpsubmit-pool",
    "smtpsubmit-pool-async",
    "smtpsubmit-pool-iter",
    "smtpsubmit-pool-iter-async",
    "smtpsubmit-pool-rate",
    "smtplib",
    "aiosmtplib",
)
TIMEOUT = 60.0


# -- sending ready messages (W1, W2, W4, W6) ----------------------------------------------


WAITS = {"reads": 0, "waits": 0, "window_waits": 0, "drain_waits": 0}
_WHY = {"window": False, "drain": False}


def count_reply_waits() -> None:
    """Wrap the sync transport's reply read: count reads, and those that had to wait."""
    from smtpsubmit import batch
    from smtpsubmit.transport import SyncStream

    receive = SyncStream.receive

    def counted(self: Any, stage: str, timeout: float) -> bytes:
        WAITS["reads"] += 1
        if not select.select([self._sock], [], [], 0)[0]:
            WAITS["waits"] += 1
            if _WHY["drain"]:
                WAITS["drain_waits"] += 1
            elif _WHY["window"]:
                WAITS["window_waits"] += 1
        _WHY["window"] = False
        return receive(self, stage, timeout)

    SyncStream.receive = counted  # type: ignore[method-assign]
    stream = getattr(batch, "_Stream", None)
    window_full = getattr(stream, "_window_full", None)
    finish = getattr(stream, "_finish", None)
    if stream is None or window_full is None or finish is None:
        return

    def full(self: Any, txn: Any, divisor: int) -> bool:
        _WHY["window"] = result = window_full(self, txn, divisor)
        return bool(result)

    def finishing(self: Any) -> Any:
        _WHY["drain"] = True
        try:
            return (yield from finish(self))
        finally:
            _WHY["drain"] = False

    stream._window_full = full
    stream._finish = finishing


def _split(items: list[bytes], parts: int) -> list[list[bytes]]:
    return [items[i::parts] for i in range(parts)]


def _smtpsubmit_server(port: int, nochunking: bool = False) -> Any:
    from smtpsubmit import Option, Server

    return Server(
        "127.0.0.1",
        port=port,
        timeout=TIMEOUT,
        options=Option.EXTENDED,
        local_hostname=LOCAL_HOSTNAME,
        disable_extensions=frozenset({"CHUNKING"}) if nochunking else frozenset(),
    )


def _threads(work: Callable[[list[bytes]], int], shares: list[list[bytes]]) -> int:
    """Run ``work`` on each share in its own thread (or inline for one share)."""
    if len(shares) == 1:
        return work(shares[0])
    done: list[int] = []
    errors: list[BaseException] = []

    def target(share: list[bytes]) -> None:
        try:
            done.append(work(share))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(done)


def send_smtpsubmit(port: int, shares: list[list[bytes]], rcpts: list[str], client: str) -> int:
    from smtpsubmit import Client

    server = _smtpsubmit_server(port, nochunking=client == "smtpsubmit-nochunking")

    def work(messages: list[bytes]) -> int:
        with Client(server) as c:
            for data in messages:
                result = c.send(data, sender=SENDER, recipients=rcpts)
                if len(result.accepted) != len(rcpts):
                    raise RuntimeError(f"refused: {result.refused}")
        return len(messages)

    return _threads(work, shares)


def send_smtpsubmit_async(port: int, shares: list[list[bytes]], rcpts: list[str]) -> int:
    from smtpsubmit import AsyncClient

    server = _smtpsubmit_server(port)

    async def work(messages: list[bytes]) -> int:
        async with AsyncClient(server) as c:
            for data in messages:
                result = await c.send(data, sender=SENDER, recipients=rcpts)
                if len(result.accepted) != len(rcpts):
                    raise RuntimeError(f"refused: {result.refused}")
        return len(messages)

    async def main() -> int:
        return sum(await asyncio.gather(*(work(s) for s in shares)))

    return asyncio.run(main())


def _check(results: list[Any]) -> int:
    from smtpsubmit import SubmitResult

    bad = [r for r in results if not isinstance(r, SubmitResult)]
    if bad:
        raise RuntimeError(f"{len(bad)} messages failed, first: {bad[0]!r}")
    return len(results)


def send_smtpsubmit_many(
    port: int, shares: list[list[bytes]], rcpts: list[str], client: str, window: int | None
) -> int:
    """The whole share in one ``send_many`` call per connection (the stream)."""
    from smtpsubmit import AsyncClient, Client

    server = _smtpsubmit_server(port, nochunking=client.endswith("nochunking"))
    kw: dict[str, int] = {} if window is None else {"window": window}

    def work(messages: list[bytes]) -> int:
        with Client(server) as c:
            return _check(c.send_many([(m, SENDER, rcpts) for m in messages], **kw))

    async def awork(messages: list[bytes]) -> int:
        async with AsyncClient(server) as c:
            return _check(await c.send_many([(m, SENDER, rcpts) for m in messages], **kw))

    if client in ("smtpsubmit-many", "smtpsubmit-many-nochunking"):
        return _threads(work, shares)

    async def main() -> int:
        return sum(await asyncio.gather(*(awork(s) for s in shares)))

    return asyncio.run(main())


def send_pool(
    port: int, items: Iterable[tuple[bytes, str, list[str]]], conns: int, client: str
) -> int:
    """Every message in one ``Pool.send_many`` / ``AsyncPool.send_many`` over ``conns``
    (``-iter``: one ``send_iter``, each outcome checked and dropped as it comes)."""
    from smtpsubmit import AsyncPool, Pool, SubmitResult

    server = _smtpsubmit_server(port)
    if client == "smtpsubmit-pool":
        with Pool(server, max_connections=conns) as pool:
            return _check(pool.send_many(items))
    if client == "smtpsubmit-pool-iter":
        done = 0
        with Pool(server, max_connections=conns) as pool:
            for outcome in pool.send_iter(items):
                if not isinstance(outcome, SubmitResult):
                    raise RuntimeError(f"message {done} failed: {outcome!r}")
                done += 1
        return done

    async def main() -> int:
        async with AsyncPool(server, max_connections=conns) as pool:
            if client == "smtpsubmit-pool-async":
                return _check(await pool.send_many(items))
            done = 0
            async for outcome in pool.send_iter(items):
                if not isinstance(outcome, SubmitResult):
                    raise RuntimeError(f"message {done} failed: {outcome!r}")
                done += 1
            return done

    return asyncio.run(main())


def send_rate(
    port: int, items: Iterable[tuple[bytes, str, list[str]]], conns: int, rate: int, per: float
) -> int:
    """RL: every message through one ``Pool`` sharing ``RateLimit(rate, per)``."""
    from smtpsubmit import Pool, RateLimit, SubmitResult

    done = 0
    limit = RateLimit(rate, per)
    with Pool(_smtpsubmit_server(port), max_connections=conns, rate_limit=limit) as pool:
        for outcome in pool.send_iter(items):
            if not isinstance(outcome, SubmitResult):
                raise RuntimeError(f"message {done} failed: {outcome!r}")
            done += 1
    return done


def lazy_items(
    count: int, size: int, rcpts: list[str], to: str
) -> Iterator[tuple[bytes, str, list[str]]]:
    """W7's input: each message made when the pool asks for it, so the input costs no memory."""
    for i in range(count):
        yield raw_message(i, size, to), SENDER, rcpts


def send_smtplib(port: int, shares: list[list[bytes]], rcpts: list[str]) -> int:
    import smtplib

    def work(messages: list[bytes]) -> int:
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname=LOCAL_HOSTNAME, timeout=TIMEOUT
        ) as smtp:
            for data in messages:
                refused = smtp.sendmail(SENDER, rcpts, data)
                if refused:
                    raise RuntimeError(f"refused: {refused}")
        return len(messages)

    return _threads(work, shares)


def send_aiosmtplib(port: int, shares: list[list[bytes]], rcpts: list[str]) -> int:
    import aiosmtplib

    async def work(messages: list[bytes]) -> int:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            local_hostname=LOCAL_HOSTNAME,
            timeout=TIMEOUT,
            start_tls=False,
        )
        await smtp.connect()
        try:
            for data in messages:
                refused, _ = await smtp.sendmail(SENDER, rcpts, data)
                if refused:
                    raise RuntimeError(f"refused: {refused}")
        finally:
            await smtp.quit()
        return len(messages)

    async def main() -> int:
        return sum(await asyncio.gather(*(work(s) for s in shares)))

    return asyncio.run(main())


# -- composing (W3, W5) ---------------------------------------------------------------------


Bodies = Sequence[tuple[str, str]]


def make_bodies(count: int) -> list[tuple[str, str]]:
    """The text and HTML bodies of W5a, made before the clock starts."""
    out = []
    for i in range(count):
        text = text_body(i, 150)
        out.append((text, html_body(text)))
    return out


def compose_smtpsubmit(index: int, attachment: Path | None, bodies: Bodies = ()) -> Any:
    from smtpsubmit.message import Message

    if attachment is not None:
        return Message(
            sender=f"Bench <{SENDER}>",
            to=f"Recipient <{RECIPIENT}>",
            subject=f"Your file {index}",
            text="Please find the file attached.\n",
            attachments=[attachment],
        )
    text, html = bodies[index]
    return Message(
        sender=f"Bench <{SENDER}>",
        to=f"Recipient <{RECIPIENT}>",
        subject=f"Newsletter {index}",
        text=text,
        html=html,
    )


def compose_email(index: int, attachment: Path | None, bodies: Bodies = ()) -> Any:
    """The stdlib way: EmailMessage (policy=SMTP), with the same headers smtpsubmit writes."""
    import email.policy
    import email.utils
    import mimetypes
    from email.message import EmailMessage

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Bench <{SENDER}>"
    msg["To"] = f"Recipient <{RECIPIENT}>"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain="example.org")
    if attachment is not None:
        msg["Subject"] = f"Your file {index}"
        msg.set_content("Please find the file attached.\n")
        ctype, _ = mimetypes.guess_type(attachment.name)
        maintype, subtype = (ctype or "application/octet-stream").split("/")
        msg.add_attachment(
            attachment.read_bytes(), maintype=maintype, subtype=subtype, filename=attachment.name
        )
        return msg
    text, html = bodies[index]
    msg["Subject"] = f"Newsletter {index}"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def run_compose(
    client: str, count: int, attachment: Path | None, bodies: Bodies
) -> tuple[int, int]:
    compose = compose_smtpsubmit if client == "smtpsubmit" else compose_email
    octets = 0
    for i in range(count):
        octets += len(compose(i, attachment, bodies).as_bytes())
    return count, octets


def run_attach(client: str, port: int, attachment: Path) -> tuple[int, int]:
    """Compose one message with the attachment and send it (the whole job is timed)."""
    if client in ("smtpsubmit", "smtpsubmit-async"):
        message = compose_smtpsubmit(0, attachment)
        if client == "smtpsubmit":
            from smtpsubmit import Client

            with Client(_smtpsubmit_server(port)) as c:
                result = c.send(message)
        else:
            from smtpsubmit import AsyncClient

            async def main() -> Any:
                async with AsyncClient(_smtpsubmit_server(port)) as c:
                    return await c.send(message)

            result = asyncio.run(main())
        return 1, result.size
    data = compose_email(0, attachment).as_bytes()
    if client == "smtplib":
        send_smtplib(port, [[data]], [RECIPIENT])
    else:
        send_aiosmtplib(port, [[data]], [RECIPIENT])
    return 1, len(data)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__)
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--port", type=int, default=0, help="the SMTP server's port")
    parser.add_argument("--count", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--rcpts", type=int)
    parser.add_argument("--conns", type=int)
    parser.add_argument("--window", type=int, help="send_many's window (CHUNKING)")
    parser.add_argument("--file", type=Path, help="the attachment (W3, W5b)")
    parser.add_argument("--to", default=RECIPIENT, help="the (first) envelope recipient")
    args = parser.parse_args(argv)

    spec = dict(WORKLOADS[args.workload])
    for key in ("count", "size", "rcpts", "conns"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    kind = spec["kind"]
    if kind in ("attach", "compose-attach") and args.file is None:
        parser.error(f"{args.workload} needs --file")

    # Imports and inputs before the clock starts: the same bytes for every client.
    if args.client.startswith("smtpsubmit"):
        import smtpsubmit
        import smtpsubmit.message  # noqa: F401
    elif args.client == "aiosmtplib":
        import aiosmtplib  # noqa: F401
    shares: list[list[bytes]] = []
    messages: list[bytes] = []
    rcpts: list[str] = []
    bodies: Bodies = []
    if kind == "compose":
        bodies = make_bodies(int(spec["count"]))  # type: ignore[call-overload]
    if args.client.startswith("smtpsubmit") and not args.client.endswith("async"):
        count_reply_waits()
    if kind in ("send", "stream", "rate"):
        count, size = int(spec["count"]), int(spec["size"])  # type: ignore[call-overload]
        rcpts = recipients(int(spec["rcpts"]), args.to)  # type: ignore[call-overload]
    if kind == "send":
        messages = [raw_message(i, size, args.to) for i in range(count)]
        shares = _split(messages, int(spec["conns"]))  # type: ignore[call-overload]
    rss_base = status_kib("VmRSS")

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    if kind == "rate":
        done = send_rate(
            args.port,
            lazy_items(count, size, rcpts, args.to),
            int(spec["conns"]),  # type: ignore[call-overload]
            int(spec["rate"]),  # type: ignore[call-overload]
            float(spec["per"]),  # type: ignore[arg-type]
        )
        octets = count * size
    elif kind == "stream":
        conns = int(spec["conns"])  # type: ignore[call-overload]
        done = send_pool(args.port, lazy_items(count, size, rcpts, args.to), conns, args.client)
        octets = count * size
    elif kind == "send":
        if args.client.startswith("smtpsubmit-pool"):
            items = [(m, SENDER, rcpts) for m in messages]  # input order; the pool spreads them
            done = send_pool(args.port, items, len(shares), args.client)
        elif args.client == "smtpsubmit-async":
            done = send_smtpsubmit_async(args.port, shares, rcpts)
        elif args.client.startswith("smtpsubmit-many"):
            done = send_smtpsubmit_many(args.port, shares, rcpts, args.client, args.window)
        elif args.client.startswith("smtpsubmit"):
            done = send_smtpsubmit(args.port, shares, rcpts, args.client)
        elif args.client == "smtplib":
            done = send_smtplib(args.port, shares, rcpts)
        else:
            done = send_aiosmtplib(args.port, shares, rcpts)
        octets = sum(len(m) for share in shares for m in share)
    elif kind == "attach":
        done, octets = run_attach(args.client, args.port, args.file)
    else:
        count = int(spec["count"])  # type: ignore[call-overload]
        done, octets = run_compose(
            args.client, count, args.file if kind == "compose-attach" else None, bodies
        )
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0

    record = {
        "client": args.client,
        "workload": args.workload,
        "messages": done,
        "octets": octets,
        "seconds": seconds,
        "cpu_s": cpu,
        "rss_base_kib": rss_base,
        "vmhwm_kib": status_kib("VmHWM"),
        "pid": os.getpid(),
    }
    if WAITS["reads"]:
        record.update(WAITS)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
