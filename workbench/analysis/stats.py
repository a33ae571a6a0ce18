"""Analysis of a results dir: latency with CIs, throughput, success rates, resources, trends.

Pure functions of a results dir (`load_results`) or of its DataFrames; `summarize` builds the
`summary.json` dict. Definitions the report quotes:

- **Flow latency** (completion time) is `duration_s` of flows with status `ok`; a failed flow's
  duration is a time to failure, not a completion time. Step latency likewise uses ok steps.
- **Percentiles** are numpy's default (linear interpolation between closest ranks, Hyndman-Fan
  type 7), computed exactly from the raw samples: a run holds at most a few thousand flows, so
  there is no reason to approximate. HdrHistograms (`analysis.histograms`, written to each
  results dir's `histograms/`) are for merging latency across workers or runs.
- **Confidence intervals** of mean/p50/p95/p99: `scipy.stats.bootstrap`, percentile method
  (BCa's jackknife is unreliable for quantiles), fixed seed so a report re-renders identically.
  None for n < 2 or all-equal samples. A p99 CI from fewer than ~100 flows is mostly the max.
- **Success rate** = ok flows / (ok + failed flows). Cancelled flows (stopped by the run's end or
  by the user, not by the system under test) are counted apart and excluded from every rate.
  A flow that hits its own deadline is `failed` (class `timeout`), not cancelled.
  Proportion CIs: Wilson score interval (`scipy.stats.binomtest(...).proportion_ci`).
- **Transactions**: an attempt is a flow with a `relay` step; it succeeded if the same flow's
  `confirm` step is ok (relayed and mined). **Uploads**: `upload_file` and `upload_grant` steps.
  **Inference**: attempts are `inference_submit` steps, successes `inference_poll` steps that are ok.
- **Throughput** (`throughput_per_min`) = ok flows / (last flow end - first flow start) in minutes.
  Over time: ok and failed flows per window of `bin_s`, by the flow's end time.
- **Memory trend**: `scipy.stats.linregress` of a component's RSS against time over the steady
  part (the first 20% of its sampled span dropped as warm-up); slope in MB/min.
- **API errors** = failed `relay`/`inference_submit`/`inference_poll` steps of class `http` or
  `timeout`, plus restarts of the `api` process (a new pid in samples.csv).
- **Knee** of a capacity curve: see `knee`.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats

from workbench.analysis.results import COMPONENT_ORDER, Results
from workbench.steps import (
    API_STEPS,
    BY_STEP_CLASSES,
    UPLOAD_STEPS,
    in_flow_order,
    step_component,
)

API_DOWN = "api"  # a connection the API server's port refused or reset, at any step
MIN_TREND_SPAN_S = 30.0  # shortest steady span whose RSS slope means anything
WARMUP_FRAC = 0.2
QUANTILES = {"p50": 50, "p95": 95, "p99": 99}


# ----------------------------------------------------------------------------- latency


def latency_stats(
    seconds: Any, confidence: float = 0.95, seed: int = 0, n_resamples: int = 2000
) -> dict[str, Any]:
    """n, mean, p50, p95, p99, max (exact, numpy linear) and bootstrap CIs `<stat>_ci: [lo, hi]`."""
    x = np.asarray(seconds, dtype=float)
    x = x[np.isfinite(x)]
    out: dict[str, Any] = {"n": int(x.size), "confidence": confidence}
    empty = x.size == 0
    out["mean"] = None if empty else float(x.mean())
    for name, q in QUANTILES.items():
        out[name] = None if empty else float(np.percentile(x, q))
    out["min"] = None if empty else float(x.min())
    out["max"] = None if empty else float(x.max())
    cis = _bootstrap_cis(x, confidence, seed, n_resamples)
    for i, name in enumerate(("mean", *QUANTILES)):
        out[f"{name}_ci"] = None if cis is None else [float(cis[0][i]), float(cis[1][i])]
    return out


def _location_stats(a: np.ndarray, axis: int = -1) -> np.ndarray:
    # One bootstrap pass serves all four statistics (same resamples, a quarter of the work).
    return np.stack([a.mean(axis=axis), *np.percentile(a, list(QUANTILES.values()), axis=axis)])


def _bootstrap_cis(x: np.ndarray, confidence: float, seed: int, n_resamples: int):
    if x.size < 2 or np.ptp(x) == 0:
        return None  # nothing to resample: the CI would be a point or undefined
    res = stats.bootstrap(
        (x,),
        _location_stats,
        n_resamples=n_resamples,
        batch=max(1, 2_000_000 // x.size),  # bounds memory at ~16 MB per batch
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def step_breakdown(steps_df: pd.DataFrame) -> pd.DataFrame:
    """Per step (in flow order): n attempted, ok, failed, cancelled, ok_rate = ok / (ok + failed),
    and latency (mean, p50, p95, p99, max in seconds) of the ok steps."""
    cols = ["n", "ok", "failed", "cancelled", "ok_rate", "mean", "p50", "p95", "p99", "max"]
    if steps_df.empty:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="step"))
    counts = (
        steps_df.assign(cancelled=steps_df["error_class"] == "cancelled")
        .groupby("step")
        .agg(n=("ok", "size"), ok=("ok", "sum"), cancelled=("cancelled", "sum"))
    )
    counts["failed"] = counts["n"] - counts["ok"] - counts["cancelled"]
    counts["ok_rate"] = counts["ok"] / (counts["ok"] + counts["failed"]).replace(0, np.nan)
    lat = steps_df[steps_df["ok"]].groupby("step")["duration_s"]
    # pandas' linear == numpy's default
    quantiles = lat.quantile(np.array([0.5, 0.95, 0.99])).unstack()
    quantiles.columns = ["p50", "p95", "p99"]
    table = counts.join(lat.mean().rename("mean")).join(quantiles).join(lat.max().rename("max"))
    return table.loc[in_flow_order(table.index), cols].rename_axis("step")


# ----------------------------------------------------------------------------- throughput


def flows_per_minute(flows_df: pd.DataFrame) -> float | None:
    """Overall throughput: ok flows / (last flow end - first flow start), per minute."""
    if flows_df.empty:
        return None
    span = flows_df["t_end"].max() - flows_df["t"].min()
    ok = int(flows_df["ok"].sum())
    return None if not ok or not span > 0 else ok / span * 60.0


def throughput(flows_df: pd.DataFrame, bin_s: float = 60.0) -> pd.DataFrame:
    """Completed flows per window of `bin_s` by end time, from run start (t=0).

    Columns: t_start, t_end, ok, failed, flows_per_min (ok per minute), partial (the last window,
    cut short by the run's end, reads low).
    """
    cols = ["t_start", "t_end", "ok", "failed", "flows_per_min", "partial"]
    done = flows_df[flows_df["status"].isin(["ok", "failed"]) & flows_df["t_end"].notna()]
    if done.empty:
        return pd.DataFrame(columns=cols)
    window = (done["t_end"] // bin_s).astype(int).rename("window")
    counts = (
        done.assign(window=window)
        .groupby(["window", "status"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=["ok", "failed"], fill_value=0)
        .reindex(range(int(window.max()) + 1), fill_value=0)
    )
    t_start = counts.index.to_numpy() * bin_s
    return pd.DataFrame(
        {
            "t_start": t_start,
            "t_end": t_start + bin_s,
            "ok": counts["ok"].to_numpy(),
            "failed": counts["failed"].to_numpy(),
            "flows_per_min": counts["ok"].to_numpy() * 60.0 / bin_s,
            "partial": t_start + bin_s > flows_df["t_end"].max(),
        }
    )


def concurrency(flows_df: pd.DataFrame) -> pd.DataFrame:
    """In-flight flows as a step function: columns t, in_flight (value from t on)."""
    f = flows_df.dropna(subset=["t", "t_end"])
    if f.empty:
        return pd.DataFrame({"t": [], "in_flight": []})
    edges = pd.concat(
        [
            pd.DataFrame({"t": f["t"], "delta": 1}),
            pd.DataFrame({"t": f["t_end"], "delta": -1}),
        ]
    )
    # At equal times, ends come before starts: a flow that ends as another starts never overlaps.
    edges = edges.sort_values(["t", "delta"], kind="stable")
    edges["in_flight"] = edges["delta"].cumsum()
    return edges.groupby("t")["in_flight"].last().reset_index()


# ----------------------------------------------------------------------------- success


def proportion(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """k of n with a Wilson score interval; rate and CI None when n == 0."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None}
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return {"k": int(k), "n": int(n), "rate": k / n, "ci_low": ci.low, "ci_high": ci.high}


def success_rates(
    flows_df: pd.DataFrame, steps_df: pd.DataFrame, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Flows, transactions, uploads, inference: `{k, n, rate, ci_low, ci_high}` each.

    Work cut short by a cancel (the run's end, Ctrl-C) is neither success nor failure and is left
    out: cancelled flows, `cancelled` steps, and operations a cancelled flow had not finished.
    """
    done = flows_df[flows_df["status"].isin(["ok", "failed"])]
    cancelled = set(flows_df.loc[flows_df["status"] == "cancelled", "flow_id"])
    uploads = steps_df[
        steps_df["step"].isin(UPLOAD_STEPS) & (steps_df["error_class"] != "cancelled")
    ]
    return {
        "flows": proportion(int(done["ok"].sum()), len(done), confidence),
        "transactions": _operation(steps_df, "relay", "confirm", cancelled, confidence),
        "uploads": proportion(int(uploads["ok"].sum()), len(uploads), confidence),
        "inference": _operation(
            steps_df, "inference_submit", "inference_poll", cancelled, confidence
        ),
    }


def _operation(
    steps_df: pd.DataFrame, first: str, last: str, cancelled: set, confidence: float
) -> dict[str, Any]:
    """Flows that attempted `first`; a success if the same flow's `last` step is ok."""
    attempted = set(steps_df.loc[steps_df["step"] == first, "flow_id"])
    succeeded = set(steps_df.loc[(steps_df["step"] == last) & steps_df["ok"], "flow_id"])
    attempted -= cancelled - succeeded
    return proportion(len(attempted & succeeded), len(attempted), confidence)


def error_classes(flows_df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Counts of flows that did not succeed, `by_class` (error_class) and `by_step` (failed_step)."""
    bad = flows_df[flows_df["status"] != "ok"]

    def counts(col: str) -> dict[str, int]:
        values = bad[col].astype(object).where(bad[col].notna(), "unknown")
        return {str(k): int(v) for k, v in values.value_counts().items()}

    return {"by_class": counts("error_class"), "by_step": counts("failed_step")}


def api_errors(steps_df: pd.DataFrame, samples_df: pd.DataFrame) -> dict[str, Any]:
    """Timeouts and HTTP errors at the API server's steps, connections the API server refused or
    reset at any step (class `api`), plus api process crashes if sampled.

    Crashes = max(deaths the sampler marked (`alive 0`), pid changes): a crash followed by a
    restart shows as both and counts once. None when the api process was not sampled.
    """
    at_api = steps_df["step"].isin(API_STEPS) & steps_df["error_class"].isin(BY_STEP_CLASSES)
    failed = steps_df[~steps_df["ok"] & (at_api | (steps_df["error_class"] == API_DOWN))]
    api = samples_df[samples_df["component"] == "api"]
    crashes = None
    if not api.empty:
        deaths = int(((api["metric"] == "alive") & (api["value"] == 0)).sum())
        crashes = max(deaths, api["pid"].dropna().nunique() - 1)
    return {"step_errors": len(failed), "crashes": crashes, "total": len(failed) + (crashes or 0)}


# ----------------------------------------------------------------------------- resources


def resources(samples_df: pd.DataFrame) -> pd.DataFrame:
    """Per component: avg/peak cpu_pct and rss_mb, peak num_fds, open_files, connections, threads.

    cpu_pct of a process is % of one core (can exceed 100); of `system`, % of all cores (0-100).
    """
    metrics = ["cpu_pct", "rss_mb", "num_fds", "open_files", "connections", "threads"]
    cols = [
        "avg_cpu_pct",
        "peak_cpu_pct",
        "avg_rss_mb",
        "peak_rss_mb",
        "peak_num_fds",
        "peak_open_files",
        "peak_connections",
        "peak_threads",
    ]
    s = samples_df[samples_df["metric"].isin(metrics)]
    if s.empty:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="component"))
    # Several pids of one component (workers, a restart) add up at a sampling instant.
    per_tick = s.groupby(["component", "metric", "t"])["value"].sum()
    agg = per_tick.groupby(["component", "metric"]).agg(["mean", "max"]).unstack("metric")
    table = pd.DataFrame(index=agg.index)
    for col in cols:
        how, metric = col.split("_", 1)
        key = ("mean" if how == "avg" else "max", metric)
        table[col] = agg[key] if key in agg.columns else np.nan
    order = [c for c in COMPONENT_ORDER if c in table.index]
    order += sorted(set(table.index) - set(order))
    return table.loc[order].rename_axis("component")


def workbench_cpu(samples_df: pd.DataFrame, cpu_count: int) -> dict[str, float | None]:
    """CPU of the driver plus every stack process, as % of all cores (0-100), avg and peak.

    This is the box's load caused by the run itself; system-wide CPU would also count whatever
    else shares the machine, which makes a verdict depend on the neighbours.
    """
    cpu = samples_df[(samples_df["metric"] == "cpu_pct") & (samples_df["component"] != "system")]
    if cpu.empty or cpu_count < 1:
        return {"avg": None, "peak": None}
    per_tick = cpu.groupby("t")["value"].sum() / cpu_count
    return {"avg": float(per_tick.mean()), "peak": float(per_tick.max())}


def memory_trends(samples_df: pd.DataFrame) -> dict[str, dict[str, Any] | None]:
    """`memory_trend` of every process sampled (driver, workers, each stack component), by
    component; None where its steady span is too short to judge."""
    if samples_df.empty:
        return {}
    rss = samples_df[samples_df["metric"] == "rss_mb"]
    present = set(rss["component"].dropna().astype(str)) - {"system"}
    order = [c for c in COMPONENT_ORDER if c in present] + sorted(present - set(COMPONENT_ORDER))
    return {c: memory_trend(samples_df, c) for c in order}


def memory_trend(
    samples_df: pd.DataFrame,
    component: str = "driver",
    warmup_frac: float = WARMUP_FRAC,
    min_points: int = 5,
    min_span_s: float = MIN_TREND_SPAN_S,
) -> dict[str, Any] | None:
    """RSS slope (MB/min) over the steady part via linregress.

    None with fewer than `min_points` samples or a steady part shorter than `min_span_s`: over a
    few seconds the slope measures warm-up and allocator noise, not a leak.
    """
    rss = samples_df[(samples_df["component"] == component) & (samples_df["metric"] == "rss_mb")]
    series = rss.groupby("t")["value"].sum()
    if len(series) < min_points:
        return None
    t0, t1 = series.index.min(), series.index.max()
    steady = series[series.index >= t0 + warmup_frac * (t1 - t0)]
    if len(steady) < min_points or steady.index.max() - steady.index.min() < min_span_s:
        return None
    fit = stats.linregress(steady.index.to_numpy(dtype=float), steady.to_numpy(dtype=float))
    return {
        "component": component,
        "slope_mb_per_min": fit.slope * 60.0,
        "stderr_mb_per_min": fit.stderr * 60.0,
        "intercept_mb": fit.intercept,
        "r": fit.rvalue,
        "p_value": fit.pvalue,
        "n": len(steady),
        "t_from": float(steady.index.min()),
        "t_to": float(t1),
        "warmup_frac": warmup_frac,
    }


def network(samples_df: pd.DataFrame) -> dict[str, Any]:
    """Bytes the machine sent and received over the run (system counters, last minus first)."""

    def delta(metric: str) -> int | None:
        s = samples_df[(samples_df["component"] == "system") & (samples_df["metric"] == metric)]
        if s.empty:
            return None
        values = s.sort_values("t")["value"]
        return int(values.iloc[-1] - values.iloc[0])

    sent, recv = delta("net_sent_bytes"), delta("net_recv_bytes")
    total = None if sent is None and recv is None else (sent or 0) + (recv or 0)
    return {"sent_bytes": sent, "recv_bytes": recv, "total_bytes": total}


def loop_lag(samples_df: pd.DataFrame) -> dict[str, Any] | None:
    """Driver event-loop lag (ms): p50, p99, max; None if not sampled."""
    lag = samples_df.loc[samples_df["metric"] == "loop_lag_ms", "value"].to_numpy(dtype=float)
    if lag.size == 0:
        return None
    p50, p99 = np.percentile(lag, [50, 99])
    return {"n": int(lag.size), "p50_ms": p50, "p99_ms": p99, "max_ms": lag.max()}


def gauge_peaks(samples_df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Peak of every non-resource gauge per component (queue_depth, txpool_pending, ...)."""
    resource = {"cpu_pct", "rss_mb", "num_fds", "open_files", "connections", "threads"}
    resource |= {"loop_lag_ms", "control_lag_ms", "loop_cpu_pct", "crypto_cpu_pct", "alive"}
    g = samples_df[~samples_df["metric"].isin(resource) & (samples_df["component"] != "system")]
    peaks = g.groupby(["component", "metric"])["value"].max()
    out: dict[str, dict[str, float]] = {}
    for (component, metric), value in zip(peaks.index, peaks, strict=True):
        out.setdefault(str(component), {})[str(metric)] = float(value)
    return out


# ----------------------------------------------------------------------------- capacity


def capacity_curve(results: Results | pd.DataFrame) -> pd.DataFrame:
    """Per stage of a `steps` shape (flows carry `stage`): users, flows, ok, success_rate,
    throughput_per_min, p50_s, p95_s. `users` = the stage's level (`stage_users`, written by the
    runner), else the distinct users that started a flow in it. Empty without a `stage` column."""
    flows = results.flows if isinstance(results, Results) else results
    cols = ["stage", "users", "flows", "ok", "success_rate", "throughput_per_min", "p50_s", "p95_s"]
    if "stage" not in flows or flows["stage"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for stage, f in flows.dropna(subset=["stage"]).groupby("stage"):  # a handful of stages
        done = f[f["status"].isin(["ok", "failed"])]
        ok_s = f.loc[f["ok"], "duration_s"].to_numpy(dtype=float)
        level = f["stage_users"].max() if "stage_users" in f else np.nan
        rows.append(
            {
                "stage": int(cast(float, stage)),  # pandas types a group key as any scalar
                "users": int(level) if pd.notna(level) else int(f["user"].nunique()),
                "flows": len(f),
                "ok": int(f["ok"].sum()),
                "success_rate": f["ok"].sum() / len(done) if len(done) else np.nan,
                "throughput_per_min": flows_per_minute(f) or 0.0,
                "p50_s": np.percentile(ok_s, 50) if ok_s.size else np.nan,
                "p95_s": np.percentile(ok_s, 95) if ok_s.size else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=cols)


def saturated_first(results: Results, curve: pd.DataFrame) -> dict[str, Any] | None:
    """Where a capacity curve's extra latency went: the step whose median (ok attempts) grew
    most from the first stage to the last, and the component serving it, with the figures that
    show it. None without two stages or without ok steps in both."""
    if len(curve) < 2 or results.steps.empty or "stage" not in results.flows:
        return None
    stage_of = results.flows.dropna(subset=["stage"]).set_index("flow_id")["stage"]
    steps = results.steps[results.steps["ok"]].copy()
    steps["stage"] = steps["flow_id"].map(stage_of)
    first, last = curve.iloc[0], curve.iloc[-1]
    medians = steps.groupby(["stage", "step"])["duration_s"].median()
    growth = {
        step: medians[(last["stage"], step)] - medians[(first["stage"], step)]
        for step in in_flow_order(steps["step"].dropna().unique())
        if (first["stage"], step) in medians and (last["stage"], step) in medians
    }
    if not growth:
        return None
    step = max(growth, key=lambda s: growth[s])
    total = sum(g for g in growth.values() if g > 0)
    return {
        "step": step,
        "component": step_component(step),
        "users_first": int(first["users"]),
        "users_last": int(last["users"]),
        "p50_first_s": float(medians[(first["stage"], step)]),
        "p50_last_s": float(medians[(last["stage"], step)]),
        "growth_share": float(growth[step] / total) if total > 0 else None,
    }


def knee(curve: pd.DataFrame, gain_frac: float = 0.5, p95_factor: float = 2.0) -> int | None:
    """The first users level where the system stops scaling, or None.

    Rule: with s0 = throughput / users at the first level (the initial slope, from the origin),
    the knee is the first later level where the throughput gained per added user falls below
    `gain_frac * s0`, or where p95 exceeds `p95_factor` x the first level's p95.
    """
    c = curve.dropna(subset=["users", "throughput_per_min"]).sort_values("users")
    users = c["users"].to_numpy(dtype=float)
    thr = c["throughput_per_min"].to_numpy(dtype=float)
    p95 = c["p95_s"].to_numpy(dtype=float)
    if len(c) < 2 or users[0] <= 0:
        return None
    s0 = thr[0] / users[0]
    added = np.diff(users)
    gain = np.divide(np.diff(thr), added, out=np.full(added.shape, np.inf), where=added > 0)
    slow = gain < gain_frac * s0
    slower = p95[1:] > p95_factor * p95[0]  # NaN compares False
    hits = np.flatnonzero(slow | slower)
    return int(users[hits[0] + 1]) if hits.size else None
