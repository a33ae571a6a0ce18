"""Async web3 helpers: a provider with explicit timeouts, nonces, send and confirm, event decoding.

Used by the relayer, wallets and the flow. Every wait here has a deadline the caller sets: no
hidden library default decides how long a load test waits (the upstream SDK's fixed 30 s receipt
timeout ignored the test's own setting).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import (
    abi_to_signature,
    event_abi_to_log_topic,
    function_signature_to_4byte_selector,
)
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from workbench.stack import compile as contracts

T = TypeVar("T")
GAS_MARGIN = 1.2  # estimate * margin: state can change between estimate and inclusion
_HEADERS = {"Content-Type": "application/json"}
_chain_ids: weakref.WeakKeyDictionary[AsyncWeb3, int] = weakref.WeakKeyDictionary()


class ReceiptTimeout(asyncio.TimeoutError):
    """No receipt within the caller's deadline (the tx may still be pending)."""


class TxReverted(Exception):
    """The transaction was mined with status 0."""


class RpcProvider(AsyncHTTPProvider):
    """web3's AsyncHTTPProvider posting through one keep-alive aiohttp session of our own.

    web3 8's provider guards its session cache with a process-wide threading lock taken through
    a 5-thread executor on every request; a request cancelled while waiting there can leave the
    lock held forever (web3.py issue #3867), and its sessions force-close each connection.
    Load tests cancel requests (timeouts) and make many of them, so we bypass that path. web3's
    automatic retries are off too: retrying is the caller's decision (never for sends).
    """

    def __init__(self, rpc_url: str, timeout_s: float, connections: int = 100):
        super().__init__(rpc_url, exception_retry_configuration=None)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session is bound to its event loop; a new loop (asyncio.run again) needs a new one.
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._loop = loop
        return self._session

    async def _make_request(self, method: Any, request_data: bytes) -> bytes:
        async with self._client().post(self.endpoint_uri, data=request_data, headers=_HEADERS) as r:
            r.raise_for_status()
            return await r.read()

    async def disconnect(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def make_web3(rpc_url: str, timeout_s: float = 30.0, connections: int = 100) -> AsyncWeb3:
    """An AsyncWeb3 whose every request gives up after `timeout_s` (close with `close_web3`)."""
    return AsyncWeb3(RpcProvider(rpc_url, timeout_s, connections))


async def close_web3(w3: AsyncWeb3) -> None:
    await w3.provider.disconnect()


async def chain_id(w3: AsyncWeb3) -> int:
    """The node's chain id, asked once per web3 object."""
    if w3 not in _chain_ids:
        _chain_ids[w3] = await w3.eth.chain_id
    return _chain_ids[w3]


class NonceManager:
    """Hands out consecutive nonces for one account to concurrent coroutines.

    Starts from the node's pending count; `send_tx` resyncs it after a failed send, so a nonce
    the node never accepted is handed out again instead of leaving a gap that stalls the rest.
    """

    def __init__(self, w3: AsyncWeb3, address: str):
        self.w3 = w3
        self.address = AsyncWeb3.to_checksum_address(address)
        self._next: int | None = None
        self._lock = asyncio.Lock()

    async def _pending_count(self) -> int:
        return await self.w3.eth.get_transaction_count(self.address, "pending")

    async def next(self) -> int:
        async with self._lock:
            if self._next is None:
                self._next = await self._pending_count()
            nonce = self._next
            self._next += 1
            return nonce

    async def resync(self) -> None:
        async with self._lock:
            self._next = await self._pending_count()


def _as_account(key_or_account: str | LocalAccount) -> LocalAccount:
    if isinstance(key_or_account, LocalAccount):
        return key_or_account
    return Account.from_key(key_or_account)


async def _fees(w3: AsyncWeb3, priority: int | None) -> dict[str, int]:
    """EIP-1559 fees: room for the base fee to double before the tx is priced out."""
    block = await w3.eth.get_block("latest")
    tip = priority if priority is not None else await w3.eth.max_priority_fee
    return {"maxFeePerGas": 2 * block["baseFeePerGas"] + tip, "maxPriorityFeePerGas": tip}


async def _gas(w3: AsyncWeb3, sender: str, tx: dict[str, Any]) -> int:
    call = {k: tx[k] for k in ("to", "data", "value") if k in tx}
    return int(await w3.eth.estimate_gas({**call, "from": sender}) * GAS_MARGIN)


async def _fill(w3: AsyncWeb3, sender: str, tx: dict[str, Any]) -> dict[str, Any]:
    """Adds chainId, fees and gas where missing (the nonce comes last, see `send_tx`)."""
    tx = {k: v for k, v in tx.items() if k != "from"}
    jobs: dict[str, Awaitable[Any]] = {}
    if "chainId" not in tx:
        jobs["chainId"] = chain_id(w3)
    if "maxFeePerGas" not in tx and "gasPrice" not in tx:
        jobs["fees"] = _fees(w3, tx.get("maxPriorityFeePerGas"))
    if "gas" not in tx:
        jobs["gas"] = _gas(w3, sender, tx)  # a revert raises here, before a nonce is taken
    for key, value in zip(jobs, await asyncio.gather(*jobs.values()), strict=True):
        tx.update(value if key == "fees" else {key: value})
    return tx


def _is_nonce_clash(message: str) -> bool:
    return "nonce too low" in message or "replacement transaction underpriced" in message


async def send_tx(
    w3: AsyncWeb3,
    key_or_account: str | LocalAccount,
    tx: dict[str, Any],
    nonces: NonceManager | None = None,
) -> str:
    """Signs locally and sends; returns the `0x` tx hash without waiting for it to be mined.

    Missing chainId, fees and gas are filled in first, so a tx that would revert fails at gas
    estimation without consuming a nonce. A missing nonce comes from `nonces`; if the node says
    that nonce is taken, the manager resyncs and the tx is re-signed with a fresh one, once.
    "already known" (anvil: "already imported") means this very tx is in the pool: its hash is
    returned.
    """
    account = _as_account(key_or_account)
    tx = await _fill(w3, account.address, tx)
    own_nonce = "nonce" not in tx
    if own_nonce and nonces is None:
        raise ValueError("send_tx needs a nonce in tx or a NonceManager")
    for attempt in (1, 2):
        if own_nonce:
            tx["nonce"] = await nonces.next()
        signed = account.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        try:
            await w3.eth.send_raw_transaction(signed.raw_transaction)
            return tx_hash
        except (Web3RPCError, ValueError, aiohttp.ClientError, TimeoutError) as e:
            message = str(e).lower()
            if "already known" in message or "already imported" in message:  # geth / anvil
                return tx_hash
            if own_nonce:
                await nonces.resync()  # the node's count tells whether our nonce was used
            if attempt == 1 and own_nonce and _is_nonce_clash(message):
                continue
            raise
    raise AssertionError("unreachable")


async def wait_receipt(
    w3: AsyncWeb3, tx_hash: str, timeout_s: float, poll_s: float = 0.1
) -> dict[str, Any]:
    """Polls for the receipt until `timeout_s`; transient RPC errors are polled through.

    Raises `ReceiptTimeout` at the deadline. A mined-but-reverted tx returns its receipt
    (status 0): the caller decides (see `decode_permission_added`).
    """
    last_error: BaseException | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    return await w3.eth.get_transaction_receipt(tx_hash)
                except TransactionNotFound:
                    pass
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    last_error = e
                await asyncio.sleep(poll_s)
    except TimeoutError:
        detail = f" (last RPC error: {last_error!r})" if last_error else ""
        raise ReceiptTimeout(f"no receipt for {tx_hash} after {timeout_s} s{detail}") from None


def _event_topic(abi: list[dict[str, Any]], name: str) -> bytes:
    event = next(e for e in abi if e.get("type") == "event" and e["name"] == name)
    return event_abi_to_log_topic(event)


def decode_permission_added(receipt: dict[str, Any], permissions: Any = None) -> int:
    """The permissionId from the PermissionAdded log of a receipt.

    `permissions` is the Permissions ABI (list) or a contract object; default: the workbench's ABI.
    Raises `TxReverted` for a status-0 receipt and `ValueError` if the event is missing.
    """
    if receipt["status"] != 1:
        raise TxReverted(f"transaction {HexBytes(receipt['transactionHash']).to_0x_hex()} reverted")
    abi = getattr(permissions, "abi", permissions) or contracts.abi("DataPortabilityPermissions")
    topic = _event_topic(abi, "PermissionAdded")
    for log in receipt["logs"]:
        topics = [HexBytes(t) for t in log["topics"]]
        if topics and topics[0] == topic:
            return int.from_bytes(topics[1], "big")  # permissionId is the first indexed arg
    raise ValueError("no PermissionAdded event in the receipt")


def contract(w3: AsyncWeb3, name: str, address: str) -> AsyncContract:
    """A handle on one of the workbench's contracts (ABI from `workbench.stack.compile`)."""
    return w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=contracts.abi(name))


@functools.cache
def _error_selectors() -> dict[bytes, str]:
    selectors = {}
    for name in contracts.CONTRACT_NAMES:
        for item in contracts.abi(name):
            if item.get("type") == "error":
                selectors[function_signature_to_4byte_selector(abi_to_signature(item))] = item[
                    "name"
                ]
    return selectors


def revert_name(error: BaseException) -> str | None:
    """The custom error name (e.g. `InvalidNonce`) of a revert from our contracts, if known."""
    if not isinstance(error, ContractLogicError) or not isinstance(error.data, str):
        return None
    data = HexBytes(error.data)
    return _error_selectors().get(bytes(data[:4]))


async def call_with_retry(
    make_call: Callable[[], Awaitable[T]],
    attempts: int = 3,
    first_delay_s: float = 0.25,
    max_delay_s: float = 2.0,
) -> T:
    """Retries a read on transport errors with doubling backoff (never use it for sends)."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return await make_call()
        except (aiohttp.ClientError, TimeoutError, OSError):
            if attempt == attempts:
                raise
            await asyncio.sleep(delay)
            delay = min(2 * delay, max_delay_s)
    raise AssertionError("unreachable")
