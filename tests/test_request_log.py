"""The per-request record: rows as the flows' clients make them, retries marked, rate limits seen,
the client-side throttle, crash safety; in-process servers only (no process starts)."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from workbench.analysis.results import load_requests
from workbench.request_log import COLUMNS, NO_LOG, RequestLog, rate_limited
from workbench.stack.rpc_proxy import build_app
from workbench.vana import chain, retry, throttle
from workbench.vana.retry import RetryPolicy


def rows(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def node() -> AsyncIterator[str]:
    """A JSON-RPC node answering every call with its method name."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": body["method"]})

    app = web.Application()
    app.router.add_post("/", handle)
    runner, url = await serve(app)
    yield url
    await runner.cleanup()


# --- the log itself ------------------------------------------------------------------------------


def test_rows_are_buffered_then_flushed_with_the_run_clock(tmp_path):
    log = RequestLog(tmp_path / "requests.csv", origin_ns=1_000_000_000, flush_s=3600)
    log.add("RPC", "eth_call", 3_500_000_000, 3_512_345_000, 200, nbytes=66)
    log.add("POST", "/api/relay", 4_000_000_000, 4_001_000_000, 429, "HTTP 429", retry=True)
    assert rows(log.path) == []  # buffered: nothing written before the flush interval
    log.flush()
    first, second = rows(log.path)
    assert list(first) == list(COLUMNS)
    assert (first["t"], first["ms"], first["status"], first["error"]) == (
        "2.5",
        "12.345",
        "200",
        "",
    )
    assert (second["type"], second["name"], second["retry"]) == ("POST", "/api/relay", "1")
    assert (log.count, log.failed, log.limited) == (2, 1, 1)
    log.close()


def test_a_row_after_the_flush_interval_is_on_disk_at_once(tmp_path):
    """What a kill -9 keeps: every row older than `flush_s` is written without a close."""
    log = RequestLog(tmp_path / "requests.csv", flush_s=0)
    log.add("GET", "/identity", 0, 1_000_000, 200)
    assert len(rows(log.path)) == 1
    with open(log.path, "a", encoding="utf-8") as f:
        f.write("12.5,RPC,eth_c")  # the torn line a kill can leave
    frame = load_requests(log.path)
    assert list(frame["name"]) == ["/identity"] and frame["ok"].all()


def test_timed_records_errors_by_class_and_skips_cancelled_requests(tmp_path):
    log = RequestLog(tmp_path / "requests.csv")
    with log.timed("POST", "/api/v0/add") as rec:
        rec.status, rec.nbytes = 200, 120
    with pytest.raises(TimeoutError), log.timed("POST", "/api/v0/add"):
        raise TimeoutError
    with pytest.raises(asyncio.CancelledError), log.timed("POST", "/api/v0/add"):
        raise asyncio.CancelledError  # the run's end or a flow's deadline: not the server's
    log.close()
    assert [(r["status"], r["error"], r["bytes"]) for r in rows(log.path)] == [
        ("200", "", "120"),
        ("0", "TimeoutError", "0"),
    ]


def test_rate_limits_are_429_and_json_rpc_limit_exceeded():
    assert rate_limited(429, "HTTP 429") and rate_limited(200, "RPC -32005")
    assert not rate_limited(503, "HTTP 503") and not rate_limited(200, "RPC -32000")


def test_no_log_counts_and_writes_nothing():
    before = NO_LOG.count
    NO_LOG.add("RPC", "eth_call", 0, 1, 200)
    NO_LOG.close()
    assert NO_LOG.count == before + 1 and NO_LOG.path is None and NO_LOG.rows == []


# --- retries --------------------------------------------------------------------------------------


async def test_is_retry_marks_repeat_attempts_also_inside_a_nested_retrying(monkeypatch):
    async def no_sleep(_s: float) -> None:
        return None

    monkeypatch.setattr(retry.asyncio, "sleep", no_sleep)
    seen: list[tuple[str, int, bool]] = []
    fast = RetryPolicy(attempts=3, base_s=0, cap_s=0)

    async def inner(n: int) -> str:
        seen.append(("inner", n, retry.is_retry()))
        if n == 0:
            raise TimeoutError
        return "ok"

    async def outer(n: int) -> str:
        seen.append(("outer", n, retry.is_retry()))
        if n == 0:
            raise ConnectionRefusedError
        return await retry.retrying(inner, fast)

    assert await retry.retrying(outer, fast) == "ok"
    assert seen == [
        ("outer", 0, False),
        ("outer", 1, True),
        ("inner", 0, True),  # inside the outer's repeat: still a repeated request
        ("inner", 1, True),
    ]
    assert retry.is_retry() is False  # reset once done


# --- the RPC provider ------------------------------------------------------------------------------


async def test_the_provider_records_each_attempt_with_429s_and_their_retries(tmp_path, node):
    proxy, url = await serve(build_app({"upstream": node, "seed": 3, "faults": _limits(0.5)}))
    log = RequestLog(tmp_path / "requests.csv")
    w3 = chain.make_web3(url, timeout_s=2, retry=RetryPolicy(20, 0.001, 0.002), request_log=log)
    try:
        for _ in range(30):
            assert (await w3.provider.make_request("eth_call", []))["result"] == "eth_call"
        await w3.provider.make_request("eth_blockNumber", [])
        async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
            injected = (await resp.json())["injected_status_429"]
    finally:
        await chain.close_web3(w3)
        await proxy.cleanup()
    log.close()
    frame = load_requests(log.path)
    calls = frame[frame["name"] == "eth_call"]
    limited = calls[calls["status"] == 429]
    assert (frame["status"] == 429).sum() == injected > 0  # every 429 the proxy sent, recorded
    assert len(limited) > 0 and (limited["error"] == "HTTP 429").all()
    assert calls["ok"].sum() == 30  # every call ended with one good answer...
    assert calls["retry"].sum() == len(limited)  # ...after one retry per 429
    assert not calls.loc[calls["ok"] & (calls["retry"] == 0), "rate_limited"].any()
    assert set(frame["type"]) == {"RPC"} and set(frame["name"]) == {"eth_call", "eth_blockNumber"}
    assert (frame.loc[frame["ok"], "bytes"] > 0).all()


async def test_a_json_rpc_limit_exceeded_in_a_200_is_recorded_as_a_rate_limit(tmp_path):
    answers = iter([{"code": -32005, "message": "limit exceeded"}, None])

    async def handle(request: web.Request) -> web.Response:
        body, error = await request.json(), next(answers)
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": body["id"]}
        reply.update({"error": error} if error else {"result": "0x1"})
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/", handle)
    runner, url = await serve(app)
    log = RequestLog(tmp_path / "requests.csv")
    w3 = chain.make_web3(url, timeout_s=2, retry=RetryPolicy(3, 0.001, 0.002), request_log=log)
    try:
        assert (await w3.provider.make_request("eth_chainId", []))["result"] == "0x1"
    finally:
        await chain.close_web3(w3)
        await runner.cleanup()
    log.close()
    frame = load_requests(log.path)
    assert list(frame["error"]) == ["RPC -32005", ""] and list(frame["retry"]) == [0, 1]
    assert list(frame["rate_limited"]) == [True, False]


# --- the throttle ----------------------------------------------------------------------------------


def test_the_throttle_spaces_calls_at_its_rate(monkeypatch):
    now = [10_000_000_000]
    monkeypatch.setattr(throttle.time, "perf_counter_ns", lambda: now[0])
    bucket = throttle.Throttle(rate_per_s=4)  # one call per 250 ms
    assert [bucket.reserve() for _ in range(3)] == [0, 250_000_000, 500_000_000]
    now[0] += 2_000_000_000  # idle: no credit is saved beyond the burst (1)
    assert [bucket.reserve() for _ in range(2)] == [0, 250_000_000]


def test_a_burst_lets_that_many_calls_through_at_once(monkeypatch):
    now = [5_000_000_000]
    monkeypatch.setattr(throttle.time, "perf_counter_ns", lambda: now[0])
    bucket = throttle.Throttle(rate_per_s=10, burst=3)
    assert [bucket.reserve() for _ in range(5)] == [0, 0, 0, 100_000_000, 200_000_000]
    with pytest.raises(ValueError):
        throttle.Throttle(0)


async def test_the_provider_throttles_each_url_and_records_the_wait(tmp_path, node):
    log = RequestLog(tmp_path / "requests.csv")
    w3 = chain.make_web3(node, timeout_s=2, rate_limit=20, request_log=log)
    try:
        calls = [w3.provider.make_request("eth_chainId", []) for _ in range(4)]
        assert len(await asyncio.gather(*calls)) == 4
    finally:
        await chain.close_web3(w3)
    log.close()
    waits = sorted(load_requests(log.path)["wait_ms"])
    assert waits[0] == 0 and all(w > 0 for w in waits[1:])  # the first goes at once, then queued
    assert waits == sorted(set(waits))  # each later call waits for a later slot


def _limits(rate: float) -> dict[str, Any]:
    return {"error_rate": rate, "statuses": [429], "timeout_rate": 0, "drop_rate": 0}
