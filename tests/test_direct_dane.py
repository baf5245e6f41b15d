"""DANE for direct delivery (RFC 7672) against a validating resolver whose AD bit is real.

The DANE MX hosts present certificates from a CA nobody trusts: only a TLSA
match in a signed zone can make them trusted, and a mismatch or a missing
STARTTLS must stop delivery rather than fall back to plain text.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
import trustme

from smtpsubmit import Message
from smtpsubmit.direct.dane import Tlsa, match_leaf, parse_tlsa, spki_of
from tests.servers.mxnet import MxNet

pytestmark = pytest.mark.timeout(60)


def message(*to: str) -> Message:
    return Message(sender="app@sender.test", to=list(to), subject="dane", text="Hello DANE.")


def test_dane_ee_match_delivers_with_policy_dane(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.dane.test")
    result = mxnet.deliver(message("ann@dane.test"), tmp_path, driver)
    domain = result.domains["dane.test"]
    assert result.accepted == ["ann@dane.test"]
    assert (domain.mx, domain.policy, domain.tls_verified) == ("mx.dane.test", "dane", True)
    assert domain.tls in ("TLSv1.2", "TLSv1.3")
    assert [m.tls for m in host.messages] == [True]


def test_dane_mismatch_sends_nothing_not_even_in_plain_text(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.danebad.test")
    result = mxnet.deliver(message("ann@danebad.test"), tmp_path, driver)
    domain = result.domains["danebad.test"]
    assert result.accepted == [] and list(result.deferred) == ["ann@danebad.test"]
    assert domain.mx is None and domain.policy == "dane"
    assert "matches none of its DANE TLSA records" in str(domain.error)
    assert [a.address for a in domain.attempts] == ["127.0.0.9"]  # one try, no plain-text retry
    assert host.messages == []
    assert any(f.result_type == "validation-failure" for f in domain.tls_failures)


def test_tlsa_present_but_no_starttls_means_no_delivery(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.danenotls.test")  # plain ESMTP, no STARTTLS offered
    result = mxnet.deliver(message("ann@danenotls.test"), tmp_path, driver)
    domain = result.domains["danenotls.test"]
    assert list(result.deferred) == ["ann@danenotls.test"] and host.messages == []
    assert domain.policy == "dane"
    assert [f.result_type for f in domain.tls_failures] == ["starttls-not-supported"]


def test_tlsa_in_an_unsigned_zone_is_ignored(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    # plain.test publishes a TLSA record that matches nothing, but no AD bit: not DANE
    host = mx_hosts("mx.plain.test")
    result = mxnet.deliver(message("ann@plain.test"), tmp_path, driver)
    domain = result.domains["plain.test"]
    assert result.accepted == ["ann@plain.test"]
    assert domain.policy == "none"
    assert domain.tls is not None and domain.tls_verified is False  # untrusted CA: recorded
    assert [m.tls for m in host.messages] == [True]


def test_tlsa_of_an_mx_host_named_by_an_unauthenticated_mx_answer_is_ignored(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    # insecuremx.test (unsigned) points at mx.danebad.test, whose signed TLSA matches nothing.
    host = mx_hosts("mx.danebad.test")
    result = mxnet.deliver(message("ann@insecuremx.test"), tmp_path, driver)
    outcome = result.domains["insecuremx.test"]
    assert result.accepted == ["ann@insecuremx.test"], outcome.error
    assert outcome.policy == "none" and len(host.messages) == 1


def test_dane_can_be_switched_off(mxnet: MxNet, mx_hosts, tmp_path: Path) -> None:
    host = mx_hosts("mx.danebad.test")
    result = mxnet.deliver(message("ann@danebad.test"), tmp_path, dane=False)
    assert result.domains["danebad.test"].policy == "none"
    assert result.accepted == ["ann@danebad.test"] and len(host.messages) == 1


def test_without_the_ad_bit_tlsa_records_are_not_trusted(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    # The same zones asked straight from the authoritative server: data, but never AD.
    host = mx_hosts("mx.danebad.test")
    result = mxnet.deliver(
        message("ann@danebad.test"), tmp_path, resolver=mxnet.dns.authoritative_resolver()
    )
    assert result.domains["danebad.test"].policy == "none"
    assert len(host.messages) == 1


@pytest.fixture(scope="module")
def leaf_der() -> bytes:
    pem = trustme.CA().issue_cert("mx.example").cert_chain_pems[0].bytes().decode()
    return ssl.PEM_cert_to_DER_cert(pem)


@pytest.mark.parametrize(("selector", "matching"), [(s, m) for s in (0, 1) for m in (0, 1, 2)])
def test_dane_ee_selectors_and_matching_types(
    leaf_der: bytes, selector: int, matching: int
) -> None:
    selected = leaf_der if selector == 0 else spki_of(leaf_der)
    data = {0: selected, 1: hashlib.sha256(selected).digest(), 2: hashlib.sha512(selected).digest()}
    record = parse_tlsa(f"3 {selector} {matching} {data[matching].hex()}")
    assert match_leaf([record], leaf_der) == record
    wrong = Tlsa(3, selector, matching, bytes(len(record.data)))
    assert match_leaf([wrong], leaf_der) is None


def test_pkix_usages_are_unusable_and_dane_ta_is_not_a_leaf_match(leaf_der: bytes) -> None:
    digest = hashlib.sha256(spki_of(leaf_der)).digest()
    for usage in (0, 1):  # PKIX-TA/EE are unusable for SMTP (RFC 7672 §3.1.3)
        record = Tlsa(usage, 1, 1, digest)
        assert not record.usable and match_leaf([record], leaf_der) is None
    ta = Tlsa(2, 1, 1, digest)  # usable, but matched on a chain with a name check
    assert ta.usable and match_leaf([ta], leaf_der) is None
    assert not Tlsa(3, 2, 1, digest).usable and not Tlsa(2, 1, 3, digest).usable


def test_tlsa_presentation_form_with_spaces() -> None:
    record = parse_tlsa("3 1 1 ABCD EF01")
    assert (record.usage, record.selector, record.matching, record.data) == (
        3,
        1,
        1,
        b"\xab\xcd\xef\x01",
    )
