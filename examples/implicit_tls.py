"""Submit over implicit TLS ("SMTPS", port 465): TLS from the first byte, then AUTH.

    SMTP_HOST=smtp.example.org SMTP_USER=me@example.org SMTP_PASSWORD=app-password \\
        MAIL_FROM=me@example.org MAIL_TO=you@example.org python examples/implicit_tls.py

Environment: ``SMTP_HOST`` (required), ``SMTP_PORT`` (default 0, which means 465 with
``Option.SECURE_IMPLICIT``), ``SMTP_USER``, ``SMTP_PASSWORD``, ``SMTP_CA_FILE``,
``MAIL_FROM``, ``MAIL_TO``.
"""

import os

from smtpsubmit import Client, Message, Option, Server


def main() -> None:
    server = Server(
        os.environ["SMTP_HOST"],
        os.environ.get("SMTP_USER"),
        os.environ.get("SMTP_PASSWORD"),
        int(os.environ.get("SMTP_PORT", "0")),
        options=Option.SECURE_IMPLICIT,
        ca_file=os.environ.get("SMTP_CA_FILE"),
    )
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Submitted over implicit TLS",
        text="This message never crossed the network in clear.\n",
    )
    # A Client (one connection) shows what was negotiated before it sends.
    with Client(server) as client:
        print(f"connected to port {server.effective_port}, TLS: {client.is_tls}")
        print(f"AUTH mechanisms offered: {client.capabilities.get('AUTH', '(none)')}")
        result = client.send(message)
    print(f"sent {result.message_id} to {', '.join(result.accepted)}")


if __name__ == "__main__":
    main()
