"""DKIM signing: signatures dkimpy accepts, a body hash independent of chunking, checks
that fail before any connection."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given
from hypothesis import strategies as st

from smtpsubmit import (
    Attachment,
    DkimSigner,
    Encoding,
    Message,
    MessageError,
    Server,
    submit_message,
)
from smtpsubmit.dkim import body_hash, signature_headers
from smtpsubmit.protocol import LineEndingNormalizer
from tests.dkim_keys import (
    RSA_512_PEM,
    ed25519_pem,
    ed_signer,
    rsa_pem,
    rsa_signer,
    verify_each,
)

CANONICALIZATIONS = [
    ("relaxed", "relaxed"),
    ("simple", "simple"),
    ("relaxed", "simple"),
    ("simple", "relaxed"),
]
SIGNERS = {"rsa": rsa_signer, "ed25519": ed_signer}


def _messages() -> dict[str, tuple[Message, bool, bool]]:
    """name -> (message, allow_8bit, smtputf8)."""
    return {
        "text": (
            Message(
                sender="Ann <ann@example.org>",
                to="bob@example.net",
                subject="Plain   text\twith  spaces",
                text="Hello  \r\nworld\t\n\n\n",
            ),
            False,
            False,
        ),
        "multipart": (
            Message(
                sender="ann@example.org",
                to=["bob@example.net", "carol@example.net"],
                cc="dave@example.net",
                subject="Report",
                text="See attached.",
                html="<p>See <b>attached</b>.</p>",
                attachments=[
                    Attachment(data=bytes(range(256)) * 300, filename="data.bin"),
                    Attachment(data=b"a,b\r\n1,2\r\n", filename="t.csv"),
                ],
            ),
            False,
            False,
        ),
        "8bit": (
            Message(
                sender="ann@example.org",
                to="bob@example.net",
                subject="Caf\u00e9",
                text="Gr\u00fc\u00dfe aus K\u00f6ln \u2014 " * 40,
                encoding=Encoding.EIGHT_BIT,
            ),
            True,
            False,
        ),
        "smtputf8": (
            Message(
                sender="J\u00f6rg <j\u00f6rg@b\u00fccher.example>",
                to="\u00e9l\u00e8ve@\u00e9cole.example",
                subject="\u00dcbung",
                text="\u00c7a va?",
            ),
            True,
            True,
        ),
    }


def _render(message: Message, allow_8bit: bool, smtputf8: bool) -> list[bytes]:
    return list(message.prepare(allow_8bit=allow_8bit, smtputf8=smtputf8).iter_bytes(4096))


@pytest.mark.parametrize("canon", CANONICALIZATIONS, ids="/".join)
@pytest.mark.parametrize("algorithm", SIGNERS)
@pytest.mark.parametrize("kind", ["text", "multipart", "8bit", "smtputf8"])
def test_dkimpy_verifies_signed_messages(kind: str, algorithm: str, canon: Any) -> None:
    message, allow_8bit, smtputf8 = _messages()[kind]
    chunks = _render(message, allow_8bit, smtputf8)
    signer = SIGNERS[algorithm](canonicalization=canon)
    (field,) = signature_headers(chunks, [signer])
    signed = field + b"".join(chunks)
    assert verify_each(signed, [signer]) == [True]
    assert f"a={signer.algorithm}".encode() in field
    assert f"c={canon[0]}/{canon[1]}".encode() in field


def test_two_signers_one_pass_both_verify() -> None:
    message, allow_8bit, smtputf8 = _messages()["multipart"]
    chunks = _render(message, allow_8bit, smtputf8)
    signers = [rsa_signer(), ed_signer(canonicalization=("simple", "simple"))]
    fields = signature_headers(iter(chunks), signers)
    assert verify_each(b"".join(fields) + b"".join(chunks), signers) == [True, True]


RAW = (
    b"From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
    b"X-Unsigned: yes\r\n\r\nbody line\r\n"
)


def _sign(raw: bytes, signer: DkimSigner) -> bytes:
    return signature_headers([raw], [signer])[0] + raw


def test_header_list_lists_absent_fields_only_when_oversigned() -> None:
    signed = _sign(RAW, rsa_signer())
    h = re.search(rb"h=([^;]*);", signed)
    assert h is not None
    names = re.sub(rb"\s", b"", h[1]).split(b":")
    for name in (b"from", b"subject", b"to", b"date"):
        assert names.count(name) == 2
    assert names.count(b"message-id") == 1
    assert b"x-unsigned" not in names
    assert b"cc" not in names


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"\r\n\r\nbody", b"\r\nFrom: evil@example.com\r\n\r\nbody"),
        lambda m: m.replace(b"\r\n\r\nbody", b"\r\nSubject: other\r\n\r\nbody"),
        lambda m: m.replace(b"\r\n\r\nbody", b"\r\nTo: x@example.com\r\n\r\nbody"),
        lambda m: m.replace(b"Subject: hi", b"Subject: hI"),
        lambda m: m.replace(b"body line", b"body lime"),
        lambda m: m + b"appended\r\n",
    ],
    ids=["added-from", "added-subject", "added-to", "changed-subject", "body", "appended"],
)
def test_changes_in_transit_break_the_signature(tamper: Any) -> None:
    signer = rsa_signer()
    signed = _sign(RAW, signer)
    assert verify_each(signed, [signer]) == [True]
    assert verify_each(tamper(signed), [signer]) == [False]


def test_relaxed_survives_refolding_and_unsigned_fields() -> None:
    signer = ed_signer()
    signed = _sign(RAW, signer)
    changed = signed.replace(b"Subject: hi", b"subject:   hi ").replace(
        b"X-Unsigned: yes", b"X-Unsigned: changed\r\nX-Added: in transit"
    )
    assert verify_each(changed, [signer]) == [True]


def test_timestamp_and_expiry_come_from_the_clock() -> None:
    import time

    now = int(time.time())
    fresh = rsa_signer(expire_after=3600, clock=lambda: now)
    signed = _sign(RAW, fresh)
    assert f"t={now};".encode() in signed
    assert f"x={now + 3600};".encode() in signed
    assert verify_each(signed, [fresh]) == [True]
    stale = rsa_signer(expire_after=60, clock=lambda: now - 2 * 86400)
    assert verify_each(_sign(RAW, stale), [stale]) == [False]  # expired (beyond the 10 h slop)
    assert b"x=" not in _sign(RAW, rsa_signer())


def test_domain_need_not_match_from() -> None:
    signer = rsa_signer(domain="sender-service.example")
    signed = _sign(RAW, signer)
    assert b"d=sender-service.example;" in signed
    assert verify_each(signed, [signer]) == [True]


def test_signature_lines_stay_short() -> None:
    field = signature_headers([RAW], [rsa_signer()])[0]
    assert max(len(line) for line in field.split(b"\r\n")) <= 78
    assert field.startswith(b"DKIM-Signature: v=1;")
    assert field.endswith(b"\r\n")


def test_ed25519_record_is_the_raw_public_key() -> None:
    signer = ed_signer()
    record = signer.dns_record()
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    key = serialization.load_pem_private_key(ed25519_pem(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import base64

    assert base64.b64decode(record.split("p=")[1]) == raw
    assert signer.dns_name == "ed._domainkey.example.org"


# -- the body hash: chunk-invariant and equal to dkimpy's --------------------------------

_TOKENS = st.sampled_from([b"a", b"Z", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b".", b"\xc3\xa9"])
_CRLF_BODIES = st.lists(_TOKENS, max_size=60).map(b"".join)
_ANY_BODIES = st.binary(max_size=300)
_METHODS = {"relaxed": Relaxed, "simple": Simple}


def _chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


def _stored(body: bytes) -> bytes:
    normalizer = LineEndingNormalizer()
    return normalizer.feed(body) + normalizer.flush()


@given(body=_CRLF_BODIES, cuts=st.lists(st.integers(0, 10_000), max_size=12))
@pytest.mark.parametrize("method", ["relaxed", "simple"])
def test_body_hash_equals_dkimpy_for_every_chunking(
    method: str, body: bytes, cuts: list[int]
) -> None:
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # what the server stores always ends a line
    expected = hashlib.sha256(_METHODS[method].canonicalize_body(body)).digest()
    assert body_hash(_chunked(body, cuts), method) == expected


@given(body=_ANY_BODIES, cuts=st.lists(st.integers(0, 10_000), max_size=12))
@pytest.mark.parametrize("method", ["relaxed", "simple"])
def test_body_hash_of_any_bytes_is_dkimpys_on_the_stored_form(
    method: str, body: bytes, cuts: list[int]
) -> None:
    """Bare CR and LF become CRLF on the wire; the hash covers what the server stores."""
    expected = hashlib.sha256(_METHODS[method].canonicalize_body(_stored(body))).digest()
    assert body_hash(_chunked(body, cuts), method) == expected
    assert body_hash([bytes([b]) for b in body], method) == expected


def test_many_trailing_empty_lines_are_counted_not_held() -> None:
    body = b"x\r\n" + b"\r\n" * 100_000 + b"   \r\n" * 10_000
    for method in ("relaxed", "simple"):
        expected = hashlib.sha256(_METHODS[method].canonicalize_body(body)).digest()
        assert body_hash(_chunked(body, list(range(0, len(body), 997))), method) == expected


def test_message_without_body_or_from() -> None:
    signer = rsa_signer()
    headers_only = b"From: ann@example.org\r\nSubject: none"
    signed = signature_headers([headers_only], [signer])[0] + headers_only + b"\r\n"
    assert verify_each(signed, [signer]) == [True]
    with pytest.raises(MessageError, match="From"):
        signature_headers([b"Subject: x\r\n\r\nbody\r\n"], [signer])


# -- bad configuration fails at construction, before any connection ---------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"private_key": b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"},
            "not a valid PEM",
        ),
        ({"private_key": RSA_512_PEM}, "512 bits"),
        ({"selector": "bad_selector!"}, "selector"),
        ({"selector": ""}, "selector"),
        ({"domain": "no spaces.example"}, "domain"),
        ({"domain": "localhost"}, "domain"),
        ({"algorithm": "ed25519-sha256"}, "does not fit"),
        ({"algorithm": "rsa-sha1"}, "must be one of"),
        ({"canonicalization": ("relaxed", "loose")}, "canonicalization"),
        ({"headers": ("Subject", "To")}, "From"),
        ({"headers": ("From", "Bad Name")}, "not a header field name"),
        ({"expire_after": 0}, "expire_after"),
    ],
)
def test_bad_configuration_is_a_value_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"domain": "example.org", "selector": "s1", "private_key": rsa_pem()}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DkimSigner(args.pop("domain"), args.pop("selector"), args.pop("private_key"), **args)


def test_key_from_path_text_and_unreadable_path(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(ed25519_pem())
    assert DkimSigner("example.org", "s", path).algorithm == "ed25519-sha256"
    assert DkimSigner("example.org", "s", str(path)).algorithm == "ed25519-sha256"
    assert DkimSigner("example.org", "s", rsa_pem().decode()).algorithm == "rsa-sha256"
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"cannot read the DKIM key file .*missing\.pem"):
        DkimSigner("example.org", "s", missing)


def test_encrypted_key_is_refused() -> None:
    key = serialization.load_pem_private_key(ed25519_pem(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        DkimSigner("example.org", "s", encrypted)


def test_key_never_shown() -> None:
    signer = rsa_signer()
    text = repr(signer) + repr(Server("127.0.0.1", dkim=signer))
    assert "PRIVATE" not in text
    assert "dkim=DkimSigner(domain='example.org', selector='rsa'" in text


def test_bad_dkim_argument_fails_before_connecting() -> None:
    # Nothing listens on port 9 of loopback: reaching the network would be a ConnectError.
    server = Server("127.0.0.1", port=9, timeout=2)
    message = Message(sender="a@example.org", to="b@example.org", text="x")
    with pytest.raises(ValueError, match="DkimSigner"):
        submit_message(message, server, dkim="rsa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DkimSigner"):
        Server("127.0.0.1", dkim=["rsa"])  # type: ignore[list-item]


def test_domain_accepts_idna_and_server_keeps_signers_hashable() -> None:
    signer = DkimSigner("B\u00fccher.example", "s", rsa_pem())
    assert signer.domain == "xn--bcher-kva.example"
    server = Server("127.0.0.1", dkim=[signer, ed_signer()])
    assert isinstance(server.dkim, tuple)
    hash(server)


def test_signing_a_large_message_keeps_memory_flat() -> None:
    """48 MB through both canonicalizations (lines, whitespace runs, runs of empty lines):
    the hash pass allocates no more than a few chunks, whatever the size."""
    import tracemalloc

    line = b"some text  with\t whitespace runs and 8-bit \xc3\xa9 octets   \r\n"
    block = (line * 1000 + b"\r\n" * 3000 + b"   \t\r\n" * 500)[:65536]
    total = 48 * 1024 * 1024

    def chunks() -> Any:
        yield RAW.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        for _ in range(total // len(block)):
            yield block

    signers = [rsa_signer(), ed_signer(canonicalization=("simple", "simple"))]
    tracemalloc.start()
    try:
        fields = signature_headers(chunks(), signers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(fields) == 2
    assert peak < 2 * 1024 * 1024, peak


def test_sign_source_prepends_fields_and_counts_them_in_size() -> None:
    from smtpsubmit import Envelope
    from smtpsubmit.dkim import sign_source

    reads: list[int] = []

    def source() -> Any:
        reads.append(1)
        yield RAW

    envelope = Envelope("ann@example.org", ["bob@example.net"], size=len(RAW))
    signer = ed_signer()
    signed_envelope, signed = sign_source(envelope, source, [signer])
    assert len(reads) == 1  # the hash pass, before any transaction
    data = b"".join(signed())
    assert data.startswith(b"DKIM-Signature: ") and data.endswith(RAW)
    assert signed_envelope.size == len(data)
    assert verify_each(data, [signer]) == [True]
    assert sign_source(envelope, source, None) == (envelope, source)
    with pytest.raises(MessageError, match="read twice"):
        sign_source(envelope, source, signer, rewindable=False)


def test_import_smtpsubmit_does_not_load_cryptography() -> None:
    """cryptography is an extra: only building a signer imports it."""
    import subprocess
    import sys

    code = (
        "import sys, smtpsubmit, smtpsubmit.dkim\n"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@given(cuts=st.lists(st.integers(0, 10_000), max_size=20), bare_lf=st.booleans())
def test_whole_signature_is_the_same_for_every_chunking(cuts: list[int], bare_lf: bool) -> None:
    """Header/body split, line breaks and whitespace cut anywhere: same signature field
    (Ed25519 and RSA PKCS#1 v1.5 signatures are deterministic)."""
    raw = RAW + b"  trailing \t \r\n\r\n\r\n"
    if bare_lf:
        raw = raw.replace(b"\r\n", b"\n")
    signers = [ed_signer(clock=lambda: 1_700_000_000), rsa_signer(clock=lambda: 1_700_000_000)]
    assert signature_headers(_chunked(raw, cuts), signers) == signature_headers([raw], signers)
