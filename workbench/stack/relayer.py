"""The app's relayer: submits users' signed permissions from a pool of funded accounts.

Upstream relayed everything through one account and one nonce: collisions, "replacement
underpriced", stuck transactions. Here each account has its own `NonceManager` and a lock that
keeps its sends in nonce order (a failed send never leaves a gap that stalls the rest), and a
submission goes to the account with the fewest transactions in flight (ties round-robin).

Every submission is simulated first (`eth_estimateGas`), so a replay, a wrong nonce or a bad
signature is refused as a client error with the contract's revert reason and costs no gas. The
estimate (x1.2) becomes the gas limit; fees are EIP-1559.

Pending transactions are kept per account by nonce with their full signed parameters, so a stuck
one can be re-sent with higher fees (`replace`). A background task marks them mined when the
account's mined nonce count passes them. `start()` takes every account's nonce from the chain's
`pending` count, which includes transactions still in the pool, so a relayer restarted after a
crash carries on after its earlier self without a nonce clash.

Stuck is judged by the chain, not by a clock: on a starved machine a transaction can wait seconds
for the node's attention, and replacing it then only adds load (a 3 s rule replaced thousands of
healthy transactions at 1,000 users). Only the transaction the account's mined nonce waits for
can be stuck (later ones wait behind it); it is stuck once `stuck_after_blocks` blocks, plus one
for each of our txs sent before it and pending when it was first seen (its place in our queue:
anvil mines about one tx per block), were mined since then, and at least `stuck_after_s` passed
since its last send (a floor, never the judge: a stalled chain mines no blocks, so nothing counts
as stuck). Then the node tells why: `underpriced` (its max fee is below the latest base fee;
anvil even evicts it), `dropped` (the pending count says the pool no longer has it), or `stalled`
(in the pool, priced to mine, and the latest block had room for it). Those are re-sent with the
same nonce and calldata and fees x1.25 (at least enough for the base fee); the user's message can
mine under the new hash, which the flow finds through the user's nonce (see
`chain.wait_permission`). Each further replacement of that nonce waits twice as many blocks and
seconds, up to `max_replacements`; the gauges count each cause. But a tx in the pool behind full
blocks waits its turn (`relay_waited_full_blocks`): a congested chain is not a stuck tx, and
outbidding our own queue only reorders it (the replacement storm of a 3 s rule at 1,000 users
was that: thousands of bumps, no more throughput).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import function_abi_to_4byte_selector
from eth_utils.abi import get_abi_input_types
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams

from workbench.vana import chain, contracts
from workbench.vana.chain import NonceManager

log = logging.getLogger("workbench.stack.relayer")

RELAY_FUNCTION = "addServerFilesAndPermissions"
RECEIPT = "eth_getTransactionReceipt"
GAS_MARGIN = 1.2
MIN_REPLACEMENT_BUMP = 1.125  # nodes refuse a replacement paying less than +10 % (geth, anvil)
STUCK_FEE_FACTOR = 1.25  # each replacement of a stuck tx pays this much more
DEFAULT_STUCK_AFTER_S = 15.0  # the least time between two sends of one nonce
DEFAULT_STUCK_AFTER_BLOCKS = 3  # blocks mined past a waiting tx before it counts as stuck
DEFAULT_MAX_REPLACEMENTS = 4  # per nonce; each waits twice as long as the one before
STUCK_CAUSES = ("dropped", "underpriced", "stalled")
# Revert reasons that mean "this exact message can never succeed again": a conflict, not a typo.
CONFLICT_ERRORS = frozenset({"InvalidNonce"})
# Simulation errors that mean the call needs more gas than a block holds: the payload's fault.
TOO_MUCH_GAS = ("gas required exceeds", "out of gas", "exceeds block gas limit")
# Send errors that mean our idea of the account's nonce is stale.
STALE_NONCE = ("nonce too low", "replacement transaction underpriced", "already known")
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class RelayError(Exception):
    """A relay that did not happen; `status` is the HTTP status the API server answers.

    409 the message was already used (replayed nonce, or the same one is still pending),
    413 the call needs more gas than a block holds (too much data for one transaction),
    422 the contract would revert for another reason (bad signature, bad input),
    502/504 the chain's RPC failed or timed out (nothing was sent, or the send's fate is unknown).
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class PendingTx:
    """A sent transaction not yet mined: enough to re-send it with higher fees."""

    nonce: int
    tx: dict[str, Any]  # the signed parameters (to, data, gas, fees, nonce, chainId)
    hashes: list[str]  # the first and any replacement
    key: tuple[str, int]  # (user, user nonce): one message in flight per user nonce
    sent_at: float = field(default_factory=time.monotonic)
    seen_block: int | None = None  # the chain's head when the confirm loop first saw it pending
    ahead: int = 0  # our txs sent before it and still pending then: blocks it may wait for them
    replacements: int = 0  # sends after the first (attempts, also failed ones)


@dataclass
class RelayAccount:
    account: LocalAccount
    nonces: NonceManager
    pending: dict[int, PendingTx] = field(default_factory=dict)
    reserved: int = 0  # submissions chosen this account but not sent yet
    stale: bool = False  # a resync failed: resync before the next nonce, or a gap would stall
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def address(self) -> ChecksumAddress:
        return self.account.address

    @property
    def load(self) -> int:
        return len(self.pending) + self.reserved


class Relayer:
    """A pool of relayer accounts submitting `addServerFilesAndPermissions` for users."""

    def __init__(
        self,
        w3: AsyncWeb3,
        permissions_address: str,
        keys: list[str],
        confirm_poll_s: float = 0.25,
        fee_ttl_s: float = 1.0,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
        stuck_after_blocks: int = DEFAULT_STUCK_AFTER_BLOCKS,
        max_replacements: int = DEFAULT_MAX_REPLACEMENTS,
    ):
        if not keys:
            raise ValueError("relayer needs at least one key")
        self.w3 = w3
        self.contract = w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(permissions_address),
            abi=contracts.abi("DataPortabilityPermissions"),
        )
        self.accounts = [self._account(k) for k in keys]
        self.confirm_poll_s, self.fee_ttl_s = confirm_poll_s, fee_ttl_s
        self.stuck_after_s = stuck_after_s
        self.stuck_after_blocks, self.max_replacements = stuck_after_blocks, max_replacements
        self._turn = itertools.count()
        # (user, user nonce) -> its tx's (account, nonce) once sent, None while being sent.
        self._in_flight: dict[tuple[str, int], tuple[RelayAccount, int] | None] = {}
        self._fees: tuple[float, dict[str, int]] | None = None
        self._chain_id: int | None = None
        self._confirmer: asyncio.Task | None = None
        self._encoding: tuple[bytes, list[str]] | None = None  # selector, argument types
        self.relayed = self.relay_errors = self.refused = self.confirmed = self.reverted = 0
        self.retries = self.replaced = self.replace_failed = self.replace_capped = 0
        self.replaced_by = dict.fromkeys(STUCK_CAUSES, 0)
        self.displaced = 0  # pending entries whose nonce the chain handed out again (tx lost)
        self.waited_full_blocks = 0  # stuck-looking txs left alone: the blocks were full
        self._fee_task: asyncio.Future | None = None

    def _account(self, key: str) -> RelayAccount:
        account = Account.from_key(key)
        return RelayAccount(account, NonceManager(self.w3, account.address))

    # --- lifecycle

    async def start(self) -> None:
        """Nonces from the chain's pending counts (a restart resumes), then the confirm loop."""
        self._chain_id = await self.w3.eth.chain_id
        await asyncio.gather(*(a.nonces.resync() for a in self.accounts))
        self._confirmer = asyncio.create_task(self._confirm_loop())

    async def close(self) -> None:
        if self._confirmer:
            self._confirmer.cancel()
            await asyncio.gather(self._confirmer, return_exceptions=True)

    def gauges(self) -> dict[str, int]:
        return {
            "relayer_pending": sum(len(a.pending) for a in self.accounts),
            "relayer_pending_max": max(len(a.pending) for a in self.accounts),
            "relayer_accounts": len(self.accounts),
            "relayed": self.relayed,
            "relay_errors": self.relay_errors,
            "relay_refused": self.refused,
            "relay_retries": self.retries,
            "relay_replaced": self.replaced,
            **{f"relay_replaced_{cause}": n for cause, n in self.replaced_by.items()},
            "relay_replace_failed": self.replace_failed,
            "relay_replace_capped": self.replace_capped,
            "relay_displaced": self.displaced,
            "relay_waited_full_blocks": self.waited_full_blocks,
            "confirmed": self.confirmed,
            "reverted": self.reverted,
        }

    # --- relaying

    async def relay(
        self, user: str, contract_input: tuple, signature: str, data: str | None = None
    ) -> str:
        """Simulates, then sends `addServerFilesAndPermissions`; returns the tx hash. `data` is
        its calldata when the caller encoded it already (`calldata`), else it is encoded here.

        Raises RelayError (see its statuses). The simulation runs first so a replay is told
        by the contract's own reason; then the same (user, nonce) is refused while a tx carrying
        it is pending (a simulation cannot see that one), as only one of them could succeed.
        """
        if data is None:
            data = await asyncio.to_thread(self.calldata, contract_input, signature)
        call = {"to": self.contract.address, "data": data}
        gas, fees = await asyncio.gather(self._simulate(call), self._fee_quote())
        key = (user.lower(), int(contract_input[0]))
        if self._pending_for(key):  # checked and taken with no await in between
            self.refused += 1
            raise RelayError(409, f"nonce {key[1]} of {user} is already relayed and pending")
        self._in_flight[key] = None
        try:
            tx = {**call, "value": 0, "gas": gas, "chainId": self._chain_id, **fees}
            tx_hash = await self._send_with_retry(tx, key)
        except BaseException:
            self._in_flight.pop(key, None)
            raise
        self.relayed += 1
        return tx_hash

    def _pending_for(self, key: tuple[str, int]) -> bool:
        """Whether a tx carrying this (user, nonce) is being sent or pending. An entry whose tx
        is no longer pending here is dropped: it must not refuse the user until a restart."""
        if key not in self._in_flight:
            return False
        where = self._in_flight[key]
        if where is None:
            return True  # being sent
        acct, nonce = where
        pending = acct.pending.get(nonce)
        if pending is not None and pending.key == key:
            return True
        del self._in_flight[key]
        return False

    def calldata(self, contract_input: tuple, signature: str) -> str:
        """`addServerFilesAndPermissions(input, signature)` ABI-encoded, 0x hex. eth_abi directly:
        web3's `encode_abi` normalises every value first, 7x slower on a large payload."""
        if self._encoding is None:
            fn = next(i for i in self.contract.abi if i.get("name") == RELAY_FUNCTION)
            self._encoding = (function_abi_to_4byte_selector(fn), get_abi_input_types(fn))
        selector, types = self._encoding
        args = [contract_input, HexBytes(signature)]
        return "0x" + (selector + abi_encode(types, args)).hex()

    async def _simulate(self, call: dict[str, Any]) -> int:
        """Gas for `call` with margin; a revert becomes a 409/422 RelayError with its reason."""
        try:
            call_from = cast(TxParams, {**call, "from": self.accounts[0].address})
            estimate = await self.w3.eth.estimate_gas(call_from)
        except ContractLogicError as e:
            self.refused += 1
            name, reason = revert_reason(e)
            status = 409 if name in CONFLICT_ERRORS else 422
            raise RelayError(status, f"would revert: {reason}") from None
        except Web3RPCError as e:
            if any(s in str(e).lower() for s in TOO_MUCH_GAS):  # the payload, not the RPC
                self.refused += 1
                raise RelayError(413, f"needs more gas than a block holds: {e}") from None
            self.relay_errors += 1
            raise RelayError(502, f"simulation failed at the RPC: {e}") from None
        except TRANSPORT_ERRORS as e:
            self.relay_errors += 1
            raise RelayError(504, f"simulation: RPC unreachable: {type(e).__name__}: {e}") from None
        return int(estimate * GAS_MARGIN)

    async def _fee_quote(self) -> dict[str, int]:
        """EIP-1559 fees, cached briefly: two RPC calls per relay would double the node's load.
        One refresh at a time: when the cache expires, concurrent relays share it (each asked
        on its own at 1,000 users: a thousand fee reads where one does)."""
        if self._fees is not None and time.monotonic() - self._fees[0] <= self.fee_ttl_s:
            return self._fees[1]
        if self._fee_task is None or self._fee_task.done():
            self._fee_task = asyncio.ensure_future(self._fetch_fees())
            self._fee_task.add_done_callback(_retrieve)
        return await asyncio.shield(self._fee_task)

    async def _fetch_fees(self) -> dict[str, int]:
        try:
            block, tip = await asyncio.gather(
                self.w3.eth.get_block("latest"), self.w3.eth.max_priority_fee
            )
        except (Web3RPCError, *TRANSPORT_ERRORS) as e:
            self.relay_errors += 1
            raise RelayError(502, f"fee quote failed: {type(e).__name__}: {e}") from None
        # Room for the base fee to double before the tx is priced out.
        fees = {"maxFeePerGas": 2 * block["baseFeePerGas"] + tip, "maxPriorityFeePerGas": tip}
        self._fees = (time.monotonic(), fees)
        return fees

    def _pick(self, exclude: RelayAccount | None = None) -> RelayAccount:
        """The least loaded account; ties go round-robin so equal accounts share the work."""
        choices = [a for a in self.accounts if a is not exclude] or self.accounts
        start = next(self._turn) % len(choices)
        rotated = choices[start:] + choices[:start]
        return min(rotated, key=lambda a: a.load)

    async def _send_with_retry(self, tx: dict[str, Any], key: tuple[str, int]) -> str:
        account = self._pick()
        try:
            return await self._send(account, tx, key)
        except StaleNonce:
            self.retries += 1  # that account is resynced; another one takes this tx
            try:
                return await self._send(self._pick(exclude=account), tx, key)
            except StaleNonce as e:
                self.relay_errors += 1
                raise RelayError(502, f"send failed twice on stale nonces: {e}") from None

    async def _send(self, acct: RelayAccount, tx: dict[str, Any], key: tuple[str, int]) -> str:
        """Signs with the next nonce and sends, holding the account's lock so sends stay in order."""
        acct.reserved += 1  # counted before waiting for the lock, so concurrent picks spread
        try:
            async with acct.lock:
                try:
                    if acct.stale:
                        await acct.nonces.resync()
                        acct.stale = False
                    nonce = await acct.nonces.next()
                except (Web3RPCError, *TRANSPORT_ERRORS) as e:
                    self.relay_errors += 1
                    raise RelayError(504, f"nonce read failed: {type(e).__name__}: {e}") from None
                full = {**tx, "nonce": nonce}
                tx_hash = await self._send_raw(acct, full)
                self._track(acct, PendingTx(nonce, full, [tx_hash], key))
                return tx_hash
        finally:
            acct.reserved -= 1

    def _track(self, acct: RelayAccount, pending: PendingTx) -> None:
        """Records a sent tx. An entry already at its nonce lost its tx (the chain's pending count
        handed that nonce out again after the pool dropped it): its message is no longer in
        flight, and its user may relay it again."""
        old = acct.pending.get(pending.nonce)
        if old is not None and old.key != pending.key:
            self.displaced += 1
            self._in_flight.pop(old.key, None)
            log.warning("nonce %d of %s was lost and reused", pending.nonce, acct.address)
        acct.pending[pending.nonce] = pending
        self._in_flight[pending.key] = (acct, pending.nonce)

    async def _send_raw(self, acct: RelayAccount, tx: dict[str, Any], fresh: bool = True) -> str:
        """Sends a signed tx; `fresh` says its nonce was new (not a replacement of a pending one)."""
        signed = acct.account.sign_transaction(tx)
        tx_hash = HexBytes(signed.hash).to_0x_hex()
        try:
            await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            return tx_hash
        except (Web3RPCError, ValueError) as e:
            message = str(e).lower()
            await self._resync(acct)
            if "already known" in message:
                return tx_hash  # this very transaction is in the pool: it was sent
            if any(s in message for s in STALE_NONCE):
                raise StaleNonce(message) from None
            self.relay_errors += 1
            raise RelayError(502, f"send refused by the node: {e}") from None
        except TRANSPORT_ERRORS as e:
            # The node may have taken it: its pending count tells (we hold the account's lock).
            # Not for a replacement: the tx it replaces already counts, taken or not.
            if fresh and await self._was_accepted(acct, tx["nonce"]):
                return tx_hash
            self.relay_errors += 1
            raise RelayError(504, f"send: RPC unreachable: {type(e).__name__}: {e}") from None

    async def _resync(self, acct: RelayAccount) -> None:
        try:
            await acct.nonces.resync()
        except (Web3RPCError, *TRANSPORT_ERRORS) as e:
            acct.stale = True
            log.warning("nonce resync of %s failed: %s", acct.address, e)

    async def _was_accepted(self, acct: RelayAccount, nonce: int) -> bool:
        try:
            count = await self.w3.eth.get_transaction_count(acct.address, "pending")
        except (Web3RPCError, *TRANSPORT_ERRORS):
            acct.stale = True  # unknown: the next send on this account resyncs first
            return False
        await self._resync(acct)
        return count > nonce

    # --- replacing a stuck transaction

    async def replace(
        self, tx_hash: str, fee_factor: float = MIN_REPLACEMENT_BUMP, min_max_fee: int = 0
    ) -> str:
        """Re-sends a pending tx with the same nonce and fees x `fee_factor` (and a max fee of
        at least `min_max_fee`); the new hash."""
        acct, pending = self._find(tx_hash)
        factor = max(fee_factor, MIN_REPLACEMENT_BUMP)
        tx = dict(pending.tx)
        for name in ("maxFeePerGas", "maxPriorityFeePerGas"):
            tx[name] = int(tx[name] * factor) + 1
        tx["maxFeePerGas"] = max(tx["maxFeePerGas"], min_max_fee)
        async with acct.lock:
            new_hash = await self._send_raw(acct, tx, fresh=False)
        pending.tx = tx
        pending.hashes.append(new_hash)
        return new_hash

    def _is_stuck(self, pending: PendingTx, head: int) -> bool:
        """Passed over by `stuck_after_blocks` blocks (and `stuck_after_s`), both doubling with
        each replacement of this nonce (see the module docstring)."""
        if pending.seen_block is None or pending.replacements >= self.max_replacements:
            return False
        backoff = 2**pending.replacements
        return (
            head - pending.seen_block >= self.stuck_after_blocks * backoff + pending.ahead
            and time.monotonic() - pending.sent_at >= self.stuck_after_s * backoff
        )

    async def _replace_stuck(self, acct: RelayAccount, pending: PendingTx) -> None:
        """Asks the node why the head-of-line tx waits, then re-sends it with higher fees
        (unless it waits behind full blocks)."""
        # Whatever the outcome, the next wait (and its backoff) counts from here.
        pending.seen_block, pending.sent_at = None, time.monotonic()
        try:
            cause, base_fee = await self._stuck_cause(acct, pending)
            if cause == "congested":
                self.waited_full_blocks += 1
                return
            pending.replacements += 1
            await self.replace(pending.hashes[-1], STUCK_FEE_FACTOR, 2 * base_fee)
        except (StaleNonce, RelayError, KeyError, Web3RPCError, *TRANSPORT_ERRORS) as e:
            self.replace_failed += 1  # mined meanwhile, or the node said no: the backoff holds
            log.info("replacing stuck nonce %d failed: %s", pending.nonce, e)
            return
        self.replaced += 1
        self.replaced_by[cause] += 1
        log.info("replaced stuck tx (nonce %d of %s): %s", pending.nonce, acct.address, cause)
        if pending.replacements >= self.max_replacements:
            self.replace_capped += 1
            log.warning("nonce %d of %s: no more replacements", pending.nonce, acct.address)

    async def _stuck_cause(self, acct: RelayAccount, pending: PendingTx) -> tuple[str, int]:
        """(cause, latest base fee): the node's pending count and latest block tell; `congested`
        means the tx waits in the pool behind a block too full to have taken it."""
        in_pool, block = await asyncio.gather(
            self.w3.eth.get_transaction_count(acct.address, "pending"),
            chain.raw_request(self.w3, "eth_getBlockByNumber", ["latest", False]),
        )
        base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
        if pending.tx["maxFeePerGas"] < base_fee:  # waiting in the pool, or evicted (anvil)
            return "underpriced", base_fee
        if in_pool <= pending.nonce:
            return "dropped", base_fee
        room = int(block["gasLimit"], 16) - int(block["gasUsed"], 16)
        return ("stalled" if pending.tx["gas"] <= room else "congested"), base_fee

    def _find(self, tx_hash: str) -> tuple[RelayAccount, PendingTx]:
        for acct in self.accounts:
            for pending in acct.pending.values():
                if tx_hash.lower() in (h.lower() for h in pending.hashes):
                    return acct, pending
        raise KeyError(f"{tx_hash} is not pending here")

    # --- confirming

    async def _confirm_loop(self) -> None:
        while True:
            await asyncio.sleep(self.confirm_poll_s)
            busy = [a for a in self.accounts if a.pending]
            if not busy:
                continue
            try:  # read before the mined counts, so a count is never older than the head
                head = int(await chain.raw_request(self.w3, "eth_blockNumber", []), 16)
            except (Web3RPCError, *TRANSPORT_ERRORS) as e:
                log.warning("confirming failed: %s: %s", type(e).__name__, e)
                continue
            queue = sorted(p.sent_at for a in busy for p in a.pending.values())
            results = await asyncio.gather(
                *(self._confirm(a, head, queue) for a in busy), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    log.warning("confirming failed: %s: %s", type(result).__name__, result)

    async def _confirm(self, acct: RelayAccount, head: int, queue: list[float]) -> None:
        """Drops the account's txs whose nonce is mined (one RPC call per busy account per
        tick), then replaces the tx the account waits for if the chain has passed it over."""
        mined = await self.w3.eth.get_transaction_count(acct.address, "latest")
        for nonce in sorted(n for n in acct.pending if n < mined):
            pending = acct.pending.pop(nonce)
            where = self._in_flight.get(pending.key)
            if where is not None and where[0] is acct and where[1] == nonce:
                del self._in_flight[pending.key]
            status = await self._status(pending)
            self.confirmed += 1
            if status == 0:
                self.reverted += 1
                log.warning("relayed tx %s reverted on chain", pending.hashes[-1])
        for pending in acct.pending.values():
            if pending.seen_block is None:
                pending.seen_block = head
                pending.ahead = bisect.bisect_left(queue, pending.sent_at)
        waited_for = acct.pending.get(mined)
        if waited_for is not None and self._is_stuck(waited_for, head):
            await self._replace_stuck(acct, waited_for)

    async def _status(self, pending: PendingTx) -> int | None:
        """The receipt status of whichever of its hashes was mined (None if not found); the
        node's JSON, since web3's receipt formatting costs this busy process ~5 ms a receipt."""
        for tx_hash in reversed(pending.hashes):
            try:
                receipt = await chain.raw_receipt(self.w3, tx_hash)
            except (Web3RPCError, *TRANSPORT_ERRORS) as e:  # only the gauge misses this one
                log.warning("receipt of %s unreadable: %s", tx_hash, e)
                return None
            if receipt is not None:
                return receipt["status"]
        return None


class StaleNonce(Exception):
    """The node says the account's nonce moved on; the account was resynced."""


def _retrieve(task: asyncio.Future) -> None:
    """Marks a shared task's failure as seen, also when every waiter went away first."""
    if not task.cancelled():
        task.exception()


# --- revert reasons -----------------------------------------------------------------------------


def revert_reason(error: ContractLogicError) -> tuple[str | None, str]:
    """(custom error name or None, readable reason), e.g. ("InvalidNonce", "InvalidNonce(
    expectedNonce=1, providedNonce=0)"), decoded with the workbench's contract ABIs."""
    data = error.data if isinstance(error.data, str) else None
    if data:
        raw = HexBytes(data)
        item = contracts.errors_by_selector().get(bytes(raw[:4]))
        if item is not None:
            try:
                values = abi_decode([i["type"] for i in item["inputs"]], bytes(raw[4:]))
            except Exception:  # undecodable arguments: the name alone still helps
                return item["name"], item["name"]
            args = ", ".join(
                f"{i['name']}={_show(v)}" for i, v in zip(item["inputs"], values, strict=True)
            )
            return item["name"], f"{item['name']}({args})"
    return None, str(error.message or error)


def _show(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value)
