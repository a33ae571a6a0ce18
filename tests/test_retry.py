"""The one retry/backoff module: attempt counts, the cap, full-jitter bounds, what is retried."""

from __future__ import annotations

import random

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from workbench.driver.flow import FlowSettings, HttpStatusError
from workbench.errors import WorkbenchError
from workbench.vana import retry
from workbench.vana.retry import RetryPolicy

FAST = RetryPolicy(attempts=4, base_s=0.001, cap_s=0.002)


class Flaky:
    """Fails with `error` the first `failures` times, then answers its attempt number."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, []

    async def __call__(self, attempt: int) -> int:
        self.calls.append(attempt)
        if len(self.calls) <= self.failures:
            raise self.error
        return attempt


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The waits `retrying` asks for, recorded instead of slept."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    return waits


async def test_transient_failures_are_retried_until_success(slept):
    call, retried = Flaky(2, TimeoutError()), []
    result = await retry.retrying(call, FAST, on_retry=lambda n, e: retried.append((n, e)))
    assert result == 2 and call.calls == [0, 1, 2]
    assert [n for n, _ in retried] == [0, 1] and len(slept) == 2
    assert all(isinstance(e, TimeoutError) for _, e in retried)


async def test_attempts_bound_the_calls_and_the_last_error_propagates_unchanged(slept):
    error = HttpStatusError(503, {"error": "busy"})
    call = Flaky(10, error)
    with pytest.raises(HttpStatusError) as caught:
        await retry.retrying(call, FAST)
    assert caught.value is error and call.calls == [0, 1, 2, 3] and len(slept) == 3


async def test_permanent_failures_are_not_retried(slept):
    for error in (HttpStatusError(404, {}), ValueError("bad"), KeyError("x")):
        call = Flaky(1, error)
        with pytest.raises(type(error)):
            await retry.retrying(call, FAST)
        assert call.calls == [0] and slept == []


async def test_within_s_bounds_an_unlimited_policy(slept, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: now[0])

    async def call(attempt: int) -> None:
        now[0] += 0.3  # each refused attempt "takes" 0.3 s of the 1 s allowed
        raise aiohttp.ClientConnectorError(
            ConnectionKey("h", 1, False, True, None, None, None), OSError()
        )

    with pytest.raises(aiohttp.ClientConnectorError):
        await retry.retrying(call, RetryPolicy(None, 0.1, 1.0, within_s=1.0), retry.never_sent)
    assert len(slept) == 3  # attempts end at 0.3, 0.6, 0.9 (retried) and 1.2 s (not)


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(attempts=5, base_s=0.1, cap_s=2.0)
    ceilings = [policy.ceiling(n) for n in range(7)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert policy.ceiling(100_000) == 2.0  # no float overflow however long it retries


def test_full_jitter_stays_within_bounds_and_follows_a_seeded_rng():
    policy = RetryPolicy(attempts=5, base_s=0.1, cap_s=2.0)
    for n in range(8):
        draws = [policy.delay(n, random.Random(seed)) for seed in range(500)]
        assert all(0 <= d <= policy.ceiling(n) for d in draws)
        # Full jitter: the whole range is used, not a band near the ceiling.
        assert min(draws) < 0.05 * policy.ceiling(n) and max(draws) > 0.95 * policy.ceiling(n)
    expected = random.Random(42)
    assert policy.delay(3, random.Random(42)) == expected.uniform(0, 0.8)


async def test_waits_are_the_policys_jittered_delays(slept):
    policy = RetryPolicy(attempts=6, base_s=0.1, cap_s=0.5)
    with pytest.raises(TimeoutError):
        await retry.retrying(Flaky(9, TimeoutError()), policy, rng=random.Random(7))
    twin = random.Random(7)
    assert slept == [twin.uniform(0, c) for c in (0.1, 0.2, 0.4, 0.5, 0.5)]


def test_which_statuses_are_retried():
    retried = {s for s in range(100, 600) if retry.is_transient(HttpStatusError(s, {}))}
    assert retried == {408, 425, 429, 500, 502, 503, 504} == retry.RETRY_STATUSES
    response = aiohttp.ClientResponseError(None, (), status=503)  # aiohttp's own, same rule
    assert retry.is_transient(response)
    assert not retry.is_transient(aiohttp.ClientResponseError(None, (), status=400))
    assert retry.is_transient(HttpStatusError(418, {}), statuses=frozenset({418}))


def test_which_transport_failures_are_retried_by_whom():
    key = ConnectionKey("h", 1, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError())
    dropped = aiohttp.ServerDisconnectedError()
    timed_out = aiohttp.ServerTimeoutError()
    cut_short = aiohttp.ClientPayloadError("body cut short")
    for error in (refused, dropped, timed_out, cut_short, TimeoutError()):
        assert retry.is_transient(error)
    assert not retry.is_transient(ValueError("not JSON"))
    # Who may repeat what: a refused connection never reached the server (even a relay may
    # go again); a dropped one might have, and a timeout already spent the caller's deadline.
    assert [retry.never_sent(e) for e in (refused, dropped, timed_out)] == [True, False, False]
    assert [retry.connection_lost(e) for e in (refused, dropped, timed_out)] == [True, True, False]


def test_policies_refuse_settings_that_cannot_work():
    for bad in ({"attempts": 0}, {"attempts": None}, {"base_s": -1}, {"cap_s": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RetryPolicy(**bad)
    with pytest.raises(WorkbenchError, match="flow.retry_.*attempts must be at least 1"):
        FlowSettings(retry_attempts=0)


def test_flow_settings_carry_the_upstream_backoff():
    s = FlowSettings.from_profile({"flow": {"retry_attempts": 8, "retry_base_s": 0.1}})
    assert s.retry_policy == RetryPolicy(8, 0.1, 5.0)
    assert s.reconnect_policy == RetryPolicy(None, 0.1, 5.0, within_s=s.http_timeout_s)
