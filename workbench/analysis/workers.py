"""Per-worker figures of a run on Dask (`workers` > 0): flows, outcomes, clock offset, loop lag and
resources of each worker process, for summary.json's `worker_stats` and the report's table.

Every latency figure of the run still comes from all raw events together (see `stats`); these
rows only say how the load was shared and whether one worker was the odd one out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis.results import Results
from workbench.events import worker_component


def worker_stats(results: Results) -> dict[str, dict[str, Any]]:
    """`{worker<i>: {...}}` for every worker seen in the flows or the run marks; {} in-process."""
    flows, samples, marks = results.flows, results.samples, results.runs
    joined = _marks(marks, "worker")
    lost = _marks(marks, "worker_lost")
    seen = set(joined) | set(lost)
    if "worker" in flows:
        seen |= {int(w) for w in flows["worker"].dropna().unique()}
    out = {}
    for w in sorted(seen):
        comp = worker_component(w)
        mine = flows[flows["worker"] == w] if "worker" in flows else flows.iloc[0:0]
        proc = samples[samples["component"] == comp]
        offset, pid = joined.get(w, {}).get("clock_offset_s"), joined.get(w, {}).get("pid")
        out[comp] = {
            "worker": w,
            "address": joined.get(w, {}).get("address") or lost.get(w, {}).get("address"),
            "pid": None if pid is None else int(pid),
            "flows": len(mine),
            "ok": int(mine["ok"].sum()) if len(mine) else 0,
            "failed": int((mine["status"] == "failed").sum()) if len(mine) else 0,
            "lost": w in lost,
            "lost_flows": lost.get(w, {}).get("lost_flows", 0) if w in lost else 0,
            "clock_offset_ms": None if offset is None else offset * 1000,
            "loop_lag_p99_ms": _pct(proc, "loop_lag_ms", 99),
            "control_lag_p99_ms": _pct(proc, "control_lag_ms", 99),
            "avg_cpu_pct": _agg(proc, "cpu_pct", "mean"),
            "peak_rss_mb": _agg(proc, "rss_mb", "max"),
        }
    return out


def _marks(marks: pd.DataFrame, event: str) -> dict[int, dict[str, Any]]:
    if marks.empty or "event" not in marks or "worker" not in marks:
        return {}
    rows = marks[(marks["event"] == event) & marks["worker"].notna()]
    return {
        int(r["worker"]): {str(k): v for k, v in r.items() if not _missing(v)}
        for r in rows.to_dict("records")
    }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _values(proc: pd.DataFrame, metric: str) -> np.ndarray:
    return proc.loc[proc["metric"] == metric, "value"].to_numpy(dtype=float)


def _pct(proc: pd.DataFrame, metric: str, q: float) -> float | None:
    values = _values(proc, metric)
    return float(np.percentile(values, q)) if values.size else None


def _agg(proc: pd.DataFrame, metric: str, how: str) -> float | None:
    values = _values(proc, metric)
    if not values.size:
        return None
    return float(values.mean() if how == "mean" else values.max())
