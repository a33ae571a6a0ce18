"""The fault-injecting JSON-RPC proxy: each fault kind as a raw client sees it, verbatim
forwarding (batches too), garbage input, and the client's retries through it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_utils import keccak

from workbench.stack.components import start_component, stop_component
from workbench.stack.rpc_proxy import build_app
from workbench.vana import chain
from workbench.vana.retry import RetryPolicy

RPC_FAULTS = {"error_rate": 0, "statuses": [429], "timeout_rate": 0, "timeout_s": 5, "drop_rate": 0}


class Upstream:
    """A stand-in node: answers a call with its method name, remembers what it got and the
    hashes of the transactions sent to it (and knows only those)."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.txs: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        calls = body if isinstance(body, list) else [body]
        answers = [{"jsonrpc": "2.0", "id": c["id"], "result": self.answer(c)} for c in calls]
        return web.json_response(answers if isinstance(body, list) else answers[0])

    def answer(self, c: dict[str, Any]) -> Any:
        if c["method"] == "eth_sendRawTransaction":
            self.txs.append("0x" + keccak(hexstr=c["params"][0]).hex())
        if c["method"] == "eth_getTransactionByHash":
            return {"hash": c["params"][0]} if c["params"][0] in self.txs else None
        return c["method"]


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    node = Upstream()
    app = web.Application()
    app.router.add_post("/", node.handle)
    runner, url = await serve(app)
    yield node, url
    await runner.cleanup()


async def proxy_for(upstream_url: str, **faults: Any) -> tuple[web.AppRunner, str]:
    config = {"upstream": upstream_url, "faults": {**RPC_FAULTS, **faults}, "seed": 1}
    return await serve(build_app(config))


def call(method: str = "eth_blockNumber", call_id: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": []}


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/metrics") as resp:
        return await resp.json()


async def test_forwards_single_and_batch_calls_verbatim(upstream):
    node, node_url = upstream
    runner, url = await proxy_for(node_url)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=call()) as resp:
                assert resp.status == 200
                assert await resp.json() == {"jsonrpc": "2.0", "id": 7, "result": "eth_blockNumber"}
            batch = [call("eth_chainId", 1), call("eth_gasPrice", 2)]
            async with s.post(url, json=batch) as resp:
                assert [a["result"] for a in await resp.json()] == ["eth_chainId", "eth_gasPrice"]
            assert node.bodies == [call(), batch]
            assert (await metrics(s, url))["forwarded"] == 2
    finally:
        await runner.cleanup()


async def test_error_fault_answers_the_status_with_a_json_rpc_error(upstream):
    node, node_url = upstream
    runner, url = await proxy_for(node_url, error_rate=1, statuses=[429, 503])
    try:
        async with aiohttp.ClientSession() as s:
            seen = set()
            for _ in range(12):
                async with s.post(url, json=call()) as resp:
                    seen.add(resp.status)
                    body = await resp.json()
                    assert body["id"] == 7 and body["error"]["code"] == chain.THROTTLED_CODE
            async with s.post(url, json=[call("a", 1), call("b", 2)]) as resp:
                assert [e["id"] for e in await resp.json()] == [1, 2]  # a batch gets a list
            assert seen == {429, 503} and node.bodies == []
            gauges = await metrics(s, url)
            assert gauges["injected_error"] == 13
            assert gauges["injected_status_429"] + gauges["injected_status_503"] == 13
    finally:
        await runner.cleanup()


async def test_timeout_fault_hangs_past_the_clients_deadline(upstream):
    _, node_url = upstream
    runner, url = await proxy_for(node_url, timeout_rate=1, timeout_s=0.5)
    try:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(TimeoutError):
                async with s.post(url, json=call(), timeout=aiohttp.ClientTimeout(total=0.2)):
                    pass
            async with s.post(url, json=call()) as resp:  # a patient client gets a 504
                assert resp.status == 504 and "error" in await resp.json()
            assert (await metrics(s, url))["injected_timeout"] == 2
    finally:
        await runner.cleanup()


async def test_drop_fault_closes_the_connection_without_an_answer(upstream):
    _, node_url = upstream
    runner, url = await proxy_for(node_url, drop_rate=1)
    try:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with s.post(url, json=call()):
                    pass
            assert (await metrics(s, url))["injected_drop"] == 1
    finally:
        await runner.cleanup()


async def test_disarmed_proxy_and_control_methods_are_never_faulted(upstream):
    _, node_url = upstream
    runner, url = await proxy_for(node_url, error_rate=1)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=call("evm_setAutomine")) as resp:
                assert resp.status == 200  # the harness's own knobs
            async with s.post(f"{url}/faults", json={"armed": False}) as resp:
                assert (await resp.json())["armed"] is False
            async with s.post(url, json=call()) as resp:
                assert resp.status == 200
            gauges = await metrics(s, url)
            assert gauges["injected"] == 0 and gauges["armed"] == 0
    finally:
        await runner.cleanup()


async def test_reads_are_retried_through_faults_and_sends_are_not_duplicated(upstream):
    """The workbench's own client rides out 429/503, hangs and drops; a send whose answer was
    lost is looked up by hash and not sent again, so the node gets each tx exactly once."""
    node, node_url = upstream
    runner, url = await proxy_for(
        node_url, error_rate=0.3, timeout_rate=0.1, timeout_s=0.3, drop_rate=0.2
    )
    retry = RetryPolicy(attempts=20, base_s=0.01, cap_s=0.05)
    w3 = chain.make_web3(url, timeout_s=0.2, retry=retry)
    try:
        for _ in range(20):
            answer = await w3.provider.make_request("eth_blockNumber", [])
            assert answer["result"] == "eth_blockNumber"
        sent = []
        for i in range(15):
            raw = f"0x{i:04x}" + "ab" * 40  # any bytes: the hash is keccak of what is sent
            answer = await w3.provider.make_request("eth_sendRawTransaction", [raw])
            sent.append("0x" + keccak(hexstr=raw).hex())
            assert answer["result"] in (sent[-1], "eth_sendRawTransaction")
        assert node.txs == sent  # once each, in order, despite the injected faults
        async with aiohttp.ClientSession() as s:
            assert (await metrics(s, url))["injected"] > 5
    finally:
        await chain.close_web3(w3)
        await runner.cleanup()


async def test_a_read_that_always_fails_raises_rpc_unavailable(upstream):
    _, node_url = upstream
    runner, url = await proxy_for(node_url, error_rate=1, statuses=[503])
    w3 = chain.make_web3(url, timeout_s=2, retry=RetryPolicy(attempts=3, base_s=0.01))
    try:
        with pytest.raises(chain.RpcUnavailable, match="3 attempts"):
            await w3.eth.block_number
    finally:
        await chain.close_web3(w3)
        await runner.cleanup()


async def test_failover_to_the_next_url(upstream):
    _, node_url = upstream
    runner, bad = await proxy_for(node_url, error_rate=1)
    w3 = chain.make_web3(f"{bad},{node_url}", timeout_s=2, retry=RetryPolicy(base_s=0.01))
    try:
        for _ in range(4):  # whichever URL a read starts on, it ends on the good one
            answer = await w3.provider.make_request("eth_chainId", [])
            assert answer["result"] == "eth_chainId"
    finally:
        await chain.close_web3(w3)
        await runner.cleanup()


@pytest.mark.e2e
def test_the_proxy_process_keeps_serving_under_garbage(tmp_path):
    """As its own process: bad bodies get 4xx JSON, then it still answers."""
    proc, url = start_component(
        "workbench.stack.rpc_proxy",
        {"upstream": "http://127.0.0.1:9", "faults": RPC_FAULTS},
        log_path=tmp_path / "proxy.log",
    )
    try:
        asyncio.run(_garbage(url))
        assert proc.poll() is None
    finally:
        stop_component(proc)


JSON = {"Content-Type": "application/json"}


async def _garbage(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for body in (b"not json", b"[]", b'{"id": 1}', b"[1, 2]", b"\xff\xfe", b'"x"'):
            async with s.post(url, data=body) as resp:
                assert resp.status == 400, body
                assert "error" in await resp.json()
        async with s.post(url, json=call()) as resp:  # the node is unreachable: 502 JSON
            assert resp.status == 502 and (await resp.json())["id"] == 7
        async with s.get(f"{url}/nowhere") as resp:
            assert resp.status == 404
        async with s.post(f"{url}/faults", data=b"{", headers=JSON) as resp:
            assert resp.status == 400
        async with s.post(f"{url}/faults", data=b"{}") as resp:  # not declared as JSON
            assert resp.status == 415
        async with s.get(f"{url}/health") as resp:
            assert resp.status == 200
        assert json.loads(await (await s.get(f"{url}/metrics")).text())["bad_requests"] == 6
