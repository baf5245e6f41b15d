"""``smtpsubmit demo`` on a clean machine: no config, no network, exit 0."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli_send import home, run_cli

__all__ = ["home"]


def test_demo_in_clean_environment(home: Path) -> None:
    result = run_cli(["demo"], home)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "C: STARTTLS" in out
    assert "C: AUTH PLAIN ***" in out
    assert "235" in out  # authenticated
    assert "Bcc header present: no" in out
    for part in ("multipart/alternative", "text/plain", "text/html", "numbers.csv"):
        assert part in out
    assert "Traceback" not in result.stderr
    assert list(home.joinpath(".config").iterdir()) == []  # wrote no configuration


def test_demo_help(home: Path) -> None:
    result = run_cli(["demo", "--help"], home)
    assert result.returncode == 0
    assert "submit_message" in result.stdout
