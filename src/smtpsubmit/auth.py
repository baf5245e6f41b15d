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
import hmac
from collections.abc import Iterable, Sequence
from typing import ClassVar

from smtpsubmit.errors import AuthError, ProtocolError
from smtpsubmit.sasl import (
    _STAGE,
    MAX_CHALLENGES,
    Mechanism,
    Secret,
    _OneShot,
    _refuse_chars,
    _saslname,
    _utf8,
    b64,
    resolve_secret,
    unb64,
)
from smtpsubmit.scram import (
    MAX_SCRAM_ITERATIONS,
    ScramSHA1Mechanism,
    ScramSHA256Mechanism,
    saslprep,
)

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


# --------------------------------------------------------------------------
# Mechanisms (SCRAM in smtpsubmit.scram)
# --------------------------------------------------------------------------


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
