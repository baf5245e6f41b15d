"""What every SASL mechanism shares: base64 on the wire, the secret, the base class.

Nothing here does I/O, reads a clock or logs. The mechanisms themselves live
in :mod:`smtpsubmit.auth` (and SCRAM in :mod:`smtpsubmit.scram`); the session
drives them.
"""

from __future__ import annotations

import abc
import base64
from collections.abc import Callable
from typing import ClassVar, TypeAlias

from smtpsubmit.errors import AuthError, ProtocolError

__all__ = ["MAX_CHALLENGES", "Mechanism", "Secret", "b64", "resolve_secret", "unb64"]

Secret: TypeAlias = str | Callable[[], str]
"""A password, or a zero-argument provider called once per authentication."""

MAX_CHALLENGES = 10
"""The most ``334`` challenges one authentication may take (fault A5); the one limit."""

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
# The base class
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
