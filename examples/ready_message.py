"""Submit a message that is already written (an RFC 5322 file, e.g. a saved .eml).

Two ways, as sendmail has them:

* with ``MAIL_TO`` set, the file is sent as it is (minus any Bcc field, which is never
  sent) to exactly those recipients, with ``MAIL_FROM`` as the envelope sender
  (``submit_message(file, server, sender=..., recipients=...)``) — the headers are not
  read for addresses;
* without it, the recipients come from the To, Cc and Bcc fields and the sender from From,
  and the Bcc field is removed before sending (``Message.from_file``, like ``sendmail -t``).

    SMTP_URL=smtp://127.0.0.1:8025 python examples/ready_message.py message.eml
    SMTP_URL=smtp://127.0.0.1:8025 MAIL_FROM=me@example.org MAIL_TO=you@example.org \\
        python examples/ready_message.py message.eml

Environment: ``SMTP_URL`` (default ``smtp://localhost``; see examples/plain.py),
``MAIL_TO`` (recipients separated by ``,``), ``MAIL_FROM`` (the envelope sender: required
with ``MAIL_TO``, otherwise it defaults to the From address).
Argument: the message file (required).
"""

import os
import sys

from smtpsubmit import Message, Server, submit_message


def main() -> None:
    path = sys.argv[1]
    server = Server.from_url(os.environ.get("SMTP_URL", "smtp://localhost"))
    recipients = os.environ.get("MAIL_TO")
    if recipients:
        # Sent byte for byte (bar Bcc); the envelope is entirely ours.
        with open(path, "rb") as file:
            result = submit_message(
                file,
                server,
                sender=os.environ["MAIL_FROM"],
                recipients=[r.strip() for r in recipients.split(",") if r.strip()],
            )
    else:
        message = Message.from_file(path)  # envelope from From / To / Cc / Bcc
        sender = os.environ.get("MAIL_FROM")  # None: the From address
        result = submit_message(message, server, sender=sender)
    print(f"sent {result.message_id} ({result.size} octets) to {', '.join(result.accepted)}")


if __name__ == "__main__":
    main()
