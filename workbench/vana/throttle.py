"""A client-side throttle: at most `rate_per_s` calls per second to one endpoint (a token bucket).

Public RPC providers answer 429 above a per-second limit; a run that stays under it measures the
system rather than the provider's rate limiter. `RpcProvider` keeps one `Throttle` per RPC URL
when the run sets `rpc_rate_limit`.

The bucket holds `burst` tokens (default 1: calls evenly spaced, never two in the same
1/rate_per_s) and refills at `rate_per_s`. Each call reserves the next free slot synchronously
and then sleeps until it, so concurrent callers on one event loop need no lock and are served in
arrival order. Written out rather than taken from a library because the wait of each call is
what the request log records (the report says when the throttle delayed calls).
"""

from __future__ import annotations

import asyncio
import time


class Throttle:
    """`await throttle.wait()` before each call; returns how long it waited, in nanoseconds."""

    def __init__(self, rate_per_s: float, burst: float = 1.0):
        if not rate_per_s > 0 or not burst >= 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, not {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self._gap_ns = int(1e9 / rate_per_s)
        self._slack_ns = int((burst - 1) * self._gap_ns)  # how far ahead a full bucket lets a call
        self._next_ns = 0  # when the next call may go without using the burst (the bucket's level)

    def reserve(self) -> int:
        """Takes the next slot; returns how many ns from now the call may go (0: at once)."""
        now = time.perf_counter_ns()
        slot = max(self._next_ns, now - self._slack_ns)
        self._next_ns = slot + self._gap_ns
        return max(0, slot - now)

    async def wait(self) -> int:
        delay_ns = self.reserve()
        if delay_ns:
            await asyncio.sleep(delay_ns / 1e9)
        return delay_ns
