"""Connection pools: many messages over a bounded set of reused connections.

:class:`Pool` (threads) and :class:`AsyncPool` (asyncio tasks) sit above the
drivers and use only the public :class:`~smtpsubmit.Client` /
:class:`~smtpsubmit.AsyncClient` API. They own connection reuse (the
clean-return rule, idle expiry, the per-connection cap, replacing connections
the server closed) and the retry rules of one call; the shared sending rate is
:class:`~smtpsubmit.RateLimit`'s.
"""

from smtpsubmit.pool._async import AsyncPool
from smtpsubmit.pool._sync import Pool

__all__ = ["AsyncPool", "Pool"]
