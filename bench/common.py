"""What the orchestrator and the runners share: the messages and a few measurements.

Every client of a workload sends the very same bytes: the messages are made
here, deterministically, from the message index alone.
"""

from __future__ import annotations

import functools
import random
import resource
from pathlib import Path

SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.net"
LOCAL_HOSTNAME = "bench.example.org"

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def recipients(count: int, address: str = RECIPIENT) -> list[str]:
    """``count`` distinct envelope recipients (``rcpt@…``, then ``rcpt1@…`` …)."""
    local, domain = address.split("@")
    return [address if i == 0 else f"{local}{i}@{domain}" for i in range(count)]


@functools.cache
def _line_pool() -> list[bytes]:
    """512 lines of words, 60-71 octets with their CRLF."""
    rng = random.Random(0)
    pool = []
    for _ in range(512):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 60:
            words.append(rng.choice(_WORDS))
        pool.append((" ".join(words) + "\r\n").encode())
    return pool


def raw_message(index: int, size: int, to: str = RECIPIENT) -> bytes:
    """A plain-text RFC 5322 message of exactly ``size`` octets (CRLF, 7-bit).

    The body is lines of words (60-75 octets), so nothing needs dot-stuffing or
    re-encoding; the Message-ID differs per ``index``.
    """
    head = (
        f"From: Bench <{SENDER}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: benchmark message {index}\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <bench.{index}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
    ).encode()
    lines = []
    room = size - len(head)
    if room < 2:
        raise ValueError(f"a message needs at least {len(head) + 2} octets")
    pool = _line_pool()
    rng = random.Random(index)
    while room >= 80:  # a line is at most 71 octets, so at least 9 remain for the last one
        line = pool[rng.randrange(len(pool))]
        lines.append(line)
        room -= len(line)
    lines.append(b"-" * (room - 2) + b"\r\n")
    data = head + b"".join(lines)
    assert len(data) == size, (len(data), size)
    return data


def write_random_file(path: Path, size: int, seed: int = 8) -> None:
    """``size`` incompressible octets (an attachment), written 1 MiB at a time."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``Vm*`` field of /proc/PID/status in KiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the workloads ------------------------------------------------------------------------
#
# kind "send":    ``count`` messages of ``size`` octets, ``rcpts`` recipients each, spread
#                 over ``conns`` connections (one connection = strictly sequential).
# kind "attach":  one message with a ``file_size`` attachment, composed from a file and sent.
# kind "stream":  as "send", but the runner makes the messages lazily (a generator) and
#                 hands them to one ``Pool.send_iter`` or ``send_many`` (W7: memory must
#                 not grow with count).
# "counts":       per-client message counts where one count does not fit every client
#                 (W8: over a slow link smtplib manages ~10 msg/s); ratios are per message.
# "delay":        the one-way delay of a ``bench.delay.DelayProxy`` put in front of the server.
# kind "rate":    ``count`` messages through one ``Pool`` of ``conns`` connections with
#                 ``RateLimit(rate, per)``, into a server that timestamps each delivery: the
#                 first ``span`` seconds must hold ``rate * span / per`` messages, and no
#                 ``per``-second window more than ``rate`` (RL).
# kind "compose": ``count`` text+HTML messages composed to bytes (no network).
# kind "compose-attach": ``count`` messages with a ``file_size`` attachment, to bytes.

WORKLOADS: dict[str, dict[str, object]] = {
    "W1": {"kind": "send", "count": 2000, "size": 2048, "rcpts": 1, "conns": 1},
    "W2": {"kind": "send", "count": 2000, "size": 2048, "rcpts": 1, "conns": 20},
    "W3": {"kind": "attach", "file_size": 50_000_000},
    "W3-big": {"kind": "attach", "file_size": 500_000_000},
    "W4": {"kind": "send", "count": 2000, "size": 2048, "rcpts": 10, "conns": 1},
    "W5a": {"kind": "compose", "count": 10_000},
    "W5b": {"kind": "compose-attach", "count": 200, "file_size": 1_000_000},
    "W6": {"kind": "send", "count": 200, "size": 100_000, "rcpts": 1, "conns": 1},
    "W1s": {"kind": "send", "count": 20_000, "size": 2048, "rcpts": 1, "conns": 1},
    "W8": {
        "kind": "send",
        "count": 200,
        "size": 2048,
        "rcpts": 1,
        "conns": 1,
        "delay": 0.010,
        "counts": {"smtplib": 100, "smtp-source": 100, "smtpsubmit": 200, "smtpsubmit-many": 400},
    },
    "W8c": {
        "kind": "send",
        "count": 200,
        "size": 2048,
        "rcpts": 1,
        "conns": 1,
        "delay": 0.010,
        "counts": {
            "smtplib": 100,
            "smtp-source": 100,
            "many-w1": 200,
            "many-w10": 1000,
            "many-w100": 2000,
        },
    },
    "W4s": {"kind": "send", "count": 2000, "size": 2048, "rcpts": 10, "conns": 1},
    "W6s": {"kind": "send", "count": 2000, "size": 2048, "rcpts": 1, "conns": 1},
    "RL": {
        "kind": "rate",
        "count": 2200,
        "size": 2048,
        "rcpts": 1,
        "conns": 8,
        "rate": 200,
        "per": 1.0,
        "span": 10.0,
    },
    "W7": {
        "kind": "stream",
        "count": 100_000,
        "size": 2048,
        "rcpts": 1,
        "conns": 4,
        "counts": {
            "pool-10k": 10_000,
            "pool-100k": 100_000,
            "iter-10k": 10_000,
            "iter-100k": 100_000,
        },
    },
}

# --quick: the same shapes, smaller.
QUICK: dict[str, dict[str, object]] = {
    "W1": {"count": 1000},
    "W2": {"count": 1000},
    "W3": {"file_size": 10_000_000},
    "W4": {"count": 1000},
    "W5a": {"count": 1000},
    "W5b": {"count": 20},
    "W6": {"count": 30},
    "W1s": {"count": 5000},
    "W4s": {"count": 1000},
    "W6s": {"count": 300},
    "RL": {"count": 440, "span": 2.0},
    "W7": {
        "counts": {"pool-10k": 1000, "pool-100k": 10_000, "iter-10k": 1000, "iter-100k": 10_000}
    },
}

DESCRIPTIONS = {
    "W1": "2,000 x 2 KB, 1 recipient, one connection",
    "W2": "2,000 x 2 KB, 1 recipient, 20 concurrent connections",
    "W3": "one message, 50 MB attachment from a file",
    "W3-big": "one message, 500 MB attachment from a file",
    "W4": "2,000 x 2 KB, 10 recipients, one connection",
    "W5a": "compose 10,000 text+HTML messages to bytes",
    "W5b": "compose 200 messages with a 1 MB attachment to bytes",
    "W6": "200 x 100 KB to real Postfix smtpd (BDAT vs DATA)",
    "W1s": "W1 as a stream: 20,000 x 2 KB, one connection (send_many)",
    "W8": "W1s over a 20 ms round trip (delay proxy) to smtp-sink: a DATA stream",
    "W8c": "W1s over a 20 ms round trip to Postfix with CHUNKING: BDAT, window 1/10/100",
    "W4s": "W4 as a stream: 2,000 x 2 KB, 10 recipients, one connection (send_many)",
    "W6s": "a stream of 2,000 x 2 KB into real Postfix smtpd with CHUNKING: the client's share",
    "RL": "RateLimit(messages=200, per=1.0), 8 connections, 2,200 messages: 10 s at the limit",
    "W7": "10,000 vs 100,000 x 2 KB through Pool.send_iter / send_many (4 connections), lazy",
}


def text_body(index: int, words: int) -> str:
    rng = random.Random(10_000 + index)
    out, line = [], []
    for _ in range(words):
        line.append(rng.choice(_WORDS))
        if len(line) == 10:
            out.append(" ".join(line))
            line = []
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def html_body(text: str) -> str:
    paragraphs = "".join(f"<p>{line}</p>\n" for line in text.splitlines())
    return f"<html><body>\n<h1>Newsletter</h1>\n{paragraphs}</body></html>\n"
