"""Submit through a mail provider's submission port: STARTTLS required, then AUTH.

This is what most providers want (port 587, "STARTTLS", user name and password)::

    SMTP_HOST=smtp.example.org SMTP_USER=me@example.org SMTP_PASSWORD=app-password \\
        MAIL_FROM=me@example.org MAIL_TO=you@example.org python examples/starttls_auth.py

Environment: ``SMTP_HOST`` (required), ``SMTP_PORT`` (default 587), ``SMTP_USER``,
``SMTP_PASSWORD``, ``SMTP_CA_FILE`` (a PEM file of the CA certificates to trust instead of
the system store, for a server with a private CA), ``MAIL_FROM``, ``MAIL_TO``.

``Option.SECURE`` makes STARTTLS mandatory: if the server does not offer it, or the
certificate does not verify, you get a ``TlsError`` and nothing else is sent — the
password never travels in clear.
"""

import os
import sys

from smtpsubmit import Message, Option, Server, SmtpError, submit_message


def main() -> int:
    server = Server(
        os.environ["SMTP_HOST"],
        os.environ.get("SMTP_USER"),
        os.environ.get("SMTP_PASSWORD"),
        int(os.environ.get("SMTP_PORT", "587")),
        options=Option.SECURE,
        ca_file=os.environ.get("SMTP_CA_FILE"),
    )
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Submitted over STARTTLS",
        text="This message went through STARTTLS and SMTP AUTH.\n",
    )
    try:
        result = submit_message(message, server)
    except SmtpError as exc:
        when = "later" if exc.is_temporary else "not without a change"
        print(f"failed at {exc.stage}: {exc} (retry {when})", file=sys.stderr)
        return 75 if exc.is_temporary else 69
    print(f"sent {result.message_id} to {', '.join(result.accepted)}")
    print(f"server said: {result.reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
