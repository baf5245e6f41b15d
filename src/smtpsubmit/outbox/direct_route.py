"""Direct routes: an outbox route that delivers to the recipients' MX hosts, without a relay.

A route whose value is :data:`DIRECT` (or the string ``"direct"``, or a
:class:`DirectRoute` carrying ``deliver_direct`` settings) is sent with
:func:`~smtpsubmit.deliver_direct` instead of a :class:`~smtpsubmit.Pool`.
The worker asks :func:`make_sender` for the route's sender; a
:class:`DirectSender` looks like a pool to it (``reserve``,
``send_reserved``, ``close``), so the worker's record-then-send order is the
same for both kinds of route.

Per-domain backoff: a relay is one server, but a direct route talks to a
different set of MX hosts per recipient domain, and a dead domain (every MX
host refusing connections or timing out, or its DNS failing) would otherwise
cost each queued message to it a full round of connection timeouts. So a
worker remembers, in :class:`DomainBackoff`, the domains whose MX hosts all
failed temporarily and until when to leave them alone (the retry policy's
backoff, growing with consecutive failures). Until then, recipients in such
a domain are deferred by :func:`hold_back` before anything is recorded as
``sending`` — no connection, no attempt counted — and the rest of the
message goes out. The first success clears the domain. The state is per
process (each worker process learns on its own) and small: one entry per
failing domain.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from smtpsubmit.direct.mta_sts import PolicyCache
from smtpsubmit.direct.resolve import idna_domain
from smtpsubmit.direct.result import DirectResult, DomainResult
from smtpsubmit.errors import DeliveryStatusUnknown, SmtpError
from smtpsubmit.ratelimit import RateLimit
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult

if TYPE_CHECKING:
    import dns.resolver

    from smtpsubmit.outbox.outbox import Outbox
    from smtpsubmit.outbox.retry import RetryPolicy
    from smtpsubmit.outbox.store import Claimed, Recipient, RecipientUpdate

__all__ = [
    "DIRECT",
    "DirectRoute",
    "DirectSender",
    "DirectSent",
    "DomainBackoff",
    "Sender",
    "hold_back",
    "is_direct",
]


@dataclass(frozen=True)
class DirectRoute:
    """A route that delivers straight to each recipient domain's MX hosts.

    The fields are :func:`~smtpsubmit.deliver_direct`'s settings: ``resolver``
    (default: the system's), ``local_hostname`` (EHLO name), ``mta_sts``,
    ``dane``, ``timeout``, ``ca_file`` (trust for MTA-STS and verified MX TLS),
    ``policy_cache`` (MTA-STS cache directory); ``port`` and ``mta_sts_port``
    exist for test rigs. :data:`DIRECT` is the route with every default.
    """

    resolver: dns.resolver.Resolver | None = field(default=None, compare=False)
    local_hostname: str | None = None
    mta_sts: bool = True
    dane: bool = True
    timeout: float = 30.0
    ca_file: str | None = None
    policy_cache: str | Path | None = None
    port: int = 25
    mta_sts_port: int = 443

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={'...' if f.name == 'resolver' else repr(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"DirectRoute({', '.join(changed)})"


#: The direct-delivery route with default settings: ``Outbox(routes={"mx": DIRECT})``.
DIRECT = DirectRoute()
#: The string that stands for :data:`DIRECT` in ``routes`` (and ``smtpsubmit worker``).
DIRECT_MARKER = "direct"


def is_direct(route: object) -> bool:
    return isinstance(route, DirectRoute)


# -- per-domain backoff -------------------------------------------------------------------


@dataclass
class Failing:
    """A domain none of whose MX hosts took the last message: left alone until ``retry_at``."""

    failures: int
    since: float  # when the failure that set retry_at was recorded
    retry_at: float
    reason: str
    reply: Reply | None


class DomainBackoff:
    """The domains whose MX hosts are all failing, per route, shared by a worker's threads."""

    def __init__(self) -> None:
        self._failing: dict[tuple[str, str], Failing] = {}
        self._lock = threading.Lock()

    def held(self, route: str, domain: str, now: float) -> Failing | None:
        """The domain's failure record while it is to be left alone, else None."""
        with self._lock:
            entry = self._failing.get((route, domain))
            return entry if entry is not None and entry.retry_at > now else None

    def failed(
        self,
        route: str,
        domain: str,
        *,
        started: float,
        now: float,
        delay: Callable[[int], float],
        error: SmtpError,
    ) -> None:
        """Every MX host of ``domain`` failed temporarily for an attempt begun at ``started``.

        Threads that tried the domain at the same time report the same outage
        once: an attempt begun before the last recorded failure does not back
        the domain off further.
        """
        with self._lock:
            entry = self._failing.get((route, domain))
            if entry is not None and started < entry.since:
                return
            failures = entry.failures + 1 if entry is not None else 1
            self._failing[(route, domain)] = Failing(
                failures, now, now + delay(failures), str(error), error.reply
            )

    def succeeded(self, route: str, domain: str) -> None:
        with self._lock:
            self._failing.pop((route, domain), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._failing)


def hold_back(
    outbox: Outbox, claimed: Claimed, send: list[Recipient], now: float
) -> tuple[list[Recipient], list[RecipientUpdate]]:
    """Split ``send`` into the recipients to try now and those whose domain is backed off.

    A held recipient stays ``deferred`` (a planned ``unknown`` resend stays
    ``unknown``) until its domain's retry time, with the domain's last error
    as its reason; no attempt is counted. Past the policy's ``max_age`` it
    bounces as expired, as a tried one would.
    """
    from smtpsubmit.outbox.store import RecipientUpdate

    go: list[Recipient] = []
    held: list[RecipientUpdate] = []
    expires = claimed.created + outbox.policy.max_age_seconds
    for r in send:
        entry = outbox.direct_backoff.held(claimed.route, _domain(r.address), now)
        if entry is None:
            go.append(r)
            continue
        code = entry.reply.code if entry.reply is not None else None
        text = f"not tried: every MX host failed: {entry.reason}"
        if now >= expires:
            age = now - claimed.created
            held.append(
                RecipientUpdate(
                    r.position, "bounced", None, code, f"expired after {age:.0f} s: {text}"
                )
            )
            continue
        state = "unknown" if r.state == "unknown" else "deferred"
        held.append(RecipientUpdate(r.position, state, min(entry.retry_at, expires), code, text))
    return go, held


def _domain(address: str) -> str:
    try:
        return idna_domain(address.rpartition("@")[2])
    except ValueError:
        return address.rpartition("@")[2].lower()


# -- the sender a worker uses for a direct route ------------------------------------------


class Sender(Protocol):
    """What a worker sends a route's mail through: a :class:`~smtpsubmit.Pool` or a
    :class:`DirectSender`."""

    def reserve(self, recipients: int = 1) -> float: ...

    def send_reserved(self, message: Any, granted_at: float, **envelope: Any) -> SubmitResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DirectSent(SubmitResult):
    """A direct delivery as a :class:`~smtpsubmit.SubmitResult`, with the full
    :class:`~smtpsubmit.DirectResult` in ``direct``.

    ``accepted`` and ``refused`` summarise it (deferred recipients appear in
    ``refused`` with their 4xx reply or a synthetic 451, so at-least-once code
    retries them); :meth:`failure` gives a recipient's own error for the retry
    policy, which tells a lost reply (``unknown``) from a deferral.
    """

    direct: DirectResult | None = None

    def failure(self, address: str) -> Reply | SmtpError | None:
        """``None`` when ``address`` took the message, else what stopped it."""
        direct = self.direct
        if direct is None or address in self.accepted:
            return None
        for domain in direct.domains.values():
            if address in domain.refused:
                return domain.refused[address]
            if address in domain.deferred:
                return domain.deferred[address]
        return SmtpError(f"{address} was not attempted", is_temporary=True)

    def reply_for(self, address: str) -> Reply:
        """The reply of the MX host that took ``address``'s copy."""
        if self.direct is not None:
            for domain in self.direct.domains.values():
                if address in domain.accepted and domain.reply is not None:
                    return domain.reply
        return self.reply

    @classmethod
    def of(cls, result: DirectResult, size: int) -> DirectSent:
        refused: dict[str, Reply] = dict(result.refused)
        for address, error in result.deferred.items():
            refused[address] = error.reply or Reply(451, f"4.4.0 {error}", "4.4.0")
        replies = [d.reply for d in result.domains.values() if d.accepted and d.reply]
        reply = replies[0] if replies else Reply(250, "2.0.0 delivered directly", "2.0.0")
        unknown = [
            a
            for d in result.domains.values()
            if isinstance(d.error, DeliveryStatusUnknown)
            for a in d.recipients
        ]
        return cls(
            result.message_id,
            result.sender,
            result.accepted,
            refused,
            reply,
            size,
            unknown,
            direct=result,
        )


class DirectSender:
    """Sends one direct route's messages and keeps its domains' backoff up to date.

    ``rate_limit`` (``Outbox(rate_limits=...)``) caps the messages (and
    recipients) of the whole route, across all domains; connections are per
    delivery, so ``connections_per_minute`` does not apply.
    """

    def __init__(
        self,
        outbox: Outbox,
        name: str,
        route: DirectRoute,
        rate_limit: RateLimit | None = None,
    ) -> None:
        from smtpsubmit.direct.resolve import default_resolver

        self.outbox = outbox
        self.name = name
        self.route = route
        self.rate_limit = rate_limit
        # One resolver and one policy cache for the route: dnspython's cache is then shared.
        self.resolver = route.resolver or default_resolver(route.timeout)
        self.cache = PolicyCache(route.policy_cache)

    def reserve(self, recipients: int = 1) -> float:
        """Wait for the route's rate limit (if any); the value is only passed back."""
        limit = self.rate_limit
        if limit is None:
            return time.monotonic()
        return limit.acquire(recipients if limit.recipients is not None else 1)

    def send_reserved(self, message: Any, granted_at: float, **envelope: Any) -> SubmitResult:
        from smtpsubmit.direct import deliver_direct

        route, started = self.route, self.outbox.clock()
        result = deliver_direct(
            message,
            sender=envelope.get("sender"),
            recipients=envelope.get("recipients"),
            resolver=self.resolver,
            local_hostname=route.local_hostname,
            mta_sts=route.mta_sts,
            dane=route.dane,
            timeout=route.timeout,
            ca_file=route.ca_file,
            port=route.port,
            mta_sts_port=route.mta_sts_port,
            policy_cache=self.cache,
        )
        self._learn(result.domains.values(), started)
        size = len(message) if isinstance(message, bytes | bytearray) else 0
        return DirectSent.of(result, size)

    def _learn(self, domains: Iterable[DomainResult], started: float) -> None:
        now, policy = self.outbox.clock(), self.outbox.policy
        backoff = self.outbox.direct_backoff
        for domain in domains:
            if domain.mx is not None:
                backoff.succeeded(self.name, domain.domain)
            elif domain.error is not None and _every_mx_failed(domain):
                backoff.failed(
                    self.name,
                    domain.domain,
                    started=started,
                    now=now,
                    delay=_delay(policy, self.outbox.random),
                    error=domain.error,
                )

    def close(self) -> None:
        """Nothing stays open between deliveries."""


def _every_mx_failed(domain: DomainResult) -> bool:
    """No MX host took the message and the reason is temporary (not a lost reply)."""
    error = domain.error
    return (
        domain.mx is None
        and error is not None
        and error.is_temporary
        and not isinstance(error, DeliveryStatusUnknown)
    )


def _delay(policy: RetryPolicy, random: Callable[[], float]) -> Callable[[int], float]:
    def delay(failures: int) -> float:
        value = policy.backoff(failures, random())
        return value if math.isfinite(value) else policy.max_delay

    return delay
