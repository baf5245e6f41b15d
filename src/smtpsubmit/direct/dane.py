"""DANE for SMTP (RFC 7672): TLSA records of an MX host and matching them to its certificate.

A TLSA record set is trusted only when every answer that led to it was
authenticated (the caller checks the AD bits); then it binds the MX host to
a key, and delivery to that host needs STARTTLS and a match: no fallback to
plain text, and no web-PKI checks.

Supported: DANE-EE (usage 3) and DANE-TA (usage 2), each with selector 0
(whole certificate) or 1 (SubjectPublicKeyInfo) and matching type 0 (exact),
1 (SHA-256) or 2 (SHA-512). DANE-EE matches the server's certificate and
ignores its names and expiry (RFC 7672 §3.1.1). DANE-TA matches a
certificate of the chain the server presented, which the server's
certificate must chain up to and which must bear the TLSA base domain or the
MX host name (RFC 7672 §3.1.2, §3.2.2): :mod:`.dane_ta` says how, and what it
leaves out. When ``cryptography`` is missing, DANE-TA records are unusable.
PKIX usages 0 and 1 are unusable for SMTP (RFC 7672 §3.1.3). Records that are
all unusable mean mandatory, unauthenticated TLS (RFC 7672 §2.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from smtpsubmit.direct import dane_ta
from smtpsubmit.direct.dane_ta import TaFailure

__all__ = ["Match", "Tlsa", "authenticate", "match_leaf", "parse_tlsa", "spki_of"]

DANE_TA = 2
DANE_EE = 3


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        """What this implementation can match: DANE-EE, or DANE-TA when it can check chains."""
        if self.selector not in (0, 1) or self.matching not in (0, 1, 2):
            return False
        return self.usage == DANE_EE or (self.usage == DANE_TA and dane_ta.available())

    def matches(self, certificate_der: bytes) -> bool:
        """Whether this record's selector and matching type select ``certificate_der``."""
        try:
            selected = certificate_der if self.selector == 0 else spki_of(certificate_der)
        except ValueError:
            return False
        return _digest(self.matching, selected) == self.data

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()}"


def parse_tlsa(text: str) -> Tlsa:
    """One TLSA record in presentation form (``3 1 1 ab12…``; the hex may hold spaces)."""
    usage, selector, matching, *data = text.split()
    return Tlsa(int(usage), int(selector), int(matching), bytes.fromhex("".join(data)))


def match_leaf(records: Sequence[Tlsa], certificate_der: bytes) -> Tlsa | None:
    """The first usable DANE-EE record that matches the server's certificate, if any."""
    for record in records:
        if record.usable and record.usage == DANE_EE and record.matches(certificate_der):
            return record
    return None


@dataclass(frozen=True)
class Match:
    """The record that authenticated the server, or why none did."""

    record: Tlsa | None
    failure: TaFailure | None = None


def authenticate(
    records: Sequence[Tlsa], leaf_der: bytes, chain_der: Sequence[bytes], names: Sequence[str]
) -> Match:
    """DANE-EE on the leaf first, then DANE-TA on the presented chain (``names``: §3.2.2)."""
    record = match_leaf(records, leaf_der)
    if record is not None:
        return Match(record)
    chain = [leaf_der, *(der for der in chain_der if der != leaf_der)]
    ta = [r for r in records if r.usable and r.usage == DANE_TA]
    if not ta:
        return Match(None, TaFailure("validation-failure", "tlsa-mismatch"))
    found = {der: r for r in ta for der in chain if r.matches(der)}
    if not found:
        return Match(None, TaFailure("validation-failure", "tlsa-mismatch"))
    first: TaFailure | None = None
    for anchor, record in found.items():  # the record reported is the anchor reached
        failure = dane_ta.verify_ta([anchor], chain, names)
        if failure is None:
            return Match(record)
        first = first or failure
    return Match(None, first)


def _digest(matching: int, data: bytes) -> bytes:
    if matching == 1:
        return hashlib.sha256(data).digest()
    if matching == 2:
        return hashlib.sha512(data).digest()
    return data


def _tlv(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``offset``."""
    if offset + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[offset], der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def spki_of(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1)."""
    _, cert_start, _ = _tlv(certificate_der, 0)
    tag, offset, tbs_end = _tlv(certificate_der, cert_start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, end = _tlv(certificate_der, offset)
    if tag == 0xA0:  # [0] EXPLICIT version
        offset = end
    # serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo
    for _ in range(5):
        _, _, offset = _tlv(certificate_der, offset)
    tag, _, end = _tlv(certificate_der, offset)
    if tag != 0x30 or end > tbs_end:
        raise ValueError("no SubjectPublicKeyInfo")
    return certificate_der[offset:end]
