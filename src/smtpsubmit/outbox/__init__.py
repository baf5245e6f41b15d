"""The durable outbox (contract §10): enqueue now, deliver later, survive crashes.

:class:`Outbox` stores rendered messages in SQLite (default) or PostgreSQL;
workers (:meth:`Outbox.run`, ``smtpsubmit worker``) claim them under a lease
and deliver them with per-recipient state; :class:`RetryPolicy` decides what
happens after a failure. A route may be :data:`DIRECT` (or a
:class:`DirectRoute`): delivery to the recipients' MX hosts, no relay.
"""

from smtpsubmit.outbox.aio import AsyncOutbox
from smtpsubmit.outbox.direct_route import DIRECT, DirectRoute
from smtpsubmit.outbox.outbox import Outbox
from smtpsubmit.outbox.retry import Decision, Outcome, RetryPolicy
from smtpsubmit.outbox.store import StoreError

__all__ = [
    "DIRECT",
    "AsyncOutbox",
    "Decision",
    "DirectRoute",
    "Outbox",
    "Outcome",
    "RetryPolicy",
    "StoreError",
]
