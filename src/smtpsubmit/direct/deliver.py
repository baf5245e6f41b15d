"""``deliver_direct`` and ``adeliver_direct``: hand a message straight to each recipient
domain's mail exchangers, with MTA-STS and DANE.

The delivery itself is written once, as generator flows in
:mod:`smtpsubmit.direct.flows` that yield requests (a DNS or HTTPS step, open
a session, send, close). The two drivers below carry them out: the blocking
one with :class:`~smtpsubmit.Client`, the asyncio one with
:class:`~smtpsubmit.AsyncClient`, running the blocking DNS and policy steps
(dnspython, the HTTPS fetch; each bounded by ``timeout``) in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import dns.resolver

from smtpsubmit.client import AsyncClient, Client
from smtpsubmit.direct.flows import Call, Connect, Delivery, Flow, T, Transaction
from smtpsubmit.direct.mta_sts import PolicyCache, https_context
from smtpsubmit.direct.resolve import DnsFailure, default_resolver, group_by_domain
from smtpsubmit.direct.result import DirectResult
from smtpsubmit.errors import MessageError, SmtpError, TlsError
from smtpsubmit.message import Message
from smtpsubmit.prepare import MessageInput, check_before_connecting

__all__ = ["adeliver_direct", "deliver_direct"]

DEFAULT_TIMEOUT = 30.0


def deliver_direct(
    message: MessageInput,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    resolver: dns.resolver.Resolver | None = None,
    local_hostname: str | None = None,
    mta_sts: bool = True,
    dane: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    port: int = 25,
    mta_sts_port: int = 443,
    policy_cache: str | Path | PolicyCache | None = None,
    rng: random.Random | None = None,
) -> DirectResult:
    """Deliver ``message`` to each recipient domain's MX hosts (contract §13, docs/direct.md).

    Never raises for a network, DNS or server fault: every recipient ends up
    in ``accepted``, ``refused`` or ``deferred`` of the :class:`DirectResult`.
    Bad input (:class:`MessageError`) and an unreadable ``ca_file``
    (:class:`TlsError`) are raised before any lookup.
    ``resolver`` should be a validating resolver reached over a trusted path
    with the DO bit set (the default resolver sets it), or DANE never applies.
    ``port`` and ``mta_sts_port`` redirect SMTP and the policy fetch for test
    rigs; ``policy_cache`` is a directory (default: the user cache directory);
    ``rng`` orders MX hosts of equal preference.
    """
    run, groups, result = _prepare(locals())
    try:
        for domain, group in groups.items():
            result.domains[domain] = _drive(run.domain(domain, group))
    finally:
        with contextlib.suppress(Exception):
            _drive(run.close())
    return result


async def adeliver_direct(
    message: MessageInput,
    *,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    resolver: dns.resolver.Resolver | None = None,
    local_hostname: str | None = None,
    mta_sts: bool = True,
    dane: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
    port: int = 25,
    mta_sts_port: int = 443,
    policy_cache: str | Path | PolicyCache | None = None,
    rng: random.Random | None = None,
) -> DirectResult:
    """The asyncio form of :func:`deliver_direct`: same arguments, same result.

    SMTP runs on the event loop; each DNS lookup and the policy fetch run in a
    worker thread (``asyncio.to_thread``), bounded by ``timeout``.
    Cancelled, it drops every connection at once (no QUIT: a message being
    sent is never completed) and leaves no task behind; a DNS lookup or policy
    fetch already under way ends in its thread, within ``timeout``.
    """
    run, groups, result = _prepare(locals())
    try:
        for domain, group in groups.items():
            result.domains[domain] = await _adrive(run.domain(domain, group))
    except asyncio.CancelledError:
        for client, _ in run.clients.values():
            cast(AsyncClient, client)._discard()  # abort: nothing buffered goes out
        run.clients.clear()
        raise
    finally:
        with contextlib.suppress(Exception):
            await _adrive(run.close())
    return result


def _prepare(args: dict[str, Any]) -> tuple[Delivery, dict[str, list[str]], DirectResult]:
    """Check the input (before any lookup) and set up one call's delivery."""
    message, sender, recipients = args["message"], args["sender"], args["recipients"]
    check_before_connecting(message, sender, recipients)
    if recipients is not None:
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
    elif isinstance(message, Message):
        rcpts = message.envelope_recipients()
    else:  # pragma: no cover - check_before_connecting requires recipients
        raise MessageError("recipients= is required")
    try:
        groups = group_by_domain(rcpts)
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    try:  # a bad ca_file is configuration: say so before any lookup, as Server does
        https_context(args["ca_file"])
    except (OSError, ssl.SSLError) as exc:
        error = TlsError(
            f"cannot load the CA certificates (ca_file={args['ca_file']!r}): {exc}",
            stage="connect",
        )
        raise error from None
    cache = args["policy_cache"]
    run = Delivery(
        resolver=args["resolver"] or default_resolver(args["timeout"]),
        message=message,
        sender=sender,
        local_hostname=args["local_hostname"],
        mta_sts=args["mta_sts"],
        dane=args["dane"],
        timeout=args["timeout"],
        ca_file=args["ca_file"],
        port=args["port"],
        mta_sts_port=args["mta_sts_port"],
        cache=cache if isinstance(cache, PolicyCache) else PolicyCache(cache),
        rng=args["rng"] or random.Random(),  # noqa: S311 - load spreading, not security
    )
    return run, groups, DirectResult(sender or _sender_of(message), _message_id_of(message))


# -- the two drivers: the only code written twice ----------------------------------------

# What a request may fail with that the flow handles; anything else is a bug and propagates.
_EXPECTED = (SmtpError, DnsFailure)


def _drive(flow: Flow[T]) -> T:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(request, Call):
                value = request.fn(*request.args)
            elif isinstance(request, Connect):
                client = Client(request.server)
                client.connect()
                value = client
            elif isinstance(request, Transaction):
                value = cast(Client, request.client).send(
                    request.message, sender=request.sender, recipients=request.recipients
                )
            else:
                cast(Client, request.client).close()
        except _EXPECTED as exc:
            error = exc


async def _adrive(flow: Flow[T]) -> T:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(request, Call):
                value = await asyncio.to_thread(request.fn, *request.args)
            elif isinstance(request, Connect):
                client = AsyncClient(request.server)
                await client.connect()
                value = client
            elif isinstance(request, Transaction):
                value = await cast(AsyncClient, request.client).send(
                    request.message, sender=request.sender, recipients=request.recipients
                )
            else:
                await cast(AsyncClient, request.client).close()
        except _EXPECTED as exc:
            error = exc


def _sender_of(message: MessageInput) -> str:
    if isinstance(message, Message):
        prepared = message.prepare(allow_8bit=True, smtputf8=message.needs_smtputf8())
        return str(prepared.sender)
    return ""  # pragma: no cover - raw messages require sender=


def _message_id_of(message: MessageInput) -> str | None:
    return str(message.message_id) if isinstance(message, Message) else None
