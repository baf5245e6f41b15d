"""``MailHandler``: log records by email without ever blocking the code that logs.

The stdlib's ``logging.handlers.SMTPHandler`` opens a connection per record
inside ``emit``: a slow or dead mail server stalls the application, and an
error storm becomes a mail storm. This handler only appends the formatted
record to a bounded buffer; a background thread sends one digest message per
``interval`` (so at most one message per interval, however many records), and
``flush()`` sends what is buffered at once. When the server fails, the
records stay buffered for the next digest; past ``capacity`` the oldest are
dropped, counted, announced once on stderr and in the next digest.

Records the handler's own sending produces (the ``smtpsubmit`` loggers) never
come back through it. Usable from ``logging.config.dictConfig``: every
argument is a plain value, and the server may be given as a URL.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

from smtpsubmit.message import Message
from smtpsubmit.server import Server
from smtpsubmit.submit import submit_message

__all__ = ["MailHandler"]


class MailHandler(logging.Handler):
    """Batch records into one digest message per ``interval`` seconds, sent off-thread.

    ``server_or_transport`` is a :class:`~smtpsubmit.Server`, a server URL
    (``"smtp+starttls://user:pass@host"``) or anything with a
    ``send(message)`` method — a ``Pool``, a ``Client``, an outbox, a
    ``MemoryTransport``.
    """

    def __init__(
        self,
        server_or_transport: Any,
        sender: str,
        recipients: str | Sequence[str],
        *,
        subject: str = "Log records",
        interval: float = 60.0,
        capacity: int = 1000,
        level: int | str = logging.ERROR,
    ) -> None:
        super().__init__(level)
        if interval <= 0 or capacity < 1:
            raise ValueError("interval must be positive and capacity at least 1")
        if isinstance(server_or_transport, str):
            server_or_transport = Server.from_url(server_or_transport)
        self._target = server_or_transport
        self.sender = sender
        self.recipients = [recipients] if isinstance(recipients, str) else list(recipients)
        self.subject = subject
        self.interval = float(interval)
        self.capacity = capacity
        Message(sender=sender, to=self.recipients, text="")  # bad addresses fail here, not later
        self._buffer: collections.deque[str] = collections.deque()
        self._buffer_lock = threading.Lock()  # held only to touch the buffer: emit never waits
        self._send_lock = threading.Lock()  # one digest at a time (thread or flush)
        self._thread_lock = threading.Lock()  # starting the thread, never held while sending
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # records lost to a full buffer since the last digest
        self._warned = False

    # -- logging.Handler --------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Buffer the formatted record; start the sender thread on first use."""
        if getattr(self._local, "sending", False) or record.name.startswith("smtpsubmit"):
            return  # our own delivery's log lines: never mail them through ourselves
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._buffer_lock:
            self._buffer.append(text)
            overflow = len(self._buffer) - self.capacity
            for _ in range(max(overflow, 0)):
                self._buffer.popleft()
                self.dropped += 1
        if overflow > 0:
            self._warn_dropped()
        self._ensure_thread()

    def flush(self) -> None:
        """Send what is buffered now, in the calling thread (used at exit too)."""
        self._send_digest()

    def close(self) -> None:
        """Stop the sender thread and send what is left."""
        self._closing.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._join_timeout())
        self._send_digest()
        super().close()

    # -- sending ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closing.is_set():
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="smtpsubmit-MailHandler", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.interval)
            if self._closing.is_set():
                return
            self._send_digest()

    def _send_digest(self) -> None:
        with self._send_lock:
            with self._buffer_lock:
                records, dropped = list(self._buffer), self.dropped
                self._buffer.clear()
                self.dropped = 0
            if not records and not dropped:
                return
            try:
                self._deliver(records, dropped)
            except Exception as exc:  # a failing server never raises into the application
                self._requeue(records, dropped, exc)

    def _deliver(self, records: list[str], dropped: int) -> None:
        lines = list(records)
        if dropped:
            lines.append(f"[{dropped} earlier record(s) dropped: the buffer was full]")
        count = f"{len(records)} record" + ("" if len(records) == 1 else "s")
        message = Message(
            sender=self.sender,
            to=self.recipients,
            subject=f"{self.subject} ({count})",
            text="\n\n".join(lines) + "\n",
        )
        self._local.sending = True
        try:
            if isinstance(self._target, Server):
                submit_message(message, self._target)
            else:
                self._target.send(message)
        finally:
            self._local.sending = False

    def _requeue(self, records: list[str], dropped: int, exc: Exception) -> None:
        """Keep the unsent records for the next digest, within ``capacity``."""
        with self._buffer_lock:
            self._buffer.extendleft(reversed(records))
            self.dropped += dropped
            while len(self._buffer) > self.capacity:
                self._buffer.popleft()
                self.dropped += 1
            lost = self.dropped
        if not self._warned:
            self._warned = True
            print(
                f"smtpsubmit.logging.MailHandler: sending failed ({type(exc).__name__}: {exc}); "
                "records stay buffered" + (f", {lost} dropped" if lost else ""),
                file=sys.stderr,
            )

    def _warn_dropped(self) -> None:
        if not self._warned:
            self._warned = True
            print(
                f"smtpsubmit.logging.MailHandler: buffer full ({self.capacity} records); "
                "dropping the oldest, counted in the next digest",
                file=sys.stderr,
            )

    def _join_timeout(self) -> float:
        timeout = getattr(self._target, "effective_timeout", None)
        return float(timeout) * 4 if timeout else 30.0

    def __repr__(self) -> str:
        return (
            f"<MailHandler {logging.getLevelName(self.level)} to {len(self.recipients)} "
            f"recipient(s), {len(self._buffer)} buffered, {self.dropped} dropped>"
        )
