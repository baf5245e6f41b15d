"""``smtpsubmit worker``'s route options: ``--rate`` (a route's RateLimit) and ``--direct``.

Routes are the accounts of the account file; these flags add what an account
cannot say. ``--rate ROUTE=N/SECONDS[,recipients=N][,connections=N]`` is the
route's :class:`~smtpsubmit.RateLimit` (at most N messages in any SECONDS,
optionally at most that many recipients in the same window and new
connections per minute), shared by every thread of the worker; a relay's
own limits (Postfix's anvil, a provider's quota) are what it mirrors.
``--direct NAME`` makes ``NAME`` a route that delivers straight to the
recipients' MX hosts (:class:`~smtpsubmit.outbox.DirectRoute`), with the
direct-delivery flags of ``smtpsubmit send --direct``.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from smtpsubmit.cli.errors import UsageError
from smtpsubmit.ratelimit import RateLimit

__all__ = ["add_route_options", "direct_routes", "rate_limits"]

_RATE = re.compile(r"(?P<route>[^=\s]+)=(?P<count>\d+)/(?P<per>[0-9.]+)(?P<extra>(,[^,]*)*)")
_EXTRA = {"recipients": "recipients", "connections": "connections_per_minute"}
RATE_FORMAT = "ROUTE=N/SECONDS[,recipients=N][,connections=N]"


def add_route_options(parser: argparse.ArgumentParser) -> None:
    routes = parser.add_argument_group("routes (beyond the accounts of the account file)")
    routes.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar=RATE_FORMAT,
        help="at most N messages in any SECONDS on ROUTE (and optionally N recipients in the "
        "same window, N new connections per minute); repeatable, one per route",
    )
    routes.add_argument(
        "--direct",
        action="append",
        default=[],
        metavar="NAME",
        help="route NAME delivers straight to each recipient domain's MX hosts (no relay; "
        "MTA-STS and DANE applied); repeatable",
    )
    direct = parser.add_argument_group("direct routes")
    direct.add_argument(
        "--dns-server",
        metavar="ADDR[:PORT]",
        help="ask this (validating) resolver instead of the system's",
    )
    direct.add_argument("--no-mta-sts", action="store_true", help="ignore MTA-STS policies")
    direct.add_argument("--no-dane", action="store_true", help="ignore DANE TLSA records")
    direct.add_argument(
        "--mta-sts-cache", metavar="DIR", help="MTA-STS policy cache (default: user cache dir)"
    )
    direct.add_argument(
        "--ca-file", metavar="PEM", help="trust for MTA-STS and verified MX TLS (default: system)"
    )
    direct.add_argument("--local-hostname", metavar="NAME", help="name sent with EHLO")
    direct.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=30.0, help="per-reply timeout (30)"
    )
    direct.add_argument(
        "--mx-port", metavar="N", type=int, default=25, help="port of the MX hosts (25; test rigs)"
    )
    direct.add_argument(
        "--mta-sts-port", metavar="N", type=int, default=443, help="port of the policy fetch (443)"
    )


def parse_rate(text: str) -> tuple[str, RateLimit]:
    """``ROUTE=N/SECONDS[,recipients=N][,connections=N]`` → (route, RateLimit)."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"--rate {text!r}: expected {RATE_FORMAT}",
            hint="e.g. --rate default=100/60 (100 messages a minute on the route `default`)",
        )
    kwargs: dict[str, Any] = {}
    for item in filter(None, match["extra"].split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in _EXTRA or not value.strip().isdigit():
            raise UsageError(
                f"--rate {text!r}: {item!r} is not recipients=N or connections=N",
                hint=f"expected {RATE_FORMAT}",
            )
        kwargs[_EXTRA[key.strip()]] = int(value)
    try:
        per = float(match["per"])
        if not math.isfinite(per):
            raise ValueError(f"per must be a positive number of seconds, not {per!r}")
        return match["route"], RateLimit(int(match["count"]), per, **kwargs)
    except ValueError as exc:
        raise UsageError(f"--rate {text!r}: {exc}") from None


def rate_limits(args: argparse.Namespace, routes: dict[str, Any]) -> dict[str, RateLimit]:
    """Every ``--rate``, checked against the worker's routes."""
    limits: dict[str, RateLimit] = {}
    for text in args.rate:
        route, limit = parse_rate(text)
        if route not in routes:
            known = ", ".join(sorted(routes)) or "none"
            raise UsageError(f"--rate {text!r}: no route {route!r} (routes: {known})")
        if route in limits:
            raise UsageError(f"--rate: route {route!r} is given twice")
        limits[route] = limit
    return limits


def direct_routes(args: argparse.Namespace, accounts: dict[str, Any]) -> dict[str, Any]:
    """The ``--direct`` routes, with the direct-delivery flags."""
    from smtpsubmit.cli.mx import resolver_for
    from smtpsubmit.outbox import DirectRoute

    routes: dict[str, Any] = {}
    for name in args.direct:
        if name in accounts:
            raise UsageError(
                f"--direct {name!r}: {name!r} is already an account of the account file",
                hint="pick another name for the direct route",
            )
        routes[name] = DirectRoute(
            resolver=resolver_for(args.dns_server, args.timeout),
            local_hostname=args.local_hostname,
            mta_sts=not args.no_mta_sts,
            dane=not args.no_dane,
            timeout=args.timeout,
            ca_file=args.ca_file,
            policy_cache=args.mta_sts_cache,
            port=args.mx_port,
            mta_sts_port=args.mta_sts_port,
        )
    return routes
