"""``DkimSigner``: a key, a domain and a selector, checked once, that turn header
fields and body hashes into ``DKIM-Signature`` fields (RFC 6376, RFC 8463).

Everything that can be wrong with the signer — the key, the domain, the
selector, the header list — is found when it is built, so a bad configuration
fails before any connection is made. The key never appears in a ``repr`` or an
error message.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from smtpsubmit.dkim.canon import HeaderField, canonicalize_header

__all__ = ["DEFAULT_HEADERS", "OVERSIGNED_HEADERS", "DkimSigner", "load_private_key"]

#: RFC 6376 §5.4.1's recommended fields plus the MIME fields and Message-ID, whose
#: change would alter what the reader sees.
DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
#: Listed once more in ``h=`` than they occur, so a copy added in transit breaks the
#: signature (RFC 6376 §8.15).
OVERSIGNED_HEADERS: tuple[str, ...] = ("From", "Subject", "To", "Date")

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
CANONICALIZATIONS = ("simple", "relaxed")
MIN_RSA_BITS = 1024
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_SIGNATURE_WIDTH = 70


class DkimSigner:
    """Signs messages for ``domain`` with the key published at ``selector._domainkey.domain``.

    ``private_key`` is PEM (``bytes``, ``str`` or a path to a PEM file): an RSA
    key of at least 1024 bits for ``rsa-sha256`` or an Ed25519 key for
    ``ed25519-sha256``; ``algorithm=None`` picks the one that fits the key.
    ``headers`` names the fields to sign (each occurrence is signed) and
    ``oversign`` those listed once more than they occur. ``expire_after``
    (seconds) adds ``x=``. ``d=`` need not match the From domain (a third-party
    signature, as a sending service makes); receivers apply DMARC alignment.
    Raises ``ValueError`` for any bad argument.
    """

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: bytes | str | os.PathLike[str],
        *,
        algorithm: str | None = None,
        headers: Iterable[str] = DEFAULT_HEADERS,
        oversign: Iterable[str] = OVERSIGNED_HEADERS,
        canonicalization: tuple[str, str] | str = ("relaxed", "relaxed"),
        expire_after: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.domain = _check_domain(domain)
        self.selector = _check_selector(selector)
        self._key = load_private_key(private_key)
        self.algorithm = _check_algorithm(algorithm, self._key)
        self.headers = _check_headers(headers, "headers")
        if "from" not in {h.lower() for h in self.headers}:
            raise ValueError("DKIM headers must include From (RFC 6376 §5.4)")
        self.oversign = _check_headers(oversign, "oversign")
        self.canonicalization = _check_canonicalization(canonicalization)
        if expire_after is not None and (
            isinstance(expire_after, bool)
            or not isinstance(expire_after, int | float)
            or expire_after <= 0
        ):
            raise ValueError("expire_after must be a positive number of seconds")
        self.expire_after = expire_after
        self._clock = clock

    @property
    def header_method(self) -> str:
        return self.canonicalization[0]

    @property
    def body_method(self) -> str:
        return self.canonicalization[1]

    @property
    def dns_name(self) -> str:
        """Where the public key is published: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record's text (``v=DKIM1; k=…; p=…``) for the public key."""
        return public_key_record(self._key)

    def signature_header(self, fields: Sequence[HeaderField], body_hash: bytes) -> bytes:
        """The ``DKIM-Signature`` field (with CRLF) for these header fields and body hash."""
        now = int(self._clock())
        names = self._header_list(fields)
        expiry = f" x={now + math.ceil(self.expire_after)};" if self.expire_after else ""
        tags = [
            f"v=1; a={self.algorithm}; c={self.header_method}/{self.body_method};",
            f"d={self.domain}; s={self.selector};",
            f"t={now};{expiry}",
            "h=" + _fold_list(names) + ";",
            f"bh={base64.b64encode(body_hash).decode('ascii')};",
            "b=",
        ]
        unsigned = "DKIM-Signature: " + "\r\n\t".join(tags)
        data = b"".join(
            canonicalize_header(f.raw, self.header_method) for f in _select(fields, names)
        )
        data += canonicalize_header(unsigned.encode("ascii"), self.header_method)[:-2]
        signature = base64.b64encode(self._sign(data)).decode("ascii")
        folded = "\r\n\t ".join(
            signature[i : i + _SIGNATURE_WIDTH] for i in range(0, len(signature), _SIGNATURE_WIDTH)
        )
        return (unsigned + folded + "\r\n").encode("ascii")

    def _header_list(self, fields: Sequence[HeaderField]) -> list[str]:
        """``h=``: each wanted field as often as it occurs, over-signed ones once more."""
        present: dict[str, int] = {}
        for field in fields:
            name = _field_name(field)
            present[name] = present.get(name, 0) + 1
        signed = {h.lower() for h in self.headers}
        oversigned = {h.lower() for h in self.oversign}
        names: list[str] = []
        for header in dict.fromkeys(h.lower() for h in (*self.headers, *self.oversign)):
            count = present.get(header, 0) if header in signed else 0
            names += [header] * (count + (header in oversigned))
        return names

    def _sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if self.algorithm == "ed25519-sha256":  # RFC 8463: Ed25519 over the SHA-256 hash
            signed: bytes = self._key.sign(hashlib.sha256(data).digest())
            return signed
        rsa_signed: bytes = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return rsa_signed

    def __repr__(self) -> str:
        return (
            f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}, "
            f"algorithm={self.algorithm!r}, "
            f"canonicalization={'/'.join(self.canonicalization)!r})"
        )


def _select(fields: Sequence[HeaderField], names: list[str]) -> list[HeaderField]:
    """RFC 6376 §5.4.2: each name takes the last occurrence not yet used, bottom up;
    a name with none left (over-signing) contributes nothing."""
    used: set[int] = set()
    chosen: list[HeaderField] = []
    for name in names:
        for index in range(len(fields) - 1, -1, -1):
            if index in used:
                continue
            if _field_name(fields[index]) == name:
                used.add(index)
                chosen.append(fields[index])
                break
    return chosen


def _field_name(field: HeaderField) -> str:
    return field.name.decode("ascii", "replace").strip().lower()


def _fold_list(names: list[str]) -> str:
    lines: list[str] = []
    line = ""
    for name in names:
        piece = name if not line else ":" + name
        if line and len(line) + len(piece) > _SIGNATURE_WIDTH:
            lines.append(line + ":")
            line = name
        else:
            line += piece
    lines.append(line)
    return "\r\n\t ".join(lines)


def load_private_key(key: bytes | str | os.PathLike[str]) -> Any:
    """A ``cryptography`` private key from PEM bytes or text, or a path to a PEM file."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "DKIM signing needs the 'cryptography' package: pip install 'smtpsubmit[dkim]'"
        ) from None
    if isinstance(key, bytearray | memoryview):
        key = bytes(key)
    if isinstance(key, str) and "-----BEGIN" in key:
        pem = key.encode("ascii", "replace")
    elif isinstance(key, bytes) and b"-----BEGIN" in key:
        pem = key
    elif isinstance(key, str | os.PathLike):
        try:
            pem = Path(key).read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read the DKIM key file {str(key)!r}: {exc.strerror}"
            ) from None
    else:
        raise ValueError("the DKIM private key must be PEM (bytes or text) or a path to a PEM file")
    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the DKIM private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("the DKIM private key is not a valid PEM private key") from None


def public_key_record(key: Any) -> str:
    """``v=DKIM1; k=rsa|ed25519; p=…`` for a private key's public half."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)  # RFC 8463: the bare 32 octets
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _check_algorithm(algorithm: str | None, key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"the DKIM RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are "
                "required (2048 advised)"
            )
        fits = "rsa-sha256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        fits = "ed25519-sha256"
    else:
        raise ValueError("the DKIM private key must be an RSA or Ed25519 key")
    if algorithm is None:
        return fits
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"DKIM algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}"
        )
    if algorithm != fits:
        raise ValueError(f"DKIM algorithm {algorithm!r} does not fit the key (a {fits} key)")
    return algorithm


def _check_domain(domain: str) -> str:
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError("the DKIM domain must be a non-empty domain name")
    try:
        ascii_domain = domain.strip().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"the DKIM domain {domain!r} is not a valid domain name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"the DKIM domain {domain!r} is not a valid domain name")
    return ascii_domain.lower()


def _check_selector(selector: str) -> str:
    if not isinstance(selector, str) or not all(_LABEL.match(p) for p in selector.split(".")):
        raise ValueError(
            f"the DKIM selector {selector!r} is not valid: dot-separated labels of letters, "
            "digits and hyphens"
        )
    return selector


def _check_headers(headers: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(headers, str):
        headers = [h for h in re.split(r"[\s,:]+", headers) if h]
    names = tuple(headers)
    for name in names:
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise ValueError(f"DKIM {what}: {name!r} is not a header field name")
        if name.lower() == "dkim-signature":
            raise ValueError(f"DKIM {what}: a signature cannot sign DKIM-Signature fields")
    return names


def _check_canonicalization(value: tuple[str, str] | str) -> tuple[str, str]:
    parts = tuple(value.split("/")) if isinstance(value, str) else tuple(value)
    if len(parts) == 1:
        parts = (parts[0], "simple")  # RFC 6376 §3.5: a lone value names the header method
    if len(parts) != 2 or any(p not in CANONICALIZATIONS for p in parts):
        raise ValueError(
            "DKIM canonicalization must be (header, body) with each 'simple' or 'relaxed', "
            f"not {value!r}"
        )
    return (parts[0], parts[1])
