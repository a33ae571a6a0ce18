"""Sub-second blocks for the local chain: a block every `interval_s` while transactions wait.

Why not anvil's own `--block-time 0.25`: for any block time up to 2 s anvil raises the number of
whole-state copies it keeps in memory to 1,500 (`update_interval_mine_block_time`), overriding
`--prune-history`; under load that took anvil to 1.3 GB in a minute. Automine instead makes a
block per transaction, and anvil's cost per block grows with the number of blocks. So anvil runs
without a miner of its own and this process asks for a block (`evm_mine`) each interval in which
the pool holds transactions: one block takes them all, and an idle chain mines nothing.

    python -m workbench.stack.miner http://127.0.0.1:8545 0.25

SIGSTOP/SIGCONT pause and resume it (a chain stall). It exits once anvil is gone.
"""

from __future__ import annotations

import http.client
import json
import logging
import sys
import time
import urllib.parse
from typing import Any

log = logging.getLogger("workbench.stack.miner")

GONE_AFTER_S = 5.0  # anvil unreachable this long: it was stopped, and so is this process


class JsonRpc:
    """A blocking JSON-RPC client on one kept-alive connection: for a process that does nothing
    else (`anvil.rpc` is the async one, a session per call)."""

    def __init__(self, rpc_url: str) -> None:
        parts = urllib.parse.urlsplit(rpc_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 8545
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self, method: str, params: list[Any] | None = None) -> Any:
        """One JSON-RPC call on a kept-alive connection (reopened after any failure)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
            reply = json.loads(self.conn.getresponse().read())
        except (OSError, http.client.HTTPException, ValueError):
            self.conn.close()
            self.conn = None
            raise
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


class Miner:
    def __init__(self, rpc_url: str, interval_s: float) -> None:
        self.rpc = JsonRpc(rpc_url)
        self.interval_s = interval_s
        self.blocks = 0

    def tick(self) -> None:
        """Mines a block if transactions wait in the pool."""
        if int(self.rpc("txpool_status")["pending"], 16) > 0:
            self.rpc("evm_mine")
            self.blocks += 1

    def run(self) -> None:
        self.rpc("evm_setAutomine", [False])
        log.info("mining every %.3g s while transactions wait", self.interval_s)
        due, last_ok = time.monotonic(), time.monotonic()
        while True:
            due += self.interval_s
            try:
                self.tick()
                last_ok = time.monotonic()
            except (OSError, http.client.HTTPException) as e:  # anvil unreachable
                if time.monotonic() - last_ok > GONE_AFTER_S:
                    log.info("anvil gone (%s); %d blocks mined", e, self.blocks)
                    return
            except Exception as e:  # an odd answer: the chain still needs its next block
                log.warning("mining tick failed: %s: %s", type(e).__name__, e)
            # After a pause (SIGSTOP) the schedule restarts from now rather than catching up.
            now = time.monotonic()
            due = max(due, now)
            time.sleep(due - now)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if len(argv) != 2:
        print("usage: python -m workbench.stack.miner RPC_URL INTERVAL_S", file=sys.stderr)
        return 2
    Miner(argv[0], float(argv[1])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
