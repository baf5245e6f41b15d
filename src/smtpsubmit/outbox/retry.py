"""The retry policy of the outbox: what to do after one delivery attempt.

A pure function of (outcome, attempt, age) — no clock, no database, no
randomness of its own (the jitter draw is passed in) — so every branch is
unit-tested without waiting. The worker supplies the age from the wall
clock (expiry is a calendar matter: RFC 5321 §4.5.4.1 says give up after
4-5 days) and turns the returned *delay* (a duration) into a ``retry_at``.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from smtpsubmit.errors import DeliveryStatusUnknown, SmtpError
from smtpsubmit.reply import Reply

__all__ = ["Decision", "Outcome", "RetryPolicy", "classify"]

FOUR_DAYS = 4 * 24 * 3600.0


class Outcome(enum.Enum):
    """How one attempt ended for one recipient, as far as retrying is concerned."""

    TRANSIENT = "transient"  # 4xx, timeout, connection lost before the final dot
    PERMANENT = "permanent"  # 5xx, bad message: retrying cannot help
    UNKNOWN = "unknown"  # the final dot's answer was lost: maybe delivered


# Failures before the mail transaction (connecting, TLS, authentication) say nothing about
# the message: the route is broken, and the message waits for it (up to max_age) instead of
# bouncing — a wrong password or an expired certificate must not empty the queue.
SESSION_STAGES = frozenset({"connect", "greeting", "ehlo", "starttls", "auth"})


def classify(error: SmtpError | Reply | BaseException) -> Outcome:
    """Map an error or a refusing reply to an :class:`Outcome`."""
    if isinstance(error, DeliveryStatusUnknown):
        return Outcome.UNKNOWN
    if isinstance(error, Reply):
        return Outcome.TRANSIENT if error.is_temporary else Outcome.PERMANENT
    if isinstance(error, SmtpError) and error.stage in SESSION_STAGES:
        return Outcome.TRANSIENT
    if isinstance(error, SmtpError):
        return Outcome.TRANSIENT if error.is_temporary else Outcome.PERMANENT
    return Outcome.PERMANENT  # bad input (MessageError) cannot get better by waiting


@dataclass(frozen=True)
class Decision:
    """``action`` is ``"retry"`` (after ``delay`` seconds), ``"bounce"`` (dead
    letter, permanent or expired) or ``"hold"`` (dead letter, maybe delivered)."""

    action: str
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, a maximum age, and a rule for lost replies.

    ``on_unknown="retry-once"`` resends a message whose final answer was lost
    once, byte-identical (same Message-ID, so receivers can de-duplicate);
    ``"hold"`` parks it as a dead letter for a person to decide.
    """

    first_delay: float = 60.0
    max_delay: float = 3600.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_age: float | timedelta = FOUR_DAYS
    on_unknown: str = "retry-once"

    def __post_init__(self) -> None:
        if isinstance(self.max_age, timedelta):
            object.__setattr__(self, "max_age", self.max_age.total_seconds())
        if self.on_unknown not in ("retry-once", "hold"):
            raise ValueError('on_unknown must be "retry-once" or "hold"')
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.first_delay < 0 or self.max_delay < self.first_delay or self.multiplier < 1.0:
            raise ValueError("need 0 <= first_delay <= max_delay and multiplier >= 1")
        if self.max_age_seconds <= 0:
            raise ValueError("max_age must be positive")

    @property
    def max_age_seconds(self) -> float:
        age = self.max_age
        return age.total_seconds() if isinstance(age, timedelta) else float(age)

    def backoff(self, attempt: int, draw: float) -> float:
        """The delay after failed attempt number ``attempt`` (1-based); ``draw`` in [0, 1)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** max(0, attempt - 1))
        return base * (1.0 + self.jitter * (2.0 * draw - 1.0))

    def decide(
        self,
        error: SmtpError | Reply | BaseException | Outcome,
        attempt: int,
        age: float,
        *,
        unknowns: int = 0,
        random: Callable[[], float] = _random.random,
    ) -> Decision:
        """What to do after attempt ``attempt`` failed with ``error``, ``age``
        seconds after the message was enqueued.

        ``unknowns`` counts the lost-reply outcomes of this recipient so far,
        this one included; ``random`` is the jitter source (tests pin it).
        """
        outcome = error if isinstance(error, Outcome) else classify(error)
        if outcome is Outcome.PERMANENT:
            return Decision("bounce", reason="permanent failure")
        if outcome is Outcome.UNKNOWN:
            if self.on_unknown == "hold" or unknowns > 1:
                return Decision("hold", reason="delivery status unknown")
            if age >= self.max_age_seconds:
                return Decision("bounce", reason="expired")
            return Decision("retry", 0.0, "delivery status unknown: resent once")
        remaining = self.max_age_seconds - age
        if remaining <= 0:
            return Decision("bounce", reason="expired")
        return Decision("retry", min(self.backoff(attempt, random()), remaining), "temporary")
