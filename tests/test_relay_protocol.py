"""The SDK's unified relayer protocol on `/api/relay`, beside the upstream mock's format, and the
grant-file routes (`storeGrantFile`, `POST /api/ipfs/upload`): unit checks of the protocol module,
then the shared local stack's API server, then a hypothesis fuzz (never a 5xx, still serving)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
from typing import Any

import aiohttp
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.stack import anvil
from workbench.vana import chain, permission, relay

TIMEOUT = aiohttp.ClientTimeout(total=30)
PERMISSIONS = "DataPortabilityPermissions"
STALE_NONCE = 7  # a fresh user's nonce is 0: a correctly signed body with 7 is always refused
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def typed_for(ep, user_key: str, nonce: int, server: dict[str, str]) -> dict[str, Any]:
    message = {
        "nonce": nonce,
        "granteeId": ep.grantee_id,
        "grant": "ipfs://grant",
        "fileUrls": [f"ipfs://file-{Account.from_key(user_key).address}-{nonce}"],
        "schemaIds": [0],
        "serverAddress": server["address"],
        "serverUrl": ep.personal_server_url,
        "serverPublicKey": server["public_key"],
        "filePermissions": [[{"account": server["address"], "key": "00"}]],
    }
    return permission.typed_data(ep.chain_id, ep.contracts[PERMISSIONS], message)


# --- the protocol module, no servers ------------------------------------------------------------


def test_signed_request_writes_the_sdks_bigints_as_decimal_strings():
    typed = permission.typed_data(
        14800,
        "0xD54523048AdD05b4d734aFaE7C68324Ebb7373eF",
        {
            "nonce": 3,
            "granteeId": 1,
            "grant": "ipfs://g",
            "fileUrls": ["ipfs://f"],
            "schemaIds": [0],
            "serverAddress": "0x" + "11" * 20,
            "serverUrl": "http://s",
            "serverPublicKey": "0x04",
            "filePermissions": [[{"account": "0x" + "11" * 20, "key": "ab"}]],
        },
    )
    body = relay.signed_request(typed, "0x" + "00" * 65, "0x" + "22" * 20)
    assert body["type"] == "signed"
    assert body["operation"] == "submitAddServerFilesAndPermissions"
    message = body["typedData"]["message"]
    assert (message["nonce"], message["granteeId"], message["schemaIds"]) == ("3", "1", ["0"])
    assert body["typedData"]["domain"]["chainId"] == 14800  # a JS number in the SDK, not a bigint
    assert typed["message"]["nonce"] == 3  # the caller's typed data is left alone
    # The server's gate takes the strings back to the same signed digest.
    assert permission.digest(permission.validate(body["typedData"])) == permission.digest(typed)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"type": "sign"}, "'type'"),
        ({"type": "signed"}, "'operation'"),
        ({"type": "signed", "operation": "submitTrustServer"}, "not supported"),
        ({"type": "signed", "operation": "doSomething"}, "unknown"),
        ({"type": "direct", "operation": "submitFileAddition", "params": {}}, "not supported"),
        ({"type": "direct", "operation": "storeGrantFile"}, "'params'"),
        ({"type": "signed", "operation": "submitAddServerFilesAndPermissions"}, "'typedData'"),
        (
            {
                "type": "signed",
                "operation": "submitAddServerFilesAndPermissions",
                "typedData": {},
                "signature": "0x",
                "expectedUserAddress": 5,
            },
            "'expectedUserAddress'",
        ),
    ],
)
def test_parse_unified_names_what_is_wrong(body, words):
    with pytest.raises(relay.RelayRequestError, match=words):
        relay.parse_unified(body)


def test_answered_hash_reads_both_protocols_and_refuses_errors():
    tx = "0x" + "ab" * 32
    assert relay.answered_hash({"type": "signed", "hash": tx}) == tx
    assert relay.answered_hash({"success": True, "transactionHash": tx}) == tx
    with pytest.raises(ValueError, match="InvalidNonce"):
        relay.answered_hash({"type": "error", "error": "InvalidNonce"})
    for bad in ({"type": "signed", "hash": "0x12"}, {"type": "direct", "result": {}}, [tx], None):
        with pytest.raises(ValueError, match="no transaction hash"):
            relay.answered_hash(bad)


# --- against the shared local stack -------------------------------------------------------------


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def get_bytes(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def identity(ep, user: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(f"{ep.api_url}/identity", params={"address": user}) as resp,
    ):
        return (await resp.json())["personal_server"]


def assert_relay_error(status: int, answer: Any, expected: set[int]) -> None:
    assert status in expected, (status, answer)
    assert answer["type"] == "error" and answer["success"] is False, answer
    assert isinstance(answer["error"], str) and answer["error"], answer


@pytest.mark.e2e
async def test_unified_signed_request_is_relayed_and_mined(local_stack):
    ep = local_stack.endpoints
    key = Account.create().key.to_0x_hex()
    user = Account.from_key(key).address
    typed = typed_for(ep, key, 0, await identity(ep, user))
    body = relay.signed_request(typed, permission.sign(key, typed), user)
    del body["expectedUserAddress"]  # optional in the unified protocol, as the SDK sends it
    status, answer = await post(f"{ep.api_url}/api/relay", body)
    assert status == 200 and answer["type"] == "signed", answer
    w3 = chain.make_web3(ep.rpc_url, timeout_s=10)
    try:
        receipt = await chain.wait_receipt(w3, answer["hash"], 30, 0.05)
        permission_id = chain.decode_permission_added(receipt)
        contract = chain.contract(w3, PERMISSIONS, ep.contracts[PERMISSIONS])
        assert (await contract.functions.permissions(permission_id).call())[1] == user
    finally:
        await chain.close_web3(w3)
    status, answer = await post(f"{ep.api_url}/api/relay", body)  # the same message again
    assert_relay_error(status, answer, {409})
    assert "InvalidNonce" in answer["error"]


@pytest.mark.e2e
async def test_unified_errors_keep_the_status_policy(local_stack):
    ep = local_stack.endpoints
    key, stranger = Account.create().key.to_0x_hex(), Account.create().address
    user = Account.from_key(key).address
    typed = typed_for(ep, key, 0, await identity(ep, user))
    good = relay.signed_request(typed, permission.sign(key, typed), user)
    wrong_signer = {**good, "expectedUserAddress": stranger}
    two_schemas = copy.deepcopy(good)
    two_schemas["typedData"]["message"]["schemaIds"] = ["0", "1"]
    two_schemas["signature"] = permission.sign(key, two_schemas["typedData"])
    numbers = copy.deepcopy(good)  # uint256 as JSON numbers: accepted as well
    numbers["typedData"]["message"]["nonce"] = 0
    cases = [
        (wrong_signer, {403}, "expectedUserAddress"),
        (two_schemas, {422}, "InvalidSchemaIdsLength"),
        ({**good, "operation": "submitTrustServer"}, {400}, "not supported"),
        ({**good, "signature": 5}, {400}, "signature"),
        ({**good, "typedData": "x"}, {400}, "typedData"),
    ]
    for body, statuses, words in cases:
        status, answer = await post(f"{ep.api_url}/api/relay", body)
        assert_relay_error(status, answer, statuses)
        assert words in answer["error"], (words, answer)
    status, answer = await post(f"{ep.api_url}/api/relay", numbers)
    assert status == 200 and relay.answered_hash(answer), answer


@pytest.mark.e2e
async def test_store_grant_file_answers_a_gateway_url_serving_the_sdks_json(local_stack):
    ep = local_stack.endpoints
    grant = {
        "grantee": anvil.dev_address(1),
        "operation": "llm_inference",
        "parameters": {"prompt": "Résumé, please", "response_format": {"type": "json_object"}},
    }
    body = {"type": "direct", "operation": "storeGrantFile", "params": grant}
    status, answer = await post(f"{ep.api_url}/api/relay", body)
    assert status == 200 and answer["type"] == "direct", answer
    url = answer["result"]["url"]
    assert url.startswith(f"{ep.storage_url}/ipfs/baf"), url
    status, stored = await get_bytes(url)
    # JSON.stringify's bytes: no whitespace, UTF-8 as is.
    assert status == 200
    assert stored == json.dumps(grant, separators=(",", ":"), ensure_ascii=False).encode()
    bad = {**body, "params": {"grantee": 5}}
    assert_relay_error(*(await post(f"{ep.api_url}/api/relay", bad)), {400})
    for operation in ("submitFileAddition", "submitFileAdditionComplete"):
        refused = {"type": "direct", "operation": operation, "params": {"url": "ipfs://x"}}
        status, answer = await post(f"{ep.api_url}/api/relay", refused)
        assert_relay_error(status, answer, {400})
        assert "not supported" in answer["error"]


@pytest.mark.e2e
async def test_ipfs_upload_route_stores_the_file_field(local_stack):
    ep = local_stack.endpoints
    data = json.dumps({"grantee": "0x", "pretty": True}, indent=2).encode()
    form = aiohttp.FormData()
    form.add_field("file", data, filename="grant-file.json", content_type="application/json")
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(f"{ep.api_url}/api/ipfs/upload", data=form) as resp,
    ):
        status, answer = resp.status, await resp.json()
    assert status == 200 and answer["success"] is True, answer
    assert await get_bytes(answer["url"]) == (200, data)
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="f")
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(f"{ep.api_url}/api/ipfs/upload", data=form) as resp,
    ):
        assert resp.status == 400
        assert "'file'" in (await resp.json())["error"]


# --- fuzz: unified requests never get a 5xx and never stop the server --------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["signed", "direct", "error", *relay.SDK_SIGNED_OPERATIONS, "", "0x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=10,
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, valid: dict) -> Any:
    """`valid` with one value replaced or one key dropped."""
    body = copy.deepcopy(valid)
    path = draw(st.sampled_from(paths_of(body)))
    if not path:
        return draw(json_values)
    *parents, last = path
    holder = body
    for key in parents:
        holder = holder[key]
    if draw(st.booleans()):
        del holder[last]
    else:
        holder[last] = draw(json_values)
    return body


@pytest.fixture(scope="module")
def unified_bodies(local_stack) -> list[dict[str, Any]]:
    """A correctly signed unified request the contract refuses (stale nonce), and a grant file."""
    ep = local_stack.endpoints
    key = Account.create().key.to_0x_hex()
    user = Account.from_key(key).address
    typed = typed_for(ep, key, STALE_NONCE, asyncio.run(identity(ep, user)))
    grant = {"grantee": user, "operation": "llm_inference", "parameters": {"prompt": "p"}}
    return [
        relay.signed_request(typed, permission.sign(key, typed), user),
        {"type": "direct", "operation": "storeGrantFile", "params": grant},
    ]


@pytest.mark.e2e
@FUZZ
@given(data=st.data())
def test_fuzzed_unified_requests_never_get_a_5xx(local_stack, unified_bodies, data):
    body = data.draw(st.sampled_from(unified_bodies).flatmap(mutated))
    status, answer = asyncio.run(post(f"{local_stack.endpoints.api_url}/api/relay", body))
    assert status < 500, (status, answer, body)
    if status >= 400:
        assert_relay_error(status, answer, {status})
    else:  # only a grant file can be stored; the signed body's nonce is stale
        assert answer["type"] == "direct" and answer["result"]["url"], (answer, body)


async def post_raw(url: str, body: bytes, content_type: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(url, data=body, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


@pytest.mark.e2e
@FUZZ
@given(
    name=st.sampled_from(["file", "File", "", "files"]),
    data=st.binary(max_size=300),
    boundary=st.sampled_from(["b", "", "x y"]),
    cut=st.integers(0, 400),
)
def test_fuzzed_grant_uploads_never_get_a_5xx(local_stack, name, data, boundary, cut):
    body = (
        f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="g"\r\n\r\n'.encode()
        + data
        + b"\r\n--b--\r\n"
    )[: cut or None]
    url = f"{local_stack.endpoints.api_url}/api/ipfs/upload"
    status, answer = asyncio.run(post_raw(url, body, f"multipart/form-data; boundary={boundary}"))
    assert status < 500, (status, answer)
    assert (status == 200) == (answer.get("success") is True), answer
    if status == 200:
        assert answer["url"].startswith(f"{local_stack.endpoints.storage_url}/ipfs/")


@pytest.mark.e2e
def test_relay_still_serves_after_the_fuzz(local_stack, unified_bodies):
    status, answer = asyncio.run(
        post(f"{local_stack.endpoints.api_url}/api/relay", unified_bodies[0])
    )
    assert_relay_error(status, answer, {409})
    assert "InvalidNonce" in answer["error"]
