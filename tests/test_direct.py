"""Direct delivery: MX order and failover, fallbacks and DNS failures, on a real DNS chain.

Every domain here lives in tests/servers/mxnet.py: NSD serves signed zones,
Unbound validates them, and each MX host is an aiosmtpd server on its own
loopback address (or a scripted fake where a fault is needed).
"""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import dns.resolver
import pytest

from smtpsubmit import DirectResult, Message, deliver_direct
from smtpsubmit.direct.resolve import group_by_domain, idna_domain
from smtpsubmit.errors import MessageError
from tests.servers.certs import make_server_context
from tests.servers.fakesmtp import Expect, FakeSMTP, Send
from tests.servers.mxnet import HOSTS, MxNet

pytestmark = pytest.mark.timeout(60)


def message(*to: str) -> Message:
    return Message(sender="app@sender.test", to=list(to), subject="direct", text="Hello MX.")


def test_preferred_mx_down_second_takes_it(mxnet: MxNet, mx_hosts, tmp_path: Path, driver) -> None:
    mx2 = mx_hosts("mx2.alpha.test")  # mx1 (preference 10, 127.0.0.2) has nothing listening
    result = mxnet.deliver(message("bob@alpha.test"), tmp_path, driver)
    assert result.accepted == ["bob@alpha.test"]
    domain = result.domains["alpha.test"]
    assert domain.mx == "mx2.alpha.test"
    assert [a.mx for a in domain.attempts] == ["mx1.alpha.test", "mx2.alpha.test"]
    assert domain.attempts[0].error is not None and domain.attempts[0].error.is_temporary
    assert [m.rcpt_tos for m in mx2.messages] == [["bob@alpha.test"]]


def test_preferred_mx_answers_4xx_second_takes_it(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    busy = FakeSMTP(
        [Send(b"421 4.3.2 mx1 busy, try later\r\n"), Expect(rb"QUIT"), Send(b"221 bye\r\n")],
        host=HOSTS["mx1.alpha.test"][0],
        port=mxnet.smtp_port,
    ).start()
    try:
        mx2 = mx_hosts("mx2.alpha.test")
        result = mxnet.deliver(message("bob@alpha.test"), tmp_path, driver)
    finally:
        busy.stop()
    assert busy.connections == 1
    assert result.domains["alpha.test"].mx == "mx2.alpha.test"
    assert result.accepted == ["bob@alpha.test"] and len(mx2.messages) == 1


def test_preferred_mx_preferred_when_up(mxnet: MxNet, mx_hosts, tmp_path: Path) -> None:
    mx1, mx2 = mx_hosts("mx1.alpha.test"), mx_hosts("mx2.alpha.test")
    result = mxnet.deliver(message("bob@alpha.test"), tmp_path)
    assert result.domains["alpha.test"].mx == "mx1.alpha.test"
    assert len(mx1.messages) == 1 and mx2.messages == []


def test_every_mx_down_defers(mxnet: MxNet, tmp_path: Path) -> None:
    result = mxnet.deliver(message("bob@alpha.test"), tmp_path)
    assert result.accepted == [] and result.refused == {}
    assert list(result.deferred) == ["bob@alpha.test"]
    assert result.domains["alpha.test"].mx is None
    assert len(result.domains["alpha.test"].attempts) == 2


def test_equal_preferences_are_randomised_by_the_given_rng(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    mx_hosts("a.equal.test"), mx_hosts("b.equal.test")
    chosen = {}
    for seed in range(8):
        result = mxnet.deliver(message("x@equal.test"), tmp_path, rng=random.Random(seed))
        chosen[seed] = result.domains["equal.test"].mx
    assert set(chosen.values()) == {"a.equal.test", "b.equal.test"}  # both get picked first
    again = mxnet.deliver(message("x@equal.test"), tmp_path, rng=random.Random(3))
    assert again.domains["equal.test"].mx == chosen[3]  # and a seed fixes the order


def test_no_mx_falls_back_to_the_domain_address(mxnet: MxNet, mx_hosts, tmp_path: Path) -> None:
    host = mx_hosts("fallback.test")
    result = mxnet.deliver(message("carol@fallback.test"), tmp_path)
    assert result.accepted == ["carol@fallback.test"]
    assert result.domains["fallback.test"].mx == "fallback.test"
    assert result.domains["fallback.test"].tls is None  # no STARTTLS offered: plain text
    assert len(host.messages) == 1


def test_opportunistic_tls_that_cannot_be_set_up_falls_back_to_plain_text(
    mxnet: MxNet, mx_hosts, tmp_path: Path, tls_ca
) -> None:
    # STARTTLS offered, but only TLS 1.0, which the client refuses: no policy applies, so the
    # message goes in plain text rather than not at all (RFC 7435), and the result says so.
    old_tls = make_server_context(tls_ca, "fallback.test", tls_max=ssl.TLSVersion.TLSv1)
    host = mx_hosts("fallback.test", context=old_tls)
    result = mxnet.deliver(message("carol@fallback.test"), tmp_path)
    domain = result.domains["fallback.test"]
    assert result.accepted == ["carol@fallback.test"] and [m.tls for m in host.messages] == [False]
    assert (domain.tls, domain.tls_verified, domain.policy) == (None, None, "none")


def test_null_mx_is_a_permanent_failure_with_a_clear_reason(
    mxnet: MxNet, tmp_path: Path, driver
) -> None:
    result = mxnet.deliver(message("dave@nullmx.test"), tmp_path, driver)
    reply = result.refused["dave@nullmx.test"]
    assert reply.code == 550 and reply.enhanced == "5.1.10"
    error = result.domains["nullmx.test"].error
    assert error is not None and not error.is_temporary
    assert "null MX" in str(error) and "accepts no mail" in str(error)
    assert result.deferred == {} and result.domains["nullmx.test"].attempts == []


def test_no_mx_and_no_address_is_permanent(mxnet: MxNet, tmp_path: Path) -> None:
    result = mxnet.deliver(message("x@nothing.fallback.test"), tmp_path)
    reply = result.refused["x@nothing.fallback.test"]
    assert (reply.code, reply.enhanced) == (550, "5.1.2")
    assert "neither MX nor address records" in reply.text


def test_nxdomain_is_permanent(mxnet: MxNet, tmp_path: Path) -> None:
    result = mxnet.deliver(message("erin@nosuch.alpha.test"), tmp_path)
    assert result.refused["erin@nosuch.alpha.test"].enhanced == "5.1.2"
    assert "does not exist" in str(result.domains["nosuch.alpha.test"].error)


def test_servfail_from_bogus_signatures_is_temporary(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.bogus.test")  # reachable, but DNS for the domain does not validate
    result = mxnet.deliver(message("frank@bogus.test"), tmp_path, driver)
    assert list(result.deferred) == ["frank@bogus.test"]
    assert "SERVFAIL" in str(result.deferred["frank@bogus.test"])
    assert host.messages == []


def test_unreachable_resolver_is_temporary(mxnet: MxNet, tmp_path: Path) -> None:
    dead = dns.resolver.Resolver(configure=False)
    dead.nameservers, dead.port, dead.lifetime = ["127.0.0.1"], 9, 1.0  # discard: nothing answers
    result = mxnet.deliver(message("gina@alpha.test"), tmp_path, resolver=dead)
    assert list(result.deferred) == ["gina@alpha.test"]
    assert result.deferred["gina@alpha.test"].is_temporary


def test_three_domains_one_transaction_each(mxnet: MxNet, mx_hosts, tmp_path: Path, driver) -> None:
    mx1 = mx_hosts("mx1.alpha.test")
    fallback = mx_hosts("fallback.test")
    a, b = mx_hosts("a.equal.test"), mx_hosts("b.equal.test")
    rcpts = ["u1@alpha.test", "u2@fallback.test", "u3@alpha.test", "u4@equal.test", "u5@Alpha.TEST"]
    result = mxnet.deliver(message(*rcpts), tmp_path, driver)
    # the message writes domains in lower case (u5@alpha.test); grouping is by domain anyway
    assert sorted(result.accepted) == sorted(r.lower() for r in rcpts)
    assert list(result.domains) == ["alpha.test", "fallback.test", "equal.test"]
    assert [m.rcpt_tos for m in mx1.messages] == [
        ["u1@alpha.test", "u3@alpha.test", "u5@alpha.test"]
    ]
    assert [m.rcpt_tos for m in fallback.messages] == [["u2@fallback.test"]]
    assert len(a.messages) + len(b.messages) == 1
    # the same message (same Message-ID) went to every domain
    ids = {
        m.content.split(b"Message-ID: ")[1].split(b"\r\n")[0]
        for m in mx1.messages + fallback.messages
    }
    assert len(ids) == 1 and result.message_id in ids.pop().decode()


def test_domains_sharing_an_mx_share_its_connection(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    mx2 = mx_hosts("mx2.alpha.test")  # mx1 is down: alpha.test goes to mx2, shared.test's only MX
    result = mxnet.deliver(message("a@alpha.test", "b@shared.test"), tmp_path, driver)
    assert sorted(result.accepted) == ["a@alpha.test", "b@shared.test"]
    assert [m.rcpt_tos for m in mx2.messages] == [["a@alpha.test"], ["b@shared.test"]]
    assert mx2.messages[0].connection == mx2.messages[1].connection  # two transactions, one session


def test_refusal_per_recipient_is_kept(mxnet: MxNet, tmp_path: Path, driver) -> None:
    from tests.servers.fakesmtp import ReadData, ehlo_reply

    fake = FakeSMTP(
        [
            Send(b"220 fake ESMTP\r\n"),
            Expect(rb"EHLO sender\.test"),
            Send(ehlo_reply("8BITMIME")),
            Expect(rb"MAIL FROM:<app@sender\.test>.*"),
            Send(b"250 ok\r\n"),
            Expect(rb"RCPT TO:<ok@fallback\.test>"),
            Send(b"250 ok\r\n"),
            Expect(rb"RCPT TO:<gone@fallback\.test>"),
            Send(b"550 5.1.1 no such user\r\n"),
            Expect(rb"RCPT TO:<later@fallback\.test>"),
            Send(b"450 4.2.1 mailbox busy\r\n"),
            Expect(rb"DATA"),
            Send(b"354 go\r\n"),
            ReadData(),
            Send(b"250 queued\r\n"),
            Expect(rb"QUIT"),
            Send(b"221 bye\r\n"),
        ],
        host=HOSTS["fallback.test"][0],
        port=mxnet.smtp_port,
    ).start()
    try:
        result = mxnet.deliver(
            message("ok@fallback.test", "gone@fallback.test", "later@fallback.test"),
            tmp_path,
            driver,
        )
    finally:
        fake.stop()
    assert fake.errors == []
    assert result.accepted == ["ok@fallback.test"]
    assert result.refused["gone@fallback.test"].code == 550
    assert result.deferred["later@fallback.test"].reply.code == 450  # type: ignore[union-attr]


def test_smtputf8_recipient_at_a_host_without_smtputf8_is_refused(
    mxnet: MxNet, tmp_path: Path
) -> None:
    from tests.servers.fakesmtp import ehlo_reply

    fake = FakeSMTP(
        [
            Send(b"220 fake ESMTP\r\n"),
            Expect(rb"EHLO sender\.test"),
            Send(ehlo_reply("8BITMIME")),  # no SMTPUTF8
            Expect(rb"QUIT"),
            Send(b"221 bye\r\n"),
        ],
        host=HOSTS["fallback.test"][0],
        port=mxnet.smtp_port,
    ).start()
    try:
        result = mxnet.deliver(message("jos\u00e9@fallback.test"), tmp_path)
    finally:
        fake.stop()
    assert fake.errors == [] and fake.data == []
    reply = result.refused["jos\u00e9@fallback.test"]
    assert (reply.code, reply.enhanced) == (550, "5.6.7") and "SMTPUTF8" in reply.text


def test_raw_message_needs_sender_and_recipients(mxnet: MxNet) -> None:
    with pytest.raises(MessageError):
        deliver_direct(b"Subject: x\r\n\r\nbody\r\n", resolver=mxnet.dns.resolver())


def test_unreadable_ca_file_is_a_tls_error_before_any_lookup(tmp_path: Path) -> None:
    from smtpsubmit import TlsError

    dead = dns.resolver.Resolver(configure=False)
    dead.nameservers, dead.port = ["127.0.0.1"], 9  # would defer, had it been asked
    with pytest.raises(TlsError, match="cannot load the CA certificates"):
        deliver_direct(message("a@alpha.test"), resolver=dead, ca_file=str(tmp_path / "none.pem"))


def test_result_is_exported_and_serialisable(mxnet: MxNet, tmp_path: Path) -> None:
    result = mxnet.deliver(message("dave@nullmx.test"), tmp_path)
    assert isinstance(result, DirectResult)
    data = result.as_dict()
    assert data["refused"]["dave@nullmx.test"]["code"] == 550  # type: ignore[index]


def test_grouping_uses_the_idna_domain() -> None:
    groups = group_by_domain(["a@Bücher.example", "b@xn--bcher-kva.example", "c@other.example"])
    assert groups == {
        "xn--bcher-kva.example": ["a@Bücher.example", "b@xn--bcher-kva.example"],
        "other.example": ["c@other.example"],
    }
    assert idna_domain("EXAMPLE.org.") == "example.org"
    with pytest.raises(ValueError):
        group_by_domain(["user@[127.0.0.1]"])


def test_sync_and_async_delivery_cannot_drift() -> None:
    import inspect
    import typing

    from smtpsubmit import adeliver_direct
    from smtpsubmit.direct import deliver as drivers
    from smtpsubmit.direct.flows import Request

    assert inspect.signature(deliver_direct) == inspect.signature(adeliver_direct)
    assert inspect.iscoroutinefunction(adeliver_direct)
    names = {cls.__name__ for cls in typing.get_args(Request)}
    assert names == {"Call", "Connect", "Transaction", "Close"}
    for drive in (drivers._drive, drivers._adrive):
        source = inspect.getsource(drive)
        for name in names - {"Close"}:  # Close is the final else of both
            assert f"isinstance(request, {name})" in source, (drive.__name__, name)
