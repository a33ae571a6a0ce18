"""The workbench's contracts: same interface as Vana's (its SDK's ABIs), the committed ABIs are
the compiled ones, and addServerFilesAndPermissions behaviour on a real anvil."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import abi_to_signature, event_abi_to_log_topic, function_abi_to_4byte_selector
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from workbench.errors import WorkbenchError
from workbench.stack import compile as compiler
from workbench.stack.anvil import CHAIN_ID, dev_address, dev_key
from workbench.vana import contracts, permission
from workbench.vana.chain import (
    NonceManager,
    contract,
    decode_permission_added,
    revert_name,
    send_tx,
    wait_receipt,
)
from workbench.vana.contracts import CONTRACT_NAMES

pytestmark = pytest.mark.e2e  # anvil, node (the SDK's ABIs) and solc

# What the client and the stack call, per contract: these must match Vana's SDK exactly.
LISTED = {
    "DataPortabilityPermissions": {
        "function": [
            "addServerFilesAndPermissions",
            "userNonce",
            "permissions",
            "permissionsCount",
            "eip712Domain",
        ],
        "event": ["PermissionAdded"],
    },
    "DataPortabilityGrantees": {
        "function": ["registerGrantee", "grantees", "granteesCount", "granteeAddressToId"],
        "event": [],
    },
    "DataPortabilityServers": {
        "function": ["servers", "serverAddressToId", "userServerIdsValues"],
        "event": [],
    },
    "DataRegistry": {
        "function": ["files", "filePermissions", "fileIdByUrl", "filesCount"],
        "event": ["FileAdded"],
    },
}
PERMISSIONS = "DataPortabilityPermissions"
RELAYER = 10  # dev account that submits transactions in these tests
SERVER_URL = "http://127.0.0.1:9/personal"
SERVER_KEY = "04" + "22" * 64
PERMISSION_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Permission": [{"name": "account", "type": "address"}, {"name": "key", "type": "string"}],
    "ServerFilesAndPermission": [
        {"name": "nonce", "type": "uint256"},
        {"name": "granteeId", "type": "uint256"},
        {"name": "grant", "type": "string"},
        {"name": "fileUrls", "type": "string[]"},
        {"name": "schemaIds", "type": "uint256[]"},
        {"name": "serverAddress", "type": "address"},
        {"name": "serverUrl", "type": "string"},
        {"name": "serverPublicKey", "type": "string"},
        {"name": "filePermissions", "type": "Permission[][]"},
    ],
}


def _entries(abi: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [e for e in abi if e.get("type") == kind and e.get("name") == name]


def _layout(params: list[dict[str, Any]], named: bool = False) -> list[tuple]:
    """Types, `indexed` and struct field names, recursively: what encoding, EIP-712 and decoded
    event args depend on. Names of a function's own arguments and returns do not matter."""
    return [
        (
            p["name"] if named else None,
            p["type"],
            p.get("indexed"),
            _layout(p.get("components", []), named=True),
        )
        for p in params
    ]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_committed_abis_are_the_compiled_ones(name: str) -> None:
    committed = (contracts.ABI_DIR / f"{name}.json").read_text(encoding="utf-8")
    compiled = compiler.artifacts()[name]["abi"]
    assert committed == contracts.abi_json(compiled), (
        "run python -m workbench.stack.compile --write-abis"
    )


def test_abi_dir_holds_exactly_the_four_contracts() -> None:
    assert sorted(p.stem for p in contracts.ABI_DIR.glob("*")) == sorted(CONTRACT_NAMES)
    with pytest.raises(KeyError, match="DataRegistry"):
        contracts.abi("Registry")


@pytest.mark.parametrize("name", sorted(LISTED))
def test_listed_entries_match_the_sdk(name: str, sdk_abis) -> None:
    ours, theirs = contracts.abi(name), sdk_abis[name]
    for fn in LISTED[name]["function"]:
        [mine], [ref] = _entries(ours, "function", fn), _entries(theirs, "function", fn)
        assert function_abi_to_4byte_selector(mine) == function_abi_to_4byte_selector(ref), fn
        assert _layout(mine["inputs"]) == _layout(ref["inputs"]), f"{fn} takes another shape"
        assert _layout(mine["outputs"]) == _layout(ref["outputs"]), f"{fn} returns another shape"
        assert mine["stateMutability"] == ref["stateMutability"], fn
    for ev in LISTED[name]["event"]:
        [mine], [ref] = _entries(ours, "event", ev), _entries(theirs, "event", ev)
        assert event_abi_to_log_topic(mine) == event_abi_to_log_topic(ref), ev
        assert _layout(mine["inputs"], named=True) == _layout(ref["inputs"], named=True), ev


@pytest.mark.parametrize("name", sorted(LISTED))
def test_every_shared_name_has_the_sdk_signature(name: str, sdk_abis) -> None:
    """Anything we declare under an SDK name (helpers, errors) must not drift from it."""
    theirs = {(e["type"], e["name"]): abi_to_signature(e) for e in sdk_abis[name] if "name" in e}
    shared = [e for e in contracts.abi(name) if (e.get("type"), e.get("name")) in theirs]
    assert len(shared) >= len(LISTED[name]["function"]) + len(LISTED[name]["event"])
    for entry in shared:
        assert abi_to_signature(entry) == theirs[(entry["type"], entry["name"])], entry["name"]


def test_signed_struct_is_the_sdk_contract_input(sdk_abis) -> None:
    """The EIP-712 types we sign are the struct the SDK's contract takes, field for field."""
    [fn] = _entries(sdk_abis[PERMISSIONS], "function", "addServerFilesAndPermissions")
    struct = fn["inputs"][0]["components"]
    types = permission.types()
    assert [(f["name"], f["type"]) for f in types[permission.PRIMARY_TYPE]] == [
        (c["name"], _eip712_type(c)) for c in struct
    ]
    [file_permissions] = [c for c in struct if c["name"] == "filePermissions"]
    assert [(f["name"], f["type"]) for f in types["Permission"]] == [
        (c["name"], _eip712_type(c)) for c in file_permissions["components"]
    ]


def _eip712_type(param: dict[str, Any]) -> str:
    """A struct parameter's EIP-712 type is its struct's name ("struct IDataRegistry.Permission[][]"
    -> "Permission[][]"); any other parameter's is its ABI type."""
    if not param["type"].startswith("tuple"):
        return param["type"]
    return param["internalType"].removeprefix("struct ").rsplit(".", 1)[-1]


async def test_eip712_domain(w3, deployed) -> None:
    permissions = contract(w3, "DataPortabilityPermissions", deployed["DataPortabilityPermissions"])
    (
        fields,
        name,
        version,
        chain_id,
        verifying,
        salt,
        extensions,
    ) = await permissions.functions.eip712Domain().call()
    assert fields == b"\x0f"  # name, version, chainId, verifyingContract
    assert (name, version, chain_id) == ("VanaDataPortabilityPermissions", "1", CHAIN_ID)
    assert verifying == deployed["DataPortabilityPermissions"]
    assert salt == b"\x00" * 32 and extensions == []


# ---- addServerFilesAndPermissions ----


def _message(nonce: int, user: str, grantee_id: int = 1, **over: Any) -> dict[str, Any]:
    url = f"ipfs://file-of-{user.lower()}-{nonce}"
    server = over.pop("server", None) or Account.create().address  # a fresh server by default
    message = {
        "nonce": nonce,
        "granteeId": grantee_id,
        "grant": f"ipfs://grant-of-{user.lower()}-{nonce}",
        "fileUrls": [url],
        "schemaIds": [7],
        "serverAddress": server,
        "serverUrl": SERVER_URL,
        "serverPublicKey": SERVER_KEY,
        "filePermissions": [[{"account": server, "key": "ab" * 40}]],
    }
    return {**message, **over}


def _sign(key: str, message: dict[str, Any], verifying_contract: str) -> bytes:
    typed = {
        "types": PERMISSION_TYPES,
        "primaryType": "ServerFilesAndPermission",
        "domain": {
            "name": "VanaDataPortabilityPermissions",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": verifying_contract,
        },
        "message": message,
    }
    return Account.sign_message(encode_typed_data(full_message=typed), key).signature


class Chain:
    """The deployed contracts plus a relayer, as the app's API server would hold them."""

    def __init__(self, w3, deployed: dict[str, str]):
        self.w3 = w3
        self.permissions = contract(
            w3, "DataPortabilityPermissions", deployed["DataPortabilityPermissions"]
        )
        self.registry = contract(w3, "DataRegistry", deployed["DataRegistry"])
        self.servers = contract(w3, "DataPortabilityServers", deployed["DataPortabilityServers"])
        self.grantees = contract(w3, "DataPortabilityGrantees", deployed["DataPortabilityGrantees"])
        self.nonces = NonceManager(w3, dev_address(RELAYER))

    def call(self, message: dict[str, Any], signature: bytes):
        typed = permission.typed_data(CHAIN_ID, self.permissions.address, message)
        struct = permission.contract_input(typed)
        return self.permissions.functions.addServerFilesAndPermissions(struct, signature)

    async def relay(self, message: dict[str, Any], signature: bytes) -> dict[str, Any]:
        tx = await self.call(message, signature).build_transaction(
            {"from": dev_address(RELAYER), "gas": 3_000_000, "nonce": 0, "chainId": CHAIN_ID}
        )
        tx = {"to": tx["to"], "data": tx["data"]}  # let send_tx estimate gas and take a nonce
        tx_hash = await send_tx(self.w3, dev_key(RELAYER), tx, self.nonces)
        return await wait_receipt(self.w3, tx_hash, timeout_s=10, poll_s=0.02)

    async def revert_of(self, message: dict[str, Any], signature: bytes) -> str | None:
        with pytest.raises(ContractLogicError) as info:
            await self.call(message, signature).estimate_gas({"from": dev_address(RELAYER)})
        return revert_name(info.value)


@pytest.fixture
def chain(w3, deployed) -> Chain:
    return Chain(w3, deployed)


async def test_signed_permission_is_stored_with_files_and_server(chain: Chain) -> None:
    user = Account.create()
    verifying = chain.permissions.address
    message = _message(0, user.address)
    count_before = await chain.permissions.functions.permissionsCount().call()

    receipt = await chain.relay(message, _sign(user.key, message, verifying))

    permission_id = decode_permission_added(receipt, chain.permissions)
    assert permission_id == count_before + 1
    assert await chain.permissions.functions.permissionsCount().call() == permission_id
    assert await chain.permissions.functions.userNonce(user.address).call() == 1
    [added] = chain.permissions.events.PermissionAdded().process_receipt(receipt, errors=DISCARD)
    [file_added] = chain.registry.events.FileAdded().process_receipt(receipt, errors=DISCARD)
    file_id = file_added.args.fileId
    assert added.args.user == user.address and added.args.granteeId == 1
    assert added.args.grant == message["grant"] and added.args.fileIds == [file_id]
    assert file_added.args.ownerAddress == user.address
    assert file_added.args.url == message["fileUrls"][0]

    stored = await chain.permissions.functions.permissions(permission_id).call()
    assert stored[:5] == (permission_id, user.address, 0, 1, message["grant"])
    assert stored[5] == receipt["blockNumber"] and stored[6] == 0 and stored[7] == [file_id]

    registry = chain.registry.functions
    assert await registry.fileIdByUrl(message["fileUrls"][0]).call() == file_id
    assert await registry.files(file_id).call() == (
        file_id,
        user.address,
        message["fileUrls"][0],
        7,
        receipt["blockNumber"],
    )
    server = message["serverAddress"]
    assert await registry.filePermissions(file_id, server).call() == "ab" * 40
    assert await registry.filePermissions(file_id, user.address).call() == ""

    server_id = await chain.servers.functions.serverAddressToId(server).call()
    assert server_id > 0
    assert await chain.servers.functions.servers(server_id).call() == (
        server_id,
        user.address,
        server,
        SERVER_KEY,
        SERVER_URL,
    )
    assert await chain.servers.functions.userServerIdsValues(user.address).call() == [server_id]
    grantee = await chain.grantees.functions.grantees(1).call()
    assert grantee[1] == dev_address(1) and grantee[3][-1] == permission_id


async def test_second_permission_uses_next_nonce_and_reuses_server(chain: Chain) -> None:
    user, server = Account.create(), Account.create().address
    verifying = chain.permissions.address
    for nonce in (0, 1):
        message = _message(nonce, user.address, server=server)
        receipt = await chain.relay(message, _sign(user.key, message, verifying))
        assert receipt["status"] == 1
    assert await chain.permissions.functions.userNonce(user.address).call() == 2
    server_id = await chain.servers.functions.serverAddressToId(server).call()
    assert await chain.servers.functions.userServerIdsValues(user.address).call() == [server_id]


async def test_replayed_signature_reverts(chain: Chain) -> None:
    user = Account.create()
    message = _message(0, user.address)
    signature = _sign(user.key, message, chain.permissions.address)
    assert (await chain.relay(message, signature))["status"] == 1
    assert await chain.revert_of(message, signature) == "InvalidNonce"


async def test_signature_by_someone_else_reverts(chain: Chain) -> None:
    user, other = Account.create(), Account.create()
    verifying = chain.permissions.address
    first = _message(0, user.address)
    await chain.relay(first, _sign(user.key, first, verifying))
    # The user's next message, signed by another wallet: it recovers to `other`, whose nonce is 0.
    second = _message(1, user.address)
    assert await chain.revert_of(second, _sign(other.key, second, verifying)) == "InvalidNonce"
    # A message altered after signing recovers to a stranger: same outcome, nothing stored.
    tampered = {**second, "grant": "ipfs://someone-elses-grant"}
    assert await chain.revert_of(tampered, _sign(user.key, second, verifying)) == "InvalidNonce"
    # Signed for another deployment (domain), so it recovers to a stranger too.
    wrong_domain = _sign(user.key, second, chain.registry.address)
    assert await chain.revert_of(second, wrong_domain) == "InvalidNonce"


async def test_non_canonical_signatures_revert(chain: Chain) -> None:
    user = Account.create()
    message = _message(0, user.address)
    signature = _sign(user.key, message, chain.permissions.address)
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    malleable = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # the same point, high s
    assert await chain.revert_of(message, malleable) == "ECDSAInvalidSignatureS"
    assert await chain.revert_of(message, signature[:64] + b"\x01") == "ECDSAInvalidSignature"
    assert await chain.revert_of(message, signature[:64]) == "ECDSAInvalidSignatureLength"


async def test_unknown_grantee_reverts(chain: Chain) -> None:
    user = Account.create()
    message = _message(0, user.address, grantee_id=999)
    signature = _sign(user.key, message, chain.permissions.address)
    assert await chain.revert_of(message, signature) == "GranteeNotFound"


async def test_mismatched_lengths_revert(chain: Chain) -> None:
    user = Account.create()
    message = _message(0, user.address, schemaIds=[])
    signature = _sign(user.key, message, chain.permissions.address)
    assert await chain.revert_of(message, signature) == "InvalidSchemaIdsLength"


async def test_file_of_another_user_is_refused(chain: Chain) -> None:
    owner, intruder = Account.create(), Account.create()
    verifying = chain.permissions.address
    first = _message(0, owner.address)
    await chain.relay(first, _sign(owner.key, first, verifying))
    claim = _message(0, intruder.address, fileUrls=first["fileUrls"])
    assert await chain.revert_of(claim, _sign(intruder.key, claim, verifying)) == "NotFileOwner"


async def test_only_the_permissions_contract_writes_files_and_servers(chain: Chain) -> None:
    relayer = {"from": dev_address(RELAYER)}
    add_file = chain.registry.functions.addFileWithPermissionsAndSchema(
        "ipfs://x", relayer["from"], [], 0
    )
    trust = chain.servers.functions.addAndTrustServerByManager(
        relayer["from"], (dev_address(4), SERVER_KEY, SERVER_URL)
    )
    add_to_grantee = chain.grantees.functions.addPermissionToGrantee(1, 1)
    for call in (add_file, trust, add_to_grantee):
        with pytest.raises(ContractLogicError) as info:
            await call.estimate_gas(relayer)
        assert revert_name(info.value) == "AccessControlUnauthorizedAccount"


async def test_deployment_registered_the_app_as_grantee_1(chain: Chain) -> None:
    grantees = chain.grantees.functions
    owner, grantee_address, public_key, _ = await grantees.grantees(1).call()
    assert owner == grantee_address == dev_address(1)
    assert public_key.startswith("04")
    assert await grantees.granteeAddressToId(dev_address(1)).call() == 1


def test_cache_key_follows_sources_and_compiler() -> None:
    sources = {"A.sol": "contract A {}"}
    key = compiler.source_hash(sources, "0.8.30")
    assert key == compiler.source_hash(dict(sources), "0.8.30")
    assert key != compiler.source_hash({"A.sol": "contract A { }"}, "0.8.30")
    assert key != compiler.source_hash(sources, "0.8.31")


def test_missing_solc_says_run_make_setup(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(compiler, "SOLC_PACKAGE", tmp_path / "absent" / "package.json")
    with pytest.raises(WorkbenchError, match="make setup"):
        compiler.artifacts()
