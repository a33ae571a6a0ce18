"""Shared fixtures: one anvil per test session, and the workbench's contracts deployed on it.

Dev-account use on the shared `anvil` chain (see docs/ARCHITECTURE.md "Local keys"): 0 deployer,
1 app (grantee 1). Modules that send pick their own indices so nonces never collide:
10 test_contracts, 11 test_personal_server, 14-16 test_chain, 18 test_wallets, 19 receives only.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import AsyncWeb3

from workbench.params import PROJECT_ROOT
from workbench.stack.anvil import dev_address, dev_key, start_anvil, wait_ready
from workbench.stack.deploy import deploy_all
from workbench.stack.process import free_port, terminate
from workbench.vana.chain import close_web3, make_web3

REFERENCE_DIR = PROJECT_ROOT.parent / "shared" / "reference"
APP_PUBLIC_KEY = "04" + "11" * 64  # grantee 1's key; the contracts only store it


@dataclass(frozen=True)
class AnvilNode:
    rpc_url: str
    proc: subprocess.Popen
    log_path: Path


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNode]:
    """A fresh anvil on a free port (automine), stopped after the session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("anvil") / "anvil.log"
    proc = start_anvil(port, log_path)
    node = AnvilNode(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        asyncio.run(wait_ready(node.rpc_url, timeout_s=15, proc=proc))
        yield node
    finally:
        terminate(proc)


@pytest.fixture(scope="session")
def deployed(anvil: AnvilNode) -> dict[str, str]:
    """`{contract name: address}` on the session's anvil; grantee 1 is dev account 1 (the app)."""
    return asyncio.run(deploy_all(anvil.rpc_url, dev_key(0), dev_address(1), APP_PUBLIC_KEY))


@pytest.fixture
async def w3(anvil: AnvilNode) -> AsyncIterator[AsyncWeb3]:
    """An AsyncWeb3 on the session's anvil, for one test (and its event loop)."""
    web3 = make_web3(anvil.rpc_url, timeout_s=10)
    yield web3
    await close_web3(web3)


@pytest.fixture(scope="session")
def reference_abi_dir() -> Path:
    """The reference ABIs beside the repo (read at test time, never copied into it)."""
    path = REFERENCE_DIR / "abi"
    if not path.is_dir():
        pytest.skip(f"reference ABIs not found at {path}")
    return path


# --- the embedded local stack (appended by the stack engineer) ----------------------------------


@pytest.fixture(scope="session")
def local_stack() -> Iterator[object]:
    """One started `LocalStack("fast")` shared by the session (a stack costs ~1.5 s and 4
    processes). Its relayers are dev accounts 2..5 on its own anvil, not the `anvil` fixture's."""
    from workbench.stack.local import LocalStack

    with LocalStack("fast") as stack:
        yield stack
