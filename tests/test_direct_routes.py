"""Direct delivery's paths to an MX host: CNAME aliases under DANE, IPv6, hanging hosts,
and cancellation — on the real DNS chain of tests/servers/mxnet.py.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpsubmit import Message
from smtpsubmit.direct import PolicyCache, adeliver_direct
from tests.servers.fakesmtp import Expect, ReadData, Send, Silent, ehlo_reply
from tests.servers.mxnet import DUAL_DEAD_ADDRESS, HOSTS, MxNet

pytestmark = pytest.mark.timeout(60)


def message(*to: str) -> Message:
    return Message(sender="app@sender.test", to=list(to), subject="routes", text="Hello MX.")


@pytest.fixture
def sni(mxnet: MxNet) -> Iterator[dict[str, list[str | None]]]:
    """The SNI names each MX host's TLS server was asked for, by host."""
    seen: dict[str, list[str | None]] = {}
    for name, context in mxnet.contexts.items():

        def record(_obj: object, server_name: str | None, _ctx: object, name: str = name) -> None:
            seen.setdefault(name, []).append(server_name)

        context.sni_callback = record  # type: ignore[assignment]
    yield seen
    for context in mxnet.contexts.values():
        context.sni_callback = None


# -- RFC 7672 §2.2.2: TLSA records of an MX host name that is an alias ------------------------


def test_tlsa_at_the_expanded_name_is_used_and_sent_as_sni(
    mxnet: MxNet, mx_hosts, tmp_path: Path, sni, driver
) -> None:
    host = mx_hosts("real.danecname.test")  # mx.danecname.test is a CNAME to it
    result = mxnet.deliver(message("ann@danecname.test"), tmp_path, driver)
    outcome = result.domains["danecname.test"]
    assert result.accepted == ["ann@danecname.test"], outcome.error
    assert (outcome.mx, outcome.policy, outcome.tls_verified) == ("mx.danecname.test", "dane", True)
    assert len(host.messages) == 1
    assert sni["real.danecname.test"] == ["real.danecname.test"]  # the TLSA base domain


def test_tlsa_at_the_mx_host_name_is_used_when_the_expanded_name_has_none(
    mxnet: MxNet, mx_hosts, tmp_path: Path, sni
) -> None:
    host = mx_hosts("real2.danecname.test")
    result = mxnet.deliver(message("ann@danecname2.test"), tmp_path)
    outcome = result.domains["danecname2.test"]
    assert result.accepted == ["ann@danecname2.test"], outcome.error
    assert (outcome.policy, outcome.tls_verified) == ("dane", True)
    assert len(host.messages) == 1
    assert sni["real2.danecname.test"] == ["mx2.danecname.test"]


def test_tlsa_at_the_expanded_name_wins_over_the_mx_host_name(
    mxnet: MxNet, mx_hosts, tmp_path: Path
) -> None:
    # mx3's own TLSA record would match; real3's (looked up first) does not.
    host = mx_hosts("real3.danecname.test")
    result = mxnet.deliver(message("ann@danecname3.test"), tmp_path)
    outcome = result.domains["danecname3.test"]
    assert result.accepted == [] and host.messages == []
    assert outcome.policy == "dane"
    assert [f.result_type for f in outcome.tls_failures] == ["validation-failure"]


# -- IPv6 -------------------------------------------------------------------------------------


def test_an_mx_host_reachable_only_over_ipv6_gets_the_message(
    mxnet: MxNet, mx_hosts, tmp_path: Path, driver
) -> None:
    host = mx_hosts("mx.v6.test")  # AAAA ::1, no A record
    result = mxnet.deliver(message("ann@v6.test"), tmp_path, driver)
    outcome = result.domains["v6.test"]
    assert result.accepted == ["ann@v6.test"], outcome.error
    assert [a.address for a in outcome.attempts] == ["::1"]
    assert outcome.tls_verified is True and len(host.messages) == 1


def test_a_and_aaaa_addresses_are_both_tried(mxnet: MxNet, mx_hosts, tmp_path: Path) -> None:
    host = mx_hosts("mx.dual.test")  # listens on ::1; its A address has nothing listening
    result = mxnet.deliver(message("ann@dual.test"), tmp_path)
    outcome = result.domains["dual.test"]
    assert result.accepted == ["ann@dual.test"], outcome.error
    assert [a.address for a in outcome.attempts] == [DUAL_DEAD_ADDRESS, "::1"]
    assert outcome.attempts[0].error is not None and outcome.attempts[0].error.is_temporary
    assert len(host.messages) == 1


# -- hanging hosts and cancellation -----------------------------------------------------------


def test_timeout_bounds_a_hanging_mx_and_the_next_one_is_tried(
    mxnet: MxNet, mx_hosts, tmp_path: Path, fake_smtp, driver
) -> None:
    hanging = fake_smtp([Silent(30)], host=HOSTS["mx1.alpha.test"][0], port=mxnet.smtp_port)
    mx2 = mx_hosts("mx2.alpha.test")
    started = time.monotonic()
    result = mxnet.deliver(message("bob@alpha.test"), tmp_path, driver, timeout=1.0)
    elapsed = time.monotonic() - started
    outcome = result.domains["alpha.test"]
    assert result.accepted == ["bob@alpha.test"] and outcome.mx == "mx2.alpha.test"
    assert hanging.connections == 1 and len(mx2.messages) == 1
    first = outcome.attempts[0]
    assert first.mx == "mx1.alpha.test" and first.error is not None and first.error.is_temporary
    assert elapsed < 8, elapsed  # one timeout, not the 30 s the host would hang


def _takes_the_message(final: list[Send] | None = None) -> list[object]:
    return [
        Send(b"220 mx ESMTP\r\n"),
        Expect(rb"EHLO .*"),
        Send(ehlo_reply("8BITMIME")),
        Expect(rb"MAIL FROM:.*"),
        Send(b"250 ok\r\n"),
        Expect(rb"RCPT TO:.*"),
        Send(b"250 ok\r\n"),
        Expect(rb"DATA"),
        Send(b"354 go\r\n"),
        ReadData(),
        *(final or []),
        Silent(30),
    ]


def test_cancelled_async_delivery_drops_every_connection_and_leaves_no_task(
    mxnet: MxNet, tmp_path: Path, fake_smtp
) -> None:
    # shared.test's MX (mx2.alpha.test) takes its message and then ignores QUIT; alpha.test's
    # first MX takes the message and never answers the final dot. Cancelled there, the call
    # must neither wait for a QUIT reply nor send the stuck message's host anything more.
    idle = fake_smtp(
        _takes_the_message([Send(b"250 queued\r\n")]),
        host=HOSTS["mx2.alpha.test"][0],
        port=mxnet.smtp_port,
    )
    stuck = fake_smtp(_takes_the_message(), host=HOSTS["mx1.alpha.test"][0], port=mxnet.smtp_port)

    async def main() -> tuple[float, set[asyncio.Task[object]]]:
        task = asyncio.create_task(
            adeliver_direct(
                message("ann@shared.test", "bob@alpha.test"),
                resolver=mxnet.dns.resolver(),
                timeout=30.0,
                ca_file=mxnet.ca_file,
                port=mxnet.smtp_port,
                mta_sts_port=mxnet.https_port,
                policy_cache=PolicyCache(tmp_path),
                local_hostname="sender.test",
            )
        )
        async with asyncio.timeout(10):
            while not stuck.data:  # the second message is out, its reply is due
                await asyncio.sleep(0.02)
        task.cancel()
        cancelled_at = time.monotonic()
        async with asyncio.timeout(3):
            with pytest.raises(asyncio.CancelledError):
                await task
        return time.monotonic() - cancelled_at, asyncio.all_tasks() - {asyncio.current_task()}

    took, left = asyncio.run(main())
    assert took < 1.0 and left == set()
    deadline = time.monotonic() + 3
    for fake in (idle, stuck):
        while not any("client closed" in e for e in fake.events) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("client closed" in e for e in fake.events), fake.events
        assert fake.connections == 1 and b"QUIT" not in fake.transcript[0]


def test_ssl_default_context_is_untouched_by_the_sni_fixture() -> None:
    # guard for the fixture above: it only decorates the MX hosts' own contexts
    assert ssl.create_default_context().sni_callback is None
