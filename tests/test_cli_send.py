"""``smtpsubmit send`` end to end (subprocess) and its exit codes; shared CLI test helpers."""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.servers.fakesmtp import Responder

TIMEOUT = 60


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: HOME and XDG dirs in ``home``, no inherited SMTP settings."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "200",
    }
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    home: Path,
    *,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "smtpsubmit", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=env or cli_env(home),
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def parse(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    (path / ".config").mkdir(parents=True)
    return path


def test_send_text_html_attachment_arrives_intact(
    aiosmtpd_server: Any, home: Path, tmp_path: Path
) -> None:
    attachment = tmp_path / "data.bin"
    payload = bytes(range(256)) * 40
    attachment.write_bytes(payload)
    html = tmp_path / "body.html"
    html.write_text("<p>Gr\u00fc\u00dfe <b>bold</b></p>\n", encoding="utf-8")
    result = run_cli(
        [
            "send",
            "--host", "127.0.0.1", "--port", str(aiosmtpd_server.port),
            "--from", "Sender <sender@example.org>",
            "--to", "to1@example.org, to2@example.org",
            "--cc", "cc@example.org",
            "--bcc", "hidden@example.org",
            "--subject", "Caf\u00e9 report",
            "--text", "Hello,\nthis is the text part.\n",
            "--html-file", str(html),
            "--attach", str(attachment),
            "--header", "X-Tracking: 42",
            "--json",
        ],
        home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["reply"]["code"] == 250
    assert sorted(outcome["accepted"]) == sorted(
        ["to1@example.org", "to2@example.org", "cc@example.org", "hidden@example.org"]
    )
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.mail_from == "sender@example.org"
    assert sorted(received.rcpt_tos) == sorted(outcome["accepted"])
    assert b"hidden@example.org" not in received.original_content
    msg = parse(received.original_content)
    assert msg["Subject"] == "Caf\u00e9 report"
    assert msg["X-Tracking"] == "42"
    assert msg["Message-ID"].strip("<>") == outcome["message_id"]
    assert "Bcc" not in msg
    text = msg.get_body(("plain",))
    assert text.get_content().replace("\r\n", "\n") == "Hello,\nthis is the text part.\n"
    assert "Gr\u00fc\u00dfe" in msg.get_body(("html",)).get_content()
    (attached,) = list(msg.iter_attachments())
    assert attached.get_filename() == "data.bin"
    assert attached.get_content() == payload


def test_send_starttls_auth_with_password_env_and_verbose(
    aiosmtpd_starttls: Any, ca_file: str, home: Path
) -> None:
    result = run_cli(
        [
            "send", "--host", "127.0.0.1", "--port", str(aiosmtpd_starttls.port),
            "--secure", "--ca-file", ca_file, "--user", "alice", "--password-env", "SMTP_PW",
            "--from", "alice@example.org", "--to", "bob@example.org",
            "--subject", "hi", "--text", "hi", "--verbose",
        ],
        home,
        env=cli_env(home, SMTP_PW=aiosmtpd_starttls.password),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent ")
    assert "C: STARTTLS" in result.stderr
    assert "C: AUTH PLAIN ***" in result.stderr
    assert aiosmtpd_starttls.password not in result.stderr + result.stdout
    (received,) = aiosmtpd_starttls.wait_for(1)
    assert received.auth_login == "alice"


def test_send_help_has_examples(home: Path) -> None:
    result = run_cli(["send", "--help"], home)
    assert result.returncode == 0
    for flag in ("--password-env", "--ca-file", "--disable-extension", "--attach", "--dsn"):
        assert flag in result.stdout
    assert "examples:" in result.stdout
    assert "exit status" in result.stdout


# ---------------------------------------------------------------------------- exit codes


def _send_args(port: int, *extra: str) -> list[str]:
    return [
        "send", "--host", "127.0.0.1", "--port", str(port), "--timeout", "5",
        "--from", "a@example.org", "--to", "b@example.org", "--text", "x", *extra,
    ]  # fmt: skip


def test_exit_64_unknown_flag(home: Path) -> None:
    result = run_cli(["send", "--no-such-flag"], home)
    assert result.returncode == 64
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_exit_64_password_in_url(home: Path, closed_port: int) -> None:
    result = run_cli(
        ["send", "--server", f"smtp://u:secret@127.0.0.1:{closed_port}",
         "--from", "a@example.org", "--to", "b@example.org", "--text", "x"],
        home,
    )  # fmt: skip
    assert result.returncode == 64
    assert "secret" not in result.stderr
    assert "--password-env" in result.stderr


def test_exit_65_bad_address(home: Path, closed_port: int) -> None:
    result = run_cli(_send_args(closed_port, "--cc", "not an address"), home)
    assert result.returncode == 65, result.stderr
    assert "not an address" in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_exit_66_missing_attachment(home: Path, closed_port: int, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pdf"
    result = run_cli(_send_args(closed_port, "--attach", str(missing)), home)
    assert result.returncode == 66, result.stderr
    assert "nope.pdf" in result.stderr


def test_exit_68_unknown_host(home: Path) -> None:
    result = run_cli(
        ["send", "--host", "nonexistent.invalid", "--timeout", "5",
         "--from", "a@example.org", "--to", "b@example.org", "--text", "x"],
        home,
    )  # fmt: skip
    assert result.returncode == 68, result.stderr
    assert "nonexistent.invalid" in result.stderr


def test_exit_69_permanent_refusal(home: Path, fake_smtp: Callable[..., Any]) -> None:
    fake = fake_smtp(Responder(replies={"MAIL": "550 5.7.1 sender not allowed here"}))
    result = run_cli(_send_args(fake.port), home)
    assert result.returncode == 69, result.stderr
    assert "550 5.7.1 sender not allowed here" in result.stderr
    assert result.stderr.count("\n") == 1


def test_exit_75_temporary_refusal(home: Path, fake_smtp: Callable[..., Any]) -> None:
    fake = fake_smtp(Responder(replies={"RCPT": "451 4.3.0 try again later"}))
    result = run_cli(_send_args(fake.port), home)
    assert result.returncode == 75, result.stderr
    assert "451 4.3.0 try again later" in result.stderr


def test_exit_75_connection_refused(home: Path, closed_port: int) -> None:
    result = run_cli(_send_args(closed_port), home)
    assert result.returncode == 75, result.stderr
    assert "refused" in result.stderr
    assert "hint:" in result.stderr


def test_exit_77_bad_password(aiosmtpd_starttls: Any, ca_file: str, home: Path) -> None:
    result = run_cli(
        _send_args(aiosmtpd_starttls.port, "--secure", "--ca-file", ca_file,
                   "--user", "alice", "--password-env", "PW"),
        home,
        env=cli_env(home, PW="wrong-password"),
    )  # fmt: skip
    assert result.returncode == 77, result.stderr
    assert "535" in result.stderr
    assert "wrong-password" not in result.stderr
    assert aiosmtpd_starttls.messages == []


def test_exit_78_broken_config(home: Path, tmp_path: Path, closed_port: int) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[accounts.work\nhost = 'x'\n")
    result = run_cli(
        ["send", "--config", str(config), "--account", "work",
         "--from", "a@example.org", "--to", "b@example.org", "--text", "x"],
        home,
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert "not valid TOML" in result.stderr


def test_debug_shows_traceback(home: Path, closed_port: int) -> None:
    result = run_cli([*_send_args(closed_port), "--debug"], home)
    assert result.returncode == 75
    assert "Traceback" in result.stderr


def test_tls_failure_is_69(aiosmtpd_starttls: Any, home: Path) -> None:
    # No --ca-file: the fixture's certificate is not trusted by the system store.
    result = run_cli(_send_args(aiosmtpd_starttls.port, "--secure"), home)
    assert result.returncode == 69, result.stderr
    assert "verif" in result.stderr


@pytest.mark.postfix
def test_send_through_postfix_submission(postfix: Any, home: Path) -> None:
    postfix.clear()
    result = run_cli(
        [
            "send", "--host", "127.0.0.1", "--port", str(postfix.submission), "--secure",
            "--ca-file", str(postfix.ca_file), "--user", "alice@example.test",
            "--password-env", "PW", "--auth-mechanism", "SCRAM-SHA-256",
            "--from", "alice@example.test", "--to", "bob@example.test",
            "--subject", "via postfix", "--text", "hello postfix", "--json",
        ],
        home,
        env=cli_env(home, PW=postfix.users["alice@example.test"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == ["bob@example.test"]
    (raw,) = postfix.wait_for_maildir("bob")
    assert parse(raw)["Subject"] == "via postfix"


@pytest.mark.postfix
def test_bad_password_postfix_is_77(postfix: Any, home: Path) -> None:
    result = run_cli(
        [
            "send", "--host", "127.0.0.1", "--port", str(postfix.submission), "--secure",
            "--ca-file", str(postfix.ca_file), "--user", "alice@example.test",
            "--password-env", "PW", "--from", "alice@example.test", "--to", "bob@example.test",
            "--text", "x",
        ],
        home,
        env=cli_env(home, PW="not-the-password"),
    )  # fmt: skip
    assert result.returncode == 77, result.stderr
    assert "not-the-password" not in result.stderr


def test_import_smtpsubmit_needs_no_cli_extra() -> None:
    code = (
        "import sys, smtpsubmit, smtpsubmit.cli\n"
        "heavy = [m for m in ('rich', 'aiosmtpd', 'trustme') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


def test_progress_bar_for_large_messages() -> None:
    from smtpsubmit.cli.output import ProgressBar
    from smtpsubmit.result import Progress

    bar = ProgressBar(enabled=True)
    bar(Progress("data", 100, 1000))  # small: no bar
    assert bar._bar is None
    total = 3 * 1024 * 1024
    bar(Progress("data", total // 2, total))
    assert bar._bar is not None
    bar(Progress("done", total, total))
    assert bar._bar is None


def test_installed_as_sendmail_symlink(aiosmtpd_server: Any, home: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "smtpsubmit"
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(script)
    config = tmp_path / "c.toml"
    config.write_text(f'[accounts.a]\nhost = "127.0.0.1"\nport = {aiosmtpd_server.port}\n')
    done = subprocess.run(
        [str(link), "--config", str(config), "--account", "a", "-oi", "x@example.org"],
        input=b"From: me@example.org\nSubject: s\n\nbody\n",
        env=cli_env(home),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert aiosmtpd_server.wait_for(1)[0].rcpt_tos == ["x@example.org"]
