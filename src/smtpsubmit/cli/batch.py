"""``smtpsubmit send --batch PATH``: a directory of ``.eml`` files or an mbox, streamed.

Each ready message takes its envelope from its own header (sendmail ``-t``
semantics: From, To/Cc/Bcc, Bcc removed on the way out) through the library's
strict reader. The messages go out on one connection with
``Client.send_many`` in slices of :data:`SLICE`, so a progress bar can move
between slices while each slice is streamed; a message that cannot be read
or is refused is reported in the summary, never stops the others.
"""

from __future__ import annotations

import argparse
import json
import mailbox
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smtpsubmit.cli.errors import EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, CliError
from smtpsubmit.cli.output import print_transcript_to
from smtpsubmit.client import Client
from smtpsubmit.errors import MessageError, SmtpError
from smtpsubmit.message import Message
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Server

__all__ = ["SLICE", "read_batch", "run_batch"]

SLICE = 200  # messages per send_many call: the progress bar moves between slices

Item = tuple[str, Message | MessageError]


def read_batch(path: Path) -> Iterator[Item]:
    """(name, Message or the MessageError that reading it gave), in a stable order."""
    if path.is_dir():
        for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            yield file.name, _parse(file.read_bytes(), file.name)
    elif path.is_file():
        box = mailbox.mbox(path, create=False)
        try:
            for index, key in enumerate(box.keys(), 1):
                yield f"{path.name}#{index}", _parse(box.get_bytes(key), f"message {index}")
        finally:
            box.close()
    else:
        raise CliError(f"--batch {str(path)!r}: no such directory or mbox file", EX_NOINPUT)


def _parse(raw: bytes, name: str) -> Message | MessageError:
    try:
        return Message.from_bytes(raw)
    except MessageError as exc:
        return MessageError(f"{name}: {exc}")


def run_batch(args: argparse.Namespace, server: Server) -> int:
    """Send every message of ``args.batch``; print a summary; 0 only if all were sent."""
    items = list(read_batch(Path(args.batch)))
    outcomes: list[tuple[str, SubmitResult | SmtpError | MessageError]] = []
    with (
        _Progress(len(items)) as progress,
        print_transcript_to(sys.stderr if args.verbose else None),
    ):
        client = Client(server)
        with client:
            for start in range(0, len(items), SLICE):
                part = items[start : start + SLICE]
                sendable = [m for _, m in part if isinstance(m, Message)]
                results = iter(client.send_many(sendable) if sendable else [])
                for name, message in part:
                    outcome = next(results) if isinstance(message, Message) else message
                    outcomes.append((name, outcome))
                progress.advance(len(part))
    _summary(outcomes, as_json=args.json)
    return _exit_code([o for _, o in outcomes])


def _exit_code(outcomes: list[SubmitResult | SmtpError | MessageError]) -> int:
    failures = [o for o in outcomes if not isinstance(o, SubmitResult)]
    if not failures:
        return EX_OK
    temporary = all(isinstance(f, SmtpError) and f.is_temporary for f in failures)
    return EX_TEMPFAIL if temporary else EX_UNAVAILABLE


def _summary(outcomes: list[tuple[str, Any]], *, as_json: bool) -> None:
    rows = []
    for name, outcome in outcomes:
        if isinstance(outcome, SubmitResult):
            state = "sent" if not outcome.refused else "partly refused"
            detail = f"{len(outcome.accepted)} accepted" + (
                f", {len(outcome.refused)} refused" if outcome.refused else ""
            )
        else:
            state, detail = type(outcome).__name__, str(outcome)
        rows.append({"message": name, "state": state, "detail": detail})
    sent = sum(isinstance(o, SubmitResult) for _, o in outcomes)
    if as_json:
        print(json.dumps({"sent": sent, "failed": len(rows) - sent, "messages": rows}, indent=2))
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - the cli extra brings rich
        for row in rows:
            print(f"{row['message']}\t{row['state']}\t{row['detail']}")
    else:
        table = Table(title=f"{sent} of {len(rows)} message(s) sent")
        for column in ("message", "state", "detail"):
            table.add_column(column)
        for row in rows:
            if row["state"] != "sent" or len(rows) <= 50:  # long runs: list only problems
                table.add_row(row["message"], row["state"], row["detail"])
        Console(file=sys.stdout, soft_wrap=True).print(table)


class _Progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty() and self.total > SLICE:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(file=sys.stderr), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("sending", total=self.total)
        return self

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
