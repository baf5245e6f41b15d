"""Signing a message as it streams: one pass to hash, the send pass with the
``DKIM-Signature`` fields in front.

What is signed is what the server stores: the final bytes after everything the
library changes (Bcc removed, 8-bit parts re-encoded), with CRLF line ends and
without DATA's dot-stuffing. The byte source is read twice and never held:
the first pass keeps only the header section and one running hash per body
canonicalization, however many signers share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

from smtpsubmit.dkim.canon import RelaxedBody, SimpleBody, parse_header_block
from smtpsubmit.dkim.signer import DkimSigner
from smtpsubmit.envelope import Envelope
from smtpsubmit.errors import MessageError
from smtpsubmit.protocol import LineEndingNormalizer

__all__ = ["MAX_HEADER_SECTION", "body_hash", "sign_source", "signature_headers"]

Source = Callable[[], Iterable[bytes]]
Signers = DkimSigner | Sequence[DkimSigner]

MAX_HEADER_SECTION = 4 * 1024 * 1024  # a header section beyond this is not a message to sign
_END_OF_HEADER = b"\r\n\r\n"


def as_signers(dkim: Signers | None) -> list[DkimSigner]:
    """One signer or several, as a list; anything else is a ``ValueError``."""
    if dkim is None:
        return []
    signers = [dkim] if isinstance(dkim, DkimSigner) else list(dkim)
    for signer in signers:
        if not isinstance(signer, DkimSigner):
            raise ValueError(f"dkim= takes DkimSigner objects, not {type(signer).__name__}")
    return signers


def sign_source(
    envelope: Envelope, source: Source, signers: Signers | None, *, rewindable: bool = True
) -> tuple[Envelope, Source]:
    """The envelope (SIZE counting the new fields) and a source that yields the
    ``DKIM-Signature`` fields and then the message; unchanged without signers.

    ``source`` must be re-readable: it is read once here, before the transaction
    starts, and again for each send.
    """
    chosen = as_signers(signers)
    if not chosen:
        return envelope, source
    if not rewindable:
        raise MessageError("DKIM signing needs a message that can be read twice")
    fields = signature_headers(source(), chosen)
    prefix = b"".join(fields)

    def signed() -> Iterator[bytes]:
        return itertools.chain((prefix,), source())

    return dataclasses.replace(envelope, size=envelope.size + len(prefix)), signed


def signature_headers(chunks: Iterable[bytes], signers: Sequence[DkimSigner]) -> list[bytes]:
    """A ``DKIM-Signature`` field per signer for the message in ``chunks`` (one pass)."""
    methods = {signer.body_method for signer in signers}
    hashes = {method: hashlib.sha256() for method in methods}
    bodies = {
        method: (RelaxedBody if method == "relaxed" else SimpleBody)(hashes[method].update)
        for method in methods
    }
    header = bytearray()
    in_header = True
    for piece in _stored_form(chunks):
        if in_header:
            header += piece
            end = header.find(_END_OF_HEADER) if not header.startswith(b"\r\n") else -2
            if end < 0:
                if len(header) > MAX_HEADER_SECTION:
                    raise MessageError("the message's header section is too large to sign")
                continue
            in_header = False
            piece = bytes(header[end + 4 :])
            del header[end + 2 :]
        for body in bodies.values():
            body.feed(piece)
    for body in bodies.values():
        body.finish()
    fields = parse_header_block(bytes(header))
    if not any(f.name.strip().lower() == b"from" for f in fields):
        raise MessageError("a message to be DKIM-signed needs a From field")
    return [
        signer.signature_header(fields, hashes[signer.body_method].digest()) for signer in signers
    ]


def body_hash(chunks: Iterable[bytes], method: str = "relaxed") -> bytes:
    """The SHA-256 body hash (``bh=``, undecoded) of a message body given in chunks."""
    digest = hashlib.sha256()
    body = (RelaxedBody if method == "relaxed" else SimpleBody)(digest.update)
    for piece in _stored_form(chunks):
        body.feed(piece)
    body.finish()
    return digest.digest()


def _stored_form(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes as the server stores them: every line ending CRLF, the last included."""
    normalizer = LineEndingNormalizer()
    for chunk in chunks:
        out = normalizer.feed(bytes(chunk))
        if out:
            yield out
    tail = normalizer.flush()
    if tail:
        yield tail
