"""Send one plain-text message, no TLS and no login: a local relay or a test server.

Run it against a real server (a relay on this host, or a development catcher such as
``python -m aiosmtpd -n -l 127.0.0.1:8025``)::

    SMTP_URL=smtp://127.0.0.1:8025 MAIL_FROM=me@example.org MAIL_TO=you@example.org \\
        python examples/plain.py

``SMTP_URL`` is parsed by ``Server.from_url``: ``smtp://`` (port 25 by default),
``smtp+starttls://`` (587) or ``smtps://`` (465), with optional ``user:password@`` and
query parameters such as ``?timeout=10``. Default: ``smtp://localhost``.
"""

import os

from smtpsubmit import Message, Server, submit_message


def main() -> None:
    server = Server.from_url(os.environ.get("SMTP_URL", "smtp://localhost"))
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Hello from smtpsubmit",
        text="Hi there!\n\nThis message was sent by examples/plain.py.\n",
    )
    result = submit_message(message, server)
    print(f"sent {result.message_id} to {', '.join(result.accepted)}")
    print(f"server said: {result.reply}")
    for address, reply in result.refused.items():
        print(f"refused {address}: {reply}")


if __name__ == "__main__":
    main()
