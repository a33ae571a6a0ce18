"""Fault plans as data: what a run injects into the local stack, and when.

A plan is a YAML file under `params/faults/` (run parameter `faults: <name>`) or any path:

    name: chaos
    description: every fault kind at moderate rates
    rpc:        {error_rate: 0.05, statuses: [429, 503], timeout_rate: 0.01, timeout_s: 5,
                 drop_rate: 0.01}
    storage:    {fail_rate: 0.05, slow_rate: 0.10, slow_ms: [1000, 3000]}
    inference:  {fail_rate: 0.05, timeout_rate: 0.02, max_queue: 40}
    restarts:   [{component: api, at_s: 8, down_s: 2}]
    chain_stall: [{at_s: 12, duration_s: 6}]

Every section is optional; keys left out of a section take the defaults below, so
`describe()` always states the full values injected. Times are seconds after the run's start.
Who acts on what: `rpc` the JSON-RPC proxy (`workbench.stack.rpc_proxy`); `storage` and
`inference` the storage and personal servers (their config key `faults`); `restarts` and
`chain_stall` the stack's fault schedule (`LocalStack.fault_schedule()`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench import params
from workbench.errors import WorkbenchError
from workbench.events import Emit, FaultActionName, fault_event

log = logging.getLogger("workbench.stack.faults")
RESTARTABLE = ("api", "personal", "storage")
# The default values of each section: also the set of keys it accepts.
SECTIONS: dict[str, dict[str, Any]] = {
    "rpc": {
        "error_rate": 0.0,
        "statuses": [429, 503],
        "timeout_rate": 0.0,
        "timeout_s": 5.0,
        "drop_rate": 0.0,
    },
    "storage": {"fail_rate": 0.0, "slow_rate": 0.0, "slow_ms": [1000, 3000]},
    "inference": {"fail_rate": 0.0, "timeout_rate": 0.0, "max_queue": 0},
}
TOP_KEYS = ("name", "description", *SECTIONS, "restarts", "chain_stall")
RESTART_KEYS = ("component", "at_s", "down_s")
STALL_KEYS = ("at_s", "duration_s")
# The proxy draws one number per request for these, so together they may not exceed 1.
SHARED_DRAW = {"rpc": ("error_rate", "timeout_rate", "drop_rate")}


@dataclass(frozen=True)
class Restart:
    component: str
    at_s: float
    down_s: float


@dataclass(frozen=True)
class ChainStall:
    at_s: float
    duration_s: float


@dataclass(frozen=True)
class FaultAction:
    """One timed action of the schedule: kill/restart a component, stall/resume the chain."""

    at_s: float
    action: FaultActionName  # kill | restart | stall | resume
    component: str  # api | personal | storage | anvil


@dataclass(frozen=True)
class FaultPlan:
    name: str
    description: str = ""
    source: str = ""
    rpc: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    restarts: tuple[Restart, ...] = ()
    chain_stall: tuple[ChainStall, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """Exactly what will be injected (for config.json `faults_injected` and the report)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.source:
            out["file"] = self.source
        for section in SECTIONS:
            if getattr(self, section) is not None:
                out[section] = dict(getattr(self, section))
        if self.restarts:
            out["restarts"] = [asdict(r) for r in self.restarts]
        if self.chain_stall:
            out["chain_stall"] = [asdict(s) for s in self.chain_stall]
        return out

    def windows(self) -> list[tuple[FaultAction, FaultAction]]:
        """(begin, end) pairs: kill then restart a component, stall then resume the chain."""
        restarts = [
            (
                FaultAction(r.at_s, "kill", r.component),
                FaultAction(r.at_s + r.down_s, "restart", r.component),
            )
            for r in self.restarts
        ]
        stalls = [
            (
                FaultAction(s.at_s, "stall", "anvil"),
                FaultAction(s.at_s + s.duration_s, "resume", "anvil"),
            )
            for s in self.chain_stall
        ]
        return restarts + stalls

    def timeline(self) -> list[FaultAction]:
        """Every action in time order (ties keep the file's order, restarts first)."""
        return sorted((a for pair in self.windows() for a in pair), key=lambda a: a.at_s)


def load_faults(name_or_path: str | Path | None) -> FaultPlan | None:
    """The plan named `name_or_path` (a name under params/faults/ or a YAML path); None for
    `none`. Raises WorkbenchError naming the file, the key and the fix."""
    if name_or_path is None or str(name_or_path).strip().lower() in ("none", ""):
        return None
    path, shown, data = params.load(name_or_path, "faults")
    return _Parser(shown).plan(data, default_name=path.stem)


class _Parser:
    """Validates one file's mapping; every error names `<file>: <key>`."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, problem: str, fix: str) -> WorkbenchError:
        return WorkbenchError(f"{self.file}: {key}", problem, fix)

    def plan(self, data: dict[str, Any], default_name: str) -> FaultPlan:
        self.keys(data, "(top level)", TOP_KEYS)
        name = self.text(data.get("name", default_name), "name")
        description = self.text(data.get("description", ""), "description", empty_ok=True)
        sections = {s: self.section(data[s], s) for s in SECTIONS if data.get(s) is not None}
        restarts = tuple(
            self.restart(r, f"restarts[{i}]") for i, r in enumerate(self.items(data, "restarts"))
        )
        stalls = tuple(
            self.stall(s, f"chain_stall[{i}]")
            for i, s in enumerate(self.items(data, "chain_stall"))
        )
        self.no_overlap([(r.at_s, r.at_s + r.down_s, r.component) for r in restarts], "restarts")
        self.no_overlap([(s.at_s, s.at_s + s.duration_s, "chain") for s in stalls], "chain_stall")
        return FaultPlan(
            name, description, self.file, restarts=restarts, chain_stall=stalls, **sections
        )

    def keys(self, data: Any, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise self.fail(
                where,
                f"must be a mapping, got {type(data).__name__}",
                f"use keys {', '.join(allowed)}",
            )
        for key in data:
            if key not in allowed:
                key_name = key if where == "(top level)" else f"{where}.{key}"
                raise self.fail(key_name, "unknown key", f"use only {', '.join(allowed)}")

    def text(self, value: Any, key: str, empty_ok: bool = False) -> str:
        if not isinstance(value, str) or not (value.strip() or empty_ok):
            raise self.fail(key, f"must be text, got {value!r}", f"set `{key}: some text`")
        return value

    def section(self, data: Any, name: str) -> dict[str, Any]:
        defaults = SECTIONS[name]
        self.keys(data, name, tuple(defaults))
        values = {**defaults, **data}
        checks: dict[str, Callable[[Any, str], Any]] = {
            "statuses": self.statuses,
            "timeout_s": lambda v, k: self.number(v, k, positive=True),
            "slow_ms": self.range_ms,
            "max_queue": self.count,
        }
        out = {k: checks.get(k, self.rate)(v, f"{name}.{k}") for k, v in values.items()}
        shared = sum(out[k] for k in SHARED_DRAW.get(name, ()))
        if shared > 1:
            keys = " + ".join(SHARED_DRAW[name])
            raise self.fail(name, f"{keys} = {shared:g} exceeds 1", "lower the rates")
        return out

    def items(self, data: dict[str, Any], key: str) -> list[Any]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(
                key, f"must be a list, got {type(value).__name__}", f"write `{key}: [{{...}}]`"
            )
        return value

    def restart(self, data: Any, where: str) -> Restart:
        self.keys(data, where, RESTART_KEYS)
        missing = [k for k in RESTART_KEYS if k not in data]
        if missing:
            raise self.fail(f"{where}.{missing[0]}", "missing", "give component, at_s and down_s")
        component = data["component"]
        if component not in RESTARTABLE:
            raise self.fail(
                f"{where}.component",
                f"{component!r} cannot be restarted",
                f"use one of {', '.join(RESTARTABLE)}",
            )
        return Restart(
            component,
            self.number(data["at_s"], f"{where}.at_s"),
            self.number(data["down_s"], f"{where}.down_s"),
        )

    def stall(self, data: Any, where: str) -> ChainStall:
        self.keys(data, where, STALL_KEYS)
        missing = [k for k in STALL_KEYS if k not in data]
        if missing:
            raise self.fail(f"{where}.{missing[0]}", "missing", "give at_s and duration_s")
        return ChainStall(
            self.number(data["at_s"], f"{where}.at_s"),
            self.number(data["duration_s"], f"{where}.duration_s", positive=True),
        )

    def no_overlap(self, spans: list[tuple[float, float, str]], key: str) -> None:
        """A component already down cannot be killed again; stalls cannot nest."""
        spans = sorted(spans)
        for (a0, a1, who), (b0, _, who_b) in zip(spans, spans[1:], strict=False):
            if who == who_b and b0 < a1:
                raise self.fail(
                    key,
                    f"two windows of {who} overlap ({a0:g}-{a1:g} s and {b0:g} s)",
                    "space them out",
                )

    def rate(self, value: Any, key: str) -> float:
        number = self.number(value, key)
        if number > 1:
            raise self.fail(
                key,
                f"must be a rate from 0 to 1, got {value!r}",
                f"set `{key.split('.')[-1]}: 0.05`",
            )
        return number

    def number(self, value: Any, key: str, positive: bool = False) -> float:
        """A finite number >= 0 (> 0 when `positive`)."""
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            bound = "greater than 0" if positive else "at least 0"
            raise self.fail(key, f"must be a number {bound}, got {value!r}", "fix the value")
        return value  # as written: 2 stays 2 in describe()

    def count(self, value: Any, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(
                key, f"must be a whole number >= 0 (0 = unbounded), got {value!r}", "fix the value"
            )
        return value

    def statuses(self, value: Any, key: str) -> list[int]:
        ok = (
            isinstance(value, list)
            and value
            and all(
                isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in value
            )
        )
        if not ok:
            raise self.fail(
                key, f"must be a list of HTTP error statuses, got {value!r}", "e.g. [429, 503]"
            )
        return list(value)

    def range_ms(self, value: Any, key: str) -> list[float]:
        pair = isinstance(value, list) and len(value) == 2
        lo, hi = (self.number(value[0], key), self.number(value[1], key)) if pair else (0, -1)
        if lo > hi:
            raise self.fail(
                key,
                f"must be [lo, hi] milliseconds with lo <= hi, got {value!r}",
                "e.g. [1000, 3000]",
            )
        return [lo, hi]


# --- running a plan against a stack ---------------------------------------------------------------


class FaultSchedule:
    """Runs a plan's timed actions against a started stack, from `start()` (the run's start)
    until `stop()`; arms the RPC proxy for that window.

    `stack` is a `LocalStack` (kill, restart, stall_chain, resume_chain, set_rpc_faults). Each
    action becomes a `workbench.events.FaultEvent` for the report's timeline; `t` is when the
    action began, on the run's clock.
    """

    def __init__(
        self,
        plan: FaultPlan,
        stack: Any,
        clock: Any,
        emit: Emit | None = None,
        on_pid: Callable[[str, int], None] | None = None,
    ):
        self.plan, self.stack, self.clock = plan, stack, clock
        self.emit = emit or (lambda event: None)
        self.on_pid = on_pid
        self._task: asyncio.Task | None = None
        self._t0 = 0.0

    async def start(self) -> None:
        self._t0 = self.clock.now()
        if self.plan.rpc is not None:
            await self.stack.set_rpc_faults(True)
            self._event("rpc_on", "rpc_proxy", self._t0, rates=dict(self.plan.rpc))
        self._task = asyncio.create_task(self._run(), name="fault-schedule")

    async def stop(self) -> None:
        """Cancels what is left of the timeline; disarms the proxy and records its counts."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self.plan.rpc is not None:
            t = self.clock.now()
            try:
                gauges = await self.stack.set_rpc_faults(False)
            except Exception as e:  # the counts are a bonus: the run must not depend on them
                log.warning("could not read the RPC proxy's counts: %s", e)
                gauges = {}
            self._event("rpc_off", "rpc_proxy", t, counts=gauges)

    async def __aenter__(self) -> FaultSchedule:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        # Each window runs on its own: a slow restart must not delay a stall due meanwhile.
        await asyncio.gather(*(self._window(*pair) for pair in self.plan.windows()))

    async def _window(self, begin: FaultAction, end: FaultAction) -> None:
        for action in (begin, end):
            await asyncio.sleep(max(0.0, self._t0 + action.at_s - self.clock.now()))
            t = self.clock.now()
            try:
                facts = await self._do(action)
            except Exception as e:  # one failed action must not end the schedule or the run
                log.warning("fault %s %s failed: %s", action.action, action.component, e)
                facts = {"error": f"{type(e).__name__}: {e}"}
            self._event(action.action, action.component, t, **facts)

    async def _do(self, action: FaultAction) -> dict[str, Any]:
        if action.action == "kill":
            return {"pid": await self.stack.kill(action.component)}
        if action.action == "restart":
            pid = await self.stack.restart(action.component)
            if self.on_pid is not None:
                self.on_pid(action.component, pid)
            return {"pid": pid}
        await (self.stack.stall_chain() if action.action == "stall" else self.stack.resume_chain())
        return {}

    def _event(self, action: FaultActionName, component: str, t: float, **facts: Any) -> None:
        self.emit(fault_event(action, component, t, self.clock.now() - t, **facts))
