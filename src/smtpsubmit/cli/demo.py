"""``smtpsubmit demo``: the whole path on this machine, with no configuration.

An aiosmtpd server on 127.0.0.1 (STARTTLS required, AUTH only after TLS,
a certificate from a throw-away CA made by trustme) receives a message
composed and submitted through the public API exactly as a user would:
verified TLS (the demo CA is given as ``ca_file``), a password, a text and
HTML body, an attachment and a Bcc. The masked transcript and what the
server received are printed. Works offline; nothing is written outside a
temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import secrets
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpsubmit.cli.errors import EX_UNAVAILABLE, CliError
from smtpsubmit.cli.options import add_common_options
from smtpsubmit.cli.output import recording

DESCRIPTION = """\
Start an SMTP server on 127.0.0.1 (STARTTLS required, AUTH after TLS, a
certificate made on the fly), submit a multipart message - text, HTML, an
attachment, a Bcc recipient - through STARTTLS and AUTH with the public API,
then print the SMTP transcript (the password shows as ***) and the message as
the server received it. Needs no configuration and no network.
"""

EPILOG = """\
examples:
  smtpsubmit demo
  python -m smtpsubmit demo

The code it runs is the same a program would write:

  from smtpsubmit import Message, Server, Option, submit_message
  from smtpsubmit.message import Attachment
  submit_message(
      Message(sender="Ada <ada@example.org>", to="bob@example.net",
              bcc="archive@example.org", subject="Quarterly numbers",
              text="...", html="<p>...</p>",
              attachments=[Attachment(data=b"...", filename="numbers.csv")]),
      Server("127.0.0.1", "demo", password, port=port, options=Option.SECURE,
             ca_file="demo-ca.pem"))
"""

DEMO_USER = "demo"
SERVER_NAME = "demo.smtpsubmit.test"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="submit a message to an embedded local server and show everything (no setup)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser, json_help=None)
    parser.set_defaults(run=run)


@dataclass
class _Received:
    mail_from: str = ""
    rcpt_tos: list[str] = field(default_factory=list)
    mail_options: list[str] = field(default_factory=list)
    content: bytes = b""
    login: str | None = None


class _Handler:
    def __init__(self) -> None:
        self.messages: list[_Received] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        login = session.auth_data
        received = _Received(
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            list(envelope.mail_options),
            bytes(envelope.original_content or b""),
            login.decode() if isinstance(login, bytes) else login,
        )
        with self.lock:
            self.messages.append(received)
        return "250 2.0.0 OK: queued by the smtpsubmit demo server"


def _start_server(handler: _Handler, password: str, tls_context: Any) -> Any:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == DEMO_USER.encode()
            and secrets.compare_digest(auth_data.password, password.encode())
        )
        return AuthResult(success=True, auth_data=DEMO_USER) if ok else AuthResult(success=False)

    class EphemeralController(Controller):
        """Listen on port 0; learn the real port before aiosmtpd's self-check connects."""

        def _trigger_server(self) -> None:
            listener: Any = self.server
            self.port = listener.sockets[0].getsockname()[1]
            super()._trigger_server()  # type: ignore[no-untyped-call]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        controller = EphemeralController(
            handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname=SERVER_NAME,
            tls_context=tls_context,
            require_starttls=True,
            authenticator=authenticator,
            auth_require_tls=True,
            decode_data=False,
            ready_timeout=10.0,
        )
        controller.start()
    return controller


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        import ssl

        import trustme
        from rich.console import Console
    except ImportError as exc:
        raise CliError(
            f"the demo needs the cli extra ({exc.name} is missing)",
            EX_UNAVAILABLE,
            hint="pip install 'smtpsubmit[cli]'",
        ) from None
    from smtpsubmit import Option, Server, submit_message
    from smtpsubmit.message import Attachment, Message

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd logs its own deprecations
    # aiosmtpd warns about its own deprecated internals from the server thread.
    warnings.filterwarnings("ignore", module="aiosmtpd")
    warnings.filterwarnings("ignore", message=".*login_data is deprecated")
    console = Console(highlight=False)
    password = secrets.token_urlsafe(16)
    ca = trustme.CA(organization_name="smtpsubmit demo CA")
    leaf = ca.issue_cert("127.0.0.1", "localhost", SERVER_NAME)
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(tls_context)
    handler = _Handler()
    with tempfile.TemporaryDirectory(prefix="smtpsubmit-demo-") as tmp:
        ca_file = Path(tmp) / "demo-ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        controller = _start_server(handler, password, tls_context)
        try:
            server = Server(
                "127.0.0.1",
                DEMO_USER,
                password,
                port=controller.port,
                timeout=10,
                options=Option.SECURE,
                ca_file=str(ca_file),
                local_hostname="client.smtpsubmit.test",
            )
            message = Message(
                sender="Ada Lovelace <ada@example.org>",
                to="Bob Example <bob@example.net>",
                bcc="archive@example.org",
                subject="Quarterly numbers \N{EN DASH} smtpsubmit demo",
                text="Hi Bob,\n\nthe numbers are attached.\n\n\N{EM DASH} Ada\n",
                html="<p>Hi Bob,</p><p>the numbers are <b>attached</b>.</p><p>&mdash; Ada</p>",
                attachments=[
                    Attachment(
                        data=b"quarter,revenue\nQ1,100\nQ2,120\nQ3,135\n",
                        filename="numbers.csv",
                        content_type="text/csv",
                    )
                ],
            )
            console.rule("smtpsubmit demo")
            console.print(
                f"server   127.0.0.1:{controller.port} (aiosmtpd, STARTTLS required, "
                "AUTH after TLS)\n"
                f"client   {server!r}\n"
                "message  text + HTML + numbers.csv, To bob@example.net, "
                "Bcc archive@example.org\n"
            )
            with recording() as transcript:
                result = submit_message(message, server)
        finally:
            controller.stop()
    console.rule("transcript (as the library logs it on smtpsubmit.transcript)")
    for line in transcript.lines:
        console.print(line, markup=False)
    console.rule("result")
    console.print(
        f"accepted {', '.join(result.accepted)}; server said {result.reply}; "
        f"{result.size} octets; Message-ID <{result.message_id}>",
        markup=False,
    )
    if not handler.messages:
        raise CliError("the demo server received nothing", EX_UNAVAILABLE)
    _print_received(console, handler.messages[0])
    return 0


def _print_received(console: Any, received: _Received) -> None:
    from rich.table import Table

    console.rule("what the server received")
    console.print(
        f"authenticated as  {received.login}\n"
        f"MAIL FROM         <{received.mail_from}> {' '.join(received.mail_options)}\n"
        f"RCPT TO           {', '.join(f'<{r}>' for r in received.rcpt_tos)}\n"
        f"size              {len(received.content)} octets",
        markup=False,
    )
    parsed = email.message_from_bytes(received.content, policy=email.policy.default)
    headers = Table(title="headers", show_header=False)
    headers.add_column(style="bold")
    headers.add_column(overflow="fold")
    for name, value in parsed.items():
        headers.add_row(name, str(value))
    console.print(headers)
    console.print(
        "Bcc header present: " + ("yes (!)" if "Bcc" in parsed else "no (as it must be)"),
        markup=False,
    )
    parts = Table(title="MIME structure")
    for column in ("part", "type", "encoding", "file", "size"):
        parts.add_column(column, overflow="fold")
    for part, depth in _walk(parsed, 0):
        payload = b"" if part.is_multipart() else part.get_payload(decode=True) or b""
        parts.add_row(
            "  " * depth + ("multipart" if part.is_multipart() else "leaf"),
            part.get_content_type(),
            str(part.get("Content-Transfer-Encoding", "-")),
            part.get_filename() or "-",
            "-" if part.is_multipart() else f"{len(payload)} octets",
        )
    console.print(parts)
    sys.stdout.flush()


def _walk(part: Any, depth: int) -> list[tuple[Any, int]]:
    found = [(part, depth)]
    if part.is_multipart():
        for sub in part.get_payload():
            found += _walk(sub, depth + 1)
    return found
