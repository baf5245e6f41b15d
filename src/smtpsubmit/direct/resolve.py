"""DNS for direct delivery: MX hosts in order, their addresses, TXT and TLSA records.

RFC 5321 §5.1: MX records by preference (random among equal preferences, so
load spreads as the domain intended), the domain itself as an implicit MX
when it has none, and RFC 7505's null MX (``MX 0 .``) meaning "this domain
takes no mail". Every answer says whether it was authenticated (the AD bit of
a validating resolver): DANE may only trust TLSA records reached through
authenticated answers.

DNS failures become :class:`DnsFailure` with ``temporary`` set as RFC 5321
§5.1 and RFC 7505 want: a name that does not exist, or a null MX, is
permanent; SERVFAIL and timeouts are temporary (try again later).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

__all__ = [
    "DnsFailure",
    "MxHost",
    "MxLookup",
    "Records",
    "default_resolver",
    "group_by_domain",
    "idna_domain",
    "lookup",
    "lookup_addresses",
    "lookup_mx",
    "lookup_tlsa",
]


class DnsFailure(Exception):
    """A DNS answer that stops delivery to a domain or host."""

    def __init__(self, message: str, *, temporary: bool, null_mx: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.null_mx = null_mx


@dataclass(frozen=True, order=True)
class MxHost:
    """One mail exchanger (host name as a lower-case A-label, no trailing dot)."""

    name: str
    preference: int
    implicit: bool = False  # the domain itself, for lack of MX records (RFC 5321 §5.1)


@dataclass(frozen=True)
class MxLookup:
    hosts: list[MxHost]
    secure: bool  # the MX answer (or its authenticated absence) carried the AD bit


@dataclass(frozen=True)
class Records:
    """An RRset as text, whether the answer was authenticated, and whether the name exists.

    ``canonical`` is the name the answer is for once CNAMEs are followed (lower
    case, no trailing dot); ``None`` when no CNAME was involved.
    """

    values: list[str]
    secure: bool
    exists: bool = True
    canonical: str | None = None


def default_resolver(timeout: float) -> dns.resolver.Resolver:
    """The system's resolver with the DO bit set, so a validating one reports AD.

    Without a resolver configuration (no /etc/resolv.conf), a resolver on this
    machine (127.0.0.1) is asked: what a mail host running Unbound would have.
    """
    try:
        resolver = dns.resolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
    resolver.lifetime = timeout
    resolver.use_edns(0, dns.flags.DO, 1232)
    return resolver


def idna_domain(domain: str) -> str:
    """The lower-case A-label form of a domain (``Bücher.example`` → ``xn--bcher-kva.example``)."""
    domain = domain.strip().rstrip(".")
    if not domain:
        raise ValueError("empty domain")
    try:
        return dns.name.from_unicode(domain.lower()).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from None


def group_by_domain(recipients: Iterable[str]) -> dict[str, list[str]]:
    """Recipients grouped by their domain's A-label form, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for address in recipients:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            raise ValueError(f"{address!r} has no domain")
        if domain.startswith("["):
            raise ValueError(f"{address!r}: address literals cannot be delivered directly")
        group = groups.setdefault(idna_domain(domain), [])
        if address not in group:
            group.append(address)
    return groups


def _secure(answer: dns.resolver.Answer) -> bool:
    return bool(answer.response.flags & dns.flags.AD)


def lookup(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> Records:
    """One query; NXDOMAIN and "no data" come back empty, other failures raise.

    SERVFAIL (which a validating resolver also returns for bogus, i.e. forged or
    broken, signatures) and timeouts are temporary :class:`DnsFailure`.
    """
    try:
        answer = resolver.resolve(name + ".", rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN as exc:
        responses: dict[object, dns.message.Message] = exc.responses()  # type: ignore[no-untyped-call]
        secure = any(bool(r.flags & dns.flags.AD) for r in responses.values())
        return Records([], secure, exists=False)
    except dns.resolver.NoNameservers:
        raise DnsFailure(
            f"DNS lookup of {name} {rdtype} failed (SERVFAIL)", temporary=True
        ) from None
    except dns.exception.Timeout:
        raise DnsFailure(f"DNS lookup of {name} {rdtype} timed out", temporary=True) from None
    except dns.exception.DNSException as exc:
        raise DnsFailure(f"DNS lookup of {name} {rdtype} failed: {exc}", temporary=True) from None
    values = [rdata.to_text() for rdata in answer.rrset] if answer.rrset is not None else []
    final = answer.canonical_name.to_text(omit_final_dot=True).lower()
    return Records(values, _secure(answer), canonical=final if final != name.lower() else None)


def lookup_mx(resolver: dns.resolver.Resolver, domain: str, rng: random.Random) -> MxLookup:
    """The domain's MX hosts in the order to try them."""
    records = lookup(resolver, domain, "MX")
    if not records.exists:
        raise DnsFailure(f"the domain {domain} does not exist (NXDOMAIN)", temporary=False)
    parsed: list[MxHost] = []
    for text in records.values:
        preference, _, exchange = text.partition(" ")
        parsed.append(MxHost(exchange.rstrip(".").lower(), int(preference)))
    if any(mx.name == "" for mx in parsed):
        # RFC 7505 §3: a null MX is the only MX record; either way, the domain says "no mail".
        raise DnsFailure(
            f"the domain {domain} accepts no mail (null MX, RFC 7505)",
            temporary=False,
            null_mx=True,
        )
    if not parsed:
        return MxLookup([MxHost(domain, 0, implicit=True)], records.secure)
    return MxLookup(_ordered(parsed, rng), records.secure)


def _ordered(hosts: list[MxHost], rng: random.Random) -> list[MxHost]:
    """By preference, shuffled among equal preferences (RFC 5321 §5.1)."""
    out: list[MxHost] = []
    for preference in sorted({h.preference for h in hosts}):
        # sorted first: resolvers rotate RRsets, and a seeded rng must give one order
        group = sorted(h for h in hosts if h.preference == preference)
        rng.shuffle(group)
        out.extend(group)
    return out


def lookup_addresses(resolver: dns.resolver.Resolver, host: str) -> Records:
    """IPv4 then IPv6 addresses of ``host``; secure only when every answer was.

    A temporary failure of one family is tolerated when the other gave addresses.
    When ``host`` is an alias, ``canonical`` is the name its CNAME chain ends at
    (DANE looks for TLSA records there first, RFC 7672 §2.2.2).
    """
    values: list[str] = []
    secure = True
    exists = False
    canonical: str | None = None
    failure: DnsFailure | None = None
    for rdtype in ("A", "AAAA"):
        try:
            records = lookup(resolver, host, rdtype)
        except DnsFailure as exc:
            failure, secure = exc, False
            continue
        values += records.values
        secure = secure and records.secure
        exists = exists or records.exists
        canonical = canonical or (records.canonical if records.values else None)
    if failure is not None and not values:
        raise failure
    return Records(values, secure and bool(values), exists, canonical)


def lookup_tlsa(
    resolver: dns.resolver.Resolver, port: int, host: str, canonical: str | None
) -> tuple[str, list[str]] | None:
    """(TLSA base domain, records) when authenticated TLSA records apply to ``host``.

    RFC 7672 §2.2.2: for an alias (``canonical``, the name its secure CNAME
    chain ends at; the caller checked that the address answers were
    authenticated), the expanded name first; when that name securely has
    none, the MX host name. An unauthenticated answer means no DANE.
    """
    for base in (canonical, host) if canonical and canonical != host else (host,):
        tlsa = lookup(resolver, f"_{port}._tcp.{base}", "TLSA")
        if not tlsa.secure:
            return None
        if tlsa.values:
            return base, tlsa.values
    return None
