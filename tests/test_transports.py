"""FileTransport and MemoryTransport record exactly what a server would have received."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from smtpsubmit import Message, MessageError, Server, submit_message
from smtpsubmit.transports import (
    AsyncFileTransport,
    AsyncMemoryTransport,
    AsyncTransport,
    FileTransport,
    MemoryTransport,
    Transport,
)
from tests.servers.aiosmtpd_server import AiosmtpdServer

RAW = (
    b"From: a@example.org\nTo: b@example.org\nBcc: secret@example.org\n"
    b"Subject: ready\nMessage-ID: <ready.1@example.org>\n\nline one\nline two"
)


def composed(**kw: object) -> Message:
    fields: dict[str, object] = {
        "sender": "Me <me@example.org>",
        "to": "you@example.org",
        "bcc": "hidden@example.org",
        "subject": "Grüße",
        "text": "Hello\nthere",
        "attachments": [],
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_memory_transport_bytes_equal_what_a_server_stores(
    aiosmtpd_server: AiosmtpdServer,
) -> None:
    message = composed()
    memory = MemoryTransport()
    result = memory.send(message)
    submit_message(message, Server(aiosmtpd_server.host, port=aiosmtpd_server.port))
    (received,) = aiosmtpd_server.wait_for(1)
    (kept,) = memory.outbox
    assert kept.raw == received.original_content
    assert kept.message is message
    assert (kept.sender, kept.recipients) == ("me@example.org", received.rcpt_tos)
    assert result.accepted == ["you@example.org", "hidden@example.org"]
    assert result.message_id == kept.message_id and kept.message_id
    assert b"hidden@example.org" not in kept.raw  # Bcc only in the envelope


def test_ready_message_items_and_errors_as_values() -> None:
    memory = MemoryTransport()
    results = memory.send_many(
        [
            (RAW, "a@example.org", ["b@example.org"]),
            composed(),
            (RAW, "not an address", ["b@example.org"]),
        ]
    )
    assert [type(r).__name__ for r in results] == ["SubmitResult", "SubmitResult", "MessageError"]
    ready, message = memory.outbox
    assert ready.message is None and message.message is not None
    assert ready.raw.endswith(b"line one\r\nline two\r\n")  # CRLF, as a server stores it
    assert b"\r\n\n" not in ready.raw and b"\n\n" not in ready.raw.replace(b"\r\n", b"")
    memory.clear()
    assert memory.outbox == []


def test_file_transport_writes_eml_and_envelope_atomically(tmp_path: Path) -> None:
    files = FileTransport(tmp_path / "mail")
    memory = MemoryTransport()
    message = composed()
    result = files.send(message)
    memory.send(message)
    (eml,) = sorted((tmp_path / "mail").glob("*.eml"))
    assert eml.read_bytes() == memory.outbox[0].raw
    meta = json.loads(eml.with_suffix(".json").read_text())
    assert meta == {
        "sender": "me@example.org",
        "recipients": ["you@example.org", "hidden@example.org"],
        "message_id": result.message_id,
        "size": len(eml.read_bytes()),
    }
    assert result.message_id is not None and eml.stem == result.message_id
    assert not list((tmp_path / "mail").glob(".tmp-*"))  # nothing half-written left behind


def test_file_names_are_safe_whatever_the_message_id(tmp_path: Path) -> None:
    raw = b"From: a@example.org\r\nMessage-ID: <../../etc/passwd>\r\n\r\nx\r\n"
    FileTransport(tmp_path).send(raw, sender="a@example.org", recipients=["b@example.org"])
    written = [p.name for p in tmp_path.iterdir()]
    assert all("/" not in name for name in written)
    assert {Path(name).suffix for name in written} == {".eml", ".json"}
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())


def test_bad_input_raises_before_anything_is_recorded(tmp_path: Path) -> None:
    memory, files = MemoryTransport(), FileTransport(tmp_path)
    for transport in (memory, files):
        with pytest.raises(MessageError):
            transport.send(RAW, sender="a@example.org", recipients=[])
    assert memory.outbox == [] and list(tmp_path.iterdir()) == []


def test_transports_satisfy_the_protocols(tmp_path: Path) -> None:
    assert isinstance(MemoryTransport(), Transport)
    assert isinstance(FileTransport(tmp_path), Transport)
    assert isinstance(AsyncMemoryTransport(), AsyncTransport)
    assert isinstance(AsyncFileTransport(tmp_path), AsyncTransport)


def test_async_twins_record_the_same(tmp_path: Path) -> None:
    async def main() -> None:
        memory = AsyncMemoryTransport()
        files = AsyncFileTransport(tmp_path)
        message = composed()
        await memory.send(message)
        results = await files.send_many([message, (RAW, "a@example.org", ["b@example.org"])])
        assert all(r.reply.code == 250 for r in results)  # type: ignore[union-attr]
        first = tmp_path / f"{results[0].message_id}.eml"  # type: ignore[union-attr]
        assert first.read_bytes() == memory.outbox[0].raw

    asyncio.run(main())


def test_outbox_client_and_pool_satisfy_the_transport_protocol(tmp_path: Path) -> None:
    from smtpsubmit import AsyncClient, AsyncPool, Client, Outbox, Pool

    server = Server("127.0.0.1", port=1)
    outbox = Outbox(f"sqlite:///{tmp_path / 'o.sqlite3'}")
    assert isinstance(outbox, Transport)
    assert isinstance(Client(server), Transport) and isinstance(Pool(server), Transport)
    assert isinstance(AsyncClient(server), AsyncTransport)
    assert isinstance(AsyncPool(server), AsyncTransport)
    results = outbox.send_many([composed(), (RAW, "a@example.org", []), (RAW, "x", ["b@c.d"])])
    assert [type(r).__name__ for r in results] == ["SubmitResult", "MessageError", "MessageError"]
    assert results[0].reply.text.startswith("2.0.0 queued as ")  # type: ignore[union-attr]
    assert outbox.stats()["states"]["queued"] == 1
