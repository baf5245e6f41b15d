"""The small interface between the outbox and its database, and the values it moves.

The outbox decides (retry policy, which recipients to send, what state a
message ends in); a store only records, atomically, and hands out claims.
Two stores implement it: :mod:`~smtpsubmit.outbox.sqlite` and
:mod:`~smtpsubmit.outbox.postgres`; both run the SQL of
:mod:`~smtpsubmit.outbox.sql`, so the state machine is written once.

States of a recipient: ``queued``, ``sending`` (committed before the first
byte goes out), ``sent``, ``deferred`` (``retry_at`` set), ``bounced``,
``unknown`` (the final answer was lost; ``retry_at`` set while a resend is
planned, NULL when held), ``cancelled``. A message's state summarises its
recipients: ``queued``/``deferred`` (waiting), ``sending`` (under a lease),
``sent``, and the dead letters ``bounced``, ``unknown`` and ``cancelled``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEAD_STATES",
    "PENDING_STATES",
    "Begin",
    "ClaimRequest",
    "Claimed",
    "Finish",
    "NewMessage",
    "Recipient",
    "RecipientUpdate",
    "Record",
    "Store",
    "StoreError",
]

PENDING_STATES = ("queued", "deferred")
DEAD_STATES = ("bounced", "unknown", "cancelled")
MESSAGE_STATES = ("queued", "deferred", "sending", "sent", *DEAD_STATES)


class StoreError(Exception):
    """The outbox database could not do what was asked (unreachable, read-only,
    full, newer schema, unknown URL). Nothing was recorded as accepted."""


@dataclass(frozen=True)
class NewMessage:
    """A rendered message and its envelope, ready to be stored once."""

    id: str
    route: str
    sender: str
    recipients: Sequence[str]
    body: bytes
    checksum: str
    message_id: str | None
    priority: int
    due: float
    created: float
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Recipient:
    position: int
    address: str
    state: str
    attempts: int
    unknowns: int
    retry_at: float | None


@dataclass(frozen=True)
class Claimed:
    """A message leased to one worker."""

    id: str
    route: str
    sender: str
    body: bytes
    checksum: str
    message_id: str | None
    created: float
    attempts: int
    recipients: list[Recipient] = field(default_factory=list)


@dataclass(frozen=True)
class Begin:
    """About to send ``message`` to the recipients at ``positions``."""

    message: str
    owner: str
    positions: Sequence[int]
    now: float
    lease: float


@dataclass(frozen=True)
class RecipientUpdate:
    position: int
    state: str
    retry_at: float | None = None
    reply_code: int | None = None
    reply_text: str | None = None
    unknown: bool = False  # this outcome was a lost reply (counts toward on_unknown)


@dataclass(frozen=True)
class Finish:
    """The outcome of one attempt: per-recipient updates and the message's new state."""

    message: str
    owner: str
    updates: Sequence[RecipientUpdate]
    state: str
    due: float
    reason: str | None
    now: float


@dataclass(frozen=True)
class ClaimRequest:
    """Lease up to ``limit`` due messages to ``owner`` until ``now + lease``."""

    owner: str
    limit: int
    now: float
    lease: float


#: What one message's passage through a worker writes: an outcome, a ``sending``, or both.
Record = tuple[Finish | None, Begin | None]


class Store(abc.ABC):
    """What the outbox needs from a database; every method commits before returning."""

    #: How long an idle worker waits before looking again when nothing wakes it.
    poll_interval = 1.0

    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; return its version."""

    @abc.abstractmethod
    def insert(self, messages: Sequence[NewMessage], connection: Any = None) -> list[str]:
        """Store messages; an existing idempotency key yields the first id.

        With ``connection`` the rows go into the caller's open transaction
        (and nothing is committed here).
        """

    @abc.abstractmethod
    def commit_group(
        self, records: Sequence[Record], claims: Sequence[ClaimRequest]
    ) -> tuple[list[tuple[bool, bool]], list[list[Claimed]]]:
        """One transaction (one durable commit) for many messages.

        First, for each ``(finish, begin)`` record in order: record a message's outcomes
        and release its lease, then mark another message's recipients ``sending`` and
        renew its lease; each part of each result is False when that message's lease was
        lost (nothing of it is then written). The records name distinct messages
        (:mod:`~smtpsubmit.outbox.commit` groups them). Then each claim: lease up to
        ``limit`` due messages (and expired leases) to ``owner``; recipients a dead
        worker left in ``sending`` become ``unknown``.
        """

    def claim(self, owner: str, limit: int, now: float, lease: float) -> list[Claimed]:
        return self.commit_group([], [ClaimRequest(owner, limit, now, lease)])[1][0]

    def record_many(self, records: Sequence[Record]) -> list[tuple[bool, bool]]:
        return self.commit_group(records, [])[0]

    def record(self, finish: Finish | None, begin: Begin | None) -> tuple[bool, bool]:
        return self.record_many([(finish, begin)])[0]

    def finish(self, finish: Finish) -> bool:
        return self.record(finish, None)[0]

    def begin_send(self, begin: Begin) -> bool:
        return self.record(None, begin)[1]

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """When the next waiting message becomes due (None: nothing waits)."""

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Block up to ``timeout`` s, until new mail may be there, or until ``stop`` is set
        (plain polling by default)."""
        stop.wait(max(0.0, timeout))

    @abc.abstractmethod
    def stats(self, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    def list_messages(self, states: Sequence[str] | None, limit: int) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def show(self, message: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def retry(self, message: str, now: float) -> bool: ...

    @abc.abstractmethod
    def cancel(self, message: str, now: float) -> bool: ...

    @abc.abstractmethod
    def purge(self, *, sent: bool = False) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...
