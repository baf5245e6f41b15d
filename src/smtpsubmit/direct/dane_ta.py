"""DANE-TA (RFC 7672 §3.1.2, RFC 7671 §5.2): a chain that ends at a trust anchor named in DNS.

A DANE-TA(2) record names a certificate (selector 0) or public key (selector
1) that must appear in the chain the server presented; the server's leaf must
then chain up to it, and — unlike DANE-EE — its names are checked (RFC 7672
§3.2.2). The public CA store plays no part: the anchor is the only trust.

How the chain is checked, and why this way. Python's ``ssl`` verifies only
during a handshake, against anchors chosen before it; the anchor here is only
known once the server's chain has been seen. So the handshake is done
without verification, the presented chain is read from it
(:attr:`smtpsubmit.tls.TlsInfo.peer_chain_der`), and the path from the leaf
to the anchor is checked here, with ``cryptography`` doing every signature
check (``verify_directly_issued_by``: the issuer's name and its signature).
Around it, the RFC 5280 §6.1 checks that matter for a path of presented
certificates:

- each link: issuer name and signature; every certificate below the anchor
  within its validity period; every issuer below the anchor a CA
  (``basicConstraints cA``, ``pathLenConstraint``, ``keyCertSign`` when
  ``keyUsage`` is present);
- the anchor is an input, as RFC 5280 §6.1.1 (d) has it: its own validity
  and constraints are not checked (a 2 1 x record names a bare key, which has
  neither), only its signature on the certificate below it;
- the leaf: ``extendedKeyUsage``, when present, allows serverAuth; its DNS
  names (SAN ``dNSName``, else the subject CN) match a reference identifier —
  the TLSA base domain or the MX host name — with a wildcard only as the whole
  first label, matching exactly one label (RFC 7672 §3.2.3).

Limits: the chain is built from what the server sent (no AIA fetching, no
revocation, as with every DANE implementation); name constraints and
certificate policies are not processed; the TA must be in the presented chain
(RFC 7672 §3.1.2 requires servers to send it, so a 2 1 0 record whose key is
absent from the chain does not match). ``cryptography`` is an optional
dependency (``smtpsubmit[direct]``); without it DANE-TA records are unusable
(RFC 7672 §2.2: TLS still required, unauthenticated) and that is reported.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TaFailure", "available", "name_matches", "verify_ta"]

MAX_DEPTH = 10  # certificates from the leaf to the anchor, the anchor included


@dataclass(frozen=True)
class TaFailure:
    """Why a DANE-TA check failed: an RFC 8460 result type and words for people."""

    result_type: str
    reason: str


def available() -> bool:
    """Whether DANE-TA can be checked (``cryptography`` is installed)."""
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:  # pragma: no cover - the test environment has it
        return False
    return True


def name_matches(presented: str, reference: str) -> bool:
    """RFC 7672 §3.2.3: exact (case-insensitive), or ``*`` as the whole first label for one."""
    presented = presented.lower().rstrip(".")
    reference = reference.lower().rstrip(".")
    if not presented or not reference:
        return False
    if presented == reference:
        return True
    first, dot, rest = presented.partition(".")
    if first != "*" or not dot or "*" in rest or rest.count(".") < 1:
        return False  # only "*.example.com"-style wildcards, never "*.com"
    label, dot, parent = reference.partition(".")
    return bool(label) and bool(dot) and parent == rest


def verify_ta(
    anchors: Sequence[bytes],
    chain: Sequence[bytes],
    names: Sequence[str],
    now: datetime.datetime | None = None,
) -> TaFailure | None:
    """Check that ``chain[0]`` (the leaf) chains up to one of ``anchors`` and bears a name.

    ``anchors`` are the DER certificates of the presented chain that matched a
    DANE-TA record; ``names`` the reference identifiers. ``None`` means verified.
    """
    from cryptography import x509

    when = now or datetime.datetime.now(datetime.UTC)
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return TaFailure("validation-failure", f"a presented certificate cannot be read: {exc}")
    if not certs:
        return TaFailure("validation-failure", "the server presented no certificate")
    anchor_set = set(anchors)
    path = [0]  # indices into chain, leaf first
    while chain[path[-1]] not in anchor_set:
        if len(path) >= MAX_DEPTH:
            return TaFailure("validation-failure", "the chain to the trust anchor is too long")
        below = certs[path[-1]]
        issuer = _issuer_of(below, certs, path, anchor_set, chain)
        if issuer is None:
            return TaFailure(
                "certificate-not-trusted",
                "the presented chain does not lead from the server's certificate to the "
                "DANE-TA trust anchor (a missing or wrongly signed link)",
            )
        path.append(issuer)
    for depth, index in enumerate(path):
        cert = certs[index]
        if chain[index] in anchor_set:
            break
        failure = _check_validity(cert, when) or (_check_issuer(cert, depth) if depth > 0 else None)
        if failure:
            return failure
    return _check_leaf(certs[0], names)


def _issuer_of(
    cert: Any, certs: list[Any], path: list[int], anchors: set[bytes], chain: Sequence[bytes]
) -> int | None:
    """The index of a presented certificate that signed ``cert`` (anchors first)."""
    order = sorted(range(len(certs)), key=lambda i: chain[i] not in anchors)
    for index in order:
        if index in path:
            continue
        try:
            cert.verify_directly_issued_by(certs[index])
        except Exception:  # noqa: S112 - wrong name, bad signature, unsupported: not this one
            continue
        return index
    return None


def _check_validity(cert: Any, when: datetime.datetime) -> TaFailure | None:
    if when > cert.not_valid_after_utc:
        return TaFailure(
            "certificate-expired", f"a certificate in the chain expired ({_who(cert)})"
        )
    if when < cert.not_valid_before_utc:
        return TaFailure(
            "certificate-not-trusted", f"a certificate in the chain is not valid yet ({_who(cert)})"
        )
    return None


def _check_issuer(cert: Any, below: int) -> TaFailure | None:
    """An intermediate below the anchor: a CA allowed to sign ``below - 1`` more CAs."""
    from cryptography import x509

    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        return TaFailure("certificate-not-trusted", f"{_who(cert)} is not a CA but issued one")
    if constraints.path_length is not None and below - 1 > constraints.path_length:
        return TaFailure("certificate-not-trusted", f"{_who(cert)}: path length exceeded")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not usage.key_cert_sign:
        return TaFailure("certificate-not-trusted", f"{_who(cert)} may not sign certificates")
    return None


def _check_leaf(cert: Any, names: Sequence[str]) -> TaFailure | None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        purposes = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        purposes = None
    if purposes is not None and not (
        ExtendedKeyUsageOID.SERVER_AUTH in purposes
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in purposes
    ):
        return TaFailure("certificate-not-trusted", "the server's certificate is not for servers")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        presented = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        presented = []
    if not presented:  # RFC 7672 §3.2.2: the CN only when there is no DNS-ID
        presented = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if any(name_matches(p, n) for p in presented for n in names):
        return None
    return TaFailure(
        "certificate-host-mismatch",
        f"the server's certificate names {', '.join(presented) or 'nothing'}, "
        f"not {' or '.join(dict.fromkeys(names))}",
    )


def _who(cert: Any) -> str:
    return str(cert.subject.rfc4514_string()) or "an unnamed certificate"
