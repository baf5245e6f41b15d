"""What :func:`~smtpsubmit.deliver_direct` returns: one outcome per domain and recipient.

A direct delivery talks to one mail exchanger per recipient domain, so its
result is a :class:`DomainResult` per domain (which MX took the message, over
which TLS, under which policy) gathered into a :class:`DirectResult` that also
says, per recipient, whether the message was accepted, refused for good or
deferred (retry later). TLS-RPT (RFC 8460) failure details are collected here
for callers that report them; nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smtpsubmit.errors import SmtpError
from smtpsubmit.reply import Reply

__all__ = ["DirectResult", "DomainResult", "MxAttempt", "TlsFailure"]

Policy = Literal["none", "mta-sts:testing", "mta-sts:enforce", "dane"]


@dataclass(frozen=True)
class TlsFailure:
    """One RFC 8460 failure-details entry (``result-type`` and where it happened)."""

    result_type: str
    policy_type: str  # "sts", "tlsa" or "no-policy-found"
    receiving_mx_hostname: str | None = None
    receiving_ip: str | None = None
    failure_reason_code: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The RFC 8460 §4.4 member names."""
        out: dict[str, object] = {"result-type": self.result_type}
        if self.receiving_mx_hostname:
            out["receiving-mx-hostname"] = self.receiving_mx_hostname
        if self.receiving_ip:
            out["receiving-ip"] = self.receiving_ip
        if self.failure_reason_code:
            out["failure-reason-code"] = self.failure_reason_code
        return out


@dataclass(frozen=True)
class MxAttempt:
    """One connection attempt to one address of one MX host, and how it ended."""

    mx: str
    address: str
    policy: Policy
    tls: str | None = None
    tls_verified: bool | None = None
    error: SmtpError | None = None


@dataclass
class DomainResult:
    """The outcome for one recipient domain (the key is its lower-case A-label form).

    ``mx`` is the host that took the message (``None`` when none did), ``tls``
    the TLS version of that connection (``None`` for plain text),
    ``tls_verified`` whether its certificate was verified (by the web PKI, or
    by DANE), ``policy`` the policy that applied, ``error`` the failure that
    stopped delivery (``None`` when the message went out).
    """

    domain: str
    recipients: list[str]
    mx: str | None = None
    tls: str | None = None
    tls_verified: bool | None = None
    policy: Policy = "none"
    error: SmtpError | None = None
    reply: Reply | None = None
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, Reply] = field(default_factory=dict)
    deferred: dict[str, SmtpError] = field(default_factory=dict)
    attempts: list[MxAttempt] = field(default_factory=list)
    tls_failures: list[TlsFailure] = field(default_factory=list)
    mta_sts_policy_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "mx": self.mx,
            "tls": self.tls,
            "tls_verified": self.tls_verified,
            "policy": self.policy,
            "error": str(self.error) if self.error else None,
            "reply": _reply_dict(self.reply) if self.reply else None,
            "accepted": list(self.accepted),
            "refused": {a: _reply_dict(r) for a, r in self.refused.items()},
            "deferred": {a: str(e) for a, e in self.deferred.items()},
            "attempts": [
                {
                    "mx": a.mx,
                    "address": a.address,
                    "policy": a.policy,
                    "tls": a.tls,
                    "tls_verified": a.tls_verified,
                    "error": str(a.error) if a.error else None,
                }
                for a in self.attempts
            ],
            "tls_failures": [
                f.as_dict() | {"policy-type": f.policy_type} for f in self.tls_failures
            ],
        }


@dataclass
class DirectResult:
    """Every domain's outcome, and every recipient's, for one direct delivery.

    Each recipient is in exactly one of ``accepted``, ``refused`` (permanent:
    do not retry) and ``deferred`` (temporary: retry later). Failures that no
    server answered (a null MX, a domain that does not exist) appear in
    ``refused`` with a reply made up locally, as an MTA's bounce would, and in
    the domain's ``error``.
    """

    sender: str
    message_id: str | None
    domains: dict[str, DomainResult] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        return [a for d in self.domains.values() for a in d.accepted]

    @property
    def refused(self) -> dict[str, Reply]:
        return {a: r for d in self.domains.values() for a, r in d.refused.items()}

    @property
    def deferred(self) -> dict[str, SmtpError]:
        return {a: e for d in self.domains.values() for a, e in d.deferred.items()}

    def domain_of(self, recipient: str) -> DomainResult:
        """The :class:`DomainResult` that covers ``recipient`` (``KeyError`` if none)."""
        for result in self.domains.values():
            if recipient in result.recipients:
                return result
        raise KeyError(recipient)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form (the CLI's ``--json``)."""
        return {
            "sender": self.sender,
            "message_id": self.message_id,
            "accepted": self.accepted,
            "refused": {a: _reply_dict(r) for a, r in self.refused.items()},
            "deferred": {a: str(e) for a, e in self.deferred.items()},
            "domains": {name: d.as_dict() for name, d in self.domains.items()},
        }


def _reply_dict(reply: Reply) -> dict[str, object]:
    return {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text}
