"""Outbox routes that deliver directly to the recipients' MX hosts (contract §10, §13).

Everything runs on the loopback network of tests/servers/mxnet.py: the real
NSD + Unbound DNS chain and aiosmtpd MX hosts on 127.0.0.x, so the worker's
direct route resolves, connects and delivers exactly as it would on the
Internet. A dead MX host is a listener that counts connections and answers
421, so the tests can tell a deferral that cost a connection from one that
did not.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import Message, Server
from smtpsubmit.outbox import DIRECT, DirectRoute, Outbox, RetryPolicy
from tests.outbox_helpers import Clock
from tests.servers.mxnet import HOSTS, MxNet

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
POLICY = RetryPolicy(first_delay=60.0, max_delay=600.0, jitter=0.0)


def message(*to: str, subject: str = "direct") -> Message:
    return Message(sender="app@sender.test", to=list(to), subject=subject, text="Hello MX.")


def direct_route(mxnet: MxNet, tmp_path: Path, **kwargs: Any) -> DirectRoute:
    return DirectRoute(
        resolver=mxnet.dns.resolver(),
        port=mxnet.smtp_port,
        mta_sts_port=mxnet.https_port,
        ca_file=mxnet.ca_file,
        policy_cache=str(tmp_path / "mta-sts"),
        local_hostname="sender.test",
        timeout=5.0,
        **kwargs,
    )


def outbox(mxnet: MxNet, tmp_path: Path, clock: Clock | None = None) -> Outbox:
    return Outbox(
        f"sqlite:///{tmp_path}/outbox.db",
        routes={"mx": direct_route(mxnet, tmp_path)},
        policy=POLICY,
        clock=clock or Clock(),
        random=lambda: 0.5,
    )


def recipients(box: Outbox, ident: str) -> dict[str, dict[str, Any]]:
    shown = box.show(ident)
    assert shown is not None
    return {r["address"]: r for r in shown["recipients"]}


class BusyMx:
    """An MX host that accepts connections, answers 421 and hangs up; counts connections."""

    def __init__(self, name: str, port: int) -> None:
        self.connections = 0
        self.sock = socket.create_server((HOSTS[name][0], port))
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.sendall(b"421 4.3.2 mx busy, try again later\r\n")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def busy_alpha(mxnet: MxNet) -> Iterator[list[BusyMx]]:
    """Both MX hosts of alpha.test failing temporarily."""
    hosts = [BusyMx("mx1.alpha.test", mxnet.smtp_port), BusyMx("mx2.alpha.test", mxnet.smtp_port)]
    try:
        yield hosts
    finally:
        for host in hosts:
            host.stop()


def test_route_values_that_mean_direct_delivery(tmp_path: Path) -> None:
    box = Outbox(
        f"sqlite:///{tmp_path}/o.db",
        routes={"mx": "direct", "tuned": DirectRoute(port=2525), "relay": Server("127.0.0.1")},
    )
    assert box.routes is not None
    assert box.routes["mx"] is DIRECT
    assert box.routes["tuned"] == DirectRoute(port=2525)
    assert isinstance(box.routes["relay"], Server)
    assert repr(box.routes["tuned"]) == "DirectRoute(port=2525)"
    with pytest.raises(TypeError, match="Server, DIRECT or an account name"):
        Outbox(f"sqlite:///{tmp_path}/o.db", routes={"x": 25})  # type: ignore[dict-item]


def test_queued_message_to_two_domains_is_delivered_directly(
    mxnet: MxNet, mx_hosts: Any, tmp_path: Path
) -> None:
    mx1, fallback = mx_hosts("mx1.alpha.test"), mx_hosts("fallback.test")
    box = outbox(mxnet, tmp_path)
    ident = box.enqueue(message("bob@alpha.test", "carol@fallback.test"), route="mx")
    box.run(stop_when_idle=True)
    assert [m.rcpt_tos for m in mx1.messages] == [["bob@alpha.test"]]
    assert [m.rcpt_tos for m in fallback.messages] == [["carol@fallback.test"]]
    assert mx1.messages[0].content == fallback.messages[0].content  # the stored bytes, once
    shown = box.show(ident)
    assert shown is not None and shown["state"] == "sent"
    for r in shown["recipients"]:
        assert r["state"] == "sent" and r["reply"]["code"] == 250 and r["attempts"] == 1


def test_dead_domain_is_deferred_and_not_tried_again_before_its_retry_time(
    mxnet: MxNet, mx_hosts: Any, tmp_path: Path, busy_alpha: list[BusyMx]
) -> None:
    fallback = mx_hosts("fallback.test")
    clock = Clock()
    box = outbox(mxnet, tmp_path, clock)
    first = box.enqueue(message("bob@alpha.test", subject="first"), route="mx", priority=1)
    second = box.enqueue(
        message("carol@alpha.test", "dora@fallback.test", subject="second"), route="mx"
    )
    box.run(stop_when_idle=True)

    # the first message cost one connection per MX host, and was deferred by the policy
    assert [b.connections for b in busy_alpha] == [1, 1]
    bob = recipients(box, first)["bob@alpha.test"]
    assert bob["state"] == "deferred" and bob["attempts"] == 1
    assert bob["retry_at"] == pytest.approx(clock.now + 60.0)
    # the second: alpha.test held back without a connection (and without counting an
    # attempt) until the domain's retry time; its other domain went out at once
    second_rcpts = recipients(box, second)
    carol = second_rcpts["carol@alpha.test"]
    assert carol["state"] == "deferred" and carol["attempts"] == 0
    assert carol["retry_at"] == pytest.approx(clock.now + 60.0)
    assert "not tried" in carol["reply"]["text"] and "421" in carol["reply"]["text"]
    assert second_rcpts["dora@fallback.test"]["state"] == "sent"
    assert [m.rcpt_tos for m in fallback.messages] == [["dora@fallback.test"]]
    assert len(box.direct_backoff) == 1

    # after the retry time the domain is tried again: it is back, both go, the hold ends
    for busy in busy_alpha:
        busy.stop()
    mx1 = mx_hosts("mx1.alpha.test")
    clock.advance(61.0)
    box.run(stop_when_idle=True)
    assert sorted(r for m in mx1.messages for r in m.rcpt_tos) == [
        "bob@alpha.test",
        "carol@alpha.test",
    ]
    assert recipients(box, second)["carol@alpha.test"]["attempts"] == 1
    assert len(box.direct_backoff) == 0
    assert box.stats()["states"].get("sent") == 2


def test_consecutive_failures_back_the_domain_off_longer(
    mxnet: MxNet, tmp_path: Path, busy_alpha: list[BusyMx]
) -> None:
    clock = Clock()
    box = outbox(mxnet, tmp_path, clock)
    ident = box.enqueue(message("bob@alpha.test"), route="mx")
    box.run(stop_when_idle=True)
    clock.advance(61.0)
    box.run(stop_when_idle=True)  # second failure: 120 s (first_delay * multiplier)
    assert [b.connections for b in busy_alpha] == [2, 2]
    entry = box.direct_backoff.held("mx", "alpha.test", clock.now)
    assert entry is not None and entry.failures == 2
    assert entry.retry_at == pytest.approx(clock.now + 120.0)
    bob = recipients(box, ident)["bob@alpha.test"]
    assert bob["state"] == "deferred" and bob["attempts"] == 2


def test_null_mx_domain_bounces_without_backing_off(mxnet: MxNet, tmp_path: Path) -> None:
    box = outbox(mxnet, tmp_path)
    ident = box.enqueue(message("dave@nullmx.test"), route="mx")
    box.run(stop_when_idle=True)
    shown = box.show(ident)
    assert shown is not None and shown["state"] == "bounced"
    (dave,) = shown["recipients"]
    assert dave["state"] == "bounced" and dave["reply"]["code"] == 550
    assert "null MX" in dave["reply"]["text"]
    assert len(box.direct_backoff) == 0  # permanent: nothing to wait for


def test_lost_reply_to_the_data_is_unknown(mxnet: MxNet, tmp_path: Path) -> None:
    from tests.servers.fakesmtp import Close, Expect, FakeSMTP, ReadData, Send, ehlo_reply

    lost = FakeSMTP(
        [
            Send(b"220 fake ESMTP\r\n"),
            Expect(rb"EHLO sender\.test"),
            Send(ehlo_reply("8BITMIME")),
            Expect(rb"MAIL FROM:<app@sender\.test>.*"),
            Send(b"250 ok\r\n"),
            Expect(rb"RCPT TO:<erin@fallback\.test>"),
            Send(b"250 ok\r\n"),
            Expect(rb"DATA"),
            Send(b"354 go\r\n"),
            ReadData(),
            Close(),  # the message arrived; its answer never does
        ],
        host=HOSTS["fallback.test"][0],
        port=mxnet.smtp_port,
    ).start()
    try:
        box = outbox(mxnet, tmp_path)
        ident = box.enqueue(message("erin@fallback.test"), route="mx")
        box.run(stop_when_idle=True)
    finally:
        lost.stop()
    # maybe delivered: resent once at once (retry-once, byte-identical), then held, not bounced
    assert lost.connections == 2 and len(lost.data) == 2 and len(set(lost.data)) == 1
    erin = recipients(box, ident)["erin@fallback.test"]
    assert erin["state"] == "unknown" and erin["retry_at"] is None and erin["attempts"] == 2
    shown = box.show(ident)
    assert shown is not None and shown["state"] == "unknown"
    assert len(box.direct_backoff) == 0  # an MX host answered: the domain is not dead


def test_rate_limit_of_a_direct_route_is_honoured(
    mxnet: MxNet, mx_hosts: Any, tmp_path: Path
) -> None:
    from smtpsubmit import RateLimit

    host = mx_hosts("fallback.test")
    box = Outbox(
        f"sqlite:///{tmp_path}/outbox.db",
        routes={"mx": direct_route(mxnet, tmp_path)},
        rate_limits={"mx": RateLimit(2, 0.5)},
    )
    box.enqueue_many([message(f"u{n}@fallback.test") for n in range(5)], route="mx")
    started = time.monotonic()
    box.run(stop_when_idle=True)
    elapsed = time.monotonic() - started
    assert len(host.messages) == 5
    assert elapsed >= 1.0  # 5 messages at 2 per 0.5 s: the fifth waits for the third window


@pytest.mark.parametrize(
    ("kill_at", "copies", "duplicates"),
    [
        ("after-sending", 1, 1),  # sending committed, nothing sent → resent, may-duplicate
        ("after-reply", 2, 1),  # 250 received, not committed → the documented duplicate
    ],
)
def test_crash_semantics_are_those_of_a_relay_route(
    mxnet: MxNet, mx_hosts: Any, tmp_path: Path, kill_at: str, copies: int, duplicates: int
) -> None:
    import os

    host = mx_hosts("fallback.test")
    url = f"sqlite:///{tmp_path}/outbox.db"
    box = Outbox(url, policy=RetryPolicy(first_delay=0.05, max_delay=0.05, jitter=0))
    ident = box.enqueue(message("fred@fallback.test"), route="mx")
    argv = [
        sys.executable, "-m", "tests.outbox_worker", "work-direct", url,
        str(mxnet.dns.resolver_port), str(mxnet.smtp_port), "--lease", "1.0",
    ]  # fmt: skip
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout's code, first
    env = {**os.environ, "PYTHONPATH": path, "SMTPSUBMIT_TEST_KILL_AT": kill_at}
    died = subprocess.run(argv, env=env, cwd=ROOT, timeout=60, capture_output=True, check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()
    time.sleep(1.1)  # the lease runs out; a healthy worker takes over
    env.pop("SMTPSUBMIT_TEST_KILL_AT")
    done = subprocess.run(argv, env=env, cwd=ROOT, timeout=60, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert [m.rcpt_tos for m in host.messages] == [["fred@fallback.test"]] * copies
    assert len({m.content for m in host.messages}) == 1  # byte-identical resend
    assert box.stats()["possible_duplicates"] == duplicates
    shown = box.show(ident)
    assert shown is not None and shown["state"] == "sent"


def test_threads_failing_on_one_outage_back_the_domain_off_once() -> None:
    from smtpsubmit.errors import SmtpError
    from smtpsubmit.outbox.direct_route import DomainBackoff

    backoff, down = DomainBackoff(), SmtpError("mx down", is_temporary=True)

    def fail(started: float, now: float) -> None:
        backoff.failed(
            "mx", "a.test", started=started, now=now, delay=lambda n: 60.0 * n, error=down
        )

    fail(0.0, 10.0)
    fail(5.0, 11.0)  # began before the first failure was recorded: the same outage
    entry = backoff.held("mx", "a.test", 11.0)
    assert entry is not None and (entry.failures, entry.retry_at) == (1, 70.0)
    assert backoff.held("mx", "b.test", 11.0) is None  # per domain
    assert backoff.held("other", "a.test", 11.0) is None  # and per route
    assert backoff.held("mx", "a.test", 70.0) is None  # its retry time has come
    fail(71.0, 75.0)  # tried again, failed again: longer
    entry = backoff.held("mx", "a.test", 75.0)
    assert entry is not None and (entry.failures, entry.retry_at) == (2, 195.0)
    backoff.succeeded("mx", "a.test")
    assert backoff.held("mx", "a.test", 75.0) is None and len(backoff) == 0
