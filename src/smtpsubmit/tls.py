"""TLS policy: the one place that builds ``ssl.SSLContext`` objects and turns
``ssl`` failures into a :class:`TlsError` that says what failed and which
option changes it.

Verification is on by default. The trust anchors are the system store, or —
when ``ca_file`` / ``ca_path`` is set — those CAs *instead of* it, as
``ssl.create_default_context(cafile=...)``, msmtp's ``tls_trust_file`` and
requests' ``verify=path`` mean it: pinning a private CA must not leave every
public CA trusted too. The name checked is ``tls_server_name`` (default:
``host``) and the floor is TLS 1.2. ``Option.TRUSTEDSITE`` turns off the
chain and name checks and nothing else.
"""

from __future__ import annotations

import ssl
from _ssl import ENCODING_DER as _ENCODING_DER
from dataclasses import dataclass
from typing import Any

from smtpsubmit.errors import TlsError
from smtpsubmit.server import Option, Server

__all__ = ["TlsInfo", "describe_tls_error", "make_ssl_context"]


def make_ssl_context(server: Server) -> ssl.SSLContext:
    """The client context for ``server``: verified, TLS ≥ 1.2, optional client cert."""
    context = _verifying_context(server)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if Option.TRUSTEDSITE in server.options:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if server.client_cert:
        _load_client_certificate(context, server.client_cert, server.client_key)
    return context


def _verifying_context(server: Server) -> ssl.SSLContext:
    """The system trust store, or ``ca_file``/``ca_path`` alone when either is set."""
    if not (server.ca_file or server.ca_path):
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=server.ca_file, capath=server.ca_path)
    except (OSError, ssl.SSLError) as exc:
        error = TlsError(
            f"cannot load the CA certificates (ca_file={server.ca_file!r}, "
            f"ca_path={server.ca_path!r}): {exc}",
            stage="connect",
        )
    raise error


class _KeyIsEncrypted(Exception):
    """Raised by the password callback: OpenSSL would otherwise prompt on the terminal."""


def _refuse_key_password() -> str:
    raise _KeyIsEncrypted


def _load_client_certificate(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        # Without a callback, OpenSSL asks for the pass phrase of an encrypted key on
        # the terminal, which would hang a cron job or a server process.
        context.load_cert_chain(cert, key, password=_refuse_key_password)
    except _KeyIsEncrypted:
        error = TlsError(
            f"the client key {key or cert!r} is encrypted and smtpsubmit takes no key "
            "password; store the key unencrypted (`openssl pkey -in KEY -out NEW`) and "
            "readable only by its owner",
            stage="connect",
        )
    except (OSError, ssl.SSLError) as exc:
        error = TlsError(f"cannot load the client certificate {cert!r}: {exc}", stage="connect")
    else:
        return
    raise error


_VERIFY_HINTS = {
    10: "the server's certificate has expired",
    9: "the server's certificate is not yet valid",
    18: "the server's certificate is self-signed",
    19: "the server's certificate chain ends in an untrusted (self-signed) root",
    20: "the server's certificate was issued by an unknown certificate authority",
    21: "the server's certificate chain cannot be verified",
    62: "the server's certificate does not match the host name",
    64: "the server's certificate does not match the IP address",
}


def describe_tls_error(exc: BaseException, server: Server, stage: str) -> TlsError:
    """A TlsError naming the cause and the option that would change the outcome."""
    name = server.effective_tls_server_name
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = _VERIFY_HINTS.get(exc.verify_code, exc.verify_message or "verification failed")
        if exc.verify_code in (62, 64):
            hint = (
                f"the name checked was {name!r}; set tls_server_name to the name in the "
                "certificate, or connect by that name"
            )
        elif exc.verify_code in (18, 19, 20, 21):
            hint = "pass the issuing CA as ca_file=... (or ca_path=...)"
        else:
            hint = "fix the server's certificate"
        message = (
            f"TLS certificate verification failed for {name!r}: {what} "
            f"({exc.verify_message}); {hint}, or set Option.TRUSTEDSITE to skip verification"
        )
        return TlsError(message, stage=stage)
    reason = getattr(exc, "reason", None) or str(exc)
    text = str(reason).upper()
    not_tls = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH")
    if any(word in text for word in not_tls) and stage == "starttls":
        message = (
            f"the server at {server.host}:{server.effective_port} answered STARTTLS but then "
            "sent plaintext instead of a TLS handshake (a broken server, or an attempt to "
            "inject commands); nothing more was sent"
        )
    elif any(word in text for word in not_tls):
        message = (
            f"the server at {server.host}:{server.effective_port} did not answer with TLS "
            "(is it a plaintext port? use Option.SECURE for STARTTLS, or port 465 for implicit TLS)"
        )
    elif "CERTIFICATE_REQUIRED" in text or ("HANDSHAKE_FAILURE" in text and not server.client_cert):
        message = (
            f"the server {name!r} requires a client certificate ({reason}); "
            "set client_cert (and client_key) to a certificate it trusts"
        )
    elif "ALERT_UNKNOWN_CA" in text or "ALERT_BAD_CERTIFICATE" in text:
        message = (
            f"the server {name!r} refused this client's certificate ({reason}); check "
            "client_cert and client_key"
        )
    elif "UNSUPPORTED_PROTOCOL" in text or "VERSION" in text:
        message = (
            "the server offers only TLS versions older than 1.2, which smtpsubmit refuses "
            f"({reason})"
        )
    elif isinstance(exc, ssl.SSLError):
        message = f"TLS handshake with {name!r} failed: {reason}"
    else:
        message = f"TLS handshake with {name!r} failed: {exc}"
    return TlsError(message, stage=stage)


@dataclass(frozen=True)
class TlsInfo:
    """What the handshake negotiated, for ``probe`` and the transcript."""

    version: str | None
    cipher: str | None
    peer_certificate: dict[str, Any] | None
    # DER form too: ``getpeercert()`` is empty when verification is off (TRUSTEDSITE),
    # and probe still wants to show the certificate.
    peer_certificate_der: bytes | None = None
    # Every certificate the server sent, leaf first, unverified: DANE-TA (RFC 7672
    # §3.1.2) looks for its trust anchor among them. Empty when Python cannot say.
    peer_chain_der: tuple[bytes, ...] = ()

    @classmethod
    def from_ssl_object(cls, obj: ssl.SSLObject | ssl.SSLSocket) -> TlsInfo:
        cipher = obj.cipher()
        try:
            cert = obj.getpeercert()
            der = obj.getpeercert(binary_form=True)
        except ValueError:
            cert, der = None, None
        return cls(
            obj.version(),
            cipher[0] if cipher else None,
            dict(cert) if cert else None,
            der,
            _peer_chain(obj),
        )


def _peer_chain(obj: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the server sent, as DER, leaf first (verified or not).

    Python 3.13 has ``get_unverified_chain()`` on the socket; 3.10 to 3.12 have
    the same call, undocumented, on the ``_sslobj`` behind it (OpenSSL's
    ``SSL_get_peer_cert_chain``). When neither exists, the chain is unknown.
    """
    getter = getattr(obj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:  # pragma: no cover - every supported Python has one of the two
        return ()
    try:
        chain = getter() or []
        return tuple(
            bytes(c) if isinstance(c, bytes | bytearray) else c.public_bytes(_ENCODING_DER)
            for c in chain
        )
    except (ValueError, AttributeError, ssl.SSLError):  # pragma: no cover - closed mid-way
        return ()
