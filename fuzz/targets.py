"""Fuzz targets: ``target(data: bytes) -> None`` raises only on a real defect.

Each target feeds attacker- or user-controlled bytes to one component and
checks the invariants the library promises (docs/guarantees.md): typed errors
only, bounded buffers, CRLF-only output with lines of at most 998 octets, no
header field the caller did not ask for, no Bcc on the wire.
"""

from __future__ import annotations

import email
import email.policy
import re

from smtpsubmit.errors import MessageError, ProtocolError
from smtpsubmit.message import Attachment, Message
from smtpsubmit.protocol import MAX_LINE, MAX_REPLY, Capabilities, ReplyParser

__all__ = ["TARGETS", "message_writer", "ready_message", "reply_parser"]

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_ALLOWED_FIELDS = {
    "from", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "x-fuzz",
}  # fmt: skip


def reply_parser(data: bytes) -> None:
    """Server bytes, split at points chosen by the first byte; replies or ProtocolError."""
    step = (data[0] % 64 + 1) if data else 1
    parser = ReplyParser()
    try:
        for start in range(1, len(data), step):
            parser.feed(data[start : start + step])
            while (reply := parser.next_reply()) is not None:
                if not 200 <= reply.code <= 599 or "\r" in reply.text or "\x00" in reply.text:
                    raise AssertionError(f"bad reply accepted: {reply!r}")
                if reply.code == 250:
                    caps = Capabilities.parse(reply)
                    limit = caps.size_limit
                    if limit is not None and not 0 < limit < 10**18:
                        raise AssertionError(f"size limit {limit}")
                    caps.auth_mechanisms  # noqa: B018 - must not raise
            if parser.buffered > MAX_LINE + MAX_REPLY:
                raise AssertionError(f"parser holds {parser.buffered} octets")
    except ProtocolError:
        pass


def _fields(data: bytes, count: int) -> list[str]:
    parts = data.split(b"\x00", count - 1)
    parts += [b""] * (count - len(parts))
    return [p.decode("utf-8", "replace") for p in parts]


def _check_wire(raw: bytes, allowed: set[str]) -> None:
    if not raw.endswith(b"\r\n") or _BARE.search(raw):
        raise AssertionError("bare CR or LF on the wire")
    if max(len(line) for line in raw.split(b"\r\n")) > 998:
        raise AssertionError("line over 998 octets")
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = {
        line.split(b":", 1)[0].decode("ascii", "replace").lower()
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    }
    if not names <= allowed:
        raise AssertionError(f"unexpected header fields {names - allowed}")


def message_writer(data: bytes) -> None:
    """Subject, text, HTML, display name, file name, extra header and attachment bytes
    from the input; a MessageError, or a clean render that parses back."""
    subject, text, html, name, filename, extra, blob = _fields(data, 7)
    sender = f'"{name}" <a@example.org>' if name else "a@example.org"
    try:
        message = Message(
            sender=sender,
            to="b@example.org",
            bcc="hidden@example.org",
            subject=subject,
            text=text,
            html=html or None,
            headers={"X-Fuzz": extra} if extra else (),
            attachments=[Attachment(data=blob.encode(), filename=filename or "f.bin")],
        )
    except MessageError:
        return
    for allow_8bit, smtputf8 in ((False, False), (True, True)):
        if message.needs_smtputf8() and not smtputf8:
            continue
        prepared = message.prepare(allow_8bit=allow_8bit, smtputf8=smtputf8)
        raw = b"".join(prepared.iter_bytes(4096))
        if len(raw) != prepared.size:
            raise AssertionError("size differs from the bytes written")
        _check_wire(raw, _ALLOWED_FIELDS)
        if b"hidden@example.org" in raw:
            raise AssertionError("Bcc leaked")
        if not allow_8bit and not raw.isascii():
            raise AssertionError("8-bit data without 8BITMIME")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        attached = [p for p in parsed.walk() if p.get_content_disposition() == "attachment"]
        if len(attached) != 1 or attached[0].get_payload(decode=True) != blob.encode():
            raise AssertionError("attachment did not round-trip")


def ready_message(data: bytes) -> None:
    """A ready RFC 5322 message: refused, or re-emitted clean and without Bcc."""
    try:
        message = Message.from_bytes(b"From: a@example.org\r\nTo: b@example.org\r\n" + data)
        if message.needs_smtputf8():
            return
        raw = message.as_bytes()
    except MessageError:
        return
    if not raw.endswith(b"\r\n") or _BARE.search(raw):
        raise AssertionError("bare CR or LF on the wire")
    if max(len(line) for line in raw.split(b"\r\n")) > 998:
        raise AssertionError("line over 998 octets")
    if re.search(rb"(?im)^bcc:", raw.split(b"\r\n\r\n", 1)[0]):
        raise AssertionError("Bcc header sent")


TARGETS = {"reply": reply_parser, "message": message_writer, "ready": ready_message}
