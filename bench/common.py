"""What the orchestrator and the runners share: the messages and a few measurements.

Every client of a workload sends the very same bytes: the messages are made
here, deterministically, from the message index alone.
"""

from __future__ import annotations

import random
import resource
from pathlib import Path

SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.net"
LOCAL_HOSTNAME = "bench.example.org"

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def recipients(count: int, address: str = RECIPIENT) -> list[str]:
    """``count`` distinct envelope recipients (``rcpt@…``, then ``rcpt1@…`` …)."""
    local, domain = address.split("@")
    return [address if i == 0 else f"{local}{i}@{domain}" for i in range(count)]


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
    rng = random.Random(index)
    lines: list[bytes] = []
    room = size - len(head)
    if room < 2:
        raise ValueError(f"a message needs at least {len(head) + 2} octets")
    while room >= 80:  # a line is at most 71 octets, so at least 9 remain for the last one
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < 60:
            words.append(rng.choice(_WORDS))
        line = (" ".join(words) + "\r\n").encode()
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
