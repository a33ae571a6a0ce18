"""A run against a deployment shaped like Vana's: the local stack described as a remote target
whose personal server sits under a base path (`/api/v1`, as Vana's example apps configure it)
and whose storage is Pinata-compatible (JWT from the environment, objects from a gateway).

The gateway in front (`Front`) is a test double on 127.0.0.1: it serves the personal server
under `/api/v1` (by forwarding) and Pinata's `pinFileToIPFS` (checking the JWT, then storing in
the stack's real storage), and counts what passed through it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from workbench.driver import wallets
from workbench.driver.config import RunConfig
from workbench.driver.runner import run
from workbench.stack import anvil
from workbench.vana import chain

pytestmark = pytest.mark.e2e
JWT_ENV = "WORKBENCH_TEST_PINATA_JWT"
JWT = "eyJhbGciOiJIUzI1NiJ9.test-only-jwt.signature"  # a JWT-shaped stand-in, never real


class Front:
    """Pinata's upload route and a personal server under /api/v1, in front of the local stack."""

    def __init__(self, personal_url: str, storage_url: str):
        self.personal_url, self.storage_url = personal_url, storage_url
        self.seen: Counter[str] = Counter()
        self.app = web.Application()
        self.app.router.add_post("/pinning/pinFileToIPFS", self.pin)
        self.app.router.add_route("*", "/api/v1/{tail:.*}", self.personal)

    async def pin(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {JWT}":
            return web.json_response({"error": "bad JWT"}, status=401)
        form = await request.post()
        if "pinataMetadata" not in form:
            return web.json_response({"error": "no pinataMetadata"}, status=400)
        data = form["file"].file.read()
        out = aiohttp.FormData()
        out.add_field("file", data, filename="f")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.storage_url}/api/v0/add", data=out) as resp,
        ):
            cid = (await resp.json())["Hash"]
        self.seen["pin"] += 1
        return web.json_response({"IpfsHash": cid, "PinSize": len(data), "Timestamp": "now"})

    async def personal(self, request: web.Request) -> web.Response:
        self.seen[f"{request.method} /{request.match_info['tail'].split('/')[0]}"] += 1
        url = f"{self.personal_url}/{request.match_info['tail']}"
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method, url, params=request.query, data=await request.read()
            ) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )


async def fund_wallet_file(path: Path, users: int, rpc_url: str) -> None:
    ws = wallets.generate(users, path)
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    try:
        await wallets.fund(w3, anvil.dev_key(0), ws.addresses)
    finally:
        await chain.close_web3(w3)


async def test_a_run_against_a_vana_shaped_deployment(local_stack, tmp_path, monkeypatch):
    ep = local_stack.endpoints
    front = Front(ep.personal_server_url, ep.storage_url)
    server = TestServer(front.app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        target = {
            "name": "vana-shaped",
            "chain_id": ep.chain_id,
            "rpc_urls": [ep.rpc_url],
            "contracts": dict(ep.contracts),
            "api_url": ep.api_url,
            "personal_server_url": f"{base}/api/v1",
            "storage_kind": "pinata",
            "storage_url": base,
            "gateway_url": f"{ep.storage_url}/ipfs",
            "storage_token_env": JWT_ENV,
            "grantee_id": ep.grantee_id,
        }
        path = tmp_path / "target.yaml"
        path.write_text(yaml.safe_dump(target))
        monkeypatch.setenv(JWT_ENV, JWT)
        monkeypatch.setenv(wallets.WALLET_FILE_ENV, str(tmp_path / "wallets.json"))
        await fund_wallet_file(tmp_path / "wallets.json", 2, ep.rpc_url)
        config = RunConfig.from_params(
            users=2, profile="fast", shape="burst", target=str(path), client="sdk",
            output_dir=str(tmp_path / "out"),
        )  # fmt: skip
        outcome = await run(config, progress=False)
    finally:
        await server.close()
    events = [json.loads(line) for line in (outcome.results_dir / "events.jsonl").open()]
    flows = [e for e in events if e["kind"] == "flow"]
    assert [f["ok"] for f in flows] == [True, True], flows
    # Both uploads of each flow went to "Pinata", plus preflight's probe; identity, the flow's
    # only personal-server call, went through the base path (preflight's probe too).
    assert front.seen["pin"] == 2 * 2 + 1
    assert front.seen["GET /identity"] == 2 + 1
    written = json.loads((outcome.results_dir / "config.json").read_text())
    assert written["storage"]["kind"] == "pinata" and written["client"] == "sdk"
    for file in outcome.results_dir.rglob("*"):  # the JWT is nowhere in what the run wrote
        if file.is_file():
            assert JWT.encode() not in file.read_bytes(), file
