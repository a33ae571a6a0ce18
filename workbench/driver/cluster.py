"""Scale-out on Dask: the run's users sharded over worker processes, coordinated from here.

`workers = N` starts a `distributed.LocalCluster` of N worker processes (one task thread each)
with its scheduler, workers, nannies and dashboard bound to 127.0.0.1 (Dask's dashboard
otherwise listens on every interface); `scheduler = tcp://host:port` joins an existing cluster
(dask-jobqueue, Kubernetes, any deployment: every worker must import `workbench` and reach the
target) and uses `workers` of its workers, or all of them.

The coordinator (this process, inside the `Runner`) keeps what must happen once: the stack, the
wallet funding, `events.jsonl` and `samples.csv`, the fault plan. Each worker runs
`workbench.driver.shard.run_shard` (users u with u % N == i), pinned to that worker so Dask never
moves it (a lost worker's flows are never re-run). The run:

1. shards report `ready`; the coordinator measures each worker's wall-clock offset (the middle
   of the shortest of a few round trips) and records it in a `worker` run mark;
2. it tells every worker the agreed start (now + `START_LEAD_S`, in that worker's clock) and the
   run's clock at that instant, so every event lands on one timeline;
3. workers stream batches (`shard._Outbox`): events are written as they arrive, samples appended
   to samples.csv; percentiles later come from all raw events together;
4. a worker that leaves (Dask's `remove-worker`) before its shard ended: each of its flows in
   flight gets one `failed` outcome of class `driver`, written here; anything it sends later is
   dropped, so no flow has two outcomes; the run goes on with the others, which take over the
   lost shard's arrivals not yet started (`_lose`);
5. a shard that ran all its work reports `idle`; once every live one has, having taken every
   move sent to it, the coordinator releases them all (`shard.release_shard`) and they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed import Client, LocalCluster

from workbench.analysis import console
from workbench.driver import shapes, shard
from workbench.driver.config import RunConfig
from workbench.driver.shapes import SIZE_BYTES, data_size_for
from workbench.errors import WorkbenchError
from workbench.events import FlowKey, flow_event, run_mark, worker_component
from workbench.steps import STEPS

if TYPE_CHECKING:
    from contextlib import AsyncExitStack

    from workbench.driver.runner import Runner
    from workbench.driver.wallets import WalletSet
    from workbench.vana.target import Target

START_LEAD_S = 1.0  # from the start order to the agreed start: time for it to reach every worker
READY_TIMEOUT_S = 180.0  # workers load wallets and open clients before this
WORKERS_TIMEOUT_S = 120.0  # an existing cluster must have its workers by then
CANCEL_GRACE_S = 15.0  # how long cancelled shards get to send their last events
CLOCK_PROBES = 5


@dataclass
class _InFlight:
    """A flow a worker started and has not reported an outcome for."""

    worker: int
    flow_id: int
    user: int
    address: str
    t: float
    steps: dict[str, float] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)
    last_step: str | None = None


@dataclass
class _Worker:
    index: int
    address: str
    future: Any = None
    pid: int | None = None
    offset_s: float = 0.0
    error_s: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # lost, or its shard ended
    lost: bool = False
    moves: int = 0  # moves sent to it (counted when sent)
    idle_moves: int = -1  # the moves its last `idle` report had taken; -1: not idle


class Coordinator:
    """The Dask side of a run: cluster, shards, the event stream and lost workers."""

    def __init__(self, config: RunConfig, say: Callable[[str], None]):
        self.cfg, self.say = config, say
        self.cluster: Any = None
        self.client: Any = None
        self.workers: list[_Worker] = []
        self.inflight: dict[int, _InFlight] = {}
        self.finished: set[int] = set()  # flow ids with an outcome written
        self.topic = f"workbench-{config.run_id}"
        self.runner: Runner | None = None
        self.shape = shapes.shape_from_config(config)
        self.started: set[int] = set()  # arrivals (schedule indices) with a `_started` received
        self.owner: dict[int, int] = {}  # arrivals moved: to which worker
        self.pools: dict[int, set[int]] = {}  # open model: wallets a worker took over
        self.handovers: set[asyncio.Task] = set()
        self.released = False

    # ---- cluster ---------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        if self.cfg.scheduler:
            self.client = await Client(
                self.cfg.scheduler, asynchronous=True, timeout=WORKERS_TIMEOUT_S
            )
            await self._wait_for_workers(self.cfg.workers or 1)
        else:
            self.cluster = await LocalCluster(
                n_workers=self.cfg.workers,
                threads_per_worker=1,  # the shard's task; its flows run on their own loop
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                asynchronous=True,
                silence_logs=logging.CRITICAL,  # a lost worker is reported here, once
            )
            self.client = await Client(self.cluster, asynchronous=True)
            await self.client.wait_for_workers(self.cfg.workers, timeout=WORKERS_TIMEOUT_S)
        addresses = sorted((await self.client.scheduler.identity())["workers"])
        count = self.cfg.workers or len(addresses)
        self.workers = [_Worker(i, a) for i, a in enumerate(addresses[:count])]
        where = self.cfg.scheduler or "local cluster on 127.0.0.1"
        self.say(f"🧮 Dask: {count} workers ({where}); dashboard: {self.dashboard}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await self.cluster.close()

    async def _wait_for_workers(self, n: int) -> None:
        try:
            await self.client.wait_for_workers(n, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            have = len((await self.client.scheduler.identity())["workers"])
            raise WorkbenchError(
                "workers",
                f"the cluster at {self.cfg.scheduler} has {have} workers, the run asks for {n}",
                "start more workers, or pass a smaller --workers (0 uses all)",
            ) from None

    @property
    def dashboard(self) -> str:
        return str(self.client.dashboard_link) if self.client is not None else ""

    def describe(self) -> dict[str, Any]:
        """For config.json: where the cluster was and who ran what (no secrets)."""
        return {
            "scheduler": self.client.scheduler.address if self.client is not None else None,
            "dashboard": self.dashboard,
            "local": self.cluster is not None,
            "workers": [w.address for w in self.workers],
        }

    # ---- the run ---------------------------------------------------------------------------

    async def drive(
        self, runner: Runner, stack: AsyncExitStack, target: Target, ws: WalletSet
    ) -> None:
        """Runs the shards to their end (or the run's cancellation) and records every flow."""
        self.runner = runner
        self.client.subscribe_topic(self.topic, self._on_batch)
        self.client.subscribe_topic("all", self._on_cluster_event)
        try:
            self._submit(runner, target, ws)
            await self._all_ready()
            await self._measure_clocks()
            t_start = await self._start(runner)
            runner._emit(
                run_mark(
                    "start",
                    t_start,
                    str(self.cfg.run_id),
                    users=self.cfg.users,
                    shape=self.cfg.shape,
                    relay=self.cfg.relay,
                    client=self.cfg.client,
                    workers=len(self.workers),
                )
            )
            await runner._start_faults(stack)
            runner.console.say(console.MONITORING_ACTIVE)
            runner.console.say(console.launching(self.cfg.users, self.cfg.shape))
            await stack.enter_async_context(runner._live_view())
            await self._until_done()
        finally:
            if self.handovers:  # so a loss's worker_lost mark is written
                await asyncio.wait(self.handovers, timeout=CANCEL_GRACE_S)
            await self._stop_shards()
            for topic in (self.topic, "all"):
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)

    def _submit(self, runner: Runner, target: Target, ws: WalletSet) -> None:
        for w in self.workers:
            spec = shard.ShardSpec(
                run_id=str(self.cfg.run_id),
                config=self.cfg.to_dict(),
                endpoints=target.endpoints.to_json(),
                target_kind=target.kind,
                storage={
                    "storage_kind": target.storage_kind,
                    "gateway_url": target.gateway_url,
                    "storage_token_env": target.storage_token_env,
                },
                wallet_file=str(ws.path.resolve()),
                worker=w.index,
                workers=len(self.workers),
                topic=self.topic,
            )
            w.future = self.client.submit(
                shard.run_shard,
                spec,
                key=f"workbench-shard-{self.cfg.run_id}-{w.index}",
                workers=[w.address],
                allow_other_workers=False,  # pinned: a lost shard is never re-run elsewhere
                retries=0,
                pure=False,
            )

    async def _all_ready(self) -> None:
        waits = [asyncio.create_task(w.ready.wait()) for w in self.workers]
        everyone: asyncio.Future[Any] = asyncio.gather(*waits)
        watched: list[asyncio.Future[Any]] = [everyone]
        watched += [asyncio.create_task(self._failed(w)) for w in self.workers]
        try:
            done, _ = await asyncio.wait(
                watched, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for pending in (*waits, *watched):
                pending.cancel()
        if not done:
            raise WorkbenchError(
                "workers",
                f"not every worker was ready within {READY_TIMEOUT_S:g} s",
                "check the workers' logs (the dashboard's Info page), or use fewer workers",
            )
        for task in done:
            task.result()  # a shard that failed to start raises its error here

    async def _failed(self, w: _Worker) -> None:
        """Raises the shard's error if it ends before it is ready; waits forever otherwise."""
        await w.future
        await asyncio.Event().wait()  # it ended cleanly without starting: ready() decides

    async def _measure_clocks(self) -> None:
        for w in self.workers:
            best: tuple[float, float, int] | None = None
            for _ in range(CLOCK_PROBES):
                t0 = time.time()
                answer = await self.client.run(shard.worker_clock, workers=[w.address])
                t1 = time.time()
                their, pid = answer[w.address]
                probe = ((t1 - t0) / 2, their - (t0 + t1) / 2, pid)
                best = probe if best is None or probe[0] < best[0] else best
            assert best is not None
            w.error_s, w.offset_s, w.pid = best
            self._mark_worker(w)

    def _mark_worker(self, w: _Worker) -> None:
        assert self.runner is not None
        self.runner._emit(
            run_mark(
                "worker",
                self.runner.clock.now(),
                str(self.cfg.run_id),
                worker=w.index,
                address=w.address,
                pid=w.pid,
                clock_offset_s=round(w.offset_s, 6),
                clock_error_s=round(w.error_s, 6),
                users=len(range(w.index, self.cfg.users, len(self.workers))),
            )
        )

    async def _start(self, runner: Runner) -> float:
        """Tells every worker the agreed start; returns it on the run's clock."""
        go_wall = time.time() + START_LEAD_S
        t_start = runner.clock.now() + START_LEAD_S
        go_at = {w.index: go_wall + w.offset_s for w in self.workers}
        await self.client.run(
            shard.start_shard,
            str(self.cfg.run_id),
            go_at,
            t_start,
            workers=[w.address for w in self.workers],
        )
        runner.t_start = t_start
        return t_start

    async def _until_done(self) -> None:
        waits = [asyncio.create_task(self._shard_done(w)) for w in self.workers]
        try:
            for task in asyncio.as_completed(waits):
                await task  # a shard's own error (a driver bug) ends the run as an error
        finally:
            for task in waits:
                task.cancel()

    async def _shard_done(self, w: _Worker) -> None:
        """Until the shard returns or its worker is lost (then its future never resolves)."""
        result = asyncio.ensure_future(w.future)
        lost = asyncio.create_task(w.gone.wait())
        try:
            await asyncio.wait([result, lost], return_when=asyncio.FIRST_COMPLETED)
            if result.done() and not w.lost:
                result.result()
        finally:
            lost.cancel()
            if not result.done():
                result.cancel()
        w.gone.set()

    async def _stop_shards(self) -> None:
        """Cancels shards still running (the run's end or Ctrl-C) and waits for their last
        events; flows still unaccounted for then are recorded as cancelled."""
        running = [w for w in self.workers if not w.gone.is_set()]
        if running:
            with contextlib.suppress(Exception):
                await self.client.run(
                    shard.cancel_shard,
                    str(self.cfg.run_id),
                    workers=[w.address for w in running],
                )
            waits = [asyncio.ensure_future(w.future) for w in running if w.future is not None]
            if waits:
                await asyncio.wait(waits, timeout=CANCEL_GRACE_S)
        for flow in list(self.inflight.values()):
            self._close_flow(flow, "cancelled", "cancelled", "cancelled")
        with contextlib.suppress(Exception):
            await self.client.cancel([w.future for w in self.workers if w.future is not None])

    # ---- what the workers send -------------------------------------------------------------

    def _on_batch(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        w = self._worker(message.get("w"))
        if w is None or w.lost:
            return  # from a worker already declared lost: its flows have their outcomes
        if message.get("kind") == "ready":
            w.pid = message.get("pid")
            w.ready.set()
            return
        if message.get("kind") == "idle":
            w.idle_moves = int(message.get("moves", -1))
            self._release_when_idle()
            return
        for record in message.get("events") or ():
            self._record(w, record)
        rows = message.get("samples") or []
        if rows and self.runner is not None and self.runner.sampler is not None:
            self.runner.sampler.write_rows([tuple(row) for row in rows])
        requests = message.get("requests") or []
        if requests and self.runner is not None:
            self.runner.requests.extend([tuple(row) for row in requests])

    def _record(self, w: _Worker, event: dict[str, Any]) -> None:
        assert self.runner is not None
        kind, flow_id = event.get("kind"), int(event.get("flow_id", -1))
        if kind == "_started":
            w.idle_moves = -1
            self.started.add(int(event.get("launch", -1)))
            self.inflight[flow_id] = _InFlight(
                w.index, flow_id, event["user"], event["address"], event["t"]
            )
            self.runner.live.flow_started(flow_id)
            return
        if kind == "step":
            self._step_seen(event)
        elif kind == "flow":
            if flow_id in self.finished:
                return  # never two outcomes for one flow
            self.finished.add(flow_id)
            self.inflight.pop(flow_id, None)
            self.runner.outcome.flows += 1
            self.runner.outcome.ok += bool(event.get("ok"))
            self.runner.console.flow_done(event)  # type: ignore[arg-type]
        self.runner._emit(event)  # type: ignore[arg-type]

    def _step_seen(self, event: dict[str, Any]) -> None:
        flow = self.inflight.get(event.get("flow_id"))  # type: ignore[arg-type]
        if flow is None:
            return
        flow.last_step = event.get("step")
        if event.get("ok"):
            flow.steps[event["step"]] = event.get("duration_s", 0.0)
        for key in ("tx_hash", "permission_id", "operation_id"):
            if event.get(key) is not None:
                flow.ids[key] = event[key]

    def _on_cluster_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if not isinstance(message, dict) or message.get("action") != "remove-worker":
            return
        for w in self.workers:
            if w.address == message.get("worker") and not w.gone.is_set():
                self._lose(w)

    def _worker(self, index: Any) -> _Worker | None:
        return self.workers[index] if isinstance(index, int) and index < len(self.workers) else None

    # ---- a lost worker ---------------------------------------------------------------------

    def _lose(self, w: _Worker) -> None:
        """Records the lost worker's flows in flight as failed (class `driver`), once, and hands
        its arrivals not yet started to the workers still running.

        What started is what the coordinator heard: an arrival started when its `_started`
        notice arrived here before the worker's `remove-worker` (the scheduler relays a
        worker's messages in order, so every notice that left the worker comes first). Such a
        flow is in flight (failed, `driver`) or has its outcome; it is never re-run. An arrival
        whose notice never left the dead process is moved: its attempt there left no event,
        and, its notice being sent before the flow's first request, it reached no server
        either. The moved arrival runs under a flow id of its new worker (ids are interleaved by
        worker), so no flow id appears twice. A repeating user (hold, steps) whose loop had
        started moves too while its deadline is ahead: its next flow starts at once."""
        assert self.runner is not None
        w.lost = True
        lost = [f for f in self.inflight.values() if f.worker == w.index]
        why = f"driver worker {w.index} ({w.address}) was lost mid-flow; not re-run"
        for flow in lost:
            self._close_flow(flow, "failed", "driver", why)
        now = self.runner.clock.now()
        if self.runner.sampler is not None:
            row = (now, time.time(), worker_component(w.index), w.pid or "", "alive", 0.0)
            self.runner.sampler.write_rows([row])
        w.gone.set()
        arrivals = [] if self.released else self._unstarted(w)
        survivors = [s for s in self.workers if not s.gone.is_set()]
        plan = self._split(w, arrivals, {f.user for f in lost}, survivors)
        for s, _ in plan:
            s.moves += 1  # before the move is sent: no release while it is under way
        task = asyncio.create_task(self._hand_over(w, now, len(lost), len(arrivals), plan))
        self.handovers.add(task)
        task.add_done_callback(self.handovers.discard)

    def _unstarted(self, w: _Worker) -> list[shard.Arrival]:
        """The lost worker's arrivals to move (see `_lose`), at their planned times."""
        assert self.runner is not None
        n, since = len(self.workers), self.runner.clock.now() - self.runner.t_start
        out = []
        for i, la in enumerate(self.shape.launches()):
            if self.owner.get(i, shard.launch_owner(i, la, n)) != w.index:
                continue
            if i in self.started and (la.repeat_until_s is None or since >= la.repeat_until_s):
                continue
            out.append(shard.Arrival(la.at_s, la.user, la.repeat_until_s, la.step, la.level, i))
        return out

    def _split(
        self, w: _Worker, arrivals: list[shard.Arrival], busy: set[int], to: list[_Worker]
    ) -> list[tuple[_Worker, shard.Move]]:
        """Arrivals round-robin over the survivors; for open-model arrivals, the lost worker's
        wallets with no flow in flight there too (a wallet's flows never overlap)."""
        if not arrivals or not to:
            return []
        wallets: list[int] = []
        if any(a.user is None for a in arrivals):
            pool = self.pools.pop(w.index, set()) | set(
                range(w.index, self.cfg.users, len(self.workers))
            )
            wallets = sorted(pool - busy)
        plan = []
        for k, s in enumerate(to):
            mine = tuple(arrivals[k :: len(to)])
            if not mine:
                continue
            given = tuple(wallets[k :: len(to)])
            self.pools.setdefault(s.index, set()).update(given)
            for a in mine:
                self.owner[a.index] = s.index
            plan.append((s, shard.Move(mine, given)))
        return plan

    async def _hand_over(
        self,
        w: _Worker,
        t: float,
        lost_flows: int,
        unstarted: int,
        plan: list[tuple[_Worker, shard.Move]],
    ) -> None:
        """Sends the moves, then records the loss: what failed and what moved where."""
        landed = await asyncio.gather(*(self._give(s, move) for s, move in plan))
        moved = {
            s.index: len(move.arrivals) for (s, move), ok in zip(plan, landed, strict=True) if ok
        }
        assert self.runner is not None
        self.runner._emit(
            run_mark(
                "worker_lost",
                t,
                str(self.cfg.run_id),
                worker=w.index,
                address=w.address,
                lost_flows=lost_flows,
                moved_arrivals=sum(moved.values()),
                moved_to=sorted(moved),
            )
        )
        self.say(_lost_line(w.index, lost_flows, unstarted, sorted(moved), sum(moved.values())))
        self._release_when_idle()

    async def _give(self, s: _Worker, move: shard.Move) -> bool:
        """One move to one survivor. A failed one stays owned by it: if that worker is being
        lost, its own loss moves the arrivals on."""
        try:
            answer = await self.client.run(
                shard.take_over, str(self.cfg.run_id), move, workers=[s.address]
            )
        except Exception:
            return False
        return bool(answer.get(s.address))

    def _release_when_idle(self) -> None:
        """Ends the shards once every live one is idle with every move sent to it taken."""
        live = [w for w in self.workers if not w.gone.is_set()]
        if self.released or not live or any(w.idle_moves != w.moves for w in live):
            return
        self.released = True
        release = self.client.run(
            shard.release_shard,
            str(self.cfg.run_id),
            workers=[w.address for w in live],
            on_error="ignore",  # a worker lost meanwhile ends by its loss
        )
        task = asyncio.ensure_future(release)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    def _close_flow(self, flow: _InFlight, status: Any, error_class: str, error: str) -> None:
        """Writes the one outcome of a flow its worker never finished."""
        assert self.runner is not None
        if flow.flow_id in self.finished:
            return
        self.finished.add(flow.flow_id)
        self.inflight.pop(flow.flow_id, None)
        key: FlowKey = {
            "run_id": str(self.cfg.run_id),
            "flow_id": flow.flow_id,
            "user": flow.user,
            "address": flow.address,
            "worker": flow.worker,
        }
        size = data_size_for(self.cfg.data_size, flow.flow_id)
        event = flow_event(
            key,
            flow.t,
            max(0.0, self.runner.clock.now() - flow.t),
            status=status,
            error=error,
            error_class=error_class,
            failed_step=_next_step(flow.last_step),
            data_size=size,
            nbytes=SIZE_BYTES.get(size, 0),
            ids=flow.ids,
            result=None,
            steps=flow.steps,
        )
        self.runner.outcome.flows += 1
        self.runner.console.flow_done(event)
        self.runner._emit(event)


def _lost_line(worker: int, lost_flows: int, unstarted: int, to: list[int], moved: int) -> str:
    line = f"⚠️  Dask worker {worker} lost: {lost_flows} flows in flight recorded as failed"
    if moved:
        line += f"; {moved} arrivals moved to workers {', '.join(map(str, to))}"
    if unstarted > moved:
        line += f"; {unstarted - moved} arrivals not started had no worker to go to: not run"
    return line


def _next_step(last: str | None) -> str:
    """The step a flow was in: the one after the last it reported (steps report at their end)."""
    if last is None or last not in STEPS:
        return STEPS[0]
    return STEPS[min(STEPS.index(last) + 1, len(STEPS) - 1)]
