"""Account files: TOML, one ``[accounts.NAME]`` table per server.

::

    default = "work"

    [accounts.work]
    host = "smtp.example.org"
    port = 587
    username = "me@example.org"
    options = ["SECURE"]
    password_command = "pass show mail/work"
    from = "Me <me@example.org>"

Keys are the :class:`~smtpsubmit.Server` field names plus ``url`` (a
``smtp://`` URL, the other keys override it), ``password_command``,
``password_env`` and ``from`` (the default sender). Unknown keys are an
error, so a typo cannot silently drop a setting — for that account only: a
malformed table is reported (a warning, and exit 78 when it is used) while
the other accounts keep working.

``password_command`` runs a shell command, so it is refused from a file that
others could change (see :func:`check_not_writable_by_others`), as ssh
refuses such a config file.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smtpsubmit.cli.errors import ConfigError
from smtpsubmit.server import Server

__all__ = ["Account", "Config", "default_config_path", "load_config"]

SERVER_KEYS = frozenset(f.name for f in fields(Server) if f.name not in ("_", "dkim"))
EXTRA_KEYS = frozenset(
    {"url", "password_command", "password_env", "from", "dkim_key", "dkim_selector", "dkim_domain"}
)
PATH_KEYS = ("ca_file", "ca_path", "client_cert", "client_key")
_STR_KEYS = frozenset(
    {
        "host",
        "username",
        "password",
        "local_hostname",
        "tls_server_name",
        "proxy",
        "url",
        "password_command",
        "password_env",
        "from",
        "dkim_key",
        "dkim_selector",
        "dkim_domain",
        *PATH_KEYS,
    }
)
_LIST_KEYS = frozenset({"options", "auth_mechanisms", "disable_extensions"})


@dataclass(frozen=True)
class Account:
    """One ``[accounts.NAME]`` table, checked."""

    name: str
    settings: dict[str, Any]
    path: Path

    def get(self, key: str) -> Any:
        return self.settings.get(key)


@dataclass(frozen=True)
class Config:
    path: Path | None
    default: str | None = None
    accounts: dict[str, Account] = field(default_factory=dict)
    broken: dict[str, ConfigError] = field(default_factory=dict)

    def account(self, name: str | None) -> Account | None:
        """``name``, else the default account, else None; an unknown or broken name is an error."""
        if name is None:
            name = self.default
            if name is None:
                return None
        if name in self.broken:
            raise self.broken[name]
        for other, error in self.broken.items():
            _warn(f"{error} (account {other!r} skipped)")
        if name not in self.accounts:
            where = str(self.path) if self.path else "no config file"
            known = ", ".join(sorted(self.accounts)) or "none"
            raise ConfigError(
                f"no account {name!r} in {where} (accounts: {known})",
                hint="add an [accounts.NAME] table or pick another --account",
            )
        return self.accounts[name]


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "smtpsubmit" / "config.toml"


def load_config(explicit: str | None) -> Config:
    """Read ``explicit`` (which must exist) or the default path (which may not)."""
    path = Path(explicit).expanduser() if explicit else default_config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {str(path)!r} not found") from None
        return Config(None)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Config:
    unknown = set(data) - {"default", "accounts"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}",
            hint='the file holds `default = "NAME"` and [accounts.NAME] tables',
        )
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{path}: `default` must be a string (an account name)")
    tables = data.get("accounts", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: `accounts` must be a table of [accounts.NAME] tables")
    accounts: dict[str, Account] = {}
    broken: dict[str, ConfigError] = {}
    has_password = False
    for name, table in tables.items():
        try:
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [accounts.{name}] must be a table")
            accounts[name] = Account(name, _check_account(name, table, path), path)
        except ConfigError as exc:
            broken[name] = exc  # an error when used; the other accounts still work
            continue
        has_password = has_password or "password" in table or _url_has_password(table)
    if default is not None and default not in accounts and default not in broken:
        raise ConfigError(f"{path}: default account {default!r} is not defined")
    if has_password:
        _warn_if_exposed(path)
    return Config(path, default, accounts, broken)


def _check_account(name: str, table: dict[str, Any], path: Path) -> dict[str, Any]:
    where = f"{path}: [accounts.{name}]"
    unknown = set(table) - SERVER_KEYS - EXTRA_KEYS
    if unknown:
        known = ", ".join(sorted(SERVER_KEYS | EXTRA_KEYS))
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}", hint=f"known keys: {known}"
        )
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key in _STR_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string")
            settings[key] = os.path.expanduser(value) if key in PATH_KEYS else value
        elif key == "port":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: port must be an integer")
            settings[key] = value
        elif key == "timeout":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: timeout must be a number of seconds")
            settings[key] = float(value)
        elif key == "allow_plaintext_auth":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: allow_plaintext_auth must be true or false")
            settings[key] = value
        elif key in _LIST_KEYS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{where}: {key} must be a list of strings")
            settings[key] = list(items)
    if "options" in settings:
        from smtpsubmit.server import Option

        try:
            settings["options"] = Option.parse(",".join(settings["options"]))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return settings


def _url_has_password(table: dict[str, Any]) -> bool:
    url = table.get("url")
    if not isinstance(url, str):
        return False
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def _warn(text: str) -> None:
    print(f"smtpsubmit: warning: {text}", file=sys.stderr)


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _warn(
            f"{path} holds a password and is readable by group or others (mode "
            f"{stat.filemode(mode)}); run `chmod 600 {path}` or use password_command / "
            "password_env"
        )


def check_not_writable_by_others(path: Path, what: str) -> None:
    """Refuse to take a command from a file that another user could have written.

    As ssh does for its config: the file must belong to this user (or root)
    and be writable by no one else. Its directory must not let others replace
    it: owned by this user or root, and not world-writable unless sticky
    (a group-writable directory is allowed, for user-private-group setups).
    """
    me = os.getuid()
    try:
        info = path.stat()
        parent = path.resolve().parent.stat()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot check {path}: {exc.strerror}") from None
    problem = None
    if info.st_uid not in (me, 0):
        problem = f"{path} belongs to another user"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"{path} is writable by group or others (mode {stat.filemode(info.st_mode)})"
    elif parent.st_uid not in (me, 0):
        problem = f"the directory of {path} belongs to another user"
    elif parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        problem = f"the directory of {path} is writable by everyone"
    if problem:
        raise ConfigError(
            f"{what}: refused: {problem}, so another user could choose the command",
            hint=f"run `chmod go-w {path}` (and its directory), or use password_env",
        )
