"""Exit codes (sysexits.h) and the one place that turns an exception into one.

=====  ==============  ==========================================================
code   name            when
=====  ==============  ==========================================================
0      EX_OK           sent (or, for ``probe``, the server answered)
64     EX_USAGE        bad command line: unknown flag, missing ``--to``, bad value
65     EX_DATAERR      bad message: invalid address, header, charset (MessageError)
66     EX_NOINPUT      an input file (attachment, ``--text-file``, CA file) is missing
68     EX_NOHOST       the server's host name does not resolve
69     EX_UNAVAILABLE  permanent refusal (5xx), TLS cannot be set up or verified,
                       a needed extension is missing, a protocol violation
75     EX_TEMPFAIL     temporary failure: 4xx, timeout, connection refused or lost,
                       delivery status unknown
77     EX_NOPERM       authentication failed (a 4xx during AUTH is 75)
78     EX_CONFIG       bad account file or table, unknown account, password command
                       failed or in a file others can write
=====  ==============  ==========================================================

TLS errors are 69 and not 78: the local settings may be at fault (a missing
``--ca-file``) but so may the server (an expired or wrong certificate, no
STARTTLS), and in either case retrying unchanged cannot help.

Every message has the form ``what failed (server said: ...) [at stage]; hint:
what to do``; :func:`describe` builds it and :func:`hint_for` picks the hint,
in terms of the command's own flags.
"""

from __future__ import annotations

from smtpsubmit.errors import (
    AuthError,
    ConnectError,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
    RecipientsRefused,
    SmtpError,
    TlsError,
)

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class CliError(Exception):
    """A failure the command line itself detects, with its exit code and a hint."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


class UsageError(CliError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, EX_USAGE, hint)


class ConfigError(CliError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, EX_CONFIG, hint)


class MissingInput(CliError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, EX_NOINPUT, hint)


def exit_code(exc: BaseException) -> int:
    """The sysexits code for ``exc``."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, MessageError):
        return EX_DATAERR
    if isinstance(exc, AuthError):
        return EX_TEMPFAIL if exc.is_temporary else EX_NOPERM
    if isinstance(exc, ConnectError) and getattr(exc, "unknown_host", False):
        return EX_NOHOST
    if isinstance(exc, TlsError):
        return EX_TEMPFAIL if exc.is_temporary else EX_UNAVAILABLE
    if isinstance(exc, SmtpError):
        return EX_TEMPFAIL if exc.is_temporary else EX_UNAVAILABLE
    return EX_SOFTWARE


def hint_for(exc: BaseException, command: str = "smtpsubmit") -> str | None:
    """What the user can do about ``exc``, in a few words (``command`` as in the message)."""
    if isinstance(exc, CliError):
        return exc.hint
    if isinstance(exc, MessageError):
        if command.endswith("sendmail"):
            return "fix the message on standard input or the arguments; nothing was sent"
        return "fix the message options; nothing was sent"
    if isinstance(exc, AuthError):
        if exc.reply is None:
            return None  # the library's own text already says what to set
        if exc.is_temporary:
            return "the server could not check the credentials now; try again later"
        return "check the user name and password (--user, --password-env, the account file)"
    if isinstance(exc, ConnectError) and getattr(exc, "unknown_host", False):
        return "check the host name (--host, --server or the account file) and DNS"
    if isinstance(exc, TlsError):
        return _tls_hint(exc)
    if isinstance(exc, RecipientsRefused):
        return "check the recipient addresses; no message data was sent"
    if isinstance(exc, MessageTooLarge):
        return "the server's SIZE limit is too small for this message"
    if isinstance(exc, ExtensionUnavailable):
        return f"the server or the options lack {exc.extension}"
    if isinstance(exc, DeliveryStatusUnknown):
        return "the message may have been accepted: a retry can deliver it twice"
    if isinstance(exc, ConnectError) and exc.reply is None:
        return "is the server running, and are host and port right? try `smtpsubmit probe`"
    if isinstance(exc, SmtpError):
        return "try again later" if exc.is_temporary else None
    return "this is a bug in smtpsubmit; run again with --debug and report the traceback"


# The library's TLS messages name the Server setting that changes the outcome;
# on the command line that setting is a flag.
_TLS_FLAGS = (
    ("ca_file", "--ca-file PEM"),
    ("ca_path", "--ca-path DIR"),
    ("tls_server_name", "--tls-server-name NAME"),
    ("client_cert", "--client-cert PEM"),
    ("client_key", "--client-key PEM"),
    ("TRUSTEDSITE", "--trusted-site (no verification)"),
)


def _tls_hint(exc: TlsError) -> str:
    text = str(exc)
    if exc.reply is not None:
        if exc.is_temporary:
            return "try again later"
        return "the server refuses STARTTLS: ask its administrator, or use --secure-implicit"
    if exc.stage == "starttls" and "does not offer" in text:
        return (
            "check the port (STARTTLS is usually on 587; 465 needs --secure-implicit); "
            "--secure-optional accepts a connection without TLS"
        )
    flags = [flag for name, flag in _TLS_FLAGS if name in text]
    if flags:
        return "on the command line: " + ", ".join(flags)
    if exc.is_temporary:
        return "try again later; `smtpsubmit probe` shows what the server offers"
    return "`smtpsubmit probe` shows what the server offers"


def describe(exc: BaseException, command: str = "smtpsubmit") -> str:
    """One line: what failed, the server's reply (in ``str(exc)``), ``[at stage]``, a hint."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, RecipientsRefused) and exc.refused:
        each = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in exc.refused.items())
        if each not in text:
            text = f"{text} ({each})"
    if isinstance(exc, SmtpError) and exc.stage:
        text = f"{text} [at {exc.stage}]"
    if not isinstance(exc, CliError | SmtpError | MessageError):
        text = f"{type(exc).__name__}: {text}"
    hint = hint_for(exc, command)
    return f"{text}; hint: {hint}" if hint else text
