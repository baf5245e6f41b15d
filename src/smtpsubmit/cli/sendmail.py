"""``smtpsubmit sendmail``: a drop-in ``/usr/sbin/sendmail`` (message on stdin).

The message bytes are sent as they came, except that line ends become CRLF,
``Bcc`` and ``Resent-Bcc`` fields are removed, a leading mbox ``From `` line is
dropped, and a missing ``From``, ``Date`` or ``Message-ID`` is added - what
sendmail itself does. The message is read by the library's one reader of ready
messages (:mod:`smtpsubmit.ready`), addresses by its one strict parser.

Short options are parsed the way sendmail's getopt does (``-fADDR`` and ``-f
ADDR``, ``-oi``, ``-odi``, ``-ti``); long options (``--account``,
``--config``, the connection flags of ``send``) go to argparse.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, make_msgid
from typing import Any

from smtpsubmit import ready
from smtpsubmit.addresses import Address, parse_address
from smtpsubmit.cli.dkim import add_dkim_options, signer_from
from smtpsubmit.cli.errors import ConfigError, UsageError
from smtpsubmit.cli.options import (
    add_common_options,
    add_connection_options,
    build_server,
    resolve_account,
)
from smtpsubmit.cli.output import ProgressBar, print_transcript_to
from smtpsubmit.envelope import DSN
from smtpsubmit.errors import MessageError
from smtpsubmit.mime import check_name

DESCRIPTION = """\
Read a ready RFC 5322 message on standard input and submit it, like
/usr/sbin/sendmail: for cron jobs, PHP's sendmail_path, git send-email,
mutt, and anything else that pipes mail into sendmail. The server and the
credentials come from the account file (--account NAME, else its default
account) or from the same connection flags as `smtpsubmit send`.

Recipients are the RCPT arguments; with -t also every To, Cc and Bcc address
of the message (Resent-To/-Cc/-Bcc instead, when the message has any),
parsed strictly: an ambiguous address list is refused, never guessed. Bcc
and Resent-Bcc fields are removed before sending. A missing From, Date or
Message-ID is added.

The envelope sender is -f ADDR, else the account's `from`, else the
message's From address.

sendmail options:
  -t              take recipients from the To, Cc and Bcc fields too
  -i, -oi         a line with a single '.' does not end the message
  -f ADDR         envelope sender (also -fADDR; -r ADDR is the same)
  -F NAME         display name for the From field when one is added (no
                  control characters)
  -N NOTIFY       ask for DSNs (never, or success,failure,delay), if offered
  -R full|hdrs    DSN: return the full message or its headers
  -V ENVID        DSN envelope id
  -bm             read a message from standard input (the default, the only mode)
  --              the remaining arguments are recipients

Accepted and ignored, because real callers pass them: -odi -odb -oem -oep -om
-o... -v -m -n -U -G -x -s -B TYPE -O OPTION=VALUE -h N -L TAG -X FILE -C FILE
-d... -A... -e... -q... (there is no queue: -q does nothing and exits 0).
"""

EPILOG = """\
examples:
  # cron: MAILTO works once sendmail points here
  ln -s "$(command -v smtpsubmit)" /usr/local/sbin/sendmail   # or call it directly:
  printf 'To: ops@example.org\\nSubject: backup done\\n\\nok\\n' | smtpsubmit sendmail -t

  # PHP (php.ini)
  sendmail_path = "/usr/local/bin/smtpsubmit sendmail -t -i --account web"

  # git send-email (.gitconfig)
  [sendemail]
      sendmailCmd = smtpsubmit sendmail --account work

  # explicit recipients and envelope sender, show the SMTP transcript
  smtpsubmit sendmail -f bounces@example.org --verbose you@example.org < message.eml

exit status (sysexits):
  0 sent; 64 usage error or no recipients given; 65 bad message or address;
  68 unknown host; 69 permanent refusal (5xx) or TLS failure; 75 temporary
  failure (try again later); 77 authentication failed; 78 no or bad account.
"""

_ARG_LETTERS = set("fFrNRVBOhLXC")  # take an argument, attached or as the next word
_ATTACHED_LETTERS = set("bqdAe")  # take an optional argument, attached only
_FLAG_LETTERS = set("tivnmsxUG")


@dataclass
class SendmailOptions:
    read_recipients: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    notify: str | None = None  # -N
    ret: str | None = None  # -R
    envid: str | None = None  # -V
    queue_run: bool = False  # -q
    recipients: list[str] = field(default_factory=list)


def build_parser(parser_class: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = parser_class(
        prog="smtpsubmit sendmail",
        usage="smtpsubmit sendmail [-t] [-i] [-f ADDR] [-F NAME] [--account NAME] "
        "[options] [RCPT ...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    add_dkim_options(parser)
    add_common_options(parser, json_help="print the result as JSON on stdout")
    return parser


def register(subparsers: Any) -> None:
    """``sendmail`` appears in ``smtpsubmit --help``; its arguments are parsed here."""
    subparsers.add_parser(
        "sendmail", help="drop-in /usr/sbin/sendmail: submit the message on stdin", add_help=False
    )


def split_argv(
    argv: list[str], parser: argparse.ArgumentParser
) -> tuple[SendmailOptions, list[str]]:
    """Sendmail's short options into ``SendmailOptions``; long options left for argparse."""
    opts = SendmailOptions()
    long_args: list[str] = []
    takes_value = {
        name for action in parser._actions if action.nargs != 0 for name in action.option_strings
    }
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            opts.recipients.extend(argv[i:])
            break
        if word.startswith("--"):
            long_args.append(word)
            if "=" not in word and word in takes_value and i < len(argv):
                long_args.append(argv[i])
                i += 1
            continue
        if not word.startswith("-") or word == "-":
            opts.recipients.append(word)
            continue
        letters = word[1:]
        while letters:
            letter, rest = letters[0], letters[1:]
            letters = ""
            if letter in _FLAG_LETTERS:
                opts.read_recipients |= letter == "t"
                opts.ignore_dots |= letter == "i"
                letters = rest  # bundled flags: -ti
            elif letter == "o":
                if not rest:  # "-o X": the option text is the next word
                    if i >= len(argv):
                        raise UsageError("-o needs an option letter")
                    rest = argv[i]
                    i += 1
                if rest == "i":
                    opts.ignore_dots = True
            elif letter in _ATTACHED_LETTERS:
                if letter == "b" and rest not in ("m", ""):
                    raise UsageError(
                        f"-b{rest}: only -bm (read a message from standard input) is supported"
                    )
                opts.queue_run |= letter == "q"
            elif letter in _ARG_LETTERS:
                if not rest:
                    if i >= len(argv):
                        raise UsageError(f"-{letter} needs an argument")
                    rest = argv[i]
                    i += 1
                _set_value(opts, letter, rest)
            else:
                raise UsageError(f"unknown option -{letter} (see `smtpsubmit sendmail --help`)")
    return opts, long_args


def _set_value(opts: SendmailOptions, letter: str, value: str) -> None:
    if letter in "fr":
        opts.sender = "" if value.strip() in ("", "<>") else value.strip()
    elif letter == "F":
        try:
            check_name(value, "-F: the name")
        except MessageError as exc:
            raise UsageError(str(exc)) from None
        opts.full_name = value
    elif letter == "N":
        opts.notify = value
    elif letter == "R":
        opts.ret = value
    elif letter == "V":
        opts.envid = value
    # B, O, h, L, X, C: accepted and ignored


def run(argv: list[str], parser_class: type[argparse.ArgumentParser]) -> int:
    from smtpsubmit.submit import submit_message

    parser = build_parser(parser_class)
    opts, long_args = split_argv(argv, parser)
    args = parser.parse_args(long_args)
    if opts.queue_run:
        return 0
    if not opts.recipients and not opts.read_recipients:
        raise UsageError("no recipients: give them as arguments, or use -t")
    raw = read_message(sys.stdin.buffer.read(), ignore_dots=opts.ignore_dots)
    account = resolve_account(args, explicit_server=bool(args.server or args.host))
    if account is None and not (args.server or args.host):
        raise ConfigError(
            "no server: no account file, or no default account in it",
            hint="create ~/.config/smtpsubmit/config.toml (see `smtpsubmit sendmail --help`) "
            "or pass --account NAME / --server URL",
        )
    data, sender, recipients = prepare(raw, opts, account.get("from") if account else None)
    dsn = _dsn(opts)
    dkim = signer_from(args, account, sender)
    server = build_server(args, account)
    bar = ProgressBar()
    try:
        with print_transcript_to(sys.stderr if args.verbose else None):
            result = submit_message(
                data, server, sender=sender, recipients=recipients, dsn=dsn, progress=bar, dkim=dkim
            )
    finally:
        bar.close()
    for rcpt, reply in result.refused.items():
        print(f"smtpsubmit: warning: {rcpt} refused: {reply}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    return 0


def _dsn(opts: SendmailOptions) -> DSN | None:
    if opts.notify is None and opts.ret is None and opts.envid is None:
        return None
    notify = tuple(n for n in (opts.notify or "FAILURE").split(",") if n.strip())
    try:
        return DSN(notify=notify, ret=opts.ret, envid=opts.envid, required=False)
    except ValueError as exc:
        raise UsageError(f"-N/-R/-V: {exc}") from None


def read_message(data: bytes, *, ignore_dots: bool) -> bytes:
    """CRLF line ends; without -i a line holding only '.' ends the message."""
    data = b"".join(ready.normalize_newlines([data]))
    if not ignore_dots:
        if data.startswith(b".\r\n") or data == b".":
            return b""
        end = data.find(b"\r\n.\r\n")
        if end >= 0:
            data = data[: end + 2]
        elif data.endswith(b"\r\n."):
            data = data[:-1]
    return data


def _account_sender(account_from: str | None) -> Address | None:
    """The account's ``from``, parsed by the library's strict address parser."""
    if account_from is None:
        return None
    try:
        return parse_address(account_from, "the account's 'from'")
    except MessageError as exc:
        raise ConfigError(str(exc), hint="set `from` to one address, e.g. Name <a@b>") from None


def prepare(
    raw: bytes, opts: SendmailOptions, account_from: str | None
) -> tuple[bytes, str, list[str]]:
    """The bytes to send, the envelope sender and the recipients.

    The message is read by the library's ready-message reader: with ``-t``
    its addresses are parsed strictly (an ambiguous list is refused, never
    guessed), and Bcc/Resent-Bcc are removed from what is sent.
    """
    message = ready.from_bytes(raw, strict=False)
    recipients = list(opts.recipients)
    if opts.read_recipients:
        names = ("resent-to", "resent-cc", "resent-bcc")
        if not any(message.has(name) for name in names):
            names = ("to", "cc", "bcc")
        recipients += [address.spec(True) for address in message.addresses(*names)]
    if not recipients:
        raise MessageError("no recipient addresses found in the message's To, Cc or Bcc fields")
    default = _account_sender(account_from)
    if opts.sender is not None:
        sender = opts.sender
    elif default is not None:
        sender = default.spec(True)
    elif header_from := message.addresses("from"):
        sender = header_from[0].spec(True)
    else:
        sender = f"{getpass.getuser()}@{socket.getfqdn()}"
    domain = None
    if not message.has("from"):
        address = opts.sender or (default.spec(True) if default else sender)
        name = opts.full_name
        if name is None:
            name = default.display_name if default else ""
        message.add("From", formataddr((name, address), "utf-8") if name else address)
        domain = address.rpartition("@")[2]
    if not message.has("date"):
        message.add("Date", formatdate(localtime=True))
    if not message.has("message-id"):
        if domain is None:
            header_from = message.addresses("from")
            domain = header_from[0].ascii_domain if header_from else sender.rpartition("@")[2]
        message.add("Message-ID", make_msgid(domain=domain or "localhost"))
    return b"".join(message.chunks()), sender, recipients
