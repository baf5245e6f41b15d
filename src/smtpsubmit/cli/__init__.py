"""The ``smtpsubmit`` command line: ``send``, ``sendmail``, ``probe``, ``dkim``, ``demo``, and
the outbox's ``worker`` and ``queue``.

``main(argv)`` returns a sysexits status (see :mod:`smtpsubmit.cli.errors`)
and never raises, except ``KeyboardInterrupt`` as status 130. rich,
aiosmtpd and trustme (the ``cli`` extra) are imported only by the code that
needs them, so ``import smtpsubmit`` never does.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

from smtpsubmit.cli.errors import EX_USAGE, UsageError, describe, exit_code

__all__ = ["main"]

DESCRIPTION = """\
Compose email and submit it to an SMTP server, check what a server offers,
or stand in for /usr/sbin/sendmail. Run `smtpsubmit demo` to see the whole
path work on this machine with no configuration.
"""

EPILOG = """\
examples:
  smtpsubmit demo
  smtpsubmit send --account work --to you@example.org --subject Hi --text 'Hello'
  printf 'To: you@example.org\\nSubject: Hi\\n\\nHello\\n' | smtpsubmit sendmail -t
  smtpsubmit probe smtp.example.org:587
  smtpsubmit dkim keygen --selector s1 --domain example.org

accounts (TOML, --config PATH or ~/.config/smtpsubmit/config.toml):
  default = "work"
  [accounts.work]
  host = "smtp.example.org"
  port = 587
  username = "me@example.org"
  options = ["SECURE"]
  password_command = "pass show mail/work"
  from = "Me <me@example.org>"

Each subcommand has its own --help. Exit status follows sysexits(3): 0 ok,
64 usage, 65 bad message, 66 missing input file, 68 unknown host, 69 refused
(5xx) or TLS failure, 75 temporary failure, 77 authentication failed, 78 bad
configuration.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as exit status 64 (EX_USAGE), not 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    from smtpsubmit import __version__
    from smtpsubmit.cli import demo, dkim, probe, queue, send, sendmail, worker

    parser = _Parser(
        prog="smtpsubmit",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smtpsubmit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    send.register(sub)
    sendmail.register(sub)
    probe.register(sub)
    dkim.register(sub)
    demo.register(sub)
    worker.register(sub)
    queue.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    if argv is None:
        argv = sys.argv[1:]
        if os.path.basename(sys.argv[0]) == "sendmail":  # installed as a sendmail symlink
            argv = ["sendmail", *argv]
    command = "smtpsubmit"
    debug = "--debug" in argv
    try:
        if argv[:1] == ["sendmail"]:
            from smtpsubmit.cli import sendmail

            command = "smtpsubmit sendmail"
            return sendmail.run(argv[1:], _Parser)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"smtpsubmit {argv[0]}" if argv else command
        status: int = args.run(args)
        return status
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EX_USAGE)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{command}: error: {describe(exc, command)}", file=sys.stderr)
        return exit_code(exc)
