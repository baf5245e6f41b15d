"""``Outbox``: hand a message over now, have it delivered later, exactly once where SMTP allows.

``enqueue`` renders the message once (its bytes, Message-ID included, are what
every retry sends) and returns only after the database committed it.
Delivery is the worker's job (:mod:`smtpsubmit.outbox.worker`); this module
owns the decisions a worker applies to each claimed message — which
recipients to (re)send, what their outcomes mean under the
:class:`~smtpsubmit.outbox.retry.RetryPolicy`, and what state the message is
in afterwards — so the stores only record.

Routes map a name to a :class:`~smtpsubmit.Server` (or to direct delivery,
:mod:`smtpsubmit.outbox.direct_route`); only the name is stored, so no
password ever reaches the database.
"""

from __future__ import annotations

import email.utils
import logging
import random as _random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from smtpsubmit.envelope import check_envelope_address
from smtpsubmit.errors import MessageError, RecipientsRefused
from smtpsubmit.message import Message
from smtpsubmit.outbox.direct_route import (
    DIRECT,
    DIRECT_MARKER,
    DirectRoute,
    DirectSent,
    DomainBackoff,
    hold_back,
)
from smtpsubmit.outbox.retry import Decision, Outcome, RetryPolicy, classify
from smtpsubmit.outbox.state import checksum
from smtpsubmit.outbox.store import (
    Claimed,
    NewMessage,
    Recipient,
    RecipientUpdate,
    Store,
    StoreError,
)
from smtpsubmit.ratelimit import RateLimit
from smtpsubmit.reply import Reply
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Server
from smtpsubmit.transports import split_item

__all__ = ["Outbox", "open_store"]

log = logging.getLogger("smtpsubmit.outbox")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]{1,500})>", re.IGNORECASE | re.MULTILINE)
Clock = Callable[[], float]


def open_store(url: str | None) -> Store:
    """The store for an outbox URL (``sqlite:…`` or ``postgresql://…``)."""
    from smtpsubmit.outbox import sqlite

    if url is None:
        return sqlite.SqliteStore(sqlite.default_path())
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return sqlite.SqliteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from smtpsubmit.outbox.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        f"unknown outbox URL scheme {scheme or url!r}: use sqlite:///PATH or postgresql://…"
    )


class Outbox:
    """A durable queue of outgoing mail in SQLite (default) or PostgreSQL.

    A route is a :class:`~smtpsubmit.Server`, the name of an account of the
    account file (``config``, else the default path; needs the ``cli`` extra),
    or :data:`~smtpsubmit.outbox.DIRECT` (also written ``"direct"``) or a
    :class:`~smtpsubmit.outbox.DirectRoute`: delivery straight to each
    recipient domain's MX hosts, with per-domain backoff.
    Workers send through one :class:`~smtpsubmit.Pool` per route;
    ``rate_limits`` maps a route name to the ``RateLimit`` of that pool.
    ``clock`` (wall-clock seconds) and ``random`` (the jitter draw) are
    injectable so tests can drive expiry and backoff without waiting.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        routes: Mapping[str, Server | DirectRoute | str] | None = None,
        rate_limits: Mapping[str, RateLimit] | None = None,
        policy: RetryPolicy | None = None,
        lease: float = 60.0,
        config: str | None = None,
        clock: Clock = time.time,
        random: Callable[[], float] = _random.random,
        migrate: bool = True,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be a positive number of seconds")
        self.url = url
        self.routes = _resolve_routes(routes, config)
        self.rate_limits = _check_rate_limits(rate_limits, self.routes)
        self.policy = policy or RetryPolicy()
        self.lease = float(lease)
        self.clock = clock
        self.random = random
        # The domains of direct routes whose MX hosts are all failing (per process).
        self.direct_backoff = DomainBackoff()
        self.store = open_store(url)
        if migrate and not getattr(self.store, "read_only", False):
            self.store.migrate()

    # ---- enqueue

    def enqueue(
        self,
        message: Message | bytes,
        *,
        route: str = "default",
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        not_before: datetime | float | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> str:
        """Store one message; the id is returned only once it is durable.

        With ``connection`` (your own ``sqlite3``/psycopg connection, inside
        your transaction) the message is written in that transaction: it is
        sent if and only if you commit.
        """
        item = self.prepare(
            message,
            route=route,
            sender=sender,
            recipients=recipients,
            not_before=not_before,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        return self.store.insert([item], connection)[0]

    async def aenqueue(
        self,
        message: Message | bytes,
        *,
        route: str = "default",
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        not_before: datetime | float | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> str:
        """:meth:`enqueue` for asyncio: ``connection`` may be a ``psycopg.AsyncConnection``
        (written in its transaction); without one the write runs in a thread."""
        import asyncio

        from smtpsubmit.outbox.ainsert import ainsert

        item = self.prepare(
            message,
            route=route,
            sender=sender,
            recipients=recipients,
            not_before=not_before,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        if connection is not None:
            return (await ainsert(self, [item], connection))[0]
        return (await asyncio.to_thread(self.store.insert, [item]))[0]

    def enqueue_many(
        self,
        messages: Iterable[Message | bytes],
        *,
        route: str = "default",
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        not_before: datetime | float | None = None,
        priority: int = 0,
        connection: Any = None,
    ) -> list[str]:
        """Store many messages in one transaction (all or none); ids in input order."""
        fixed = list(recipients) if recipients is not None else None
        items = [
            self.prepare(
                m,
                route=route,
                sender=sender,
                recipients=fixed,
                not_before=not_before,
                priority=priority,
            )
            for m in messages
        ]
        return self.store.insert(items, connection) if items else []

    def send(self, message: Message | bytes, **envelope: Any) -> SubmitResult:
        """Enqueue, as a :class:`~smtpsubmit.Transport`: the result says "queued as ID".

        ``envelope`` takes ``sender``, ``recipients`` and :meth:`enqueue`'s other
        keywords. ``accepted`` lists the recipients the outbox took on; what the
        server says later is in :meth:`show`.
        """
        item = self.prepare(message, **envelope)
        (queued,) = self.store.insert([item], None)
        reply = Reply(250, f"2.0.0 queued as {queued}", "2.0.0")
        return SubmitResult(
            item.message_id, item.sender, list(item.recipients), {}, reply, len(item.body)
        )

    def send_many(self, messages: Iterable[Any]) -> list[SubmitResult | MessageError]:
        """Enqueue each item (a Message, or ``(raw, sender, recipients)``); errors as values."""
        results: list[SubmitResult | MessageError] = []
        for item in messages:
            try:
                message, envelope = split_item(item)
                if not isinstance(message, Message | bytes):
                    raise MessageError("the outbox takes a Message or the message's bytes")
                results.append(self.send(message, **envelope))
            except MessageError as exc:
                results.append(exc)
        return results

    def prepare(
        self,
        message: Message | bytes,
        *,
        route: str = "default",
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        not_before: datetime | float | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
    ) -> NewMessage:
        """Render a message and its envelope into the row that ``enqueue`` stores."""
        if self.routes is not None and route not in self.routes:
            known = ", ".join(sorted(self.routes)) or "none"
            raise ValueError(f"no route {route!r} in this outbox (routes: {known})")
        body, env_sender, env_recipients, message_id = _render(message, sender, recipients)
        now = self.clock()
        due = now if not_before is None else _timestamp(not_before)
        return NewMessage(
            id=uuid.uuid4().hex,
            route=route,
            sender=env_sender,
            recipients=env_recipients,
            body=body,
            checksum=checksum(body),
            message_id=message_id,
            priority=int(priority),
            due=due,
            created=now,
            idempotency_key=idempotency_key,
        )

    # ---- operations

    def stats(self) -> dict[str, Any]:
        """Counts per state and route, the oldest waiting age, the send rate and
        how many resends may have duplicated a message (contract §10)."""
        return self.store.stats(self.clock())

    def list_messages(
        self, states: Sequence[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self.store.list_messages(states, limit)

    def show(self, message: str) -> dict[str, Any] | None:
        return self.store.show(message)

    def retry(self, message: str) -> bool:
        """Requeue a dead letter now; its delivered recipients are not sent again."""
        return self.store.retry(message, self.clock())

    def cancel(self, message: str) -> bool:
        return self.store.cancel(message, self.clock())

    def purge(self, *, sent: bool = False) -> int:
        """Delete dead letters (``sent=True``: delivered mail too); never pending mail."""
        return self.store.purge(sent=sent)

    def run(
        self, concurrency: int = 4, *, stop_when_idle: bool = False, batch_size: int = 32
    ) -> None:
        """Deliver queued mail with ``concurrency`` threads until SIGTERM (or idle).

        Each thread claims ``batch_size`` messages and streams those bound for one
        server on one pooled connection; all threads' records share commits. The
        defaults (4 x 32) were the best rate on 2 cores; raise ``concurrency`` for
        direct routes, whose messages go one at a time per thread."""
        from smtpsubmit.outbox.worker import Worker

        Worker(self, concurrency=concurrency, batch_size=batch_size).run(
            stop_when_idle=stop_when_idle
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        routes = sorted(self.routes) if self.routes is not None else None
        return f"<Outbox {type(self.store).__name__} routes={routes}>"

    # ---- the decisions a worker applies

    def plan(self, claimed: Claimed, now: float) -> tuple[list[Recipient], list[RecipientUpdate]]:
        """Which recipients to send now, and decisions taken without sending
        (a lost reply held, or expired, under the policy)."""
        age = now - claimed.created
        send: list[Recipient] = []
        decided: list[RecipientUpdate] = []
        for r in claimed.recipients:
            if r.state == "queued" or (
                r.state == "deferred" and r.retry_at is not None and r.retry_at <= now
            ):
                send.append(r)
            elif r.state == "unknown" and r.retry_at is not None:
                decision = self.policy.decide(
                    Outcome.UNKNOWN, r.attempts, age, unknowns=r.unknowns, random=self.random
                )
                if decision.action != "retry":
                    decided.append(_dead(r.position, decision))
                elif r.retry_at <= now:
                    send.append(r)
        if send and isinstance((self.routes or {}).get(claimed.route), DirectRoute):
            send, held = hold_back(self, claimed, send, now)
            decided += held
        return send, decided

    def outcomes(
        self,
        claimed: Claimed,
        sent_to: Sequence[Recipient],
        result: SubmitResult | BaseException,
        now: float,
    ) -> list[RecipientUpdate]:
        """Per-recipient results of one attempt, with the policy's decision for failures."""
        age = now - claimed.created
        updates: list[RecipientUpdate] = []
        for r in sent_to:
            if isinstance(result, DirectSent):  # each domain had its own transaction
                failure_of = result.failure(r.address)
                if failure_of is None:
                    reply = result.reply_for(r.address)
                    updates.append(
                        RecipientUpdate(r.position, "sent", None, reply.code, reply.text)
                    )
                else:
                    updates.append(self._failed(r, failure_of, age, now))
                continue
            if isinstance(result, SubmitResult):
                if r.address not in result.refused:  # the data was taken for every other one
                    reply = result.reply
                    updates.append(
                        RecipientUpdate(r.position, "sent", None, reply.code, reply.text)
                    )
                    continue
                failure: BaseException | Reply = result.refused[r.address]
            elif isinstance(result, RecipientsRefused) and r.address in result.refused:
                failure = result.refused[r.address]
            else:
                failure = result
            updates.append(self._failed(r, failure, age, now))
        return updates

    def _failed(
        self, r: Recipient, failure: BaseException | Reply, age: float, now: float
    ) -> RecipientUpdate:
        outcome = classify(failure)
        unknowns = r.unknowns + (outcome is Outcome.UNKNOWN)
        reply = failure if isinstance(failure, Reply) else getattr(failure, "reply", None)
        code = reply.code if isinstance(reply, Reply) else None
        text = reply.text if isinstance(reply, Reply) else str(failure)
        decision = self.policy.decide(
            outcome, r.attempts + 1, age, unknowns=unknowns, random=self.random
        )
        is_unknown = outcome is Outcome.UNKNOWN
        if decision.action == "retry":
            state = "unknown" if is_unknown else "deferred"
            return RecipientUpdate(r.position, state, now + decision.delay, code, text, is_unknown)
        state = "unknown" if decision.action == "hold" else "bounced"
        if decision.reason == "expired":
            text = f"expired after {age:.0f} s: {text}"
        return RecipientUpdate(r.position, state, None, code, text, is_unknown)


def _check_rate_limits(
    limits: Mapping[str, RateLimit] | None, routes: dict[str, Server | DirectRoute] | None
) -> dict[str, RateLimit]:
    """Route name -> its limit; kept in the process like the servers, never in the database."""
    checked = dict(limits or {})
    for name, limit in checked.items():
        if not isinstance(limit, RateLimit):
            raise TypeError(f"rate limit of route {name!r} must be a RateLimit")
        if routes is not None and name not in routes:
            raise ValueError(f"rate limit for {name!r}, which is not a route of this outbox")
    return checked


def _resolve_routes(
    routes: Mapping[str, Server | DirectRoute | str] | None, config: str | None
) -> dict[str, Server | DirectRoute] | None:
    if routes is None:
        return None
    resolved: dict[str, Server | DirectRoute] = {}
    for name, server in routes.items():
        if isinstance(server, DirectRoute):
            resolved[name] = server
            continue
        if server == DIRECT_MARKER:  # contract §13: "routes of the outbox may be direct"
            resolved[name] = DIRECT
            continue
        if isinstance(server, str):
            from smtpsubmit.cli.errors import CliError
            from smtpsubmit.cli.options import server_for_account

            try:
                server = server_for_account(server, config)
            except CliError as exc:
                raise ValueError(f"route {name!r}: {exc}") from None
        if not isinstance(server, Server):
            raise TypeError(
                f"route {name!r} must be a Server, DIRECT or an account name, "
                f"not {type(server).__name__}"
            )
        resolved[name] = server
    return resolved


def _dead(position: int, decision: Decision) -> RecipientUpdate:
    state = "unknown" if decision.action == "hold" else "bounced"
    return RecipientUpdate(position, state, None, None, decision.reason)


def _render(
    message: Message | bytes, sender: str | None, recipients: Iterable[str] | None
) -> tuple[bytes, str, list[str], str | None]:
    """Bytes, envelope sender, envelope recipients and Message-ID, fixed once."""
    if isinstance(message, Message):
        body = message.as_bytes()
        env_sender = sender or email.utils.parseaddr(message.sender)[1] or message.sender
        env_recipients = list(recipients) if recipients is not None else None
        if env_recipients is None:
            env_recipients = message.envelope_recipients()
        message_id: str | None = message.message_id
    elif isinstance(message, bytes | bytearray | memoryview):
        body = bytes(message)
        if sender is None or recipients is None:
            raise MessageError("a ready message (bytes) needs sender= and recipients=")
        env_sender, env_recipients = sender, list(recipients)
        match = _MESSAGE_ID.search(body.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
        message_id = match[1].decode("ascii", "replace") if match else None
    else:
        raise MessageError(f"the outbox takes a Message or bytes, not {type(message).__name__}")
    if not env_recipients:
        raise MessageError("the message has no recipients")
    # Stored in their wire form, so the session's per-recipient results match them exactly;
    # a bad address fails here, at enqueue, not days later in a worker.
    env_sender = check_envelope_address(env_sender, sender=True)[0]
    env_recipients = list(dict.fromkeys(check_envelope_address(a)[0] for a in env_recipients))
    return body, env_sender, env_recipients, message_id


def _timestamp(value: datetime | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("not_before must be timezone-aware (e.g. datetime.now(UTC))")
        return value.timestamp()
    return float(value)
