"""The flow of a direct delivery: what to ask DNS, whom to connect to, what to send.

Per domain (recipients grouped by their IDNA domain, one transaction each):
look up the MX hosts (:mod:`.resolve`), the domain's MTA-STS policy
(:mod:`.mta_sts`) and, per MX host, its TLSA records (:mod:`.dane`), then try
the hosts in order until one takes the message or refuses it for good.

How each MX host is spoken to — the one place these rules live:

- **DANE** (authenticated TLSA records exist): STARTTLS is required and the
  certificate must match a record — DANE-EE on the server's certificate,
  DANE-TA on a trust anchor of its chain plus a name check (:mod:`.dane`);
  no plain text, no web PKI. When the MX host name is an alias (a secure
  CNAME chain), TLSA records are looked up at the name it expands to first,
  then at the MX host name (RFC 7672 §2.2.2); the name found is the TLSA
  base domain, sent as SNI. DANE takes precedence over MTA-STS for that host
  (RFC 8461 §2).
- **MTA-STS enforce**: only hosts the policy lists, STARTTLS required, the
  certificate verified for the MX host name (``ca_file`` or the system store).
- **Opportunistic** (MTA-STS testing, or no policy): STARTTLS when offered.
  Python's ``ssl`` cannot verify a certificate without aborting the
  handshake, so a verified handshake is tried first; when it fails, the same
  address is tried again without verification and the result records
  ``tls_verified=False``; when TLS cannot be set up at all, once more in
  plain text (RFC 7435: opportunistic security never fails where plain
  text would have worked). In testing mode each shortfall is recorded as
  TLS-RPT data but delivery goes on.

Connections are kept open for the rest of the call, so domains sharing an MX
host share its connection (one transaction per domain on it).

Nothing here does I/O: every DNS lookup, policy fetch and SMTP step is a
request yielded to a driver (:mod:`smtpsubmit.direct.deliver` has one for
``Client`` and one for ``AsyncClient``), so the rules exist once for both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import dns.resolver

from smtpsubmit.client import AsyncClient, Client
from smtpsubmit.direct.dane import Tlsa, authenticate, parse_tlsa
from smtpsubmit.direct.mta_sts import Discovery, Policy, PolicyCache, discover, https_context
from smtpsubmit.direct.outcome import (
    dns_error,
    give_up,
    not_listed,
    rpt_type,
    settle,
    with_error,
)
from smtpsubmit.direct.resolve import (
    DnsFailure,
    MxHost,
    Records,
    lookup_addresses,
    lookup_mx,
    lookup_tlsa,
)
from smtpsubmit.direct.result import DomainResult, MxAttempt, TlsFailure
from smtpsubmit.errors import (
    ConnectError,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageTooLarge,
    RecipientsRefused,
    SmtpError,
    TlsError,
)
from smtpsubmit.prepare import MessageInput
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Option, Server

__all__ = ["Call", "Close", "Connect", "Delivery", "Flow", "Transaction"]

T = TypeVar("T")
AnyClient = Client | AsyncClient
# Failures before the transaction began: the next MX host may well do better.
_SESSION_STAGES = ("connect", "greeting", "ehlo", "starttls", "auth")


# -- the requests a flow yields, carried out by the sync or the asyncio driver -------------


@dataclass(frozen=True)
class Call:
    """A blocking DNS or HTTPS step (the asyncio driver runs it in a worker thread)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Connect:
    """Open a session (``Client`` or ``AsyncClient``) to ``server``; returns it connected."""

    server: Server


@dataclass(frozen=True)
class Transaction:
    """Send the message on ``client``; returns the ``SubmitResult``."""

    client: AnyClient
    message: MessageInput
    sender: str | None
    recipients: list[str]


@dataclass(frozen=True)
class Close:
    client: AnyClient


Request = Call | Connect | Transaction | Close
Flow = Generator[Request, Any, T]


@dataclass(frozen=True)
class _Mode:
    """How to speak to one MX host (see the module docstring)."""

    policy: str  # the DomainResult.policy value this mode stands for
    tlsa: tuple[Tlsa, ...] = ()
    require_tls: bool = False
    verify: bool = False
    base: str | None = None  # DANE: the TLSA base domain (SNI, first reference identifier)
    names: tuple[str, ...] = ()  # DANE-TA: the names the certificate may bear (§3.2.2)

    @property
    def key(self) -> tuple[object, ...]:
        return (self.policy, self.tlsa, self.require_tls, self.verify, self.base)


@dataclass
class Delivery:
    """One call's settings and its open connections (reused per MX host and mode)."""

    resolver: dns.resolver.Resolver
    message: MessageInput
    sender: str | None
    local_hostname: str | None
    mta_sts: bool
    dane: bool
    timeout: float
    ca_file: str | None
    port: int
    mta_sts_port: int
    cache: PolicyCache
    rng: random.Random
    clients: dict[tuple[object, ...], tuple[AnyClient, bool | None]] = field(default_factory=dict)

    # -- one domain ------------------------------------------------------------------

    def domain(self, domain: str, recipients: list[str]) -> Flow[DomainResult]:
        result = DomainResult(domain, list(recipients))
        try:
            mx = yield Call(lookup_mx, (self.resolver, domain, self.rng))
        except DnsFailure as exc:
            give_up(result, dns_error(exc, domain), recipients)
            return result
        policy = yield from self._policy(domain, result)
        result.policy = f"mta-sts:{policy.mode}" if policy else "none"  # type: ignore[assignment]
        last: SmtpError | None = None
        for host in mx.hosts:
            error = yield from self._host(result, host, policy, recipients, mx.secure)
            if error is None:
                return result
            last = error
        give_up(result, last or ConnectError(f"no MX host of {domain} could be tried"), recipients)
        return result

    def _policy(self, domain: str, result: DomainResult) -> Flow[Policy | None]:
        if not self.mta_sts:
            return None
        found: Discovery = yield Call(
            partial(
                discover,
                self.resolver,
                domain,
                self.cache,
                context=https_context(self.ca_file),
                port=self.mta_sts_port,
                timeout=self.timeout,
            ),
            (),
        )
        if found.failure is not None:
            result.tls_failures.append(
                TlsFailure(found.failure.result_type, "sts", failure_reason_code=str(found.failure))
            )
        if found.policy is None or found.policy.mode == "none":
            return None
        result.mta_sts_policy_id = found.policy.id
        return found.policy

    def _host(
        self,
        result: DomainResult,
        host: MxHost,
        policy: Policy | None,
        rcpts: list[str],
        mx_secure: bool,
    ) -> Flow[SmtpError | None]:
        """Try every address of one MX host; ``None`` once the domain is settled."""
        try:
            addresses = yield Call(lookup_addresses, (self.resolver, host.name))
            mode = yield from self._mode(result, host, addresses, policy, mx_secure)
        except DnsFailure as exc:
            return dns_error(exc, host.name)
        if mode is None:
            return TlsError(
                f"the MTA-STS policy of {result.domain} (enforce) does not list the MX host "
                f"{host.name}; nothing was sent to it",
                stage="connect",
                is_temporary=True,
            )
        if not addresses.values:
            if host.implicit:  # no MX and no address: the domain takes no mail (RFC 5321 §5.1)
                failure = DnsFailure(
                    f"{host.name} has neither MX nor address records", temporary=False
                )
            else:
                failure = DnsFailure(f"the MX host {host.name} has no address", temporary=True)
            return dns_error(failure, host.name)
        last: SmtpError | None = None
        for address in addresses.values:
            last = yield from self._address(result, host, address, mode, rcpts)
            if last is None:
                return None
        return last

    def _mode(
        self,
        result: DomainResult,
        host: MxHost,
        addresses: Records,
        policy: Policy | None,
        mx_secure: bool,
    ) -> Flow[_Mode | None]:
        """The mode for ``host``; ``None`` when an enforced policy rules it out.

        DANE needs the MX answer and the host's address answers authenticated
        (RFC 7672 §2.2.1, §2.2.2): a forged MX or address could otherwise pick
        the TLSA records that apply.
        """
        if self.dane and mx_secure and addresses.secure:
            found = yield Call(
                lookup_tlsa, (self.resolver, self.port, host.name, addresses.canonical)
            )
            if found is not None:
                base, values = found
                records = tuple(parse_tlsa(v) for v in values)
                if not any(r.usable for r in records):
                    result.tls_failures.append(
                        TlsFailure("tlsa-invalid", "tlsa", host.name, None, "no-usable-tlsa-record")
                    )
                names = tuple(dict.fromkeys((base, host.name)))
                return _Mode("dane", records, require_tls=True, base=base, names=names)
        if policy is None:
            return _Mode("none")
        if not policy.allows(host.name):
            result.tls_failures.append(
                TlsFailure("validation-failure", "sts", host.name, None, "mx-not-in-policy")
            )
            if policy.mode == "enforce":
                result.attempts.append(
                    MxAttempt(host.name, "", "mta-sts:enforce", error=not_listed(host))
                )
                return None
        if policy.mode == "enforce":
            return _Mode("mta-sts:enforce", require_tls=True, verify=True)
        return _Mode("mta-sts:testing")

    # -- one address -----------------------------------------------------------------

    def _address(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode, rcpts: list[str]
    ) -> Flow[SmtpError | None]:
        try:
            client, verified = yield from self._client(result, host, address, mode)
        except SmtpError as exc:
            result.attempts.append(MxAttempt(host.name, address, mode.policy, error=exc))  # type: ignore[arg-type]
            return exc
        tls = client.tls_info.version if client.is_tls and client.tls_info else None
        attempt = MxAttempt(host.name, address, mode.policy, tls, verified)  # type: ignore[arg-type]
        try:
            sent: SubmitResult = yield Transaction(client, self.message, self.sender, rcpts)
        except RecipientsRefused as exc:
            settle(result, attempt, exc.refused, [], exc)
            return None
        except DeliveryStatusUnknown as exc:  # another MX could duplicate the message
            result.attempts.append(with_error(attempt, exc))
            give_up(result, exc, rcpts, mx=host.name, tls=tls, verified=verified)
            return None
        except SmtpError as exc:
            result.attempts.append(with_error(attempt, exc))
            if exc.is_temporary or exc.stage in _SESSION_STAGES:
                return exc
            if isinstance(exc, ExtensionUnavailable | MessageTooLarge):
                return exc  # another MX host may offer SMTPUTF8 or a larger SIZE
            give_up(result, exc, rcpts, mx=host.name, tls=tls, verified=verified)
            return None
        finally:
            self._forget_if_closed(client)
        settle(result, attempt, sent.refused, sent.accepted, None, sent=sent)
        return None

    def _client(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode
    ) -> Flow[tuple[AnyClient, bool | None]]:
        key = (host.name, address, *mode.key)
        if key in self.clients and self.clients[key][0].is_connected:
            return self.clients[key]
        if mode.require_tls:
            pair = yield from self._secure_client(result, host, address, mode)
        else:
            pair = yield from self._opportunistic_client(result, host, address, mode)
        self.clients[key] = pair
        return pair

    def _server(
        self, host: MxHost, address: str, options: Option, sni: str | None = None
    ) -> Server:
        return Server(
            address,
            port=self.port,
            timeout=self.timeout,
            options=options | Option.EXTENDED,
            local_hostname=self.local_hostname,
            tls_server_name=sni or host.name,
            ca_file=self.ca_file,
        )

    def _secure_client(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode
    ) -> Flow[tuple[AnyClient, bool | None]]:
        """STARTTLS required: DANE (match the TLSA records ourselves) or MTA-STS enforce."""
        dane = bool(mode.tlsa)
        options = Option.SECURE | (Option.TRUSTEDSITE if dane else Option.NONE)
        policy_type = "tlsa" if dane else "sts"
        error: TlsError | None = None
        try:
            client: AnyClient = yield Connect(self._server(host, address, options, mode.base))
        except TlsError as exc:
            result.tls_failures.append(TlsFailure(rpt_type(exc), policy_type, host.name, address))
            # The policy, not the host, forbids going on: the next MX, or later, may do better.
            error = TlsError(str(exc), reply=exc.reply, stage=exc.stage, is_temporary=True)
        if error is not None:
            raise error
        if not dane:
            return client, True
        info = client.tls_info
        if not any(r.usable for r in mode.tlsa):
            return client, False  # RFC 7672 §2.2: unusable records: TLS, unauthenticated
        der = info.peer_certificate_der if info else None
        match = (
            authenticate(mode.tlsa, der, info.peer_chain_der, mode.names) if info and der else None
        )
        if match is not None and match.record is not None:
            return client, True
        yield Close(client)
        kind, why = (
            (match.failure.result_type, match.failure.reason)
            if match and match.failure
            else ("validation-failure", "tlsa-mismatch")
        )
        result.tls_failures.append(TlsFailure(kind, "tlsa", host.name, address, why))
        detail = "" if why == "tlsa-mismatch" else f" ({why})"
        raise TlsError(
            f"the certificate of {host.name} ({address}) matches none of its DANE TLSA "
            f"records{detail}; no message was sent to it",
            stage="starttls",
            is_temporary=True,
        )

    def _opportunistic_client(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode
    ) -> Flow[tuple[AnyClient, bool | None]]:
        """Verified TLS, else unverified TLS, else plain text (see the module docstring)."""
        tries = (Option.SECURE_OPTIONAL, Option.SECURE_OPTIONAL | Option.TRUSTEDSITE, Option.NONE)
        failure: TlsError | None = None
        for index, options in enumerate(tries):
            try:
                client = yield Connect(self._server(host, address, options))
            except TlsError as exc:
                failure = failure or exc
                continue
            if mode.policy == "mta-sts:testing" and (failure or not client.is_tls):
                kind = rpt_type(failure) if failure else "starttls-not-supported"
                result.tls_failures.append(TlsFailure(kind, "sts", host.name, address))
            if not client.is_tls:
                return client, None
            return client, index == 0
        raise failure or TlsError(
            "no TLS", stage="starttls"
        )  # pragma: no cover - plain never TlsErrors

    def _forget_if_closed(self, client: AnyClient) -> None:
        if not client.is_connected:
            for key, (known, _) in list(self.clients.items()):
                if known is client:
                    del self.clients[key]

    def close(self) -> Flow[None]:
        """QUIT every connection still open."""
        for client, _ in self.clients.values():
            yield Close(client)
        self.clients.clear()
