"""SASL mechanisms for SMTP AUTH (RFC 4954) as pure challenge/response objects.

Nothing here does I/O, reads a clock or logs: the session code drives a
:class:`Mechanism` with bytes and sends what it returns.

The driving rules, in order:

1. ``choose_mechanism(offered, preference, protected=…, allow_plaintext=…)``
   picks a class from the server's post-TLS ``AUTH`` list. It never picks a
   mechanism the caller left out of ``preference`` and never picks one that
   sends the secret in clear on an unprotected connection unless allowed.
2. ``mech = cls(username, resolve_secret(password))`` — a callable password
   (an OAuth token refresher) is called here, once per authentication.
   Inputs the mechanism cannot carry raise :class:`AuthError` before any byte
   is sent.
3. ``mech.initial_response()`` → bytes to send base64-encoded on the ``AUTH``
   line, or ``None`` when the mechanism waits for the first ``334``. Calling it
   means the response is being sent.
4. Each ``334`` challenge: ``mech.respond(unb64(text))`` → bytes, sent as
   ``b64(...)`` on a line of its own. More than :data:`MAX_CHALLENGES`
   challenges, or one the mechanism does not expect, is a
   :class:`ProtocolError`.
5. On ``235``: ``mech.finish(final_data_or_None)``. SCRAM raises
   :class:`AuthError` there unless it has verified the server's signature.

Secrets: a mechanism's ``repr()``/``str()`` shows its name and user name only,
and no exception raised here contains the password, the token or their
encoded forms. The session masks the transcript: the ``AUTH`` argument and
every continuation line, and every form of the secret in the server's replies.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, TypeAlias

from smtpsubmit.errors import AuthError, ProtocolError

__all__ = [
    "DEFAULT_PREFERENCE",
    "MAX_CHALLENGES",
    "MAX_SCRAM_ITERATIONS",
    "MECHANISMS",
    "CramMD5Mechanism",
    "LoginMechanism",
    "Mechanism",
    "OAuthBearerMechanism",
    "PlainMechanism",
    "ScramSHA1Mechanism",
    "ScramSHA256Mechanism",
    "Secret",
    "XOAuth2Mechanism",
    "b64",
    "choose_mechanism",
    "resolve_secret",
    "saslprep",
    "unb64",
    "validate_preference",
]

Secret: TypeAlias = str | Callable[[], str]
"""A password, or a zero-argument provider called once per authentication."""

MAX_CHALLENGES = 10
"""The most ``334`` challenges one authentication may take (fault A5)."""

MAX_SCRAM_ITERATIONS = 1_000_000
"""A hostile server could ask for 2**31 PBKDF2 rounds and stall the client."""

_STAGE = "auth"


# --------------------------------------------------------------------------
# base64 and secrets
# --------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    """Base64-encode a SASL response for the wire.

    An empty response gives ``""`` (an empty continuation line). RFC 4954 sends
    an empty *initial* response as ``"="``; no mechanism here produces one.
    """
    return base64.b64encode(raw).decode("ascii")


def _strict_b64decode(text: str) -> bytes:
    """Decode canonical base64 only: right alphabet, exact padding, zero pad bits.

    Raises ``ValueError`` (``binascii.Error`` is one) for anything else.
    """
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def unb64(text: str) -> bytes:
    """Decode the text of a ``334`` reply; invalid base64 is a :class:`ProtocolError`.

    Surrounding whitespace is ignored; anything else outside the base64
    alphabet, missing or extra padding, or non-zero pad bits is rejected (no
    silent skipping of garbage).
    """
    stripped = text.strip(" \t\r\n")
    try:
        return _strict_b64decode(stripped)
    except ValueError:
        shown = stripped[:40] + ("…" if len(stripped) > 40 else "")
        raise ProtocolError(
            f"server sent an authentication challenge that is not valid base64: {shown!r}",
            stage=_STAGE,
        ) from None


def resolve_secret(secret: Secret) -> str:
    """Return the password, calling the provider when ``secret`` is callable.

    A provider that raises, returns something other than a non-empty ``str``,
    gives :class:`AuthError`; the message names the failure, never a value.
    """
    if callable(secret):
        try:
            value = secret()
        except Exception as exc:
            raise AuthError(
                f"the password provider failed ({type(exc).__name__}); "
                "no authentication was attempted",
                stage=_STAGE,
                is_temporary=True,
            ) from exc
        source = "the password provider returned"
    else:
        value = secret
        source = "the password is"
    if not isinstance(value, str):
        raise AuthError(
            f"{source} a {type(value).__name__}, expected a str", stage=_STAGE, is_temporary=False
        )
    if not value:
        raise AuthError(f"{source} empty", stage=_STAGE, is_temporary=False)
    return value


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise AuthError(
            f"the {what} cannot be encoded as UTF-8 (it contains a lone surrogate)",
            stage=_STAGE,
            is_temporary=False,
        ) from None


def _refuse_chars(data: bytes, forbidden: bytes, what: str, mechanism: str) -> None:
    for byte in forbidden:
        if byte in data:
            raise AuthError(
                f"the {what} contains the control character {byte:#04x}, "
                f"which {mechanism} cannot carry",
                stage=_STAGE,
                is_temporary=False,
            )


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


def _saslname(username: str, mechanism: str) -> str:
    """RFC 5802 / 5801 ``saslname``: ``=`` → ``=3D``, ``,`` → ``=2C``."""
    if "\0" in username:
        raise AuthError(
            f"the user name contains a NUL character, which {mechanism} cannot carry",
            stage=_STAGE,
            is_temporary=False,
        )
    _utf8(username, "user name")
    return username.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------


class Mechanism(abc.ABC):
    """One SASL client exchange; a new object per authentication attempt.

    ``secret`` is already resolved (see :func:`resolve_secret`). Subclasses
    implement :meth:`_step`; :meth:`respond` counts the challenges.
    """

    name: ClassVar[str]
    sends_plaintext: ClassVar[bool] = False
    """True when the secret (or a bearer token) crosses the wire in clear."""

    def __init__(self, username: str, secret: str) -> None:
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError("username and secret must be str")
        self.username = username
        self._challenges = 0

    def initial_response(self) -> bytes | None:
        """Raw bytes for the ``AUTH`` line, or ``None`` to wait for a challenge."""
        return None

    def respond(self, challenge: bytes) -> bytes:
        """Answer one decoded ``334`` challenge with raw bytes (the caller base64s)."""
        self._challenges += 1
        if self._challenges > MAX_CHALLENGES:
            raise ProtocolError(
                f"server sent more than {MAX_CHALLENGES} authentication challenges",
                stage=_STAGE,
            )
        return self._step(challenge)

    @abc.abstractmethod
    def _step(self, challenge: bytes) -> bytes: ...

    def finish(self, final: bytes | None) -> None:  # noqa: B027 - optional hook
        """Called on ``235``; raise :class:`AuthError` if the server is not trusted."""

    def _unexpected(self) -> ProtocolError:
        return ProtocolError(f"server sent an unexpected {self.name} challenge", stage=_STAGE)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} username={self.username!r}>"

    __str__ = __repr__


class _OneShot(Mechanism):
    """A mechanism whose whole client message is one payload (PLAIN, XOAUTH2, …).

    The payload goes on the ``AUTH`` line; if the caller did not send it there
    and the server asks with an empty challenge, it goes in the answer instead.
    """

    _payload: bytes
    _sent = False

    def initial_response(self) -> bytes:
        self._sent = True
        return self._payload

    def _step(self, challenge: bytes) -> bytes:
        if not self._sent and not challenge:
            self._sent = True
            return self._payload
        return self._after(challenge)

    def _after(self, challenge: bytes) -> bytes:
        raise self._unexpected()


class PlainMechanism(_OneShot):
    """RFC 4616: ``\\0user\\0password``, empty authorisation identity."""

    name = "PLAIN"
    sends_plaintext = True

    def __init__(self, username: str, secret: str) -> None:
        super().__init__(username, secret)
        user = _utf8(username, "user name")
        password = _utf8(secret, "password")
        _refuse_chars(user, b"\0", "user name", self.name)
        _refuse_chars(password, b"\0", "password", self.name)
        self._payload = b"\0" + user + b"\0" + password


class LoginMechanism(Mechanism):
    """The de-facto LOGIN mechanism: user name, then password, one per challenge.

    Challenges are answered by order, not by their prompt text, except that a
    second challenge asking for the user name again is refused rather than
    answered with the password.
    """

    name = "LOGIN"
    sends_plaintext = True

    def __init__(self, username: str, secret: str) -> None:
        super().__init__(username, secret)
        self._user = _utf8(username, "user name")
        self._password = _utf8(secret, "password")
        self._round = 0

    def _step(self, challenge: bytes) -> bytes:
        self._round += 1
        if self._round == 1:
            return self._user
        if self._round == 2:
            if challenge.strip().lower().startswith(b"username"):
                raise ProtocolError(
                    "server asked for the LOGIN user name twice; not sending the password",
                    stage=_STAGE,
                )
            return self._password
        raise self._unexpected()


class CramMD5Mechanism(Mechanism):
    """RFC 2195: ``user`` SP hex(HMAC-MD5(password, challenge))."""

    name = "CRAM-MD5"

    def __init__(self, username: str, secret: str) -> None:
        super().__init__(username, secret)
        self._user = _utf8(username, "user name")
        self._password = _utf8(secret, "password")
        self._done = False

    def _step(self, challenge: bytes) -> bytes:
        if self._done or not challenge:
            raise self._unexpected()
        self._done = True
        digest = hmac.new(self._password, challenge, "md5").hexdigest()
        return self._user + b" " + digest.encode("ascii")


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


class _Bearer(_OneShot):
    """Shared by XOAUTH2 and OAUTHBEARER: the secret is an OAuth access token.

    A bearer token can be replayed by whoever reads it, so these count as
    sending the secret in clear. On failure the server sends one ``334`` with
    a base64 JSON status; :attr:`server_error` keeps its text (it holds no
    secret) and the answer lets the server send its final ``5xx``.
    """

    sends_plaintext = True
    _error_answer: ClassVar[bytes]

    def __init__(self, username: str, secret: str) -> None:
        super().__init__(username, secret)
        self.server_error: str | None = None
        token = _utf8(secret, "access token")
        _refuse_chars(token, bytes(range(32)) + b"\x7f", "access token", self.name)
        self._payload = self._prefix() + b"\x01auth=Bearer " + token + b"\x01\x01"

    @abc.abstractmethod
    def _prefix(self) -> bytes: ...

    def _after(self, challenge: bytes) -> bytes:
        if self.server_error is not None:
            raise self._unexpected()
        self.server_error = challenge.decode("utf-8", "replace")[:500]
        return self._error_answer


class XOAuth2Mechanism(_Bearer):
    """Google/Microsoft XOAUTH2: ``user=U\\x01auth=Bearer T\\x01\\x01``."""

    name = "XOAUTH2"
    _error_answer = b""

    def _prefix(self) -> bytes:
        user = _utf8(self.username, "user name")
        _refuse_chars(user, bytes(range(32)) + b"\x7f", "user name", self.name)
        return b"user=" + user


class OAuthBearerMechanism(_Bearer):
    """RFC 7628 OAUTHBEARER: ``n,a=U,\\x01auth=Bearer T\\x01\\x01``."""

    name = "OAUTHBEARER"
    _error_answer = b"\x01"

    def _prefix(self) -> bytes:
        if not self.username:
            return b"n,,"
        user = _utf8(_saslname(self.username, self.name), "user name")
        _refuse_chars(user, bytes(range(32)) + b"\x7f", "user name", self.name)
        return b"n,a=" + user + b","


MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (
        PlainMechanism,
        LoginMechanism,
        CramMD5Mechanism,
        ScramSHA1Mechanism,
        ScramSHA256Mechanism,
        XOAuth2Mechanism,
        OAuthBearerMechanism,
    )
}

DEFAULT_PREFERENCE: tuple[str, ...] = (
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "PLAIN",
    "LOGIN",
)
"""Strongest first. XOAUTH2/OAUTHBEARER need a token, so only when asked for."""


# --------------------------------------------------------------------------
# Negotiation
# --------------------------------------------------------------------------


def validate_preference(names: Iterable[str]) -> tuple[str, ...]:
    """Normalise ``Server.auth_mechanisms``: upper-case, duplicates dropped.

    An unknown name, an empty list or a bare string → ``ValueError``.
    """
    if isinstance(names, str | bytes):
        raise ValueError("auth_mechanisms must be a sequence of names, not a single string")
    result: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise ValueError(f"auth_mechanisms holds a {type(raw).__name__}, expected str")
        name = raw.strip().upper()
        if name not in MECHANISMS:
            raise ValueError(
                f"unknown authentication mechanism {raw!r}; known: {', '.join(MECHANISMS)}"
            )
        if name not in result:
            result.append(name)
    if not result:
        raise ValueError("auth_mechanisms is empty; leave it unset for the default order")
    return tuple(result)


def choose_mechanism(
    offered: Iterable[str],
    preference: Sequence[str] | None,
    *,
    protected: bool,
    allow_plaintext: bool,
) -> type[Mechanism]:
    """Pick the first mechanism of ``preference`` that the server offers.

    ``offered`` is the server's ``AUTH`` list after TLS. A mechanism the
    caller left out is never used; one that sends the secret in clear is
    skipped unless the connection is ``protected`` (TLS, or loopback as the
    caller decides) or ``allow_plaintext`` is set. When nothing is left,
    :class:`AuthError` says what the server offered, what was asked for, and
    what to change.
    """
    wanted = DEFAULT_PREFERENCE if preference is None else validate_preference(preference)
    server = [item.strip().upper() for item in offered if item.strip()]
    candidates = [name for name in wanted if name in server]
    if not candidates:
        offer_text = " ".join(server) if server else "no AUTH mechanisms"
        raise AuthError(
            f"no suitable authentication mechanism: the server offers {offer_text}, "
            f"the client accepts {' '.join(wanted)}"
            + (" (set by auth_mechanisms)" if preference is not None else ""),
            stage=_STAGE,
            is_temporary=False,
        )
    for name in candidates:
        cls = MECHANISMS[name]
        if not cls.sends_plaintext or protected or allow_plaintext:
            return cls
    raise AuthError(
        f"refusing to authenticate with {' or '.join(candidates)}: "
        "it would send the password in clear over a connection that is not protected by TLS. "
        "Use Option.SECURE (STARTTLS) or Option.SECURE_IMPLICIT, "
        "or set allow_plaintext_auth=True if this network path is trusted",
        stage=_STAGE,
        is_temporary=False,
    )
