"""Run one pool scenario through ``Pool`` (threads) and ``AsyncPool`` (tasks).

A scenario is a list of steps run in order on one pool; ``run`` returns each
step's value (or the exception it raised), so a test asserts the same thing
for both drivers:

- ``("send", message, envelope_kwargs)``: ``pool.send``
- ``("send_many", messages)``: ``pool.send_many``
- ``("parallel", messages, n)``: ``n`` threads / tasks each calling ``pool.send``
  on every n-th message; the results come back in input order
- ``("together", [steps, steps, ...])``: each list of steps in its own thread / task,
  at the same time; the value of each list's last step, in order
- ``("sleep", seconds)``; ``("repr",)``
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from smtpsubmit import AsyncPool, Pool, Server

Step = tuple[Any, ...]


class SyncPools:
    name = "sync"

    def run(self, server: Server, steps: list[Step], **kwargs: Any) -> list[Any]:
        out: list[Any] = []
        with Pool(server, **kwargs) as pool:
            for step in steps:
                try:
                    out.append(self._step(pool, step))
                except Exception as exc:
                    out.append(exc)
        return out

    def _step(self, pool: Pool, step: Step) -> Any:
        kind = step[0]
        if kind == "send":
            return pool.send(step[1], **(step[2] if len(step) > 2 else {}))
        if kind == "send_many":
            return pool.send_many(step[1])
        if kind == "parallel":
            messages, n = step[1], step[2]
            results: list[Any] = [None] * len(messages)

            def worker(k: int) -> None:
                for i in range(k, len(messages), n):
                    try:
                        results[i] = pool.send(messages[i])
                    except Exception as exc:
                        results[i] = exc

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            return results
        if kind == "together":
            values: list[Any] = [None] * len(step[1])

            def branch(k: int, steps: list[Step]) -> None:
                for sub in steps:
                    try:
                        values[k] = self._step(pool, sub)
                    except Exception as exc:
                        values[k] = exc

            threads = [
                threading.Thread(target=branch, args=(k, steps)) for k, steps in enumerate(step[1])
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            return values
        if kind == "sleep":
            time.sleep(step[1])
            return None
        if kind == "repr":
            return repr(pool)
        raise AssertionError(f"unknown step {step!r}")


class AsyncPools:
    name = "async"

    def run(self, server: Server, steps: list[Step], **kwargs: Any) -> list[Any]:
        async def main() -> list[Any]:
            out: list[Any] = []
            async with AsyncPool(server, **kwargs) as pool:
                for step in steps:
                    try:
                        out.append(await asyncio.wait_for(self._step(pool, step), 60))
                    except Exception as exc:
                        out.append(exc)
            return out

        return asyncio.run(main())

    async def _step(self, pool: AsyncPool, step: Step) -> Any:
        kind = step[0]
        if kind == "send":
            return await pool.send(step[1], **(step[2] if len(step) > 2 else {}))
        if kind == "send_many":
            return await pool.send_many(step[1])
        if kind == "parallel":
            messages, n = step[1], step[2]
            results: list[Any] = [None] * len(messages)

            async def worker(k: int) -> None:
                for i in range(k, len(messages), n):
                    try:
                        results[i] = await pool.send(messages[i])
                    except Exception as exc:
                        results[i] = exc

            await asyncio.gather(*(worker(k) for k in range(n)))
            return results
        if kind == "together":

            async def run_branch(steps: list[Step]) -> Any:
                value: Any = None
                for sub in steps:
                    try:
                        value = await self._step(pool, sub)
                    except Exception as exc:
                        value = exc
                return value

            return list(await asyncio.gather(*(run_branch(s) for s in step[1])))
        if kind == "sleep":
            await asyncio.sleep(step[1])
            return None
        if kind == "repr":
            return repr(pool)
        raise AssertionError(f"unknown step {step!r}")


POOL_DRIVERS = [SyncPools(), AsyncPools()]


@pytest.fixture(params=POOL_DRIVERS, ids=lambda d: d.name)
def pools(request: pytest.FixtureRequest) -> Any:
    return request.param
