"""An HTML message with a plain-text alternative, an inline image and attachments.

The image is referenced from the HTML as ``cid:logo``; smtpsubmit puts it in a
``multipart/related`` part with the HTML. Attachments are streamed: a large file costs no
more memory than a small one.

    SMTP_URL=smtp://127.0.0.1:8025 MAIL_FROM=me@example.org MAIL_TO=you@example.org \\
        ATTACH_FILES="report.pdf;data.csv" python examples/attachments_inline.py

Environment: ``SMTP_URL`` (default ``smtp://localhost``; see examples/plain.py),
``MAIL_FROM``, ``MAIL_TO``, ``ATTACH_FILES`` (paths separated by ``;``; default: this
script).
"""

import base64
import os

from smtpsubmit import Attachment, Message, Server, submit_message

# A 1x1 PNG, so the example needs no image file.
LOGO_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

HTML = """\
<html>
  <body>
    <p><img src="cid:logo" alt="logo" width="32" height="32"></p>
    <p>Hello! The figures you asked for are attached.</p>
  </body>
</html>
"""

TEXT = "Hello! The figures you asked for are attached.\n"


def main() -> None:
    server = Server.from_url(os.environ.get("SMTP_URL", "smtp://localhost"))
    files = os.environ.get("ATTACH_FILES", __file__)
    message = Message(
        sender=os.environ.get("MAIL_FROM", "me@example.org"),
        to=os.environ.get("MAIL_TO", "you@example.org"),
        subject="Figures (with a logo)",
        text=TEXT,
        html=HTML,
        attachments=[
            Attachment(data=LOGO_PNG, filename="logo.png", inline=True, content_id="logo"),
            Attachment(data=b"month,total\r\n2024-01,42\r\n", filename="figures.csv"),
            *[path.strip() for path in files.split(";") if path.strip()],
        ],
    )
    result = submit_message(message, server)
    print(f"sent {result.message_id} ({result.size} octets) to {', '.join(result.accepted)}")


if __name__ == "__main__":
    main()
