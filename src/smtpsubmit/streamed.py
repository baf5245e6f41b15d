"""One transaction of a ``send_many`` stream: its state, and the outcome it settles to.

Split from :mod:`smtpsubmit.batch`, which writes the stream and matches its replies: this
module holds what a message of the stream *is* (``Txn``) and how its replies, or the way
the connection was lost, become the outcome the caller gets. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import DataRefused, MessageError, ServerDisconnected, SmtpError
from smtpsubmit.prepare import Source
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult
from smtpsubmit.transaction import envelope_failure, sort_recipients

__all__ = [
    "MAYBE_WRITTEN",
    "NOT_WRITTEN",
    "WRITTEN",
    "Outcome",
    "Txn",
    "all_accepted",
    "never_started",
    "outcome_of",
    "stream_error",
    "take_source",
    "unpack",
]

Outcome = SubmitResult | SmtpError | MessageError

# How far the end of a message's data got: decides DeliveryStatusUnknown or not.
NOT_WRITTEN, MAYBE_WRITTEN, WRITTEN = 0, 1, 2


@dataclass(slots=True, eq=False)
class Txn:
    """One message of the stream: its envelope and the replies gathered so far."""

    index: int
    envelope: Envelope
    source: Source | None  # dropped once the data is written: no body outlives its write
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None  # the reply to DATA (DATA streams only)
    chunk_error: Reply | None = None  # the first refused BDAT chunk
    final: Reply | None = None
    end: int = NOT_WRITTEN
    size: int = 0
    pending: int = 0  # slots registered and not yet answered
    complete: bool = False  # no more slots will be registered


def outcome_of(txn: Txn) -> Outcome:
    """A settled message's result: a ``SubmitResult`` or the error that ends it."""
    envelope, final, mail, rcpts = txn.envelope, txn.final, txn.mail, txn.rcpts
    recipients = envelope.recipients
    if (  # everything accepted, the common case: what the general path below returns
        final is not None
        and 200 <= final.code < 300
        and mail is not None
        and 200 <= mail.code < 300
        and txn.chunk_error is None
        and (txn.data is None or txn.data.code == 354)
        and len(rcpts) == len(recipients)
        and all_accepted(rcpts)
    ):
        return SubmitResult(
            envelope.message_id, envelope.sender, list(recipients), {}, final, txn.size
        )
    accepted, refused = sort_recipients(recipients, txn.rcpts)
    for recipient, reply in zip(recipients, txn.rcpts, strict=False):
        if recipient not in accepted and recipient not in refused:
            refused[recipient] = reply  # deferred (452): not sent again in a stream
    mail = txn.mail or Reply(503, "no reply to MAIL")
    failure = envelope_failure(txn.envelope, mail, accepted, refused)
    if failure is not None:
        return failure
    if txn.data is not None and txn.data.code != 354:
        return DataRefused("the server refused DATA", reply=txn.data, stage="data")
    if txn.chunk_error is not None or txn.final is None:
        return DataRefused("the server refused a BDAT chunk", reply=txn.chunk_error, stage="data")
    if not 200 <= txn.final.code < 300:
        return DataRefused("the server refused the message", reply=txn.final, stage="data")
    envelope = txn.envelope
    return SubmitResult(
        envelope.message_id, envelope.sender, accepted, refused, txn.final, txn.size
    )


def take_source(txn: Txn) -> Source:
    """The message's byte source, once: the stream keeps no body after it is written."""
    source, txn.source = txn.source, None
    if source is None:  # pragma: no cover - a message's data is only written once
        raise RuntimeError("the message data was already written")
    return source


def stream_error(kind: type[SmtpError], message: str, cause: SmtpError) -> SmtpError:
    error = kind(message, reply=cause.reply, stage=cause.stage)
    error.__cause__ = cause
    return error


def never_started(cause: SmtpError | None) -> SmtpError:
    error = ServerDisconnected(
        "not sent: the connection was lost before this message was started (safe to retry)",
        stage=cause.stage if cause is not None else "mail",
    )
    error.__cause__ = cause
    return error


def all_accepted(replies: list[Reply]) -> bool:
    for reply in replies:  # noqa: SIM110 - a loop, not all(): no generator per message
        if not 200 <= reply.code < 400:
            return False
    return True


def unpack(item: Any) -> tuple[Any, str | None, Any]:
    """A Message, a (raw, sender, recipients) tuple, or an object with those attributes."""
    if hasattr(item, "prepare") and hasattr(item, "needs_smtputf8"):
        return item, None, None
    if isinstance(item, tuple):
        if len(item) != 3:
            raise MessageError("a ready message is a (raw, sender, recipients) tuple")
        return item[0], item[1], item[2]
    if all(hasattr(item, name) for name in ("raw", "sender", "recipients")):
        return item.raw, item.sender, item.recipients
    raise MessageError(
        "send_many takes Message objects, (raw, sender, recipients) tuples or objects with "
        f".raw, .sender and .recipients, not {type(item).__name__}"
    )
