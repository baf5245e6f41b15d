"""SASL mechanisms (smtpsubmit.auth): RFC vectors, negotiation rules, secrecy.

Pure: no sockets. SCRAM is also run against a small SCRAM server written here,
which checks the client's proof the way a real server does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpsubmit.auth import (
    DEFAULT_PREFERENCE,
    MAX_CHALLENGES,
    MECHANISMS,
    CramMD5Mechanism,
    LoginMechanism,
    Mechanism,
    OAuthBearerMechanism,
    PlainMechanism,
    ScramSHA1Mechanism,
    ScramSHA256Mechanism,
    XOAuth2Mechanism,
    b64,
    choose_mechanism,
    resolve_secret,
    saslprep,
    unb64,
    validate_preference,
)
from smtpsubmit.errors import AuthError, ProtocolError, SmtpError
from smtpsubmit.protocol import Command

CANARY = "S3cr3t-CANARY"


def secret_forms(secret: str) -> list[str]:
    """The secret and every base64 rendering of it, whatever bytes precede it."""
    raw = secret.encode("utf-8")
    forms = [secret]
    for pad in range(3):
        encoded = b64(b"\0" * pad + raw)
        inner = encoded[4 if pad else 0 : -4]
        if len(inner) >= 8:
            forms.append(inner)
    return forms


def assert_no_secret(text: str, secret: str = CANARY) -> None:
    for form in secret_forms(secret):
        assert form not in text, f"secret form {form!r} leaked into {text!r}"


# ---------------------------------------------------------------------------
# A small SCRAM server (RFC 5802 §3, server side)
# ---------------------------------------------------------------------------


def _unescape_saslname(value: str) -> str:
    assert "=" not in value.replace("=2C", "").replace("=3D", "")
    return value.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    def __init__(
        self, hash_name: str, users: dict[str, str], *, iterations: int = 3, salt: bytes = b""
    ) -> None:
        self.hash = hash_name
        self.users = users
        self.iterations = iterations
        self.salt = salt or secrets.token_bytes(16)
        self.authenticated_as: str | None = None

    def _h(self, key: bytes, msg: bytes) -> bytes:
        return hmac.digest(key, msg, self.hash)

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode("utf-8")
        assert text.startswith("n,,"), text
        self.client_first_bare = text[3:]
        n_attr, r_attr = self.client_first_bare.split(",")
        assert n_attr.startswith("n=") and r_attr.startswith("r=")
        self.username = _unescape_saslname(n_attr[2:])
        password = saslprep(self.users[self.username]).encode("utf-8")
        salted = hashlib.pbkdf2_hmac(self.hash, password, self.salt, self.iterations)
        self.stored_key = hashlib.new(self.hash, self._h(salted, b"Client Key")).digest()
        self.server_key = self._h(salted, b"Server Key")
        self.nonce = r_attr[2:] + "srv" + secrets.token_hex(8)
        self.server_first = f"r={self.nonce},s={b64(self.salt)},i={self.iterations}"
        return self.server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        text = client_final.decode("ascii")
        without_proof, proof_attr = text.rsplit(",", 1)
        assert without_proof == f"c=biws,r={self.nonce}"
        proof = base64.b64decode(proof_attr.removeprefix("p="), validate=True)
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_signature = self._h(self.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if hashlib.new(self.hash, client_key).digest() != self.stored_key:
            return b"e=invalid-proof"
        self.authenticated_as = self.username
        return b"v=" + b64(self._h(self.server_key, auth_message)).encode("ascii")


def run_scram(mech: Mechanism, server: ScramServer, *, final_in_235: bool = False) -> None:
    """Drive one exchange as the session code would."""
    client_first = mech.initial_response()
    assert client_first is not None
    client_final = mech.respond(server.first(client_first))
    server_final = server.final(client_final)
    if final_in_235:
        mech.finish(server_final)
    else:
        assert mech.respond(server_final) == b""
        mech.finish(None)


SCRAM_CLASSES = [(ScramSHA1Mechanism, "sha1"), (ScramSHA256Mechanism, "sha256")]


# ---------------------------------------------------------------------------
# RFC test vectors
# ---------------------------------------------------------------------------


def test_scram_sha1_rfc5802_vector() -> None:
    mech = ScramSHA1Mechanism("user", "pencil", _nonce="fyko+d2lbbFgONRv9qkxdawL")
    assert mech.initial_response() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    client_final = mech.respond(
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert client_final == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert mech.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    mech.finish(None)


def test_scram_sha256_rfc7677_vector() -> None:
    mech = ScramSHA256Mechanism("user", "pencil", _nonce="rOprNGfwEbeRWgbNEkqO")
    assert mech.initial_response() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    client_final = mech.respond(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert client_final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    # Server-final carried on the 235 instead of a 334.
    mech.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def _sha1_vector_after_first() -> ScramSHA1Mechanism:
    mech = ScramSHA1Mechanism("user", "pencil", _nonce="fyko+d2lbbFgONRv9qkxdawL")
    mech.initial_response()
    mech.respond(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    return mech


def test_scram_wrong_server_signature_is_impostor() -> None:
    mech = _sha1_vector_after_first()
    wrong = b64(b"\x00" * 20).encode()
    with pytest.raises(AuthError, match="server signature mismatch") as info:
        mech.respond(b"v=" + wrong)
    assert info.value.stage == "auth"
    assert not info.value.is_temporary
    with pytest.raises(AuthError):
        mech.finish(None)


def test_scram_wrong_server_signature_on_235() -> None:
    mech = _sha1_vector_after_first()
    with pytest.raises(AuthError, match="server signature mismatch"):
        mech.finish(b"v=" + b64(b"\x01" * 20).encode())


def test_scram_235_without_server_signature_is_refused() -> None:
    mech = _sha1_vector_after_first()
    with pytest.raises(AuthError, match="without proving"):
        mech.finish(None)
    early = ScramSHA256Mechanism("user", "pencil")
    early.initial_response()
    with pytest.raises(AuthError, match="impostor"):
        early.finish(None)


def test_scram_server_error_attribute() -> None:
    mech = _sha1_vector_after_first()
    with pytest.raises(AuthError, match="invalid-proof"):
        mech.respond(b"e=invalid-proof")


@pytest.mark.parametrize(
    ("server_first", "error"),
    [
        (b"r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096", AuthError),  # nonce not ours
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,s=QSXCR+Q6sek8bf92,i=0", ProtocolError),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,s=QSXCR+Q6sek8bf92,i=-5", ProtocolError),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,s=QSXCR+Q6sek8bf92,i=99999999999", ProtocolError),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,s=QSXCR+Q6sek8bf92,i=2000000", ProtocolError),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,s=!!notbase64,i=4096", ProtocolError),
        (b"r=fyko+d2lbbFgONRv9qkxdawLxyz,i=4096", ProtocolError),  # no salt
        (b"m=ext,r=fyko+d2lbbFgONRv9qkxdawLxyz,s=QSXCR+Q6sek8bf92,i=4096", AuthError),
        (b"garbage", ProtocolError),
        (b"\xff\xfe", ProtocolError),
        (b"", ProtocolError),
    ],
)
def test_scram_rejects_bad_server_first(server_first: bytes, error: type[SmtpError]) -> None:
    mech = ScramSHA1Mechanism("user", "pencil", _nonce="fyko+d2lbbFgONRv9qkxdawL")
    mech.initial_response()
    with pytest.raises(error) as info:
        mech.respond(server_first)
    assert info.value.stage == "auth"


def test_scram_without_initial_response_answers_empty_challenge() -> None:
    mech = ScramSHA256Mechanism("user", "pencil", _nonce="abc")
    assert mech.respond(b"") == b"n,,n=user,r=abc"


def test_scram_challenge_after_verification_is_protocol_error() -> None:
    mech = _sha1_vector_after_first()
    mech.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    with pytest.raises(ProtocolError):
        mech.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


def test_scram_escapes_username() -> None:
    mech = ScramSHA256Mechanism("a=b,c", "pw", _nonce="n0nce")
    assert mech.initial_response() == b"n,,n=a=3Db=2Cc,r=n0nce"


def test_scram_random_nonces_differ() -> None:
    first = ScramSHA256Mechanism("u", "p").initial_response()
    second = ScramSHA256Mechanism("u", "p").initial_response()
    assert first != second


def test_scram_refuses_password_saslprep_prohibits() -> None:
    with pytest.raises(AuthError, match="SASLprep") as info:
        ScramSHA256Mechanism("user", "bell\x07" + CANARY)
    assert_no_secret(str(info.value))
    assert info.value.stage == "auth"


def test_scram_rejects_bad_injected_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        ScramSHA1Mechanism("user", "pencil", _nonce="has,comma")


@pytest.mark.parametrize(("cls", "hash_name"), SCRAM_CLASSES)
def test_scram_against_server_both_final_paths(cls: type[Mechanism], hash_name: str) -> None:
    for final_in_235 in (False, True):
        server = ScramServer(hash_name, {"alice": "correct horse"}, iterations=4096)
        run_scram(cls("alice", "correct horse"), server, final_in_235=final_in_235)
        assert server.authenticated_as == "alice"


@pytest.mark.parametrize(("cls", "hash_name"), SCRAM_CLASSES)
def test_scram_wrong_password_server_error(cls: type[Mechanism], hash_name: str) -> None:
    server = ScramServer(hash_name, {"alice": "right"})
    with pytest.raises(AuthError, match="invalid-proof"):
        run_scram(cls("alice", "wrong"), server)
    assert server.authenticated_as is None


def test_saslprep_rfc4013_examples() -> None:
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"  # non-ASCII space mapped to SPACE
    with pytest.raises(ValueError, match="prohibited"):
        saslprep("\u0007")
    with pytest.raises(ValueError, match="right-to-left"):
        saslprep("\u0627\u0031")


def test_cram_md5_rfc2195_example() -> None:
    mech = CramMD5Mechanism("tim", "tanstaaftanstaaf")
    assert mech.initial_response() is None
    response = mech.respond(b"<1896.697170952@postoffice.reston.mci.net>")
    assert response == b"tim b913a602c7eda7a495b4e6e7334d3890"
    with pytest.raises(ProtocolError):
        mech.respond(b"<again>")


def test_cram_md5_empty_challenge() -> None:
    with pytest.raises(ProtocolError):
        CramMD5Mechanism("tim", "x").respond(b"")


# ---------------------------------------------------------------------------
# PLAIN, LOGIN
# ---------------------------------------------------------------------------


def test_plain_exact_bytes() -> None:
    mech = PlainMechanism("user", "pencil")
    assert mech.initial_response() == b"\0user\0pencil"
    assert b64(b"\0user\0pencil") == "AHVzZXIAcGVuY2ls"
    with pytest.raises(ProtocolError):
        mech.respond(b"")
    mech.finish(None)


def test_plain_without_initial_response() -> None:
    mech = PlainMechanism("user", "pencil")
    assert mech.respond(b"") == b"\0user\0pencil"
    with pytest.raises(ProtocolError):
        mech.respond(b"")


def test_plain_refuses_nul() -> None:
    with pytest.raises(AuthError, match="0x00") as info:
        PlainMechanism("user", "a\0" + CANARY)
    assert_no_secret(str(info.value))
    with pytest.raises(AuthError):
        PlainMechanism("us\0er", "pw")


def test_login_exact_bytes() -> None:
    mech = LoginMechanism("user", "pencil")
    assert mech.initial_response() is None
    assert mech.respond(b"Username:") == b"user"
    assert mech.respond(b"Password:") == b"pencil"
    with pytest.raises(ProtocolError):
        mech.respond(b"Password:")


def test_login_answers_by_order_not_prompt() -> None:
    mech = LoginMechanism("user", "pencil")
    assert mech.respond(b"VXNlcm5hbWU6") == b"user"  # some servers double-encode
    assert mech.respond(b"") == b"pencil"


def test_login_does_not_send_password_as_username() -> None:
    mech = LoginMechanism("user", CANARY)
    mech.respond(b"Username:")
    with pytest.raises(ProtocolError) as info:
        mech.respond(b"Username:")
    assert_no_secret(str(info.value))


# ---------------------------------------------------------------------------
# XOAUTH2, OAUTHBEARER
# ---------------------------------------------------------------------------

TOKEN = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"


def test_xoauth2_exact_initial_response() -> None:
    mech = XOAuth2Mechanism("someuser@example.com", TOKEN)
    response = mech.initial_response()
    assert response == (b"user=someuser@example.com\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01")
    # The example in Google's XOAUTH2 protocol documentation.
    assert b64(response) == (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_xoauth2_error_flow() -> None:
    mech = XOAuth2Mechanism("someuser@example.com", TOKEN)
    mech.initial_response()
    status = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
    challenge = unb64(b64(json.dumps(status).encode()))
    assert mech.respond(challenge) == b""
    assert mech.server_error is not None
    assert json.loads(mech.server_error) == status
    with pytest.raises(ProtocolError):
        mech.respond(challenge)


def test_oauthbearer_exact_initial_response() -> None:
    mech = OAuthBearerMechanism("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")
    assert mech.initial_response() == (
        b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert OAuthBearerMechanism("a=b,c", "t").initial_response() == (
        b"n,a=a=3Db=2Cc,\x01auth=Bearer t\x01\x01"
    )
    assert OAuthBearerMechanism("", "t").initial_response() == b"n,,\x01auth=Bearer t\x01\x01"


def test_oauthbearer_error_flow() -> None:
    mech = OAuthBearerMechanism("user@example.com", TOKEN)
    mech.initial_response()
    challenge = b'{"status":"invalid_token","scope":"example_scope"}'
    assert mech.respond(challenge) == b"\x01"
    assert mech.server_error is not None
    assert "invalid_token" in mech.server_error
    with pytest.raises(ProtocolError):
        mech.respond(challenge)


@pytest.mark.parametrize("cls", [XOAuth2Mechanism, OAuthBearerMechanism])
def test_bearer_refuses_control_characters_in_token(cls: type[Mechanism]) -> None:
    with pytest.raises(AuthError) as info:
        cls("user", CANARY + "\x01x")
    assert_no_secret(str(info.value))


# ---------------------------------------------------------------------------
# Challenge limit
# ---------------------------------------------------------------------------


class _Echo(Mechanism):
    name = "ECHO"

    def _step(self, challenge: bytes) -> bytes:
        return challenge


def test_challenge_limit() -> None:
    mech = _Echo("u", "p")
    for _ in range(MAX_CHALLENGES):
        mech.respond(b"x")
    with pytest.raises(ProtocolError, match="more than 10"):
        mech.respond(b"x")


# ---------------------------------------------------------------------------
# Secrets: providers, repr, errors
# ---------------------------------------------------------------------------


def test_token_provider_called_on_each_resolve() -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    assert resolve_secret(provider) == "token-1"
    assert resolve_secret(provider) == "token-2"
    assert len(calls) == 2
    assert resolve_secret("plain") == "plain"


def test_provider_failure_is_auth_error_without_secret() -> None:
    def broken() -> str:
        raise RuntimeError(CANARY)

    with pytest.raises(AuthError, match="RuntimeError") as info:
        resolve_secret(broken)
    assert info.value.stage == "auth"
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))


@pytest.mark.parametrize("value", [None, b"S3cr3t-CANARY", 42, ""])
def test_provider_bad_return(value: object) -> None:
    with pytest.raises(AuthError) as info:
        resolve_secret(lambda: value)  # type: ignore[arg-type, return-value]
    assert_no_secret(str(info.value))


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_repr_and_str_hide_secret(name: str) -> None:
    mech = MECHANISMS[name]("alice", CANARY)
    for text in (repr(mech), str(mech), f"{mech}", f"{mech!r}"):
        assert_no_secret(text)
        assert name in text
    mech.initial_response()
    assert_no_secret(repr(mech))


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(MECHANISMS)),
    prefix=st.text(alphabet=st.characters(categories=["L", "N"]), max_size=5),
    challenges=st.lists(st.binary(max_size=80), max_size=12),
    send_initial=st.booleans(),
    final=st.none() | st.binary(max_size=40),
)
def test_hostile_challenges_raise_only_typed_errors_without_secret(
    name: str,
    prefix: str,
    challenges: list[bytes],
    send_initial: bool,
    final: bytes | None,
) -> None:
    secret = prefix + CANARY
    mech = None
    try:
        # SCRAM refuses a password SASLprep rejects (e.g. mixed-direction text) up front.
        mech = MECHANISMS[name]("alice", secret)
        if send_initial:
            mech.initial_response()
        for challenge in challenges:
            mech.respond(challenge)
        mech.finish(final)
    except SmtpError as exc:
        assert isinstance(exc, AuthError | ProtocolError)
        assert exc.stage == "auth"
        assert_no_secret(str(exc), secret)
        assert_no_secret(repr(exc), secret)
        assert exc.__cause__ is None
    if mech is not None:
        assert_no_secret(repr(mech), secret)


# ---------------------------------------------------------------------------
# Round trips (hypothesis)
# ---------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=30)
no_nul = texts.filter(lambda s: "\0" not in s)


@given(user=no_nul, password=no_nul)
def test_plain_round_trip(user: str, password: str) -> None:
    payload = PlainMechanism(user, password).initial_response()
    authzid, authcid, passwd = payload.split(b"\0")
    assert authzid == b""
    assert authcid.decode("utf-8") == user
    assert passwd.decode("utf-8") == password
    assert unb64(b64(payload)) == payload


@given(user=texts, password=texts)
def test_login_round_trip(user: str, password: str) -> None:
    mech = LoginMechanism(user, password)
    assert unb64(b64(mech.respond(b"Username:"))).decode("utf-8") == user
    assert unb64(b64(mech.respond(b"Password:"))).decode("utf-8") == password


@settings(max_examples=200, deadline=None)
@given(
    hash_case=st.sampled_from(SCRAM_CLASSES),
    user=no_nul,
    password=texts,
    iterations=st.integers(1, 8),
    final_in_235=st.booleans(),
)
def test_scram_round_trip_against_server(
    hash_case: tuple[type[Mechanism], str],
    user: str,
    password: str,
    iterations: int,
    final_in_235: bool,
) -> None:
    cls, hash_name = hash_case
    try:
        saslprep(password)
    except ValueError:
        with pytest.raises(AuthError):
            cls(user, password)
        return
    server = ScramServer(hash_name, {user: password}, iterations=iterations)
    mech = cls(user, password)
    run_scram(mech, server, final_in_235=final_in_235)
    assert server.authenticated_as == user


@settings(max_examples=50, deadline=None)
@given(hash_case=st.sampled_from(SCRAM_CLASSES), user=no_nul, password=texts, other=texts)
def test_scram_wrong_password_never_authenticates(
    hash_case: tuple[type[Mechanism], str], user: str, password: str, other: str
) -> None:
    cls, hash_name = hash_case
    try:
        if saslprep(password) == saslprep(other):
            return
    except ValueError:
        return
    server = ScramServer(hash_name, {user: password})
    with pytest.raises(AuthError):
        run_scram(cls(user, other), server)
    assert server.authenticated_as is None


# ---------------------------------------------------------------------------
# Negotiation
# ---------------------------------------------------------------------------

ALL = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"]


def choose(offered: list[str], preference: list[str] | None = None, **kw: bool) -> str:
    kw.setdefault("protected", True)
    kw.setdefault("allow_plaintext", False)
    return choose_mechanism(offered, preference, **kw).name


def test_default_preference_is_strongest_first() -> None:
    assert DEFAULT_PREFERENCE == ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN")
    assert choose(ALL) == "SCRAM-SHA-256"
    assert choose(["PLAIN", "LOGIN", "SCRAM-SHA-1"]) == "SCRAM-SHA-1"
    assert choose(["login", "plain", "cram-md5"]) == "CRAM-MD5"
    assert choose(["LOGIN", "PLAIN"]) == "PLAIN"
    assert choose(["LOGIN", "X-UNKNOWN"]) == "LOGIN"


def test_oauth_only_when_asked() -> None:
    with pytest.raises(AuthError):
        choose(["XOAUTH2", "OAUTHBEARER"])
    assert choose(ALL, ["XOAUTH2"]) == "XOAUTH2"
    assert choose(ALL, ["oauthbearer", "xoauth2"]) == "OAUTHBEARER"


def test_caller_exclusion_is_never_overridden() -> None:
    # Fault A4: the server offers only weaker mechanisms after TLS.
    with pytest.raises(AuthError) as info:
        choose(["PLAIN", "LOGIN"], ["SCRAM-SHA-256", "XOAUTH2"])
    text = str(info.value)
    assert "PLAIN LOGIN" in text
    assert "SCRAM-SHA-256 XOAUTH2" in text
    assert info.value.stage == "auth"
    assert not info.value.is_temporary


def test_nothing_offered() -> None:
    with pytest.raises(AuthError, match="no AUTH mechanisms"):
        choose([])


def test_plaintext_refused_unprotected() -> None:
    with pytest.raises(AuthError) as info:
        choose(["PLAIN", "LOGIN"], protected=False)
    text = str(info.value)
    assert "allow_plaintext_auth=True" in text
    assert "SECURE" in text
    assert "SECURE_IMPLICIT" in text
    assert "PLAIN" in text
    assert info.value.stage == "auth"
    assert choose(["PLAIN", "LOGIN"], protected=False, allow_plaintext=True) == "PLAIN"
    assert choose(["PLAIN", "LOGIN"], protected=True) == "PLAIN"


def test_bearer_tokens_refused_unprotected() -> None:
    with pytest.raises(AuthError, match="allow_plaintext_auth"):
        choose(["XOAUTH2"], ["XOAUTH2"], protected=False)


def test_unprotected_skips_to_a_non_plaintext_candidate() -> None:
    assert choose(["PLAIN", "CRAM-MD5"], ["PLAIN", "CRAM-MD5"], protected=False) == "CRAM-MD5"
    assert choose(["PLAIN", "SCRAM-SHA-1"], protected=False) == "SCRAM-SHA-1"


def test_unknown_preference_is_value_error() -> None:
    with pytest.raises(ValueError, match="GSSAPI"):
        choose(ALL, ["GSSAPI"])
    with pytest.raises(ValueError, match="unknown"):
        validate_preference(["SCRAM-SHA-256", "NTLM"])


def test_validate_preference() -> None:
    assert validate_preference(["plain", " Login ", "PLAIN"]) == ("PLAIN", "LOGIN")
    with pytest.raises(ValueError, match="single string"):
        validate_preference("PLAIN")
    with pytest.raises(ValueError, match="empty"):
        validate_preference([])


# ---------------------------------------------------------------------------
# base64 and transcript masking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage", ["!!!", "abc", "YWJj=", "YQ", "YR==", "YW Jj", "YWJj\x00", "é", "YWJj\nx", "-_8="]
)
def test_unb64_rejects_garbage(garbage: str) -> None:
    with pytest.raises(ProtocolError) as info:
        unb64(garbage)
    assert info.value.stage == "auth"


def test_unb64_valid() -> None:
    assert unb64("") == b""
    assert unb64(" YWJj\r\n") == b"abc"
    assert unb64("VXNlcm5hbWU6") == b"Username:"


@given(st.binary(max_size=200))
def test_b64_round_trip(raw: bytes) -> None:
    assert unb64(b64(raw)) == raw


@pytest.mark.parametrize(
    ("argument", "secret", "masked"),
    [
        ("PLAIN AHVzZXIAcGVuY2ls", True, "AUTH PLAIN ***"),
        ("XOAUTH2 dXNlcj1zb21l", True, "AUTH XOAUTH2 ***"),
        ("SCRAM-SHA-256 biwsbj11c2Vy", True, "AUTH SCRAM-SHA-256 ***"),
        ("PLAIN =", True, "AUTH PLAIN ***"),
        ("LOGIN", False, "AUTH LOGIN"),
        ("CRAM-MD5", False, "AUTH CRAM-MD5"),
    ],
)
def test_auth_command_in_the_transcript(argument: str, secret: bool, masked: str) -> None:
    """The transcript keeps the mechanism name and shows ``***`` only for a response."""
    assert Command("AUTH", argument, "auth", secret=secret).loggable() == masked


@given(user=no_nul, password=no_nul)
def test_auth_command_hides_initial_response(user: str, password: str) -> None:
    argument = "PLAIN " + b64(PlainMechanism(user, password).initial_response())
    assert Command("AUTH", argument, "auth", secret=True).loggable() == "AUTH PLAIN ***"
