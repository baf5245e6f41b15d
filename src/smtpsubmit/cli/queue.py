"""``smtpsubmit queue``: look into an outbox and act on single messages.

``list``, ``show ID``, ``stats`` (``--json`` for scripts), ``retry ID``
(a dead letter back to the queue; delivered recipients are not sent
again), ``cancel ID`` (waiting mail only), ``purge`` (dead letters only —
never pending mail, never a prompt) and ``migrate`` (create or upgrade the
schema; the library also does it when it opens an outbox).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from smtpsubmit.cli.errors import EX_OK, CliError, UsageError
from smtpsubmit.cli.worker import add_outbox_option, open_outbox, store_errors

EX_NOTFOUND = 1  # the message is not there, or not in a state that allows the action

DESCRIPTION = """\
Inspect the outbox and act on its messages. `purge` deletes dead letters
(bounced, unknown after a lost reply, cancelled) and, with --sent, delivered
mail; it never touches mail still waiting to be sent and never asks.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "queue",
        help="list, show, retry, cancel or purge outbox messages; stats",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_outbox_option(parser)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    def action(name: str, help_text: str, *, with_id: bool = False) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        add_outbox_option(sub, default=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true", help="JSON on stdout")
        sub.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        if with_id:
            sub.add_argument("id", metavar="ID", help="the outbox id")
        sub.set_defaults(run=run, action=name)
        return sub

    listing = action("list", "messages, oldest first")
    listing.add_argument("--state", action="append", help="only this state (repeatable)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    action("show", "one message and its recipients", with_id=True)
    action("retry", "send a dead letter (or a deferred message) again now", with_id=True)
    action("cancel", "never send this waiting message", with_id=True)
    purge = action("purge", "delete dead letters (never pending mail)")
    purge.add_argument("--sent", action="store_true", help="also delete delivered messages")
    action("stats", "counts per state and route, oldest age, send rate, possible duplicates")
    action("migrate", "create or upgrade the outbox schema")


def run(args: argparse.Namespace) -> int:
    outbox = open_outbox(args)
    try:
        with store_errors():
            return _act(outbox, args)
    finally:
        outbox.close()


def _act(outbox: Any, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        rows = outbox.list_messages(args.state, args.limit)
        _emit(args, rows, _list_table)
    elif action == "show":
        shown = outbox.show(args.id)
        if shown is None:
            raise CliError(f"no message {args.id!r} in the outbox", EX_NOTFOUND)
        _emit(args, shown, _show_table)
    elif action == "stats":
        _emit(args, outbox.stats(), _stats_table)
    elif action in ("retry", "cancel"):
        done = getattr(outbox, action)(args.id)
        if not done:
            allowed = "dead or deferred" if action == "retry" else "waiting (queued or deferred)"
            raise CliError(f"message {args.id!r} is not in the outbox or not {allowed}", 1)
        _emit(args, {"id": args.id, action: True}, lambda d: f"{action}: {args.id}")
    elif action == "purge":
        count = outbox.purge(sent=args.sent)
        _emit(args, {"purged": count}, lambda d: f"purged {count} message(s)")
    else:  # migrate
        version = outbox.store.migrate()
        _emit(args, {"schema_version": version}, lambda d: f"schema version {version}")
    return EX_OK


def _emit(args: argparse.Namespace, data: Any, render: Any) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return
    table = render(data)
    if isinstance(table, str):
        print(table)
        return
    from rich.console import Console

    Console().print(table)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _list_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table("id", "state", "route", "rcpts", "attempts", "created", "retry at", "reason")
    for r in rows:
        table.add_row(
            r["id"],
            r["state"],
            r["route"],
            str(r["recipient_count"]),
            str(r["attempts"]),
            _when(r["created"]),
            _when(r["retry_at"]),
            r["reason"] or "",
        )
    return table if rows else "the outbox is empty"


def _show_table(shown: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        "recipient", "state", "attempts", "reply", title=f"{shown['id']} ({shown['state']})"
    )
    for r in shown["recipients"]:
        reply = r["reply"]
        table.add_row(
            r["address"],
            r["state"],
            str(r["attempts"]),
            f"{reply['code']} {reply['text']}" if reply else "",
        )
    table.caption = (
        f"route {shown['route']}, Message-ID <{shown['message_id']}>, "
        f"created {_when(shown['created'])}, retry at {_when(shown['retry_at'])}"
    )
    return table


def _stats_table(stats: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("state", "messages", title="outbox")
    for state, count in stats["states"].items():
        table.add_row(state, str(count))
    table.caption = (
        f"oldest waiting {stats['oldest_age']:.0f} s, {stats['send_rate']:.2f} msg/s "
        f"(last minute), possible duplicates {stats['possible_duplicates']}"
    )
    return table
