"""Where and how to connect: :class:`Server` and its :class:`Option` flags.

This is the SMTPSERVER structure of the classic component, kept field for
field (host, user name, password, port, timeout, option flags) with the
automatic rules that made it pleasant: port 0 means "the right default",
credentials switch ESMTP on, and so on. Every rule is applied once, here, in
the ``effective_*`` properties, and every bad value fails at construction.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from smtpsubmit.dkim import DkimSigner

__all__ = ["Option", "Server"]

DEFAULT_TIMEOUT = 20.0
_PROXY_SCHEMES = ("socks5", "socks5h", "socks4", "socks4a", "http")


class Option(enum.IntFlag):
    """The option flags of the SMTPSERVER structure (see docs/server.md)."""

    NONE = 0
    EXTENDED = 1
    TUNNEL = 2
    TRUSTEDSITE = 4
    SECURE = 8
    SECURE_IMPLICIT = 16
    SECURE_OPTIONAL = 32

    @classmethod
    def parse(cls, text: str) -> Option:
        """Parse ``"SECURE,TRUSTEDSITE"`` or ``"SECURE|EXTENDED"`` (case-insensitive)."""
        result = cls.NONE
        for name in text.replace("|", ",").split(","):
            name = name.strip().upper().replace("-", "_")
            if not name:
                continue
            try:
                result |= cls[name]
            except KeyError:
                known = ", ".join(m.name for m in cls if m.name)
                raise ValueError(f"unknown option {name!r}; known options: {known}") from None
        return result

    def names(self) -> list[str]:
        """The flag names set, in declaration order."""
        return [m.name for m in type(self) if m and m in self and m.name]


# The TLS modes, at most one per Server: the one definition, used wherever code asks
# "is a TLS mode set" or replaces one (the CLI's --secure* flags, probe).
TLS_MODES = Option.SECURE | Option.SECURE_IMPLICIT | Option.SECURE_OPTIONAL

# URL scheme -> the TLS mode it stands for, and the port it implies when the URL has none
# (0: the Server default, which is 465 with SECURE_IMPLICIT and 25 otherwise).
_SCHEMES: dict[str, tuple[Option, int]] = {
    "smtp": (Option.NONE, 0),
    "smtps": (Option.SECURE_IMPLICIT, 0),
    "smtp+starttls": (Option.SECURE, 587),
}

Password = str | Callable[[], str] | None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_loopback_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return (mapped or ip).is_loopback


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _check_text(name: str, value: str | None) -> None:
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{name} must not contain control characters (CR, LF, NUL, ...)")


@dataclass(frozen=True, repr=False)
class Server:
    """An SMTP server to submit to, and how.

    Positional fields follow the SMTPSERVER structure; everything else is
    keyword-only. ``password`` may be a zero-argument callable returning the
    secret (for example an OAuth2 token provider); it is called on every
    authentication and never shown in ``repr``.
    """

    host: str
    username: str | None = None
    password: Password = None
    port: int = 0
    timeout: float = 0
    options: Option = Option.NONE
    _: KW_ONLY
    local_hostname: str | None = None
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    proxy: str | None = None
    auth_mechanisms: tuple[str, ...] | None = None
    allow_plaintext_auth: bool = False
    disable_extensions: frozenset[str] = frozenset()
    dkim: DkimSigner | tuple[DkimSigner, ...] | None = None  # signs every message sent

    def __post_init__(self) -> None:
        if self.dkim is not None:
            from smtpsubmit.dkim import as_signers

            signers = as_signers(self.dkim)
            object.__setattr__(self, "dkim", signers[0] if len(signers) == 1 else tuple(signers))
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError("Server.host must be a non-empty host name or IP address")
        _check_text("host", self.host)
        if " " in self.host.strip():
            raise ValueError("Server.host must not contain spaces")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("Server.port must be an integer")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"Server.port must be between 0 and 65535, not {self.port}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
            raise ValueError("Server.timeout must be a number of seconds")
        if self.timeout < 0:
            raise ValueError("Server.timeout must not be negative (0 means the default, 20 s)")
        object.__setattr__(self, "options", Option(self.options))
        if bin(int(self.options & TLS_MODES)).count("1") > 1:
            raise ValueError("choose at most one of SECURE, SECURE_IMPLICIT and SECURE_OPTIONAL")
        for name in ("username", "local_hostname", "tls_server_name", "proxy"):
            _check_text(name, getattr(self, name))
        if isinstance(self.password, str):
            _check_text("password", self.password)
        elif self.password is not None and not callable(self.password):
            raise ValueError("Server.password must be a string or a zero-argument callable")
        if self.local_hostname is not None and not self.local_hostname.strip():
            raise ValueError("Server.local_hostname must not be empty")
        self._check_proxy()
        self._normalise_collections()
        if (
            Option.TUNNEL in self.options
            and self.options & TLS_MODES
            and Option.TRUSTEDSITE not in self.options
            and is_ip_address(self.host)
            and not self.tls_server_name
        ):
            raise ValueError(
                "with Option.TUNNEL and TLS, set tls_server_name to the name in the server's "
                "certificate (the host is an IP address of the tunnel, not the server's name)"
            )

    def _check_proxy(self) -> None:
        if self.proxy is None:
            return
        parts = urlsplit(self.proxy)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme.lower() not in _PROXY_SCHEMES or not parts.hostname or not port:
            raise ValueError(
                "Server.proxy must be a URL such as socks5://user:pass@host:1080, "
                "socks4://host:1080 or http://host:3128"
            )

    def _normalise_collections(self) -> None:
        if self.auth_mechanisms is not None:
            names = (
                (self.auth_mechanisms,)
                if isinstance(self.auth_mechanisms, str)
                else tuple(self.auth_mechanisms)
            )
            names = tuple(n.strip().upper() for n in names)
            from smtpsubmit.auth import validate_preference

            validate_preference(names)
            object.__setattr__(self, "auth_mechanisms", names)
        disabled: Iterable[str] = self.disable_extensions
        if isinstance(disabled, str):
            disabled = [disabled]
        object.__setattr__(
            self, "disable_extensions", frozenset(e.strip().upper() for e in disabled)
        )

    # -- derived values -------------------------------------------------------------

    @property
    def has_credentials(self) -> bool:
        return bool(self.username) and (callable(self.password) or bool(self.password))

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return 465 if Option.SECURE_IMPLICIT in self.options else 25

    @property
    def effective_timeout(self) -> float:
        return float(self.timeout) if self.timeout else DEFAULT_TIMEOUT

    @property
    def effective_options(self) -> Option:
        """``options`` with EXTENDED switched on by credentials, port 587 (not through a
        tunnel), SECURE or SECURE_OPTIONAL (docs/server.md)."""
        opts = self.options
        tunnel = Option.TUNNEL in opts
        if (
            self.has_credentials
            or (self.effective_port == 587 and not tunnel)
            or opts & (Option.SECURE | Option.SECURE_OPTIONAL)
        ):
            opts |= Option.EXTENDED
        return opts

    @property
    def effective_tls_server_name(self) -> str:
        return self.tls_server_name or self.host.strip("[]")

    @property
    def plaintext_auth_allowed(self) -> bool:
        """PLAIN/LOGIN on an unprotected connection: only when asked, or on loopback."""
        if self.allow_plaintext_auth:
            return True
        # Through a proxy, "127.0.0.1" is the proxy's loopback: the password crosses a network.
        tunnelled = Option.TUNNEL in self.options or self.proxy is not None
        return is_loopback_host(self.host) and not tunnelled

    def plaintext_auth_allowed_to(self, peer: str | None) -> bool:
        """The same rule for the address actually connected to (None: unknown, or a
        proxy's): a host *name* such as ``localhost.`` may resolve anywhere."""
        if self.allow_plaintext_auth:
            return True
        tunnelled = Option.TUNNEL in self.options or self.proxy is not None
        return peer is not None and not tunnelled and _is_loopback_address(peer)

    def __repr__(self) -> str:
        parts = [f"host={self.host!r}"]
        if self.username:
            parts.append(f"username={self.username!r}")
        if self.password is not None:
            parts.append("password='***'")
        for name in (
            "port",
            "timeout",
            "local_hostname",
            "ca_file",
            "ca_path",
            "client_cert",
            "client_key",
            "tls_server_name",
            "auth_mechanisms",
        ):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        if self.options:
            parts.append(f"options={self.options!r}")
        if self.proxy:
            parts.append(f"proxy={_mask_url(self.proxy)!r}")
        if self.allow_plaintext_auth:
            parts.append("allow_plaintext_auth=True")
        if self.disable_extensions:
            parts.append(f"disable_extensions={sorted(self.disable_extensions)!r}")
        if self.dkim is not None:
            parts.append(f"dkim={self.dkim!r}")
        return f"Server({', '.join(parts)})"

    __str__ = __repr__

    # -- URLs ----------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Server:
        """Parse ``smtp://``, ``smtps://`` (implicit TLS) or ``smtp+starttls://`` URLs.

        User and password are percent-decoded; ``timeout``, ``options``,
        ``local_hostname``, ``proxy`` (and the other keyword extras) come from
        the query string. Keyword arguments override what the URL says.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise _url_error("the scheme must be smtp://, smtps:// or smtp+starttls://", url)
        if parts.path not in ("", "/") or parts.fragment:
            # An SMTP URL has no path: one here means a raw '/' or '#' ended the host early.
            raise _url_error("the URL has a path or fragment after the host", url)
        port = _url_port(parts)
        if port is None:
            raise _url_error("the port is not a number from 0 to 65535", url)
        if not parts.hostname:
            raise _url_error("the URL has no host", url)
        options, implied_port = _SCHEMES[scheme]
        port = port or implied_port
        kwargs: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            kwargs.update(_query_value(key, value, url))
        options |= kwargs.pop("options", Option.NONE)
        values: dict[str, Any] = {
            "host": parts.hostname,  # an IPv6 literal comes without its brackets
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "port": port,
            "options": options,
            **kwargs,
        }
        values.update(overrides)
        return cls(**values)

    def to_url(self, include_password: bool = False) -> str:
        """The URL that :meth:`from_url` turns back into this server.

        The password is left out unless ``include_password=True`` (a callable
        password can never be written into a URL).
        """
        scheme = next(
            (name for name, (mode, _) in _SCHEMES.items() if mode and mode in self.options),
            "smtp",
        )
        mode, implied_port = _SCHEMES[scheme]
        opts = self.options & ~mode
        userinfo = ""
        if self.username:
            userinfo = quote(self.username, safe="")
            if include_password and self.password is not None:
                if callable(self.password):
                    raise ValueError("a callable password cannot be written into a URL")
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        host = self.host
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            host = f"[{host}]"
        # Port 0 is written out where the scheme implies another port (smtp+starttls: 587).
        port = self.port or (self.effective_port if implied_port else 0)
        netloc = f"{userinfo}{host}" + (f":{port}" if port else "")
        query = _query_string(self, opts, include_password)
        return f"{scheme}://{netloc}" + (f"?{query}" if query else "")


# Keyword extras that travel in a URL query as plain text.
_URL_TEXT_FIELDS = (
    "local_hostname",
    "proxy",
    "ca_file",
    "ca_path",
    "tls_server_name",
    "client_cert",
    "client_key",
)


def _split_names(value: str) -> list[str]:
    return [v for v in value.replace("|", ",").split(",") if v]


def _query_value(key: str, value: str, url: str) -> dict[str, Any]:
    """One query parameter; errors name the parameter, never the value (see _url_error)."""
    key = key.strip().lower()
    if key not in _URL_PARAMETERS:
        # The key is not echoed: with a raw '?' in a password, it is part of the password.
        raise _url_error(f"unknown URL parameter; known: {', '.join(_URL_PARAMETERS)}", url)
    try:
        return {key: _URL_PARAMETERS[key](value)}
    except ValueError:
        expected = _URL_EXPECTED.get(key, "a valid value")
        error = _url_error(f"URL parameter {key}= must be {expected}", url)
    raise error  # outside the except block: no __context__ holding the value


_URL_PARAMETERS: dict[str, Callable[[str], Any]] = {
    "timeout": float,
    "options": Option.parse,
    **{name: str for name in _URL_TEXT_FIELDS},
    "auth_mechanisms": lambda value: tuple(_split_names(value)),
    "disable_extensions": lambda value: frozenset(_split_names(value)),
    "allow_plaintext_auth": lambda value: value.lower() in ("1", "true", "yes", "on"),
}
_URL_EXPECTED = {
    "timeout": "a number of seconds",
    "options": "option names joined by ',' or '|' (known options: "
    + ", ".join(m.name for m in Option if m.name)
    + ")",
}


def _url_port(parts: SplitResult) -> int | None:
    """The port (0 when absent), or None when it is not a valid port number."""
    try:
        return parts.port or 0
    except ValueError:
        return None


def _url_error(problem: str, url: str) -> ValueError:
    """A ValueError for a bad URL that repeats no part of it.

    A URL may hold a password, and a raw '/', '?', '#' in that password moves
    the rest of it into the path, query or port, so no piece of the URL is
    safe to show.
    """
    text = f"bad SMTP URL: {problem} (the URL is not shown: it may hold a password)"
    if "@" in url:
        text += "; in the user name and password write '/', '?', '#', '@' as %2F, %3F, %23, %40"
    return ValueError(text)


def _query_string(server: Server, opts: Option, include_password: bool) -> str:
    query: list[tuple[str, str]] = []
    if server.timeout:
        query.append(("timeout", f"{server.timeout:g}"))
    if opts:
        query.append(("options", ",".join(opts.names())))
    for name in _URL_TEXT_FIELDS:
        value = getattr(server, name)
        if name == "proxy" and value and not include_password:
            value = _strip_password(value)
        if value:
            query.append((name, value))
    if server.auth_mechanisms:
        query.append(("auth_mechanisms", ",".join(server.auth_mechanisms)))
    if server.disable_extensions:
        query.append(("disable_extensions", ",".join(sorted(server.disable_extensions))))
    if server.allow_plaintext_auth:
        query.append(("allow_plaintext_auth", "true"))
    return urlencode(query, safe=",/:@")


def _strip_password(url: str) -> str:
    """The URL without its password (the user name stays)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}").geturl()


def _mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()
