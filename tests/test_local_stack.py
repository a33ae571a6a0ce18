"""LocalStack and `stack up`: start, stop, no process left behind, a JavaScript client works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from jsinterop import run_node

from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT, load_profile
from workbench.stack import anvil
from workbench.stack.components import ComponentStartError
from workbench.stack.local import COMPONENTS, MINER, LocalStack
from workbench.vana import chain, permission
from workbench.vana.network import MOKSHA_CHAIN_ID, SDK_CONTRACTS

pytestmark = pytest.mark.e2e
ENDPOINT_KEYS = {
    "rpc_url",
    "api_url",
    "personal_server_url",
    "storage_url",
    "chain_id",
    "contracts",
    "grantee_id",
}
CONTRACTS = {
    "DataPortabilityPermissions",
    "DataPortabilityGrantees",
    "DataPortabilityServers",
    "DataRegistry",
}
OWNER_DEATH_LIMIT_S = 10.0  # the promise: no stack process outlives its owner by more than this


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def alive(pids) -> list[int]:
    """Those of `pids` still running (zombies count as gone: they hold no resources)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, limit_s: float) -> list[int]:
    deadline = time.monotonic() + limit_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# --- LocalStack ---------------------------------------------------------------------------------


def test_stack_up_and_down_leaves_no_process():
    profile = load_profile("fast")
    profile["chain"]["block_time_s"] = 1  # interval mining is switched on after deployment
    profile["relayer"]["accounts"] = 2
    before = descendants()
    stack = LocalStack(profile)
    with stack:
        pids = stack.pids
        assert set(pids) == set(COMPONENTS)
        assert set(alive(pids.values())) == set(pids.values())
        workdir = stack.workdir
        for name in COMPONENTS:
            assert (workdir / "logs" / f"{name}.log").is_file()
        for url in (stack.endpoints.api_url, stack.endpoints.personal_server_url):
            assert get_json(f"{url}/health")["status"] == "ok"
        assert get_json(f"{stack.endpoints.api_url}/metrics")["relayer_accounts"] == 2
        automine = asyncio.run(anvil.rpc(stack.endpoints.rpc_url, "anvil_getAutomine"))
        assert automine is False
        assert stack.target.kind == "local" and stack.target.pids == pids
    assert alive(pids.values()) == []
    assert descendants() - before == set()
    assert not workdir.exists()  # a temp workdir goes with the stack


def test_sub_second_blocks_come_from_the_miner_and_a_stall_pauses_it():
    # fast's 0.25 s blocks: anvil's own interval mining would keep 1,500 states in memory.
    assert 0 < load_profile("fast")["chain"]["block_time_s"] < 1
    profile = load_profile("fast")
    profile["relayer"]["accounts"] = 1
    with LocalStack(profile) as stack:
        url = stack.endpoints.rpc_url
        assert MINER in stack.pids

        async def head() -> int:
            return int(await anvil.rpc(url, "eth_blockNumber"), 16)

        async def mined_within(tx_hash: str, seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if await anvil.rpc(url, "eth_getTransactionReceipt", [tx_hash]):
                    return True
                await asyncio.sleep(0.05)
            return False

        async def send() -> str:
            tx = {"from": anvil.dev_address(0), "to": anvil.dev_address(1), "value": "0x1"}
            return await anvil.rpc(url, "eth_sendTransaction", [tx])

        async def check() -> None:
            assert await anvil.rpc(url, "anvil_getAutomine") is False
            first = await head()
            await asyncio.sleep(1.0)
            assert await head() == first  # an idle chain mines no empty blocks
            assert await mined_within(await send(), 2.0)
            await stack.stall_chain()
            waiting = await send()
            assert not await mined_within(waiting, 1.0)
            await stack.resume_chain()
            assert await mined_within(waiting, 2.0)

        asyncio.run(check())


def test_a_failed_start_leaves_no_process_and_keeps_the_logs():
    before = descendants()
    with socket.socket() as taken:  # the API server cannot bind this port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = LocalStack("fast", ports={"api": taken.getsockname()[1]})
        with pytest.raises(ComponentStartError):
            stack.start()
    try:
        assert stack.pids == {}
        assert wait_gone(descendants() - before, 5) == []
        assert (stack.workdir / "logs" / "api.log").is_file()
    finally:
        stack.keep = False
        if stack.workdir:
            shutil.rmtree(stack.workdir, ignore_errors=True)


def test_bad_profiles_fail_before_anything_starts():
    profile = load_profile("fast")
    profile["relayer"]["accounts"] = 19
    with pytest.raises(WorkbenchError, match="relayer.accounts"):
        LocalStack(profile)
    with pytest.raises(WorkbenchError, match="ports"):
        LocalStack("fast", ports={"db": 1})


async def test_sync_start_inside_a_running_loop_and_async_context():
    """Jupyter calls `start()` with its loop running; the children must outlive the helper
    thread that ran the start (the parent-death signal follows the forking thread)."""
    stack = LocalStack("fast")
    stack.start()
    try:
        await asyncio.sleep(0.5)
        assert set(alive(stack.pids.values())) == set(stack.pids.values())
        w3 = chain.make_web3(stack.endpoints.rpc_url, timeout_s=10)
        assert await w3.eth.chain_id == stack.endpoints.chain_id
        await chain.close_web3(w3)
    finally:
        pids = stack.pids
        stack.stop()
    assert alive(pids.values()) == []

    async with LocalStack("fast") as astack:
        apids = astack.pids
        assert set(alive(apids.values())) == set(apids.values())
    assert alive(apids.values()) == []


# --- the CLI: `python -m workbench stack up --json` -----------------------------------------


@pytest.fixture
def cli_stack() -> Iterator[tuple[subprocess.Popen, dict]]:
    """The CLI in its own process, and the one JSON line it printed."""
    with running_cli_stack() as started:
        yield started


@pytest.fixture
def vana_cli_stack() -> Iterator[tuple[subprocess.Popen, dict]]:
    """The same in Vana-address mode."""
    with running_cli_stack("--vana-addresses") as started:
        yield started


@contextlib.contextmanager
def running_cli_stack(*extra: str) -> Iterator[tuple[subprocess.Popen, dict]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "stack", "up", "--profile", "fast", "--json", *extra],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    workdir = None
    try:
        endpoints = json.loads(read_line(proc, 60))
        workdir = stack_workdir(proc)
        yield proc, endpoints
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if workdir is not None:  # a killed owner cannot remove its temp workdir
            shutil.rmtree(workdir, ignore_errors=True)


def stack_workdir(proc: subprocess.Popen) -> Path:
    """The owner's temp workdir: a component's stdout is `<workdir>/logs/<name>.log`."""
    child = psutil.Process(proc.pid).children()[0]
    return Path(os.readlink(f"/proc/{child.pid}/fd/1")).parent.parent


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next stdout line, waiting at most `timeout_s` (a reader thread: pipes have no timeout)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(proc.stdout.readline)
        try:
            line = future.result(timeout=timeout_s).decode()
        except TimeoutError:
            proc.kill()  # unblocks the reader
            raise AssertionError(f"no output line within {timeout_s} s") from None
    assert line, f"exited {proc.wait()}; stderr: {proc.stderr.read().decode()[-2000:]}"
    return line


def stack_pids(proc: subprocess.Popen) -> list[int]:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == len(COMPONENTS) + 1, children  # fast's sub-second blocks: the miner
    return [c.pid for c in children]


def test_cli_json_line_and_a_viem_client_relays(cli_stack):
    proc, endpoints = cli_stack
    assert set(endpoints) == ENDPOINT_KEYS
    assert set(endpoints["contracts"]) == CONTRACTS
    pids = stack_pids(proc)
    result = run_node("stack_client.mjs", endpoints, timeout_s=60)
    assert result.get("status") == "success", result
    assert result["transactionHash"].startswith("0x") and len(result["transactionHash"]) == 66
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout.read() == b""  # still one line only
    assert wait_gone(pids, 5) == []


def test_vana_address_mode_has_moksha_chain_id_and_the_sdk_addresses(vana_cli_stack):
    proc, endpoints = vana_cli_stack
    assert endpoints["chain_id"] == MOKSHA_CHAIN_ID
    assert endpoints["contracts"] == SDK_CONTRACTS

    async def domain() -> tuple:
        w3 = chain.make_web3(endpoints["rpc_url"], timeout_s=10)
        try:
            permissions = chain.contract(
                w3, "DataPortabilityPermissions", SDK_CONTRACTS["DataPortabilityPermissions"]
            )
            return await asyncio.gather(
                w3.eth.chain_id,
                permissions.functions.eip712Domain().call(),
                chain.contract(
                    w3, "DataPortabilityGrantees", SDK_CONTRACTS["DataPortabilityGrantees"]
                )
                .functions.grantees(1)
                .call(),
            )
        finally:
            await chain.close_web3(w3)

    chain_id, fields, grantee = asyncio.run(domain())
    assert chain_id == MOKSHA_CHAIN_ID
    assert tuple(fields[1:5]) == (
        permission.DOMAIN_NAME,
        permission.DOMAIN_VERSION,
        MOKSHA_CHAIN_ID,
        SDK_CONTRACTS["DataPortabilityPermissions"],
    )
    assert grantee[1] == anvil.dev_address(1)
    # A client signing Moksha's domain gets its permission relayed and mined.
    result = run_node("stack_client.mjs", endpoints, timeout_s=60)
    assert result.get("status") == "success", result


def test_kill_9_of_the_owner_leaves_no_stack_process(cli_stack):
    proc, _ = cli_stack
    pids = stack_pids(proc)
    proc.kill()  # SIGKILL: the owner gets no chance to clean up
    proc.wait()
    assert wait_gone(pids, OWNER_DEATH_LIMIT_S) == []


def test_cli_text_output_names_the_logs_and_how_to_stop(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "stack", "up"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = [read_line(proc, 60)]
        while "Ctrl-C" not in lines[-1]:
            lines.append(read_line(proc, 10))
        text = "".join(lines)
        assert "api_url" in text and "logs" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
