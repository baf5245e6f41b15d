"""MTA-STS for direct delivery (RFC 8461): policies fetched over verified HTTPS and cached.

The policy server (tests/servers/mxnet.py) answers for every ``mta-sts.<domain>``
on 127.0.0.8 and counts the requests, so the cache can be proved to save a fetch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from smtpsubmit import Message
from smtpsubmit.direct.mta_sts import PolicyCache, PolicyError, mx_matches, parse_policy
from tests.servers.mxnet import MxNet

pytestmark = pytest.mark.timeout(60)


def message(*to: str) -> Message:
    return Message(sender="app@sender.test", to=list(to), subject="sts", text="Hello STS.")


def test_enforce_with_listed_mx_and_valid_certificate_delivers(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.sts.test")
    result = mxnet.deliver(message("ann@sts.test"), tmp_path, driver)
    domain = result.domains["sts.test"]
    assert result.accepted == ["ann@sts.test"]
    assert (domain.policy, domain.mx, domain.tls_verified) == (
        "mta-sts:enforce",
        "mx.sts.test",
        True,
    )
    assert domain.mta_sts_policy_id == "20260101" and domain.tls_failures == []
    assert [m.tls for m in host.messages] == [True]


def test_enforce_skips_an_mx_the_policy_does_not_list(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    rogue, listed = mx_hosts("rogue.stsother.test"), mx_hosts("mx.stsother.test")
    result = mxnet.deliver(message("ann@stsother.test"), tmp_path, driver)
    domain = result.domains["stsother.test"]
    assert rogue.messages == []  # preferred, valid certificate, but not in the policy
    assert domain.mx == "mx.stsother.test" and len(listed.messages) == 1
    assert domain.attempts[0].mx == "rogue.stsother.test" and domain.attempts[0].address == ""
    assert [f.failure_reason_code for f in domain.tls_failures] == ["mx-not-in-policy"]


def test_enforce_with_untrusted_certificate_is_not_delivered(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts(
        "mx.stsbadcert.test"
    )  # the *.stsbadcert.test pattern matches; the cert does not
    result = mxnet.deliver(message("ann@stsbadcert.test"), tmp_path, driver)
    domain = result.domains["stsbadcert.test"]
    assert list(result.deferred) == ["ann@stsbadcert.test"] and host.messages == []
    assert domain.policy == "mta-sts:enforce" and domain.mx is None
    assert [f.result_type for f in domain.tls_failures] == ["certificate-not-trusted"]


def test_testing_mode_delivers_and_reports(mxnet: MxNet, mx_hosts, tmp_path: Path, driver) -> None:
    host = mx_hosts("mx.ststesting.test")  # untrusted certificate
    result = mxnet.deliver(message("ann@ststesting.test"), tmp_path, driver)
    domain = result.domains["ststesting.test"]
    assert result.accepted == ["ann@ststesting.test"] and len(host.messages) == 1
    assert domain.policy == "mta-sts:testing"
    assert domain.tls is not None and domain.tls_verified is False
    assert [(f.policy_type, f.receiving_mx_hostname) for f in domain.tls_failures] == [
        ("sts", "mx.ststesting.test")
    ]


def test_policy_is_cached_on_disk_and_reused(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    mx_hosts("mx.sts.test")
    before = mxnet.policy_requests["mta-sts.sts.test"]
    first = mxnet.deliver(message("ann@sts.test"), tmp_path, driver)
    second = mxnet.deliver(message("bob@sts.test"), tmp_path, driver)  # same cache directory
    assert mxnet.policy_requests["mta-sts.sts.test"] == before + 1
    assert (
        first.domains["sts.test"].policy == second.domains["sts.test"].policy == "mta-sts:enforce"
    )
    cached = json.loads((tmp_path / "sts.test.json").read_text())
    assert (cached["id"], cached["mode"], cached["max_age"]) == ("20260101", "enforce", 86400)


def test_cached_policy_outlives_a_missing_txt_record(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    # alpha.test publishes no _mta-sts record, but a fresh cached enforce policy still
    # applies (RFC 8461 §5.1: an attacker stripping the TXT record must not downgrade).
    mx1, mx2 = mx_hosts("mx1.alpha.test"), mx_hosts("mx2.alpha.test")
    PolicyCache(tmp_path).put(
        parse_policy("alpha.test", "old", _policy("enforce", "mx9.alpha.test"), time.time())
    )
    result = mxnet.deliver(message("ann@alpha.test"), tmp_path)
    domain = result.domains["alpha.test"]
    assert domain.policy == "mta-sts:enforce" and list(result.deferred) == ["ann@alpha.test"]
    assert mx1.messages == mx2.messages == []
    # an expired one does not
    PolicyCache(tmp_path).put(
        parse_policy("alpha.test", "old", _policy("enforce", "mx9.alpha.test"), time.time() - 7200)
    )
    result = mxnet.deliver(message("ann@alpha.test"), tmp_path)
    assert result.domains["alpha.test"].policy == "none" and len(mx1.messages) == 1


def test_failed_policy_fetch_is_reported_and_delivery_goes_on(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    host = mx_hosts("mx2.alpha.test")
    result = mxnet.deliver(message("ann@stsmissing.test"), tmp_path)
    domain = result.domains["stsmissing.test"]
    assert result.accepted == ["ann@stsmissing.test"] and len(host.messages) == 1
    assert domain.policy == "none"
    [failure] = domain.tls_failures
    assert failure.result_type == "sts-policy-fetch-error" and "404" in str(
        failure.failure_reason_code
    )
    assert not (tmp_path / "stsmissing.test.json").exists()


def test_mta_sts_can_be_switched_off(mxnet: MxNet, mx_hosts, tmp_path: Path) -> None:
    host = mx_hosts("mx.stsbadcert.test")
    result = mxnet.deliver(message("ann@stsbadcert.test"), tmp_path, mta_sts=False)
    assert result.domains["stsbadcert.test"].policy == "none" and len(host.messages) == 1


def _policy(mode: str, *mx: str, max_age: int = 3600) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def test_policy_parsing() -> None:
    policy = parse_policy(
        "example.org", "abc", _policy("enforce", "mx1.example.org", "*.ex.org"), 0
    )
    assert policy.mode == "enforce" and policy.mx == ("mx1.example.org", "*.ex.org")
    assert policy.fresh(3599) and not policy.fresh(3600)
    assert parse_policy("e.org", "i", _policy("none"), 0).mx == ()
    assert parse_policy("e.org", "i", _policy("testing", "m", max_age=10**9), 0).max_age == 31557600
    for bad in (
        "version: STSv2\nmode: enforce\nmx: m\nmax_age: 1\n",
        _policy("block", "m"),
        _policy("enforce"),
        "version: STSv1\nmode: enforce\nmx: m\n",
    ):
        with pytest.raises(PolicyError):
            parse_policy("e.org", "i", bad, 0)


def test_mx_patterns() -> None:
    assert mx_matches("mx.example.org", "MX.example.org.")
    assert mx_matches("*.example.org", "mx1.example.org")
    assert not mx_matches("*.example.org", "a.b.example.org")  # one label only
    assert not mx_matches("*.example.org", "example.org")
    assert not mx_matches("mx.example.org", "mx.example.org.evil")
