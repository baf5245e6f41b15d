"""Named fault points of the outbox worker, for the crash tests.

When the environment variable ``SMTPSUBMIT_TEST_KILL_AT`` is set to ``POINT``
or ``POINT@N`` the process kills itself with ``SIGKILL`` at the N-th (default
first) passage through that point — ``after-claim``, ``after-sending``
(committed, nothing of that message sent), ``mid-data`` (part of the data
written; a message sent on its own), ``after-reply`` (answer received, outcome
not committed) or ``after-commit``. Inert when unset.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["fault_point"]


class _KillHook:
    def __init__(self, spec: str | None) -> None:
        point, _, count = (spec or "").partition("@")
        self.point = point or None
        self.remaining = int(count or "1")
        self.lock = threading.Lock()

    def __call__(self, point: str) -> None:
        if self.point != point:
            return
        with self.lock:
            self.remaining -= 1
            if self.remaining <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


#: Call with a point's name where the worker passes it.
fault_point = _KillHook(os.environ.get("SMTPSUBMIT_TEST_KILL_AT"))
