"""``smtpsubmit send --batch``: a directory or an mbox of ready messages, streamed."""

from __future__ import annotations

import json
import mailbox
import time
from pathlib import Path
from typing import Any

import pytest

from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.test_cli_send import run_cli


def ready(i: int, to: str = "x@capture.test") -> bytes:
    return (
        f"From: sender@example.org\r\nTo: {to}\r\nBcc: hidden@capture.test\r\n"
        f"Subject: batch {i}\r\nMessage-ID: <batch.{i}@example.org>\r\n\r\nbody {i}\r\n"
    ).encode()


def test_directory_through_real_postfix_with_pipelining(tmp_path: Path, postfix: Any) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:03}.eml").write_bytes(ready(i))
    (folder / "broken.eml").write_bytes(b"this is not a message\r\n")
    postfix.clear()
    done = run_cli(
        [
            "send",
            "--host",
            "127.0.0.1",
            "--port",
            str(postfix.plain),
            "--batch",
            str(folder),
            "--json",
        ],
        tmp_path,
    )
    summary = json.loads(done.stdout)
    assert (summary["sent"], summary["failed"]) == (30, 1), done.stderr
    assert [m["state"] for m in summary["messages"] if m["message"] == "broken.eml"] == [
        "MessageError"
    ]
    assert done.returncode == 69  # a message could not be sent, and retrying will not help
    deadline = time.monotonic() + 15
    while len(postfix.capture_files("x@capture.test")) < 30:
        assert time.monotonic() < deadline, postfix.maillog()
        time.sleep(0.05)
    time.sleep(0.2)
    stored = [p.read_bytes() for p in postfix.capture_files("x@capture.test")]
    assert sorted(int(m.split(b"body ")[1].split(b"\r\n")[0]) for m in stored) == list(range(30))
    assert all(b"Bcc:" not in m for m in stored)
    assert len(postfix.capture_files("hidden@capture.test")) == 30  # Bcc kept in the envelope


def test_mbox_to_aiosmtpd_and_a_table(tmp_path: Path, aiosmtpd_server: AiosmtpdServer) -> None:
    box = mailbox.mbox(tmp_path / "spool.mbox")
    for i in range(5):
        box.add(ready(i, to=f"r{i}@example.org"))
    box.flush()
    box.close()
    done = run_cli(
        [
            "send",
            "--host",
            aiosmtpd_server.host,
            "--port",
            str(aiosmtpd_server.port),
            "--batch",
            str(tmp_path / "spool.mbox"),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "5 of 5 message(s) sent" in done.stdout
    received = aiosmtpd_server.wait_for(5)
    assert [m.rcpt_tos for m in received] == [
        [f"r{i}@example.org", "hidden@capture.test"] for i in range(5)
    ]


@pytest.mark.parametrize(
    "extra", [["--to", "a@example.org"], ["--direct"]], ids=["message-option", "direct"]
)
def test_batch_refuses_message_options(tmp_path: Path, extra: list[str]) -> None:
    done = run_cli(["send", "--host", "127.0.0.1", "--batch", str(tmp_path), *extra], tmp_path)
    assert done.returncode == 64
    assert "--batch" in done.stderr


def test_missing_batch_path_is_66(tmp_path: Path) -> None:
    done = run_cli(["send", "--host", "127.0.0.1", "--batch", str(tmp_path / "nope")], tmp_path)
    assert done.returncode == 66
