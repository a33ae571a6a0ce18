"""Deploys and wires the workbench's four contracts and registers the app as grantee 1.

Wiring costs no extra transactions: the three satellite contracts take the Permissions
contract's address in their constructor, predicted from the deployer's nonce (CREATE address =
f(sender, nonce)). All five transactions go out back to back with explicit nonces, gas and
fees, then their receipts are awaited together.

`deploy_at_sdk_addresses` puts them where Vana's SDK looks for them instead (anvil only), on
Moksha's chain id: see its docstring.
"""

from __future__ import annotations

import asyncio
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.types import Nonce, TxReceipt
from web3.utils.address import get_create_address

from workbench.stack import anvil
from workbench.stack.compile import artifacts
from workbench.vana import contracts
from workbench.vana.chain import chain_id, close_web3, make_web3, send_tx, wait_receipt
from workbench.vana.network import MOKSHA_CHAIN_ID, SDK_CONTRACTS

# Gas limits about 1.5x what each transaction uses (anvil charges only the gas used).
DEPLOY_GAS = 2_500_000
REGISTER_GRANTEE_GAS = 500_000
RECEIPT_TIMEOUT_S = 30.0
SATELLITES = ("DataRegistry", "DataPortabilityServers", "DataPortabilityGrantees")
PERMISSIONS = "DataPortabilityPermissions"


def _deploy_data(name: str, arg_types: list[str], args: list[Any]) -> str:
    return artifacts()[name]["bytecode"] + encode(arg_types, args).hex()


def _transactions(
    deployer: ChecksumAddress,
    nonce: int,
    app_address: str,
    app_public_key: str,
    wired_to: dict[str, str] | None = None,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The five transactions in nonce order, and the addresses they will create. The contracts
    reference each other (and the grantee is registered) at `wired_to`, by default where they
    are created."""
    names = [*SATELLITES, PERMISSIONS]
    addresses: dict[str, str] = {
        n: get_create_address(deployer, Nonce(nonce + i)) for i, n in enumerate(names)
    }
    wiring = wired_to or addresses
    satellites = [wiring[n] for n in SATELLITES]
    txs: list[dict[str, Any]] = [
        {"data": _deploy_data(n, ["address"], [wiring[PERMISSIONS]]), "gas": DEPLOY_GAS}
        for n in SATELLITES
    ]
    txs.append({"data": _deploy_data(PERMISSIONS, ["address"] * 3, satellites), "gas": DEPLOY_GAS})
    grantees = AsyncWeb3().eth.contract(abi=contracts.abi("DataPortabilityGrantees"))
    register = grantees.encode_abi(
        "registerGrantee", args=[app_address, app_address, app_public_key]
    )
    txs.append(
        {"to": wiring["DataPortabilityGrantees"], "data": register, "gas": REGISTER_GRANTEE_GAS}
    )
    return addresses, txs


async def deploy_all(
    rpc_url: str, deployer_key: str, app_address: str, app_public_key: str
) -> dict[str, str]:
    """Deploys the four contracts, wired, with grantee 1 = the app; returns `{name: address}`."""
    deployer = Account.from_key(deployer_key)
    app_address = AsyncWeb3.to_checksum_address(app_address)
    w3 = make_web3(rpc_url, timeout_s=RECEIPT_TIMEOUT_S)
    try:
        cid, nonce = await asyncio.gather(
            chain_id(w3), w3.eth.get_transaction_count(deployer.address, "pending")
        )
        addresses, txs = _transactions(deployer.address, nonce, app_address, app_public_key)
        receipts = await _send_all(w3, deployer, txs, cid, nonce)
    finally:
        await close_web3(w3)
    _check(receipts, addresses)
    return addresses


async def deploy_at_sdk_addresses(
    rpc_url: str,
    deployer_key: str,
    app_address: str,
    app_public_key: str,
    new_chain_id: int = MOKSHA_CHAIN_ID,
) -> dict[str, str]:
    """The four contracts at the addresses of Vana's SDK, the chain then `new_chain_id` (anvil
    only); grantee 1 = the app. Returns `{name: address}` (the SDK's).

    Deployed wired to the SDK's addresses, their runtime code is copied there (`anvil_setCode`);
    constructors write only immutables, so there is no storage to copy. Then the chain id
    changes: DataPortabilityPermissions rebuilds its EIP-712 domain whenever `block.chainid`
    differs from the one it was deployed under, so at its new address it verifies signatures
    made for exactly the domain the SDK signs (Moksha's). Last, the grantee is registered there.
    """
    deployer = Account.from_key(deployer_key)
    app_address = AsyncWeb3.to_checksum_address(app_address)
    w3 = make_web3(rpc_url, timeout_s=RECEIPT_TIMEOUT_S)
    try:
        cid, nonce = await asyncio.gather(
            w3.eth.chain_id, w3.eth.get_transaction_count(deployer.address, "pending")
        )
        if cid == new_chain_id:
            raise RuntimeError(f"deploy on another chain id than {new_chain_id}, then switch")
        addresses, txs = _transactions(
            deployer.address, nonce, app_address, app_public_key, SDK_CONTRACTS
        )
        receipts = await _send_all(w3, deployer, txs[:-1], cid, nonce)
        _check(receipts, addresses)
        codes = await asyncio.gather(
            *(w3.eth.get_code(to_checksum_address(addresses[n])) for n in SDK_CONTRACTS)
        )
        for name, code in zip(SDK_CONTRACTS, codes, strict=True):
            await anvil.set_code(rpc_url, SDK_CONTRACTS[name], "0x" + bytes(code).hex())
        await anvil.set_chain_id(rpc_url, new_chain_id)
        register = await _send_all(w3, deployer, txs[-1:], new_chain_id, nonce + len(receipts))
    finally:
        await close_web3(w3)
    if register[0]["status"] != 1:
        raise RuntimeError("registerGrantee at the SDK's DataPortabilityGrantees reverted")
    return dict(SDK_CONTRACTS)


async def _send_all(
    w3: AsyncWeb3, deployer: Any, txs: list[dict[str, Any]], cid: int, nonce: int
) -> list[TxReceipt]:
    """Sends `txs` back to back from `nonce` on, then awaits every receipt."""
    block = await w3.eth.get_block("latest")
    tip = 10**9
    fees = {"maxFeePerGas": 2 * block["baseFeePerGas"] + tip, "maxPriorityFeePerGas": tip}
    hashes = []
    for i, tx in enumerate(txs):  # sent in nonce order so none waits in the queue for a gap
        full = {**tx, **fees, "chainId": cid, "nonce": nonce + i, "value": 0}
        hashes.append(await send_tx(w3, deployer, full))
    return list(
        await asyncio.gather(*(wait_receipt(w3, h, RECEIPT_TIMEOUT_S, 0.02) for h in hashes))
    )


def _check(receipts: list[TxReceipt], addresses: dict[str, str]) -> None:
    labels = [*addresses, "registerGrantee"]
    for label, receipt in zip(labels, receipts, strict=False):
        if receipt["status"] != 1:
            raise RuntimeError(f"deployment step {label} reverted (gas used {receipt['gasUsed']})")
    for name, receipt in zip(addresses, receipts, strict=False):
        if receipt["contractAddress"] != addresses[name]:
            raise RuntimeError(
                f"{name} landed at {receipt['contractAddress']}, not the predicted "
                f"{addresses[name]}: did another transaction from the deployer interleave?"
            )
