"""Transports: one ``send`` / ``send_many`` shape for every way a message can leave.

:class:`Transport` (and :class:`AsyncTransport`) is the structural type that
``Client``, ``Pool`` and the transports here all satisfy, so application code
can take "something that sends mail" and be handed a real connection in
production and a :class:`MemoryTransport` in its tests.

:class:`FileTransport` writes what would have been sent — the exact bytes,
rendered for a server that offers 8BITMIME and SMTPUTF8, Bcc removed, CRLF
line ends — as ``<message-id>.eml`` plus the envelope as ``<message-id>.json``.
:class:`MemoryTransport` keeps the same in a list. Both render through the
same preparation as a real submission, so what a test sees is what a server
would have received.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from smtpsubmit.dkim.stream import sign_source
from smtpsubmit.errors import MessageError, SmtpError
from smtpsubmit.prepare import MessageInput, prepare_submission
from smtpsubmit.protocol import Capabilities, LineEndingNormalizer
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult

__all__ = [
    "AsyncFileTransport",
    "AsyncMemoryTransport",
    "AsyncTransport",
    "FileTransport",
    "MemoryTransport",
    "SentMessage",
    "Transport",
]

BatchResult = SubmitResult | SmtpError | MessageError

# What a file or memory "server" offers: the extensions that decide how bytes are rendered.
_FULL_SERVER = Capabilities({"8BITMIME": "", "SMTPUTF8": ""})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@+=-]")


@runtime_checkable
class Transport(Protocol):
    """Something that sends messages: ``Client``, ``Pool``, the transports of this module."""

    def send(self, message: MessageInput, **envelope: Any) -> SubmitResult: ...

    def send_many(self, messages: Iterable[Any]) -> list[BatchResult]: ...


@runtime_checkable
class AsyncTransport(Protocol):
    """The asyncio twin of :class:`Transport` (``AsyncClient``, ``AsyncPool``, ...)."""

    async def send(self, message: MessageInput, **envelope: Any) -> SubmitResult: ...

    async def send_many(self, messages: Iterable[Any]) -> list[BatchResult]: ...


@dataclass(frozen=True)
class SentMessage:
    """One message as a server would have received it."""

    message: Any  # the Message given, or None for ready bytes
    raw: bytes
    sender: str
    recipients: list[str]
    message_id: str | None

    @property
    def envelope(self) -> dict[str, Any]:
        return {"sender": self.sender, "recipients": list(self.recipients)}


class _Session:
    """The one thing preparation asks of a session: what the server offers."""

    capabilities = _FULL_SERVER


def render(message: MessageInput, **envelope: Any) -> SentMessage:
    """The bytes and envelope a submission of ``message`` would send (no network)."""
    prepared, source = prepare_submission(
        message,
        _Session(),
        sender=envelope.get("sender"),
        recipients=envelope.get("recipients"),
        dsn=envelope.get("dsn"),
    )
    prepared, source = sign_source(prepared, source, envelope.get("dkim"))
    normalizer = LineEndingNormalizer()
    raw = b"".join(normalizer.feed(chunk) for chunk in source()) + normalizer.flush()
    ready = isinstance(message, bytes | bytearray | memoryview) or hasattr(message, "read")
    return SentMessage(
        None if ready else message,
        raw,
        prepared.sender,
        list(prepared.recipients),
        prepared.message_id,
    )


def split_item(item: Any) -> tuple[MessageInput, dict[str, Any]]:
    """A ``send_many`` item as (message, envelope keywords).

    An item is a ``Message``, a ``(raw, sender, recipients)`` tuple, or an
    object with ``raw``, ``sender`` and ``recipients`` attributes.
    """
    if isinstance(item, tuple):
        if len(item) != 3:
            raise MessageError("a ready message item is (raw, sender, recipients)")
        raw, sender, recipients = item
        return raw, {"sender": sender, "recipients": recipients}
    if all(hasattr(item, name) for name in ("raw", "sender", "recipients")):
        return item.raw, {"sender": item.sender, "recipients": item.recipients}
    return item, {}


def _result(sent: SentMessage, where: str) -> SubmitResult:
    return SubmitResult(
        sent.message_id,
        sent.sender,
        list(sent.recipients),
        {},
        Reply(250, f"2.0.0 {where}", "2.0.0"),
        len(sent.raw),
    )


def _each(send: Any, messages: Iterable[Any]) -> list[BatchResult]:
    results: list[BatchResult] = []
    for item in messages:
        try:
            message, envelope = split_item(item)
            results.append(send(message, **envelope))
        except (SmtpError, MessageError) as exc:
            results.append(exc)
    return results


class MemoryTransport:
    """Records messages instead of sending them, for an application's own tests.

    ``outbox`` holds a :class:`SentMessage` per send (``.message``, ``.raw``,
    ``.sender``, ``.recipients``); ``clear()`` empties it. Thread-safe.
    """

    def __init__(self) -> None:
        self.outbox: list[SentMessage] = []
        self._lock = threading.Lock()

    def send(self, message: MessageInput, **envelope: Any) -> SubmitResult:
        sent = render(message, **envelope)
        with self._lock:
            self.outbox.append(sent)
        return _result(sent, "kept in memory")

    def send_many(self, messages: Iterable[Any]) -> list[BatchResult]:
        return _each(self.send, messages)

    def clear(self) -> None:
        with self._lock:
            self.outbox.clear()

    def __repr__(self) -> str:
        return f"<MemoryTransport {len(self.outbox)} message(s)>"


class FileTransport:
    """Writes ``<message-id>.eml`` (the exact bytes) and ``<message-id>.json`` (envelope).

    Each file is written to a temporary name, flushed to disk and renamed, so
    a reader never sees a partial file; the ``.json`` appears after its
    ``.eml``, so it marks a complete message.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, message: MessageInput, **envelope: Any) -> SubmitResult:
        sent = render(message, **envelope)
        stem = _file_stem(sent.message_id)
        eml = self.directory / f"{stem}.eml"
        _write_atomically(eml, sent.raw)
        meta = {**sent.envelope, "message_id": sent.message_id, "size": len(sent.raw)}
        _write_atomically(eml.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        return _result(sent, f"written to {eml.name}")

    def send_many(self, messages: Iterable[Any]) -> list[BatchResult]:
        return _each(self.send, messages)

    def __repr__(self) -> str:
        return f"<FileTransport {str(self.directory)!r}>"


class AsyncMemoryTransport(MemoryTransport):
    """:class:`MemoryTransport` with coroutine ``send`` / ``send_many``."""

    async def send(self, message: MessageInput, **envelope: Any) -> SubmitResult:  # type: ignore[override]
        return MemoryTransport.send(self, message, **envelope)

    async def send_many(self, messages: Iterable[Any]) -> list[BatchResult]:  # type: ignore[override]
        return _each(lambda m, **e: MemoryTransport.send(self, m, **e), messages)


class AsyncFileTransport(FileTransport):
    """:class:`FileTransport` whose writes run in a worker thread (the loop never blocks)."""

    async def send(self, message: MessageInput, **envelope: Any) -> SubmitResult:  # type: ignore[override]
        return await asyncio.to_thread(FileTransport.send, self, message, **envelope)

    async def send_many(self, messages: Iterable[Any]) -> list[BatchResult]:  # type: ignore[override]
        items: Sequence[Any] = list(messages)
        send = lambda m, **e: FileTransport.send(self, m, **e)  # noqa: E731
        return await asyncio.to_thread(_each, send, items)


def _file_stem(message_id: str | None) -> str:
    """A safe file name from the Message-ID (unique already), or a fresh one."""
    if not message_id:
        return uuid.uuid4().hex
    stem = _UNSAFE_NAME.sub("_", message_id)[:200].lstrip(".")
    return stem or uuid.uuid4().hex


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
