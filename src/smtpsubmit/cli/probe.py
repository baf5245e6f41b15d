"""``smtpsubmit probe``: what a server offers, and whether its TLS checks out.

The probe connects like ``send`` would (same TLS verification flags), but
does not authenticate and sends no message. STARTTLS is negotiated whenever
the server offers it. A certificate that fails verification is reported,
not fatal: the probe reconnects with verification off to show the
certificate anyway, and exits 0 because it could talk to the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from smtpsubmit.cli import mx
from smtpsubmit.cli.errors import EX_OK, UsageError
from smtpsubmit.cli.options import (
    add_common_options,
    add_connection_options,
    build_server,
    resolve_account,
)
from smtpsubmit.cli.output import print_transcript_to
from smtpsubmit.client import Client
from smtpsubmit.errors import SmtpError, TlsError
from smtpsubmit.server import Option, Server
from smtpsubmit.session import Session
from smtpsubmit.transport import AsyncStream, SyncStream

DESCRIPTION = """\
Connect to SERVER and report what it offers: the greeting, the EHLO
capabilities (after STARTTLS when offered), the TLS version and cipher, the
server certificate's subject, issuer, names and expiry with the result of
verifying it, the AUTH mechanisms and the SIZE limit. Nothing is sent and no
password is needed or used.

SERVER is a URL (smtp://host:25, smtps://host, smtp+starttls://host) or
host[:port]; a bare port 465 means implicit TLS. Without a TLS flag the
probe uses STARTTLS when offered (--secure-optional); --secure makes it
required, --trusted-site skips verification. Verification uses the same
flags as `send`: --ca-file, --ca-path, --tls-server-name.

A failed verification is reported (the certificate is still shown) and the
exit status is 0: the probe could talk to the server. It is non-zero only
when no SMTP conversation happened (68 unknown host, 75 refused or timed
out, 69 not SMTP).
"""

EPILOG = """\
examples:
  smtpsubmit probe smtp.example.org                 # port 25, STARTTLS if offered
  smtpsubmit probe smtp.example.org:587 --json      # machine-readable
  smtpsubmit probe smtps://smtp.example.org         # implicit TLS on 465
  smtpsubmit probe 127.0.0.1:2525 --ca-file test-ca.pem --tls-server-name mx.test
  smtpsubmit probe --account work                   # the account's server
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "probe",
        help="show a server's greeting, capabilities, TLS and certificate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target", metavar="SERVER", nargs="?", help="URL or host[:port] (default: the account's)"
    )
    add_connection_options(parser, with_server=False)
    mx.add_probe_options(parser)
    add_common_options(parser, json_help="print the report as JSON on stdout")
    parser.set_defaults(run=run)


def _target_url(target: str) -> str:
    if "://" in target:
        return target
    host, port = target, ""
    if target.startswith("["):  # [IPv6]:port
        host, _, rest = target[1:].partition("]")
        port = rest.lstrip(":")
        host = f"[{host}]"
    elif target.count(":") == 1:
        host, port = target.split(":")
    elif ":" in target:  # a bare IPv6 address
        host = f"[{target}]"
    if port and not port.isdigit():
        raise UsageError(f"bad port in {target!r}")
    scheme = "smtps" if port == "465" else "smtp"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def run(args: argparse.Namespace) -> int:
    if args.mx:
        return mx.run_probe(args)
    explicit = bool(args.target or args.host)
    account = resolve_account(args, explicit_server=explicit)
    url = _target_url(args.target) if args.target else None
    if url is None and account is None and not args.host:
        raise UsageError("no server: give SERVER (a URL or host[:port]) or --account NAME")
    server = build_server(args, account, url=url, with_credentials=False)
    if not server.options & (Option.SECURE | Option.SECURE_IMPLICIT | Option.SECURE_OPTIONAL):
        server = dataclasses.replace(server, options=server.options | Option.SECURE_OPTIONAL)
    server = dataclasses.replace(server, options=server.options | Option.EXTENDED)
    with print_transcript_to(sys.stderr if args.verbose else None):
        report, error = probe(server)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    if report["connected"] or error is None:
        return EX_OK
    raise error


def probe(server: Server) -> tuple[dict[str, Any], SmtpError | None]:
    """Connect (reconnecting without verification when TLS fails) and describe it."""
    report: dict[str, Any] = {
        "server": f"{server.host}:{server.effective_port}",
        "host": server.host,
        "port": server.effective_port,
        "connected": False,
        "greeting": None,
        "esmtp": None,
        "starttls": None,
        "tls": None,
        "capabilities": {},
        "auth_mechanisms": [],
        "size_limit": None,
        "error": None,
    }
    attempts = [server]
    if Option.TRUSTEDSITE not in server.options:
        attempts.append(dataclasses.replace(server, options=server.options | Option.TRUSTEDSITE))
    tls_failure: TlsError | None = None
    for attempt in attempts:
        client = _ProbeClient(attempt)
        try:
            with client:
                _describe(report, client, attempt)
                der = _peer_der(client)
        except SmtpError as exc:
            report["error"] = str(exc)
            _describe_failure(report, client.session, attempt, exc)
            if isinstance(exc, TlsError) and attempt is not attempts[-1]:
                tls_failure = exc
                continue  # again without verification, to show the certificate
            return report, exc
        report["connected"] = True
        report["error"] = None
        tls = report["tls"]
        if tls is not None:
            if Option.TRUSTEDSITE in server.options:
                tls["verification"], tls["verified"] = "skipped (--trusted-site)", False
            elif tls_failure is not None:
                tls["verification"], tls["verified"] = f"failed: {tls_failure}", False
            else:
                tls["verification"], tls["verified"] = "ok", True
            tls["certificate"] = describe_certificate(der, tls.pop("_peer", None))
        return report, None
    raise AssertionError("unreachable")  # pragma: no cover


class _ProbeClient(Client):
    """A Client that keeps its session after a failure, to report how far it got."""

    session: Session | None = None

    def _new_session(self, stream: SyncStream | AsyncStream) -> Session:
        self.session = super()._new_session(stream)
        return self.session


def _describe_failure(
    report: dict[str, Any], session: Session | None, server: Server, exc: SmtpError
) -> None:
    """What a failed attempt learnt: the greeting, EHLO, whether STARTTLS was tried."""
    if session is None or session.greeting is None:
        return
    report["greeting"] = str(session.greeting)
    report["connected"] = True
    if session.esmtp:  # EHLO was answered (before TLS, if TLS then failed)
        report["esmtp"] = True
        report["capabilities"] = dict(session.capabilities)
    implicit = Option.SECURE_IMPLICIT in server.options
    offered = session.capabilities.has("STARTTLS")
    if not implicit and session.esmtp:
        report["starttls"] = "not offered" if not offered else report["starttls"]
    if isinstance(exc, TlsError):
        tried = implicit or (offered and exc.stage == "starttls")
        if not implicit and tried:
            report["starttls"] = "failed"
        report["tls"] = {
            "mode": "implicit" if implicit else "starttls",
            "established": False,
            "verification": f"failed: {exc}",
        }


def _describe(report: dict[str, Any], client: Client, server: Server) -> None:
    greeting = client.greeting
    caps = client.capabilities
    session = getattr(client, "session", None)
    report["greeting"] = str(greeting) if greeting is not None else None
    report["esmtp"] = bool(session.esmtp) if session is not None else bool(caps)
    report["capabilities"] = dict(caps)
    report["auth_mechanisms"] = caps.auth_mechanisms
    report["size_limit"] = caps.size
    implicit = Option.SECURE_IMPLICIT in server.options
    if implicit:
        report["starttls"] = None
    elif client.is_tls:
        report["starttls"] = "done"
    else:
        report["starttls"] = "not offered"
    info = client.tls_info
    if client.is_tls and info is not None:
        report["tls"] = {
            "mode": "implicit" if implicit else "starttls",
            "established": True,
            "version": info.version,
            "cipher": info.cipher,
            "_peer": info.peer_certificate,
        }
    else:
        report["tls"] = None


def _peer_der(client: Client) -> bytes | None:
    """The server certificate in DER form (present even when it was not verified)."""
    info = client.tls_info
    return info.peer_certificate_der if info is not None else None


def describe_certificate(der: bytes | None, peer: dict[str, Any] | None) -> dict[str, Any] | None:
    """Subject, issuer, names and validity from the DER certificate (or ssl's dict)."""
    if der:
        try:
            from cryptography import x509
        except ImportError:
            pass
        else:
            cert = x509.load_der_x509_certificate(der)
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                names = [str(v) for v in san.value.get_values_for_type(x509.DNSName)]
                names += [str(v) for v in san.value.get_values_for_type(x509.IPAddress)]
            except x509.ExtensionNotFound:
                names = []
            return {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "names": names,
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "serial": format(cert.serial_number, "x"),
            }
    if peer:
        return {
            "subject": _rdn(peer.get("subject", ())),
            "issuer": _rdn(peer.get("issuer", ())),
            "names": [v for _, v in peer.get("subjectAltName", ())],
            "not_before": peer.get("notBefore"),
            "not_after": peer.get("notAfter"),
            "serial": peer.get("serialNumber"),
        }
    return None


def _rdn(rdns: Any) -> str:
    return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn)


def print_table(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = [("server", report["server"])]
    rows.append(("greeting", report["greeting"] or "-"))
    if report["error"]:
        rows.append(("error", report["error"]))
    if report["starttls"] is not None:
        rows.append(("STARTTLS", report["starttls"]))
    tls = report["tls"]
    if tls:
        if tls.get("established"):
            rows.append(("TLS", f"{tls.get('version')} ({tls.get('mode')})"))
            rows.append(("cipher", str(tls.get("cipher"))))
        rows.append(("verification", str(tls.get("verification"))))
        cert = tls.get("certificate")
        if cert:
            rows.append(("subject", cert["subject"]))
            rows.append(("issuer", cert["issuer"]))
            rows.append(("names", ", ".join(cert["names"]) or "-"))
            rows.append(("valid", f"{cert['not_before']} .. {cert['not_after']}"))
    else:
        rows.append(("TLS", "none"))
    rows.append(("AUTH", " ".join(report["auth_mechanisms"]) or "not offered"))
    limit = report["size_limit"]
    rows.append(("SIZE", f"{limit} octets ({limit / 1048576:.1f} MiB)" if limit else "no limit"))
    caps = report["capabilities"]
    if caps:
        rows.append(
            ("capabilities", "\n".join(f"{k} {v}".rstrip() for k, v in sorted(caps.items())))
        )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for key, value in rows:
            print(f"{key:>14}  {value}")
        return
    table = Table(show_header=False, title=f"smtpsubmit probe {report['server']}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        style = None
        if key == "verification":
            style = "green" if value == "ok" else "red"
        table.add_row(key, value, style=style)
    Console().print(table)
