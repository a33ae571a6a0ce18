"""`stats.csv` and `stats_history.csv` in Locust's columns, so tools made for Locust's CSV output
(dashboards, comparisons, CI checks) read a workbench run as they read a Locust run.

Rows (Locust's Type and Name): the whole flow (`flow`, `flow`), each step (`step`, its name),
each request name of `requests.csv` (`RPC`, the method; `GET`/`POST`, the URL path), and
`Aggregated` (Type empty) over every request, as Locust aggregates its requests.

As in Locust: times in milliseconds, `Request Count` includes failures, percentiles 50 ... 100,
`N/A` where there is no value. Unlike Locust: response times (median, average, min, max and
percentiles) are of successful attempts only, the workbench's latency definition everywhere (a
burst of fast 429s must not make an endpoint look fast); cancelled flows and steps are left out
(the run's end stopped them, not the system). Three columns follow Locust's: `Retry Count`
(attempts repeating a failed one; for steps, attempts beyond the first), `429 Count` (HTTP 429
and JSON-RPC -32005 "limit exceeded") and `503 Count` (N/A for steps and flows, whose requests
are counted in their own rows).

`stats_history.csv`: every `HISTORY_INTERVAL_S` of the run, one row per name seen so far and the
Aggregated row: `Timestamp` (Unix seconds), `User Count` (flows in flight), `Requests/s`,
`Failures/s` and the percentiles over the last `WINDOW_S` (Locust's "current" window), then the
`Total ...` columns since the start.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis.results import Results
from workbench.steps import in_flow_order

PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
PERCENTILE_COLUMNS = tuple(f"{p:g}%" for p in PERCENTILES)
EXTRA_COLUMNS = ("Retry Count", "429 Count", "503 Count")
STATS_COLUMNS = (
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    *PERCENTILE_COLUMNS,
    *EXTRA_COLUMNS,
)
HISTORY_COLUMNS = (
    "Timestamp",
    "User Count",
    "Type",
    "Name",
    "Requests/s",
    "Failures/s",
    *PERCENTILE_COLUMNS,
    "Total Request Count",
    "Total Failure Count",
    "Total Median Response Time",
    "Total Average Response Time",
    "Total Min Response Time",
    "Total Max Response Time",
    "Total Average Content Size",
)
STATS_FILE, HISTORY_FILE = "stats.csv", "stats_history.csv"
HISTORY_INTERVAL_S = 5.0
WINDOW_S = 10.0
NA = "N/A"
AGGREGATED = ("", "Aggregated")


def timings(results: Results) -> pd.DataFrame:
    """Every timed thing of the run, one row each: `type, name, t_end, ms, ok, failed, retries,
    limited, unavailable, bytes` (flows, steps and requests; cancelled ones left out)."""
    flows = results.flows[results.flows["status"].isin(["ok", "failed"])]
    steps = results.steps
    if not steps.empty:
        steps = steps[steps["error_class"] != "cancelled"]
    requests = results.requests
    parts = [
        pd.DataFrame(
            {
                "type": "flow",
                "name": "flow",
                "t_end": flows["t_end"],
                "ms": flows["duration_s"] * 1000,
                "ok": flows["ok"],
                "retries": 0,
            }
        ),
        pd.DataFrame(
            {
                "type": "step",
                "name": steps.get("step"),
                "t_end": steps.get("t_end"),
                "ms": steps.get("duration_s", pd.Series(dtype=float)) * 1000,
                "ok": steps.get("ok"),
                "retries": _step_retries(steps),
            }
        ),
        pd.DataFrame(
            {
                "type": requests["type"],
                "name": requests["name"],
                "t_end": requests["t"] + requests["ms"] / 1000,
                "ms": requests["ms"],
                "ok": requests["ok"],
                "retries": requests["retry"],
                "limited": requests["rate_limited"],
                "unavailable": requests["status"] == 503,
                "bytes": requests["bytes"],
            }
        ),
    ]
    present = [p for p in parts if len(p)]
    df = pd.concat(present, ignore_index=True) if present else pd.DataFrame(columns=_TIMING)
    df = df.reindex(columns=_TIMING)
    df["ok"] = df["ok"].fillna(False).astype(bool)
    df["failed"] = ~df["ok"]
    return df.dropna(subset=["t_end", "ms"]).sort_values("t_end", kind="stable")


_TIMING = ["type", "name", "t_end", "ms", "ok", "retries", "limited", "unavailable", "bytes"]


def _step_retries(steps: pd.DataFrame) -> Any:
    if steps.empty or "attempts" not in steps:
        return 0
    return (pd.to_numeric(steps["attempts"], errors="coerce").fillna(1) - 1).clip(lower=0)


def _groups(df: pd.DataFrame) -> Iterator[tuple[tuple[str, str], pd.DataFrame]]:
    """(type, name) groups in report order: flow, steps in flow order, requests by type and
    name, then Aggregated (every request)."""
    by_key = {(str(k[0]), str(k[1])): g for k, g in df.groupby(["type", "name"], sort=True)}
    if ("flow", "flow") in by_key:
        yield ("flow", "flow"), by_key.pop(("flow", "flow"))
    steps = {name: g for (kind, name), g in by_key.items() if kind == "step"}
    for name in in_flow_order(steps):
        yield ("step", name), steps[name]
    requests = {key: g for key, g in by_key.items() if key[0] not in ("flow", "step")}
    yield from requests.items()
    yield AGGREGATED, df[~df["type"].isin(["flow", "step"])]


def _is_request(key: tuple[str, str]) -> bool:
    """An RPC method, an HTTP endpoint, or Aggregated (of those)."""
    return key[0] not in ("flow", "step")


def stats_table(results: Results, wall_s: float | None = None) -> pd.DataFrame:
    """stats.csv's rows; rates per second of `wall_s` (default: from the run's marks)."""
    df = timings(results)
    span = wall_s or _span(results, df)
    rows = []
    for key, g in _groups(df):
        ok_ms = g.loc[g["ok"], "ms"].to_numpy(dtype=float)
        n, failed = len(g), int(g["failed"].sum())
        request = _is_request(key)
        retries = int(g["retries"].fillna(0).sum())
        if key == ("flow", "flow"):  # a flow's retries are its steps'
            retries = int(df.loc[df["type"] == "step", "retries"].fillna(0).sum())
        rows.append(
            {
                "Type": key[0],
                "Name": key[1],
                "Request Count": n,
                "Failure Count": failed,
                **_latency(ok_ms),
                "Average Content Size": _round(g["bytes"].mean()) if request and n else 0,
                "Requests/s": _round(n / span, 3) if span else 0,
                "Failures/s": _round(failed / span, 3) if span else 0,
                **_percentiles(ok_ms),
                "Retry Count": retries,
                "429 Count": int(g["limited"].fillna(False).sum()) if request else NA,
                "503 Count": int(g["unavailable"].fillna(False).sum()) if request else NA,
            }
        )
    return pd.DataFrame(rows, columns=list(STATS_COLUMNS))


def _latency(ok_ms: np.ndarray) -> dict[str, Any]:
    if not ok_ms.size:
        return dict.fromkeys(STATS_COLUMNS[4:8], NA)  # median, average, min, max
    return {
        "Median Response Time": _round(np.median(ok_ms)),
        "Average Response Time": _round(ok_ms.mean()),
        "Min Response Time": _round(ok_ms.min()),
        "Max Response Time": _round(ok_ms.max()),
    }


def _percentiles(ok_ms: np.ndarray) -> dict[str, Any]:
    if not ok_ms.size:
        return dict.fromkeys(PERCENTILE_COLUMNS, NA)
    values = np.percentile(ok_ms, PERCENTILES)
    return {col: _round(v) for col, v in zip(PERCENTILE_COLUMNS, values, strict=True)}


def _round(value: Any, digits: int = 2) -> Any:
    return NA if value is None or not math.isfinite(value) else round(float(value), digits)


def _span(results: Results, df: pd.DataFrame) -> float:
    """The run's length: end mark minus start mark, else the last thing timed."""
    start = float(results.run_start.get("t", 0.0))
    end = results.run_end.get("t")
    if end is None:
        end = df["t_end"].max() if len(df) else start
    return max(0.0, float(end) - start)


# --------------------------------------------------------------------------- history


def history_table(
    results: Results,
    interval_s: float = HISTORY_INTERVAL_S,
    window_s: float = WINDOW_S,
    wall_s: float | None = None,
) -> pd.DataFrame:
    """stats_history.csv's rows: every `interval_s` of the run, each name seen so far."""
    df = timings(results)
    span = wall_s or _span(results, df)
    start = float(results.run_start.get("t", 0.0))
    ticks = start + interval_s * np.arange(1, max(1, math.ceil(span / interval_s)) + 1)
    rows = [
        row
        for group, (key, g) in enumerate(_groups(df))
        for row in _history(key, g, ticks, start, window_s, group)
    ]
    if not rows:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    table = pd.DataFrame(rows).sort_values(["_tick", "_group"], kind="stable")
    tick = table["_tick"].to_numpy()
    table["User Count"] = _in_flight(results.flows, ticks)[tick]
    wall = results.run_start.get("wall")
    epoch = float(wall) - start if wall is not None else 0.0  # run time -> Unix time
    table["Timestamp"] = (ticks[tick] + epoch).astype(int)
    return table.reindex(columns=list(HISTORY_COLUMNS)).reset_index(drop=True)


def _history(
    key: tuple[str, str],
    g: pd.DataFrame,
    ticks: np.ndarray,
    start: float,
    window_s: float,
    group: int,
) -> Iterator[dict[str, Any]]:
    """One name's rows: at each tick from its first record on (Aggregated: at every tick), the
    last `window_s` (cut at the run's `start`) and the totals so far."""
    t = g["t_end"].to_numpy(dtype=float)  # sorted (timings sorts by t_end)
    ok = g["ok"].to_numpy(dtype=bool)
    ok_t, ok_ms = t[ok], g["ms"].to_numpy(dtype=float)[ok]
    failed = np.concatenate([[0], np.cumsum(~ok)])
    sizes = np.concatenate([[0.0], np.cumsum(np.nan_to_num(g["bytes"].to_numpy(dtype=float)))])
    ms_sum = np.concatenate([[0.0], np.cumsum(ok_ms)])
    low, high = np.minimum.accumulate(ok_ms), np.maximum.accumulate(ok_ms)
    first = t[0] if t.size else math.inf
    for i, tick in enumerate(ticks):
        if tick < first and key != AGGREGATED:
            continue
        lo, hi = np.searchsorted(t, [tick - window_s, tick], side="right")
        ok_lo, ok_hi = np.searchsorted(ok_t, [tick - window_s, tick], side="right")
        seconds = min(window_s, tick - start)
        yield {
            "_tick": i,
            "_group": group,
            "Type": key[0],
            "Name": key[1],
            "Requests/s": round((hi - lo) / seconds, 3),
            "Failures/s": round((failed[hi] - failed[lo]) / seconds, 3),
            **_percentiles(ok_ms[ok_lo:ok_hi]),
            "Total Request Count": int(hi),
            "Total Failure Count": int(failed[hi]),
            "Total Median Response Time": _round(np.median(ok_ms[:ok_hi])) if ok_hi else NA,
            "Total Average Response Time": _round(ms_sum[ok_hi] / ok_hi) if ok_hi else NA,
            "Total Min Response Time": _round(low[ok_hi - 1]) if ok_hi else NA,
            "Total Max Response Time": _round(high[ok_hi - 1]) if ok_hi else NA,
            "Total Average Content Size": _round(sizes[hi] / hi) if hi else 0,
        }


def _in_flight(flows: pd.DataFrame, ticks: np.ndarray) -> np.ndarray:
    """Flows started by each tick and not yet ended (a flow with no end is still running)."""
    starts = np.sort(flows["t"].dropna().to_numpy(dtype=float))
    ends = np.sort(flows["t_end"].dropna().to_numpy(dtype=float))
    return np.searchsorted(starts, ticks, side="right") - np.searchsorted(ends, ticks, "right")


def write_stats_csv(results_dir: str | Path, results: Results, wall_s: float | None = None) -> Path:
    """Writes stats.csv and stats_history.csv into `results_dir`; returns stats.csv's path."""
    folder = Path(results_dir)
    stats_table(results, wall_s).to_csv(folder / STATS_FILE, index=False)
    history_table(results, wall_s=wall_s).to_csv(folder / HISTORY_FILE, index=False)
    return folder / STATS_FILE
