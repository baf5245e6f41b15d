"""``smtpsubmit send``: compose a message from flags and submit it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from smtpsubmit.cli import batch, mx
from smtpsubmit.cli.dkim import add_dkim_options, signer_from
from smtpsubmit.cli.errors import MissingInput, UsageError
from smtpsubmit.cli.options import (
    add_common_options,
    add_connection_options,
    build_server,
    resolve_account,
)
from smtpsubmit.cli.output import ProgressBar, print_transcript_to
from smtpsubmit.envelope import DSN

DESCRIPTION = """\
Compose a message from the options below and submit it to an SMTP server:
text and/or HTML body, attachments, extra headers, Cc and Bcc (Bcc recipients
get the message; the Bcc header never leaves this machine).

The server comes from --server URL, or --host and friends, or an account in
the account file (--account NAME, or the file's default account when no
server is named on the command line); flags override the account.

The password is never taken from the command line: it comes from
--password-env VAR, --password-command CMD, the account (password_env,
password_command or password), or - on a terminal - a prompt without echo.

On success a one-line summary is printed (with --json: the SubmitResult as
JSON on stdout). Recipients the server refused while accepting others are
listed on stderr; the exit status is still 0.
"""

EPILOG = """\
examples:
  # STARTTLS on the submission port, password from the environment
  SMTP_PASSWORD=... smtpsubmit send --server smtp+starttls://me@smtp.example.org \\
      --password-env SMTP_PASSWORD \\
      --from 'Me <me@example.org>' --to you@example.org \\
      --subject 'Monthly report' --text-file body.txt --attach report.pdf

  # text and HTML alternatives, a Cc, a Bcc and an extra header, via an account
  smtpsubmit send --account work --to a@example.org --cc b@example.org \\
      --bcc archive@example.org --subject Hello --text 'Hi there' \\
      --html-file hello.html --header 'Reply-To: team@example.org'

  # implicit TLS (port 465), password from a password manager, show the transcript
  smtpsubmit send --host smtp.example.org --secure-implicit --user me@example.org \\
      --password-command 'pass show mail/example' --verbose \\
      --from me@example.org --to you@example.org --subject Test --text Test

  # ask for delivery status notifications, machine-readable result
  smtpsubmit send --account work --to you@example.org --subject Hi --text Hi \\
      --dsn failure,delay --dsn-ret hdrs --json

exit status (sysexits):
  0 sent; 64 usage error; 65 bad message (address, header, charset); 66 an
  input file is missing; 68 unknown host; 69 permanent refusal (5xx) or TLS
  failure; 75 temporary failure (4xx, timeout, connection refused; try again);
  77 authentication failed; 78 bad account file or password command.
"""

ENCODINGS = ("auto", "7bit", "8bit", "quoted-printable", "base64")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "send",
        help="compose a message from options and submit it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch_group = parser.add_argument_group("many ready messages")
    batch_group.add_argument(
        "--batch",
        metavar="DIR|MBOX",
        help="send every ready message of a directory (one file each) or an mbox file, "
        "streamed on one connection; envelopes from each message's header (like sendmail -t)",
    )
    msg = parser.add_argument_group("message")
    msg.add_argument(
        "--from",
        dest="sender",
        metavar="ADDR",
        help="From address, 'Name <a@b>' or 'a@b' (default: the account's `from`)",
    )
    for flag, what in (("to", "To"), ("cc", "Cc"), ("bcc", "Bcc (envelope only)")):
        msg.add_argument(
            f"--{flag}",
            metavar="ADDR",
            action="append",
            default=[],
            help=f"{what} recipient(s); repeatable, or several separated by ',' or ';'",
        )
    msg.add_argument("--subject", default="", help="subject (non-ASCII is encoded)")
    msg.add_argument("--date", metavar="DATE", help="Date header, RFC 5322 form (default: now)")
    msg.add_argument("--text", metavar="TEXT", help="plain-text body")
    msg.add_argument("--text-file", metavar="PATH", help="plain-text body from a file ('-': stdin)")
    msg.add_argument("--html", metavar="HTML", help="HTML body (with a text body: alternatives)")
    msg.add_argument("--html-file", metavar="PATH", help="HTML body from a file ('-': stdin)")
    msg.add_argument(
        "--attach",
        metavar="PATH",
        action="append",
        default=[],
        help="attach a file (repeatable); the content type is guessed from the name",
    )
    msg.add_argument(
        "--header",
        metavar="'NAME: VALUE'",
        action="append",
        default=[],
        help="extra header field (repeatable), e.g. 'Reply-To: team@example.org'",
    )
    msg.add_argument("--charset", default="utf-8", help="charset of text parts (utf-8)")
    msg.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="auto",
        help="transfer encoding of the text parts (auto: smallest safe one)",
    )
    dsn = parser.add_argument_group("delivery status notifications (RFC 3461)")
    dsn.add_argument(
        "--dsn",
        metavar="NOTIFY",
        help="ask for DSNs: comma-separated SUCCESS, FAILURE, DELAY, or NEVER",
    )
    dsn.add_argument(
        "--dsn-ret", choices=("full", "hdrs"), help="return the full message or headers"
    )
    dsn.add_argument("--dsn-envid", metavar="ID", help="envelope id quoted in the DSNs")
    dsn.add_argument(
        "--dsn-optional",
        action="store_true",
        help="send without DSN when the server does not offer it (default: fail)",
    )
    dsn.add_argument(
        "--require-tls", action="store_true", help="REQUIRETLS (RFC 8689) for onward relaying"
    )
    add_connection_options(parser)
    add_dkim_options(parser)
    mx.add_direct_options(parser)
    add_common_options(parser, json_help="print the result (SubmitResult.as_dict()) as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from smtpsubmit.message import Message
    from smtpsubmit.submit import submit_message

    explicit = bool(args.server or args.host or args.direct)
    account = resolve_account(args, explicit_server=explicit)
    if args.batch:
        if args.direct or args.to or args.cc or args.bcc or args.text or args.html:
            raise UsageError("--batch sends ready messages: no --direct or message options")
        return batch.run_batch(args, build_server(args, account))
    sender = args.sender or (account.get("from") if account else None)
    if not sender:
        raise UsageError("no sender: give --from ADDR (or `from` in the account)")
    if not (args.to or args.cc or args.bcc):
        raise UsageError("no recipients: give at least one --to, --cc or --bcc")
    message = Message(
        sender=sender,
        to=args.to,
        cc=args.cc,
        bcc=args.bcc,
        date=args.date,
        subject=args.subject,
        headers=parse_headers(args.header),
        text=_body(args.text, args.text_file, "--text"),
        html=_body(args.html, args.html_file, "--html"),
        attachments=check_attachments(args.attach),
        charset=args.charset,
        encoding=_encoding(args.encoding),
    )
    if args.direct:
        return mx.run_direct(args, message)
    dsn = make_dsn(args.dsn, args.dsn_ret, args.dsn_envid, required=not args.dsn_optional)
    dkim = signer_from(args, account, message.sender)
    server = build_server(args, account)
    bar = ProgressBar()
    try:
        with print_transcript_to(sys.stderr if args.verbose else None):
            result = submit_message(
                message, server, dsn=dsn, progress=bar, require_tls=args.require_tls, dkim=dkim
            )
    finally:
        bar.close()
    report_refused(result.refused)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(
            f"sent {result.message_id or '(no Message-ID)'} ({result.size} octets) to "
            f"{', '.join(result.accepted)}: {result.reply}"
        )
    return 0


def report_refused(refused: dict[str, Any]) -> None:
    for rcpt, reply in refused.items():
        print(f"smtpsubmit: warning: {rcpt} refused: {reply}", file=sys.stderr)


def parse_headers(items: list[str]) -> list[tuple[str, str]]:
    headers = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return headers


def check_attachments(paths: list[str]) -> list[str]:
    """Missing attachments are EX_NOINPUT (66), found before anything is composed."""
    for path in paths:
        if not os.path.isfile(path):
            why = "is not a file" if os.path.exists(path) else "no such file"
            raise MissingInput(f"attachment {path!r}: {why}")
    return list(paths)


def make_dsn(
    notify: str | None, ret: str | None, envid: str | None, *, required: bool = True
) -> DSN | None:
    if notify is None and ret is None and envid is None:
        return None
    names = tuple(n for n in (notify or "FAILURE").replace(";", ",").split(",") if n.strip())
    try:
        return DSN(notify=names, ret=ret, envid=envid, required=required)
    except ValueError as exc:
        raise UsageError(f"--dsn: {exc}") from None


def _body(inline: str | None, path: str | None, flag: str) -> str | None:
    if inline is not None and path is not None:
        raise UsageError(f"give {flag} or {flag}-file, not both")
    if path is None:
        return inline
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingInput(f"{flag}-file {path!r}: no such file") from None
    except UnicodeDecodeError as exc:
        from smtpsubmit.errors import MessageError

        raise MessageError(f"{flag}-file {path!r} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise MissingInput(f"{flag}-file {path!r}: {exc.strerror}") from None


def _encoding(name: str) -> Any:
    from smtpsubmit.message import Encoding

    return Encoding(name)
