"""TLS certificates for the test servers, made with ``trustme`` (no openssl CLI, no network).

Fixtures (all session-scoped):

- ``tls_ca`` -> ``trustme.CA``: the test CA every "good" server certificate is signed by.
- ``ca_file`` -> ``str``: path of that CA's PEM file (give it to the client as its trust store).
- ``server_ssl_context`` -> ``ssl.SSLContext``: a server context whose certificate is valid for
  ``localhost``, ``127.0.0.1`` and ``mx.fixture.test`` (see ``SERVER_NAMES``).

Functions for odd certificates:

- ``make_server_context(ca, *names, expired=False, tls_max=None, require_client_cert=False)``:
  a server context; ``make_server_context(tls_ca, "other.test")`` gives a wrong-name
  certificate, ``make_server_context(trustme.CA())`` an untrusted one,
  ``expired=True`` an expired one, ``tls_max=ssl.TLSVersion.TLSv1`` a TLS-1.0-only server.
- ``client_cert_files(ca, directory=None)`` -> ``(cert_path, key_path)`` for client certificates.
"""

from __future__ import annotations

import atexit
import datetime as dt
import shutil
import ssl
import tempfile
import warnings
from pathlib import Path

import pytest
import trustme

SERVER_NAMES = ("localhost", "127.0.0.1", "mx.fixture.test")
CLIENT_NAME = "client.fixture.test"


def make_server_context(
    ca: trustme.CA,
    *names: str,
    expired: bool = False,
    tls_max: ssl.TLSVersion | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Return a server-side ``ssl.SSLContext`` with a certificate issued by ``ca``.

    ``names``: the certificate's subjectAltNames (default ``SERVER_NAMES``).
    ``expired``: validity ended yesterday (not_before 30 days ago).
    ``tls_max``: highest protocol version the server speaks. For anything below TLS 1.2 the
    minimum is lowered too and OpenSSL's security level is set to 0 so that OpenSSL 3 agrees to
    negotiate it at all (a default client then still refuses: that is the point of the test).
    ``require_client_cert``: the server demands a client certificate signed by ``ca``.
    """
    if not names:
        names = SERVER_NAMES
    kwargs: dict[str, dt.datetime] = {}
    if expired:
        now = dt.datetime.now(dt.UTC)
        kwargs["not_before"] = now - dt.timedelta(days=30)
        kwargs["not_after"] = now - dt.timedelta(days=1)
    leaf = ca.issue_cert(*names, **kwargs)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    if tls_max is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "TLSv1 is deprecated"
            if tls_max < ssl.TLSVersion.TLSv1_2:
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.maximum_version = tls_max
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


_tmpdirs: list[str] = []


@atexit.register
def _cleanup_tmpdirs() -> None:
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)


def client_cert_files(
    ca: trustme.CA, directory: str | Path | None = None, name: str = CLIENT_NAME
) -> tuple[str, str]:
    """Issue a client certificate from ``ca``; return ``(cert_path, key_path)`` PEM files.

    The cert file holds the leaf followed by its chain. Without ``directory`` a private temp
    directory is made and removed at interpreter exit.
    """
    if directory is None:
        directory = tempfile.mkdtemp(prefix="smtpsubmit-clientcert-")
        _tmpdirs.append(directory)
    directory = Path(directory)
    leaf = ca.issue_cert(name)
    cert_path = directory / "client-cert.pem"
    key_path = directory / "client-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The test certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path to the test CA certificate (PEM)."""
    path = tmp_path_factory.mktemp("tls-ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_ssl_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """Server context with a valid certificate for localhost, 127.0.0.1, mx.fixture.test."""
    return make_server_context(tls_ca)
