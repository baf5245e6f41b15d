"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), with SASLprep (RFC 4013).

The mechanisms that prove the server knows the password too. Pure: no I/O,
no clock; re-exported by :mod:`smtpsubmit.auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from typing import ClassVar

from smtpsubmit.errors import AuthError, ProtocolError
from smtpsubmit.sasl import _STAGE, Mechanism, _saslname, _strict_b64decode, _utf8, b64

__all__ = ["MAX_SCRAM_ITERATIONS", "ScramSHA1Mechanism", "ScramSHA256Mechanism", "saslprep"]

MAX_SCRAM_ITERATIONS = 1_000_000
"""A hostile server could ask for 2**31 PBKDF2 rounds and stall the client."""


# --------------------------------------------------------------------------
# SASLprep (RFC 4013) with the stdlib stringprep tables
# --------------------------------------------------------------------------

_PROHIBITED = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties / deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str) -> str:
    """Prepare ``text`` with the SASLprep profile (RFC 4013), as a query string.

    Maps non-ASCII spaces to SPACE and drops characters mapped to nothing,
    normalises NFKC, rejects prohibited output and bad bidirectional text with
    ``ValueError``. Unassigned code points are allowed (query semantics). The
    error message names the rule broken and the position, never the character.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normal = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normal:
        return normal
    for index, ch in enumerate(normal):
        for table in _PROHIBITED:
            if table(ch):
                raise ValueError(
                    f"SASLprep: prohibited character at position {index} ({table.__name__})"
                )
    has_ral = any(stringprep.in_table_d1(ch) for ch in normal)
    if has_ral:
        if any(stringprep.in_table_d2(ch) for ch in normal):
            raise ValueError("SASLprep: mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end with RTL characters")
    return normal


# --------------------------------------------------------------------------
# SCRAM
# --------------------------------------------------------------------------

_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII except ","


class _Scram(Mechanism):
    """RFC 5802 SCRAM without channel binding (gs2 header ``n,,``).

    The password is SASLprepped; the user name is only escaped (``=``/``,``).
    The server must prove it knows the password: :meth:`finish` raises
    :class:`AuthError` unless the server signature was received and matched.
    """

    _hash: ClassVar[str]
    _GS2 = "n,,"

    def __init__(self, username: str, secret: str, *, _nonce: str | None = None) -> None:
        super().__init__(username, secret)
        try:
            prepared = saslprep(secret)
        except ValueError as exc:
            raise AuthError(
                f"the password cannot be used with {self.name}: {exc}; "
                "choose another mechanism with auth_mechanisms",
                stage=_STAGE,
                is_temporary=False,
            ) from None
        self._password = _utf8(prepared, "password")
        user = _saslname(username, self.name)
        if not user:
            raise AuthError(f"{self.name} needs a user name", stage=_STAGE, is_temporary=False)
        nonce = secrets.token_urlsafe(24) if _nonce is None else _nonce
        if not _NONCE.fullmatch(nonce):
            raise ValueError("a SCRAM nonce must be printable ASCII without ','")
        self._nonce = nonce
        self._client_first_bare = f"n={user},r={nonce}"
        self._state = "start"
        self._server_signature = b""

    def initial_response(self) -> bytes:
        self._state = "first-sent"
        return (self._GS2 + self._client_first_bare).encode("utf-8")

    def _step(self, challenge: bytes) -> bytes:
        if self._state == "start" and not challenge:
            return self.initial_response()
        if self._state == "first-sent":
            self._state = "final-sent"
            return self._client_final(challenge)
        if self._state == "final-sent":
            self._verify(challenge)
            return b""
        raise self._unexpected()

    def finish(self, final: bytes | None) -> None:
        if self._state == "final-sent" and final:
            self._verify(final)
        if self._state != "verified":
            raise AuthError(
                f"server accepted {self.name} without proving it knows the password "
                "(no server signature) — possible impostor",
                stage=_STAGE,
                is_temporary=False,
            )

    # -- helpers ----------------------------------------------------------

    def _malformed(self, what: str) -> ProtocolError:
        return ProtocolError(f"malformed {self.name} {what}", stage=_STAGE)

    def _attributes(self, message: bytes, what: str) -> list[tuple[str, str]]:
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise self._malformed(what) from None
        pairs: list[tuple[str, str]] = []
        for part in text.split(","):
            if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
                raise self._malformed(what)
            pairs.append((part[0], part[2:]))
        return pairs

    def _client_final(self, server_first: bytes) -> bytes:
        what = "server-first message"
        pairs = self._attributes(server_first, what)
        if pairs[0][0] == "m":
            raise AuthError(
                f"server requires a {self.name} extension this client does not support",
                stage=_STAGE,
                is_temporary=False,
            )
        attrs = dict(reversed(pairs))  # first occurrence wins
        if "r" not in attrs or "s" not in attrs or "i" not in attrs:
            raise self._malformed(what)
        nonce, salt_text, count = attrs["r"], attrs["s"], attrs["i"]
        if not _NONCE.fullmatch(nonce):
            raise self._malformed(what)
        if not nonce.startswith(self._nonce):
            raise AuthError(
                f"{self.name} server nonce does not extend ours — possible impostor or replay",
                stage=_STAGE,
                is_temporary=False,
            )
        try:
            salt = _strict_b64decode(salt_text)
        except ValueError:
            raise self._malformed(what) from None
        if not (count.isascii() and count.isdigit() and len(count) <= 10):
            raise self._malformed(what)
        iterations = int(count)
        if iterations < 1:
            raise self._malformed(what)
        if iterations > MAX_SCRAM_ITERATIONS:
            raise ProtocolError(
                f"{self.name} server asked for {iterations} iterations "
                f"(more than {MAX_SCRAM_ITERATIONS})",
                stage=_STAGE,
            )

        without_proof = f"c={b64(self._GS2.encode('ascii'))},r={nonce}"
        auth_message = ",".join(
            (self._client_first_bare, server_first.decode("utf-8"), without_proof)
        ).encode("utf-8")
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", self._hash)
        stored_key = hashlib.new(self._hash, client_key).digest()
        client_signature = hmac.digest(stored_key, auth_message, self._hash)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self._hash)
        self._server_signature = hmac.digest(server_key, auth_message, self._hash)
        return f"{without_proof},p={b64(proof)}".encode("ascii")

    def _verify(self, server_final: bytes) -> None:
        what = "server-final message"
        pairs = self._attributes(server_final, what)
        key, value = pairs[0]
        if key == "e":
            shown = value[:80]
            raise AuthError(
                f"{self.name} server reported an error: {shown}", stage=_STAGE, is_temporary=False
            )
        if key != "v":
            raise self._malformed(what)
        try:
            signature = _strict_b64decode(value)
        except ValueError:
            raise self._malformed(what) from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthError(
                f"{self.name} server signature mismatch — possible impostor",
                stage=_STAGE,
                is_temporary=False,
            )
        self._state = "verified"


class ScramSHA1Mechanism(_Scram):
    """RFC 5802 SCRAM-SHA-1."""

    name = "SCRAM-SHA-1"
    _hash = "sha1"


class ScramSHA256Mechanism(_Scram):
    """RFC 7677 SCRAM-SHA-256."""

    name = "SCRAM-SHA-256"
    _hash = "sha256"
