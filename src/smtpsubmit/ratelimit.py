"""``RateLimit``: one sending rate shared by every connection of a pool.

Servers limit clients per time window (Postfix's anvil counts messages,
recipients and connections per ``anvil_rate_time_unit``; providers do the
same), so a pool must count for all its connections together, not per
connection. The limit is a sliding-window log: a grant is allowed at ``now``
only when the grants of the last ``per`` seconds plus this one stay within the
limit. That is exact — no window of length ``per`` ever holds more than
``messages`` grants, which a plain token bucket (capacity ``messages``) breaks
at a refill boundary, where it lets through up to twice as many — and it
handles weighted grants (a message with five recipients takes five recipient
units) without rounding. Its memory is one entry per grant still inside its
window, so at most the limit (twice that while messages are in flight).

What the server counts is when a message *arrives*, a little after it was let
through, and that delay varies (a burst queued behind itself, a busy server),
so grants spaced correctly can still arrive bunched. A pool therefore moves a
message's entry to the moment its reply came (:meth:`RateLimit._delivered`):
the message holds its place in the window from its grant until ``per``
seconds after its reply. Any ``per`` window of arrivals then holds at most
the limit — for the last message granted among them, every other one was
either still in flight or answered inside that window, so it was counted —
and a grant never delivered simply expires as before.

Adaptive backoff: a 421/450/451/452 whose text says the client is too fast
("too many", "too much", "rate", "throttled") slows the limit down by itself —
every limit is halved per signal (down to 1/64) and all grants pause for 1 s,
2 s, 4 s, … (at most 60 s); each ``recovery`` period without a new signal
undoes one halving. A signal about a grant made before the last slow-down is
not counted again, so four connections refused at once slow the pool once.

:class:`_Limiter` is the whole algorithm, pure and with the clock passed in;
:class:`RateLimit` adds a lock and the two ways to wait (``acquire`` blocks a
thread, ``aacquire`` awaits), so threads and tasks can share one limit.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

from smtpsubmit.reply import Reply

__all__ = ["RateLimit", "is_rate_refusal"]

BACKOFF_FIRST = 1.0  # seconds of pause after the first rate refusal
BACKOFF_MAX = 60.0
MAX_LEVEL = 6  # at most 2**6 = 64 times slower
MIN_RECOVERY = 5.0  # seconds without a signal before one halving is undone
_EPSILON = 1e-6  # the smallest wait reported, so a caller never spins on rounding

RATE_CODES = frozenset({421, 450, 451, 452})
_RATE_TEXT = re.compile(r"too many|too much|too fast|\brate\b|rate-?limit|throttl", re.IGNORECASE)


def is_rate_refusal(reply: Reply | None) -> bool:
    """Whether a reply asks the client to slow down (not a refusal of the message itself)."""
    if reply is None or reply.code not in RATE_CODES:
        return False
    return bool(_RATE_TEXT.search(reply.text))


class _Window:
    """A sliding-window log: at most ``limit`` units in any ``per`` seconds."""

    __slots__ = ("_log", "_total", "limit", "per")

    def __init__(self, limit: int, per: float) -> None:
        self.limit = limit
        self.per = per
        # [time, units counted, units granted], oldest first; an entry moved to a later
        # time (``touch``) keeps its place with 0 units counted.
        self._log: deque[list[float]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        log = self._log
        while log and now - log[0][0] >= self.per:
            entry = log.popleft()
            self._total -= int(entry[1])
            entry[1] = 0

    def wait(self, now: float, cost: int, limit: int) -> float:
        """Seconds until ``cost`` more units fit under ``limit`` (0: they fit now)."""
        self._expire(now)
        excess = self._total + min(cost, limit) - limit
        if excess <= 0:
            return 0.0
        freed = 0
        for stamp, units, _ in self._log:
            freed += int(units)
            if freed >= excess:
                return max(stamp + self.per - now, _EPSILON)
        return max(self._log[-1][0] + self.per - now, _EPSILON)  # pragma: no cover

    def add(self, now: float, cost: int, limit: int) -> list[float]:
        units = min(cost, limit)  # a message above the limit goes alone in its window
        entry = [now, units, units]
        self._log.append(entry)
        self._total += units
        return entry

    def touch(self, entry: list[float], now: float) -> None:
        """Count ``entry``'s units from ``now`` on (its message was just answered).

        Already expired (in flight longer than ``per``), it is counted again from
        now: while in flight it should have counted all along."""
        self._total -= int(entry[1])
        entry[1] = 0
        self._expire(now)
        units = int(entry[2])
        self._log.append([now, units, units])
        self._total += units

    @property
    def used(self) -> int:
        return self._total


class Grant:
    """One message let through: when, and its entries in the windows (to move them)."""

    __slots__ = ("at", "entries")

    def __init__(self, at: float, entries: list[tuple[_Window, list[float]]]) -> None:
        self.at = at
        self.entries = entries


class _Limiter:
    """The rate limit and adaptive backoff as pure logic: every call is given ``now``."""

    def __init__(
        self,
        messages: int | None,
        per: float,
        recipients: int | None = None,
        connections_per_minute: int | None = None,
    ) -> None:
        self.messages = _Window(messages, per) if messages else None
        self.recipients = _Window(recipients, per) if recipients else None
        self.connections = _Window(connections_per_minute, 60.0) if connections_per_minute else None
        self.recovery = max(per, MIN_RECOVERY)
        self._level = 0
        self._last_signal = -math.inf
        self._pause_until = -math.inf

    # -- adaptive state ---------------------------------------------------------------

    def level(self, now: float) -> int:
        """How many halvings apply now (each recovery period undoes one)."""
        if self._level == 0:
            return 0
        undone = int((now - self._last_signal) // self.recovery)
        return max(0, self._level - undone)

    def _scaled(self, window: _Window, now: float) -> int:
        return max(1, window.limit >> self.level(now))

    def signal(self, now: float, granted_at: float | None = None) -> bool:
        """A rate refusal arrived. Returns False when it was already accounted for.

        ``granted_at`` is when the refused request was let through; a request let
        through before the last slow-down does not slow the pool down again.
        """
        if granted_at is not None and granted_at < self._last_signal:
            return False
        self._level = min(self.level(now) + 1, MAX_LEVEL)
        self._last_signal = now
        pause = min(BACKOFF_FIRST * 2 ** (self._level - 1), BACKOFF_MAX)
        self._pause_until = max(self._pause_until, now + pause)
        return True

    def pause_left(self, now: float) -> float:
        return max(0.0, self._pause_until - now)

    # -- grants -------------------------------------------------------------------------

    def reserve_message(self, now: float, recipients: int = 1) -> float:
        """0.0 when a message may go now (and it is counted), else seconds to wait."""
        return self.grant_message(now, recipients)[0]

    def grant_message(self, now: float, recipients: int = 1) -> tuple[float, Grant | None]:
        """As :meth:`reserve_message`, with the grant's entries when it was let through."""
        wait = self.pause_left(now)
        checks = ((self.messages, 1), (self.recipients, max(recipients, 1)))
        for window, cost in checks:
            if window is not None:
                wait = max(wait, window.wait(now, cost, self._scaled(window, now)))
        if wait > 0:
            return wait, None
        entries = [
            (window, window.add(now, cost, self._scaled(window, now)))
            for window, cost in checks
            if window is not None
        ]
        return 0.0, Grant(now, entries)

    def delivered(self, grant: Grant, now: float) -> None:
        """The granted message was answered: it holds its place until ``now + per``."""
        for window, entry in grant.entries:
            window.touch(entry, now)
        grant.entries = []  # once

    def reserve_connection(self, now: float) -> float:
        """0.0 when a new connection may be opened now (and it is counted), else a wait."""
        wait = self.pause_left(now)
        window = self.connections
        if window is not None:
            wait = max(wait, window.wait(now, 1, self._scaled(window, now)))
            if wait == 0:
                window.add(now, 1, self._scaled(window, now))
        return wait


class RateLimit:
    """At most ``messages`` messages (and ``recipients`` recipients) in any ``per``
    seconds, and at most ``connections_per_minute`` new connections in any 60 s,
    for every connection of the pools that share it.

    Give it to :class:`~smtpsubmit.Pool` or :class:`~smtpsubmit.AsyncPool`; one
    instance may serve several pools, threads and tasks at once. A message with
    more recipients than ``recipients`` is let through alone in its window.
    ``clock`` (monotonic seconds) is replaceable for tests.
    """

    def __init__(
        self,
        messages: int,
        per: float,
        *,
        recipients: int | None = None,
        connections_per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_count("messages", messages)
        if recipients is not None:
            _check_count("recipients", recipients)
        if connections_per_minute is not None:
            _check_count("connections_per_minute", connections_per_minute)
        if not isinstance(per, int | float) or not math.isfinite(per) or per <= 0:
            raise ValueError(f"per must be a positive number of seconds, not {per!r}")
        self.messages = messages
        self.per = float(per)
        self.recipients = recipients
        self.connections_per_minute = connections_per_minute
        self._core = _Limiter(messages, self.per, recipients, connections_per_minute)
        self._lock = threading.Lock()
        self._clock = clock

    @classmethod
    def _backoff_only(cls, clock: Callable[[], float] = time.monotonic) -> RateLimit:
        """No limit, only the adaptive backoff: what a pool without a RateLimit uses."""
        self = cls(1, 1.0, clock=clock)
        self.messages = 0
        self._core = _Limiter(None, 1.0)
        return self

    # -- non-blocking core calls --------------------------------------------------------

    def reserve(self, recipients: int = 1) -> float:
        """Count a message now and return 0.0, or return how long to wait (nothing counted)."""
        return self._try(recipients)[0]

    def _try(self, recipients: int) -> tuple[float, float]:
        with self._lock:
            now = self._clock()
            return self._core.reserve_message(now, recipients), now

    def _grant(self, recipients: int = 1) -> Grant | None:
        """A grant now (``reserve`` that keeps the entries for :meth:`_delivered`), or None."""
        with self._lock:
            return self._core.grant_message(self._clock(), recipients)[1]

    def _acquire_grant(self, recipients: int = 1) -> Grant:
        """Block until a message may go (``acquire``, keeping the grant)."""
        while True:
            with self._lock:
                wait, grant = self._core.grant_message(self._clock(), recipients)
            if grant is not None:
                return grant
            time.sleep(wait)

    async def _aacquire_grant(self, recipients: int = 1) -> Grant:
        while True:
            with self._lock:
                wait, grant = self._core.grant_message(self._clock(), recipients)
            if grant is not None:
                return grant
            await asyncio.sleep(wait)

    def _delivered(self, grant: Grant | None) -> None:
        """The message of ``grant`` was answered now (see the module docstring)."""
        if grant is not None and grant.entries:
            with self._lock:
                self._core.delivered(grant, self._clock())

    def reserve_connection(self) -> float:
        with self._lock:
            return self._core.reserve_connection(self._clock())

    def slow_down(self, granted_at: float | None = None) -> bool:
        """Record a rate refusal (see the module docstring); True if it slowed the limit."""
        with self._lock:
            return self._core.signal(self._clock(), granted_at)

    def now(self) -> float:
        """This limit's clock (what ``granted_at`` values are measured on)."""
        return self._clock()

    @property
    def slowdown(self) -> int:
        """The current divisor of every limit (1 when not slowed down)."""
        with self._lock:
            return 1 << self._core.level(self._clock())

    # -- waiting ------------------------------------------------------------------------

    def acquire(self, recipients: int = 1) -> float:
        """Block until a message may go; returns the (clock) time it was let through."""
        while True:
            wait, now = self._try(recipients)
            if wait <= 0:
                return now
            time.sleep(wait)

    async def aacquire(self, recipients: int = 1) -> float:
        """The asyncio form of :meth:`acquire`: awaits instead of blocking the loop."""
        while True:
            wait, now = self._try(recipients)
            if wait <= 0:
                return now
            await asyncio.sleep(wait)

    def acquire_connection(self) -> None:
        while (wait := self.reserve_connection()) > 0:
            time.sleep(wait)

    async def aacquire_connection(self) -> None:
        while (wait := self.reserve_connection()) > 0:
            await asyncio.sleep(wait)

    def __repr__(self) -> str:
        if not self.messages:
            return f"<RateLimit backoff only, slowed down {self.slowdown}x>"
        parts = [f"messages={self.messages}", f"per={self.per:g}"]
        if self.recipients is not None:
            parts.append(f"recipients={self.recipients}")
        if self.connections_per_minute is not None:
            parts.append(f"connections_per_minute={self.connections_per_minute}")
        return f"<RateLimit {' '.join(parts)}, slowed down {self.slowdown}x>"


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
