"""The personal server as a real process on the session's anvil, with a real storage server:
identities, on-chain permission checks, real decryption, operations and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets

import aiohttp
import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from workbench.stack.anvil import CHAIN_ID, dev_address, dev_key
from workbench.stack.components import start_component, stop_component
from workbench.stack.personal_server import ApiError, Operation, PersonalServer
from workbench.vana import chain, crypto, permission

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SEED = secrets.token_bytes(32)
APP_KEY = dev_key(1)  # grantee 1 (see tests/conftest.py)
SENDER_INDEX = 11  # this module's own dev account for sending, so nonces never collide
USER_DATA = json.dumps({"name": "alice", "likes": ["tea", "chess"], "age": 31}).encode()
PROMPT = "Summarise this user"


@pytest.fixture(scope="module")
def stack(anvil, deployed, tmp_path_factory):
    """Storage plus a personal server (simulated inference, no latency)."""
    tmp = tmp_path_factory.mktemp("personal")
    storage, storage_url = start_component(
        "workbench.stack.storage", {"data_dir": str(tmp / "data")}, log_path=tmp / "storage.log"
    )
    config = {
        "rpc_url": anvil.rpc_url,
        "chain_id": CHAIN_ID,
        "storage_url": storage_url,
        "contracts": deployed,
        "inference": {"backend": "simulated", "latency_s": [0, 0], "workers": 2},
    }
    try:
        personal, url = start_component(
            "workbench.stack.personal_server",
            config,
            {"server_seed": SEED.hex()},
            log_path=tmp / "personal.log",
        )
    except BaseException:
        stop_component(storage)
        raise
    yield {"url": url, "storage_url": storage_url, "contracts": deployed, "config": config}
    assert stop_component(personal) == 0
    stop_component(storage)


def expected_identity(user: str) -> tuple[str, str]:
    """(address, public key) from the spec: keccak256(seed || address) reduced into [1, n-1]."""
    scalar = int.from_bytes(keccak(SEED + bytes.fromhex(user[2:])), "big") % (SECP256K1_N - 1) + 1
    public = PrivateKey(scalar.to_bytes(32, "big")).public_key.format(compressed=False)
    return to_checksum_address(keccak(public[1:])[-20:]), "0x" + public.hex()


async def get_json(session, url, **kw):
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.json()


async def post_json(session, url, body):
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


def signed_request(permission_id: int, key: str = APP_KEY) -> dict:
    request_json = json.dumps({"permission_id": permission_id})
    return {
        "app_signature": crypto.personal_sign(key, request_json),
        "operation_request_json": request_json,
    }


async def upload(session, storage_url: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="f")
    async with session.post(f"{storage_url}/api/v0/add", data=form) as resp:
        assert resp.status == 200
        return f"ipfs://{(await resp.json())['Hash']}"


async def grant_permission(w3, session, stack, user_key: str, data: bytes) -> int:
    """One user's flow up to the confirmed permission, as a client does it."""
    user = Account.from_key(user_key).address
    password = crypto.encryption_key(user_key)
    file_url = await upload(session, stack["storage_url"], crypto.encrypt_file(data, password))
    grant = {
        "grantee": dev_address(1),
        "operation": "llm_inference",
        "parameters": {"prompt": PROMPT, "response_format": {"type": "json_object"}},
    }
    grant_url = await upload(session, stack["storage_url"], json.dumps(grant).encode())
    _, ident = await get_json(session, f"{stack['url']}/identity", params={"address": user})
    server = ident["personal_server"]
    permissions = chain.contract(
        w3, "DataPortabilityPermissions", stack["contracts"]["DataPortabilityPermissions"]
    )
    message = {
        "nonce": await permissions.functions.userNonce(user).call(),
        "granteeId": 1,
        "grant": grant_url,
        "fileUrls": [file_url],
        "schemaIds": [0],
        "serverAddress": server["address"],
        "serverUrl": stack["url"],
        "serverPublicKey": server["public_key"],
        "filePermissions": [
            [
                {
                    "account": server["address"],
                    "key": crypto.ecies_encrypt(server["public_key"], password.encode()),
                }
            ]
        ],
    }
    typed = permission.typed_data(CHAIN_ID, permissions.address, message)
    args = [permission.contract_input(typed), permission.sign(user_key, typed)]
    data = permissions.encode_abi("addServerFilesAndPermissions", args=args)
    sender = dev_address(SENDER_INDEX)
    tx = {"to": permissions.address, "data": data}
    tx_hash = await chain.send_tx(w3, dev_key(SENDER_INDEX), tx, chain.NonceManager(w3, sender))
    receipt = await chain.wait_receipt(w3, tx_hash, timeout_s=30, poll_s=0.05)
    return chain.decode_permission_added(receipt, permissions)


async def poll_operation(session, url: str, op_id: str, until) -> dict:
    for _ in range(1000):  # a bound on polls, not a timing assertion
        status, op = await get_json(session, f"{url}/operations/{op_id}")
        assert status == 200
        if until(op["status"]):
            return op
        await asyncio.sleep(0.02)
    raise AssertionError(f"operation {op_id} still {op['status']}")


async def wait_finished(session, url: str, op_id: str) -> dict:
    return await poll_operation(session, url, op_id, lambda s: s not in ("starting", "processing"))


@pytest.mark.e2e
async def test_identity_is_per_user_deterministic_and_as_specified(stack):
    users = [Account.create().address for _ in range(2)]
    async with aiohttp.ClientSession() as s:
        first = [
            await get_json(s, f"{stack['url']}/identity", params={"address": u}) for u in users
        ]
        again = await get_json(s, f"{stack['url']}/identity", params={"address": users[0].lower()})
    (status, ident), (_, other) = first
    assert status == 200 and ident["kind"] == "Identity" and ident["user_address"] == users[0]
    server = ident["personal_server"]
    assert server["kind"] == "PersonalServer"
    assert server["public_key"].startswith("0x04") and len(server["public_key"]) == 132
    assert (server["address"], server["public_key"]) == expected_identity(users[0])
    assert again[1] == ident  # same user, any address case: same key
    assert other["personal_server"]["address"] != server["address"]  # each user their own key


@pytest.mark.e2e
@pytest.mark.parametrize(
    "query", [{}, {"address": "0x123"}, {"address": "alice"}, {"address": "0x" + "g" * 40}]
)
async def test_identity_rejects_bad_addresses(stack, query):
    async with aiohttp.ClientSession() as s:
        status, body = await get_json(s, f"{stack['url']}/identity", params=query)
    assert status == 400 and body["success"] is False


@pytest.mark.e2e
async def test_grantee_operation_end_to_end_decrypts_the_file(stack, w3):
    user_key = Account.create().key.to_0x_hex()
    async with aiohttp.ClientSession() as s:
        permission_id = await grant_permission(w3, s, stack, user_key, USER_DATA)
        status, created = await post_json(
            s, f"{stack['url']}/operations", signed_request(permission_id)
        )
        assert status == 202 and created["status"] in ("starting", "processing", "succeeded")
        # A retried submit (the client may retry) gets the same operation.
        status, retried = await post_json(
            s, f"{stack['url']}/operations", signed_request(permission_id)
        )
        assert status == 202 and retried["id"] == created["id"]
        op = await wait_finished(s, stack["url"], created["id"])
        _, metrics = await get_json(s, f"{stack['url']}/metrics")

    assert op["status"] == "succeeded", op
    (facts,) = op["result"]["files"]
    assert facts["sha256"] == hashlib.sha256(USER_DATA).hexdigest()  # really decrypted
    assert facts["json_keys"] == 3 and facts["bytes"] == len(USER_DATA)
    assert op["result"]["prompt_sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()
    assert metrics["submitted"] >= 1 and metrics["done"] >= 1
    assert set(metrics) >= {"queue_depth", "in_flight", "done", "failed", "submitted"}


@pytest.mark.e2e
async def test_only_the_grantee_may_submit(stack, w3):
    user_key = Account.create().key.to_0x_hex()
    async with aiohttp.ClientSession() as s:
        permission_id = await grant_permission(w3, s, stack, user_key, b'{"a": 1}')
        for key in (dev_key(5), user_key):  # a stranger, and even the data's owner
            status, body = await post_json(
                s, f"{stack['url']}/operations", signed_request(permission_id, key)
            )
            assert status == 403 and body["success"] is False
        # The refused submits created nothing; the grantee then gets a fresh operation.
        status, created = await post_json(
            s, f"{stack['url']}/operations", signed_request(permission_id)
        )
        assert status == 202
        op = await wait_finished(s, stack["url"], created["id"])
        assert op["status"] == "succeeded"
        status, body = await post_json(
            s, f"{stack['url']}/operations", signed_request(permission_id, dev_key(5))
        )
        assert status == 403  # also for a permission that already has an operation


@pytest.mark.e2e
async def test_unknown_permission_and_operation_are_404(stack):
    async with aiohttp.ClientSession() as s:
        status, body = await post_json(s, f"{stack['url']}/operations", signed_request(10**9))
        assert status == 404 and body["success"] is False
        status, body = await get_json(s, f"{stack['url']}/operations/no-such-op")
        assert status == 404 and body["success"] is False


@pytest.mark.e2e
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"app_signature": "0x00"}).encode(),
        json.dumps({"app_signature": 5, "operation_request_json": "{}"}).encode(),
        json.dumps({"app_signature": "0x00", "operation_request_json": "{oops"}).encode(),
        json.dumps(
            {"app_signature": "0x00", "operation_request_json": '{"permission_id": -1}'}
        ).encode(),
        json.dumps(
            {"app_signature": "0xzz", "operation_request_json": '{"permission_id": 1}'}
        ).encode(),
    ],
)
async def test_garbage_bodies_are_4xx_and_server_keeps_serving(stack, body):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{stack['url']}/operations", data=body) as resp:
            assert 400 <= resp.status < 500
            assert (await resp.json())["success"] is False
        status, health = await get_json(s, f"{stack['url']}/health")
        assert status == 200 and health["status"] == "ok"


@pytest.mark.e2e
async def test_full_queue_answers_503_and_stop_cancels(stack, w3, tmp_path):
    """A second server with the same seed (so the same user keys), one slow worker, queue of 1."""
    inference = {"backend": "simulated", "latency_s": [60, 60], "workers": 1, "max_queue": 1}
    proc, url = start_component(
        "workbench.stack.personal_server",
        {**stack["config"], "inference": inference},
        {"server_seed": SEED.hex()},
        log_path=tmp_path / "personal.log",
    )
    try:
        async with aiohttp.ClientSession() as s:
            user = Account.create()
            ours = await get_json(s, f"{url}/identity", params={"address": user.address})
            theirs = await get_json(s, f"{stack['url']}/identity", params={"address": user.address})
            assert ours == theirs  # keys depend on the seed only, not on the instance
            ids = [
                await grant_permission(w3, s, stack, Account.create().key.to_0x_hex(), b"{}")
                for _ in range(3)
            ]
            status, first = await post_json(s, f"{url}/operations", signed_request(ids[0]))
            assert status == 202
            # Once the single worker holds the first operation, the queue is empty again.
            await poll_operation(s, url, first["id"], lambda status: status == "processing")
            status, _ = await post_json(s, f"{url}/operations", signed_request(ids[1]))
            assert status == 202
            status, body = await post_json(s, f"{url}/operations", signed_request(ids[2]))
            assert status == 503 and body["success"] is False
            _, metrics = await get_json(s, f"{url}/metrics")
            assert (metrics["queue_depth"], metrics["in_flight"], metrics["submitted"]) == (1, 1, 2)
    finally:
        assert stop_component(proc) == 0  # exits cleanly with work in flight


# --- in-process units (no processes started) ----------------------------------------------------


def _bare_server(**config):
    return PersonalServer({"rpc_url": "http://127.0.0.1:9", "storage_url": "x", **config}, SEED)


def test_finished_operations_are_retired_beyond_keep_finished(tmp_path):
    # A long run must not keep every operation (and its result) until the server stops.
    from workbench.stack.operations import OperationStore
    from workbench.stack.personal_server import Operation

    server = _bare_server(keep_finished=3, data_dir=str(tmp_path))

    def add(op_id: str, permission_id: int) -> Operation:
        op = Operation(op_id, permission_id, "0xg", "p", {}, [b"x"])
        server.store.add(op.id, op.permission_id, op.grantee, op.status, op.created_at)
        return op

    for i in range(5):
        server._finish(add(f"op{i}", i + 1), "succeeded", result={"ok": i})
    kept = [i for i in range(5) if server.store.get(f"op{i}") is not None]
    assert kept == [2, 3, 4]
    assert server.store.latest_for(1) is None and server.store.latest_for(5).result == {"ok": 4}
    assert server.done == 5  # the gauges still count every operation
    # A retired failed operation leaves the permission's newer, unfinished one in place.
    add("op5", 3)
    for i in range(6, 9):
        server._finish(add(f"op{i}", 100 + i), "failed", error="x")
    assert server.store.latest_for(3).id == "op5" and server.store.get("op2") is None
    # The database is a file: another process (a restarted server) reads the same rows.
    again = OperationStore(tmp_path, keep_finished=3)
    assert [op.id for op in again.unfinished()] == ["op5"]
    assert again.get("op8").status == "failed" and again.get("op8").error == "x"


async def test_revocation_check_rpc_failure_is_502_not_500():
    # `permissions()` answered, then the block number read failed: a downstream fault (502).
    server = _bare_server()

    async def permissions(contract, function, pid):
        assert function == "permissions"
        return (pid, "0xuser", 0, 1, "ipfs://g", 1, 5, [1])  # ends at block 5: check the head

    class Eth:
        @property
        async def block_number(self):
            raise chain.RpcUnavailable("eth_blockNumber: 5 attempts failed")

    server.permissions, server._call = object(), permissions
    server.w3 = type("W", (), {"eth": Eth()})()
    with pytest.raises(ApiError) as caught:
        await server._permission(7)
    assert caught.value.status == 502 and "rpc failed" in caught.value.message
