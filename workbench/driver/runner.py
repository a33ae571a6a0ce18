"""Runs a load shape of concurrent flows and writes the results dir as it goes.

One asyncio task per flow, all on one event loop, sharing pooled connections. Everything is
appended to `outputs/<run-id>/` while it happens (events flushed per event, samples per tick,
request rows every second), so a run that dies still leaves analysable data; on Ctrl-C
in-flight flows are recorded as cancelled. While flows run, `driver.live` shows their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import signal
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import workbench
from workbench.analysis import console
from workbench.driver import shapes, wallets
from workbench.driver.config import RunConfig
from workbench.driver.flow import FlowContext, FlowSettings, Wallet, flow_context, run_flow
from workbench.driver.live import LiveStats, LiveView
from workbench.driver.preflight import checked_target
from workbench.driver.sampler import ControlTicker, LoopLagProbe, Sampler
from workbench.driver.versions import installed_versions
from workbench.errors import WorkbenchError
from workbench.events import Clock, Event, EventWriter, FlowEvent, RunMarkName, run_mark
from workbench.params import load_profile
from workbench.request_log import FILE as REQUESTS_FILE
from workbench.request_log import NO_LOG, RequestLog
from workbench.stack.faults import load_faults
from workbench.stack.local import LocalStack
from workbench.vana.chain import close_web3, make_web3
from workbench.vana.target import Target, load_target

PER_USER_LINES_MAX = 100  # beyond this many users, print only failures per user


@dataclass
class RunOutcome:
    results_dir: Path
    flows: int = 0
    ok: int = 0
    reason: str = "completed"
    wallets: list[str] = field(default_factory=list, repr=False)  # keys + mnemonic: secret guard


class Console:
    """The run's human output: setup lines as in the milestone and per-user lines (their texts
    live in `workbench.analysis.console`, which the report replays them from). The live state
    (`progress`) is `driver.live`'s: a panel in Jupyter, status lines elsewhere."""

    def __init__(self, out: TextIO, users: int, progress: bool):
        self.out, self.users, self.progress = out, users, progress

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def flow_done(self, event: FlowEvent) -> None:
        if event["ok"] and self.users > PER_USER_LINES_MAX:
            return
        self.say(console.user_line(event))


class Runner:
    """Drives one run: target, wallets, sampler, the shape's flows, the results dir."""

    def __init__(
        self,
        config: RunConfig,
        target: Target | None = None,
        *,
        progress: bool = True,
        out: TextIO | None = None,
    ):
        self.cfg, self.target = config, target
        self.profile = load_profile(str(config.profile_path))
        self.dir = config.results_dir()
        self.console = Console(out or sys.stdout, config.users, progress)
        self.clock = Clock()
        self.writer: EventWriter | None = None
        self.tasks: set[asyncio.Task] = set()
        self.free: asyncio.Queue[Wallet] = asyncio.Queue()
        self.next_flow_id = 0
        self.outcome = RunOutcome(self.dir)
        self.faults = load_faults(config.faults)  # a bad plan fails before anything starts
        if self.faults is not None and (target is not None or config.target != "local"):
            raise WorkbenchError(
                "faults", "faults need the local stack", "use target local, or faults none"
            )
        if target is None and config.target != "local":
            load_target(config.target)  # so does a bad target file (preflight comes later)
        self.local: Any = None  # the LocalStack this run started: fault actions act on it
        self.t_start = 0.0  # the run's start on the clock: shapes count from there
        self.sampler: Any = None
        self.live = LiveStats()  # fed by every event written: what the live view shows
        self.requests: RequestLog = NO_LOG
        self.cluster: Any = None  # the Dask coordinator of a run with workers

    async def execute(self) -> RunOutcome:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = EventWriter(self.dir / "events.jsonl")
        reason = "completed"
        try:
            async with AsyncExitStack() as stack:
                target = await self._target(stack)
                token = target.ipfs.token()  # a missing storage JWT fails before any funding
                ws = await self._wallets(target)
                tokens = [token] if token else []
                self.outcome.wallets += tokens  # the report's secret guard checks these too
                self.writer.add_secrets([*ws.private_keys(), ws.mnemonic, *tokens])
                await self._cluster(stack)  # Dask workers, when the run has them
                self._write_config(target, ws)
                # t=0 once setup (stack start, funding) is done, just before the first sample:
                # events, samples, throughput windows and the timeline all count from here.
                self.clock.restart()
                self.requests = RequestLog(self.dir / REQUESTS_FILE, self.clock.origin_ns)
                self.sampler = await stack.enter_async_context(self._sampler(target))
                if self.cluster is not None:  # the workers run the flows; they stream here
                    await self.cluster.drive(self, stack, target, ws)
                else:
                    await self._drive_here(stack, target, ws)
        except asyncio.CancelledError:
            reason = "interrupted"
            raise
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except BaseException as e:
            reason = f"error: {type(e).__name__}"
            raise
        finally:
            await self._cancel_inflight()
            self.requests.close()
            self._mark("end", reason=reason, flows=self.outcome.flows, ok=self.outcome.ok)
            self.writer.sync()
            self.writer.close()
            self.outcome.reason = reason
        return self.outcome

    def _flow_settings(self) -> FlowSettings:
        """The flows' timing: the profile's, the client preset's, then the run's overrides."""
        return FlowSettings.from_profile(
            self.profile,
            client=self.cfg.client,
            relay=self.cfg.relay,
            flow_timeout_s=self.cfg.flow_timeout_s,
            prompt=self.cfg.inference_prompt,
        )

    async def _drive_here(
        self, stack: AsyncExitStack, target: Target, ws: wallets.WalletSet
    ) -> None:
        """Runs every flow in this process, on this event loop."""
        settings = self._flow_settings()
        ctx = await stack.enter_async_context(
            flow_context(
                target.endpoints,
                self._emit,
                settings,
                run_id=str(self.cfg.run_id),
                clock=self.clock,
                max_connections=self.cfg.max_connections,
                ipfs=target.ipfs,
                request_log=self.requests,
                rpc_rate_limit=self.cfg.rpc_rate_limit,
            )
        )
        self.t_start = self.clock.now()  # shapes count from the run's start
        self._mark(
            "start",
            users=self.cfg.users,
            shape=self.cfg.shape,
            relay=self.cfg.relay,
            client=self.cfg.client,
        )
        await self._start_faults(stack)
        await stack.enter_async_context(self._live_view())
        try:
            await self._drive(ctx, ws)
        finally:  # on Ctrl-C or an error, flows end as cancelled while their clients
            await self._cancel_inflight()  # and the stack still run, not as failures

    async def _cluster(self, stack: AsyncExitStack) -> None:
        """Starts (or joins) the run's Dask cluster; in-process runs (workers 0) have none."""
        if not self.cfg.workers and not self.cfg.scheduler:
            return
        # Lazy: distributed costs ~1 s and tens of MB to import, which in-process runs (the
        # default) and the driver's judged RSS should not pay.
        from workbench.driver.cluster import Coordinator

        self.cluster = await stack.enter_async_context(Coordinator(self.cfg, self.console.say))

    async def _target(self, stack: AsyncExitStack) -> Target:
        if self.target is not None:
            return self.target
        if self.cfg.target != "local":  # every endpoint checked before any wallet is funded
            return await checked_target(self.cfg.target, self.console.say)
        self.console.say(console.STARTING_STACK)
        local = await stack.enter_async_context(
            LocalStack(self.profile, workdir=self.dir / "stack", faults=self.faults)
        )
        self.local = local
        self.console.say(console.api_ready(local.target.endpoints.api_url, local=True))
        return local.target

    async def _wallets(self, target: Target) -> wallets.WalletSet:
        n = self.cfg.users
        self.console.say(console.setting_up(n))
        ws = wallets.load_or_generate(n)
        self.outcome.wallets = [*ws.private_keys(), ws.mnemonic]
        self.console.say(console.wallets_loaded(n))
        w3 = _web3(target, self.cfg.rpc_rate_limit)
        # Users only sign, unless they send their own transactions (relay direct) and pay gas.
        direct = self.cfg.relay == "direct"
        need = wallets.DIRECT_TARGET_WEI if direct else wallets.DEFAULT_TARGET_WEI
        try:
            if target.kind == "local":
                funder = wallets.funder_key(target.funder_key)
                await wallets.fund(w3, funder, ws.addresses, target_wei=need)
            await wallets.require_funded(w3, ws.addresses, min_wei=need)
        finally:
            await close_web3(w3)
        self.console.say(console.WALLETS_FUNDED)
        for w in ws.wallets:
            self.free.put_nowait(w)
        return ws

    def _sampler(self, target: Target):
        self.console.say(console.STARTING_METRICS)
        ep = target.endpoints
        gauges = (
            {
                "api": f"{ep.api_url}/metrics",
                "personal": f"{ep.personal_server_url}/metrics",
                "storage": f"{ep.storage_url}/metrics",
            }
            if target.kind == "local"
            else {}
        )
        if "rpc_proxy" in (target.pids or {}):  # the fault proxy answers /metrics on its RPC port
            gauges["rpc_proxy"] = f"{ep.rpc_url}/metrics"
        return Sampler(
            self.dir / "samples.csv",
            processes=dict(target.pids or {}),
            gauges=gauges,
            rpc_url=ep.rpc_url if target.kind == "local" else None,
            clock=self.clock,
            lag_probe=LoopLagProbe(),
            control=ControlTicker(),  # the idle control of the loop lag: the saturation check
        )

    async def _start_faults(self, stack: AsyncExitStack) -> None:
        """Starts the fault plan's schedule now (its times count from the run's start).

        Its stop is pushed on the exit stack, so it runs before the stack, the sampler and the
        flows' clients close: no restart can race the stack's own shutdown."""
        if self.local is None or self.faults is None:
            return
        schedule = self.local.fault_schedule(self.clock, self._emit, self.sampler.add_process)
        stack.push_async_callback(schedule.stop)
        await schedule.start()

    def _since_start(self) -> float:
        return self.clock.now() - self.t_start

    async def _drive(self, ctx: FlowContext, ws: wallets.WalletSet) -> None:
        shape = self.shape = shapes.shape_from_config(self.cfg)
        self.console.say(console.MONITORING_ACTIVE)
        self.console.say(console.launching(self.cfg.users, self.cfg.shape))
        for launch in self._launches(shape):
            delay = launch.at_s - self._since_start()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(self._user(ctx, ws, launch))
        while self.tasks:
            done = await asyncio.gather(*list(self.tasks), return_exceptions=True)
            # run_flow records every failure as an outcome; anything else is a driver bug, and
            # the run must end as an error rather than "completed" with flows missing.
            bugs = [e for e in done if isinstance(e, Exception)]
            if bugs:
                raise bugs[0]

    def _live_view(self) -> Any:
        """The panel (Jupyter) or status lines (elsewhere) while flows run; none without
        `progress`. Entered before the flows and left after the cancelled ones are recorded,
        so its last refresh is the run's final state."""
        if not self.console.progress:
            return contextlib.nullcontext()
        shape, sampler = shapes.shape_from_config(self.cfg), self.sampler
        return LiveView(
            self.live,
            self._since_start,
            say=self.console.say,
            gauges=(lambda: sampler.latest) if hasattr(sampler, "latest") else dict,
            requests=self.requests,
            deadline_s=shape.start_deadline_s(),
            expected_flows=shape.expected_flows(),
            title=f"run {self.cfg.run_id} · {self.cfg.shape}, {self.cfg.users} users",
        )

    def _launches(self, shape: shapes.LoadShape) -> Any:
        """The launches this process runs: all of them (a Dask worker runs its shard)."""
        return shape.launches()

    def _new_flow_id(self, wallet: Wallet) -> int:
        """Unique in the run, in launch order (a Dask worker interleaves with the others)."""
        flow_id, self.next_flow_id = self.next_flow_id, self.next_flow_id + 1
        return flow_id

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _user(self, ctx: FlowContext, ws: wallets.WalletSet, launch: Any) -> None:
        """One user's flows: one, or repeated until the shape's `repeat_until_s`."""
        wallet = await self._take_wallet(ws, launch)
        if wallet is None:
            return
        try:
            while True:
                await self._one_flow(ctx, wallet, launch)
                if launch.repeat_until_s is None or self._since_start() >= launch.repeat_until_s:
                    return
        finally:
            if launch.user is None:
                self.free.put_nowait(wallet)

    async def _take_wallet(self, ws: wallets.WalletSet, launch: Any) -> Wallet | None:
        if launch.user is not None:
            return ws.wallets[launch.user % len(ws.wallets)]
        try:  # open model: an arrival takes a free wallet and never waits for one
            return self.free.get_nowait()
        except asyncio.QueueEmpty:
            self._mark("dropped", reason="no free wallet")
            return None

    async def _one_flow(self, ctx: FlowContext, wallet: Wallet, launch: Any) -> None:
        flow_id = self._new_flow_id(wallet)
        size = shapes.data_size_for(self.cfg.data_size, flow_id)
        extra = self._stage(launch)
        # Built off the loop: ~0.25 ms of Python for 10 KB, ~1.7 ms for 100 KB, which a burst
        # would otherwise run for every user in one loop iteration (500 users: a 0.1-0.9 s
        # stall before the first request goes out). In the light lane: behind the running
        # flows' 10 ms encryptions it waited so long at 1,000 users that launches due by 20 s
        # started at 35 s, and the run was not the shape it said.
        make = functools.partial(shapes.make_user_data, seed=self.cfg.seed + flow_id)
        data = await ctx.cpu(make, size, wallet.index, light=True)
        self.live.flow_started(flow_id)
        event = await run_flow(ctx, wallet, data, flow_id=flow_id, data_size=size, extra=extra)
        self.outcome.flows += 1
        self.outcome.ok += bool(event["ok"])
        self.console.flow_done(event)

    def _stage(self, launch: Any) -> dict[str, Any]:
        """For the steps shape: the step a flow starts in (users keep going into later steps)."""
        if launch.step is None:
            return {}
        stage = self.shape.step_at(self._since_start())
        if stage is None or not isinstance(self.shape, shapes.Steps):
            return {}
        return {"stage": stage, "stage_users": self.shape.levels[stage]}

    async def _cancel_inflight(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def _emit(self, event: Event) -> None:
        assert self.writer is not None  # set first thing in execute(), which emits everything
        self.writer.write(event)
        self.live.observe(event)

    def _mark(self, what: RunMarkName, **facts: Any) -> None:
        self._emit(run_mark(what, self.clock.now(), str(self.cfg.run_id), **facts))

    def _write_config(self, target: Target, ws: wallets.WalletSet) -> None:
        doc = {
            **self.cfg.to_dict(),
            "profile_settings": self.profile,
            "target_kind": target.kind,
            "endpoints": target.endpoints.to_json(),
            "storage": target.ipfs.to_json(),
            "wallet_file": str(ws.path),
            "wallet_addresses": ws.addresses,
            "inference_backend": "simulated" if target.kind == "local" else "remote",
            "faults_injected": self.faults.describe() if self.faults else None,
            "dask": self.cluster.describe() if self.cluster is not None else None,
            "versions": versions(),
            "cpu_count": os.cpu_count(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.dir / "config.json").write_text(
            json.dumps(doc, indent=2, default=str), encoding="utf-8"
        )


def _web3(target: Target, rate_limit: float | None = None):
    return make_web3(target.endpoints.rpc_url, rate_limit=rate_limit)


def versions() -> dict[str, str]:
    """The workbench, Python, and every installed package the project requires, recursively."""
    return {
        "workbench": workbench.__version__,
        "python": platform.python_version(),
        **installed_versions(),
    }


async def run(
    config: RunConfig,
    target: Target | None = None,
    *,
    progress: bool = True,
    report: bool = True,
    out: TextIO | None = None,
) -> RunOutcome:
    """Runs `config` and (by default) renders the report; returns where the results are."""
    outcome = await Runner(config, target, progress=progress, out=out).execute()
    if report:
        # Lazy: the report's pandas, matplotlib and nbconvert would add ~150 MB (89 -> 239 MB,
        # measured) to the driver's RSS, a judged figure, and ~7 s to its start.
        from workbench.analysis.report import render

        render(outcome.results_dir, secrets=outcome.wallets)
    return outcome


async def _until_signalled(work: Any) -> Any:
    """Awaits `work`; SIGTERM cancels it like Ctrl-C, so the run still records its end."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # a coroutine runs in a task
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
