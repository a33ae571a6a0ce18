"""`summary.json`: every figure of a run in one dict, judged against its criteria; written with
`criteria.csv` and `criteria.xml` (JUnit), and by `analyze` with the HdrHistograms and the
Locust-style `stats.csv` / `stats_history.csv`."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from workbench.analysis import criteria as crit
from workbench.analysis import saturation
from workbench.analysis.histograms import write_run_histograms
from workbench.analysis.junit import write_junit
from workbench.analysis.request_stats import request_summary, step_retries
from workbench.analysis.results import Results, _present, load_results
from workbench.analysis.stats import (
    api_errors,
    capacity_curve,
    concurrency,
    error_classes,
    flows_per_minute,
    gauge_peaks,
    knee,
    latency_stats,
    loop_lag,
    memory_trend,
    memory_trends,
    network,
    resources,
    saturated_first,
    step_breakdown,
    success_rates,
    workbench_cpu,
)
from workbench.analysis.stats_csv import write_stats_csv
from workbench.analysis.workers import worker_stats
from workbench.events import stored_objects

# ----------------------------------------------------------------------------- summary


def summarize(
    results: Results, criteria: crit.Criteria | str | Path | None = None
) -> dict[str, Any]:
    """The `summary.json` dict (JSON-safe: NaN -> None). `criteria` is a Criteria, a name/path,
    or None: the run's own (`config.json` `criteria`), else `params/criteria/ms03.yaml`."""
    flows, steps, samples = results.flows, results.steps, results.samples
    if not isinstance(criteria, crit.Criteria):
        criteria = crit.load_criteria(
            criteria or results.config.get("criteria") or crit.DEFAULT_CRITERIA
        )
    judged = saturation.judge(flows, steps, samples, criteria.saturation)
    drivers = list(judged["processes"])  # the processes that ran flows: driver, or the workers
    lat = latency_stats(flows.loc[flows["ok"], "duration_s"])
    rates = success_rates(flows, steps)
    res = resources(samples)
    trend = memory_trend(samples)
    api = api_errors(steps, samples)
    errs = error_classes(flows)
    inflight = concurrency(flows)
    cpus = int(results.config.get("cpu_count") or os.cpu_count() or 1)
    run_cpu = workbench_cpu(samples, cpus)
    s: dict[str, Any] = {
        **_run_facts(results),
        "flows_total": rates["flows"]["n"],
        "flows_ok": rates["flows"]["k"],
        "flows_failed": int((flows["status"] == "failed").sum()),
        "flows_cancelled": int((flows["status"] == "cancelled").sum()),
        "flows_started": len(flows),
        "dropped_arrivals": _count_marks(results.runs, "dropped"),
        "success_rate": rates["flows"]["rate"],
        "avg_s": lat["mean"],
        "p50_s": lat["p50"],
        "p95_s": lat["p95"],
        "p99_s": lat["p99"],
        "max_s": lat["max"],
        "latency": lat,
        "throughput_per_min": flows_per_minute(flows),
        "peak_in_flight": int(inflight["in_flight"].max()) if not inflight.empty else 0,
        "tx_total": rates["transactions"]["n"],
        "tx_ok": rates["transactions"]["k"],
        "tx_success_rate": rates["transactions"]["rate"],
        "uploads_total": rates["uploads"]["n"],
        "uploads_ok": rates["uploads"]["k"],
        "upload_success_rate": rates["uploads"]["rate"],
        "inference_total": rates["inference"]["n"],
        "inference_ok": rates["inference"]["k"],
        "inference_success_rate": rates["inference"]["rate"],
        "rates": rates,
        "api_errors": api["total"],
        "api": api,
        "peak_rss_mb": _peak_of(res, ["driver", *drivers], "peak_rss_mb"),
        "avg_cpu_pct": run_cpu["avg"],
        "peak_cpu_pct": run_cpu["peak"],
        "cpu_count": cpus,
        "system_avg_cpu_pct": _cell(res, "system", "avg_cpu_pct"),
        "system_peak_cpu_pct": _cell(res, "system", "peak_cpu_pct"),
        "memory_slope_mb_per_min": trend["slope_mb_per_min"] if trend else None,
        "memory_trend": trend,
        "memory_trends": memory_trends(samples),
        "resources": res.to_dict(orient="index"),
        "network": network(samples),
        "loop_lag": loop_lag(samples[samples["component"].isin(drivers)]),
        "driver_saturated": judged["saturated"],
        "driver_saturation": judged,
        "worker_stats": worker_stats(results),
        "gauges": gauge_peaks(samples),
        "step_stats": step_breakdown(steps).to_dict(orient="index"),
        "step_retries": step_retries(steps),
        "requests": request_summary(results.requests, results.config),
        "error_classes": errs["by_class"],
        "failed_steps": errs["by_step"],
        "faults_injected": _faults(results.config),
        "client_timeouts": _client_timeouts(flows),
        **_stored(flows),
    }
    curve = capacity_curve(results)
    if not curve.empty:
        s["capacity"] = curve.to_dict(orient="records")
        s["knee_users"] = knee(curve)
        s["saturated_first"] = saturated_first(results, curve)
    s = _json_safe(s)
    rows = crit.evaluate(criteria, s)
    if judged["saturated"]:  # a warning row: it does not change the verdict
        rows.append(saturation.criteria_row(judged))
    s["criteria_name"] = criteria.name
    s["criteria_title"] = criteria.title
    s["criteria_next"] = criteria.next
    s["criteria"] = rows
    s["verdict"] = crit.verdict(rows, complete=results.complete)
    s["outcome"] = s["verdict"] if results.complete else "INCOMPLETE"
    return _json_safe(s)


def _stored(flows: pd.DataFrame) -> dict[str, int]:
    """What the run left in storage (distinct objects): `python -m workbench cleanup` removes it."""
    records = flows.to_dict("records") if "stored" in flows else []
    objects = stored_objects(cast(list[dict[str, Any]], records))  # column labels are str
    return {"stored_objects": len(objects), "stored_bytes": sum(objects.values())}


def _client_timeouts(flows: pd.DataFrame) -> dict[str, int]:
    """Failed flows a client preset's own wait ended (`{"sdk: waitForOperation": 2}`)."""
    if "client_timeout" not in flows:
        return {}
    counts = flows.loc[flows["status"] == "failed", "client_timeout"].dropna().value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def _run_facts(results: Results) -> dict[str, Any]:
    cfg, start, end = results.config, results.run_start, results.run_end
    flows = results.flows

    def fact(key: str, default: Any = None) -> Any:
        return cfg.get(key, start.get(key, default))

    run_id = fact("run_id")
    if run_id is None and not flows.empty:
        run_id = flows["run_id"].dropna().iloc[0] if flows["run_id"].notna().any() else None
    wall = start.get("wall")
    return {
        "run_id": run_id or results.path.name,
        "complete": results.complete,
        "end_reason": end.get("reason"),
        "shape": fact("shape"),
        "profile": fact("profile"),
        # Results from before these existed ran what are now the defaults.
        "relay": fact("relay", "app"),
        "client": fact("client", "tight"),
        "users": fact("users", int(flows["user"].nunique()) if not flows.empty else 0),
        "workers": fact("workers", 0),
        "scheduler": fact("scheduler"),
        "started_at": datetime.fromtimestamp(wall, UTC).isoformat() if wall else fact("started_at"),
        "wall_s": _wall_s(results),
    }


def _wall_s(results: Results) -> float | None:
    """Run length: run end - run start; for a killed run, the last thing observed."""
    start_t = results.run_start.get("t", 0.0)
    if results.run_end.get("t") is not None:
        return results.run_end["t"] - start_t
    seen = [results.flows["t_end"].max(), results.steps["t_end"].max()]
    if not results.samples.empty:
        seen.append(results.samples["t"].max())
    seen = [v for v in seen if _present(v)]
    return max(seen) - start_t if seen else None


def _count_marks(runs: pd.DataFrame, event: str) -> int:
    # Open-model arrivals that found no free wallet are recorded as run marks, not flows.
    return int((runs["event"] == event).sum()) if "event" in runs else 0


def _faults(config: dict[str, Any]) -> Any:
    """What faults the run injected: `faults_injected` if the runner recorded it, else the
    faults file named by the config; None for none."""
    if config.get("faults_injected") is not None:
        return config["faults_injected"]
    faults = config.get("faults")
    return None if faults in (None, "", "none") else faults


def _peak_of(table: pd.DataFrame, rows: list[str], col: str) -> float | None:
    """The highest `col` among `rows` (the driver and its workers: each its own budget)."""
    values = [v for v in (_cell(table, row, col) for row in dict.fromkeys(rows)) if v is not None]
    return max(values, default=None)


def _cell(table: pd.DataFrame, row: str, col: str) -> float | None:
    if row not in table.index or col not in table.columns:
        return None
    value: Any = table.at[row, col]  # pandas types a cell as any scalar, float() takes fewer
    return None if pd.isna(value) else float(value)


def _json_safe(obj: Any) -> Any:
    """numpy scalars -> Python, NaN/inf -> None, tuples -> lists, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def write_summary(results_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Writes summary.json, criteria.csv and criteria.xml (JUnit) into the results dir; returns
    summary.json's path."""
    path = Path(results_dir)
    out = path / "summary.json"
    out.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    crit.to_csv(summary.get("criteria", []), path / "criteria.csv")
    write_junit(path, summary)
    return out


def analyze(results_dir: str | Path, criteria: crit.Criteria | str | Path | None = None) -> dict:
    """load_results + summarize + write_summary, the run's HdrHistograms (`histograms/`) and
    stats.csv / stats_history.csv, for the notebooks and the CLI."""
    results = load_results(results_dir)
    summary = summarize(results, criteria)
    write_summary(results_dir, summary)
    write_run_histograms(results_dir, results, summary.get("wall_s"))
    write_stats_csv(results_dir, results, summary.get("wall_s"))
    return summary
