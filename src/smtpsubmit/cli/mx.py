"""`smtpsubmit send --direct` and `smtpsubmit probe --mx DOMAIN`: direct delivery from a shell.

``send --direct`` hands the message to each recipient domain's MX hosts
(:func:`smtpsubmit.deliver_direct`) instead of a relay. ``probe --mx`` shows
what such a delivery would meet: the MX hosts in order, the MTA-STS policy,
each host's addresses and TLSA records (and whether DNSSEC authenticated
them), and the TLS each host offers. ``--dns-server`` points both at a
validating resolver; DANE needs one that sets the AD bit, reached over a path
you trust (normally on this machine).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from smtpsubmit.cli.errors import EX_NOHOST, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, UsageError

__all__ = ["add_direct_options", "add_probe_options", "resolver_for", "run_direct", "run_probe"]


def add_direct_options(parser: argparse.ArgumentParser, *, send: bool = True) -> None:
    group = parser.add_argument_group(
        "direct delivery (no relay; --port, --timeout, --ca-file apply)"
    )
    if send:
        group.add_argument(
            "--direct",
            action="store_true",
            help="deliver to each recipient domain's MX hosts (MTA-STS and DANE applied)",
        )
        group.add_argument("--no-mta-sts", action="store_true", help="ignore MTA-STS policies")
        group.add_argument("--no-dane", action="store_true", help="ignore DANE TLSA records")
        group.add_argument(
            "--mta-sts-cache", metavar="DIR", help="MTA-STS policy cache (default: user cache dir)"
        )
    group.add_argument(
        "--dns-server",
        metavar="ADDR[:PORT]",
        help="ask this (validating) resolver instead of the system's",
    )
    group.add_argument(
        "--mta-sts-port", metavar="N", type=int, default=443, help="port of the policy fetch (443)"
    )


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mx", metavar="DOMAIN", help="probe DOMAIN's MX hosts, MTA-STS policy and TLSA records"
    )
    add_direct_options(parser, send=False)


def _resolver(args: argparse.Namespace, timeout: float) -> Any:
    return resolver_for(args.dns_server, timeout)


def resolver_for(dns_server: str | None, timeout: float) -> Any:
    """The system's resolver, or the one at ``ADDR[:PORT]`` (``--dns-server``)."""
    from smtpsubmit.direct.resolve import default_resolver

    resolver = default_resolver(timeout)
    if dns_server:
        address, _, port = dns_server.rpartition(":")
        if not address or not port.isdigit():
            address, port = dns_server, "53"
        resolver.nameservers = [address.strip("[]")]
        resolver.port = int(port)
    return resolver


def run_direct(args: argparse.Namespace, message: Any) -> int:
    """Deliver and report; exit 0 when every recipient accepted the message, 75 when any
    was deferred (retry later), else 69 (some were refused for good)."""
    from smtpsubmit.cli.output import print_transcript_to
    from smtpsubmit.direct import PolicyCache, deliver_direct

    if args.server or args.host:
        raise UsageError("--direct delivers to the recipients' MX hosts: drop --server/--host")
    timeout = args.timeout or 30.0
    with print_transcript_to(sys.stderr if args.verbose else None):
        result = deliver_direct(
            message,
            resolver=_resolver(args, timeout),
            local_hostname=args.local_hostname,
            mta_sts=not args.no_mta_sts,
            dane=not args.no_dane,
            timeout=timeout,
            ca_file=args.ca_file,
            port=args.port or 25,
            mta_sts_port=args.mta_sts_port,
            policy_cache=PolicyCache(args.mta_sts_cache),
        )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        for name, domain in result.domains.items():
            where = f"via {domain.mx} ({domain.tls or 'no TLS'}, {domain.policy})"
            state = f"error: {domain.error}" if domain.error else where
            print(f"{name}: {state}")
            for address in domain.accepted:
                print(f"  accepted {address}")
            for address, reply in domain.refused.items():
                print(f"  refused  {address}: {reply}")
            for address, error in domain.deferred.items():
                print(f"  deferred {address}: {error}")
    if result.deferred:
        return EX_TEMPFAIL
    return EX_UNAVAILABLE if result.refused else EX_OK


def run_probe(args: argparse.Namespace) -> int:
    """The MX report; 0 when DNS answered, 68 for NXDOMAIN, 75 for a DNS failure."""
    from smtpsubmit.direct.resolve import DnsFailure, idna_domain, lookup_mx

    timeout = args.timeout or 20.0
    resolver = _resolver(args, timeout)
    domain = idna_domain(args.mx)
    report: dict[str, Any] = {"domain": domain, "mx": [], "mta_sts": None, "error": None}
    try:
        found = lookup_mx(resolver, domain, random.Random(0))  # noqa: S311 - display order
    except DnsFailure as exc:
        report["error"] = str(exc)
        _print_probe(args, report)
        if exc.null_mx:
            return EX_OK
        return EX_TEMPFAIL if exc.temporary else EX_NOHOST
    report["mx_authenticated"] = found.secure
    report["mta_sts"] = _policy_report(resolver, domain, args, timeout)
    for host in found.hosts:
        report["mx"].append(_host_report(resolver, host, found.secure, args, timeout))
    _print_probe(args, report)
    return EX_OK


def _policy_report(resolver: Any, domain: str, args: argparse.Namespace, timeout: float) -> Any:
    from smtpsubmit.direct.mta_sts import (
        PolicyError,
        fetch_policy,
        https_context,
        parse_policy,
        txt_id,
    )
    from smtpsubmit.direct.resolve import DnsFailure

    try:
        policy_id = txt_id(resolver, domain)
    except DnsFailure as exc:
        return {"error": str(exc)}
    if policy_id is None:
        return None
    try:
        text = fetch_policy(
            resolver,
            domain,
            context=https_context(args.ca_file),
            port=args.mta_sts_port,
            timeout=timeout,
        )
        policy = parse_policy(domain, policy_id, text, 0)
    except PolicyError as exc:
        return {"id": policy_id, "error": str(exc)}
    return {"id": policy.id, "mode": policy.mode, "mx": list(policy.mx), "max_age": policy.max_age}


def _host_report(
    resolver: Any, host: Any, mx_secure: bool, args: argparse.Namespace, timeout: float
) -> Any:
    """One MX host's addresses, TLSA and TLS. ``dane`` says whether delivery would apply
    DANE: only when the MX answer and the addresses are authenticated (RFC 7672 §2.2.1)."""
    from smtpsubmit.direct.dane import authenticate, parse_tlsa
    from smtpsubmit.direct.resolve import DnsFailure, lookup, lookup_addresses, lookup_tlsa

    port = args.port or 25
    entry: dict[str, Any] = {"host": host.name, "preference": host.preference, "tlsa": None}
    try:
        addresses = lookup_addresses(resolver, host.name)
    except DnsFailure as exc:
        entry["error"] = str(exc)
        return entry
    entry["addresses"], entry["addresses_authenticated"] = addresses.values, addresses.secure
    base = host.name
    if addresses.secure:
        try:  # as delivery does it: through a CNAME first (RFC 7672 §2.2.2)
            found = lookup_tlsa(resolver, port, host.name, addresses.canonical)
            if found is not None:
                base, values = found
                entry["tlsa"] = {"records": values, "authenticated": True, "base": base}
            else:
                tlsa = lookup(resolver, f"_{port}._tcp.{host.name}", "TLSA")
                entry["tlsa"] = {"records": tlsa.values, "authenticated": tlsa.secure}
        except DnsFailure as exc:
            entry["tlsa"] = {"error": str(exc)}
    if not addresses.values:
        return entry
    entry["tls"] = tls = _tls_report(base, addresses.values[0], port, args, timeout)
    der, chain = tls.pop("der", None), tls.pop("chain", ())
    records = (entry["tlsa"] or {}).get("records")
    entry["dane"] = bool(mx_secure and records and entry["tlsa"].get("authenticated"))
    if der is not None and records and entry["dane"]:
        names = list(dict.fromkeys((base, host.name)))
        match = authenticate([parse_tlsa(r) for r in records], der, chain, names)
        tls["dane_match"] = match.record is not None
        if match.record is not None:
            tls["dane_record"] = str(match.record)
        elif match.failure is not None and match.failure.reason != "tlsa-mismatch":
            tls["dane_failure"] = match.failure.reason
    return entry


def _tls_report(
    name: str, address: str, port: int, args: argparse.Namespace, timeout: float
) -> Any:
    """STARTTLS verified if possible, else unverified (the same two tries delivery makes)."""
    from smtpsubmit import Client, Option, Server
    from smtpsubmit.errors import SmtpError, TlsError

    failure: str | None = None
    for options in (Option.SECURE_OPTIONAL, Option.SECURE_OPTIONAL | Option.TRUSTEDSITE):
        server = Server(
            address,
            port=port,
            timeout=timeout,
            options=options | Option.EXTENDED,
            local_hostname=args.local_hostname,
            tls_server_name=name,
            ca_file=args.ca_file,
        )
        try:
            with Client(server) as client:
                info = client.tls_info if client.is_tls else None
                return {
                    "address": address,
                    "starttls": client.is_tls,
                    "version": info.version if info else None,
                    "verified": (failure is None) if info else None,
                    "verification": failure or ("ok" if info else None),
                    "der": info.peer_certificate_der if info else None,
                    "chain": info.peer_chain_der if info else (),
                }
        except TlsError as exc:
            failure = f"failed: {exc}"
        except SmtpError as exc:
            return {"address": address, "error": str(exc)}
    return {"address": address, "error": failure}


def _print_probe(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"domain {report['domain']}")
    if report["error"]:
        print(f"  {report['error']}")
        return
    policy = report["mta_sts"]
    if policy is None:
        print("  MTA-STS: none")
    elif "error" in policy:
        print(f"  MTA-STS: {policy['error']}")
    else:
        print(f"  MTA-STS: {policy['mode']} (id {policy['id']}; mx {', '.join(policy['mx'])})")
    for mx in report["mx"]:
        secure = "DNSSEC" if mx.get("addresses_authenticated") else "no DNSSEC"
        print(f"  MX {mx['preference']} {mx['host']} {mx.get('addresses', [])} ({secure})")
        tlsa = mx.get("tlsa")
        if tlsa and tlsa.get("records"):
            print(f"    TLSA: {'; '.join(tlsa['records'])}")
            if not mx.get("dane"):
                print(
                    "    DANE: not applied (the MX answer or the TLSA is not DNSSEC-authenticated)"
                )
        tls = mx.get("tls") or {}
        if tls.get("error"):
            print(f"    error: {tls['error']}")
        elif tls:
            what = tls["version"] or "no STARTTLS"
            print(f"    TLS: {what}; verification: {tls['verification']}")
            if "dane_match" in tls:
                verdict = f"match ({tls['dane_record']})" if tls["dane_match"] else "NO MATCH"
                why = f": {tls['dane_failure']}" if "dane_failure" in tls else ""
                print(f"    DANE: {verdict}{why}")
