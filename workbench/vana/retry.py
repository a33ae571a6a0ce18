"""Retrying HTTP calls: which failures are worth another try, and how long to wait before it.

One home for every client of the workbench: the flow's requests (`driver/flow.py`), the chain
provider's reads and re-sends (`vana/chain.py`) and the servers' calls to each other (the API
server to the personal server, the personal server to storage and to an inference API). Callers
decide what is safe to repeat (`retrying`'s `retryable`); this module decides when to give up
and how long to wait: capped exponential backoff with full jitter.

The loop is written here rather than taken from tenacity: it wraps every request and RPC read
on the driver's event loop, where tenacity's machinery measured ~30 us per call against ~0.5 us.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

T = TypeVar("T")
# Answers that say "try later": timeout, too early, throttled, server errors and overload.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_DOUBLINGS = 32  # keeps base * 2**n a finite float; any real cap is reached long before
# Set while `retrying` makes a repeat attempt, at any nesting depth (a flow's reconnect around its
# retries): what the request log records as a retry. Per task, so concurrent flows never mix.
_REPEATING: ContextVar[bool] = ContextVar("repeating", default=False)


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` in all (the first included); `within_s`, if set, also stops retrying once
    that long has passed since the first attempt (then `attempts=None` means no count limit).

    Before retry n (0 for the first retry) the wait is drawn uniformly from
    [0, min(cap_s, base_s * 2**n)]: full jitter, so concurrent clients hit by the same fault do
    not come back in lockstep."""

    attempts: int | None = 5
    base_s: float = 0.1
    cap_s: float = 2.0
    within_s: float | None = None
    jitter: bool = True  # False: wait the bare ceiling (upstream's load-test client did)

    def __post_init__(self) -> None:
        if self.attempts is None and self.within_s is None:
            raise ValueError("attempts: None needs within_s, or retries would never stop")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        for name in ("base_s", "cap_s", "within_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be 0 or more, not {value}")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry `retry` (0-based)."""
        return min(self.cap_s, self.base_s * 2 ** min(retry, MAX_DOUBLINGS))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry `retry` (0-based): full jitter, or the ceiling without it."""
        if not self.jitter:
            return self.ceiling(retry)
        return (rng or random).uniform(0, self.ceiling(retry))

    def allows(self, attempt: int, elapsed_s: float) -> bool:
        """May attempt number `attempt` (0-based) start, `elapsed_s` after the first one?"""
        if self.attempts is not None and attempt >= self.attempts:
            return False
        return self.within_s is None or elapsed_s < self.within_s


# What the servers use for their calls to each other: a peer that restarts or drops a
# keep-alive connection is tried again at once-ish; anything slower is the caller's to decide.
SERVER_CALLS = RetryPolicy(attempts=3, base_s=0.05, cap_s=0.5)


def is_transient(error: BaseException, statuses: frozenset[int] = RETRY_STATUSES) -> bool:
    """A failure worth another try: an HTTP answer with a status in `statuses` (any exception
    with a `status`, aiohttp's or the caller's own), a timeout, a refused or dropped
    connection, a body cut short."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status in statuses
    transport = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, OSError)
    return isinstance(error, transport)


def is_retry() -> bool:
    """Whether the request being made repeats a failed attempt of an enclosing `retrying`."""
    return _REPEATING.get()


def never_sent(error: BaseException) -> bool:
    """The connection was refused or never made: the request did not reach the server, so
    even a request that is not idempotent (a relay, a paid inference) may be sent again."""
    return isinstance(error, aiohttp.ClientConnectorError)


def connection_lost(error: BaseException) -> bool:
    """The connection failed before an answer (refused, reset, closed by the peer), without
    a timeout: retrying an idempotent request then costs the caller no extra deadline."""
    return isinstance(error, aiohttp.ClientConnectionError) and not isinstance(error, TimeoutError)


async def retrying(
    call: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool] = is_transient,
    *,
    on_retry: Callable[[int, BaseException], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Awaits `call(attempt)` (attempt 0, 1, …) until it returns.

    A failure `retryable` accepts is tried again after `policy.delay` while `policy.allows`;
    `on_retry(attempt, error)` hears of each retry first, and `is_retry()` is True during it.
    Any other failure, and the last one, propagates unchanged, so callers classify errors as
    they would without retries."""
    started = time.monotonic()
    for attempt in itertools.count():
        repeat = _REPEATING.set(True) if attempt else None
        try:
            return await call(attempt)
        except Exception as e:
            if not retryable(e) or not policy.allows(attempt + 1, time.monotonic() - started):
                raise
            if on_retry is not None:
                on_retry(attempt, e)
            await asyncio.sleep(policy.delay(attempt, rng))
        finally:
            if repeat is not None:
                _REPEATING.reset(repeat)
    raise AssertionError("unreachable")
