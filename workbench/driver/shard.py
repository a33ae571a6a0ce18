"""A Dask worker's share of a run: the same flows as in-process, on the worker's own event loop.

`run_shard(spec)` is the task the coordinator (`workbench.driver.cluster`) submits to each worker.
It runs the real `Runner` code (shape, users, flows) on a fresh event loop in the task's thread,
limited to this worker's share of the launches, and streams what it records to the coordinator
as Dask structured events (`Worker.log_event` on the run's topic), in batches every
`FLUSH_S`: step and flow events (each with `worker`), a `_started` notice per flow (so the
coordinator can account for a flow this worker dies in), and the samples of this process (named
`worker<i>`: CPU, RSS, loop lag against its own idle control ticker, loop and crypto thread CPU).

The shard reports `ready` once its wallets, clients and sampler are up, then waits for the
coordinator's `start_shard` (the agreed start, in this worker's wall clock) so every worker
starts together; `cancel_shard` ends it early (its in-flight flows end as cancelled).
Keys: read here from the 0600 wallet file (`wallets.load_share`); the spec holds no secret.

A lost worker's work goes on here: `take_over` hands this shard a `Move` (the lost shard's
arrivals not yet started, by their index in the schedule). So the shard does not end with its
own launches: it reports `idle` (with how many moves it took) and runs until `release_shard`.
Each flow's `_started` notice names its arrival and is sent at once (next loop turn), before the
flow's first request, so the coordinator knows what started when a worker dies.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distributed import get_worker

from workbench.driver import shapes, wallets
from workbench.driver.config import RunConfig
from workbench.driver.flow import FlowContext, Wallet, flow_context
from workbench.driver.runner import Runner
from workbench.driver.sampler import ControlTicker, LoopLagProbe, Sampler
from workbench.events import Event, worker_component
from workbench.request_log import RequestLog
from workbench.secrets import WALLET_FILE_ENV
from workbench.vana.target import Endpoints, Target

FLUSH_S = 0.1  # how often a worker sends what it recorded (at most this much is lost with it)
GO_TIMEOUT_S = 600.0  # a shard never told to start gives up


@dataclass(frozen=True)
class ShardSpec:
    """What a worker is told: no secret (Dask's dashboard and logs may show task arguments)."""

    run_id: str
    config: dict[str, Any]  # RunConfig.to_dict()
    endpoints: dict[str, Any]  # Endpoints.to_json()
    target_kind: str
    storage: dict[str, str]  # storage_kind, gateway_url, storage_token_env (a JWT stays in env)
    wallet_file: str  # the coordinator's; a worker's $WORKBENCH_WALLET_FILE wins
    worker: int
    workers: int
    topic: str  # the Dask event topic the coordinator listens on


@dataclass(frozen=True, slots=True)
class Arrival(shapes.Launch):
    """A launch with its index in the run's schedule: how the coordinator names what started."""

    index: int = -1


@dataclass(frozen=True)
class Move:
    """A lost worker's work for this one: no key (the wallets load here, as the shard's own)."""

    arrivals: tuple[Arrival, ...]  # not yet started there, at their planned times
    wallets: tuple[int, ...] = ()  # open model: the lost worker's idle wallets, for the pool


_ARRIVAL: ContextVar[int] = ContextVar("workbench_arrival", default=-1)  # the flow's arrival


def launch_owner(index: int, launch: shapes.Launch, workers: int) -> int:
    """The worker that runs a launch: by user (a user's wallet stays on one worker), else by
    launch order (open-model arrivals)."""
    return (launch.user if launch.user is not None else index) % workers


@dataclass
class _Handle:
    """This worker process's view of one running shard, for `start_shard` / `cancel_shard`."""

    loop: asyncio.AbstractEventLoop
    go: asyncio.Future = field(init=False)
    task: asyncio.Task | None = None
    moves: list[Move] = field(default_factory=list)  # received before the shard could take them
    take: Callable[[Move], None] | None = None  # set once the shard drives
    taken: int = 0  # moves received: the count an `idle` report confirms
    released: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a move or the release came

    def __post_init__(self) -> None:
        self.go = self.loop.create_future()

    def receive(self, move: Move) -> None:
        self.taken += 1
        if self.take is None:
            self.moves.append(move)
        else:
            self.take(move)
        self.wake.set()

    def serve(self, take: Callable[[Move], None]) -> None:
        self.take = take
        while self.moves:
            take(self.moves.pop(0))

    def release(self) -> None:
        self.released = True
        self.wake.set()


_SHARDS: dict[str, _Handle] = {}  # run_id -> the shard this worker process runs


def run_shard(spec: ShardSpec) -> dict[str, int]:
    """The Dask task: runs this worker's share on its own event loop; returns its counts."""
    worker = get_worker()

    def send(message: dict[str, Any]) -> None:  # thread-safe: hops onto the worker's loop
        worker.log_event(spec.topic, message)

    return asyncio.run(_main(spec, send))


async def _main(spec: ShardSpec, send: Callable[[dict[str, Any]], None]) -> dict[str, int]:
    handle = _Handle(asyncio.get_running_loop())
    handle.task = asyncio.current_task()
    _SHARDS[spec.run_id] = handle
    try:
        shard = ShardRunner(spec, handle, send)
        try:
            return await shard.execute_shard()
        except asyncio.CancelledError:
            return shard.counts()  # cancelled by the coordinator: its flows are recorded
    finally:
        _SHARDS.pop(spec.run_id, None)


def start_shard(run_id: str, go_at: dict[int, float], t_start: float) -> bool:
    """Run by the coordinator on every worker (`Client.run`): start at `go_at[worker]` (this
    worker's wall clock), which is `t_start` on the run's clock."""
    handle = _SHARDS.get(run_id)
    if handle is None:
        return False
    handle.loop.call_soon_threadsafe(_set_go, handle, (go_at, t_start))
    return True


def cancel_shard(run_id: str) -> bool:
    """Run by the coordinator on every worker: ends the shard (flows in flight are cancelled)."""
    handle = _SHARDS.get(run_id)
    if handle is None or handle.task is None:
        return False
    handle.loop.call_soon_threadsafe(handle.task.cancel)
    return True


def take_over(run_id: str, move: Move) -> bool:
    """Run by the coordinator on a surviving worker: runs a lost worker's unstarted arrivals.
    False when this worker runs no shard of the run (it is ending), so the move did not land."""
    handle = _SHARDS.get(run_id)
    if handle is None or handle.released:
        return False
    handle.loop.call_soon_threadsafe(handle.receive, move)
    return True


def release_shard(run_id: str) -> bool:
    """Run by the coordinator once every shard is idle: no more moves can come, so they end."""
    handle = _SHARDS.get(run_id)
    if handle is None:
        return False
    handle.loop.call_soon_threadsafe(handle.release)
    return True


def worker_clock() -> tuple[float, int]:
    """This worker's wall clock and pid (the coordinator measures the offset around it)."""
    return time.time(), os.getpid()


def _set_go(handle: _Handle, value: Any) -> None:
    if not handle.go.done():
        handle.go.set_result(value)


class _Discard(io.StringIO):
    """The shard's console: the coordinator prints the run's lines."""

    def write(self, text: str) -> int:
        return len(text)


class _Outbox:
    """Events and sample rows waiting to be sent to the coordinator in the next batch."""

    def __init__(self, worker: int, send: Callable[[dict[str, Any]], None]):
        self.worker, self.send = worker, send
        self.events: list[dict[str, Any]] = []
        self.samples: list[list[Any]] = []
        self.requests: list[Any] = []  # rows of requests.csv
        self.soon = False

    def flush_soon(self) -> None:
        """Flushes on the next loop turn: one message for every notice of this turn."""
        if not self.soon:
            self.soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.soon = False
        if self.events or self.samples or self.requests:
            batch = {"w": self.worker, "kind": "batch", "events": self.events}
            batch.update(samples=self.samples, requests=self.requests)
            self.events, self.samples, self.requests = [], [], []
            self.send(batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()


class ShardRunner(Runner):
    """The real Runner, limited to one worker's launches and wired to the coordinator."""

    def __init__(self, spec: ShardSpec, handle: _Handle, send: Callable[[dict[str, Any]], None]):
        config = replace(RunConfig(**spec.config), faults="none", workers=0, scheduler=None)
        endpoints = Endpoints(**spec.endpoints)
        target = Target(spec.target_kind, endpoints, {}, "", **spec.storage)  # type: ignore[arg-type]
        super().__init__(config, target, progress=False, out=_Discard())
        self.spec, self.handle, self.endpoints, self.ipfs = spec, handle, endpoints, target.ipfs
        self.outbox = _Outbox(spec.worker, send)
        # Its request rows go to the coordinator's requests.csv with the next batch.
        self.requests = RequestLog(None, sink=lambda rows: self.outbox.requests.extend(rows))
        self.seq = 0

    def counts(self) -> dict[str, int]:
        return {"flows": self.outcome.flows, "ok": self.outcome.ok}

    async def execute_shard(self) -> dict[str, int]:
        spec = self.spec
        ws = self._share()
        for wallet in ws.wallets:
            if wallet is not None:
                self.free.put_nowait(wallet)  # the open model's pool: this worker's wallets
        settings = self._flow_settings()
        async with AsyncExitStack() as stack:
            flusher = asyncio.create_task(self.outbox.run(), name="shard-outbox")
            stack.callback(self.outbox.flush)  # runs last: after the flows' final events
            stack.callback(self.requests.flush)
            stack.callback(flusher.cancel)
            ctx = await stack.enter_async_context(
                flow_context(
                    self.endpoints,
                    self._emit,
                    settings,
                    run_id=spec.run_id,
                    clock=self.clock,
                    max_connections=self.cfg.max_connections,
                    worker=spec.worker,
                    ipfs=self.ipfs,
                    request_log=self.requests,
                    # The run's limit is for all its clients together: each worker takes its share.
                    rpc_rate_limit=(
                        self.cfg.rpc_rate_limit / spec.workers if self.cfg.rpc_rate_limit else None
                    ),
                )
            )
            self.outbox.send({"w": spec.worker, "kind": "ready", "pid": os.getpid()})
            await self._wait_for_start()
            await stack.enter_async_context(self._own_sampler())
            try:
                await self._drive(ctx, ws)
            finally:
                await self._cancel_inflight()
        return self.counts()

    def _share(self) -> wallets.WalletSet:
        """This worker's wallets: users u with u % workers == worker (see `launch_owner`)."""
        spec, users = self.spec, self.cfg.users
        return wallets.load_share(
            self._wallet_file(), users, range(spec.worker, users, spec.workers)
        )

    def _wallet_file(self) -> Path:
        return Path(os.environ.get(WALLET_FILE_ENV) or self.spec.wallet_file)

    async def _drive(self, ctx: FlowContext, ws: wallets.WalletSet) -> None:
        """Its own launches and any moved to it; then idle until released (more may come)."""
        self.handle.serve(lambda move: self._spawn(self._take(ctx, ws, move)))
        await super()._drive(ctx, ws)  # moves received meanwhile are among its tasks
        while True:
            await self._settle()
            if self.handle.released:
                return
            self.handle.wake.clear()
            self.outbox.flush()  # its last outcomes reach the coordinator before the report
            self.outbox.send({"w": self.spec.worker, "kind": "idle", "moves": self.handle.taken})
            await self.handle.wake.wait()

    async def _settle(self) -> None:
        """Until every flow task ended; a task's exception (a driver bug) ends the shard."""
        while self.tasks:
            done = await asyncio.gather(*list(self.tasks), return_exceptions=True)
            bugs = [e for e in done if isinstance(e, Exception)]
            if bugs:
                raise bugs[0]

    async def _take(self, ctx: FlowContext, ws: wallets.WalletSet, move: Move) -> None:
        """Runs a lost worker's arrivals here, each at its planned time (late ones at once)."""
        users = {a.user for a in move.arrivals if a.user is not None} | set(move.wallets)
        missing = sorted(u for u in users if ws.wallets[u] is None)
        if missing:  # ~1.3 ms of key derivation each: off the flows' loop
            share = await asyncio.to_thread(
                wallets.load_share, self._wallet_file(), self.cfg.users, missing
            )
            for u in missing:
                ws.wallets[u] = share.wallets[u]
        for u in move.wallets:
            self.free.put_nowait(ws.wallets[u])
        for arrival in sorted(move.arrivals, key=lambda a: a.at_s):
            delay = arrival.at_s - self._since_start()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(self._user(ctx, ws, arrival))

    async def _user(self, ctx: FlowContext, ws: wallets.WalletSet, launch: Any) -> None:
        _ARRIVAL.set(getattr(launch, "index", -1))  # this task's flows name their arrival
        await super()._user(ctx, ws, launch)

    async def _wait_for_start(self) -> None:
        go_at, t_start = await asyncio.wait_for(self.handle.go, GO_TIMEOUT_S)
        delay = go_at[self.spec.worker] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # The coordinator's timeline: t_start now, so every worker's events line up.
        self.clock.origin_ns = time.perf_counter_ns() - int(t_start * 1e9)
        self.requests.origin_ns = self.clock.origin_ns
        self.t_start = t_start

    def _own_sampler(self) -> Sampler:
        return Sampler(
            None,
            name=worker_component(self.spec.worker),
            clock=self.clock,
            lag_probe=LoopLagProbe(),
            control=ControlTicker(),
            sink=lambda rows: self.outbox.samples.extend(list(r) for r in rows),
        )

    def _launches(self, shape: shapes.LoadShape) -> Any:
        n, w = self.spec.workers, self.spec.worker
        return (
            Arrival(la.at_s, la.user, la.repeat_until_s, la.step, la.level, index=i)
            for i, la in enumerate(shape.launches())
            if launch_owner(i, la, n) == w
        )

    def _new_flow_id(self, wallet: Wallet) -> int:
        flow_id = self.seq * self.spec.workers + self.spec.worker  # interleaved: unique in the run
        self.seq += 1
        notice = {"kind": "_started", "flow_id": flow_id, "user": wallet.index}
        notice.update(launch=_ARRIVAL.get(), address=wallet.address, t=self.clock.now())
        self.outbox.events.append(notice)
        self.outbox.flush_soon()  # out before the flow's first request (see the module doc)
        return flow_id

    def _emit(self, event: Event) -> None:
        record = dict(event)
        record.setdefault("worker", self.spec.worker)
        self.outbox.events.append(record)
