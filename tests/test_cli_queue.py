"""``smtpsubmit worker`` and ``smtpsubmit queue`` end to end (real processes, real aiosmtpd)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpsubmit.outbox import Outbox, RetryPolicy
from smtpsubmit.outbox.sql import SCHEMA_VERSION
from smtpsubmit.outbox.streaming import LOOKAHEAD
from tests.outbox_helpers import ScriptedHandler, message, route, serve, subjects
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.test_cli_send import cli_env, home, run_cli

__all__ = ["home"]


@pytest.fixture
def handler() -> ScriptedHandler:
    return ScriptedHandler()


@pytest.fixture
def smtp(handler: ScriptedHandler) -> Iterator[AiosmtpdServer]:
    yield from serve(handler)


@pytest.fixture
def config(home: Path, smtp: AiosmtpdServer) -> Path:
    path = home / ".config" / "smtpsubmit" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        'default = "local"\n'
        "[accounts.local]\n"
        f'host = "127.0.0.1"\nport = {smtp.port}\noptions = ["EXTENDED"]\n'
        "[accounts.bulk]\n"
        f'host = "127.0.0.1"\nport = {smtp.port}\n'
    )
    return path


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/outbox.db"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queue(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["queue", "--outbox", url, *args], home)


def test_worker_once_delivers_through_the_accounts(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer
) -> None:
    box = Outbox(url)
    box.enqueue(message(1))
    box.enqueue(message(2), route="bulk")
    box.enqueue(message(3), route="local")
    result = run_cli(["worker", "--outbox", url, "--once", "--concurrency", "2"], home)
    assert result.returncode == 0, result.stderr
    assert sorted(subjects(smtp)) == [f"outbox message {n}" for n in (1, 2, 3)]
    box.close()


def test_worker_stops_gracefully_on_sigterm(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpsubmit",
            "worker",
            "--outbox",
            url,
            "--lease",
            "5",
            "--metrics-port",
            str(port),
        ],
        env=cli_env(home),
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # the worker is up and idle
        box = Outbox(url)
        box.enqueue(message(1))
        smtp.wait_for(1, timeout=15)  # picked up by polling while it runs
        # The server has the message a moment before the worker commits its outcome.
        sent = b'smtpsubmit_outbox_messages{state="sent"} 1.0'
        deadline = time.monotonic() + 5
        while True:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            if sent in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sent in metrics
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err.decode()
        assert box.stats()["states"]["sent"] == 1
        box.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_queue_commands(
    home: Path, url: str, smtp: AiosmtpdServer, handler: ScriptedHandler
) -> None:
    box = Outbox(url, routes={"default": route(smtp)}, policy=RetryPolicy(jitter=0))
    handler.data = ["554 5.7.1 spam"]
    dead = box.enqueue(message(1, to=("x@example.org", "y@example.org")))
    box.run(stop_when_idle=True)
    waiting = box.enqueue(message(2), not_before=time.time() + 3600)

    shown = queue(home, url, "show", dead, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert {k: data[k] for k in ("id", "route", "state", "attempts")} == {
        "id": dead,
        "route": "default",
        "state": "bounced",
        "attempts": 1,
    }
    assert data["message_id"] and data["created"] and data["retry_at"] is None
    assert data["recipients"] == [
        {"address": a, "state": "bounced", "reply": {"code": 554, "text": "spam"}, "attempts": 1}
        | {"retry_at": None}
        for a in ("x@example.org", "y@example.org")
    ]

    listed = json.loads(queue(home, url, "list", "--json").stdout)
    assert [(m["id"], m["state"]) for m in listed] == [(dead, "bounced"), (waiting, "queued")]
    table = queue(home, url, "list")
    assert dead in table.stdout and "bounced" in table.stdout

    stats = json.loads(queue(home, url, "stats", "--json").stdout)
    assert stats["states"]["bounced"] == 1 and stats["states"]["queued"] == 1
    assert stats["routes"] == {"default": {"bounced": 1, "queued": 1}}
    assert set(stats) == {"states", "routes", "oldest_age", "send_rate", "possible_duplicates"}
    assert "possible duplicates 0" in queue(home, url, "stats").stdout

    assert queue(home, url, "cancel", dead).returncode == 1  # not waiting
    assert queue(home, url, "retry", dead).returncode == 0
    box.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]

    assert queue(home, url, "cancel", waiting).returncode == 0
    purged = queue(home, url, "purge", "--json")
    assert json.loads(purged.stdout) == {"purged": 1}  # the cancelled one only
    assert json.loads(queue(home, url, "purge", "--sent", "--json").stdout) == {"purged": 1}
    assert queue(home, url, "show", waiting).returncode == 1
    assert json.loads(queue(home, url, "migrate", "--json").stdout) == {
        "schema_version": SCHEMA_VERSION
    }
    box.close()


def test_queue_purge_never_touches_pending_mail(home: Path, url: str) -> None:
    box = Outbox(url)
    ident = box.enqueue(message(1))
    assert json.loads(queue(home, url, "purge", "--sent", "--json").stdout) == {"purged": 0}
    assert box.show(ident) is not None
    box.close()


def test_bad_outbox_urls(home: Path, tmp_path: Path) -> None:
    result = run_cli(["queue", "--outbox", "mysql://db/mail", "stats"], home)
    assert result.returncode == 64
    assert "unknown outbox URL scheme" in result.stderr
    (tmp_path / "adir").mkdir()
    result = run_cli(["queue", "--outbox", f"sqlite:///{tmp_path}/adir", "stats"], home)
    assert result.returncode == 75
    assert "adir" in result.stderr


def test_worker_without_accounts_is_a_config_error(home: Path, url: str) -> None:
    result = run_cli(["worker", "--outbox", url, "--once"], home)
    assert result.returncode == 78
    assert "no routes" in result.stderr


def test_the_default_outbox_lives_in_the_data_directory(home: Path) -> None:
    result = run_cli(["queue", "stats", "--json"], home)
    assert result.returncode == 0, result.stderr
    assert (home / ".local" / "share" / "smtpsubmit" / "outbox.sqlite3").exists()


def test_routes_may_name_accounts(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outbox(routes={"x": "ACCOUNT"}) takes the server from the account file."""
    box = Outbox(url, routes={"default": "default", "bulk": "bulk"}, config=str(config))
    assert box.routes is not None
    assert box.routes["bulk"].port == smtp.port
    box.enqueue(message(1), route="bulk")
    box.run(stop_when_idle=True)
    assert subjects(smtp) == ["outbox message 1"]
    with pytest.raises(ValueError, match="route 'x': no account 'nope'"):
        Outbox(url, routes={"x": "nope"}, config=str(config))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    assert Outbox(url, routes={"default": "default"}).routes == {"default": box.routes["default"]}
    box.close()


def test_sigterm_mid_send_finishes_what_is_begun_and_releases_the_rest(
    home: Path, url: str, config: Path, smtp: AiosmtpdServer, handler: ScriptedHandler
) -> None:
    box = Outbox(url)
    ids = box.enqueue_many([message(n) for n in range(10)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpsubmit", "worker", "--outbox", url],
        env=cli_env(home),
        stderr=subprocess.PIPE,
    )
    try:
        handler.on_data = lambda _content: (proc.send_signal(signal.SIGTERM), time.sleep(0.5))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The message in flight finishes, and so do those whose ``sending`` its stream had
    # already committed (LOOKAHEAD of them); the rest of the claim is released untouched.
    went = 1 + LOOKAHEAD
    states = [(box.show(i) or {})["state"] for i in ids]
    assert states == ["sent"] * went + ["queued"] * (10 - went)
    assert subjects(smtp) == [f"outbox message {n}" for n in range(went)]
    assert box.stats()["possible_duplicates"] == 0
    box.close()


def test_queue_on_postgres(home: Path, postgres_url: str) -> None:
    box = Outbox(postgres_url)
    ident = box.enqueue(message(1), route="bulk")
    stats = json.loads(queue(home, postgres_url, "stats", "--json").stdout)
    assert stats["routes"] == {"bulk": {"queued": 1}}
    assert queue(home, postgres_url, "cancel", ident).returncode == 0
    assert json.loads(queue(home, postgres_url, "purge", "--json").stdout) == {"purged": 1}
    assert json.loads(queue(home, postgres_url, "list", "--json").stdout) == []
    box.close()
