"""Stopping a run from outside: signals, the deadline, and a sink that cannot write.

The first SIGINT/SIGTERM (or the deadline) stops the intake and gives requests in flight a grace
period; a second signal cancels them at once. Either way the sink still flushes what finished.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Protocol

import anyio

from ..errors import BatchrunError
from ..log import event


class Pool(Protocol):
    """What stops: a pool, or the lanes of a job's endpoints (``dispatch/lanes.py``)."""

    @property
    def stopped(self) -> str | None: ...

    @property
    def in_flight(self) -> int: ...

    def stop(self, reason: str, grace: float) -> None: ...

    def cancel(self, reason: str) -> None: ...


def stop_on(pool: Pool) -> Callable[[BatchrunError], None]:
    def stop(error: BatchrunError) -> None:
        event(f"stopping: {error}", level=logging.ERROR)
        pool.cancel(str(error))

    return stop


async def watch_signals(pool: Pool, grace_s: float) -> None:
    """First SIGINT/SIGTERM: no new requests, in-flight ones get ``grace_s``. Second: stop now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if pool.stopped is None:
                event(
                    f"{name}: no new requests; waiting up to {grace_s:g}s for {pool.in_flight} in flight "
                    "(again to stop at once)",
                    level=logging.WARNING,
                    signal=name,
                )
                pool.stop(name, grace_s)
            else:
                event(
                    f"{name} again: cancelling {pool.in_flight} requests in flight", level=logging.WARNING, signal=name
                )
                pool.cancel(name)


async def deadline(pool: Pool, seconds: float, grace_s: float) -> None:
    await anyio.sleep(max(0.0, seconds))
    event(f"max runtime reached: no new requests; waiting up to {grace_s:g}s for {pool.in_flight} in flight")
    pool.stop("max runtime reached", grace_s)
