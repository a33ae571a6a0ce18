"""workbench.vana.chain and workbench.stack.anvil against a real anvil."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from eth_account import Account

from workbench.stack.anvil import (
    DEV_MNEMONIC,
    dev_address,
    dev_key,
    rpc,
    set_block_time,
    start_anvil,
    txpool_pending,
    wait_ready,
)
from workbench.stack.process import free_port, terminate
from workbench.vana.chain import (
    NonceManager,
    ReceiptTimeout,
    TxReverted,
    decode_permission_added,
    make_web3,
    send_tx,
    wait_receipt,
)

SENDER = 14  # dev accounts this module spends from (see conftest for who uses what)
CLASHER = 15
PAUSED_SENDER = 16


def _transfer(to_index: int = 19) -> dict:
    return {"to": dev_address(to_index), "value": 1}


@asynccontextmanager
async def mining_paused(rpc_url: str) -> AsyncIterator[None]:
    """Stops automine; afterwards drops what is still pending and turns automine back on."""
    await rpc(rpc_url, "evm_setAutomine", [False])
    try:
        yield
    finally:
        await rpc(rpc_url, "anvil_dropAllTransactions")
        await set_block_time(rpc_url, 0)


def test_dev_keys_follow_the_default_mnemonic() -> None:
    Account.enable_unaudited_hdwallet_features()
    for index in (0, 1, 7):
        expected = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
        assert dev_key(index) == "0x" + expected.key.hex().removeprefix("0x")
        assert dev_address(index) == expected.address
    assert dev_address(0) == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's account 0


@pytest.mark.e2e
async def test_block_time_and_txpool(anvil, w3) -> None:
    """Interval mining holds transactions in the pool; automine (0) mines them again."""
    async with mining_paused(anvil.rpc_url):
        await set_block_time(anvil.rpc_url, 3600)
        nonces = NonceManager(w3, dev_address(PAUSED_SENDER))
        tx_hash = await send_tx(w3, dev_key(PAUSED_SENDER), _transfer(), nonces)
        assert await txpool_pending(anvil.rpc_url) == 1
        await set_block_time(anvil.rpc_url, 0)
        assert (await wait_receipt(w3, tx_hash, 10, 0.02))["status"] == 1
        assert await txpool_pending(anvil.rpc_url) == 0


@pytest.mark.e2e
async def test_nonce_manager_hands_out_distinct_consecutive_nonces(w3) -> None:
    address = dev_address(SENDER)
    start = await w3.eth.get_transaction_count(address, "pending")
    nonces = NonceManager(w3, address)
    got = await asyncio.gather(*(nonces.next() for _ in range(20)))
    assert sorted(got) == list(range(start, start + 20))


@pytest.mark.e2e
async def test_concurrent_sends_from_one_account_all_mine(w3) -> None:
    nonces = NonceManager(w3, dev_address(SENDER))
    hashes = await asyncio.gather(
        *(send_tx(w3, dev_key(SENDER), _transfer(), nonces) for _ in range(20))
    )
    assert len(set(hashes)) == 20
    receipts = await asyncio.gather(*(wait_receipt(w3, h, 10, 0.02) for h in hashes))
    assert all(r["status"] == 1 for r in receipts)
    txs = await asyncio.gather(*(w3.eth.get_transaction(h) for h in hashes))
    assert len({tx["nonce"] for tx in txs}) == 20


@pytest.mark.e2e
async def test_send_recovers_when_another_sender_took_the_nonce(w3) -> None:
    stale = NonceManager(w3, dev_address(CLASHER))
    await stale.resync()  # initialised, then another process spends from the same account:
    other = NonceManager(w3, dev_address(CLASHER))
    await wait_receipt(w3, await send_tx(w3, dev_key(CLASHER), _transfer(), other), 10, 0.02)
    tx_hash = await send_tx(w3, dev_key(CLASHER), _transfer(), stale)  # "nonce too low" inside
    assert (await wait_receipt(w3, tx_hash, 10, 0.02))["status"] == 1


@pytest.mark.e2e
async def test_send_of_a_reverting_call_consumes_no_nonce(w3, deployed) -> None:
    nonces = NonceManager(w3, dev_address(SENDER))
    bad_call = {"to": deployed["DataPortabilityGrantees"], "data": "0xdeadbeef"}
    with pytest.raises(Exception, match="revert"):
        await send_tx(w3, dev_key(SENDER), bad_call, nonces)
    assert await nonces.next() == await w3.eth.get_transaction_count(dev_address(SENDER), "pending")


@pytest.mark.e2e
async def test_wait_receipt_times_out_when_nothing_mines(anvil, w3) -> None:
    async with mining_paused(anvil.rpc_url):
        nonces = NonceManager(w3, dev_address(PAUSED_SENDER))
        tx_hash = await send_tx(w3, dev_key(PAUSED_SENDER), _transfer(), nonces)
        assert await txpool_pending(anvil.rpc_url) == 1
        with pytest.raises(ReceiptTimeout) as info:
            await wait_receipt(w3, tx_hash, timeout_s=0.3, poll_s=0.05)
        assert isinstance(info.value, asyncio.TimeoutError)


@pytest.mark.e2e
async def test_wait_receipt_returns_once_the_block_comes(anvil, w3) -> None:
    async with mining_paused(anvil.rpc_url):
        nonces = NonceManager(w3, dev_address(PAUSED_SENDER))
        tx_hash = await send_tx(w3, dev_key(PAUSED_SENDER), _transfer(), nonces)
        waiting = asyncio.create_task(wait_receipt(w3, tx_hash, timeout_s=10, poll_s=0.02))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await rpc(anvil.rpc_url, "evm_mine")
        receipt = await waiting
        assert receipt["status"] == 1 and "0x" + bytes(receipt["transactionHash"]).hex() == tx_hash


@pytest.mark.e2e
async def test_already_known_tx_returns_its_hash(anvil, w3) -> None:
    async with mining_paused(anvil.rpc_url):
        nonce = await w3.eth.get_transaction_count(dev_address(PAUSED_SENDER), "pending")
        tx = {**_transfer(), "nonce": nonce, "gas": 21_000}
        first = await send_tx(w3, dev_key(PAUSED_SENDER), tx)
        tx["maxFeePerGas"] = (await w3.eth.get_transaction(first))["maxFeePerGas"]
        tx["maxPriorityFeePerGas"] = (await w3.eth.get_transaction(first))["maxPriorityFeePerGas"]
        assert await send_tx(w3, dev_key(PAUSED_SENDER), tx) == first
        assert await txpool_pending(anvil.rpc_url) == 1


async def test_requests_time_out_at_the_set_deadline() -> None:
    hung_up = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()
        hung_up.set()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    w3 = make_web3(f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            await w3.eth.block_number
    finally:
        await w3.provider.disconnect()
        await asyncio.wait_for(hung_up.wait(), 5)
        server.close()


@pytest.mark.e2e
async def test_cancelled_requests_leave_the_provider_usable(w3) -> None:
    """web3's own session manager can deadlock after cancellations (web3.py #3867); ours not."""
    calls = [asyncio.create_task(w3.eth.get_block("latest")) for _ in range(50)]
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    async with asyncio.timeout(5):
        assert await w3.eth.block_number >= 0


def test_decode_permission_added_refuses_reverted_and_unrelated_receipts() -> None:
    reverted = {"status": 0, "transactionHash": b"\x01" * 32, "logs": []}
    with pytest.raises(TxReverted):
        decode_permission_added(reverted)
    with pytest.raises(ValueError, match="PermissionAdded"):
        decode_permission_added({"status": 1, "transactionHash": b"\x02" * 32, "logs": []})


@pytest.mark.e2e
async def test_wait_permission_backs_off_while_nothing_is_mined(w3, deployed) -> None:
    # A hash that never mines: polls start at poll_s and grow x1.25, so 2 s at 0.02 s make ~14
    # receipt requests where a fixed interval made 100 (a congested node's main load at scale).
    from workbench.vana import chain

    permissions = chain.contract(w3, "DataPortabilityPermissions", deployed[PERMISSIONS])
    sent: list[str] = []
    original = w3.provider._make_request

    async def counting(method, request_data):
        sent.append(str(method))
        return await original(method, request_data)

    w3.provider._make_request = counting
    user = Account.create().address
    with pytest.raises(ReceiptTimeout):
        await chain.wait_permission(permissions, "0x" + "ab" * 32, user, 0, 2.0, 0.02, 0.5)
    receipts = sent.count("eth_getTransactionReceipt")
    assert 5 <= receipts <= 30, receipts
    assert set(sent) == {"eth_getTransactionReceipt", "eth_call"}  # userNonce: never moved


PERMISSIONS = "DataPortabilityPermissions"


@pytest.mark.e2e
def test_keep_blocks_drops_old_receipts_only(tmp_path):
    port = free_port()
    proc = start_anvil(port, tmp_path / "anvil.log", accounts=2, keep_blocks=2)
    url = f"http://127.0.0.1:{port}"

    async def check() -> None:
        await wait_ready(url, timeout_s=15, proc=proc)
        tx = {"from": dev_address(0), "to": dev_address(1), "value": "0x1"}
        hashes = [await rpc(url, "eth_sendTransaction", [tx]) for _ in range(4)]  # 4 blocks
        receipts = [await rpc(url, "eth_getTransactionReceipt", [h]) for h in hashes]
        assert [r is not None for r in receipts] == [False, False, True, True]
        assert await rpc(url, "eth_getBlockByNumber", ["0x1", False])  # headers stay

    try:
        asyncio.run(check())
    finally:
        terminate(proc)
