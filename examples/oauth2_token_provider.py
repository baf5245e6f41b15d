"""Authenticate with an OAuth 2.0 access token (XOAUTH2 or OAUTHBEARER), refreshed on demand.

Gmail and Microsoft 365 accept an access token instead of a password. Pass a zero-argument
callable as the password: smtpsubmit calls it on every authentication (every new
connection), so a provider that caches the token and refreshes it before it expires keeps a
long-running program working.

    SMTP_HOST=smtp.gmail.com SMTP_USER=me@gmail.com \\
        SMTP_OAUTH_TOKEN_COMMAND="oauth2l fetch --scope https://mail.google.com/" \\
        MAIL_FROM=me@gmail.com MAIL_TO=you@example.org python examples/oauth2_token_provider.py

Environment: ``SMTP_HOST`` (required), ``SMTP_PORT`` (default 587, STARTTLS required),
``SMTP_USER``, ``SMTP_OAUTH_TOKEN_COMMAND`` (a command printing a fresh access token) or
``SMTP_OAUTH_TOKEN`` (a token you already have), ``SMTP_AUTH_MECHANISM`` (``XOAUTH2``, the
default, or ``OAUTHBEARER``), ``SMTP_CA_FILE``, ``MAIL_FROM``, ``MAIL_TO``.
"""

import os
import shlex
import subprocess
import time
from collections.abc import Callable

from smtpsubmit import Message, Option, Server, submit_message


class TokenProvider:
    """Caches an access token and fetches a new one shortly before it expires."""

    def __init__(self, fetch: Callable[[], tuple[str, float]], margin: float = 60.0) -> None:
        self._fetch = fetch  # returns (token, lifetime in seconds)
        self._margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self.fetches = 0

    def __call__(self) -> str:
        if self._token is None or time.monotonic() > self._expires - self._margin:
            self._token, lifetime = self._fetch()
            self._expires = time.monotonic() + lifetime
            self.fetches += 1
        return self._token


def fetch_token() -> tuple[str, float]:
    """Run SMTP_OAUTH_TOKEN_COMMAND, or read SMTP_OAUTH_TOKEN; tokens last about an hour."""
    command = os.environ.get("SMTP_OAUTH_TOKEN_COMMAND")
    if command:
        output = subprocess.run(  # noqa: S603 - the command is the user's own setting
            shlex.split(command), capture_output=True, text=True, check=True, timeout=60
        ).stdout
        return output.strip(), 3000.0
    return os.environ["SMTP_OAUTH_TOKEN"], 3000.0


def main() -> None:
    tokens = TokenProvider(fetch_token)
    server = Server(
        os.environ["SMTP_HOST"],
        os.environ.get("SMTP_USER"),
        tokens,  # called on every authentication, never shown in repr or logs
        int(os.environ.get("SMTP_PORT", "587")),
        options=Option.SECURE,
        auth_mechanisms=(os.environ.get("SMTP_AUTH_MECHANISM", "XOAUTH2"),),
        ca_file=os.environ.get("SMTP_CA_FILE"),
    )
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Sent with an OAuth 2.0 token",
        text="No password was used to send this message.\n",
    )
    result = submit_message(message, server)
    print(f"sent {result.message_id} to {', '.join(result.accepted)}")
    print(f"token fetched {tokens.fetches} time(s)")


if __name__ == "__main__":
    main()
