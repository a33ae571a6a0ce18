"""The event schema of a run, one constructor per event kind, a crash-safe writer and a tolerant
reader.

`events.jsonl` is the contract between running and reporting: one JSON object per line, each
built by its constructor, so the TypedDicts below are the schema and its documentation.

- `kind: "step"`   `StepEvent`, `step_event`: one per attempted flow step (`workbench.driver.flow`);
- `kind: "flow"`   `FlowEvent`, `flow_event`: exactly one outcome per started flow (ok, failed or
  cancelled; `workbench.driver.flow`);
- `kind: "run"`    `RunMark`, `run_mark`: the run's start and end, dropped arrivals
  (`workbench.driver.runner`); on Dask, each worker's start and a lost worker
  (`workbench.driver.cluster`);
- `kind: "fault"`  `FaultEvent`, `fault_event`: each action of a fault plan
  (`workbench.stack.faults`).

Step names and error classes are those of `workbench.steps`. Times: `t` is seconds since the
run's start on a monotonic clock (perf_counter_ns), `wall` a Unix timestamp for labels only;
durations are `duration_s`; both are rounded to the microsecond. Readers must tolerate keys
they do not know: writers may add facts (the NotRequired keys are those written today).

Runs on Dask workers (`workers` > 0): every step and flow event carries `worker`, the index of
the worker process that ran it (its samples use the component `worker_component(index)`);
the coordinator writes them all to the one `events.jsonl` as they arrive.
"""

# No `from __future__ import annotations`: TypedDict must see NotRequired at runtime (3.11), so
# that `__required_keys__` states the schema.
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, Self, TypedDict, cast

from workbench.secrets import Redactor, env_secrets

FlowStatus = Literal["ok", "failed", "cancelled"]
RunMarkName = Literal["start", "end", "dropped", "worker", "worker_lost"]
FaultActionName = Literal["kill", "restart", "stall", "resume", "rpc_on", "rpc_off"]


class FlowKey(TypedDict):
    """Whose flow an event is about; the first keys of step and flow events."""

    run_id: str
    flow_id: int  # unique in the run, in launch order
    user: int  # the wallet's index
    address: str  # the wallet's address
    worker: NotRequired[int]  # the Dask worker that ran the flow (runs with workers > 0)


def worker_component(index: int) -> str:
    """A Dask worker's component name in `samples.csv` (`worker0`, `worker1`, ...)."""
    return f"worker{index}"


class StoredObject(TypedDict):
    """An object the flow stored in storage (what `cleanup` removes)."""

    cid: str
    bytes: int


class StepEvent(FlowKey):
    kind: Literal["step"]
    step: str  # one of workbench.steps.STEPS
    t: float  # when the step started
    duration_s: float
    ok: bool
    error: str | None
    error_class: str | None  # one of workbench.steps.ERROR_CLASSES; None when ok
    attempts: int  # 1 + retries and reconnects inside the step
    wall: float
    # The flow's ids known so far, and what the step stored:
    tx_hash: NotRequired[str]
    permission_id: NotRequired[int]
    operation_id: NotRequired[str]
    stored: NotRequired[list[StoredObject]]
    # Crypto steps: seconds the step waited for a free crypto thread (the driver's own queueing,
    # inside `duration_s`; see `workbench.analysis.saturation`).
    queued_s: NotRequired[float]


class FlowEvent(FlowKey):
    kind: Literal["flow"]
    t: float  # when the flow started
    duration_s: float
    ok: bool  # status == "ok"
    status: FlowStatus  # cancelled: cut short by the run's end or Ctrl-C, neither ok nor failed
    error: str | None
    error_class: str | None  # one of workbench.steps.ERROR_CLASSES; None when ok
    failed_step: str | None  # the step running when it failed or was cancelled
    data_size: str  # small | medium | large
    bytes: int  # of the user's data before encryption
    tx_hash: str | None  # the relayed transaction's hash (the one mined, if replaced)
    permission_id: int | None
    operation_id: str | None  # the personal server's inference operation
    result: Any  # the inference result of an ok flow, else None
    steps: dict[str, float]  # seconds of each step that succeeded
    wall: float
    stored: NotRequired[list[StoredObject]]
    relayed_tx_hash: NotRequired[str]  # the hash the relayer answered, when a replacement mined
    stage: NotRequired[int]  # steps shape: the step (level index) the flow started in
    stage_users: NotRequired[int]  # and that step's user count


class RunMark(TypedDict):
    kind: Literal["run"]
    event: RunMarkName
    t: float
    wall: float
    run_id: str
    users: NotRequired[int]  # start
    shape: NotRequired[str]  # start
    relay: NotRequired[str]  # start: app | direct
    client: NotRequired[str]  # start: the client timing preset
    workers: NotRequired[int]  # start, on Dask: how many workers run the flows
    reason: NotRequired[str]  # end: completed | interrupted | error: <type>; dropped: why
    flows: NotRequired[int]  # end: flows that finished
    ok: NotRequired[int]  # end: of which ok
    worker: NotRequired[int]  # worker, worker_lost: its index
    address: NotRequired[str]  # worker, worker_lost: its Dask address
    pid: NotRequired[int]  # worker: its process id
    clock_offset_s: NotRequired[float]  # worker: its wall clock minus the coordinator's
    clock_error_s: NotRequired[float]  # worker: half the round trip that measured the offset
    lost_flows: NotRequired[int]  # worker_lost: its in-flight flows, recorded as failed
    moved_arrivals: NotRequired[int]  # worker_lost: its arrivals not yet started, run elsewhere
    moved_to: NotRequired[list[int]]  # worker_lost: the workers they moved to


class FaultEvent(TypedDict):
    """Written when the action is done: sort by `t`."""

    kind: Literal["fault"]
    t: float  # when the action began
    wall: float
    action: FaultActionName
    component: str  # api | personal | storage | anvil | rpc_proxy
    duration_s: float  # how long the action took
    pid: NotRequired[int]  # kill, restart
    rates: NotRequired[dict[str, Any]]  # rpc_on: the injected rates
    counts: NotRequired[dict[str, Any]]  # rpc_off: the proxy's gauges
    error: NotRequired[str]  # the action failed


Event = StepEvent | FlowEvent | RunMark | FaultEvent
Emit = Callable[[Event], None]


def step_event(
    flow: FlowKey,
    step: str,
    t: float,
    duration_s: float,
    *,
    error: str | None,
    error_class: str | None,
    attempts: int,
    facts: Mapping[str, Any] | None = None,
) -> StepEvent:
    """One attempted step; `facts`: the flow's ids known so far, what the step stored."""
    event: StepEvent = {
        "kind": "step",
        **flow,
        "step": step,
        "t": round(t, 6),
        "duration_s": round(duration_s, 6),
        "ok": error is None,
        "error": error,
        "error_class": error_class,
        "attempts": attempts,
        "wall": time.time(),
    }
    return cast(StepEvent, {**event, **(facts or {})})


def flow_event(
    flow: FlowKey,
    t: float,
    duration_s: float,
    *,
    status: FlowStatus,
    error: str | None,
    error_class: str | None,
    failed_step: str | None,
    data_size: str,
    nbytes: int,
    ids: Mapping[str, Any],
    result: Any,
    steps: Mapping[str, float],
    facts: Mapping[str, Any] | None = None,
) -> FlowEvent:
    """A flow's outcome; `ids`: tx_hash, permission_id, operation_id as far as known."""
    event: FlowEvent = {
        "kind": "flow",
        **flow,
        "t": round(t, 6),
        "duration_s": round(duration_s, 6),
        "ok": status == "ok",
        "status": status,
        "error": error,
        "error_class": error_class,
        "failed_step": failed_step,
        "data_size": data_size,
        "bytes": nbytes,
        "tx_hash": ids.get("tx_hash"),
        "permission_id": ids.get("permission_id"),
        "operation_id": ids.get("operation_id"),
        "result": result,
        "steps": {k: round(v, 6) for k, v in steps.items()},
        "wall": time.time(),
    }
    return cast(FlowEvent, {**event, **(facts or {})})


def run_mark(event: RunMarkName, t: float, run_id: str, **facts: Any) -> RunMark:
    mark: RunMark = {
        "kind": "run",
        "event": event,
        "t": round(t, 6),
        "wall": time.time(),
        "run_id": run_id,
    }
    return cast(RunMark, {**mark, **facts})


def fault_event(
    action: FaultActionName, component: str, t: float, duration_s: float, **facts: Any
) -> FaultEvent:
    event: FaultEvent = {
        "kind": "fault",
        "t": round(t, 6),
        "wall": time.time(),
        "action": action,
        "component": component,
        "duration_s": round(duration_s, 6),
    }
    return cast(FaultEvent, {**event, **facts})


@dataclass
class Clock:
    """Run-relative monotonic time plus wall-clock labels."""

    origin_ns: int = field(default_factory=time.perf_counter_ns)

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9

    def restart(self) -> None:
        """Moves t=0 to now: the runner calls it once setup is done, before anything is recorded."""
        self.origin_ns = time.perf_counter_ns()


class EventWriter:
    """Appends one JSON line per event and flushes it, so a killed run keeps what it wrote.

    A `kill -9` can tear at most the line being written; `read_events` skips such a line.
    Thread-safe: the sampler and the runner may write from different threads.
    Events get shared: every event is redacted first (the environment's secrets, those given
    here or by `add_secrets`, and 32-byte hex under a secret-sounding key; see
    `workbench.secrets`).
    """

    def __init__(self, path: str | Path, secrets: Iterable[str] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._redactor = Redactor([*env_secrets(), *secrets])
        self.count = 0

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Values no later event may contain (the runner adds its wallets' keys and mnemonic)."""
        with self._lock:
            self._redactor.add(secrets)

    def write(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str)
        if self._redactor.needed(line):  # rare: rebuild the event with its secrets replaced
            line = json.dumps(self._redactor.value(event), separators=(",", ":"), default=str)
        line += "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.count += 1

    def sync(self) -> None:
        """Forces written events to disk (for the end of a run; flush alone survives a crash)."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yields events in file order, skipping a torn or corrupt line instead of failing."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


def read_events(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_events(path))


def stored_objects(flow_events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Distinct objects (CID -> bytes) stored by these flow events. Content addressing makes
    identical uploads (every user's grant file) one object."""
    objects: dict[str, int] = {}
    for event in flow_events:
        stored = event.get("stored")
        for obj in stored if isinstance(stored, list) else ():
            if isinstance(obj, Mapping) and isinstance(obj.get("cid"), str):
                objects[obj["cid"]] = int(obj.get("bytes") or 0)
    return objects
