"""How the command line reports failures: exit codes, the one-line message, secrets kept out.

Most cases run ``main()`` in process (fast); the sendmail case runs the installed entry
point, as cron would.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import smtpsubmit.errors as errors_module
from smtpsubmit.cli import main
from smtpsubmit.cli.errors import (
    ConfigError,
    MissingInput,
    UsageError,
    describe,
    exit_code,
)
from smtpsubmit.errors import (
    AuthError,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
    PoolTimeout,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    TlsError,
)
from smtpsubmit.reply import Reply
from tests.servers.fakesmtp import Responder
from tests.test_cli_send import home, run_cli
from tests.test_cli_sendmail import write_account

__all__ = ["home"]

SEND = ["send", "--from", "a@example.org", "--to", "b@example.org", "--text", "x"]


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli(args) -> (status, stderr)``: main() in this process, HOME and XDG in ``home``."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)

    def run(args: list[str]) -> tuple[int, str]:
        status = main(args)
        return status, capsys.readouterr().err

    return run


def unknown_host() -> ConnectError:
    exc = ConnectError("cannot resolve nonexistent.invalid", stage="connect")
    exc.unknown_host = True
    return exc


def replied(code: int) -> Reply:
    return Reply(code, "text")


# Every error class and reply kind the library raises, with the status the CLI gives it.
EXIT_CODES: list[tuple[BaseException, int]] = [
    (UsageError("bad flag"), 64),
    (ConfigError("bad file"), 78),
    (MissingInput("no file"), 66),
    (MessageError("bad address"), 65),
    (AuthError("535", reply=replied(535), stage="auth"), 77),
    (AuthError("454", reply=replied(454), stage="auth"), 75),
    (AuthError("no mechanism in common", stage="auth"), 77),
    (unknown_host(), 68),
    (ConnectError("connection refused", stage="connect"), 75),
    (ConnectError("greeting", reply=replied(554), stage="greeting"), 69),
    (ConnectError("greeting", reply=replied(421), stage="greeting"), 75),
    (SmtpTimeout("no reply", stage="data"), 75),
    (TlsError("verification failed", stage="starttls"), 69),
    (TlsError("lost in handshake", stage="starttls", is_temporary=True), 75),
    (TlsError("refused", reply=replied(454), stage="starttls"), 75),
    (TlsError("refused", reply=replied(554), stage="starttls"), 69),
    (SenderRefused("mail", reply=replied(550), stage="mail"), 69),
    (SenderRefused("mail", reply=replied(451), stage="mail"), 75),
    (RecipientsRefused("rcpt", refused={"a@x.test": replied(550)}), 69),
    (RecipientsRefused("rcpt", refused={"a@x.test": replied(452)}), 75),
    (RecipientsRefused("rcpt", refused={"a@x": replied(452), "b@x": replied(550)}), 69),
    (DataRefused("data", reply=replied(554), stage="data"), 69),
    (DataRefused("data", reply=replied(452), stage="data"), 75),
    (MessageTooLarge("SIZE 100 exceeded", stage="mail"), 69),
    (MessageTooLarge("too big", reply=replied(552), stage="data"), 69),
    (ServerDisconnected("closed", stage="rcpt"), 75),
    (ProtocolError("garbage", stage="mail"), 69),
    (ExtensionUnavailable("no SMTPUTF8", extension="SMTPUTF8", stage="mail"), 69),
    (DeliveryStatusUnknown("no answer to the dot", stage="data"), 75),
    (PoolTimeout("no pooled connection within 30 s"), 75),
    (SmtpError("generic"), 69),
    (SmtpError("generic", reply=replied(421)), 75),
    (RuntimeError("a bug"), 70),
]


@pytest.mark.parametrize(("exc", "code"), EXIT_CODES, ids=lambda v: repr(v)[:60])
def test_exit_code_table(exc: BaseException, code: int) -> None:
    assert exit_code(exc) == code


def test_exit_code_table_covers_every_error_class() -> None:
    classes = {
        obj
        for obj in vars(errors_module).values()
        if inspect.isclass(obj) and issubclass(obj, SmtpError | MessageError)
    }
    assert classes <= {type(exc) for exc, _ in EXIT_CODES}


# -- failures that carry no reply are permanent: 69 --------------------------------------


@pytest.mark.parametrize(
    ("responder", "extra", "expected"),
    [
        # A reply that is not SMTP.
        (Responder(replies={"MAIL": "hello there"}), [], "hello there"),
        # A UTF-8 address and no SMTPUTF8 on offer.
        (Responder(capabilities=("8BITMIME",)), ["--cc", "jörg@example.org"], "SMTPUTF8"),
        # Bigger than the advertised SIZE.
        (Responder(capabilities=("SIZE 100",)), ["--text", "x" * 500], "SIZE"),
    ],
)
def test_permanent_failures_without_a_reply_exit_69(
    cli: Any, fake_smtp: Callable[..., Any], responder: Responder, extra: list[str], expected: str
) -> None:
    fake = fake_smtp(responder, check=False)  # the client leaves mid-transaction
    args = [*SEND, "--host", "127.0.0.1", "--port", str(fake.port), "--extended", *extra]
    status, err = cli(args)
    assert status == 69, err
    assert fake.data == []
    assert expected in err


# -- the documented form: what failed [at stage]; hint: ... -----------------------------


def test_tls_verification_error_has_stage_and_a_flag_hint(cli: Any, aiosmtpd_starttls: Any) -> None:
    status, err = cli([*SEND, "--host", "127.0.0.1", "--port", str(aiosmtpd_starttls.port),
                       "--secure", "--timeout", "5"])  # fmt: skip
    assert status == 69, err
    assert "[at starttls]; hint:" in err
    assert "--ca-file PEM" in err.split("hint:")[1] and "--trusted-site" in err


def test_starttls_required_but_not_offered(cli: Any, fake_smtp: Callable[..., Any]) -> None:
    fake = fake_smtp(Responder(capabilities=("PIPELINING",)))
    status, err = cli([*SEND, "--host", "127.0.0.1", "--port", str(fake.port), "--secure"])
    assert status == 69, err
    assert "does not offer" in err and "[at starttls]; hint:" in err
    assert "--secure-implicit" in err.split("hint:")[1]


def test_starttls_refused_has_a_hint() -> None:
    text = describe(TlsError("the server refused STARTTLS", reply=replied(454), stage="starttls"))
    assert text.endswith("[at starttls]; hint: try again later")


def test_message_error_hint_fits_the_command() -> None:
    exc = MessageError("no recipient addresses found in the message's To, Cc or Bcc fields")
    assert "message options" in describe(exc, "smtpsubmit send")
    sendmail = describe(exc, "smtpsubmit sendmail")
    assert "message options" not in sendmail and "standard input" in sendmail


def test_sendmail_t_without_recipients(home: Path, closed_port: int) -> None:
    write_account(home, f'default = "a"\n[accounts.a]\nhost = "127.0.0.1"\nport = {closed_port}\n')
    result = run_cli(["sendmail", "-t"], home, input=b"Subject: none\n\nbody\n")
    assert result.returncode == 65, result.stderr
    assert "options" not in result.stderr and "standard input" in result.stderr


# -- URLs that may hold a password ------------------------------------------------------


@pytest.mark.parametrize("delimiter", ["/", "?", "#"])
def test_server_url_error_never_shows_the_password(cli: Any, delimiter: str) -> None:
    url = f"smtp://me:Zq{delimiter}s3cret-Xy@127.0.0.1:25"
    status, err = cli([*SEND, "--server", url])
    assert status == 64, err
    assert "s3cret" not in err and "Zq" not in err and "Xy" not in err
    assert "--server:" in err and "%2F" in err


def test_account_url_error_is_78_and_names_the_account(cli: Any, home: Path) -> None:
    write_account(home, '[accounts.work]\nurl = "smtp://me:Zq/s3cret@127.0.0.1"\n')
    status, err = cli([*SEND, "--account", "work"])
    assert status == 78, err
    assert "account 'work': url:" in err and "--server" not in err
    assert "s3cret" not in err and "Zq" not in err


# -- one bad account table does not take the others down ---------------------------------


def test_malformed_account_table_leaves_the_others_usable(
    cli: Any, home: Path, aiosmtpd_server: Any
) -> None:
    write_account(
        home,
        '[accounts.broken]\nhost = "h"\nprot = 25\n'
        '[accounts.wrongtype]\nport = "25"\n'
        f'[accounts.good]\nhost = "127.0.0.1"\nport = {aiosmtpd_server.port}\n',
    )
    status, err = cli([*SEND, "--account", "good"])
    assert status == 0, err
    assert len(aiosmtpd_server.wait_for(1)) == 1
    assert "[accounts.broken]: unknown key(s) prot" in err and "'broken' skipped" in err
    assert "[accounts.wrongtype]: port must be an integer" in err
    status, err = cli([*SEND, "--account", "broken"])
    assert status == 78 and "[accounts.broken]: unknown key(s) prot" in err
    assert "wrongtype" not in err


def test_malformed_default_account_is_reported(cli: Any, home: Path) -> None:
    write_account(home, 'default = "w"\n[accounts.w]\nhost = 25\n')
    status, err = cli(SEND)
    assert status == 78 and "[accounts.w]: host must be a string" in err


# -- password_command from a file others can write --------------------------------------


def command_account(home: Path, port: int, *, mode: int, marker: Path) -> Path:
    body = (
        'default = "w"\n[accounts.w]\nhost = "127.0.0.1"\n'
        f'port = {port}\nusername = "u"\npassword_command = "touch {marker}; echo pw"\n'
    )
    return write_account(home, body, mode=mode)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666], ids=oct)
def test_password_command_in_a_writable_file_is_refused(
    cli: Any, home: Path, closed_port: int, tmp_path: Path, mode: int
) -> None:
    marker = tmp_path / "ran"
    path = command_account(home, closed_port, mode=mode, marker=marker)
    status, err = cli(SEND)
    assert status == 78, err
    assert str(path) in err and "writable by group or others" in err
    assert not marker.exists()  # the command never ran


def test_password_command_in_a_world_writable_directory_is_refused(
    cli: Any, home: Path, closed_port: int, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = command_account(home, closed_port, mode=0o600, marker=marker)
    path.parent.chmod(0o777)
    status, err = cli(SEND)
    assert status == 78, err
    assert "directory of" in err and str(path) in err
    assert not marker.exists()
    # A sticky directory (like /tmp) lets no one else replace the file: allowed.
    path.parent.chmod(0o1777)
    status, err = cli(SEND)
    assert marker.exists()
    assert status == 75, err  # past the check, on to the (closed) port
    # The usual modes: 600 or 644 in a 755 or 775 (user-private group) directory.
    for directory_mode, file_mode in ((0o755, 0o644), (0o775, 0o600)):
        marker.unlink()
        path.parent.chmod(directory_mode)
        path.chmod(file_mode)
        status, err = cli(SEND)
        assert marker.exists() and status == 75, err


def test_password_command_on_the_command_line_is_not_checked(
    cli: Any, home: Path, closed_port: int, tmp_path: Path
) -> None:
    write_account(home, f'[accounts.w]\nhost = "127.0.0.1"\nport = {closed_port}\n', mode=0o666)
    status, err = cli([*SEND, "--account", "w", "--user", "u", "--password-command", "echo pw"])
    assert status == 75, err  # the command's own flag: nothing in a file to distrust
