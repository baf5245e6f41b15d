"""A message's state derived from its recipients' states, and the body checksum.

Shared by the outbox (enqueue, queue actions) and its workers, which import
nothing else of each other at run time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from smtpsubmit.outbox.store import Recipient, RecipientUpdate

__all__ = ["checksum", "summarize"]


def checksum(body: bytes) -> str:
    """The stored body's SHA-256, checked before every send."""
    return hashlib.sha256(body).hexdigest()


def summarize(
    recipients: Sequence[Recipient], updates: Sequence[RecipientUpdate], now: float
) -> tuple[str, float]:
    """A message's state (and when it is next due) from its recipients' states."""
    changed = {u.position: (u.state, u.retry_at) for u in updates}
    waiting: list[float] = []
    finals: set[str] = set()
    for r in recipients:
        state, retry_at = changed.get(r.position, (r.state, r.retry_at))
        if state in {"queued", "sending"}:
            waiting.append(now)
        elif state in ("deferred", "unknown") and retry_at is not None:
            waiting.append(retry_at)
        else:
            finals.add(state)
    if waiting:
        due = min(waiting)
        return ("queued" if due <= now else "deferred"), due
    for state in ("unknown", "bounced", "cancelled"):
        if state in finals:
            return state, now
    return "sent", now
