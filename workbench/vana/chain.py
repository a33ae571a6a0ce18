"""Async web3 helpers: a provider with explicit timeouts, nonces, send and confirm, event decoding.

Used by the relayer, wallets and the flow. Every wait here has a deadline the caller sets: no
hidden library default decides how long a load test waits (the upstream SDK's fixed 30 s receipt
timeout ignored the test's own setting).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ABIEvent, HexStr
from eth_utils import event_abi_to_log_topic, keccak
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from workbench.request_log import NO_LOG, RequestLog
from workbench.vana import contracts, views
from workbench.vana.retry import RetryPolicy, is_retry, retrying
from workbench.vana.retry import is_transient as is_transient_http
from workbench.vana.throttle import Throttle

GAS_MARGIN = 1.2  # estimate * margin: state can change between estimate and inclusion
_HEADERS = {"Content-Type": "application/json"}
_chain_ids: weakref.WeakKeyDictionary[AsyncWeb3, int] = weakref.WeakKeyDictionary()
SEND_METHOD = "eth_sendRawTransaction"
# Reads are safe to repeat; of the rest only eth_sendRawTransaction is retried (by its hash).
READ_PREFIXES = ("eth_", "net_", "web3_", "txpool_")
NOT_READS = frozenset({SEND_METHOD, "eth_sendTransaction", "eth_sign", "eth_signTransaction"})
THROTTLED_CODE = -32005  # EIP-1474 "limit exceeded": a 200 answer that means "try later"
ALREADY_KNOWN = (b"already known", b"already imported")  # geth / anvil
# How far back a permission mined under a replacement tx is looked for: far more blocks than a
# flow's timeout spans on any chain the workbench drives, few enough for nodes' log-range caps.
LOG_LOOKBACK_BLOCKS = 10_000
# Receipt polls back off while nothing is mined: x1.25 per empty poll, capped at 1 s (or at the
# caller's poll_s if that is longer). A thousand flows polling a congested node every 50 ms made
# most of its requests (23 receipt polls per flow at 1,000 users); a wallet polls about once a
# second or per block. The growth keeps the error on a measured wait under a quarter of it.
POLL_GROWTH = 1.25
POLL_CAP_S = 1.0
# The user-nonce check for a replaced tx doubles its interval after each miss, up to 8x: at
# 1,000 users, confirms that waited 17 s read userNonce 7 times each (12 eth_calls per flow).
NONCE_CHECK_MAX_FACTOR = 8


class ReceiptTimeout(asyncio.TimeoutError):
    """No receipt within the caller's deadline (the tx may still be pending)."""


class TxReverted(Exception):
    """The transaction was mined with status 0."""


class RpcUnavailable(aiohttp.ClientError):
    """Every attempt of an RPC call failed transiently (429/503, dropped connection, ...)."""


class RpcTimeout(RpcUnavailable, TimeoutError):
    """Every attempt of an RPC call timed out."""


class _Throttled(Exception):
    """A 200 answer carrying the "limit exceeded" JSON-RPC error."""


def is_transient(error: BaseException) -> bool:
    """A failure worth retrying: throttling, overload, timeouts, dropped connections; not an
    RpcUnavailable, whose retries are already spent."""
    if isinstance(error, RpcUnavailable):
        return False
    return isinstance(error, _Throttled) or is_transient_http(error)


class RpcProvider(AsyncHTTPProvider):
    """web3's AsyncHTTPProvider posting through one keep-alive aiohttp session of our own, to
    one or several RPC URLs of the same chain, retrying what is safe to retry.

    web3 8's provider guards its session cache with a process-wide threading lock taken through
    a 5-thread executor on every request; a request cancelled while waiting there can leave the
    lock held forever (web3.py issue #3867), and its sessions force-close each connection.
    Load tests cancel requests (timeouts) and make many of them, so we bypass that path, and
    web3's own retries (which would re-send transactions) are off.

    Reads go round-robin over the URLs; a transient failure (429/503, timeout, dropped
    connection, "limit exceeded") is retried on the next URL after a jittered backoff.
    `eth_sendRawTransaction` is re-sent only after `eth_getTransactionByHash` says the node does
    not know the tx: the same signed bytes have the same hash, so "already known" is success.

    With `rate_limit` (calls/s) each URL gets a `Throttle`; with `request_log` every attempt is
    recorded there (type `RPC`, name = method).
    """

    def __init__(
        self,
        rpc_url: str | Sequence[str],
        timeout_s: float,
        connections: int = 100,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        request_log: RequestLog | None = None,
    ):
        self.urls = _url_list(rpc_url)
        super().__init__(self.urls[0], exception_retry_configuration=None)
        self.retry = retry or RetryPolicy()
        self.throttles = {url: Throttle(rate_limit) for url in self.urls} if rate_limit else {}
        self.request_log = request_log or NO_LOG
        self._turn = itertools.count()
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

    async def _post(self, url: str, request_data: bytes, method: str) -> bytes:
        """One attempt: the throttle's wait, then the POST, recorded in the request log."""
        throttle = self.throttles.get(url)
        wait_ns = await throttle.wait() if throttle is not None else 0
        with self.request_log.timed("RPC", method, is_retry(), wait_ns) as record:
            async with self._client().post(url, data=request_data, headers=_HEADERS) as r:
                record.status = r.status
                if r.status >= 400:
                    record.error = f"HTTP {r.status}"
                r.raise_for_status()
                raw = await r.read()
            record.nbytes, record.error = len(raw), _rpc_error(raw)
            return raw

    async def _make_request(self, method: Any, request_data: bytes) -> bytes:
        if method == SEND_METHOD:
            return await self._send(request_data)
        if not str(method).startswith(READ_PREFIXES) or method in NOT_READS:
            return await self._post(self.urls[0], request_data, str(method))  # not ours to repeat
        return await self._read(str(method), request_data)

    async def make_batch_request(self, batch_requests: list[tuple[Any, Any]]) -> Any:
        """Through our session too (web3's would take the path above); never retried."""
        raw = await self._post(self.urls[0], self.encode_batch_rpc_request(batch_requests), "batch")
        return self.decode_rpc_response(raw)

    async def _read(self, method: str, request_data: bytes) -> bytes:
        first = next(self._turn)  # spreads reads over the URLs; a retry takes the next one

        async def attempt(n: int) -> bytes:
            return _unless_throttled(await self._post(self._url(first + n), request_data, method))

        return await self._retried(method, attempt, is_transient)

    async def _send(self, request_data: bytes) -> bytes:
        """Sends a signed tx; after a failure, re-sends the same bytes only if the node does not
        know its hash (a lost answer is not a lost transaction)."""
        tx_hash = _raw_tx_hash(request_data)

        async def attempt(n: int) -> bytes:
            if n and tx_hash and await self._known(tx_hash):
                return _result(request_data, tx_hash)
            raw = _unless_throttled(await self._post(self._url(n), request_data, SEND_METHOD))
            if n and any(s in raw.lower() for s in ALREADY_KNOWN):
                return _result(request_data, tx_hash)  # our earlier try got through after all
            return raw

        def resendable(error: BaseException) -> bool:
            return tx_hash is not None and is_transient(error)

        return await self._retried(SEND_METHOD, attempt, resendable)

    async def _retried(
        self,
        method: str,
        attempt: Callable[[int], Awaitable[bytes]],
        retryable: Callable[[BaseException], bool],
    ) -> bytes:
        """`attempt(n)` under the provider's policy; a transient failure that outlasts it
        becomes RpcUnavailable (RpcTimeout if it was a timeout)."""
        try:
            return await retrying(attempt, self.retry, retryable)
        except Exception as e:
            if retryable(e):
                raise _exhausted(method, self.retry.attempts, e) from e
            raise

    async def _known(self, tx_hash: str) -> bool:
        """Whether the node has the tx (pending or mined); read with retries."""
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_getTransactionByHash",
            "params": [tx_hash],
        }
        raw = await self._read("eth_getTransactionByHash", json.dumps(body).encode())
        return json.loads(raw).get("result") is not None

    def _url(self, index: int) -> str:
        return self.urls[index % len(self.urls)]

    async def disconnect(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _url_list(rpc_url: str | Sequence[str]) -> list[str]:
    """One URL, a list, or several in one string separated by commas."""
    items = rpc_url.split(",") if isinstance(rpc_url, str) else list(rpc_url)
    urls = [u.strip() for u in items if u and u.strip()]
    if not urls:
        raise ValueError("make_web3 needs at least one RPC URL")
    return urls


def _rpc_error(raw: bytes) -> str:
    """`RPC <code>` for a JSON-RPC error answer, else "" (the body is parsed only if it has one)."""
    if b'"error"' not in raw:
        return ""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):  # a batch or garbage: not one call's error
        return ""
    if error is None:
        return ""
    return f"RPC {error.get('code', '?')}" if isinstance(error, dict) else "RPC ?"


def _unless_throttled(raw: bytes) -> bytes:
    if b"error" in raw and str(THROTTLED_CODE).encode() in raw:
        try:
            error = json.loads(raw).get("error") or {}
        except (ValueError, AttributeError):  # a batch or garbage: not ours to judge
            return raw
        if error.get("code") == THROTTLED_CODE:
            raise _Throttled(error.get("message", "limit exceeded"))
    return raw


def _exhausted(method: str, attempts: int | None, last: BaseException) -> RpcUnavailable:
    kind = RpcTimeout if isinstance(last, TimeoutError) else RpcUnavailable
    return kind(f"{method}: {attempts} attempts failed; last: {type(last).__name__}: {last}")


def _raw_tx_hash(request_data: bytes) -> str | None:
    """keccak256 of the signed tx in an eth_sendRawTransaction request (None if unreadable)."""
    try:
        raw = json.loads(request_data)["params"][0]
        return "0x" + keccak(hexstr=raw).hex()
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _result(request_data: bytes, result: Any) -> bytes:
    """A JSON-RPC success answer to `request_data` (same id)."""
    call_id = json.loads(request_data).get("id")
    return json.dumps({"jsonrpc": "2.0", "id": call_id, "result": result}).encode()


def make_web3(
    rpc_url: str | Sequence[str],
    timeout_s: float = 30.0,
    connections: int = 100,
    retry: RetryPolicy | None = None,
    rate_limit: float | None = None,
    request_log: RequestLog | None = None,
) -> AsyncWeb3:
    """An AsyncWeb3 over one or several RPC URLs (a list, or one string with commas) whose every
    request attempt gives up after `timeout_s`; reads are retried per `retry`; at most
    `rate_limit` calls/s go to each URL; attempts are recorded in `request_log` (close with
    `close_web3`)."""
    return AsyncWeb3(RpcProvider(rpc_url, timeout_s, connections, retry, rate_limit, request_log))


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
    return int(await w3.eth.estimate_gas(cast(TxParams, {**call, "from": sender})) * GAS_MARGIN)


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
        if own_nonce and nonces is not None:  # not None when own_nonce: checked above
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
            if own_nonce and nonces is not None:
                await nonces.resync()  # the node's count tells whether our nonce was used
            if attempt == 1 and own_nonce and _is_nonce_clash(message):
                continue
            raise
    raise AssertionError("unreachable")


async def wait_receipt(
    w3: AsyncWeb3, tx_hash: str, timeout_s: float, poll_s: float = 0.1
) -> TxReceipt:
    """Polls for the receipt until `timeout_s`; transient RPC errors are polled through.

    Raises `ReceiptTimeout` at the deadline. A mined-but-reverted tx returns its receipt
    (status 0): the caller decides (see `decode_permission_added`).
    """
    last_error: BaseException | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    return await w3.eth.get_transaction_receipt(HexStr(tx_hash))
                except TransactionNotFound:
                    pass
                except (aiohttp.ClientError, TimeoutError, OSError, Web3RPCError) as e:
                    last_error = e  # e.g. a node behind a balancer that lags a block
                await asyncio.sleep(poll_s)
    except TimeoutError:
        detail = f" (last RPC error: {last_error!r})" if last_error else ""
        raise ReceiptTimeout(f"no receipt for {tx_hash} after {timeout_s} s{detail}") from None


@dataclass(frozen=True)
class Confirmation:
    """A permission on chain: its id and the transaction that carried it."""

    permission_id: int
    tx_hash: str  # differs from the relayed hash when the relayer replaced a stuck tx
    receipt: Any


async def wait_permission(
    permissions: AsyncContract,
    tx_hash: str,
    user: str,
    nonce: int,
    timeout_s: float,
    poll_s: float = 0.1,
    nonce_check_s: float = 1.0,
) -> Confirmation:
    """Waits until the permission `user` signed with `nonce` is on chain, within `timeout_s`.

    Polls the relayed tx's receipt. A relayer may replace a stuck tx (same calldata, same relayer
    nonce, higher fee), and then the relayed hash never mines. So after `nonce_check_s` without
    a receipt (then twice as long each time, up to NONCE_CHECK_MAX_FACTOR times), and on a
    reverted one, `userNonce(user)` is read: the contract moves it past
    `nonce` exactly when this signed message is mined, whichever tx carried it; the
    PermissionAdded log of the user whose stored nonce is ours names the id and the tx.
    Raises ReceiptTimeout at the deadline and TxReverted for a revert with the nonce unused.
    The pause between polls starts at `poll_s` and grows while nothing is mined (POLL_GROWTH).

    Every request is a raw JSON-RPC call (views as `views.ViewFunction`, receipts and logs as
    the node's JSON): web3's receipt formatters cost ~5 ms of event-loop CPU per receipt, the
    biggest share of a load driver's CPU per flow. The receipt returned is the node's JSON.
    """
    loop = asyncio.get_running_loop()
    pause, cap = poll_s, max(poll_s, POLL_CAP_S)
    check_every = nonce_check_s
    try:
        async with asyncio.timeout(timeout_s):
            next_check = loop.time() + check_every
            while True:
                receipt = await _receipt_or_none(permissions.w3, tx_hash)
                if receipt is not None and receipt["status"] == 1:
                    pid = decode_permission_added(receipt, permissions)
                    return Confirmation(pid, tx_hash, receipt)
                if receipt is not None or loop.time() >= next_check:
                    found = await _mined_elsewhere(permissions, user, nonce)
                    if found is not None:
                        return found
                    if receipt is not None:
                        raise TxReverted(f"transaction {tx_hash} reverted")
                    check_every = min(check_every * 2, nonce_check_s * NONCE_CHECK_MAX_FACTOR)
                    next_check = loop.time() + check_every
                await asyncio.sleep(pause)
                pause = min(cap, pause * POLL_GROWTH)
    except TimeoutError:
        raise ReceiptTimeout(f"no receipt for {tx_hash} after {timeout_s} s") from None


async def raw_request(w3: AsyncWeb3, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call through `w3`'s provider (its session, timeout and read retries); the
    node's JSON result, with none of web3's formatters. An error answer raises Web3RPCError."""
    response = await w3.provider.make_request(method, params)
    error = response.get("error")
    if error is not None:
        raise Web3RPCError(f"{method}: {error}", rpc_response=response)
    return response.get("result")


async def raw_receipt(w3: AsyncWeb3, tx_hash: str) -> dict[str, Any] | None:
    """The node's receipt JSON with `status` as an int (None while not mined)."""
    receipt = await raw_request(w3, "eth_getTransactionReceipt", [tx_hash])
    if receipt is None:
        return None
    return {**receipt, "status": int(receipt["status"], 16)}


async def _receipt_or_none(w3: AsyncWeb3, tx_hash: str) -> Any:
    try:
        return await raw_receipt(w3, tx_hash)
    except (aiohttp.ClientError, Web3RPCError, OSError):
        return None  # transient (timeouts are retried inside the provider): poll again


async def _mined_elsewhere(
    permissions: AsyncContract, user: str, nonce: int
) -> Confirmation | None:
    """The permission of (`user`, `nonce`) if the chain has it under any tx, else None."""
    w3 = permissions.w3
    try:
        if await views.view(permissions, "userNonce")(user) <= nonce:
            return None
        latest = int(await raw_request(w3, "eth_blockNumber", []), 16)
        user_topic = "0x" + bytes(12).hex() + user.lower().removeprefix("0x")
        topic = "0x" + _event_topic(permissions.abi, "PermissionAdded").hex()
        query = {
            "address": permissions.address,
            "topics": [topic, None, user_topic],
            "fromBlock": hex(max(0, latest - LOG_LOOKBACK_BLOCKS)),
            "toBlock": "latest",
        }
        for log in reversed(
            await raw_request(w3, "eth_getLogs", [query])
        ):  # ours: most likely last
            pid = int(log["topics"][1], 16)
            info = await views.view(permissions, "permissions")(pid)  # (id, grantor, nonce, ...)
            if info[2] == nonce:
                receipt = await raw_receipt(w3, log["transactionHash"])
                return Confirmation(pid, log["transactionHash"], receipt)
    except (aiohttp.ClientError, Web3RPCError, OSError, TimeoutError):
        return None  # ask again at the next check
    return None


def _event_topic(abi: Sequence[Mapping[str, Any]], name: str) -> bytes:
    event = next(e for e in abi if e.get("type") == "event" and e["name"] == name)
    return event_abi_to_log_topic(cast(ABIEvent, event))


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
    """A handle on one of the workbench's contracts (ABI from `workbench.vana.contracts`)."""
    return w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=contracts.abi(name))


def revert_name(error: BaseException) -> str | None:
    """The custom error name (e.g. `InvalidNonce`) of a revert from our contracts, if known."""
    if not isinstance(error, ContractLogicError) or not isinstance(error.data, str):
        return None
    data = HexBytes(error.data)
    item = contracts.errors_by_selector().get(bytes(data[:4]))
    return item["name"] if item else None
