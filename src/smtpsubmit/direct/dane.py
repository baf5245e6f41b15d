"""DANE for SMTP (RFC 7672): TLSA records of an MX host and matching them to its certificate.

A TLSA record set is trusted only when every answer that led to it was
authenticated (the caller checks the AD bits); then it binds the MX host to
a key, and delivery to that host needs STARTTLS and a match: no fallback to
plain text, and no web-PKI checks (DANE-EE ignores names and expiry, RFC
7672 §3.1.1).

Supported: DANE-EE (usage 3) with selector 0 (whole certificate) or 1
(SubjectPublicKeyInfo) and matching type 0 (exact), 1 (SHA-256) or 2
(SHA-512). DANE-TA (usage 2) is *recognised but not matched*: matching it
honestly means verifying the chain's signatures up to the trust anchor, which
the standard library cannot do after a handshake; an MX whose usable records
are all DANE-TA therefore gets mandatory, unauthenticated TLS (the RFC 7672
§2.2 rule for unusable records), and the failure is reported. PKIX usages
0 and 1 are unusable for SMTP (RFC 7672 §3.1.3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Tlsa", "match_leaf", "parse_tlsa", "spki_of"]

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
        """What this implementation can match (DANE-EE with a known selector and hash)."""
        return self.usage == DANE_EE and self.selector in (0, 1) and self.matching in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()}"


def parse_tlsa(text: str) -> Tlsa:
    """One TLSA record in presentation form (``3 1 1 ab12…``; the hex may hold spaces)."""
    usage, selector, matching, *data = text.split()
    return Tlsa(int(usage), int(selector), int(matching), bytes.fromhex("".join(data)))


def match_leaf(records: list[Tlsa], certificate_der: bytes) -> Tlsa | None:
    """The first usable DANE-EE record that matches the server's certificate, if any."""
    for record in records:
        if not record.usable:
            continue
        try:
            selected = certificate_der if record.selector == 0 else spki_of(certificate_der)
        except ValueError:
            return None
        if _digest(record.matching, selected) == record.data:
            return record
    return None


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
