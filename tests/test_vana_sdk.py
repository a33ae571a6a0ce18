"""Vana's own SDK as a test client: the published `@opendatalabs/vana-sdk`, unchanged, runs one
user's whole flow against the embedded stack in Vana-address mode, relayed by the app and sent
from the user's own wallet (`tests/js/vana_sdk_flow.mjs`, loaded through `sdk_loader.mjs`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest
from eth_account import Account
from jsinterop import run_node

from workbench.driver import wallets
from workbench.stack import anvil
from workbench.stack.local import LocalStack
from workbench.vana import chain
from workbench.vana.network import MOKSHA_CHAIN_ID, SDK_CONTRACTS

pytestmark = pytest.mark.e2e
FUND_WEI = 10**17  # the direct mode's user pays gas


@pytest.fixture(scope="module")
def vana_stack() -> Iterator[LocalStack]:
    with LocalStack("fast", vana_addresses=True) as stack:
        assert stack.endpoints.chain_id == MOKSHA_CHAIN_ID
        assert stack.endpoints.contracts == SDK_CONTRACTS
        yield stack


def sdk_flow(stack: LocalStack, relay: bool) -> tuple[dict, str]:
    key = Account.create().key.to_0x_hex()
    user = Account.from_key(key).address
    if not relay:
        asyncio.run(fund(stack.endpoints.rpc_url, user))
    payload = {
        "endpoints": stack.endpoints.to_json(),
        "user_key": key,
        "app_key": anvil.dev_key(1),
        "relay": relay,
    }
    return run_node("vana_sdk_flow.mjs", payload, timeout_s=120, preload="sdk_loader.mjs"), user


async def fund(rpc_url: str, address: str) -> None:
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    try:
        await wallets.fund(w3, anvil.dev_key(0), [address], target_wei=FUND_WEI)
    finally:
        await chain.close_web3(w3)


def assert_whole_flow(out: dict, stack: LocalStack) -> None:
    assert "error" not in out, out
    # The SDK's IpfsStorage registers ipfs://CID; the app's grant route answers a gateway URL,
    # which the personal server fetched to run the operation.
    assert out["fileUrl"].startswith("ipfs://baf"), out
    assert out["grantUrl"].startswith(f"{stack.endpoints.storage_url}/ipfs/"), out
    assert out["permissionId"] >= 1
    assert out["status"] == "succeeded", out
    # The simulated backend saw the decrypted file: what the SDK's OpenPGP.js encrypted under the
    # key its eccrypto-js sealed for the server.
    [seen] = out["result"]["files"]
    assert seen["sha256"] == hashlib.sha256(out["plaintext"].encode()).hexdigest(), out["result"]


def test_the_sdk_runs_a_whole_flow_through_the_apps_relayer(vana_stack):
    out, user = sdk_flow(vana_stack, relay=True)
    assert_whole_flow(out, vana_stack)
    assert out["txFrom"].lower() != user.lower()  # a relayer account paid


def test_the_sdk_runs_a_whole_flow_with_the_users_own_transaction(vana_stack):
    out, user = sdk_flow(vana_stack, relay=False)
    assert_whole_flow(out, vana_stack)
    assert out["txFrom"].lower() == user.lower()  # no relayer: the user's wallet sent it
