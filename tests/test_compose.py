"""Composed messages render once: size, as_bytes and sending reuse one render."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import mime
from smtpsubmit.compose import Composed
from smtpsubmit.message import Attachment, Message


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Counts MIME trees built and os.stat calls on attachment files."""
    counts: dict[str, Any] = {"render": 0, "stat": [], "files": set()}
    real_tree, real_stat = Composed._make_tree, os.stat

    def make_tree(*args: Any, **kwargs: Any) -> mime.Leaf | mime.Multipart:
        counts["render"] += 1
        return real_tree(*args, **kwargs)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) in counts["files"]:
            counts["stat"].append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Composed, "_make_tree", make_tree)
    monkeypatch.setattr(os, "stat", stat)
    return counts


def test_size_and_bytes_reuse_one_render_and_stat_each_file_once(
    counted: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "report.csv"
    path.write_bytes(b"a,b\r\n" * 1000)
    message = Message(
        sender="a@example.org",
        to="b@example.org",
        text="hello",
        html="<p>hello</p>",
        attachments=[str(path), Attachment(data=b"\x00" * 100, filename="x.bin")],
    )
    counted["files"].add(str(path))
    counted["stat"].clear()
    sizes = [message.size for _ in range(3)]
    raw = message.as_bytes()
    assert sizes == [len(raw)] * 3
    assert counted["render"] == 1  # the MIME tree was built once
    assert counted["stat"] == [str(path)] * 4  # one os.stat per render, never more


def test_a_changed_file_is_rendered_again(counted: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 57)
    message = Message(sender="a@example.org", to="b@example.org", attachments=str(path))
    before = message.size
    path.write_bytes(b"x" * 570)
    after = message.size
    assert after - before == mime.base64_size(570) - mime.base64_size(57)
    assert len(message.as_bytes()) == after
