"""The servers the benchmark talks to: Postfix's smtp-sink, and a private Postfix smtpd.

Both are stopped by their owner in a ``finally`` (and smtp-sink by its own PID).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
ROOT = Path(__file__).resolve().parent.parent
_COUNTER = re.compile(rb"mesg=(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.02)


class Sink:
    """smtp-sink on 127.0.0.1 (a free port): PIPELINING and 8BITMIME, no AUTH.

    ``-c`` makes it print running counters (``sess=… quit=… mesg=N``) to its
    stdout, a file here: :meth:`messages` reads the last count, so every run
    can be checked to have delivered all its messages.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "smtp-sink.out"
        # -a: no AUTH (it would answer AUTH with 250); PIPELINING and 8BITMIME are on by
        # default. -c: counters. -4: IPv4. Backlog 256 (W2 opens 20 connections at once).
        cmd = [SMTP_SINK, "-a", "-c", "-4", "-t", "60", f"127.0.0.1:{self.port}", "256"]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]  # required as root
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_greeting(self.port)
        except BaseException:
            self.stop()
            raise
        self.command = " ".join(cmd)

    def messages(self) -> int:
        """Messages the sink has received so far (the last ``mesg=`` counter)."""
        with self.log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 200, 0))
            counts = _COUNTER.findall(f.read())
        return int(counts[-1]) if counts else 0

    def wait_for_messages(self, expected: int, timeout: float = 5) -> int:
        deadline = time.monotonic() + timeout
        while (seen := self.messages()) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Postfix:
    """The test suite's private Postfix (``tests/servers/postfix.py``), for CHUNKING.

    Mail goes to the Maildir user ``alice@example.test``; :meth:`delivered`
    counts the files in her ``new/`` so every run can be checked and the queue
    drained before the next one starts.
    """

    USER = "alice"
    ADDRESS = "alice@example.test"

    def __init__(self) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.servers.postfix import start_postfix

        try:
            self.server: Any = start_postfix()
        except Exception:
            raise
        except BaseException as exc:  # pytest.fail() raises an OutcomeException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise RuntimeError(str(exc)) from None
        self.port: int = self.server.plain
        self.command = f"private Postfix smtpd (tests/servers/postfix.py), port 'plain' {self.port}"

    def delivered(self) -> int:
        new = self.server.mail_dir / self.USER / "new"
        with contextlib.suppress(FileNotFoundError):
            return sum(1 for _ in new.iterdir())
        return 0

    def wait_for_delivered(self, expected: int, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while (seen := self.delivered()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen

    def stop(self) -> None:
        self.server.stop()


class Stamps:
    """aiosmtpd on 127.0.0.1 (a free port, in a thread of the orchestrator) that records
    when each message's data was accepted, for the rate-limit workload (RL).

    The stamps are taken by the server, not the client: what the limit must hold
    is what the receiving side counts (as Postfix's anvil does).
    """

    def __init__(self) -> None:
        import threading
        import warnings

        from aiosmtpd.controller import Controller

        stamps: list[float] = []
        lock = threading.Lock()

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                with lock:
                    stamps.append(time.monotonic())
                return "250 2.0.0 OK"

        self.stamps = stamps
        self._lock = lock
        self.port = free_port()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.controller = Controller(
                Handler(), hostname="127.0.0.1", port=self.port, ready_timeout=10.0
            )
            self.controller.start()
        self.command = f"aiosmtpd (timestamps each delivery) on 127.0.0.1:{self.port}"

    def messages(self) -> int:
        with self._lock:
            return len(self.stamps)

    def wait_for_messages(self, expected: int, timeout: float = 5) -> int:
        deadline = time.monotonic() + timeout
        while (seen := self.messages()) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return seen

    def since(self, start: int) -> list[float]:
        with self._lock:
            return sorted(self.stamps[start:])

    def stop(self) -> None:
        self.controller.stop()


def window_counts(stamps: list[float], span: float, per: float) -> tuple[int, int]:
    """(messages in the first ``span`` seconds from the first, most in any ``per`` window)."""
    if not stamps:
        return 0, 0
    first = stamps[0]
    in_span = sum(1 for t in stamps if t - first < span)
    most, lo = 0, 0
    for hi, t in enumerate(stamps):  # every window that ends at a delivery
        while t - stamps[lo] >= per:
            lo += 1
        most = max(most, hi - lo + 1)
    return in_span, most
