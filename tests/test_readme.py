"""README.md's Python examples run against a real (aiosmtpd) server, as written.

The README's text is not edited to make it testable: ``smtpsubmit.Server`` is replaced, for
the duration of the test, by a function that first builds the ``Server`` exactly as the README
says (so its arguments are checked by the real constructor) and then points the result at the
test server (host, port, credentials, CA). Blocks run in order in one namespace, as a reader
would paste them; top-level ``await`` / ``async with`` is allowed. Names the README leaves to
the reader (``messages``, ``raw_bytes``) are provided.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import smtpsubmit
from smtpsubmit import Message, Server

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    """The text of the ``## title`` section of README.md (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match[1]


def python_blocks(title: str) -> list[str]:
    blocks = _FENCE.findall(section(title))
    assert blocks, f"README.md's {title!r} section has no ```python blocks"
    return blocks


def run_block(source: str, namespace: dict[str, Any], where: str) -> None:
    code = compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the block awaits
    if inspect.iscoroutine(result):
        asyncio.run(asyncio.wait_for(result, 30))


@pytest.fixture
def readme_server(
    aiosmtpd_starttls: Any, ca_file: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:
    """``smtpsubmit.Server`` redirected to the STARTTLS + AUTH aiosmtpd; cwd = a temp dir."""
    target = aiosmtpd_starttls

    def redirected(*args: Any, **kwargs: Any) -> Server:
        as_written = Server(*args, **kwargs)
        return dataclasses.replace(
            as_written,
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            ca_file=ca_file,
        )

    monkeypatch.setattr(smtpsubmit, "Server", redirected)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4\n% not really a report\n%%EOF\n")
    return target


def test_quickstart_runs_and_delivers(
    readme_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [
        Message(sender="me@example.org", to="you@example.org", subject=f"bulk {n}", text="hi")
        for n in range(2)
    ]
    raw_bytes = (
        b"From: me@example.org\r\nTo: you@example.org\r\nSubject: raw\r\n"
        b"Message-ID: <readme-raw@example.org>\r\n\r\nready-made\r\n"
    )
    namespace: dict[str, Any] = {"messages": messages, "raw_bytes": raw_bytes}
    blocks = python_blocks("Quickstart")
    for number, block in enumerate(blocks, 1):
        run_block(block, namespace, f"README.md Quickstart block {number}")

    received = readme_server.messages
    assert received, "the Quickstart sent nothing"
    first = received[0]
    assert first.auth_login == readme_server.username
    assert b"report.pdf" in first.original_content
    assert "submit_message" in blocks[0]
    result = namespace["result"]
    assert result.accepted == first.rcpt_tos
    assert result.message_id in capsys.readouterr().out
    if len(blocks) >= 3:  # the session and ready-message blocks of today's README
        assert len(received) == 1 + len(messages) + 1
        assert received[-1].original_content == raw_bytes


def test_transcript_snippet_logs_the_dialogue(
    readme_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("smtpsubmit.transcript")
    level = logger.level
    try:
        for number, block in enumerate(python_blocks("Transcript"), 1):
            run_block(block, {}, f"README.md Transcript block {number}")
        assert logger.isEnabledFor(logging.DEBUG)
        server = smtpsubmit.Server("smtp.example.org", "me", "pw", options=smtpsubmit.Option.SECURE)
        message = Message(sender="me@example.org", to="you@example.org", text="hi")
        with caplog.at_level(logging.DEBUG, logger="smtpsubmit.transcript"):
            smtpsubmit.submit_message(message, server)
    finally:
        logger.setLevel(level)
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpsubmit.transcript"]
    assert any(line.startswith("C: EHLO") for line in lines)
    assert any(line.startswith("S: 250") for line in lines)
    assert "C: AUTH PLAIN ***" in lines
    assert readme_server.password not in caplog.text
