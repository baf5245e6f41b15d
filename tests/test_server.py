"""Server and Option: defaults, automatic rules, validation, URLs, repr."""

from __future__ import annotations

import pytest

from smtpsubmit import Option, Server


def test_positional_fields_follow_the_smtpserver_structure() -> None:
    server = Server("mx.example.org", "user", "pw", 2525, 5, Option.SECURE)
    assert (server.host, server.username, server.password) == ("mx.example.org", "user", "pw")
    assert (server.port, server.timeout, server.options) == (2525, 5, Option.SECURE)


@pytest.mark.parametrize(
    ("options", "port", "expected"),
    [
        (Option.NONE, 0, 25),
        (Option.SECURE, 0, 25),
        (Option.SECURE_IMPLICIT, 0, 465),
        (Option.SECURE_IMPLICIT, 2465, 2465),
        (Option.NONE, 587, 587),
    ],
)
def test_effective_port(options: Option, port: int, expected: int) -> None:
    assert Server("h", port=port, options=options).effective_port == expected


def test_effective_timeout() -> None:
    assert Server("h").effective_timeout == 20.0
    assert Server("h", timeout=2.5).effective_timeout == 2.5


@pytest.mark.parametrize(
    ("kwargs", "extended"),
    [
        ({}, False),
        ({"username": "u", "password": "p"}, True),
        ({"username": "u", "password": ""}, False),
        ({"username": "", "password": "p"}, False),
        ({"username": "u", "password": lambda: "token"}, True),
        ({"port": 587}, True),
        ({"port": 587, "options": Option.TUNNEL}, False),
        ({"options": Option.SECURE}, True),
        ({"options": Option.SECURE_OPTIONAL}, True),
        ({"options": Option.SECURE_IMPLICIT}, False),
        ({"options": Option.EXTENDED}, True),
    ],
)
def test_extended_is_switched_on_automatically(kwargs: dict[str, object], extended: bool) -> None:
    server = Server("h", **kwargs)  # type: ignore[arg-type]
    assert (Option.EXTENDED in server.effective_options) is extended
    assert Option.EXTENDED not in server.options or "options" in kwargs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": ""},
        {"host": "  "},
        {"host": "mx\r\nevil"},
        {"host": "h", "port": -1},
        {"host": "h", "port": 65536},
        {"host": "h", "timeout": -1},
        {"host": "h", "options": Option.SECURE | Option.SECURE_IMPLICIT},
        {"host": "h", "options": Option.SECURE | Option.SECURE_OPTIONAL},
        {"host": "h", "local_hostname": "me\r\nRSET"},
        {"host": "h", "proxy": "ftp://proxy:21"},
        {"host": "h", "auth_mechanisms": ("NOT-A-MECHANISM",)},
        {"host": "127.0.0.1", "options": Option.TUNNEL | Option.SECURE},
    ],
)
def test_bad_values_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Server(**kwargs)  # type: ignore[arg-type]


def test_tunnel_with_ip_and_tls_needs_tls_server_name() -> None:
    server = Server(
        "127.0.0.1", options=Option.TUNNEL | Option.SECURE, tls_server_name="mx.example.org"
    )
    assert server.effective_tls_server_name == "mx.example.org"


def test_plaintext_auth_rules() -> None:
    assert Server("127.0.0.1").plaintext_auth_allowed
    assert Server("localhost").plaintext_auth_allowed
    assert Server("::1").plaintext_auth_allowed
    assert not Server("mx.example.org").plaintext_auth_allowed
    assert not Server("127.0.0.1", options=Option.TUNNEL).plaintext_auth_allowed
    assert Server("mx.example.org", allow_plaintext_auth=True).plaintext_auth_allowed


def test_password_never_in_repr() -> None:
    server = Server("h", "user", "S3cr3t-CANARY", proxy="socks5://pu:S3cr3t-CANARY@127.0.0.1:1080")
    assert "S3cr3t-CANARY" not in repr(server)
    assert "S3cr3t-CANARY" not in str(server)
    assert "password='***'" in repr(server)


def test_disable_extensions_and_mechanisms_are_normalised() -> None:
    server = Server("h", disable_extensions={"chunking"}, auth_mechanisms=["scram-sha-256"])
    assert server.disable_extensions == frozenset({"CHUNKING"})
    assert server.auth_mechanisms == ("SCRAM-SHA-256",)


@pytest.mark.parametrize(
    ("url", "host", "port", "options"),
    [
        ("smtp://mx.example.org", "mx.example.org", 0, Option.NONE),
        ("smtps://mx.example.org", "mx.example.org", 0, Option.SECURE_IMPLICIT),
        ("smtp+starttls://mx.example.org", "mx.example.org", 587, Option.SECURE),
        ("smtp://mx.example.org:2525", "mx.example.org", 2525, Option.NONE),
        ("smtp://[::1]:2525", "::1", 2525, Option.NONE),
    ],
)
def test_from_url_schemes_and_default_ports(
    url: str, host: str, port: int, options: Option
) -> None:
    server = Server.from_url(url)
    assert (server.host, server.port, server.options) == (host, port, options)
    expected_port = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}[url.split(":", 1)[0]]
    assert server.effective_port == (port or expected_port)


def test_from_url_credentials_and_query() -> None:
    server = Server.from_url(
        "smtp+starttls://me%40example.org:p%40ss%3Aw0rd@mx.example.org:2587"
        "?timeout=7.5&options=trustedsite|extended&local_hostname=client.example.org"
        "&proxy=socks5://127.0.0.1:1080"
    )
    assert server.username == "me@example.org"
    assert server.password == "p@ss:w0rd"
    assert server.port == 2587 and server.timeout == 7.5
    assert server.options == Option.SECURE | Option.TRUSTEDSITE | Option.EXTENDED
    assert server.local_hostname == "client.example.org"
    assert server.proxy == "socks5://127.0.0.1:1080"


@pytest.mark.parametrize(
    "server",
    [
        Server("mx.example.org"),
        Server("mx.example.org", "me@example.org", "p@ss w/rd", 2525, 3, Option.SECURE),
        Server("mx.example.org", options=Option.SECURE_IMPLICIT | Option.TRUSTEDSITE),
        Server("::1", port=2525, local_hostname="me.example", allow_plaintext_auth=True),
        Server("h", options=Option.SECURE, disable_extensions={"CHUNKING"}, ca_file="/x/ca.pem"),
    ],
)
def test_url_round_trip(server: Server) -> None:
    again = Server.from_url(server.to_url(include_password=True))
    assert again.to_url(include_password=True) == server.to_url(include_password=True)
    assert again.effective_port == server.effective_port
    assert again.effective_options == server.effective_options
    assert again.password == server.password
    assert "p@ss" not in server.to_url()


def test_from_url_rejects_unknown_things() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Server.from_url("http://mx.example.org")
    with pytest.raises(ValueError, match="options= must be option names"):
        Server.from_url("smtp://h?options=FAST")
    with pytest.raises(ValueError, match="unknown URL parameter"):
        Server.from_url("smtp://h?color=blue")


def test_option_parse() -> None:
    assert Option.parse("secure, trustedsite") == Option.SECURE | Option.TRUSTEDSITE
    assert Option.parse("SECURE_IMPLICIT|EXTENDED").names() == ["EXTENDED", "SECURE_IMPLICIT"]


def test_server_is_frozen() -> None:
    server = Server("h")
    with pytest.raises(AttributeError):
        server.host = "other"  # type: ignore[misc]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it carries: its cause and its context, recursively."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or item in found:
            continue
        found.append(item)
        todo += [item.__cause__, item.__context__]
    return found


@pytest.mark.parametrize(
    "url",
    [
        "smtp://me:pa/ss-7Qz@mx.example.org",  # '/' ends the host early: path
        "smtp://me:pa#ss-7Qz@mx.example.org",  # '#': fragment
        "smtp://me:pa?ss-7Qz@mx.example.org",  # '?': the port becomes "pa"
        "smtp://me:2525?ss-7Qz@mx.example.org",  # a valid "port", the rest a query key
        "smtp://me:2525?timeout=ss-7Qz@mx.example.org",  # ... or a query value
        "smtp://me:2525/ss-7Qz@mx.example.org:25",
        "smtp+tls://me:pass-7Qz@mx.example.org",  # unknown scheme, good password
        "smtp://me:pass-7Qz@mx.example.org?options=ss-7Qz",
    ],
)
def test_from_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        Server.from_url(url)
    assert info.value.__cause__ is None and info.value.__context__ is None
    for exc in _chain(info.value):
        text = f"{exc} {exc!r} {exc.args}"
        assert "7Qz" not in text and "ss-" not in text
    assert "bad SMTP URL" in str(info.value)
    assert "%2F" in str(info.value)  # says how to write such a password


def test_from_url_rejects_a_path() -> None:
    # Before: "smtp://me:12/secret@host" was host "me", port 12 and the rest dropped.
    with pytest.raises(ValueError, match="path"):
        Server.from_url("smtp://me:12/secret@mx.example.org")
    assert Server.from_url("smtp://mx.example.org/").host == "mx.example.org"


@pytest.mark.parametrize("host", ["::1", "[::1]", "2001:db8::25", "[2001:db8::25]"])
def test_ipv6_literal_round_trip(host: str) -> None:
    server = Server(host, "u", "p", 2525)
    url = server.to_url()
    assert url.startswith("smtp://u@[") and "[[" not in url and url.endswith("]:2525")
    again = Server.from_url(url)
    assert again.host == host.strip("[]")
    assert again.to_url() == url
    assert again.effective_tls_server_name == server.effective_tls_server_name


@pytest.mark.parametrize(
    ("server", "url"),
    [
        (Server("h", options=Option.SECURE), "smtp+starttls://h:25"),  # 0 means 25 here
        (Server("h", port=587, options=Option.SECURE), "smtp+starttls://h:587"),
        (Server("h", options=Option.SECURE_IMPLICIT), "smtps://h"),
        (Server("h", options=Option.SECURE_OPTIONAL), "smtp://h?options=SECURE_OPTIONAL"),
        (Server("h", port=2525), "smtp://h:2525"),
    ],
)
def test_to_url_scheme_and_port(server: Server, url: str) -> None:
    assert server.to_url() == url
    again = Server.from_url(url)
    assert (again.effective_port, again.options) == (server.effective_port, server.options)
