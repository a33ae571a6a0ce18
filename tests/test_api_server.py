"""The app's API server and its relayer, against the shared local stack (`local_stack`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account
from web3 import AsyncWeb3

from workbench.stack import anvil
from workbench.stack.api_server import build_app, operation_request_json
from workbench.stack.deploy import deploy_all
from workbench.stack.process import free_port, terminate
from workbench.stack.relayer import PendingTx, Relayer, RelayError
from workbench.vana import chain, crypto, permission

pytestmark = pytest.mark.e2e
TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def w3(local_stack) -> AsyncIterator[Any]:
    web3 = chain.make_web3(local_stack.endpoints.rpc_url, timeout_s=10)
    yield web3
    await chain.close_web3(web3)


# --- helpers: a user's permission, as the flow builds it ----------------------------------------


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def upload(http: aiohttp.ClientSession, storage_url: str, blob: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", blob, filename="f", content_type="application/octet-stream")
    async with http.post(f"{storage_url}/api/v0/add", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return f"ipfs://{(await resp.json())['Hash']}"


async def signed_permission(
    stack, http, w3, key: str, *, real_files: bool = False, nonce: int | None = None
) -> dict[str, Any]:
    """A relay body for the user of `key`. With `real_files` the file and grant are really
    encrypted and stored, so the personal server can run the operation."""
    ep = stack.endpoints
    user = Account.from_key(key).address
    async with http.get(f"{ep.api_url}/identity", params={"address": user}) as resp:
        server = (await resp.json())["personal_server"]
    if real_files:
        password = crypto.encryption_key(key)
        file_url = await upload(http, ep.storage_url, crypto.encrypt_file(b'{"a": 1}', password))
        grant = {
            "grantee": anvil.dev_address(1),
            "operation": "llm_inference",
            "parameters": {"prompt": "summarise", "response_format": {"type": "json_object"}},
        }
        grant_url = await upload(http, ep.storage_url, json.dumps(grant).encode())
        sealed = crypto.ecies_encrypt(server["public_key"], password.encode())
    else:
        file_url, grant_url, sealed = f"ipfs://file-{user}", f"ipfs://grant-{user}", "00"
    if nonce is None:
        contract = chain.contract(w3, "DataPortabilityPermissions", ep.contracts[PERMISSIONS])
        nonce = await contract.functions.userNonce(user).call()
    message = {
        "nonce": nonce,
        "granteeId": ep.grantee_id,
        "grant": grant_url,
        "fileUrls": [file_url],
        "schemaIds": [0],
        "serverAddress": server["address"],
        "serverUrl": ep.personal_server_url,
        "serverPublicKey": server["public_key"],
        "filePermissions": [[{"account": server["address"], "key": sealed}]],
    }
    typed = permission.typed_data(ep.chain_id, ep.contracts[PERMISSIONS], message)
    return {
        "typedData": typed,
        "signature": permission.sign(key, typed),
        "expectedUserAddress": user,
    }


PERMISSIONS = "DataPortabilityPermissions"


def new_key() -> str:
    return "0x" + Account.create().key.hex().removeprefix("0x")


async def relayer_nonce_total(w3, stack) -> int:
    keys = [anvil.dev_key(i) for i in range(2, 2 + stack.relayers)]
    counts = await asyncio.gather(
        *(w3.eth.get_transaction_count(Account.from_key(k).address, "pending") for k in keys)
    )
    return sum(counts)


async def metrics(http, stack) -> dict[str, int]:
    async with http.get(f"{stack.endpoints.api_url}/metrics") as resp:
        return await resp.json()


def assert_error(status: int, body: Any, expected: int | tuple[int, ...]) -> None:
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert status in expected, (status, body)
    assert body["success"] is False and isinstance(body["error"], str), body


# --- /api/relay ---------------------------------------------------------------------------------


async def test_valid_relay_is_mined_with_a_permission_added_event(local_stack, http, w3):
    body = await signed_permission(local_stack, http, w3, new_key())
    status, answer = await post(http, f"{local_stack.endpoints.api_url}/api/relay", body)
    assert status == 200 and answer["success"] is True, answer
    receipt = await chain.wait_receipt(w3, answer["transactionHash"], 30, 0.05)
    permission_id = chain.decode_permission_added(receipt)
    contract = chain.contract(w3, PERMISSIONS, local_stack.endpoints.contracts[PERMISSIONS])
    stored = await contract.functions.permissions(permission_id).call()
    assert stored[1] == body["expectedUserAddress"]  # grantor


async def test_forged_signature_is_refused(local_stack, http, w3):
    victim, forger = new_key(), new_key()
    body = await signed_permission(local_stack, http, w3, victim)
    body["signature"] = permission.sign(forger, body["typedData"])
    status, answer = await post(http, f"{local_stack.endpoints.api_url}/api/relay", body)
    assert_error(status, answer, (401, 403))
    assert "expectedUserAddress" in answer["error"]


async def test_replay_is_refused_without_a_transaction(local_stack, http, w3):
    url = f"{local_stack.endpoints.api_url}/api/relay"
    body = await signed_permission(local_stack, http, w3, new_key())
    status, answer = await post(http, url, body)
    assert status == 200, answer
    await chain.wait_receipt(w3, answer["transactionHash"], 30, 0.05)
    before_nonces = await relayer_nonce_total(w3, local_stack)
    before = await metrics(http, local_stack)
    status, answer = await post(http, url, body)
    assert_error(status, answer, 409)
    assert "InvalidNonce" in answer["error"]  # the contract's revert reason reaches the client
    assert await relayer_nonce_total(w3, local_stack) == before_nonces  # no tx was sent
    after = await metrics(http, local_stack)
    assert after["relayed"] == before["relayed"]
    assert after["relay_refused"] == before["relay_refused"] + 1


async def test_concurrent_duplicates_relay_once(local_stack, http, w3):
    url = f"{local_stack.endpoints.api_url}/api/relay"
    body = await signed_permission(local_stack, http, w3, new_key())
    results = await asyncio.gather(*(post(http, url, body) for _ in range(3)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409, 409], results


async def test_malformed_bodies_get_400_json_and_the_server_keeps_serving(local_stack, http, w3):
    url = f"{local_stack.endpoints.api_url}/api/relay"
    good = await signed_permission(local_stack, http, w3, new_key())

    def variant(**changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(good)), **changes}

    def with_message(**changes: Any) -> dict[str, Any]:
        body = variant()
        body["typedData"]["message"].update(changes)
        return body

    def with_domain(**changes: Any) -> dict[str, Any]:
        body = variant()
        body["typedData"]["domain"].update(changes)
        return body

    no_signature = variant()
    del no_signature["signature"]
    cases: dict[str, tuple[Any, str]] = {
        "garbage": (b"{not json", "JSON"),
        "array": ([1, 2], "object"),
        "empty": ({}, "typedData"),
        "no signature": (no_signature, "signature"),
        "typedData as string": (variant(typedData="x"), "typedData"),
        "signature as int": (variant(signature=5), "signature"),
        "short signature": (variant(signature="0x1234"), "signature"),
        "bad address": (variant(expectedUserAddress="0xnope"), "expectedUserAddress"),
        "nonce not a number": (with_message(nonce="abc"), "message.nonce"),
        "fileUrls not a list": (with_message(fileUrls="x"), "message.fileUrls"),
        "foreign chain": (with_domain(chainId=1), "chainId"),
        "foreign contract": (with_domain(verifyingContract="0x" + "12" * 20), "verifyingContract"),
        "foreign name": (with_domain(name="Other"), "domain"),
    }
    for name, (body, field_name) in cases.items():
        status, answer = await post(http, url, body)
        assert_error(status, answer, 400)
        assert field_name in answer["error"], (name, answer)
    status, answer = await post(http, url, good)
    assert status == 200 and answer["success"], answer


async def test_contract_reverts_other_than_replay_are_422(local_stack, http, w3):
    key = new_key()
    body = await signed_permission(local_stack, http, w3, key)
    body["typedData"]["message"]["schemaIds"] = [0, 1]  # two schema ids for one file
    body["signature"] = permission.sign(key, body["typedData"])
    status, answer = await post(http, f"{local_stack.endpoints.api_url}/api/relay", body)
    assert_error(status, answer, 422)
    assert "InvalidSchemaIdsLength" in answer["error"]


async def test_twenty_concurrent_users_all_relay_through_the_pool(local_stack, http, w3):
    url = f"{local_stack.endpoints.api_url}/api/relay"
    keys = [new_key() for _ in range(20)]
    bodies = await asyncio.gather(
        *(signed_permission(local_stack, http, w3, k, nonce=0) for k in keys)
    )
    before = await metrics(http, local_stack)
    results = await asyncio.gather(*(post(http, url, b) for b in bodies))
    assert all(status == 200 for status, _ in results), results
    receipts = await asyncio.gather(
        *(chain.wait_receipt(w3, a["transactionHash"], 30, 0.05) for _, a in results)
    )
    assert all(r["status"] == 1 for r in receipts)
    assert len({r["from"] for r in receipts}) == local_stack.relayers  # every relayer took some
    after = await metrics(http, local_stack)
    assert after["relayed"] - before["relayed"] == 20
    assert after["relay_errors"] == before["relay_errors"]
    assert after["relay_retries"] == before["relay_retries"]  # no nonce clash on any account


# --- trusted server -----------------------------------------------------------------------------


def test_operation_request_json_format_is_pinned():
    # JSON.stringify({permission_id: 5}), as the SDK's createOperation signs it.
    assert operation_request_json(5) == '{"permission_id":5}'
    assert json.loads(operation_request_json(12)) == {"permission_id": 12}


async def test_trusted_server_submit_and_poll_reach_succeeded(local_stack, http, w3):
    ep = local_stack.endpoints
    body = await signed_permission(local_stack, http, w3, new_key(), real_files=True)
    status, answer = await post(http, f"{ep.api_url}/api/relay", body)
    assert status == 200, answer
    receipt = await chain.wait_receipt(w3, answer["transactionHash"], 30, 0.05)
    permission_id = chain.decode_permission_added(receipt)

    status, answer = await post(
        http, f"{ep.api_url}/api/trusted-server", {"permissionId": permission_id}
    )
    assert status == 200 and answer["success"], answer
    op_id = answer["data"]["id"]
    poll = {"operationId": op_id, "chainId": ep.chain_id}
    for _ in range(200):
        status, answer = await post(http, f"{ep.api_url}/api/trusted-server/poll", poll)
        assert status == 200, answer
        if answer["data"]["status"] not in ("starting", "processing"):
            break
        await asyncio.sleep(0.05)
    assert answer["data"]["status"] == "succeeded", answer
    assert answer["data"]["result"]


async def test_trusted_server_errors(local_stack, http):
    api = local_stack.endpoints.api_url
    chain_id = local_stack.endpoints.chain_id
    status, answer = await post(
        http, f"{api}/api/trusted-server/poll", {"operationId": "nope", "chainId": chain_id}
    )
    assert_error(status, answer, 404)
    status, answer = await post(
        http, f"{api}/api/trusted-server/poll", {"operationId": "x", "chainId": 1}
    )
    assert_error(status, answer, 400)
    status, answer = await post(http, f"{api}/api/trusted-server", {"permissionId": "five"})
    assert_error(status, answer, 400)
    # The personal server knows no permission 10**9: its refusal passes through as 404, so a
    # client does not retry a permanent answer.
    status, answer = await post(http, f"{api}/api/trusted-server", {"permissionId": 10**9})
    assert_error(status, answer, 404)
    assert "personal server answered 404" in answer["error"]


async def test_identity_is_proxied(local_stack, http):
    user = Account.create().address
    url = f"{local_stack.endpoints.api_url}/identity"
    async with http.get(url, params={"address": user}) as resp:
        answer = await resp.json()
    assert resp.status == 200 and answer["user_address"] == user
    assert answer["personal_server"]["public_key"].startswith("0x04")
    async with http.get(url, params={"address": "0x12"}) as resp:
        assert_error(resp.status, await resp.json(), 400)


# --- downstream faults, with an in-process API server ------------------------------------------


async def slow_personal_server(delay_s: float) -> TestServer:
    async def identity(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/identity", identity)
    server = TestServer(app)
    await server.start_server()
    return server


async def api_client(local_stack, personal_url: str) -> TestClient:
    ep = local_stack.endpoints
    config = {
        "rpc_url": ep.rpc_url,
        "chain_id": ep.chain_id,
        "contracts": ep.contracts,
        "personal_server_url": personal_url,
        "personal_server_timeout_s": 0.3,
    }
    app = build_app(config, anvil.dev_key(1), [anvil.dev_key(19)])  # key 19: no sends here
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def flaky_personal_server(drops: int, status: int = 200) -> tuple[TestServer, list[str]]:
    """Closes the first `drops` connections without an answer, then answers `status`."""
    seen: list[str] = []

    async def identity(request: web.Request) -> web.Response:
        seen.append(request.path)
        if len(seen) <= drops and request.transport is not None:
            request.transport.close()  # no answer at all: the connection is simply lost
        return web.json_response({"personal_server": {}, "error": "queue full"}, status=status)

    app = web.Application()
    app.router.add_get("/identity", identity)
    server = TestServer(app)
    await server.start_server()
    return server, seen


async def test_lost_connections_to_the_personal_server_are_retried_answers_are_not(local_stack):
    user = Account.create().address
    dropping, dropped = await flaky_personal_server(drops=2)
    busy, asked = await flaky_personal_server(drops=0, status=503)
    clients = [
        await api_client(local_stack, str(s.make_url("")).rstrip("/")) for s in (dropping, busy)
    ]
    try:
        resp = await clients[0].get("/identity", params={"address": user})
        assert resp.status == 200 and dropped == ["/identity"] * 3  # two lost, the third answers
        resp = await clients[1].get("/identity", params={"address": user})
        assert_error(resp.status, await resp.json(), 503)  # the client's to retry, not ours
        assert asked == ["/identity"]
    finally:
        for closable in (*clients, dropping, busy):
            await closable.close()


async def test_personal_server_down_or_slow_is_a_502_or_504(local_stack):
    user = Account.create().address
    down = await api_client(local_stack, f"http://127.0.0.1:{free_port()}")
    slow_server = await slow_personal_server(5.0)
    slow = await api_client(local_stack, str(slow_server.make_url("")).rstrip("/"))
    try:
        resp = await down.get("/identity", params={"address": user})
        assert_error(resp.status, await resp.json(), 502)
        resp = await slow.get("/identity", params={"address": user})
        body = await resp.json()
        assert_error(resp.status, body, 504)
        assert "timed out" in body["error"]
    finally:
        await down.close()
        await slow.close()
        await slow_server.close()


# --- the relayer alone: restart and fee replacement, on a private anvil -------------------------


@pytest.fixture
async def private_chain(tmp_path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A fresh anvil with the contracts, for tests that change how it mines."""
    port = free_port()
    proc = anvil.start_anvil(port, tmp_path / "anvil.log")
    rpc_url = f"http://127.0.0.1:{port}"
    try:
        await anvil.wait_ready(rpc_url, timeout_s=15, proc=proc)
        app_key = anvil.dev_key(1)
        contracts = await deploy_all(
            rpc_url, anvil.dev_key(0), anvil.dev_address(1), crypto.public_key_of(app_key)
        )
        yield rpc_url, contracts
    finally:
        terminate(proc)


def bare_permission(rpc_contracts: dict[str, str], key: str, nonce: int) -> tuple[str, tuple, str]:
    server = Account.create().address
    message = {
        "nonce": nonce,
        "granteeId": 1,
        "grant": "ipfs://grant",
        "fileUrls": [f"ipfs://file-{Account.from_key(key).address}-{nonce}"],
        "schemaIds": [0],
        "serverAddress": server,
        "serverUrl": "http://server",
        "serverPublicKey": "0x04",
        "filePermissions": [[{"account": server, "key": "00"}]],
    }
    typed = permission.typed_data(anvil.CHAIN_ID, rpc_contracts[PERMISSIONS], message)
    user = Account.from_key(key).address
    return user, permission.contract_input(typed), permission.sign(key, typed)


async def test_a_restarted_relayer_resumes_from_the_chains_nonces(private_chain):
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    keys = [anvil.dev_key(2)]
    try:
        first = Relayer(w3, contracts[PERMISSIONS], keys, confirm_poll_s=0.05)
        await first.start()
        key = new_key()
        await first.relay(*bare_permission(contracts, key, 0))
        await first.close()
        second = Relayer(w3, contracts[PERMISSIONS], keys, confirm_poll_s=0.05)
        await second.start()
        tx_hash = await second.relay(*bare_permission(contracts, key, 1))
        assert (await chain.wait_receipt(w3, tx_hash, 10, 0.05))["status"] == 1
        assert second.retries == 0  # it started from the chain's count, no "nonce too low"
        await second.close()
    finally:
        await chain.close_web3(w3)


async def test_a_pending_tx_can_be_replaced_with_higher_fees(private_chain):
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    relayer = Relayer(w3, contracts[PERMISSIONS], [anvil.dev_key(3)], confirm_poll_s=0.05)
    try:
        await relayer.start()
        await anvil.rpc(rpc_url, "evm_setAutomine", [False])  # nothing mines until we say so
        key = new_key()
        args = bare_permission(contracts, key, 0)
        first = await relayer.relay(*args)
        with pytest.raises(RelayError) as refused:  # the same message while it is pending
            await relayer.relay(*args)
        assert refused.value.status == 409
        assert relayer.gauges()["relayer_pending"] == 1
        second = await relayer.replace(first)
        assert second != first
        await anvil.rpc(rpc_url, "evm_mine")
        receipt = await chain.wait_receipt(w3, second, 10, 0.05)
        assert receipt["status"] == 1
        for _ in range(100):  # the confirm loop notices the mined nonce
            if relayer.gauges()["relayer_pending"] == 0:
                break
            await asyncio.sleep(0.05)
        assert relayer.gauges()["relayer_pending"] == 0
        assert relayer.gauges()["confirmed"] == 1
    finally:
        await relayer.close()
        await chain.close_web3(w3)


async def test_a_stale_nonce_is_resynced_and_retried_on_another_account(private_chain):
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    keys = [anvil.dev_key(4), anvil.dev_key(5)]
    relayer = Relayer(w3, contracts[PERMISSIONS], keys, confirm_poll_s=0.05)
    try:
        await relayer.start()
        # Someone else spends a nonce of the account picked first (round-robin starts at 0).
        await chain.send_tx(
            w3,
            keys[0],
            {"to": anvil.dev_address(0), "value": 0, "gas": 21000},
            chain.NonceManager(w3, anvil.dev_address(4)),
        )
        user_key = new_key()
        tx_hash = await relayer.relay(*bare_permission(contracts, user_key, 0))
        assert (await chain.wait_receipt(w3, tx_hash, 10, 0.05))["status"] == 1
        assert relayer.retries == 1
    finally:
        await relayer.close()
        await chain.close_web3(w3)


async def test_a_replacement_lost_in_transport_is_not_counted_as_sent():
    # The tx being replaced keeps the pending count past its nonce whether or not the replacement
    # reached the node, so that count must not vouch for a replacement (a phantom hash otherwise).
    class Eth:
        async def send_raw_transaction(self, raw):
            raise aiohttp.ClientConnectionError("connection dropped")

        async def get_transaction_count(self, address, block):
            return 8  # nonce 7 is pending: the original

    fake = type("W3", (), {"eth": Eth()})()
    relayer = Relayer(AsyncWeb3(), "0x" + "11" * 20, [anvil.dev_key(3)])
    relayer.w3 = fake
    acct = relayer.accounts[0]
    acct.nonces.w3 = fake
    tx = {
        "to": "0x" + "11" * 20,
        "data": "0x",
        "value": 0,
        "gas": 100_000,
        "chainId": anvil.CHAIN_ID,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": 7,
    }
    acct.pending[7] = PendingTx(7, tx, ["0xaa"], ("0xuser", 0))
    with pytest.raises(RelayError) as caught:
        await relayer.replace("0xaa")
    assert caught.value.status == 504
    assert acct.pending[7].hashes == ["0xaa"] and acct.pending[7].tx == tx


# --- stuck transactions, judged by the chain ----------------------------------------------------


class Ticks:
    """Counts the relayer's confirm-loop passes, so a test waits for passes, not for time."""

    def __init__(self, relayer: Relayer):
        self.count = 0
        original = relayer._confirm

        async def counted(acct, head, queue):
            await original(acct, head, queue)
            self.count += 1

        relayer._confirm = counted

    async def wait(self, passes: int = 3) -> None:
        target = self.count + passes
        for _ in range(2000):  # a bound on waiting, not a timing assertion
            if self.count >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the confirm loop made {self.count} passes, wanted {target}")


async def until(predicate, what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def mine(rpc_url: str, blocks: int) -> None:
    for _ in range(blocks):
        await anvil.rpc(rpc_url, "evm_mine")


def stuck_relayer(w3, contracts, key: str, **settings) -> Relayer:
    """A relayer whose clock floor is negligible: only the chain decides what is stuck."""
    options = {"confirm_poll_s": 0.02, "stuck_after_s": 0.0, "stuck_after_blocks": 3, **settings}
    return Relayer(w3, contracts[PERMISSIONS], [key], **options)


async def relay_seen(relayer: Relayer, contracts, ticks: Ticks) -> tuple[str, str, int, str]:
    """Relays a new user's permission (automine off) and waits until the loop has seen it."""
    key = new_key()
    user, contract_input, signature = bare_permission(contracts, key, 0)
    tx_hash = await relayer.relay(user, contract_input, signature)
    await ticks.wait(2)
    (pending,) = relayer.accounts[0].pending.values()
    assert pending.seen_block is not None
    return tx_hash, user, 0, key


async def test_a_stalled_chain_is_not_a_stuck_tx(private_chain):
    # No blocks: nothing is judged stuck however long it waits (replacing would only add load).
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    relayer = stuck_relayer(w3, contracts, anvil.dev_key(6))
    ticks = Ticks(relayer)
    try:
        await relayer.start()
        await anvil.rpc(rpc_url, "evm_setAutomine", [False])
        tx_hash, *_ = await relay_seen(relayer, contracts, ticks)
        await ticks.wait(20)
        assert relayer.gauges()["relay_replaced"] == 0
        assert relayer.accounts[0].pending[0].hashes == [tx_hash]
        await mine(rpc_url, 1)
        await until(lambda: relayer.gauges()["confirmed"] == 1, "the tx confirmed")
        assert relayer.gauges()["relayer_pending"] == 0 and relayer._in_flight == {}
    finally:
        await relayer.close()
        await chain.close_web3(w3)


async def test_an_underpriced_tx_passed_over_by_blocks_is_replaced_and_found(private_chain):
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    relayer = stuck_relayer(w3, contracts, anvil.dev_key(7))
    ticks = Ticks(relayer)
    try:
        await relayer.start()
        await anvil.rpc(rpc_url, "evm_setAutomine", [False])
        tx_hash, user, nonce, _ = await relay_seen(relayer, contracts, ticks)
        max_fee = relayer.accounts[0].pending[0].tx["maxFeePerGas"]
        # The base fee jumps far above what the tx offers (empty blocks lower it 12.5 % each).
        await anvil.rpc(rpc_url, "anvil_setNextBlockBaseFeePerGas", [hex(100 * max_fee)])
        await mine(rpc_url, 2)
        await ticks.wait(3)
        assert relayer.gauges()["relay_replaced"] == 0  # two blocks: not yet
        await mine(rpc_url, 1)
        await until(lambda: relayer.gauges()["relay_replaced"] == 1, "one replacement")
        gauges = relayer.gauges()
        assert gauges["relay_replaced_underpriced"] == 1, str(gauges)
        assert gauges["relay_replaced_dropped"] == gauges["relay_replaced_stalled"] == 0
        first, replacement = relayer.accounts[0].pending[0].hashes
        assert first == tx_hash and replacement != tx_hash
        await mine(rpc_url, 1)
        # The flow's confirm finds the permission under the replacement, with raw requests only.
        client = chain.make_web3(rpc_url, timeout_s=10)  # the flow's own, as in a run
        permissions = chain.contract(client, PERMISSIONS, contracts[PERMISSIONS])
        sent = count_methods(client)
        try:
            done = await chain.wait_permission(permissions, tx_hash, user, nonce, 10, 0.02, 0.05)
        finally:
            await chain.close_web3(client)
        assert (done.permission_id, done.tx_hash, done.receipt["status"]) == (1, replacement, 1)
        assert set(sent) <= {
            "eth_getTransactionReceipt",
            "eth_call",
            "eth_blockNumber",
            "eth_getLogs",
        }
        await until(lambda: relayer.gauges()["confirmed"] == 1, "confirmed")
        assert relayer._in_flight == {}
    finally:
        await relayer.close()
        await chain.close_web3(w3)


def count_methods(w3) -> list[str]:
    """The JSON-RPC methods `w3` sends from now on (a list that fills as they go)."""
    sent: list[str] = []
    provider = w3.provider
    original = provider._make_request

    async def counting(method, request_data):
        sent.append(str(method))
        return await original(method, request_data)

    provider._make_request = counting
    return sent


async def test_a_dropped_tx_is_sent_again_at_most_max_replacements_times(private_chain):
    # Each send is dropped from the pool again: replacements back off (1, 2, 4 blocks) and stop
    # at the cap, while blocks keep coming.
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    relayer = stuck_relayer(
        w3, contracts, anvil.dev_key(8), stuck_after_blocks=1, max_replacements=2
    )
    ticks = Ticks(relayer)
    try:
        await relayer.start()
        await anvil.rpc(rpc_url, "evm_setAutomine", [False])
        await relay_seen(relayer, contracts, ticks)
        pending = relayer.accounts[0].pending[0]

        async def drop_and_mine(blocks: int) -> None:
            await anvil.rpc(rpc_url, "anvil_dropAllTransactions")
            await mine(rpc_url, blocks)
            await ticks.wait(3)

        await drop_and_mine(1)
        assert relayer.gauges()["relay_replaced_dropped"] == 1 and len(pending.hashes) == 2
        await until(lambda: pending.seen_block is not None, "the replacement seen")
        await drop_and_mine(1)  # the second replacement waits for 2 blocks
        assert relayer.gauges()["relay_replaced"] == 1
        await drop_and_mine(1)
        assert relayer.gauges()["relay_replaced_dropped"] == 2
        await until(lambda: pending.seen_block is not None, "the replacement seen")
        await drop_and_mine(10)  # capped: no third replacement however many blocks pass
        gauges = relayer.gauges()
        assert (gauges["relay_replaced"], gauges["relay_replace_capped"]) == (2, 1)
        assert len(pending.hashes) == 3
    finally:
        await relayer.close()
        await chain.close_web3(w3)


async def test_a_lost_tx_does_not_leave_its_user_refused(private_chain):
    # The pool drops A's tx; the next send takes A's relayer nonce again (the chain's pending
    # count says it is free). A's message is then not in flight: relaying it again must work,
    # where a stale in-flight entry answered 409 until a restart.
    rpc_url, contracts = private_chain
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    relayer = Relayer(w3, contracts[PERMISSIONS], [anvil.dev_key(9)], confirm_poll_s=0.02)
    try:
        await relayer.start()
        await anvil.rpc(rpc_url, "evm_setAutomine", [False])
        a = bare_permission(contracts, new_key(), 0)
        await relayer.relay(*a)
        await anvil.rpc(rpc_url, "anvil_dropAllTransactions")
        await relayer.accounts[0].nonces.resync()  # as after any failed send
        await relayer.relay(*bare_permission(contracts, new_key(), 0))
        assert relayer.gauges()["relay_displaced"] == 1
        again = await relayer.relay(*a)
        await mine(rpc_url, 1)
        assert (await chain.wait_receipt(w3, again, 10, 0.02))["status"] == 1
        await until(lambda: relayer.gauges()["confirmed"] == 2, "both confirmed")
        assert relayer._in_flight == {} and relayer.gauges()["relayer_pending"] == 0
    finally:
        await relayer.close()
        await chain.close_web3(w3)


async def test_a_tx_behind_full_blocks_waits_its_turn_and_one_with_room_is_stalled():
    # The node's answers, faked: the tx is in the pool (pending count past it) and priced to
    # mine; whether it was passed over for lack of room decides between waiting and replacing.
    from web3 import AsyncWeb3

    from workbench.stack.relayer import PendingTx

    sent: list[bytes] = []

    class Eth:
        async def get_transaction_count(self, address, block):
            return 8  # nonce 7 is in the pool

        async def send_raw_transaction(self, raw):
            sent.append(raw)

    class Provider:
        gas_used = 0

        async def make_request(self, method, params):
            assert method == "eth_getBlockByNumber"
            block = {"baseFeePerGas": hex(10**9), "gasLimit": hex(30_000_000)}
            return {"result": {**block, "gasUsed": hex(self.gas_used)}}

    fake = type("W3", (), {"eth": Eth(), "provider": Provider()})()
    relayer = Relayer(AsyncWeb3(), "0x" + "11" * 20, [anvil.dev_key(3)])
    relayer.w3 = fake
    acct = relayer.accounts[0]
    tx = {
        "to": "0x" + "11" * 20,
        "data": "0x",
        "value": 0,
        "gas": 1_500_000,
        "chainId": anvil.CHAIN_ID,
        "maxFeePerGas": 3 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": 7,
    }
    pending = acct.pending[7] = PendingTx(7, tx, ["0xaa"], ("0xuser", 0), seen_block=100)
    Provider.gas_used = 29_000_000  # no room for 1.5 M more
    await relayer._replace_stuck(acct, pending)
    assert (relayer.waited_full_blocks, relayer.replaced, sent) == (1, 0, [])
    assert pending.replacements == 0 and pending.seen_block is None  # counted again from here
    Provider.gas_used = 1_000_000  # room, yet it was passed over
    await relayer._replace_stuck(acct, pending)
    assert relayer.replaced_by["stalled"] == 1 and len(sent) == 1 and len(pending.hashes) == 2
    assert pending.tx["maxFeePerGas"] > tx["maxFeePerGas"]
