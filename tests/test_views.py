"""`workbench.vana.views.ViewFunction` answers what web3's contract call answers, with one eth_call."""

from __future__ import annotations

import pytest
from eth_abi import decode, encode
from eth_abi.exceptions import InsufficientDataBytes
from eth_account import Account
from eth_utils import to_checksum_address
from web3.exceptions import ContractLogicError

from workbench.vana import chain
from workbench.vana import contracts as vana_contracts
from workbench.vana.views import ViewFunction

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack_w3(local_stack):
    w3 = chain.make_web3(local_stack.endpoints.rpc_url, timeout_s=10)
    yield w3
    await chain.close_web3(w3)


async def test_same_answers_as_web3(local_stack, stack_w3) -> None:
    contracts = local_stack.endpoints.contracts
    grantees = chain.contract(
        stack_w3, "DataPortabilityGrantees", contracts["DataPortabilityGrantees"]
    )
    permissions = chain.contract(
        stack_w3, "DataPortabilityPermissions", contracts["DataPortabilityPermissions"]
    )
    user = Account.create().address
    grantee_id = local_stack.endpoints.grantee_id
    assert await ViewFunction(grantees, "grantees")(grantee_id) == tuple(
        await grantees.functions.grantees(grantee_id).call()
    )
    assert await ViewFunction(permissions, "userNonce")(user) == (
        await permissions.functions.userNonce(user).call()
    )


async def test_counts_one_request_per_call(local_stack, stack_w3) -> None:
    contracts = local_stack.endpoints.contracts
    permissions = chain.contract(
        stack_w3, "DataPortabilityPermissions", contracts["DataPortabilityPermissions"]
    )
    sent: list[str] = []
    provider = stack_w3.provider
    original = provider._make_request

    async def counting(method, request_data):
        sent.append(str(method))
        return await original(method, request_data)

    provider._make_request = counting
    await ViewFunction(permissions, "userNonce")(Account.create().address)
    assert sent == ["eth_call"]


def test_unknown_function_is_refused(local_stack) -> None:
    w3 = chain.make_web3(local_stack.endpoints.rpc_url)
    c = chain.contract(
        w3, "DataPortabilityGrantees", local_stack.endpoints.contracts["DataPortabilityGrantees"]
    )
    with pytest.raises(ValueError, match="noSuchFunction"):
        ViewFunction(c, "noSuchFunction")


async def test_revert_answered_as_a_bare_string_is_a_contract_logic_error() -> None:
    # Some nodes put a string, not an object, under "error"; that must not become AttributeError.
    class Provider:
        async def make_request(self, method, params):
            return {"jsonrpc": "2.0", "id": 1, "error": "execution reverted"}

    fake = type(
        "Contract",
        (),
        {
            "abi": vana_contracts.abi("DataPortabilityPermissions"),
            "w3": type("W3", (), {"provider": Provider()})(),
            "address": "0x" + "11" * 20,
        },
    )()
    with pytest.raises(ContractLogicError, match="execution reverted"):
        await ViewFunction(fake, "userNonce")("0x" + "22" * 20)


def _fake_contract(name: str, answer: str):
    class Provider:
        async def make_request(self, method, params):
            return {"jsonrpc": "2.0", "id": 1, "result": answer}

    attrs = {
        "abi": vana_contracts.abi(name),
        "w3": type("W3", (), {"provider": Provider()})(),
        "address": "0x" + "11" * 20,
    }
    return type("Contract", (), attrs)()


async def test_a_long_permission_id_list_decodes_as_eth_abi_does() -> None:
    """The grantee's growing uint256[] is decoded in one slice: same values as eth_abi's, and a
    truncated or forged answer still fails as eth_abi fails."""
    owner, grantee = "0x" + "aB" * 20, "0x" + "Cd" * 20
    ids = [0, 1, 2**256 - 1, *range(7, 400)]
    types = ["(address,address,string,uint256[])"]
    raw = encode(types, [(owner, grantee, "0xpublic", ids)])
    view = ViewFunction(_fake_contract("DataPortabilityGrantees", "0x" + raw.hex()), "grantees")
    answer = await view(1)
    (expected,) = decode(types, raw)
    assert answer == (to_checksum_address(owner), to_checksum_address(grantee), "0xpublic", ids)
    assert list(expected[3]) == answer[3]
    at = 32 + int.from_bytes(raw[128:160], "big")  # the array's length word
    forged = raw[:at] + (2**255).to_bytes(32, "big") + raw[at + 32 :]
    for bad in (raw[:-32], forged):
        with pytest.raises(InsufficientDataBytes):
            decode(types, bad)
        truncated = ViewFunction(
            _fake_contract("DataPortabilityGrantees", "0x" + bad.hex()), "grantees"
        )
        with pytest.raises(InsufficientDataBytes):
            await truncated(1)
