"""``deliver_direct``: hand a message straight to each recipient domain's mail exchangers.

Per domain (recipients grouped by their IDNA domain, one transaction each):
look up the MX hosts (:mod:`.resolve`), the domain's MTA-STS policy
(:mod:`.mta_sts`) and, per MX host, its TLSA records (:mod:`.dane`), then try
the hosts in order until one takes the message or refuses it for good.

How each MX host is spoken to — the one place these rules live:

- **DANE** (authenticated TLSA records exist): STARTTLS is required and the
  certificate must match a record (DANE-EE); no plain text, no web PKI.
  DANE takes precedence over MTA-STS for that host (RFC 8461 §2).
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
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.resolver

from smtpsubmit.client import Client
from smtpsubmit.direct.dane import Tlsa, match_leaf, parse_tlsa
from smtpsubmit.direct.mta_sts import Policy, PolicyCache, discover
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
    default_resolver,
    group_by_domain,
    lookup,
    lookup_addresses,
    lookup_mx,
)
from smtpsubmit.direct.result import DirectResult, DomainResult, MxAttempt, TlsFailure
from smtpsubmit.errors import (
    ConnectError,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
    RecipientsRefused,
    SmtpError,
    TlsError,
)
from smtpsubmit.server import Option, Server
from smtpsubmit.submit import MessageInput, _check_before_connecting, _is_message

__all__ = ["deliver_direct"]

DEFAULT_TIMEOUT = 30.0
# Failures before the transaction began: the next MX host may well do better.
_SESSION_STAGES = ("connect", "greeting", "ehlo", "starttls", "auth")


@dataclass(frozen=True)
class _Mode:
    """How to speak to one MX host (see the module docstring)."""

    policy: str  # the DomainResult.policy value this mode stands for
    tlsa: tuple[Tlsa, ...] = ()
    require_tls: bool = False
    verify: bool = False

    @property
    def key(self) -> tuple[object, ...]:
        return (self.policy, self.tlsa, self.require_tls, self.verify)


@dataclass
class _Delivery:
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
    clients: dict[tuple[object, ...], tuple[Client, bool | None]] = field(default_factory=dict)

    # -- one domain ------------------------------------------------------------------

    def domain(self, domain: str, recipients: list[str]) -> DomainResult:
        result = DomainResult(domain, list(recipients))
        try:
            mx = lookup_mx(self.resolver, domain, self.rng)
        except DnsFailure as exc:
            give_up(result, dns_error(exc, domain), recipients)
            return result
        policy = self._policy(domain, result)
        result.policy = f"mta-sts:{policy.mode}" if policy else "none"  # type: ignore[assignment]
        last: SmtpError | None = None
        for host in mx.hosts:
            error = self._host(result, host, policy, recipients)
            if error is None:
                return result
            last = error
        give_up(result, last or ConnectError(f"no MX host of {domain} could be tried"), recipients)
        return result

    def _policy(self, domain: str, result: DomainResult) -> Policy | None:
        if not self.mta_sts:
            return None
        found = discover(
            self.resolver,
            domain,
            self.cache,
            context=_https_context(self.ca_file),
            port=self.mta_sts_port,
            timeout=self.timeout,
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
        self, result: DomainResult, host: MxHost, policy: Policy | None, rcpts: list[str]
    ) -> SmtpError | None:
        """Try every address of one MX host; ``None`` once the domain is settled."""
        try:
            addresses = lookup_addresses(self.resolver, host.name)
            mode = self._mode(result, host, addresses.secure, policy)
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
            return ConnectError(
                f"the MX host {host.name} has no address",
                stage="connect",
                is_temporary=not host.implicit,  # no MX and no address: the domain takes no mail
            )
        last: SmtpError | None = None
        for address in addresses.values:
            last = self._address(result, host, address, mode, rcpts)
            if last is None:
                return None
        return last

    def _mode(
        self, result: DomainResult, host: MxHost, secure: bool, policy: Policy | None
    ) -> _Mode | None:
        """The mode for ``host``; ``None`` when an enforced policy rules it out."""
        if self.dane and secure:
            tlsa = lookup(self.resolver, f"_{self.port}._tcp.{host.name}", "TLSA")
            if tlsa.secure and tlsa.values:
                records = tuple(parse_tlsa(v) for v in tlsa.values)
                if not any(r.usable for r in records):
                    result.tls_failures.append(
                        TlsFailure("tlsa-invalid", "tlsa", host.name, None, "no-usable-tlsa-record")
                    )
                return _Mode("dane", records, require_tls=True)
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
    ) -> SmtpError | None:
        try:
            client, verified = self._client(result, host, address, mode)
        except SmtpError as exc:
            result.attempts.append(MxAttempt(host.name, address, mode.policy, error=exc))  # type: ignore[arg-type]
            return exc
        tls = client.tls_info.version if client.is_tls and client.tls_info else None
        attempt = MxAttempt(host.name, address, mode.policy, tls, verified)  # type: ignore[arg-type]
        try:
            sent = client.send(self.message, sender=self.sender, recipients=rcpts)
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
    ) -> tuple[Client, bool | None]:
        key = (host.name, address, *mode.key)
        if key in self.clients and self.clients[key][0].is_connected:
            return self.clients[key]
        if mode.require_tls:
            pair = self._secure_client(result, host, address, mode)
        else:
            pair = self._opportunistic_client(result, host, address, mode)
        self.clients[key] = pair
        return pair

    def _server(self, host: MxHost, address: str, options: Option) -> Server:
        return Server(
            address,
            port=self.port,
            timeout=self.timeout,
            options=options | Option.EXTENDED,
            local_hostname=self.local_hostname,
            tls_server_name=host.name,
            ca_file=self.ca_file,
        )

    def _secure_client(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode
    ) -> tuple[Client, bool | None]:
        """STARTTLS required: DANE (match the TLSA records ourselves) or MTA-STS enforce."""
        dane = bool(mode.tlsa)
        options = Option.SECURE | (Option.TRUSTEDSITE if dane else Option.NONE)
        client = Client(self._server(host, address, options))
        policy_type = "tlsa" if dane else "sts"
        error: TlsError | None = None
        try:
            client.connect()
        except TlsError as exc:
            result.tls_failures.append(TlsFailure(rpt_type(exc), policy_type, host.name, address))
            # The policy, not the host, forbids going on: the next MX, or later, may do better.
            error = TlsError(str(exc), reply=exc.reply, stage=exc.stage, is_temporary=True)
        if error is not None:
            raise error
        if not dane:
            return client, True
        der = client.tls_info.peer_certificate_der if client.tls_info else None
        if not any(r.usable for r in mode.tlsa):
            return client, False  # RFC 7672 §2.2: unusable records: TLS, unauthenticated
        if der is not None and match_leaf(list(mode.tlsa), der) is not None:
            return client, True
        client.close()
        result.tls_failures.append(
            TlsFailure("validation-failure", "tlsa", host.name, address, "tlsa-mismatch")
        )
        raise TlsError(
            f"the certificate of {host.name} ({address}) matches none of its DANE TLSA "
            "records; no message was sent to it",
            stage="starttls",
            is_temporary=True,
        )

    def _opportunistic_client(
        self, result: DomainResult, host: MxHost, address: str, mode: _Mode
    ) -> tuple[Client, bool | None]:
        """Verified TLS, else unverified TLS, else plain text (see the module docstring)."""
        tries = (Option.SECURE_OPTIONAL, Option.SECURE_OPTIONAL | Option.TRUSTEDSITE, Option.NONE)
        failure: TlsError | None = None
        for index, options in enumerate(tries):
            client = Client(self._server(host, address, options))
            try:
                client.connect()
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

    def _forget_if_closed(self, client: Client) -> None:
        if not client.is_connected:
            for key, (known, _) in list(self.clients.items()):
                if known is client:
                    del self.clients[key]

    def close(self) -> None:
        for client, _ in self.clients.values():
            client.close()
        self.clients.clear()


def _https_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# -- the public function ----------------------------------------------------------------


def deliver_direct(
    message: MessageInput,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    resolver: dns.resolver.Resolver | None = None,
    local_hostname: str | None = None,
    mta_sts: bool = True,
    dane: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    port: int = 25,
    mta_sts_port: int = 443,
    policy_cache: str | Path | PolicyCache | None = None,
    rng: random.Random | None = None,
) -> DirectResult:
    """Deliver ``message`` to each recipient domain's MX hosts (contract §13, docs/direct.md).

    Never raises for a network, DNS or server fault: every recipient ends up
    in ``accepted``, ``refused`` or ``deferred`` of the :class:`DirectResult`.
    Bad input (:class:`MessageError`) is raised before any lookup.
    ``resolver`` should be a validating resolver reached over a trusted path
    with the DO bit set (the default resolver sets it), or DANE never applies.
    ``port`` and ``mta_sts_port`` redirect SMTP and the policy fetch for test
    rigs; ``policy_cache`` is a directory (default: the user cache directory);
    ``rng`` orders MX hosts of equal preference.
    """
    _check_before_connecting(message, sender, recipients)
    if recipients is not None:
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
    elif _is_message(message):
        rcpts = message.envelope_recipients()  # type: ignore[union-attr]
    else:  # pragma: no cover - _check_before_connecting requires recipients
        raise MessageError("recipients= is required")
    try:
        groups = group_by_domain(rcpts)
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    cache = policy_cache if isinstance(policy_cache, PolicyCache) else PolicyCache(policy_cache)
    run = _Delivery(
        resolver=resolver or default_resolver(timeout),
        message=message,
        sender=sender,
        local_hostname=local_hostname,
        mta_sts=mta_sts,
        dane=dane,
        timeout=timeout,
        ca_file=ca_file,
        port=port,
        mta_sts_port=mta_sts_port,
        cache=cache,
        rng=rng or random.Random(),  # noqa: S311 - load spreading, not security
    )
    result = DirectResult(sender or _sender_of(message), _message_id_of(message))
    try:
        for domain, group in groups.items():
            result.domains[domain] = run.domain(domain, group)
    finally:
        with contextlib.suppress(Exception):
            run.close()
    return result


def _sender_of(message: MessageInput) -> str:
    if _is_message(message):
        prepared = message.prepare(allow_8bit=True, smtputf8=message.needs_smtputf8())  # type: ignore[union-attr]
        return str(prepared.sender)
    return ""  # pragma: no cover - raw messages require sender=


def _message_id_of(message: MessageInput) -> str | None:
    return str(message.message_id) if _is_message(message) else None  # type: ignore[union-attr]
