"""Test keys for DKIM and a DNS stand-in that serves their public halves to dkimpy."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpsubmit.dkim import DkimSigner

# 512 bits: below the 1024-bit floor; cryptography will load it but not make one.
RSA_512_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEA43n0AdtWuW4MDCDu
1gFrpsWQ+T9lrYVBcxGQ0tYvl6ypHAmhqmH2fygpCT/1Q7v2QryzqVAl+XjmOC8c
j8fUFwIDAQABAkBeceHXa4PkVUZ3Oq0u+UQC6AA7HBFRLARyjBZ/EyKLbAHQtbkY
4qmuo2UJJVVLfqhCOSQIQdxZuRShTatk78txAiEA/xbrvaH7Py+b/aAycUGCS7o5
tmGYPFND0UzlpnimF40CIQDkSc0+nDoPE/bJnYdi/x73usH3VvrMzqsdcHynnCdv
MwIhAMfUoOBxYG1jUoQhVuK6OuQwAr4JPkUjxWDVKKJ8qUCRAiEAyXk00W/xcYMu
B2umo8ECpKHHM7Io7/3pWLcA3K/cwa8CIQDre7kFXDj1NJk7xpZIv6KCAcCH0Ctd
rhC8rxP5ISoTZA==
-----END PRIVATE KEY-----
"""


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@functools.cache
def rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.cache
def ed25519_pem() -> bytes:
    return _pem(ed25519.Ed25519PrivateKey.generate())


def rsa_signer(**kw: Any) -> DkimSigner:
    kw.setdefault("domain", "example.org")
    kw.setdefault("selector", "rsa")
    return DkimSigner(kw.pop("domain"), kw.pop("selector"), rsa_pem(), **kw)


def ed_signer(**kw: Any) -> DkimSigner:
    kw.setdefault("domain", "example.org")
    kw.setdefault("selector", "ed")
    return DkimSigner(kw.pop("domain"), kw.pop("selector"), ed25519_pem(), **kw)


def dnsfunc(signers: Sequence[DkimSigner]) -> Callable[..., bytes]:
    """What DNS would answer for each signer's ``selector._domainkey.domain`` TXT query."""
    records = {f"{s.dns_name}.".encode(): s.dns_record().encode() for s in signers}

    def lookup(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name if name.endswith(b".") else name + b".", b"")

    return lookup


def verify_each(message: bytes, signers: Sequence[DkimSigner]) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of ``message``, top first."""
    count = sum(
        1
        for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith(b"dkim-signature:")
    )
    checker = dkim.DKIM(message)
    verdicts = []
    for i in range(count):
        try:
            verdicts.append(bool(checker.verify(idx=i, dnsfunc=dnsfunc(signers))))
        except dkim.DKIMException:  # e.g. "body hash mismatch": a failed verification
            verdicts.append(False)
    return verdicts
