"""Waking an endpoint that scaled to zero (or was paused) without hammering it.

Two ways in, one gate:

- managed: ``[endpoint] hf_endpoint`` names a Hugging Face Inference Endpoint and the token may
  manage it. Before the first request its state is read through the management API
  (``batchrun/hfapi.py``, in a worker thread); a paused or scaled-to-zero endpoint is resumed, and
  the first request waits until the state is ``running`` (read every 1 s, then up to every 5 s).
  ``failed`` stops the job. ``pause_after`` pauses it when the run ends, however it ends.
- by its answers: without the right to manage it (a 401/403, said once as a warning), or with
  ``wake_timeout`` alone: until the endpoint has answered once, its 503s are its cold start
  (``pushback.Kind.COLD``).

Either way, while the endpoint is cold one request (the prober) goes at a time and every other
worker waits at the gate; the prober's 503s count neither as attempts nor as failures. Once anything
but a 503 comes back the gate is open for good, and a later 503 is an ordinary retryable answer. All
of it waits at most ``wake_timeout`` from the first sign of a cold endpoint; past it the job stops
(exit 4): nothing was recorded, so the next run sends everything again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from ..errors import FatalError
from ..hfapi import ASLEEP, BROKEN, RUNNING, EndpointState, ManagementError, Manager
from ..log import event
from ..origins import OriginError, origin_text, parse_origin
from .limits import Sleep, duration

if TYPE_CHECKING:
    from ..spec.endpoint import Endpoint

POLL_S = (1.0, 5.0)  # the state is read after 1 s, then 2, 3, 4, and every 5 s (huggingface_hub's wait: 5)
PROBE_S = (0.5, 5.0)  # a cold prober waits 0.5 s, doubling up to 5 s (as POLL_S), unless the 503 says how long


class ColdStart(Exception):
    """A 503 while the endpoint is starting: the prober waits and asks again (never leaves the Caller)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("cold start")
        self.retry_after = retry_after


class Manages(Protocol):
    """What the waker asks of the management API (``hfapi.Manager``; a fake in unit tests)."""

    def get(self) -> EndpointState: ...

    def resume(self) -> EndpointState: ...

    def pause(self) -> EndpointState: ...


class Waker:
    """The gate in front of an endpoint that may be asleep; ``warm`` once it has answered."""

    def __init__(
        self,
        label: str,
        timeout_s: float,
        manager: Manages | None = None,
        *,
        pause_after: bool = False,
        unmanaged: str | None = None,
        url: str | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.timeout_s = timeout_s
        self.manager = manager
        self.pause_after = pause_after
        self.unmanaged = unmanaged  # why a named endpoint cannot be managed (no token), said once
        self.url = url
        self.sleep = sleep
        self._clock = clock
        self.warm = False
        self.phase = ""  # what the endpoint is doing while cold, for the progress line
        self.resumes = 0
        self.cold_answers = 0  # 503s taken as the cold start
        self.fatal: FatalError | None = None
        self.managed = False  # the management API answered: pause_after applies
        self._prepared = False
        self._since: float | None = None
        self._probing = False
        self._changed: anyio.Event | None = None
        self._probe_wait = PROBE_S[0]

    async def enter(self) -> bool:
        """Wait at the gate until the endpoint is warm, or until this task is the one to probe it
        (True: it must call ``leave`` when its request is done)."""
        while not self.warm:
            if self.fatal is not None:
                raise self.fatal
            if not self._probing:
                self._probing = True
                return True
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return False

    def leave(self) -> None:
        """The prober is done (answered, failed, cancelled): the next waiter probes, or all go."""
        self._probing = False
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def prepare(self) -> None:
        """Before the first request: wake a managed endpoint and wait until it runs."""
        if self._prepared:
            return
        self._prepared = True
        if self.manager is None:
            if self.unmanaged:
                self._fall_back(self.unmanaged)
            return
        self._start()
        try:
            state = await self._manage(self.manager.get)
            self.managed = True
            if state.state in ASLEEP:
                self.phase = state.state
                event(f"resuming the Inference Endpoint {self.label} ({state.state})", hf_endpoint=self.label)
                state = await self._manage(self.manager.resume)
                self.resumes += 1
            interval = POLL_S[0]
            while state.state != RUNNING:
                if state.state in BROKEN:
                    said = f": {state.message}" if state.message else ""
                    raise self._stop(f"the Inference Endpoint {self.label} is {state.state}{said}")
                self.phase = state.state
                await self._wait(interval)
                interval = min(interval + 1.0, POLL_S[1])
                state = await self._manage(self.manager.get)
        except ManagementError as exc:
            if exc.status == 404 and not self.managed:
                raise self._stop(f"no Inference Endpoint {self.label} (HTTP 404 from the management API)") from None
            self._fall_back(f"{'no right' if exc.no_rights else 'unable'} to manage it ({exc})")
            return
        # running when first asked: nothing to say while its first request is on the way
        self.phase = RUNNING if self.resumes or self.phase else ""
        self._compare_url(state.url)

    async def cold(self, retry_after: float | None) -> None:
        """The prober got a 503 while the endpoint is starting: wait (``Retry-After`` if it says, else
        0.5 s doubling to 5 s), or stop the job once ``wake_timeout`` is spent."""
        self._start()
        self.cold_answers += 1
        self.phase = "initializing"
        delay = retry_after if retry_after is not None else self._probe_wait
        self._probe_wait = min(self._probe_wait * 2, PROBE_S[1])
        await self._wait(delay)

    def answered(self) -> None:
        """The endpoint answered something other than a 503: open the gate for good."""
        if self.warm:
            return
        self.warm = True
        if self._since is not None and (self.cold_answers or self.resumes or self.phase not in ("", RUNNING)):
            event(
                f"the endpoint {self.label} is awake after {duration(self._clock() - self._since)}",
                hf_endpoint=self.label,
                cold_answers=self.cold_answers,
            )

    async def close(self) -> None:
        """``pause_after``: pause the endpoint as the run ends, however it ends (shielded from a
        cancel: a second Ctrl-C still leaves it paused)."""
        if not (self.pause_after and self.managed and self.manager is not None):
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._manage(self.manager.pause)
            except ManagementError as exc:
                event(f"could not pause the Inference Endpoint {self.label}: {exc}", level=logging.WARNING)
                return
        event(f"paused the Inference Endpoint {self.label} (pause_after)", hf_endpoint=self.label)

    def describe(self) -> str:
        """``waking endpoint ns/name (initializing, 40 s)`` while cold, else ""."""
        if self.warm or self._since is None or not self.phase or self.fatal is not None:
            return ""
        return f"waking endpoint {self.label} ({self.phase}, {self._clock() - self._since:.0f} s)"

    def _start(self) -> None:
        if self._since is None:
            self._since = self._clock()

    async def _wait(self, seconds: float) -> None:
        assert self._since is not None
        left = self.timeout_s - (self._clock() - self._since)
        if left <= 0:
            raise self._stop(
                f"the endpoint {self.label} did not wake within {duration(self.timeout_s)} "
                f"(still {self.phase or 'answering 503'}; wake_timeout)"
            )
        await self.sleep(min(seconds, left))

    async def _manage(self, call: Callable[[], EndpointState]) -> EndpointState:
        return await anyio.to_thread.run_sync(call)

    def _stop(self, message: str) -> FatalError:
        self.fatal = FatalError(message)  # the Caller scrubs it of the endpoint's secrets
        return self.fatal

    def _fall_back(self, why: str) -> None:
        event(
            f"the Inference Endpoint {self.label}: {why}; its 503s before its first answer are taken as "
            f"its cold start, for up to {duration(self.timeout_s)}",
            level=logging.WARNING,
        )

    def _compare_url(self, url: str | None) -> None:
        """A job whose URL is not the endpoint's is most likely a mistake; it is said, not mended
        (the URL is part of every request key)."""
        if not url or not self.url:
            return
        try:
            theirs, ours = parse_origin(url), parse_origin(self.url)
        except OriginError:
            return
        if theirs != ours:
            event(
                f"the Inference Endpoint {self.label} is at {origin_text(theirs)}, the job sends to "
                f"{origin_text(ours)}",
                level=logging.WARNING,
            )

    def __repr__(self) -> str:
        return (
            f"Waker({self.label}, warm={self.warm}, phase={self.phase!r}, resumes={self.resumes}, "
            f"cold_answers={self.cold_answers})"
        )


def make_waker(endpoint: Endpoint, sleep: Sleep = anyio.sleep) -> Waker | None:
    """The endpoint's waker, when its job expects it may be asleep (``hf_endpoint`` or ``wake_timeout``)."""
    wake = endpoint.wake
    if wake is None:
        return None
    manager = None
    unmanaged = None
    if wake.hf_endpoint is not None:
        if endpoint.api_key is None:
            unmanaged = "no token to manage it (api_key_env)"
        else:
            manager = Manager(wake.hf_endpoint, endpoint.api_key.get_secret_value(), wake.api_url)
    return Waker(
        wake.hf_endpoint or endpoint.name,
        wake.timeout_s,
        manager,
        pause_after=wake.pause_after,
        unmanaged=unmanaged,
        url=endpoint.url,
        sleep=sleep,
    )


def scale_up_header(endpoint: Endpoint, timeout_s: float) -> dict[str, str]:
    """``X-Scale-Up-Timeout``: an HF endpoint that honours it holds a request while a replica starts,
    instead of answering 503. A second under the request's own timeout, so its 503 comes first."""
    if endpoint.wake is None or any(h.lower() == "x-scale-up-timeout" for h in endpoint.headers):
        return {}
    return {"X-Scale-Up-Timeout": str(max(1, int(min(endpoint.wake.timeout_s, timeout_s - 1))))}
