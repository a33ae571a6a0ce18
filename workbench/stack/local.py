"""The embedded system under test: anvil, the contracts, storage, personal server, API server.

    with LocalStack("fast") as stack:            # or: async with LocalStack("fast") as stack:
        stack.endpoints.api_url

Each component is its own OS process on 127.0.0.1, its output in `<workdir>/logs/<name>.log`.

Who forks matters. The kernel's parent-death signal (PR_SET_PDEATHSIG) fires when the *thread*
that forked a child ends, not the process. So every child is forked by the stack's own spawner
threads, which live exactly as long as the stack: a caller's short-lived helper thread or
asyncio's default executor (shut down at the end of `asyncio.run`) would take the children with
it. When the owning process dies, even by `kill -9`, its threads die and the children get SIGTERM;
the Python servers also poll their parent (`watch_parent`).

The sync `start()` works inside a running event loop (Jupyter): it runs `astart()` on a helper
thread with its own loop and waits. We chose that over nest_asyncio because it leaves the
caller's loop untouched (nest_asyncio patches it for the whole kernel) and the children do not
depend on the helper thread (see above). Blocking the notebook while the stack starts is intended.

Faults (`faults=FaultPlan`, see `workbench.stack.faults`): with an `rpc` section a JSON-RPC proxy
(`rpc_proxy`) sits between every client and anvil (`endpoints.rpc_url` is the proxy), started
disarmed so start-up and funding are clean; `storage` / `inference` go into those servers'
config key `faults`. `fault_schedule()` gives the run's timed kills, restarts and chain stalls.

Vana-address mode (`vana_addresses=True`, or the profile's `chain.vana_addresses: true`): the
chain id is Moksha's (14800) and the four contracts sit at the addresses Vana's SDK has built in
(`workbench.vana.network.SDK_CONTRACTS`), so the unchanged SDK can run against this stack.
Signatures made there are for Moksha's EIP-712 domain: use test wallets only.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from workbench.errors import WorkbenchError
from workbench.events import Clock, Emit
from workbench.params import load_profile
from workbench.stack import anvil
from workbench.stack.components import start_component
from workbench.stack.deploy import deploy_all, deploy_at_sdk_addresses
from workbench.stack.faults import FaultPlan, FaultSchedule
from workbench.stack.process import free_port, spawn
from workbench.vana.crypto import public_key_of
from workbench.vana.network import MOKSHA_CHAIN_ID
from workbench.vana.target import LOCAL_FUNDER_KEY_ENV, Endpoints, Target

log = logging.getLogger("workbench.stack.local")

PROXY = "rpc_proxy"  # only with an rpc fault section, between anvil and every client
MINER = "miner"  # only with sub-second blocks (see workbench.stack.miner)
COMPONENTS = ("anvil", "storage", "personal", "api")  # what a plain stack runs (no fault proxy)
ALL_COMPONENTS = ("anvil", MINER, PROXY, "storage", "personal", "api")  # start order; reverse stop
MODULES = {
    "storage": "storage",
    "personal": "personal_server",
    "api": "api_server",
    PROXY: "rpc_proxy",
}
# Receipts every client here asks for within its receipt timeout (at most 180 s: the sdk
# preset), so anvil keeps only the last 5 minutes' worth of blocks' transactions: with all of
# them its memory grows with every permission (automine: a block per tx, so no bound there).
KEEP_RECEIPTS_S = 300.0
AUTOMINE_STUCK_AFTER_S = 3.0  # relayer: the least time between two sends of one nonce
DEV_ACCOUNTS = 20
FIRST_RELAYER = 2  # dev accounts: 0 deployer and funder, 1 the app, 2.. relayers
MAX_RELAYERS = DEV_ACCOUNTS - FIRST_RELAYER
GRANTEE_ID = 1
ANVIL_READY_S = 15.0
COMPONENT_READY_S = 30.0
STOP_GRACE_S = 5.0


class LocalStack:
    """Starts and stops the local stack; `.endpoints`, `.pids`, `.target`, `.workdir`."""

    def __init__(
        self,
        profile: str | dict[str, Any] = "fast",
        workdir: Path | str | None = None,
        ports: dict[str, int] | None = None,
        keep: bool = False,
        faults: FaultPlan | None = None,
        vana_addresses: bool | None = None,
    ):
        self.profile = load_profile(profile) if isinstance(profile, str) else dict(profile)
        if vana_addresses is None:  # the profile's `chain.vana_addresses`, default off
            vana_addresses = bool(self.profile["chain"].get("vana_addresses", False))
        self.vana_addresses = vana_addresses
        self.chain_id = MOKSHA_CHAIN_ID if vana_addresses else anvil.CHAIN_ID
        self.relayers = _relayer_count(self.profile)
        self.faults = faults
        self.ports = dict(ports or {})
        unknown = sorted(set(self.ports) - set(ALL_COMPONENTS))
        if unknown:
            raise WorkbenchError("ports", f"unknown components {unknown}", f"use {ALL_COMPONENTS}")
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self._own_workdir = workdir is None
        self.keep = keep
        self.procs: dict[str, subprocess.Popen] = {}
        self.endpoints: Endpoints | None = None
        self.startup_s: float | None = None
        self._urls: dict[str, str] = {}  # component -> base URL, filled as each is ready
        self._launches: dict[str, tuple[dict, dict | None]] = {}  # config, secrets: for restarts
        self.anvil_url: str | None = None
        self._spawner: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # --- what callers read

    @property
    def pids(self) -> dict[str, int]:
        return {name: self.procs[name].pid for name in ALL_COMPONENTS if name in self.procs}

    @property
    def logs_dir(self) -> Path:
        return self._workdir() / "logs"

    @property
    def target(self) -> Target:
        if self.endpoints is None:
            raise RuntimeError("the stack is not started")
        return Target(
            kind="local",
            endpoints=self.endpoints,
            profile=self.profile,
            funder_key_env=LOCAL_FUNDER_KEY_ENV,
            pids=self.pids,
            funder_key=anvil.dev_key(0),
        )

    # --- starting

    def start(self) -> LocalStack:
        """Starts the stack and waits for every component's health; stops it all on failure."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.astart())
        helper = ThreadPoolExecutor(1, thread_name_prefix="stack-start")
        future = helper.submit(asyncio.run, self.astart())
        try:
            return future.result()
        except BaseException:  # also Ctrl-C while waiting: nothing may outlive a failed start
            self._stop_all(failed=True)
            raise
        finally:
            helper.shutdown(wait=False)

    async def astart(self) -> LocalStack:
        t0 = time.perf_counter()
        self._prepare()
        try:
            await self._start_all()
        except BaseException:
            self._stop_all(failed=True)  # blocking on purpose: a cancelled task must clean up too
            raise
        self.startup_s = time.perf_counter() - t0
        log.info("local stack up in %.2f s (workdir %s)", self.startup_s, self.workdir)
        return self

    def _prepare(self) -> None:
        if self.procs or self._spawner is not None:
            raise RuntimeError("this LocalStack is already started")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="workbench-stack-"))
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Forks happen on these threads, alive until stop (see the module docstring).
        self._spawner = ThreadPoolExecutor(len(ALL_COMPONENTS), thread_name_prefix="stack-spawner")
        atexit.register(self._stop_all)

    async def _start_all(self) -> None:
        """anvil and storage together; deploy; then personal and API server together.

        The personal server's port is chosen up front so the API server can start beside it.
        Each phase waits for all its starts to settle before raising, so nothing starts after
        a failure has begun the cleanup.
        """
        anvil_url = self.anvil_url = f"http://127.0.0.1:{self.ports.get('anvil') or free_port()}"
        storage = asyncio.ensure_future(self._component("storage", self._storage_config()))
        proxy = asyncio.ensure_future(self._proxy(anvil_url))
        contracts = await _settle(self._chain(anvil_url), storage, proxy, first=True)
        storage_url = storage.result()
        rpc_url = proxy.result() or anvil_url  # what every client talks to
        personal_port = self.ports.get("personal") or free_port()
        personal_url = f"http://127.0.0.1:{personal_port}"
        await _settle(
            self._component(
                "personal",
                self._personal_config(personal_port, rpc_url, storage_url, contracts),
                {"server_seed": secrets.token_hex(32)},
            ),
            self._component(
                "api",
                self._api_config(rpc_url, personal_url, storage_url, contracts),
                self._api_secrets(),
            ),
        )
        await self._mining(anvil_url)  # after deployment, which automine makes instant
        self.endpoints = Endpoints(
            rpc_url=rpc_url,
            api_url=self._urls["api"],
            personal_server_url=self._urls["personal"],
            storage_url=storage_url,
            chain_id=self.chain_id,
            contracts=contracts,
            grantee_id=GRANTEE_ID,
        )

    async def _chain(self, rpc_url: str) -> dict[str, str]:
        port = int(rpc_url.rsplit(":", 1)[1])
        log_path = self.logs_dir / "anvil.log"
        keep = math.ceil(KEEP_RECEIPTS_S / self._block_time_s) if self._block_time_s else None
        proc = await self._spawn(
            "anvil", lambda: anvil.start_anvil(port, log_path, DEV_ACCOUNTS, keep_blocks=keep)
        )
        await anvil.wait_ready(rpc_url, timeout_s=ANVIL_READY_S, proc=proc)
        app_key = anvil.dev_key(1)
        deploy = deploy_at_sdk_addresses if self.vana_addresses else deploy_all
        return await deploy(rpc_url, anvil.dev_key(0), anvil.dev_address(1), public_key_of(app_key))

    async def _mining(self, anvil_url: str) -> None:
        """The profile's blocks: automine (0), anvil's interval mining (whole seconds), or the
        miner process (below 1 s: anvil's own would keep 1,500 states in memory)."""
        block_time = self._block_time_s
        if block_time >= 1:
            await anvil.set_block_time(anvil_url, block_time)
        elif block_time > 0:
            await anvil.rpc(anvil_url, "evm_setAutomine", [False])  # before the start returns
            cmd = [sys.executable, "-m", "workbench.stack.miner", anvil_url, f"{block_time:g}"]
            log_path = self.logs_dir / f"{MINER}.log"
            await self._spawn(MINER, lambda: spawn(cmd, log_path=log_path))

    async def _proxy(self, anvil_url: str) -> str | None:
        """The fault-injecting RPC proxy's URL, or None without an rpc fault section."""
        if self.faults is None or self.faults.rpc is None:
            return None
        config = {
            "port": self.ports.get(PROXY, 0),
            "upstream": anvil_url,
            "faults": dict(self.faults.rpc),
            "armed": False,  # the fault schedule arms it when the run starts
        }
        return await self._component(PROXY, config)

    async def _component(
        self, name: str, config: dict[str, Any], secrets_: dict[str, Any] | None = None
    ) -> str:
        log_path = self.logs_dir / f"{name}.log"

        def start() -> subprocess.Popen:
            proc, url = start_component(
                f"workbench.stack.{MODULES[name]}", config, secrets_, log_path, COMPONENT_READY_S
            )
            self._urls[name] = url
            # A restart must come back where clients look for it, with the same secrets.
            self._launches[name] = ({**config, "port": int(url.rsplit(":", 1)[1])}, secrets_)
            return proc

        await self._spawn(name, start)
        return self._urls[name]

    async def _spawn(self, name: str, start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        """Runs `start` on a spawner thread; the process is registered there, so a start that
        finishes after its waiter was cancelled is still stopped by `stop()`."""

        def run() -> subprocess.Popen:
            proc = start()
            with self._lock:
                self.procs[name] = proc
            return proc

        return await asyncio.get_running_loop().run_in_executor(self._spawner, run)

    # --- configs and secrets of the components

    def _storage_config(self) -> dict[str, Any]:
        s = self.profile["storage"]
        config = {
            "port": self.ports.get("storage", 0),
            "data_dir": str(self._workdir() / "storage"),
            "max_upload_bytes": int(s.get("max_upload_bytes", 10 * 1024 * 1024)),
            "upload_latency_ms": list(s.get("upload_latency_ms", [0, 0])),
        }
        if self.faults and self.faults.storage:
            config["faults"] = dict(self.faults.storage)
        return config

    def _personal_config(
        self, port: int, rpc_url: str, storage_url: str, contracts: dict[str, str]
    ) -> dict[str, Any]:
        inference = self.profile["inference"]
        config: dict[str, Any] = {
            "port": port,
            "rpc_url": rpc_url,
            "chain_id": self.chain_id,
            "storage_url": storage_url,
            "contracts": contracts,
            "data_dir": str(self._workdir() / "personal"),  # its operations outlive a restart
            "inference": {
                "backend": "simulated",
                "latency_s": list(inference.get("latency_s", [0, 0])),
                "workers": int(inference.get("workers", 4)),
                "timeout_s": float(inference.get("timeout_s", 120)),
            },
        }
        faults = self.faults.inference if self.faults else None
        if faults:
            config["faults"] = dict(faults)
            if faults.get("max_queue"):  # the server's own bound: beyond it submissions get 503
                config["inference"]["max_queue"] = int(faults["max_queue"])
        return config

    def _api_config(
        self, rpc_url: str, personal_url: str, storage_url: str, contracts: dict[str, str]
    ) -> dict[str, Any]:
        overrides = dict(self.profile.get("api") or {})  # optional: timeouts, relayer polling
        block_time = self._block_time_s
        # Stuck = passed over by three blocks (the relayer's default), and no sooner than three
        # block times (with automine a few seconds) after its last send.
        relayer = {"stuck_after_s": 3 * block_time if block_time > 0 else AUTOMINE_STUCK_AFTER_S}
        relayer.update(overrides.pop("relayer", None) or {})
        return {
            "port": self.ports.get("api", 0),
            "rpc_url": rpc_url,
            "chain_id": self.chain_id,
            "contracts": contracts,
            "personal_server_url": personal_url,
            "storage_url": storage_url,  # grant files the app stores (storeGrantFile)
            **overrides,
            "relayer": relayer,
        }

    def _api_secrets(self) -> dict[str, Any]:
        keys = [anvil.dev_key(i) for i in range(FIRST_RELAYER, FIRST_RELAYER + self.relayers)]
        return {"app_key": anvil.dev_key(1), "relayer_keys": keys}

    def _workdir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("the stack is not started")
        return self.workdir

    # --- faults: the actions of a fault schedule

    def fault_schedule(
        self,
        clock: Clock,
        emit: Emit | None = None,
        on_pid: Callable[[str, int], None] | None = None,
    ) -> FaultSchedule | None:
        """The timed faults of this stack's plan (None without a plan); `start()` it when the
        run starts, `stop()` it at the end. `emit` gets each fault event, `on_pid(component,
        pid)` each restarted process (for the sampler)."""
        if self.faults is None:
            return None
        return FaultSchedule(self.faults, self, clock, emit, on_pid)

    async def kill(self, name: str) -> int | None:
        """SIGKILL, as a crash: no cleanup, in-flight requests and in-memory state are lost."""
        with self._lock:
            proc = self.procs.pop(name, None)
        if proc is None:
            return None
        proc.kill()
        await asyncio.to_thread(proc.wait)  # reaped at once: SIGKILL cannot be ignored
        return proc.pid

    async def restart(self, name: str) -> int:
        """Starts `name` again on its port with its config and secrets; returns the new pid."""
        if self._spawner is None:
            raise RuntimeError("the stack is stopped")
        config, secrets_ = self._launches[name]
        await self._component(name, config, secrets_)
        return self.procs[name].pid

    async def stall_chain(self) -> None:
        """No more blocks: transactions wait in the pool until `resume_chain`."""
        if MINER in self.procs:
            self.procs[MINER].send_signal(signal.SIGSTOP)
            return
        await anvil.rpc(self._anvil_url(), "evm_setAutomine", [False])
        await anvil.rpc(self._anvil_url(), "evm_setIntervalMining", [0])

    async def resume_chain(self) -> None:
        """The profile's mining mode again (automine mines the whole waiting pool at once)."""
        if MINER in self.procs:
            self.procs[MINER].send_signal(signal.SIGCONT)
            return
        await anvil.set_block_time(self._anvil_url(), self._block_time_s)

    @property
    def _block_time_s(self) -> float:
        """The profile's block time; 0 = automine."""
        return float(self.profile["chain"].get("block_time_s") or 0)

    async def set_rpc_faults(self, armed: bool) -> dict[str, Any]:
        """Arms or disarms the RPC proxy; returns its gauges ({} without a proxy)."""
        url = self._urls.get(PROXY)
        if url is None:
            return {}
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(f"{url}/faults", json={"armed": armed}) as resp:
                resp.raise_for_status()
            async with session.get(f"{url}/metrics") as resp:
                return await resp.json()

    def _anvil_url(self) -> str:
        if self.anvil_url is None:
            raise RuntimeError("the stack is not started")
        return self.anvil_url

    # --- stopping

    def stop(self) -> None:
        """Stops every component (SIGTERM, SIGKILL after a grace period) and reaps it."""
        self._stop_all()

    async def astop(self) -> None:
        await asyncio.to_thread(self._stop_all)

    def _stop_all(self, failed: bool = False) -> None:
        """Idempotent. After a failed start the workdir stays, for its logs."""
        with self._lock:
            procs = [self.procs.pop(n) for n in reversed(ALL_COMPONENTS) if n in self.procs]
            spawner, self._spawner = self._spawner, None
        _terminate_all(procs)
        if spawner is not None:
            # Starts still in flight finish (or fail) first; what they registered is stopped too.
            spawner.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                late = [self.procs.pop(n) for n in reversed(ALL_COMPONENTS) if n in self.procs]
            _terminate_all(late)
        atexit.unregister(self._stop_all)
        if failed and self.workdir is not None:
            log.error("local stack failed to start; logs in %s", self.logs_dir)
        elif self._own_workdir and not self.keep and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self.endpoints = None
        self._urls = {}
        self._launches = {}

    # --- context managers

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalStack:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()


def _relayer_count(profile: dict[str, Any]) -> int:
    count = int((profile.get("relayer") or {}).get("accounts", 1))
    if not 1 <= count <= MAX_RELAYERS:
        raise WorkbenchError(
            "profile.relayer.accounts",
            f"{count} is outside 1..{MAX_RELAYERS} (anvil has {DEV_ACCOUNTS} dev accounts)",
            f"use at most {MAX_RELAYERS} relayers",
        )
    return count


def _terminate_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to all at once (they stop in parallel), then wait, SIGKILL stragglers, reap."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)  # a paused one (a stalled miner) acts on it now
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _settle(*aws: Any, first: bool = False) -> Any:
    """Awaits all of `aws` even if one fails, then raises the first failure.

    Returns the results (or only the first one's, with `first`)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0] if first else results
