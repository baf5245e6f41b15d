"""DKIM signing (RFC 6376, RFC 8463 Ed25519) for messages as they stream.

Owns the signer (:mod:`.signer`: keys, tags, the signature), canonicalization
(:mod:`.canon`) and the two-pass flow over a re-readable byte source
(:mod:`.stream`). Sits above the drivers: a client calls :func:`sign_source`
on the envelope and byte source it is about to send. Needs the ``cryptography``
package (``pip install 'smtpsubmit[dkim]'``), imported only when a signer is built.
"""

from smtpsubmit.dkim.signer import DEFAULT_HEADERS, OVERSIGNED_HEADERS, DkimSigner
from smtpsubmit.dkim.stream import as_signers, body_hash, sign_source, signature_headers

__all__ = [
    "DEFAULT_HEADERS",
    "OVERSIGNED_HEADERS",
    "DkimSigner",
    "as_signers",
    "body_hash",
    "sign_source",
    "signature_headers",
]
