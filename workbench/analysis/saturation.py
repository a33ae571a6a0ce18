"""Did the driver distort its own timings? The evidence, and `driver_saturated` in summary.json.

A load generator that runs out of CPU measures its own queueing and calls it latency (the issue's
1,000-user run: encrypt "took" 8.4 s waiting for a thread; loop lag p99 231 ms). Each process that
ran flows (the in-process `driver`, or each Dask worker `worker<i>`) is judged on three signals,
all read from the results dir:

- **loop lag**: p99 of the worst event-loop lateness per sample (`loop_lag_ms`) against the same
  figure of an idle control ticker in its own process over the same window (`control_lag_ms`).
  Lag the control saw too is the machine's (the stack, neighbours); lag beyond
  `loop_lag_ratio` x the control's, and above `loop_lag_min_ms`, is the driver's own.
- **loop CPU**: the event-loop thread's CPU (`loop_cpu_pct`, % of one core) averaged over its
  busiest `loop_cpu_window_s`: at `loop_cpu_pct` or more the loop has no slack (Locust warns at
  90 % CPU).
- **crypto queue**: the time crypto steps waited for a free crypto thread (`queued_s` of step
  events), as a share of the flows' total duration (`crypto_queue_share`), when the waits are
  long enough to matter (p95 over `crypto_queue_min_s`: a burst of a few users queues a few
  tens of ms for two threads, which a sub-second flow shows as a large share).

Any signal over its threshold in any such process makes the run `driver_saturated: true`: its
latencies are then upper bounds that include the driver's delays (a pass still holds; a failure
may be the driver's). With no evidence at all (nothing sampled) it is None.
Thresholds: the criteria file's `driver_saturation` section (params/criteria/ms03.yaml), else
`DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.events import worker_component


@dataclass(frozen=True)
class Thresholds:
    loop_lag_ratio: float = 2.0  # x the control's p99: the goal for the driver's loop
    loop_lag_min_ms: float = 50.0  # a few ms of lag distort no step worth timing
    loop_cpu_pct: float = 90.0  # of one core (Locust's warning level)
    loop_cpu_window_s: float = 5.0  # the busiest window the loop CPU is averaged over
    crypto_queue_share: float = 0.05  # of the flows' time spent waiting for a crypto thread
    crypto_queue_min_s: float = 0.1  # ... counted only when the p95 wait is longer than this

    @classmethod
    def from_mapping(cls, raw: Any, shown: str) -> Thresholds:
        """The `driver_saturation` section of a criteria file; errors name the file and key."""
        if raw is None:
            return cls()
        where = f"{shown}: driver_saturation"
        if not isinstance(raw, Mapping):
            raise WorkbenchError(where, "is not a mapping", "write `key: number` lines")
        known = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise WorkbenchError(f"{where}.{key}", "is not a known key", f"use {sorted(known)}")
            number_ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not number_ok or not np.isfinite(value) or value <= 0:
                raise WorkbenchError(
                    f"{where}.{key}", f"must be a positive number, not {value!r}", "fix it"
                )
        return cls(**{k: float(v) for k, v in raw.items()})


DEFAULTS = Thresholds()


def judge(
    flows: pd.DataFrame,
    steps: pd.DataFrame,
    samples: pd.DataFrame,
    limits: Thresholds = DEFAULTS,
) -> dict[str, Any]:
    """`{saturated, reasons, processes: {component: evidence}, thresholds}`; `saturated` is
    None when no process left any evidence."""
    processes = {
        comp: _evidence(comp, worker, flows, steps, samples, limits)
        for comp, worker in _flow_processes(flows)
    }
    judged = [p for p in processes.values() if p["judged"]]
    reasons = [f"{comp}: {r}" for comp, p in processes.items() for r in p["reasons"]]
    return {
        "saturated": bool(reasons) if judged else None,
        "reasons": reasons,
        "processes": processes,
        "thresholds": asdict(limits),
    }


def _flow_processes(flows: pd.DataFrame) -> list[tuple[str, int | None]]:
    """The processes that ran flows: each worker seen in the flows, else the driver."""
    if "worker" in flows and flows["worker"].notna().any():
        workers = sorted(int(w) for w in flows["worker"].dropna().unique())
        return [(worker_component(w), w) for w in workers]
    return [("driver", None)]


def _evidence(
    comp: str,
    worker: int | None,
    flows: pd.DataFrame,
    steps: pd.DataFrame,
    samples: pd.DataFrame,
    limits: Thresholds,
) -> dict[str, Any]:
    mine = samples[samples["component"] == comp]
    lag, control = _p99(mine, "loop_lag_ms"), _p99(mine, "control_lag_ms")
    loop_cpu = _busiest(mine, "loop_cpu_pct", limits.loop_cpu_window_s)
    crypto_cpu = _mean(mine, "crypto_cpu_pct")
    queue = _queue(_of_worker(flows, worker), _of_worker(steps, worker))
    reasons = []
    if lag is not None:
        allowed = max(limits.loop_lag_min_ms, limits.loop_lag_ratio * (control or 0.0))
        if lag > allowed:
            versus = (
                f"{lag / control:.1f}x the idle control's {control:.0f} ms"
                if control
                else "no control ticker sampled"
            )
            reasons.append(
                f"event-loop lag p99 {lag:.0f} ms, {versus} (limit {allowed:.0f} ms: "
                f"{limits.loop_lag_ratio:g}x the control, at least {limits.loop_lag_min_ms:g} ms)"
            )
    if loop_cpu is not None and loop_cpu >= limits.loop_cpu_pct:
        reasons.append(
            f"event-loop thread at {loop_cpu:.0f}% of a core over its busiest "
            f"{limits.loop_cpu_window_s:g} s (limit {limits.loop_cpu_pct:g}%)"
        )
    share, p95 = queue["share"], queue["p95_s"] or 0.0
    if share is not None and share > limits.crypto_queue_share and p95 > limits.crypto_queue_min_s:
        reasons.append(
            f"flows spent {share:.1%} of their time queued for a crypto thread (p95 wait "
            f"{p95:.2f} s; limits {limits.crypto_queue_share:.0%} and "
            f"{limits.crypto_queue_min_s:g} s)"
        )
    return {
        "loop_lag_p99_ms": lag,
        "control_lag_p99_ms": control,
        "loop_cpu_peak_pct": loop_cpu,
        "crypto_cpu_avg_pct": crypto_cpu,
        "crypto_queue_share": share,
        "crypto_queue_s": queue["total_s"],
        "crypto_queue_p95_s": queue["p95_s"],
        "judged": any(v is not None for v in (lag, loop_cpu, share)),
        "saturated": bool(reasons),
        "reasons": reasons,
    }


def _of_worker(frame: pd.DataFrame, worker: int | None) -> pd.DataFrame:
    if worker is None or "worker" not in frame:
        return frame
    return frame[frame["worker"] == worker]


def _series(samples: pd.DataFrame, metric: str) -> pd.Series:
    return samples.loc[samples["metric"] == metric].groupby("t")["value"].max().sort_index()


def _p99(samples: pd.DataFrame, metric: str) -> float | None:
    values = _series(samples, metric).to_numpy(dtype=float)
    return float(np.percentile(values, 99)) if values.size else None


def _mean(samples: pd.DataFrame, metric: str) -> float | None:
    values = _series(samples, metric)
    return float(values.mean()) if len(values) else None


def _busiest(samples: pd.DataFrame, metric: str, window_s: float) -> float | None:
    """The highest mean of `metric` over any `window_s` (the whole run if shorter)."""
    series = _series(samples, metric)
    if series.empty:
        return None
    step = float(np.median(np.diff(series.index))) if len(series) > 1 else window_s
    n = max(1, min(len(series), round(window_s / step) if step > 0 else 1))
    return float(series.rolling(n).mean().max()) if n > 1 else float(series.max())


def _queue(flows: pd.DataFrame, steps: pd.DataFrame) -> dict[str, float | None]:
    """Time the flows' crypto steps waited for a thread: total, p95 per step, share of the flows'
    duration. None where the steps carry no `queued_s` (a run from before it was recorded)."""
    if "queued_s" not in steps or steps["queued_s"].isna().all() or flows.empty:
        return {"total_s": None, "p95_s": None, "share": None}
    waits = pd.to_numeric(steps["queued_s"], errors="coerce").dropna().to_numpy(dtype=float)
    total, busy = float(waits.sum()), float(flows["duration_s"].sum())
    return {
        "total_s": total,
        "p95_s": float(np.percentile(waits, 95)),
        "share": total / busy if busy > 0 else None,
    }


def criteria_row(judgment: Mapping[str, Any]) -> dict[str, Any]:
    """The criteria table's extra row for a saturated driver: a warning (`WARN`), which does
    not change the verdict; its note gives the evidence."""
    return {
        "id": "driver_saturated",
        "label": "Driver not saturated (its own delays are not in the timings)",
        "metric": "driver_saturated",
        "op": "==",
        "value": True,
        "target": 0,
        "acceptable": 0,
        "status": "WARN",
        "unit": "flag",
        "note": "; ".join(judgment.get("reasons") or []),
        "source": "the driver's self-check; thresholds: driver_saturation in the criteria file",
    }
