"""``smtpsubmit worker --rate`` and ``--direct``: route settings from the command line,
run as real processes against aiosmtpd and the loopback MX network."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import Message
from smtpsubmit.cli.errors import EX_USAGE, UsageError
from smtpsubmit.cli.routes import parse_rate
from smtpsubmit.outbox import Outbox
from tests.outbox_helpers import ScriptedHandler, message, serve
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.mxnet import MxNet
from tests.test_cli_send import cli_env, home, run_cli

__all__ = ["home"]

pytestmark = pytest.mark.timeout(90)
SRC = str(Path(__file__).resolve().parent.parent / "src")  # this checkout's code in the child


@pytest.fixture
def arrivals() -> list[float]:
    return []


@pytest.fixture
def smtp(arrivals: list[float]) -> Iterator[AiosmtpdServer]:
    yield from serve(ScriptedHandler(on_data=lambda _: arrivals.append(time.monotonic())))


@pytest.fixture
def config(home: Path, smtp: AiosmtpdServer) -> Path:
    path = home / ".config" / "smtpsubmit" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        'default = "local"\n'
        "[accounts.local]\n"
        f'host = "127.0.0.1"\nport = {smtp.port}\noptions = ["EXTENDED"]\n'
    )
    return path


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/outbox.db"


def worker(home: Path, url: str, *args: str) -> Any:
    return run_cli(
        ["worker", "--outbox", url, "--once", *args], home, env=cli_env(home, PYTHONPATH=SRC)
    )


def test_rate_values_are_parsed() -> None:
    route, limit = parse_rate("default=100/60")
    assert route == "default" and (limit.messages, limit.per) == (100, 60.0)
    assert limit.recipients is None and limit.connections_per_minute is None
    route, limit = parse_rate("bulk=10/0.5,recipients=50,connections=6")
    assert route == "bulk" and (limit.messages, limit.per) == (10, 0.5)
    assert (limit.recipients, limit.connections_per_minute) == (50, 6)


@pytest.mark.parametrize(
    "value",
    [
        "default",
        "default=100",
        "=100/60",
        "default=x/60",
        "default=0/60",
        "default=10/0",
        "default=10/inf",
        "default=10/60,burst=5",
        "default=10/60,recipients=",
        "default=10/60,recipients=0",
    ],
)
def test_malformed_rate_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_rate(value)
    assert caught.value.code == EX_USAGE and "--rate" in str(caught.value)


def test_malformed_rate_exits_64_before_sending(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer
) -> None:
    Outbox(url).enqueue(message(1))
    result = worker(home, url, "--rate", "default=ten/60")
    assert result.returncode == EX_USAGE
    assert "--rate 'default=ten/60': expected ROUTE=N/SECONDS" in result.stderr
    unknown = worker(home, url, "--rate", "nosuch=1/1")
    assert unknown.returncode == EX_USAGE and "no route 'nosuch'" in unknown.stderr
    twice = worker(home, url, "--rate", "local=1/1", "--rate", "local=2/1")
    assert twice.returncode == EX_USAGE and "given twice" in twice.stderr
    assert smtp.messages == []


def test_worker_honours_the_rate_of_a_route(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer, arrivals: list[float]
) -> None:
    box = Outbox(url)
    box.enqueue_many([message(n) for n in range(6)])
    result = worker(home, url, "--concurrency", "3", "--rate", "default=2/1")
    assert result.returncode == 0, result.stderr
    assert len(arrivals) == 6
    arrivals.sort()
    # 2 messages per second: every third message waits a window after the first of the pair
    # before it (a little slack: a grant and its delivery are milliseconds apart)
    gaps = [arrivals[i + 2] - arrivals[i] for i in range(4)]
    assert min(gaps) >= 0.8, gaps
    assert arrivals[-1] - arrivals[0] >= 1.8


def test_direct_route_from_the_command_line(
    home: Path, url: str, mxnet: MxNet, mx_hosts: Any, tmp_path: Path
) -> None:
    mx1 = mx_hosts("mx1.alpha.test")
    ident = Outbox(url).enqueue(
        Message(sender="app@sender.test", to="bob@alpha.test", subject="cli", text="hi"),
        route="mx",
    )
    result = worker(
        home, url,
        "--direct", "mx",
        "--dns-server", f"127.0.0.1:{mxnet.dns.resolver_port}",
        "--mx-port", str(mxnet.smtp_port),
        "--mta-sts-port", str(mxnet.https_port),
        "--ca-file", mxnet.ca_file,
        "--mta-sts-cache", str(tmp_path / "cache"),
        "--local-hostname", "sender.test",
        "--timeout", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [m.rcpt_tos for m in mx1.messages] == [["bob@alpha.test"]]
    shown = Outbox(url).show(ident)
    assert shown is not None and shown["state"] == "sent"


def test_direct_route_may_not_shadow_an_account(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer
) -> None:
    result = worker(home, url, "--direct", "local")
    assert result.returncode == EX_USAGE and "already an account" in result.stderr
