"""DANE-TA (RFC 7672 §3.1.2) against signed zones, a validating resolver and real TLS servers.

The MX hosts' certificates come from a CA nobody trusts (and one from an
intermediate under it): only a DANE-TA record naming that CA — its
certificate or its public key — in a signed zone can make them trusted, and
then the certificate must also bear the MX host's name.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import trustme

from smtpsubmit import Message
from smtpsubmit.direct import dane_ta
from smtpsubmit.direct.dane import Tlsa, authenticate, spki_of
from smtpsubmit.direct.dane_ta import name_matches, verify_ta
from tests.servers.mxnet import MxNet

pytestmark = pytest.mark.timeout(60)


def message(*to: str) -> Message:
    return Message(sender="app@sender.test", to=list(to), subject="dane-ta", text="Hello TA.")


def delivered_with_dane(mxnet: MxNet, mx_hosts, tmp_path: Path, domain: str, driver=None) -> None:
    host = mx_hosts(f"mx.{domain}")
    result = mxnet.deliver(message(f"ann@{domain}"), tmp_path, driver)
    outcome = result.domains[domain]
    assert result.accepted == [f"ann@{domain}"], outcome.error
    assert (outcome.mx, outcome.policy, outcome.tls_verified) == (f"mx.{domain}", "dane", True)
    assert outcome.tls_failures == []
    assert [m.tls for m in host.messages] == [True]


def test_dane_ta_by_the_ca_certificate_digest_delivers(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    delivered_with_dane(mxnet, mx_hosts, tmp_path, "daneta.test", driver)  # 2 0 1


def test_dane_ta_by_the_ca_public_key_digest_delivers(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    delivered_with_dane(mxnet, mx_hosts, tmp_path, "danetaspki.test", driver)  # 2 1 1


def test_dane_ta_may_be_an_intermediate_ca_in_the_presented_chain(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    delivered_with_dane(mxnet, mx_hosts, tmp_path, "danetachild.test")


def test_dane_ta_naming_another_ca_sends_nothing(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    # The record names the test CA, which the web-PKI path (ca_file) trusts: DANE must not.
    host = mx_hosts("mx.danetaother.test")
    result = mxnet.deliver(message("ann@danetaother.test"), tmp_path, driver)
    outcome = result.domains["danetaother.test"]
    assert result.accepted == [] and list(result.deferred) == ["ann@danetaother.test"]
    assert outcome.policy == "dane" and outcome.mx is None
    assert "matches none of its DANE TLSA records" in str(outcome.error)
    assert [a.address for a in outcome.attempts] == ["127.0.0.20"]  # no plain-text retry
    assert [f.result_type for f in outcome.tls_failures] == ["validation-failure"]
    assert host.messages == []


def test_dane_ta_with_a_certificate_for_another_name_sends_nothing(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.danetaname.test")  # issued by the right CA, for wrong.test
    result = mxnet.deliver(message("ann@danetaname.test"), tmp_path, driver)
    outcome = result.domains["danetaname.test"]
    assert result.accepted == [] and host.messages == []
    assert [f.result_type for f in outcome.tls_failures] == ["certificate-host-mismatch"]
    assert "wrong.test" in str(outcome.error) and "mx.danetaname.test" in str(outcome.error)


def test_mixed_set_a_dane_ta_match_is_enough_when_dane_ee_does_not_match(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    delivered_with_dane(mxnet, mx_hosts, tmp_path, "danemix.test")


def test_mixed_set_a_dane_ee_match_is_enough_when_dane_ta_does_not_match(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    delivered_with_dane(mxnet, mx_hosts, tmp_path, "danemixee.test")


def test_without_cryptography_dane_ta_records_are_unusable(
    mxnet: MxNet, mx_hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RFC 7672 §2.2: a TLSA set with no usable record means TLS, unauthenticated, reported.
    monkeypatch.setattr(dane_ta, "available", lambda: False)
    host = mx_hosts("mx.daneta.test")
    result = mxnet.deliver(message("ann@daneta.test"), tmp_path)
    outcome = result.domains["daneta.test"]
    assert result.accepted == ["ann@daneta.test"] and [m.tls for m in host.messages] == [True]
    assert (outcome.policy, outcome.tls_verified) == ("dane", False)
    assert [f.result_type for f in outcome.tls_failures] == ["tlsa-invalid"]


# -- the chain and name checks on their own --------------------------------------------------


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    root = trustme.CA()
    child = root.create_child_ca()
    leaf = child.issue_cert("mx.example.org")
    stranger = trustme.CA().issue_cert("mx.example.org")
    return {
        "root": der(root.cert_pem.bytes()),
        "child": der(child.cert_pem.bytes()),
        "leaf": der(leaf.cert_chain_pems[0].bytes()),
        "stranger": der(stranger.cert_chain_pems[0].bytes()),
    }


def test_a_chain_verifies_up_to_the_root_or_the_intermediate(pki: dict[str, bytes]) -> None:
    chain = [pki["leaf"], pki["child"], pki["root"]]
    assert verify_ta([pki["root"]], chain, ["mx.example.org"]) is None
    assert verify_ta([pki["child"]], chain, ["mx.example.org"]) is None


def test_a_missing_link_is_not_trusted(pki: dict[str, bytes]) -> None:
    failure = verify_ta([pki["root"]], [pki["leaf"], pki["root"]], ["mx.example.org"])
    assert failure is not None and failure.result_type == "certificate-not-trusted"


def test_a_certificate_the_anchor_did_not_sign_is_not_trusted(pki: dict[str, bytes]) -> None:
    chain = [pki["stranger"], pki["child"], pki["root"]]
    failure = verify_ta([pki["root"]], chain, ["mx.example.org"])
    assert failure is not None and failure.result_type == "certificate-not-trusted"


def test_expired_and_not_yet_valid_certificates_below_the_anchor_fail(
    pki: dict[str, bytes],
) -> None:
    from cryptography import x509

    chain = [pki["leaf"], pki["child"], pki["root"]]
    expiry = x509.load_der_x509_certificate(pki["leaf"]).not_valid_after_utc
    later = expiry + datetime.timedelta(days=1)
    failure = verify_ta([pki["root"]], chain, ["mx.example.org"], now=later)
    assert failure is not None and failure.result_type == "certificate-expired"
    earlier = x509.load_der_x509_certificate(pki["leaf"]).not_valid_before_utc
    earlier -= datetime.timedelta(days=1)
    failure = verify_ta([pki["root"]], chain, ["mx.example.org"], now=earlier)
    assert failure is not None and failure.result_type == "certificate-not-trusted"


def test_the_name_may_be_either_reference_identifier(pki: dict[str, bytes]) -> None:
    chain = [pki["leaf"], pki["child"]]
    assert verify_ta([pki["child"]], chain, ["other.example.org", "mx.example.org"]) is None
    failure = verify_ta([pki["child"]], chain, ["other.example.org"])
    assert failure is not None and failure.result_type == "certificate-host-mismatch"


@pytest.mark.parametrize(
    ("presented", "reference", "expected"),
    [
        ("mx.example.org", "MX.Example.org.", True),
        ("*.example.org", "mx.example.org", True),
        ("*.example.org", "example.org", False),  # the wildcard stands for one label
        ("*.example.org", "a.mx.example.org", False),
        ("m*.example.org", "mx.example.org", False),  # only a whole first label
        ("*x.example.org", "mx.example.org", False),
        ("*.org", "example.org", False),
        ("mx.*.org", "mx.example.org", False),
        ("", "mx.example.org", False),
    ],
)
def test_wildcards_follow_rfc_7672(presented: str, reference: str, expected: bool) -> None:
    assert name_matches(presented, reference) is expected


def test_authenticate_prefers_dane_ee_and_falls_back_to_dane_ta(pki: dict[str, bytes]) -> None:
    import hashlib

    ee = Tlsa(3, 1, 1, hashlib.sha256(spki_of(pki["leaf"])).digest())
    ta = Tlsa(2, 0, 1, hashlib.sha256(pki["child"]).digest())
    wrong_ee = Tlsa(3, 1, 1, bytes(32))
    chain = [pki["leaf"], pki["child"]]
    assert authenticate([ta, ee], pki["leaf"], chain, ["x.invalid"]).record == ee  # no names
    assert authenticate([wrong_ee, ta], pki["leaf"], chain, ["mx.example.org"]).record == ta
    missed = authenticate([wrong_ee, ta], pki["leaf"], [pki["leaf"]], ["mx.example.org"])
    assert missed.record is None and missed.failure is not None


# -- hand-made chains: what trustme will not issue -------------------------------------------


def _cert(
    subject: str,
    key,
    issuer: tuple[str, object] | None = None,
    *,
    ca: bool | None = None,
    path_length: int | None = None,
    san: list[str] | None = None,
    cert_sign: bool | None = None,
) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (
        (name, key)
        if issuer is None
        else (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1])
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca, path_length), critical=True)
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    if cert_sign is not None:
        usage = dict.fromkeys(
            [
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ],
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=cert_sign, **usage), critical=True
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def keys() -> list[object]:
    from cryptography.hazmat.primitives.asymmetric import ec

    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


def test_the_subject_cn_counts_only_when_there_is_no_dns_san(keys) -> None:
    root = _cert("Root", keys[0], ca=True)
    cn_only = _cert("mx.example.org", keys[1], ("Root", keys[0]))
    assert verify_ta([root], [cn_only, root], ["mx.example.org"]) is None
    with_san = _cert("mx.example.org", keys[1], ("Root", keys[0]), san=["other.example.org"])
    failure = verify_ta([root], [with_san, root], ["mx.example.org"])
    assert failure is not None and failure.result_type == "certificate-host-mismatch"


def test_an_intermediate_must_be_a_ca_allowed_to_sign(keys) -> None:
    root = _cert("Root", keys[0], ca=True)
    leaf_args = ("mx.example.org", keys[2], ("Mid", keys[1]))
    leaf = _cert(*leaf_args, san=["mx.example.org"])
    for mid, allowed in [
        (_cert("Mid", keys[1], ("Root", keys[0]), ca=True), True),
        (_cert("Mid", keys[1], ("Root", keys[0])), False),  # no basicConstraints
        (_cert("Mid", keys[1], ("Root", keys[0]), ca=False), False),
        (_cert("Mid", keys[1], ("Root", keys[0]), ca=True, cert_sign=False), False),
    ]:
        failure = verify_ta([root], [leaf, mid, root], ["mx.example.org"])
        assert (failure is None) is allowed, failure


def test_path_length_constraints_below_the_anchor_hold(keys) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    root = _cert("Root", keys[0], ca=True)
    upper = _cert("Upper", keys[1], ("Root", keys[0]), ca=True, path_length=0)
    lower_key = ec.generate_private_key(ec.SECP256R1())
    lower = _cert("Lower", lower_key, ("Upper", keys[1]), ca=True)
    leaf = _cert("mx.example.org", keys[2], ("Lower", lower_key), san=["mx.example.org"])
    failure = verify_ta([root], [leaf, lower, upper, root], ["mx.example.org"])
    assert failure is not None and "path length" in failure.reason
    # with Upper itself as the anchor, its constraint is not applied (RFC 5280 §6.1.1)
    assert verify_ta([upper], [leaf, lower, upper], ["mx.example.org"]) is None
