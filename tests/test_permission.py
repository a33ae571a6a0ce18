"""workbench.vana.permission against viem (hashTypedData, signTypedData, recoverTypedDataAddress)
and against garbage, as the relay server receives it."""

from __future__ import annotations

import copy
import hashlib
import json
from functools import reduce
from operator import getitem

import eth_abi
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsinterop import run_jobs

from workbench.vana import crypto, permission

KEY = "0x" + hashlib.sha256(b"permission signer").hexdigest()
USER = Account.from_key(KEY).address
SERVER_KEY = "0x" + hashlib.sha256(b"personal server").hexdigest()
SERVER = Account.from_key(SERVER_KEY).address
SERVER_PUBLIC = crypto.public_key_of(SERVER_KEY)
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
INPUT_ABI = "(uint256,uint256,string,string[],uint256[],address,string,string,(address,string)[][])"


def _message(files: list[int], **over) -> dict:
    """A message with len(files) files, file i readable by files[i] accounts."""
    accounts = [SERVER, USER, "0x" + "ab" * 20]
    message = {
        "nonce": 0,
        "granteeId": 1,
        "grant": "ipfs://QmGrant",
        "fileUrls": [f"ipfs://QmFile{i}" for i in range(len(files))],
        "schemaIds": list(range(len(files))),
        "serverAddress": SERVER,
        "serverUrl": "http://127.0.0.1:8080",
        "serverPublicKey": SERVER_PUBLIC,
        "filePermissions": [
            [{"account": accounts[j % 3], "key": f"{i}{j}" * 40} for j in range(n)]
            for i, n in enumerate(files)
        ],
    }
    return {**message, **over}


CASES = {
    "flow": _message([1], nonce=7),
    "multi": _message([1, 3, 0, 2]),
    "empty": _message([]),
    "empty_permissions": _message([0]),
    "unicode": _message(
        [2],
        grant="données ✓ 🌍",
        serverUrl="https://例え.jp/ψ",
        fileUrls=["ipfs://ü", ""],
        schemaIds=[],
        serverPublicKey="",
    ),
    "huge": _message(
        [1], nonce=2**256 - 1, granteeId=2**200, schemaIds=[0, 2**255], serverAddress=SERVER.lower()
    ),
}


def _for_js(value):
    """JSON for a JS client: ints as decimal strings (uint256 does not fit a JS number)."""
    if isinstance(value, dict):
        return {k: _for_js(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_js(v) for v in value]
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _typed(message: dict, chain_id: int = 14800) -> dict:
    return permission.typed_data(chain_id, CONTRACT, message)


def test_typed_data_is_viem_shaped_and_json_safe():
    typed = _typed(CASES["huge"])
    assert set(typed) == {"domain", "types", "primaryType", "message"}
    assert typed["domain"] == {
        "name": "VanaDataPortabilityPermissions",
        "version": "1",
        "chainId": 14800,
        "verifyingContract": CONTRACT,
    }
    assert typed["primaryType"] == "ServerFilesAndPermission"
    assert [f["name"] for f in typed["types"]["EIP712Domain"]] == [
        "name",
        "version",
        "chainId",
        "verifyingContract",
    ]
    assert json.loads(json.dumps(typed)) == typed
    assert typed["message"]["nonce"] == 2**256 - 1 and typed["message"]["serverAddress"] == SERVER


@pytest.mark.e2e
def test_digest_and_signatures_match_viem():
    typed = {name: _typed(m) for name, m in CASES.items()}
    ours = {name: permission.sign(KEY, t) for name, t in typed.items()}
    jobs = []
    for name, t in typed.items():
        js = _for_js(t)
        jobs += [
            {"op": "hashTypedData", "typedData": js},
            {"op": "signTypedData", "privateKey": KEY, "typedData": js},
            {"op": "recoverTypedDataAddress", "typedData": js, "signature": ours[name]},
        ]
    results = iter(run_jobs("viem.mjs", jobs))
    for name, t in typed.items():
        hashed, signed, recovered = next(results), next(results), next(results)
        assert "0x" + permission.digest(t).hex() == hashed.get("hash"), (name, hashed)
        assert permission.recover(t, signed["signature"]) == USER, name
        assert recovered.get("address") == USER, (name, recovered)
        assert ours[name] == signed["signature"], name  # RFC 6979: same key, same bytes


def test_accepts_what_a_js_client_sends():
    typed = _typed(CASES["multi"])
    sent = _for_js(typed)
    del sent["types"]["EIP712Domain"]  # viem clients usually leave it out
    sent["message"]["serverAddress"] = SERVER.lower()
    assert permission.validate(sent) == typed
    assert permission.digest(sent) == permission.digest(typed)
    assert permission.recover(sent, permission.sign(KEY, typed)) == USER


def test_contract_input_encodes_for_the_contract():
    typed = _typed(CASES["multi"], chain_id=31337)
    struct = permission.contract_input(typed)
    m = typed["message"]
    assert struct[:8] == (
        m["nonce"],
        m["granteeId"],
        m["grant"],
        m["fileUrls"],
        m["schemaIds"],
        m["serverAddress"],
        m["serverUrl"],
        m["serverPublicKey"],
    )
    assert [len(p) for p in struct[8]] == [1, 3, 0, 2]
    assert struct[8][0][0] == (SERVER, m["filePermissions"][0][0]["key"])
    signature = bytes.fromhex(permission.sign(KEY, typed)[2:])
    encoded = eth_abi.encode([INPUT_ABI, "bytes"], [struct, signature])
    decoded = eth_abi.decode([INPUT_ABI, "bytes"], encoded)
    assert decoded[1] == signature and decoded[0][2] == m["grant"]


def _mutated(change) -> dict:
    typed = copy.deepcopy(_typed(CASES["flow"]))
    change(typed)
    return typed


BAD = {
    "typedData": [],
    "typedData.message": {"domain": {}, "types": {}, "primaryType": "ServerFilesAndPermission"},
    "typedData.primaryType": _mutated(lambda t: t.update(primaryType="Permission")),
    "typedData.types.Permission": _mutated(lambda t: t["types"]["Permission"].reverse()),
    "unexpected type": _mutated(lambda t: t["types"].update(Extra=[])),
    "domain: expected name": _mutated(lambda t: t["domain"].update(name="Other")),
    "domain.chainId": _mutated(lambda t: t["domain"].update(chainId="abc")),
    "message.nonce: expected": _mutated(lambda t: t["message"].update(nonce="0x10")),
    "message.nonce: out of": _mutated(lambda t: t["message"].update(nonce=2**256)),
    "message.granteeId: out of": _mutated(lambda t: t["message"].update(granteeId=-1)),
    "message.granteeId: expected": _mutated(lambda t: t["message"].update(granteeId=True)),
    "message.schemaIds[0]": _mutated(lambda t: t["message"].update(schemaIds=[1.5])),
    "message.schemaIds[1]": _mutated(lambda t: t["message"].update(schemaIds=["1", "١٢"])),
    "message.serverAddress: expected": _mutated(lambda t: t["message"].update(serverAddress="0x1")),
    "checksum": _mutated(
        lambda t: t["message"].update(
            serverAddress=SERVER[:2] + SERVER[2:].swapcase()[:3] + SERVER[5:]
        )
    ),
    "message.fileUrls: expected a list": _mutated(lambda t: t["message"].update(fileUrls="x")),
    "message.fileUrls[0]": _mutated(lambda t: t["message"].update(fileUrls=[1])),
    "message.grant": _mutated(lambda t: t["message"].update(grant="\ud800")),
    "message.filePermissions[0][0].key": _mutated(
        lambda t: t["message"]["filePermissions"][0][0].pop("key")
    ),
    "message.filePermissions[0][0].account": _mutated(
        lambda t: t["message"]["filePermissions"][0][0].update(account="nothex")
    ),
    "message.filePermissions[0]: expected a list": _mutated(
        lambda t: t["message"].update(filePermissions=[{"account": SERVER, "key": ""}])
    ),
    "message: unexpected field(s) extra": _mutated(lambda t: t["message"].update(extra=1)),
}


@pytest.mark.parametrize("field", list(BAD))
def test_validate_names_the_bad_field(field):
    with pytest.raises(ValueError) as info:
        permission.validate(BAD[field])
    assert field in str(info.value)


def test_recover_rejects_malformed_signatures():
    typed = _typed(CASES["flow"])
    for signature in (None, 5, "", "0x00", "0x" + "zz" * 65, "0x" + "00" * 65, "0x" + "ff" * 65):
        with pytest.raises(ValueError):
            permission.recover(typed, signature)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**250, max_value=2**300),
    st.floats(),
    st.text(max_size=12),
    st.from_regex(r"0x[0-9a-fA-F]{40}", fullmatch=True),
    st.from_regex(r"[0-9]{1,90}", fullmatch=True),
    st.sampled_from(["\ud800", "0x", "-1", " 1", "1e3", "Permission", "ServerFilesAndPermission"]),
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(tree, prefix=()):
    yield prefix
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for key, value in items:
        yield from _paths(value, (*prefix, key))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=JSON)
def test_validate_garbage_raises_only_value_error(garbage):
    with pytest.raises(ValueError):
        permission.validate(garbage)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_mutations_raise_only_value_error(data):
    """Any one field of a valid body replaced by garbage or deleted: a ValueError or a
    canonical form that hashes; never another exception."""
    typed = _for_js(_typed(CASES["multi"]))
    path = data.draw(st.sampled_from(list(_paths(typed))[1:]))
    parent = reduce(getitem, path[:-1], typed)
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    try:
        canonical = permission.validate(typed)
    except ValueError:
        return
    assert len(permission.digest(canonical)) == 32
