"""How a domain's delivery ends: who was accepted, refused or deferred, and why.

The rules that turn SMTP replies, DNS answers and policy decisions into the
per-recipient outcome of a :class:`~smtpsubmit.direct.result.DomainResult`
live here, apart from the code that talks to the MX hosts.
"""

from __future__ import annotations

from collections.abc import Iterable

from smtpsubmit.direct.resolve import DnsFailure, MxHost
from smtpsubmit.direct.result import DomainResult, MxAttempt
from smtpsubmit.errors import (
    ConnectError,
    ExtensionUnavailable,
    MessageTooLarge,
    SmtpError,
    TlsError,
)
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult

__all__ = ["dns_error", "give_up", "not_listed", "rpt_type", "settle", "with_error"]


def with_error(attempt: MxAttempt, error: SmtpError) -> MxAttempt:
    return MxAttempt(
        attempt.mx, attempt.address, attempt.policy, attempt.tls, attempt.tls_verified, error
    )


def settle(
    result: DomainResult,
    attempt: MxAttempt,
    refused: dict[str, Reply],
    accepted: list[str],
    error: SmtpError | None,
    *,
    sent: SubmitResult | None = None,
) -> None:
    """The MX host answered every recipient: record who was accepted, refused or deferred."""
    result.attempts.append(with_error(attempt, error) if error else attempt)
    result.mx, result.tls, result.tls_verified = attempt.mx, attempt.tls, attempt.tls_verified
    result.policy = attempt.policy
    result.error = error
    result.reply = sent.reply if sent else (error.reply if error else None)
    result.accepted = list(accepted)
    for address, reply in refused.items():
        if reply.is_temporary:
            result.deferred[address] = SmtpError(
                f"{address} deferred by {attempt.mx}", reply=reply, stage="rcpt"
            )
        else:
            result.refused[address] = reply


def give_up(
    result: DomainResult,
    error: SmtpError,
    rcpts: Iterable[str],
    *,
    mx: str | None = None,
    tls: str | None = None,
    verified: bool | None = None,
) -> None:
    """No MX host took the message: every recipient is deferred or refused by ``error``."""
    result.error, result.mx, result.tls, result.tls_verified = error, mx, tls, verified
    if result.attempts:
        result.policy = result.attempts[-1].policy
    result.reply = error.reply
    for address in rcpts:
        if error.is_temporary:
            result.deferred[address] = error
        else:
            result.refused[address] = error.reply or _local_reply(error)


def _local_reply(error: SmtpError) -> Reply:
    """The reply an MTA's bounce would carry for a failure no server answered (RFC 3463)."""
    if isinstance(error, _DnsError):
        code, enhanced = 550, "5.1.10" if error.null_mx else "5.1.2"  # RFC 7505 §4.2 / bad host
    elif isinstance(error, MessageTooLarge):
        code, enhanced = 552, "5.3.4"
    elif isinstance(error, ExtensionUnavailable):
        code, enhanced = 550, "5.6.7" if error.extension == "SMTPUTF8" else "5.5.1"
    else:
        code, enhanced = 550, "5.0.0"
    return Reply(code, f"{error} (generated locally)", enhanced)


class _DnsError(ConnectError):
    """A DNS answer stopped delivery (``null_mx`` for RFC 7505)."""

    null_mx = False


def dns_error(exc: DnsFailure, name: str) -> SmtpError:
    error = _DnsError(str(exc), stage="connect", is_temporary=exc.temporary)
    error.null_mx = exc.null_mx
    error.unknown_host = not exc.temporary
    return error


def not_listed(host: MxHost) -> TlsError:
    return TlsError(
        f"{host.name} is not listed in the MTA-STS policy", stage="connect", is_temporary=True
    )


def rpt_type(error: SmtpError | None) -> str:
    """The RFC 8460 result type that best names a TLS failure."""
    text = str(error).lower()
    if "not offer" in text or "refused starttls" in text:
        return "starttls-not-supported"
    if "expired" in text:
        return "certificate-expired"
    if "does not match" in text:
        return "certificate-host-mismatch"
    if "certificate" in text:
        return "certificate-not-trusted"
    return "validation-failure"
