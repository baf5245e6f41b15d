"""Flags shared by the subcommands, and turning them (plus an account) into a Server.

Precedence, lowest first: the account (``--account NAME``, else the file's
``default`` — but the default account is only used when neither ``--server``
nor ``--host`` names another server, so its credentials never go to a host it
was not written for), then ``--server URL``, then the individual flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import subprocess
import sys
from typing import Any

from smtpsubmit.cli.config import Account, Config, check_not_writable_by_others, load_config
from smtpsubmit.cli.errors import CliError, ConfigError, UsageError
from smtpsubmit.server import TLS_MODES, Option, Server

__all__ = [
    "add_common_options",
    "add_connection_options",
    "build_server",
    "resolve_account",
]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Server) if f.name != "_"}
_PASSWORD_COMMAND_TIMEOUT = 60.0


def add_common_options(parser: argparse.ArgumentParser, *, json_help: str | None) -> None:
    group = parser.add_argument_group("general options")
    group.add_argument(
        "--config",
        metavar="PATH",
        help="account file (default: $XDG_CONFIG_HOME/smtpsubmit/config.toml, "
        "else ~/.config/smtpsubmit/config.toml)",
    )
    group.add_argument(
        "--account", metavar="NAME", help="use this [accounts.NAME] table of the account file"
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="print the SMTP transcript on stderr (passwords and AUTH data masked as ***)",
    )
    group.add_argument("--debug", action="store_true", help="show a traceback when something fails")
    if json_help:
        group.add_argument("--json", action="store_true", help=json_help)


def add_connection_options(parser: argparse.ArgumentParser, *, with_server: bool = True) -> None:
    conn = parser.add_argument_group("server")
    if with_server:
        conn.add_argument(
            "--server",
            metavar="URL",
            help="smtp://[user@]host[:port], smtps://... (implicit TLS) or smtp+starttls://... "
            "(port 587); query parameters as in Server.from_url. Never put the password here.",
        )
    conn.add_argument("--host", metavar="HOST", help="server host name or IP address")
    conn.add_argument(
        "--port",
        metavar="N",
        type=int,
        help="server port (default 25; 465 with --secure-implicit; 587 for smtp+starttls URLs)",
    )
    conn.add_argument("--user", "--username", dest="user", metavar="NAME", help="AUTH user name")
    conn.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password (or OAuth token) from environment variable VAR",
    )
    conn.add_argument(
        "--password-command",
        metavar="CMD",
        help="run CMD with the shell and use the first line it prints as the password "
        "(e.g. 'pass show mail/work')",
    )
    conn.add_argument("--timeout", metavar="SECONDS", type=float, help="per-reply timeout (20)")
    conn.add_argument(
        "--local-hostname", metavar="NAME", help="name sent with EHLO (default: this host's FQDN)"
    )
    conn.add_argument(
        "--proxy", metavar="URL", help="connect through socks5://, socks4:// or http:// proxy"
    )

    flags = parser.add_argument_group("connection options (Option flags)")
    flags.add_argument("--secure", action="store_true", help="require STARTTLS (Option.SECURE)")
    flags.add_argument(
        "--secure-implicit",
        action="store_true",
        help="TLS from the first byte, port 465 (Option.SECURE_IMPLICIT)",
    )
    flags.add_argument(
        "--secure-optional",
        action="store_true",
        help="STARTTLS when offered, plain otherwise - open to stripping (SECURE_OPTIONAL)",
    )
    flags.add_argument(
        "--trusted-site",
        action="store_true",
        help="do not verify the server certificate (Option.TRUSTEDSITE)",
    )
    flags.add_argument(
        "--tunnel",
        action="store_true",
        help="the path is a tunnel or port forward: infer nothing from the port (TUNNEL)",
    )
    flags.add_argument(
        "--extended", action="store_true", help="use EHLO and extensions (Option.EXTENDED)"
    )

    tls = parser.add_argument_group("TLS and authentication")
    tls.add_argument("--ca-file", metavar="PEM", help="trust the CA certificates in this file")
    tls.add_argument("--ca-path", metavar="DIR", help="trust the CA certificates in this directory")
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to verify in the certificate and send as SNI (default: the host)",
    )
    tls.add_argument("--client-cert", metavar="PEM", help="TLS client certificate")
    tls.add_argument("--client-key", metavar="PEM", help="key of the client certificate")
    tls.add_argument(
        "--auth-mechanism",
        metavar="NAME",
        action="append",
        help="allowed SASL mechanism, in order of preference (repeatable), e.g. SCRAM-SHA-256",
    )
    tls.add_argument(
        "--allow-plaintext-auth",
        action="store_true",
        help="allow PLAIN/LOGIN on a connection without TLS",
    )
    tls.add_argument(
        "--disable-extension",
        metavar="KEYWORD",
        action="append",
        help="never use this EHLO extension even when offered, e.g. CHUNKING (repeatable)",
    )


def resolve_account(args: argparse.Namespace, *, explicit_server: bool) -> Account | None:
    """The account to use: ``--account``, else the default one unless a server was named."""
    if args.account is None and explicit_server and args.config is None:
        return None  # the default file is not even read: nothing in it would be used
    config: Config = load_config(args.config)
    if args.account is None and explicit_server:
        return None
    return config.account(args.account)


def build_server(
    args: argparse.Namespace,
    account: Account | None,
    *,
    url: str | None = None,
    with_credentials: bool = True,
    extra_options: Option = Option.NONE,
) -> Server:
    """The Server the flags, the ``--server`` URL and the account describe together."""
    values: dict[str, Any] = {}
    if account is not None:
        if account.get("url"):
            values.update(_url_values(account.get("url"), where=f"account {account.name!r}: url"))
        values.update(
            {k: v for k, v in account.settings.items() if k in _DEFAULTS and k != "password"}
        )
    url = url if url is not None else getattr(args, "server", None)
    if url:
        values.update(_url_values(url))
    values.update(_flag_values(args))
    options = Option(values.get("options", Option.NONE))
    modes = [
        mode
        for flag, mode in (
            ("secure", Option.SECURE),
            ("secure_implicit", Option.SECURE_IMPLICIT),
            ("secure_optional", Option.SECURE_OPTIONAL),
        )
        if getattr(args, flag, False)
    ]
    if len(modes) > 1:
        raise UsageError("choose at most one of --secure, --secure-implicit, --secure-optional")
    if modes:
        options = (options & ~TLS_MODES) | modes[0]
    for flag, option in (
        ("trusted_site", Option.TRUSTEDSITE),
        ("tunnel", Option.TUNNEL),
        ("extended", Option.EXTENDED),
    ):
        if getattr(args, flag, False):
            options |= option
    values["options"] = options | extra_options
    if not values.get("host"):
        raise UsageError(
            "no server given",
            hint="use --server URL or --host HOST, or set up an account (see `--help`)",
        )
    if with_credentials and values.get("username"):
        values["password"] = _password(args, account, values)
    else:
        values.pop("username", None)
        values.pop("password", None)
    _check_files(values)
    try:
        return Server(**values)
    except ValueError as exc:
        if account is not None and not _any_server_flag(args):
            raise ConfigError(f"account {account.name!r}: {exc}") from None
        raise UsageError(f"bad server settings: {exc}") from None


def _url_values(url: str, *, where: str | None = None) -> dict[str, Any]:
    """The fields a URL sets; ``where`` names the account it comes from (else --server).

    The error repeats no part of the URL (from_url's text never does): it may
    hold a password.
    """
    error: CliError | None = None
    try:
        server = Server.from_url(url)
    except ValueError as exc:
        error = ConfigError(f"{where}: {exc}") if where else UsageError(f"--server: {exc}")
    if error is not None:
        raise error  # outside the except block: no __context__ carrying the URL
    if where is None and server.password is not None:
        raise UsageError(
            "the --server URL holds a password: other users can read command lines",
            hint="use --password-env VAR, --password-command CMD, an account, or the prompt",
        )
    values = {
        name: getattr(server, name)
        for name, default in _DEFAULTS.items()
        if getattr(server, name) != default
    }
    values["options"] = server.options
    return values


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    simple = {
        "host": "host",
        "port": "port",
        "user": "username",
        "timeout": "timeout",
        "local_hostname": "local_hostname",
        "proxy": "proxy",
        "ca_file": "ca_file",
        "ca_path": "ca_path",
        "tls_server_name": "tls_server_name",
        "client_cert": "client_cert",
        "client_key": "client_key",
    }
    for flag, name in simple.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[name] = value
    if getattr(args, "auth_mechanism", None):
        values["auth_mechanisms"] = tuple(args.auth_mechanism)
    if getattr(args, "disable_extension", None):
        values["disable_extensions"] = frozenset(args.disable_extension)
    if getattr(args, "allow_plaintext_auth", False):
        values["allow_plaintext_auth"] = True
    return values


def _any_server_flag(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "server", None)) or bool(_flag_values(args))


def _check_files(values: dict[str, Any]) -> None:
    """Missing CA or client-certificate files are missing input (66), said up front."""
    for key in ("ca_file", "ca_path", "client_cert", "client_key"):
        path = values.get(key)
        if path and not os.path.exists(path):
            from smtpsubmit.cli.errors import MissingInput

            flag = "--" + key.replace("_", "-")
            raise MissingInput(f"{flag} {path!r}: no such file or directory")


def _password(args: argparse.Namespace, account: Account | None, values: dict[str, Any]) -> str:
    """The password, from the flags, the account, or a no-echo prompt; never from argv."""
    if getattr(args, "password_env", None):
        return _from_env(args.password_env, "--password-env", UsageError)
    if getattr(args, "password_command", None):
        return _from_command(args.password_command, "--password-command", UsageError)
    if account is not None:
        where = f"account {account.name!r}"
        if account.get("password_env"):
            return _from_env(account.get("password_env"), f"{where}: password_env", ConfigError)
        if account.get("password_command"):
            what = f"{where}: password_command"
            check_not_writable_by_others(account.path, what)
            return _from_command(account.get("password_command"), what, ConfigError)
        if account.get("password") is not None:
            return str(account.get("password"))
    if values.get("password"):  # from the account's url
        return str(values["password"])
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"Password for {values['username']}@{values['host']}: ")
        except EOFError:
            raise UsageError("no password entered") from None
    raise UsageError(
        f"user {values['username']!r} needs a password and stdin is not a terminal",
        hint="use --password-env VAR, --password-command CMD, or the account's "
        "password_command / password_env",
    )


def _from_env(var: str, what: str, error: type[UsageError] | type[ConfigError]) -> str:
    value = os.environ.get(var)
    if value is None:
        raise error(f"{what}: environment variable {var} is not set")
    return value


def _from_command(command: str, what: str, error: type[UsageError] | type[ConfigError]) -> str:
    try:
        done = subprocess.run(  # noqa: S602 - the user's own command, run like msmtp's passwordeval
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=_PASSWORD_COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise error(f"{what}: the command did not finish within 60 s") from None
    except OSError as exc:
        raise error(f"{what}: cannot run the command: {exc.strerror}") from None
    if done.returncode != 0:
        raise error(f"{what}: the command failed with exit status {done.returncode}")
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise error(f"{what}: the command printed no password")
    return lines[0]


def server_for_account(name: str, config_path: str | None = None) -> Server:
    """The Server of ``[accounts.NAME]`` (``"default"``: the default account)."""
    config = load_config(config_path)
    if name == "default" and "default" not in config.accounts:
        account = config.account(None)  # the default account, if the file names one
    else:
        account = config.account(name)  # an unknown name is a ConfigError
    if account is None:
        raise ConfigError("no default account in the account file")
    return build_server(argparse.Namespace(), account)


def routes_from_accounts(config_path: str | None) -> dict[str, Server]:
    config = load_config(config_path)
    routes: dict[str, Server] = {}
    blank = argparse.Namespace()
    for name, account in config.accounts.items():
        routes[name] = build_server(blank, account)
    if config.default is not None:
        routes.setdefault("default", routes[config.default])
    return routes
