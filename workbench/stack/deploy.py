"""Deploys and wires the workbench's four contracts and registers the app as grantee 1.

Wiring costs no extra transactions: the three satellite contracts take the Permissions
contract's address in their constructor, predicted from the deployer's nonce (CREATE address =
f(sender, nonce)). All five transactions go out back to back with explicit nonces, gas and
fees, then their receipts are awaited together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.types import Nonce, TxReceipt
from web3.utils.address import get_create_address

from workbench.stack.compile import artifacts
from workbench.vana import contracts
from workbench.vana.chain import chain_id, close_web3, make_web3, send_tx, wait_receipt

# Gas limits about 1.5x what each transaction uses (anvil charges only the gas used).
DEPLOY_GAS = 2_500_000
REGISTER_GRANTEE_GAS = 500_000
RECEIPT_TIMEOUT_S = 30.0
SATELLITES = ("DataRegistry", "DataPortabilityServers", "DataPortabilityGrantees")
PERMISSIONS = "DataPortabilityPermissions"


def _deploy_data(name: str, arg_types: list[str], args: list[Any]) -> str:
    return artifacts()[name]["bytecode"] + encode(arg_types, args).hex()


def _transactions(
    deployer: ChecksumAddress, nonce: int, app_address: str, app_public_key: str
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The five transactions in nonce order, and the addresses they will create."""
    names = [*SATELLITES, PERMISSIONS]
    addresses: dict[str, str] = {
        n: get_create_address(deployer, Nonce(nonce + i)) for i, n in enumerate(names)
    }
    satellites = [addresses[n] for n in SATELLITES]
    txs: list[dict[str, Any]] = [
        {"data": _deploy_data(n, ["address"], [addresses[PERMISSIONS]]), "gas": DEPLOY_GAS}
        for n in SATELLITES
    ]
    txs.append({"data": _deploy_data(PERMISSIONS, ["address"] * 3, satellites), "gas": DEPLOY_GAS})
    grantees = AsyncWeb3().eth.contract(abi=contracts.abi("DataPortabilityGrantees"))
    register = grantees.encode_abi(
        "registerGrantee", args=[app_address, app_address, app_public_key]
    )
    txs.append(
        {"to": addresses["DataPortabilityGrantees"], "data": register, "gas": REGISTER_GRANTEE_GAS}
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
        cid, nonce, block = await asyncio.gather(
            chain_id(w3),
            w3.eth.get_transaction_count(deployer.address, "pending"),
            w3.eth.get_block("latest"),
        )
        addresses, txs = _transactions(deployer.address, nonce, app_address, app_public_key)
        tip = 10**9
        fees = {"maxFeePerGas": 2 * block["baseFeePerGas"] + tip, "maxPriorityFeePerGas": tip}
        hashes = []
        for i, tx in enumerate(txs):  # sent in nonce order so none waits in the queue for a gap
            full = {**tx, **fees, "chainId": cid, "nonce": nonce + i, "value": 0}
            hashes.append(await send_tx(w3, deployer, full))
        receipts = await asyncio.gather(
            *(wait_receipt(w3, h, RECEIPT_TIMEOUT_S, 0.02) for h in hashes)
        )
    finally:
        await close_web3(w3)
    _check(receipts, addresses)
    return addresses


def _check(receipts: list[TxReceipt], addresses: dict[str, str]) -> None:
    labels = [*addresses, "registerGrantee"]
    for label, receipt in zip(labels, receipts, strict=True):
        if receipt["status"] != 1:
            raise RuntimeError(f"deployment step {label} reverted (gas used {receipt['gasUsed']})")
    for name, receipt in zip(addresses, receipts, strict=False):
        if receipt["contractAddress"] != addresses[name]:
            raise RuntimeError(
                f"{name} landed at {receipt['contractAddress']}, not the predicted "
                f"{addresses[name]}: did another transaction from the deployer interleave?"
            )
