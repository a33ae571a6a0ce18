"""Shared fixtures: one anvil per test session, and the workbench's contracts deployed on it.

Dev-account use on the shared `anvil` chain (see docs/ARCHITECTURE.md "Local keys"): 0 deployer,
1 app (grantee 1). Modules that send pick their own indices so nonces never collide:
10 test_contracts, 11 test_personal_server, 14-16 test_chain, 18 test_wallets, 19 receives only.
"""

from __future__ import annotations

import _posixsubprocess
import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsinterop import run_node
from web3 import AsyncWeb3

from workbench.params import PROJECT_ROOT
from workbench.stack.anvil import dev_address, dev_key, start_anvil, wait_ready
from workbench.stack.deploy import deploy_all
from workbench.stack.local import LocalStack
from workbench.stack.process import free_port, terminate
from workbench.vana.chain import close_web3, make_web3
from workbench.vana.contracts import CONTRACT_NAMES

SDK_PACKAGE = "@opendatalabs/vana-sdk"  # Vana's SDK: the reference for our contracts' ABIs
APP_PUBLIC_KEY = "04" + "11" * 64  # grantee 1's key; the contracts only store it
# Every way a test could start a process (subprocess and asyncio go through _fork_exec,
# multiprocessing through _posixsubprocess.fork_exec or os.fork).
PROCESS_STARTERS = [
    (subprocess, "_fork_exec"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
]


class ProcessStartRefused(RuntimeError):
    """A test without the `e2e` marker tried to start a process."""


def _refuse_process(*_args: object, **_kwargs: object) -> None:
    raise ProcessStartRefused(
        "this test starts a process but has no e2e marker: add @pytest.mark.e2e (or a module "
        "pytestmark) so that `pytest -m 'not e2e'` starts none"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    """Holds every test to the rule that only `e2e` tests start processes (anvil, servers, node,
    papermill), through the fixtures they set up too."""
    if item.get_closest_marker("e2e"):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        for module, name in PROCESS_STARTERS:
            patch.setattr(module, name, _refuse_process)
        return (yield)


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
def sdk_abis() -> dict[str, list[dict]]:
    """`{contract name: ABI}` as the SDK version pinned in package.json ships them (node reads
    them from node_modules at test time; nothing is copied into the repository)."""
    pinned = json.loads((PROJECT_ROOT / "package.json").read_text())["devDependencies"][SDK_PACKAGE]
    installed = PROJECT_ROOT / "node_modules" / SDK_PACKAGE / "package.json"
    version = json.loads(installed.read_text())["version"] if installed.is_file() else None
    if version != pinned:
        pytest.fail(
            f"{SDK_PACKAGE} {pinned} is not in node_modules (found {version}); run make setup"
        )
    return run_node("vana_sdk_abi.mjs", {"names": list(CONTRACT_NAMES)})["abis"]


# --- the embedded local stack (appended by the stack engineer) ----------------------------------


@pytest.fixture(scope="session")
def local_stack() -> Iterator[object]:
    """One started `LocalStack("fast")` shared by the session (a stack costs ~1.5 s and 4
    processes). Its relayers are dev accounts 2..5 on its own anvil, not the `anvil` fixture's."""
    with LocalStack("fast") as stack:
        yield stack
