"""The local chain: anvil from npm, its dev keys, and the anvil-only RPC knobs the stack turns."""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic

from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT
from workbench.stack.process import spawn

CHAIN_ID = 31337
DEV_MNEMONIC = "test test test test test test test test test test test junk"
FOUNDRY_NPM_DIR = PROJECT_ROOT / "node_modules" / "@foundry-rs"
# npm's names for the platforms @foundry-rs/anvil ships a binary package for (Windows aside:
# the stack relies on POSIX process groups and signals, so Windows means WSL2, i.e. Linux).
_NPM_OS = {"Linux": "linux", "Darwin": "darwin"}
_NPM_CPU = {"x86_64": "amd64", "amd64": "amd64", "arm64": "arm64", "aarch64": "arm64"}
FOUNDRYUP = "curl -L https://foundry.paradigm.xyz | bash && foundryup"
_RPC_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Whole-state copies anvil keeps, one per recent block (its default keeps hundreds: anvil grew
# 9 MB/min on a 50-user moksha hold, 1.3 MB/min with 4). Nothing here reads an older state, but
# a read at `latest` needs the head's state to outlive the blocks mined while the call runs
# (`--prune-history` with no number keeps too few: "BlockOutOfRangeError" under load). anvil
# ignores this for interval mining at 2 s or less: hence `workbench.stack.miner`.
STATE_HISTORY = 2


def platform_package() -> str | None:
    """`anvil-linux-amd64`, `anvil-darwin-arm64`…: the npm package holding this machine's anvil."""
    os_name = _NPM_OS.get(platform.system())
    cpu = _NPM_CPU.get(platform.machine().lower())
    return f"anvil-{os_name}-{cpu}" if os_name and cpu else None


def anvil_candidates() -> list[Path]:
    """Where anvil may be, best first.

    1. The platform package `npm ci` installs as an optional dependency of `@foundry-rs/anvil`.
    2. The binary that launcher package's postinstall downloads into itself when npm skipped
       optional dependencies. (Its `bin.mjs` only runs one of these two; we run the binary
       itself, so the sampler measures anvil rather than a node wrapper.)
    3. `anvil` on PATH, for people with Foundry installed.
    """
    package = platform_package()
    found = [FOUNDRY_NPM_DIR / package / "bin" / "anvil"] if package else []
    found.append(FOUNDRY_NPM_DIR / "anvil" / "anvil")
    on_path = shutil.which("anvil")
    return found + ([Path(on_path)] if on_path else [])


def anvil_binary() -> Path:
    """This machine's anvil (see `anvil_candidates`); a WorkbenchError with the fix if none."""
    for path in anvil_candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return path
    here = f"{platform.system()} {platform.machine()}"
    package = platform_package()
    if package is None:
        raise WorkbenchError(
            "anvil",
            f"no anvil package for {here}: the workbench supports Linux and macOS on x86-64 "
            "and arm64",
            "on Windows run it in WSL2; elsewhere build Foundry from source so `anvil` is on PATH",
        )
    raise WorkbenchError(
        "anvil",
        f"not found for {here} (looked for node_modules/@foundry-rs/{package}, then `anvil` "
        "on PATH)",
        f"run make setup (npm ci installs @foundry-rs/{package}), or install Foundry: {FOUNDRYUP}",
    )


def start_anvil(
    port: int,
    log_path: Path | None = None,
    accounts: int = 20,
    gas_limit: int | None = None,
    keep_blocks: int | None = None,
) -> subprocess.Popen:
    """anvil on 127.0.0.1:`port`, chain id 31337, the dev mnemonic, mining each tx on arrival
    (`set_block_time` and `workbench.stack.miner` change that after deployment).

    `gas_limit` per block defaults to anvil's 30 M, room for about 30 permissions per block.
    `keep_blocks`: the transactions and receipts of only the newest this many blocks with
    transactions stay (older receipts read as not found; headers and logs stay); None: all.
    """
    cmd = [
        str(anvil_binary()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(CHAIN_ID),
        "--accounts",
        str(accounts),
        "--mnemonic",
        DEV_MNEMONIC,
        "--prune-history",
        str(STATE_HISTORY),
    ]
    if gas_limit is not None:
        cmd += ["--gas-limit", str(gas_limit)]
    if keep_blocks is not None:
        cmd += ["--transaction-block-keeper", str(keep_blocks)]
    return spawn(cmd, log_path=log_path)


async def rpc(rpc_url: str, method: str, params: list[Any] | None = None) -> Any:
    """One JSON-RPC call, for anvil's own methods that web3 does not wrap."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    async with (
        aiohttp.ClientSession(timeout=_RPC_TIMEOUT) as session,
        session.post(rpc_url, json=body) as resp,
    ):
        reply = await resp.json(content_type=None)
    if "error" in reply:
        raise RuntimeError(f"{method} failed: {reply['error']}")
    return reply["result"]


async def wait_ready(
    rpc_url: str, timeout_s: float = 10.0, proc: subprocess.Popen | None = None
) -> None:
    """Returns once the node answers `eth_chainId`; fails early if `proc` has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"anvil exited with code {proc.returncode} (port in use? see its log)"
            )
        try:
            await rpc(rpc_url, "eth_chainId")
            return
        except (TimeoutError, aiohttp.ClientError, OSError):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"anvil at {rpc_url} not ready after {timeout_s} s") from None
            await asyncio.sleep(0.05)


async def set_block_time(rpc_url: str, seconds: float) -> None:
    """Mines a block every `seconds` (whole seconds, as anvil takes them); 0 = automine."""
    if seconds <= 0:
        await rpc(rpc_url, "evm_setAutomine", [True])
    else:
        # anvil's interval mining replaces automine; its argument is an integer number of seconds.
        await rpc(rpc_url, "evm_setIntervalMining", [max(1, round(seconds))])


async def set_code(rpc_url: str, address: str, code: str) -> None:
    """Places runtime `code` (0x hex) at `address`, as if a contract had been deployed there."""
    await rpc(rpc_url, "anvil_setCode", [address, code])


async def set_chain_id(rpc_url: str, chain_id: int) -> None:
    """Changes the chain id the node reports and the EVM sees (`block.chainid`)."""
    await rpc(rpc_url, "anvil_setChainId", [chain_id])


async def txpool_pending(rpc_url: str) -> int:
    """Transactions waiting in anvil's pool (pending + queued are both reported; this is pending)."""
    status = await rpc(rpc_url, "txpool_status")
    return int(status["pending"], 16)


@functools.cache
def _dev_seed() -> bytes:
    return seed_from_mnemonic(DEV_MNEMONIC, "")  # PBKDF2: the slow part, done once


@functools.cache
def dev_key(index: int) -> str:
    """The `0x` private key of anvil's dev account `index` (m/44'/60'/0'/0/index)."""
    return "0x" + key_from_seed(_dev_seed(), f"m/44'/60'/0'/0/{index}").hex()


@functools.cache
def dev_address(index: int) -> str:
    return Account.from_key(dev_key(index)).address
