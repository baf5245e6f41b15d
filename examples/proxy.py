"""Submit through a SOCKS5, SOCKS4 or HTTP CONNECT proxy.

The proxy resolves the SMTP server's name (a remote DNS lookup), so a server name that only
the proxy's network knows works too.

    SMTP_PROXY=socks5://user:secret@proxy.example.org:1080 SMTP_HOST=smtp.example.org \\
        SMTP_USER=me@example.org SMTP_PASSWORD=app-password SMTP_PORT=587 \\
        MAIL_FROM=me@example.org MAIL_TO=you@example.org python examples/proxy.py

Environment: ``SMTP_PROXY`` (required: ``socks5://``, ``socks5h://``, ``socks4://``,
``socks4a://`` or ``http://``, with optional ``user:password@``), ``SMTP_HOST`` (required),
``SMTP_PORT`` (default 0: 25, or 465 with ``SMTP_SECURITY=implicit``), ``SMTP_USER``,
``SMTP_PASSWORD``, ``SMTP_SECURITY`` (``starttls`` = ``Option.SECURE``, ``implicit`` =
``Option.SECURE_IMPLICIT``, or ``none``; default ``starttls``), ``SMTP_CA_FILE``,
``MAIL_FROM``, ``MAIL_TO``.
"""

import os

from smtpsubmit import Message, Option, Server, submit_message

SECURITY = {
    "starttls": Option.SECURE,
    "implicit": Option.SECURE_IMPLICIT,
    "none": Option.NONE,
}


def main() -> None:
    server = Server(
        os.environ["SMTP_HOST"],
        os.environ.get("SMTP_USER"),
        os.environ.get("SMTP_PASSWORD"),
        int(os.environ.get("SMTP_PORT", "0")),
        options=SECURITY[os.environ.get("SMTP_SECURITY", "starttls")],
        proxy=os.environ["SMTP_PROXY"],
        ca_file=os.environ.get("SMTP_CA_FILE"),
    )
    print(f"connecting to {server.host}:{server.effective_port} through {server!r}")
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Sent through a proxy",
        text="This message reached the server through a proxy.\n",
    )
    result = submit_message(message, server)
    print(f"sent {result.message_id} to {', '.join(result.accepted)}")


if __name__ == "__main__":
    main()
