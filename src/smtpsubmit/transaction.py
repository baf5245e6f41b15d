"""One mail transaction's pure parts: the commands it sends, what its replies mean.

Kept apart from :mod:`smtpsubmit.session` so that every flow that sends mail
(one message, a stream of messages) builds ``MAIL``/``RCPT`` and sorts the
answers the same way. Nothing here does I/O or keeps state.
"""

from __future__ import annotations

from collections.abc import Callable

from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import (
    AuthError,
    DataRefused,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageTooLarge,
    RecipientsRefused,
    SenderRefused,
    SmtpError,
)
from smtpsubmit.protocol import Capabilities, Command, xtext
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult

__all__ = [
    "NOT_RETRIED",
    "REFUSALS",
    "ProgressReporter",
    "check_envelope",
    "envelope_failure",
    "mail_command",
    "merge_results",
    "partial_result",
    "rcpt_command",
    "sort_recipients",
]

REFUSALS = (
    AuthError,
    SenderRefused,
    RecipientsRefused,
    DataRefused,
    MessageTooLarge,
    ExtensionUnavailable,
)
"""The server said no (or we refused before sending): the connection stays in step.
Every other failure leaves it in an unknown state."""

NOT_RETRIED = Reply(452, "too many recipients; not retried", "4.5.3")
"""For recipients a server deferred with 452 and no follow-up transaction carried."""

UNKNOWN = Reply(
    451,
    "delivery status unknown: the connection was lost after the end of the data was sent "
    "(a retry may deliver twice)",
    "4.4.2",
)
"""For recipients whose follow-up transaction's answer to the end of the data was lost."""

_LOST = Reply(451, "not sent: the connection failed before this transaction ended", "4.4.2")


class ProgressReporter:
    """Progress reports for one transaction's data; elapsed time since the data began."""

    def __init__(
        self, callback: Callable[[Progress], object] | None, total: int, clock: Callable[[], float]
    ) -> None:
        self._callback, self._total, self._clock = callback, total, clock
        self._started = clock()

    def __call__(self, stage: str, sent: int) -> None:
        if self._callback is not None:
            total = (self._total or sent) if stage == "done" else self._total
            self._callback(Progress(stage, sent, total, self._clock() - self._started))


def check_envelope(envelope: Envelope, caps: Capabilities, *, is_tls: bool, esmtp: bool) -> None:
    """Refuse, before anything is sent, what this server cannot take."""
    if envelope.smtputf8 and "SMTPUTF8" not in caps:
        raise ExtensionUnavailable(
            "the message has a non-ASCII address but the server does not offer SMTPUTF8"
            + ("" if esmtp else " (ESMTP is off: set Option.EXTENDED)"),
            extension="SMTPUTF8",
            stage="mail",
        )
    if envelope.eight_bit and "8BITMIME" not in caps:
        raise ExtensionUnavailable(
            "the message has 8-bit data but the server does not offer 8BITMIME",
            extension="8BITMIME",
            stage="mail",
        )
    if envelope.dsn is not None and envelope.dsn.required and "DSN" not in caps:
        raise ExtensionUnavailable(
            "delivery status notifications were asked for but the server does not offer "
            "DSN (use DSN(required=False) to send without)",
            extension="DSN",
            stage="mail",
        )
    if envelope.require_tls and not (is_tls and "REQUIRETLS" in caps):
        raise ExtensionUnavailable(
            "REQUIRETLS needs a TLS connection to a server that offers REQUIRETLS",
            extension="REQUIRETLS",
            stage="mail",
        )
    limit = caps.size_limit
    if limit is not None and envelope.size > limit:
        raise MessageTooLarge(
            f"the message ({envelope.size} octets) is larger than the server's limit "
            f"({limit} octets)",
            stage="mail",
        )


def mail_command(envelope: Envelope, caps: Capabilities) -> Command:
    """``MAIL FROM`` with the parameters this envelope needs and the server offers."""
    params: list[str] = []
    if "SIZE" in caps and envelope.size:
        params.append(f"SIZE={envelope.size}")
    if envelope.eight_bit:
        # RFC 3030: with BDAT, BINARYMIME is the body type that needs no line rules.
        binary = "CHUNKING" in caps and "BINARYMIME" in caps
        params.append("BODY=BINARYMIME" if binary else "BODY=8BITMIME")
    if envelope.smtputf8:
        params.append("SMTPUTF8")
    dsn = envelope.dsn
    if dsn is not None and "DSN" in caps:
        if dsn.ret:
            params.append(f"RET={dsn.ret}")
        if dsn.envid:
            params.append(f"ENVID={xtext(dsn.envid)}")
    if envelope.require_tls:
        params.append("REQUIRETLS")
    params.extend(envelope.extra_mail_params)
    return Command("MAIL", " ".join([f"FROM:<{envelope.sender}>", *params]), "mail")


def rcpt_command(envelope: Envelope, recipient: str, caps: Capabilities) -> Command:
    """``RCPT TO`` with the DSN parameters when asked for and offered."""
    params: list[str] = []
    dsn = envelope.dsn
    if dsn is not None and "DSN" in caps:
        params.append("NOTIFY=" + ",".join(dsn.notify))
        if recipient.isascii():
            params.append(f"ORCPT=rfc822;{xtext(recipient)}")
    return Command("RCPT", " ".join([f"TO:<{recipient}>", *params]), "rcpt")


def sort_recipients(
    recipients: list[str], replies: list[Reply]
) -> tuple[list[str], dict[str, Reply]]:
    """Accepted, refused; a 452 after an accepted recipient is deferred, not refused.

    A deferred recipient is in neither: it goes in a follow-up transaction. A
    452 before anything was accepted is a refusal (temporary), or the follow-up
    would never end.
    """
    accepted: list[str] = []
    refused: dict[str, Reply] = {}
    for recipient, reply in zip(recipients, replies, strict=False):
        if reply.is_positive:
            accepted.append(recipient)
        elif reply.code == 452 and accepted:
            continue  # "too many recipients": sent in a follow-up transaction
        else:
            refused[recipient] = reply
    for recipient in recipients[len(replies) :]:
        refused[recipient] = Reply(503, "not tried: the sender was refused")
    return accepted, refused


def envelope_failure(
    envelope: Envelope, mail_reply: Reply, accepted: list[str], refused: dict[str, Reply]
) -> SmtpError | None:
    """The error that ends the transaction before its data, or None to go on."""
    if not mail_reply.is_positive:
        return SenderRefused(
            f"the server refused the sender <{envelope.sender}>", reply=mail_reply, stage="mail"
        )
    if accepted:
        return None
    first = next(iter(refused.values()), None)
    return RecipientsRefused(
        "the server refused every recipient; no message data was sent",
        refused=refused,
        reply=first,
    )


def merge_results(first: SubmitResult, more: SubmitResult) -> SubmitResult:
    """One result for a message sent in two transactions (after a 452 deferral)."""
    return SubmitResult(
        first.message_id,
        first.sender,
        first.accepted + more.accepted,
        {**first.refused, **more.refused},
        more.reply,
        first.size,
        first.unknown + more.unknown,
    )


def partial_result(
    result: SubmitResult, batch: list[str], rest: list[str], exc: Exception
) -> SubmitResult:
    """What was delivered, after the follow-up transaction for ``batch`` failed.

    ``rest`` are the deferred recipients no transaction carried. Raising instead
    would invite a retry that sends the message to ``result.accepted`` again.
    """
    refused = dict(result.refused)
    unknown = list(result.unknown)
    if isinstance(exc, REFUSALS):
        by_address: dict[str, Reply] = getattr(exc, "refused", {})
        fallback = exc.reply or Reply(451, f"not sent: {exc}", "4.5.0")
        refused.update({r: by_address.get(r, fallback) for r in batch})
        refused.update(dict.fromkeys(rest, NOT_RETRIED))
    else:
        lost = getattr(exc, "reply", None) or _LOST
        if isinstance(exc, DeliveryStatusUnknown):
            unknown += batch
            refused.update(dict.fromkeys(batch, UNKNOWN))
        else:
            refused.update(dict.fromkeys(batch, lost))
        refused.update(dict.fromkeys(rest, lost))
    return SubmitResult(
        result.message_id,
        result.sender,
        result.accepted,
        refused,
        result.reply,
        result.size,
        unknown,
    )
