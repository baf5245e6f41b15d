"""``smtpsubmit worker``: deliver an outbox's mail until stopped.

Routes are the accounts of the account file (§8): every ``[accounts.NAME]``
is the route ``NAME``, and the default account is also the route
``default``. Passwords come from the account (``password_command``,
``password_env``) at start-up and stay in memory only. ``--direct NAME``
adds a route that delivers to the recipients' MX hosts and ``--rate`` sets a
route's RateLimit (:mod:`smtpsubmit.cli.routes`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from smtpsubmit.cli.errors import EX_OK, EX_TEMPFAIL, CliError, ConfigError, UsageError
from smtpsubmit.cli.options import routes_from_accounts
from smtpsubmit.cli.routes import add_route_options, direct_routes, rate_limits

DESCRIPTION = """\
Claim queued messages from the outbox and deliver them, recording each
recipient's outcome as soon as the server answers. Any number of workers may
share one PostgreSQL outbox; a SQLite outbox is shared by the workers of one
machine. SIGTERM (or Ctrl-C) finishes the messages in flight and stops.
"""

EPILOG = """\
examples:
  smtpsubmit worker                                     # the default SQLite outbox
  smtpsubmit worker --outbox postgresql://mail@db/mail --concurrency 8
  smtpsubmit worker --outbox sqlite:///var/spool/app/outbox.db --once   # from cron
  smtpsubmit worker --rate default=100/60 --rate bulk=10/1,recipients=50
  smtpsubmit worker --direct mx           # route `mx` delivers to the recipients' MX hosts

Routes are the accounts of the account file; the default account is also `default`.
"""


def add_outbox_option(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    parser.add_argument(
        "--outbox",
        metavar="URL",
        help="sqlite:///PATH or postgresql://… (default: $SMTPSUBMIT_OUTBOX, else a SQLite "
        "file in the user's data directory)",
        **kwargs,
    )


def outbox_url(args: argparse.Namespace) -> str | None:
    return getattr(args, "outbox", None) or os.environ.get("SMTPSUBMIT_OUTBOX") or None


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="deliver the mail queued in an outbox",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_outbox_option(parser)
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="sending threads (default 4)"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a claim lasts before another worker may take it over (default 60)",
    )
    parser.add_argument("--once", action="store_true", help="stop when nothing is due")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on /metrics (needs the `metrics` extra)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--config", metavar="PATH", help="account file (the routes)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on failure")
    add_route_options(parser)
    parser.set_defaults(run=run)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Outbox database failures as exit codes: a bad URL 64, anything else 75."""
    from smtpsubmit.outbox import StoreError

    try:
        yield
    except StoreError as exc:
        text = str(exc)
        if "URL" in text:
            raise UsageError(text) from None
        raise CliError(text, EX_TEMPFAIL, "is the database reachable and writable?") from None


def open_outbox(args: argparse.Namespace, **kwargs: Any) -> Any:
    """The Outbox for ``--outbox`` (schema created or upgraded when needed)."""
    from smtpsubmit.outbox import Outbox

    with store_errors():
        return Outbox(outbox_url(args), **kwargs)


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.lease <= 0:
        raise UsageError("--lease must be a positive number of seconds")
    accounts = routes_from_accounts(args.config)
    routes: dict[str, Any] = {**accounts, **direct_routes(args, accounts)}
    if not routes:
        raise ConfigError(
            "no routes: the account file defines no accounts",
            hint="add [accounts.NAME] tables (each is a route) and a default, or --direct NAME",
        )
    limits = rate_limits(args, routes)
    outbox = open_outbox(args, routes=routes, lease=args.lease, rate_limits=limits)
    metrics = None
    try:
        if args.metrics_port is not None:
            from smtpsubmit.outbox.metrics import serve_metrics

            try:
                metrics = serve_metrics(outbox, args.metrics_port, args.metrics_host)
            except (RuntimeError, OSError) as exc:
                raise ConfigError(f"--metrics-port: {exc}") from None
        with store_errors():
            outbox.run(concurrency=args.concurrency, stop_when_idle=args.once)
    finally:
        if metrics is not None:
            metrics.shutdown()
        outbox.close()
    return EX_OK
