"""What :class:`Pool` and :class:`AsyncPool` share, with no I/O and no waiting.

- :func:`normalise` turns any accepted item into one :class:`Item`.
- :class:`Slots` is the pool's bookkeeping: idle connections (most recently
  used last, so old ones expire first), how many are open, busy and waited
  for; it says what to do and the drivers do it under their own lock.
- :class:`Jobs` is one call's work: items drawn lazily from the input (so a
  generator of 100,000 messages is never held in memory), retries first, and
  results in input order.
- :func:`verdict` and :func:`settle` are the retry rules, written once:
  ``DeliveryStatusUnknown`` is never retried (the message may have arrived);
  ``ServerDisconnected`` — nothing of the message was accepted — is retried
  once on a freshly opened connection; a rate refusal (see
  :func:`~smtpsubmit.ratelimit.is_rate_refusal`) slows the pool down and is
  retried only when it came before any message data went out.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from smtpsubmit.errors import (
    DeliveryStatusUnknown,
    MessageError,
    PoolTimeout,
    ServerDisconnected,
    SmtpError,
)
from smtpsubmit.message import Message
from smtpsubmit.ratelimit import Grant, RateLimit, is_rate_refusal
from smtpsubmit.result import SubmitResult
from smtpsubmit.server import Server

__all__ = [
    "Conn",
    "Item",
    "Jobs",
    "Outcome",
    "PoolConfig",
    "Slots",
    "hand_over",
    "left_unclean",
    "normalise",
    "streamable",
]

C = TypeVar("C")
Outcome = SubmitResult | SmtpError | MessageError

BATCH = 32  # jobs one connection takes at a time (at most one send_many stream's length)
_BEFORE_DATA = frozenset({"connect", "greeting", "ehlo", "starttls", "auth", "mail", "rcpt"})


@dataclass(slots=True)
class Item:
    """One message to send and its envelope keywords (as ``Client.send`` takes them)."""

    message: Any
    options: dict[str, Any] = field(default_factory=dict)

    def recipient_count(self) -> int:
        recipients = self.options.get("recipients")
        if recipients is not None:
            return 1 if isinstance(recipients, str) else len(list(recipients))
        if isinstance(self.message, Message):
            return len(self.message.envelope_recipients())
        return 1


_ENVELOPE_KEYS = frozenset({"sender", "recipients", "dsn", "progress", "require_tls"})


def normalise(item: object, envelope: dict[str, Any] | None = None) -> Item:
    """A ``Message``, ``(raw, sender, recipients)``, or an object with ``.raw``,
    ``.sender`` and ``.recipients`` — as one :class:`Item` (else ``MessageError``)."""
    options = dict(envelope or {})
    unknown = set(options) - _ENVELOPE_KEYS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if isinstance(item, tuple):
        if len(item) != 3:
            raise MessageError("a ready message is a tuple (raw, sender, recipients)")
        raw, sender, recipients = item
        return Item(raw, {**options, "sender": sender, "recipients": _as_list(recipients)})
    if isinstance(item, Message) or options:
        return Item(item, options)
    if all(hasattr(item, name) for name in ("raw", "sender", "recipients")):
        raw, sender, recipients = item.raw, item.sender, item.recipients  # type: ignore[attr-defined]
        return Item(raw, {"sender": sender, "recipients": _as_list(recipients)})
    if isinstance(item, bytes | bytearray | memoryview) or hasattr(item, "read"):
        return Item(item)  # the client says what is missing (sender= and recipients=)
    raise MessageError(
        "each message must be a Message, a tuple (raw, sender, recipients), or an object "
        f"with .raw, .sender and .recipients, not {type(item).__name__}"
    )


def _as_list(recipients: object) -> list[str] | str:
    if isinstance(recipients, str):
        return recipients
    if not isinstance(recipients, Iterable):
        raise MessageError("recipients must be an address or a sequence of addresses")
    return list(recipients)


@dataclass(eq=False, slots=True)
class Conn(Generic[C]):
    """A pooled client and what the pool knows about it."""

    client: C
    sent: int = 0
    last_used: float = 0.0
    fresh: bool = True  # nothing sent on it yet
    retire: bool = False  # a 421 or another reason never to reuse it


@dataclass(frozen=True, slots=True)
class PoolConfig:
    server: Server
    max_connections: int
    max_messages_per_connection: int
    idle_timeout: float
    acquire_timeout: float
    rate_retries: int

    def __post_init__(self) -> None:
        if not isinstance(self.server, Server):
            raise TypeError(f"a pool needs a Server, not {type(self.server).__name__}")
        for name in ("max_connections", "max_messages_per_connection"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("idle_timeout", "acquire_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_retries < 0:
            raise ValueError("rate_retries must not be negative")


class Slots(Generic[C]):
    """Connection bookkeeping; every method is called with the pool's lock held."""

    def __init__(self, max_connections: int, idle_timeout: float) -> None:
        self.max = max_connections
        self.idle_timeout = idle_timeout
        self.idle: deque[Conn[C]] = deque()
        self.open = 0  # idle + busy (a connection being opened counts as busy)
        self.busy = 0
        self.waiting = 0
        self.closed = False

    def checkout(self, now: float, fresh: bool, to_close: list[Conn[C]]) -> Conn[C] | bool:
        """An idle connection, True (open a new one: its slot is taken), or False (wait).

        ``fresh`` refuses idle connections; when the pool is full it closes the
        oldest idle one to make room. Expired connections go to ``to_close``.
        """
        to_close.extend(self.expire(now))
        if not fresh and self.idle:
            self.busy += 1
            return self.idle.pop()
        if self.open < self.max:
            self.open += 1
            self.busy += 1
            return True
        if fresh and self.idle:
            to_close.append(self.idle.popleft())  # its slot passes to the new connection
            self.busy += 1
            return True
        return False

    def checkin(self, conn: Conn[C], now: float, keep: bool) -> bool:
        """Back to idle (True) or out of the pool (False: the caller closes it)."""
        self.busy -= 1
        if keep and not self.closed:
            conn.last_used = now
            self.idle.append(conn)
            return True
        self.open -= 1
        return False

    def failed_open(self) -> None:
        self.busy -= 1
        self.open -= 1

    def expire(self, now: float) -> list[Conn[C]]:
        expired: list[Conn[C]] = []
        while self.idle and now - self.idle[0].last_used >= self.idle_timeout:
            expired.append(self.idle.popleft())
            self.open -= 1
        return expired

    def next_expiry(self) -> float | None:
        return self.idle[0].last_used + self.idle_timeout if self.idle else None

    def close(self) -> list[Conn[C]]:
        self.closed = True
        idle = list(self.idle)
        self.idle.clear()
        self.open -= len(idle)
        return idle

    def counts(self) -> str:
        return f"open={self.open} idle={len(self.idle)} busy={self.busy} waiting={self.waiting}"


@dataclass(eq=False, slots=True)
class Job:
    index: int
    item: Item
    fresh_retries: int = 0
    rate_retries: int = 0
    needs_fresh: bool = False
    granted_at: float | None = None
    prepaid: bool = False  # its rate token was taken before the call (Pool.reserve)
    grant: Grant | None = None  # its place in the rate window, moved to its reply


class Jobs:
    """One call's work queue and its outcomes. Callers serialise access (a lock for threads).

    Outcomes are handed out in input order as soon as a message and every one
    before it are decided (``ready``); one decided early waits in a small map
    until the gap before it closes. With ``ahead`` set (``send_iter``), at most
    that many messages are drawn from the input and not yet taken by the
    caller: the workers wait for room, so memory stays flat however long the
    input. ``stop`` ends the call early: nothing new is drawn or started.
    """

    def __init__(self, items: Iterable[object], workers: int, ahead: int | None = None) -> None:
        self._source: Iterator[object] | None = iter(items)
        self._retry: deque[Job] = deque()
        self._early: dict[int, Outcome] = {}  # decided before an earlier message
        self.ready: deque[Outcome] = deque()  # decided, in input order, not yet taken
        self.drawn = 0  # items taken from the input: the next item's index
        self.decided = 0  # messages 0 .. decided-1 are in ``ready`` or were taken
        self.taken = 0  # outcomes the caller took (``pop_ready``)
        self.ahead = ahead
        self.stopped = False
        self.active = workers

    @classmethod
    def single(cls, item: Item, granted_at: float | None = None) -> Jobs:
        jobs = cls((), 1)
        jobs._source = None
        jobs.drawn = 1
        jobs._retry.append(Job(0, item, granted_at=granted_at, prepaid=granted_at is not None))
        return jobs

    def full(self) -> bool:
        """Whether drawing another item would run too far ahead of the caller."""
        return self.ahead is not None and self.drawn - self.taken >= self.ahead

    def queued(self) -> bool:
        """Whether a job is waiting now (reads ahead one item, so an empty input opens
        nothing). False with :meth:`exhausted` False: wait until the caller makes room."""
        while not self.stopped and not self._retry and self._source is not None:
            if self.full():
                return False
            job = self._next()
            if job is not None:
                self._retry.append(job)
        return not self.stopped and bool(self._retry)

    def exhausted(self) -> bool:
        """Nothing left to start: the input is drawn and no job is queued, or stopped."""
        return self.stopped or (not self._retry and self._source is None)

    def wants_fresh(self) -> bool:
        return any(job.needs_fresh for job in self._retry)

    def take(self, n: int, fresh: bool) -> list[Job]:
        """Up to ``n`` jobs: retries first; those needing a fresh connection only on one
        (all of them together: a stream lost mid-batch leaves several)."""
        out: list[Job] = []
        if self.stopped:
            return out
        if fresh:
            for job in [job for job in self._retry if job.needs_fresh][:n]:
                self._retry.remove(job)
                out.append(job)
        kept: deque[Job] = deque()
        while self._retry and len(out) < n:
            job = self._retry.popleft()
            (kept if job.needs_fresh else out).append(job)
        kept.extend(self._retry)
        self._retry = kept
        while len(out) < n and self._source is not None and not self.full():
            job_or_none = self._next()
            if job_or_none is not None:
                out.append(job_or_none)
        return out

    def _next(self) -> Job | None:
        if self._source is None:
            return None
        try:
            raw = next(self._source)
        except StopIteration:
            self._source = None
            return None
        index = self.drawn
        self.drawn += 1
        try:
            return Job(index, normalise(raw))
        except MessageError as exc:
            self._decide(index, exc)
            return None

    def requeue(self, job: Job) -> None:
        self._retry.appendleft(job)

    def finish(self, job: Job, outcome: Outcome) -> None:
        self._decide(job.index, outcome)

    def _decide(self, index: int, outcome: Outcome) -> None:
        if index != self.decided:
            self._early[index] = outcome
            return
        self.ready.append(outcome)
        self.decided += 1
        while self.decided in self._early:
            self.ready.append(self._early.pop(self.decided))
            self.decided += 1

    def pop_ready(self) -> list[Outcome]:
        """The outcomes decided in order since the last call; the caller now has them."""
        out = list(self.ready)
        self.ready.clear()
        self.taken += len(out)
        return out

    def done(self) -> bool:
        """Every drawn message is decided and the input is drawn (or the call stopped)."""
        return self.exhausted() and self.decided == self.drawn

    def stop(self) -> None:
        """The caller stopped taking outcomes: start nothing more (in flight ends)."""
        self.stopped = True
        self._source = None

    def unreported(self) -> tuple[int, int]:
        """After a stop: (messages decided but never taken, drawn but never started)."""
        return len(self.ready) + len(self._early), len(self._retry)

    def fail_rest(self, error: SmtpError) -> bool:
        """The last worker gave up: jobs not done get (a copy of) ``error`` as far as the
        caller has room; True once nothing is left."""
        while True:
            batch = self.take(BATCH, fresh=True)
            if not batch:
                return self.exhausted()
            for job in batch:
                self.finish(job, _copy(error))

    def outcomes(self) -> list[Outcome]:
        if self.decided != self.drawn:  # pragma: no cover - a bug in the pool, never a fault
            raise RuntimeError(f"pool lost track of {self.drawn - self.decided} message(s)")
        return self.pop_ready()


def _copy(error: SmtpError) -> SmtpError:
    if isinstance(error, PoolTimeout):
        return PoolTimeout(str(error), stage=error.stage)
    return error


class Verdict(enum.Enum):
    DONE = "done"
    RETRY_FRESH = "retry on a fresh connection"
    RETRY_RATE = "retry after the rate backoff"


def verdict(job: Job, error: SmtpError, rate_retries: int) -> Verdict:
    if isinstance(error, DeliveryStatusUnknown):
        return Verdict.DONE  # may have been delivered: a retry could duplicate it
    if (
        is_rate_refusal(error.reply)
        and error.stage in _BEFORE_DATA
        and job.rate_retries < rate_retries
    ):
        return Verdict.RETRY_RATE
    if isinstance(error, ServerDisconnected) and job.fresh_retries < 1:
        return Verdict.RETRY_FRESH
    return Verdict.DONE


def settle(
    jobs: Jobs, batch: list[Job], outcomes: list[Outcome | None], limit: RateLimit, retries: int
) -> None:
    """Record each job's outcome or queue it again (``None``: it was never tried)."""
    for job, outcome in zip(batch, outcomes, strict=True):
        if outcome is None:
            jobs.requeue(job)
            continue
        delivered(limit, job)  # at the latest; the drivers do it as each reply comes
        slow_down_if_refused(limit, outcome, job.granted_at)
        if isinstance(outcome, SubmitResult):
            jobs.finish(job, outcome)
            continue
        decision = (
            verdict(job, outcome, retries) if isinstance(outcome, SmtpError) else Verdict.DONE
        )
        if decision is Verdict.RETRY_FRESH:
            job.fresh_retries += 1
            job.needs_fresh = True
            jobs.requeue(job)
        elif decision is Verdict.RETRY_RATE:
            job.rate_retries += 1
            job.needs_fresh = False
            job.prepaid = False  # a rate retry waits for a token of its own
            jobs.requeue(job)
        else:
            jobs.finish(job, outcome)


def slow_down_if_refused(limit: RateLimit, outcome: Outcome, granted_at: float | None) -> None:
    """A refusal for sending too fast — of the message or of one of its recipients —
    slows ``limit`` down (see :mod:`smtpsubmit.ratelimit`)."""
    if isinstance(outcome, SubmitResult):
        if any(is_rate_refusal(r) for r in outcome.refused.values()):
            limit.slow_down(granted_at)
    elif isinstance(outcome, SmtpError) and is_rate_refusal(outcome.reply):
        limit.slow_down(granted_at)


def delivered(limit: RateLimit, job: Job) -> None:
    """``job`` was answered now: its place in the rate window moves here (see
    :mod:`smtpsubmit.ratelimit`), so arrivals, not only grants, keep to the limit."""
    if job.grant is not None:
        limit._delivered(job.grant)
        job.grant = None


def streamable(item: Item) -> object | None:
    """What ``Client.send_many`` takes for ``item``, or None: it needs a single ``send``
    (envelope options such as ``dsn=`` or an overridden envelope of a ``Message``)."""
    if not item.options:
        return item.message if isinstance(item.message, Message) else None
    if set(item.options) == {"sender", "recipients"} and not isinstance(item.message, Message):
        return (item.message, item.options["sender"], item.options["recipients"])
    return None


def hand_over(
    conn: Conn[Any], batch: list[Job], limit: RateLimit, alive: Callable[[], bool]
) -> Iterator[object]:
    """Feed ``batch`` to one ``send_many`` stream, lazily, one rate token per message.

    The first job's token is already granted (the driver waited for it); every
    later one is taken only if the limit grants it *now*, so the stream never
    sleeps while a message's final dot waits to ride with the next envelope.
    The feed stops at the first job that would have to wait, that needs a
    single send, or once the connection is lost (the stream then drains its
    input, and a drained job would lose a token and a retry for nothing).
    """
    recipients_limited = limit.recipients is not None
    for n, job in enumerate(batch):
        item = streamable(job.item)
        if item is None:
            return
        if n:
            if not alive() or conn.retire:
                return
            grant = limit._grant(job.item.recipient_count() if recipients_limited else 1)
            if grant is None:
                return
            job.grant, job.granted_at = grant, grant.at
        conn.sent += 1
        conn.fresh = False
        yield item


def session_alive(client: Any) -> bool:
    """Whether the client's session can take another message (read inside a stream)."""
    session = getattr(client, "_session", None)
    return session is not None and not session.closed


def left_unclean(client: Any) -> bool:
    """A stream whose last transaction was refused leaves the server holding state; the
    pool sends the ``RSET`` itself before the connection goes back (the clean-return rule)."""
    session = getattr(client, "_session", None)
    return session is not None and not session.closed and bool(session.needs_reset)


def retire_after(conn: Conn[Any], error: object) -> None:
    """A 421 (or any reply that closed the session) retires the connection."""
    reply = getattr(error, "reply", None)
    if reply is not None and reply.code == 421:
        conn.retire = True


def keep(conn: Conn[Any], connected: bool, max_messages: int) -> bool:
    """The clean-return rule: connected (the session discards broken ones), not retired,
    and under the per-connection message cap."""
    return connected and not conn.retire and conn.sent < max_messages


def describe(kind: str, server: Server, slots: Slots[Any]) -> str:
    """``repr`` of a pool: where it connects and its counts; never credentials."""
    return f"<{kind} {server.host}:{server.effective_port} {slots.counts()}>"


def pool_timeout(config: PoolConfig, slots: Slots[Any]) -> PoolTimeout:
    return PoolTimeout(
        f"no pooled connection became free within {config.acquire_timeout:g} s ({slots.counts()})"
    )
