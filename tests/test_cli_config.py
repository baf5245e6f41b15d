"""Account files, flag precedence, password sources and the no-echo prompt."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

from tests.test_cli_send import cli_env, home, run_cli
from tests.test_cli_sendmail import plain_account, write_account

__all__ = ["home"]

SEND = ["send", "--from", "a@example.org", "--to", "b@example.org", "--text", "x"]


def tls_account(server: Any, ca_file: str, password_line: str) -> str:
    return (
        'default = "tls"\n'
        "[accounts.tls]\n"
        'host = "127.0.0.1"\n'
        f"port = {server.port}\n"
        'username = "alice"\n'
        'options = ["SECURE"]\n'
        f'ca_file = "{ca_file}"\n'
        f"{password_line}\n"
    )


def test_default_account_is_used(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port))
    result = run_cli(SEND, home)
    assert result.returncode == 0, result.stderr
    assert aiosmtpd_server.wait_for(1)[0].rcpt_tos == ["b@example.org"]


def test_account_from_is_the_default_sender(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port, "Ops <ops@example.org>"))
    result = run_cli(["send", "--to", "b@example.org", "--text", "x"], home)
    assert result.returncode == 0, result.stderr
    assert aiosmtpd_server.wait_for(1)[0].mail_from == "ops@example.org"


def test_flags_override_the_account(aiosmtpd_server: Any, home: Path, closed_port: int) -> None:
    write_account(home, plain_account(closed_port))
    result = run_cli([*SEND, "--account", "local", "--port", str(aiosmtpd_server.port)], home)
    assert result.returncode == 0, result.stderr
    assert len(aiosmtpd_server.wait_for(1)) == 1


def test_default_account_credentials_not_sent_to_another_host(
    aiosmtpd_server: Any, home: Path
) -> None:
    # The default account has credentials; naming another server must not use them
    # (aiosmtpd_server offers no AUTH, so using them would fail with 77).
    write_account(
        home,
        'default = "w"\n[accounts.w]\nhost = "smtp.example.invalid"\n'
        'username = "u"\npassword = "p"\n',
    )
    result = run_cli([*SEND, "--host", "127.0.0.1", "--port", str(aiosmtpd_server.port)], home)
    assert result.returncode == 0, result.stderr


def test_config_flag_and_url_key(aiosmtpd_server: Any, home: Path, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text(f'[accounts.u]\nurl = "smtp://127.0.0.1:{aiosmtpd_server.port}"\n')
    result = run_cli([*SEND, "--config", str(config), "--account", "u"], home)
    assert result.returncode == 0, result.stderr


def test_account_password_and_permissions_warning(
    aiosmtpd_starttls: Any, ca_file: str, home: Path
) -> None:
    body = tls_account(aiosmtpd_starttls, ca_file, f'password = "{aiosmtpd_starttls.password}"')
    write_account(home, body, mode=0o644)
    result = run_cli(SEND, home)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "chmod 600" in result.stderr
    assert aiosmtpd_starttls.password not in result.stderr
    write_account(home, body, mode=0o600)
    result = run_cli(SEND, home)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_account_password_command(aiosmtpd_starttls: Any, ca_file: str, home: Path) -> None:
    line = f"password_command = \"echo '{aiosmtpd_starttls.password}'\""
    write_account(home, tls_account(aiosmtpd_starttls, ca_file, line), mode=0o644)
    result = run_cli(SEND, home)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no password in the file: no warning
    assert aiosmtpd_starttls.wait_for(1)[0].auth_login == "alice"


def test_failing_password_command_is_78(aiosmtpd_starttls: Any, ca_file: str, home: Path) -> None:
    write_account(home, tls_account(aiosmtpd_starttls, ca_file, 'password_command = "exit 3"'))
    result = run_cli(SEND, home)
    assert result.returncode == 78, result.stderr
    assert "exit status 3" in result.stderr


def test_config_errors_are_78(home: Path, tmp_path: Path) -> None:
    write_account(home, '[accounts.a]\nhost = "h"\nprot = 25\n')
    result = run_cli([*SEND, "--account", "a"], home)
    assert result.returncode == 78 and "prot" in result.stderr
    write_account(home, '[accounts.a]\nhost = "h"\noptions = ["SECURE", "BOGUS"]\n')
    assert run_cli([*SEND, "--account", "a"], home).returncode == 78
    write_account(home, '[accounts.a]\nhost = "h"\n')
    result = run_cli([*SEND, "--account", "missing"], home)
    assert result.returncode == 78 and "no account 'missing'" in result.stderr
    result = run_cli([*SEND, "--config", str(tmp_path / "absent.toml"), "--host", "h"], home)
    assert result.returncode == 78


def test_password_prompt_on_a_terminal(aiosmtpd_starttls: Any, ca_file: str, home: Path) -> None:
    """Under a pseudo-terminal: the prompt appears, the typed password works, no echo."""
    master, slave = os.openpty()

    def controlling_tty() -> None:  # runs in the child after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    args = [
        *SEND, "--host", "127.0.0.1", "--port", str(aiosmtpd_starttls.port),
        "--secure", "--ca-file", ca_file, "--user", "alice",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpsubmit", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(home),
        start_new_session=True,
        preexec_fn=controlling_tty,  # noqa: PLW1509 - makes the pty the controlling terminal
    )
    os.close(slave)
    output = b""
    typed = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not typed and b"Password for alice@127.0.0.1:" in output:
                os.write(master, aiosmtpd_starttls.password.encode() + b"\n")
                typed = True
            if proc.poll() is not None and not ready:
                break
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        os.close(master)
    text = output.decode("utf-8", "replace")
    assert typed, text
    assert status == 0, text
    assert aiosmtpd_starttls.password not in text  # not echoed
    assert "sent " in text
    assert aiosmtpd_starttls.wait_for(1)[0].auth_login == "alice"
