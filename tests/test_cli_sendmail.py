"""``smtpsubmit sendmail``: the /usr/sbin/sendmail stand-in."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit.cli import sendmail
from smtpsubmit.cli.errors import UsageError
from smtpsubmit.errors import MessageError
from smtpsubmit.message import Message
from tests.servers.fakesmtp import Responder
from tests.test_cli_send import TIMEOUT, cli_env, home, parse, run_cli

__all__ = ["home"]  # the fixture, imported for use here


def write_account(home: Path, body: str, mode: int = 0o600) -> Path:
    path = home / ".config" / "smtpsubmit" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def plain_account(port: int, sender: str = "Cron Daemon <cron@example.org>") -> str:
    return (
        'default = "local"\n'
        "[accounts.local]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'from = "{sender}"\n'
    )


def test_t_with_bcc_delivers_and_strips_it(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port))
    message = (
        b"From: App <app@example.org>\n"
        b"To: Alice <alice@example.org>\n"
        b"Bcc: secret-archive@example.org,\n"
        b"  second-hidden@example.org\n"
        b"Subject: nightly report\n"
        b"\n"
        b"all good\n"
    )
    result = run_cli(["sendmail", "-t", "-i"], home, input=message)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet on success, like sendmail
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.rcpt_tos == [
        "alice@example.org",
        "secret-archive@example.org",
        "second-hidden@example.org",
    ]
    assert received.mail_from == "cron@example.org"  # the account's `from` beats From
    assert b"Bcc" not in received.original_content
    assert b"hidden" not in received.original_content
    msg = parse(received.original_content)
    assert msg["From"] == "App <app@example.org>"  # an existing From is kept
    assert msg["Date"] and msg["Message-ID"]  # added, as sendmail does
    assert msg.get_content().replace("\r\n", "\n") == "all good\n"


def test_php_like_pipe_with_account_file(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port, "Web <www@example.org>"))
    command = (
        "printf 'To: user@example.org\\nSubject: Password reset\\n\\nClick here.\\n' | "
        f"{shlex.quote(sys.executable)} -m smtpsubmit sendmail -t -i"
    )
    done = subprocess.run(  # a shell pipeline is what is tested
        command, shell=True, env=cli_env(home), capture_output=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.rcpt_tos == ["user@example.org"]
    assert received.mail_from == "www@example.org"
    msg = parse(received.original_content)
    assert msg["From"] == "Web <www@example.org>"  # composed from the account
    assert msg["Subject"] == "Password reset"
    assert msg["Message-ID"].endswith("@example.org>")


def test_ignored_options_f_and_F(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port))
    args = [
        "sendmail", "-odi", "-oem", "-bm", "-oi", "-om", "-v", "-N", "never", "-B", "8BITMIME",
        "-O", "DeliveryMode=b", "-f", "bounces@example.org", "-F", "Ada L\u00f6velace",
        "rcpt@example.org", "--", "-dash@example.org",
    ]  # fmt: skip
    result = run_cli(args, home, input=b"Subject: hi\n\nbody\n")
    assert result.returncode == 0, result.stderr
    (received,) = aiosmtpd_server.wait_for(1)
    assert received.mail_from == "bounces@example.org"
    assert received.rcpt_tos == ["rcpt@example.org", "-dash@example.org"]
    msg = parse(received.original_content)
    assert msg["From"].addresses[0].display_name == "Ada L\u00f6velace"
    assert msg["From"].addresses[0].addr_spec == "bounces@example.org"


def test_lone_dot_ends_message_without_i(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port))
    result = run_cli(
        ["sendmail", "x@example.org"], home, input=b"Subject: s\n\nkept\n.\nnot sent\n"
    )
    assert result.returncode == 0, result.stderr
    (received,) = aiosmtpd_server.wait_for(1)
    assert b"kept" in received.original_content
    assert b"not sent" not in received.original_content


def test_refusal_is_69(fake_smtp: Callable[..., Any], home: Path) -> None:
    fake = fake_smtp(Responder(replies={"RCPT": "550 5.1.1 no such user"}))
    write_account(home, plain_account(fake.port))
    result = run_cli(["sendmail", "nobody@example.org"], home, input=b"Subject: s\n\nx\n")
    assert result.returncode == 69, result.stderr
    assert "550 5.1.1 no such user" in result.stderr


def test_no_recipients_is_64_and_unknown_mode_is_64(home: Path) -> None:
    assert run_cli(["sendmail"], home, input=b"x").returncode == 64
    result = run_cli(["sendmail", "-bs"], home)
    assert result.returncode == 64
    assert "-bm" in result.stderr
    assert run_cli(["sendmail", "-Z", "a@example.org"], home).returncode == 64


def test_help(home: Path) -> None:
    result = run_cli(["sendmail", "--help"], home)
    assert result.returncode == 0
    assert "sendmail_path" in result.stdout
    assert "-oi" in result.stdout


# ---------------------------------------------------------------------------- in process


def _split(argv: list[str]) -> tuple[sendmail.SendmailOptions, list[str]]:
    return sendmail.split_argv(argv, sendmail.build_parser(argparse.ArgumentParser))


def test_split_argv_getopt_forms() -> None:
    opts, long_args = _split(
        ["-ti", "-fme@example.org", "-F", "Me", "--account", "work", "--verbose", "a@b.example"]
    )
    assert opts.read_recipients and opts.ignore_dots
    assert opts.sender == "me@example.org" and opts.full_name == "Me"
    assert long_args == ["--account", "work", "--verbose"]
    assert opts.recipients == ["a@b.example"]
    opts, _ = _split(["-f", "<>", "-o", "i", "-r", "x@example.org", "-q1h"])
    assert opts.sender == "x@example.org" and opts.ignore_dots and opts.queue_run
    with pytest.raises(UsageError):
        _split(["-f"])


def test_prepare_uses_resent_fields_and_keeps_body_bytes() -> None:
    raw = sendmail.read_message(
        b"From: a@example.org\r\nTo: old@example.org\r\nResent-To: new@example.org\r\n"
        b"Resent-Bcc: quiet@example.org\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n.leading dot\r\n",
        ignore_dots=True,
    )
    opts = sendmail.SendmailOptions(read_recipients=True)
    data, sender, rcpts = sendmail.prepare(raw, opts, None)
    assert rcpts == ["new@example.org", "quiet@example.org"]
    assert sender == "a@example.org"
    assert b"quiet" not in data
    assert data.endswith(b"\r\n\r\n.leading dot\r\n")


def test_F_with_a_line_break_is_refused_not_injected(aiosmtpd_server: Any, home: Path) -> None:
    write_account(home, plain_account(aiosmtpd_server.port))
    for name in ("Name\nBcc: x@example.org", "Name\rX: y", "Name\u2028X: y", "a\x1bb"):
        result = run_cli(["sendmail", "-F", name, "rcpt@example.org"], home, input=b"\nbody\n")
        assert result.returncode == 64, result.stderr
        assert "-F" in result.stderr
    assert aiosmtpd_server.handler.messages == []


def test_account_from_with_control_characters_is_a_config_error(
    aiosmtpd_server: Any, home: Path
) -> None:
    write_account(home, plain_account(aiosmtpd_server.port, "Cron\\nBcc: x@example.org <c@e.org>"))
    result = run_cli(["sendmail", "rcpt@example.org"], home, input=b"Subject: s\n\nbody\n")
    assert result.returncode == 78, result.stderr
    assert "from" in result.stderr
    assert aiosmtpd_server.handler.messages == []


def test_t_refuses_an_ambiguous_address_cve_2023_27043(aiosmtpd_server: Any, home: Path) -> None:
    """The lenient stdlib parser makes this two recipients on affected Pythons."""
    write_account(home, plain_account(aiosmtpd_server.port))
    message = b"From: a@example.org\nTo: alice@example.org <bob@evil.example>\n\nhi\n"
    result = run_cli(["sendmail", "-t"], home, input=message)
    assert result.returncode == 65, result.stderr
    assert "alice@example.org <bob@evil.example>" in result.stderr
    assert aiosmtpd_server.handler.messages == []


def test_prepare_uses_the_strict_parser_of_the_library() -> None:
    opts = sendmail.SendmailOptions(read_recipients=True)
    raw = b"From: a@example.org\r\nCc: Alice <alice@example.org> bob@evil.example\r\n\r\nx\r\n"
    with pytest.raises(MessageError, match="unambiguous"):
        sendmail.prepare(raw, opts, None)
    with pytest.raises(MessageError, match="unambiguous"):
        Message.from_bytes(raw)  # the same parser, the same answer
