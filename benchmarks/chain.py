"""How the local chain ages: anvil's cost per block as blocks accumulate, and its memory.

The facts behind the `fast` profile's mining (params/profiles/fast.yaml) and
`workbench.stack.miner`, measured on a bare anvil (no stack):

- `aging`: milliseconds per `evm_mine` of an empty block, fresh and after each `--step` blocks
  (`anvil_mine` fills them in). Automine makes a block per transaction, so this is what a
  transaction's block costs as a run goes on.
- `memory`: anvil's RSS while `--tx-per-s` transfers, each adding a new account and 20 storage
  slots to the state (about what a permission writes), are mined: under automine, by the stack's miner (0.25 s) and by anvil's own 1 s interval
  mining (which keeps 1,500 whole states in memory whatever `--prune-history` says).

Prints JSON. Everything runs on 127.0.0.1.

    .venv/bin/python benchmarks/chain.py [--step 5000] [--steps 3] [--memory-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from eth_account import Account
from eth_utils import to_checksum_address

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.stack import anvil  # noqa: E402
from workbench.stack.miner import JsonRpc, Miner  # noqa: E402
from workbench.stack.process import free_port  # noqa: E402

STORE = "0x" + "5e" * 20  # an account whose storage grows like the Permissions contract's
SLOTS_PER_TX = 20


class Node:
    """A bare anvil with the stack's flags (automine, `--prune-history STATE_HISTORY`)."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = anvil.start_anvil(port, accounts=2)
        asyncio.run(anvil.wait_ready(self.url, timeout_s=15, proc=self.proc))
        self.rpc = JsonRpc(self.url)  # kept alive: a call costs what anvil does, not a connect

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def aging(step: int, steps: int, sample: int = 200) -> dict[str, Any]:
    node = Node()
    try:

        def ms_per_block() -> float:
            t0 = time.perf_counter()
            for _ in range(sample):
                node.rpc("evm_mine")
            return round((time.perf_counter() - t0) / sample * 1000, 2)

        points = [{"blocks": 0, "ms_per_block": ms_per_block()}]
        for k in range(1, steps + 1):
            node.rpc("anvil_mine", [hex(step)])
            points.append({"blocks": k * step, "ms_per_block": ms_per_block()})
        return {"empty_block_cost": points, "anvil_rss_mb": round(node.rss_mb())}
    finally:
        node.stop()


def memory(mode: str, seconds: float, tx_per_s: float) -> dict[str, Any]:
    """anvil's RSS under steady transfers, in one mining mode."""
    node = Node()
    try:
        if mode == "miner 0.25 s":
            miner = Miner(node.url, 0.25)  # the stack's; it ends when anvil does
            threading.Thread(target=miner.run, daemon=True).start()
        elif mode == "anvil interval 1 s":
            node.rpc("evm_setIntervalMining", [1])
        Account.enable_unaudited_hdwallet_features()
        sender = Account.from_mnemonic(anvil.DEV_MNEMONIC)
        start_rss, t0 = node.rss_mb(), time.monotonic()
        nonce = 0
        while time.monotonic() - t0 < seconds:
            to = to_checksum_address(f"0x{nonce + 1:040x}")  # a new account: the state grows
            tx = {"to": to, "value": 1, "gas": 21000, "maxFeePerGas": 10**11, "nonce": nonce,
                  "maxPriorityFeePerGas": 10**9, "chainId": anvil.CHAIN_ID, "type": 2}  # fmt: skip
            raw = sender.sign_transaction(tx).raw_transaction.to_0x_hex()
            node.rpc("eth_sendRawTransaction", [raw])
            for k in range(SLOTS_PER_TX):  # contract storage, as a permission writes
                slot = hex(nonce * SLOTS_PER_TX + k + 1)
                node.rpc("anvil_setStorageAt", [STORE, slot, "0x" + "ab" * 32])
            nonce += 1
            time.sleep(max(0.0, t0 + nonce / tx_per_s - time.monotonic()))
        minutes = (time.monotonic() - t0) / 60
        end_rss = node.rss_mb()
        return {
            "mode": mode,
            "transactions": nonce,
            "rss_start_mb": round(start_rss),
            "rss_end_mb": round(end_rss),
            "mb_per_min": round((end_rss - start_rss) / minutes, 1),
        }
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=5000, help="blocks between measurements")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory-s", type=float, default=60.0, help="seconds per mining mode")
    parser.add_argument("--tx-per-s", type=float, default=20.0)
    args = parser.parse_args()
    modes = ["automine", "miner 0.25 s", "anvil interval 1 s"]
    out = {
        "aging": aging(args.step, args.steps),
        "memory": [memory(m, args.memory_s, args.tx_per_s) for m in modes],
        "state_history": anvil.STATE_HISTORY,
    }
    ratio = [p["ms_per_block"] for p in out["aging"]["empty_block_cost"]]
    out["aging"]["last_over_fresh"] = round(ratio[-1] / ratio[0], 1) if ratio[0] else None
    out["aging"]["median_ms"] = statistics.median(ratio)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
