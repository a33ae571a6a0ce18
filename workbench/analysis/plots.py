"""The run's figures, each a pure function of a `Results` (plus its summary / criteria rows).

Figures are built as `matplotlib.figure.Figure` objects without pyplot: no GUI backend is needed
(headless runs, CI), nothing accumulates in pyplot's figure registry across a notebook, and
Jupyter still displays a returned Figure inline. `save_all` writes them as PNGs in `figures/`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from workbench.analysis import stats
from workbench.analysis.results import COMPONENT_ORDER, Results
from workbench.events import STEPS

DPI = 110
PCT_COLORS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#d62728"}
OK_COLOR, FAIL_COLOR, CANCEL_COLOR = "#2ca02c", "#d62728", "#9e9e9e"
TARGET_COLOR, ACCEPTABLE_COLOR = "#2ca02c", "#e6a700"
COMPONENT_COLORS = {
    "driver": "#1f77b4",
    "system": "#7f7f7f",
    "anvil": "#9467bd",
    "storage": "#8c564b",
    "api": "#ff7f0e",
    "personal": "#17becf",
}
PROCESS_METRICS = ("cpu_pct", "rss_mb", "open_files", "connections", "threads", "num_fds")
NOT_GAUGES = {*PROCESS_METRICS, "loop_lag_ms", "alive"}
# A threshold further than this multiple of the slowest flow would squash the histogram.
THRESHOLD_REACH = 3.0

# Which part of the system serves each step: where a failure at that step points.
STEP_COMPONENT = {
    "derive_key": "driver (client crypto)",
    "encrypt": "driver (client crypto)",
    "share_key": "driver (client crypto)",
    "sign_permission": "driver (client crypto)",
    "upload_file": "storage server",
    "upload_grant": "storage server",
    "resolve_grantee": "chain (RPC)",
    "read_nonce": "chain (RPC)",
    "server_identity": "personal server",
    "relay": "API server (relayer)",
    "confirm": "chain / relayer",
    "inference_submit": "personal server (via API server)",
    "inference_poll": "personal server (via API server)",
}
CLASS_COMPONENT = {
    "storage": "storage server",
    "rpc": "chain / relayer",
    "nonce": "chain / relayer",
    "revert": "chain / relayer",
    "relay": "API server (relayer)",
    "api": "API server",
    "inference": "personal server",
    "personal": "personal server",
    "crypto": "driver (client crypto)",
    "internal": "workbench (driver)",
    "cancelled": "none: stopped by the run's end",
}


def fault_component(error_class: str | None, step: str | None = None) -> str:
    """The component a failure points at: by class, and by the failed step for timeouts and
    plain HTTP errors (a 500 at `upload_file` is the storage server's, not the API server's)."""
    if error_class in ("timeout", "http"):
        fallback = "API server" if error_class == "http" else "unknown step"
        return STEP_COMPONENT.get(step or "", fallback)
    return CLASS_COMPONENT.get(error_class or "", "unknown")


# ----------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _empty(fig: Figure, title: str, message: str) -> Figure:
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="#555555")
    return fig


def secs(value: float | None) -> str:
    """Seconds with precision that suits the magnitude: 0.042 s, 4.21 s, 42.1 s."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if abs(value) < 1:
        return f"{value:.3f} s"
    return f"{value:.2f} s" if abs(value) < 10 else f"{value:.1f} s"


def _ok_durations(results: Results) -> np.ndarray:
    flows = results.flows
    return flows.loc[flows["ok"], "duration_s"].dropna().to_numpy(dtype=float)


def _metric(samples: pd.DataFrame, component: str, metric: str) -> pd.Series:
    """One component's metric over time; several pids at one instant (a restart) add up."""
    s = samples[(samples["component"] == component) & (samples["metric"] == metric)]
    return s.groupby("t")["value"].sum()


def _thresholds(criteria_rows: Sequence[Mapping[str, Any]] | None, metric: str) -> dict:
    for row in criteria_rows or ():
        if row.get("metric") == metric:
            return {"target": row.get("target"), "acceptable": row.get("acceptable")}
    return {}


# ----------------------------------------------------------------------------- latency


def latency_histogram(
    results: Results,
    summary: Mapping[str, Any] | None = None,
    criteria_rows: Sequence[Mapping[str, Any]] | None = None,
) -> Figure:
    """Completion times of ok flows with p50/p95/p99 lines (gid `p50`...) and the avg / p95
    criteria thresholds (gid `avg_s:target`, `p95_s:acceptable`...) when within reach."""
    x = _ok_durations(results)
    fig = _figure(9.5, 5)
    title = "Flow completion time"
    if x.size == 0:
        return _empty(fig, title, "no completed flows")
    ax = fig.subplots()
    pcts = {p: _percentile(x, summary, p) for p in ("p50", "p95", "p99")}
    mean = summary.get("avg_s") if summary else float(x.mean())
    counts, _, _ = ax.hist(
        x, bins=_bins(x), color="#aec7e8", edgecolor="white", label=f"ok flows (n={x.size})"
    )
    ax.set_ylim(0, counts.max() * 1.4)  # headroom so the line labels sit above the bars
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (name, value) in enumerate(pcts.items()):
        ax.axvline(value, color=PCT_COLORS[name], lw=2, gid=name, label=f"{name} {secs(value)}")
        ax.text(
            value,
            0.97 - 0.09 * i,
            f" {name} {secs(value)}",
            transform=trans,
            color=PCT_COLORS[name],
            va="top",
            fontsize=9,
            fontweight="bold",
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )
    ax.axvline(mean, color="#333333", lw=1.2, ls=":", gid="mean", label=f"mean {secs(mean)}")
    far = _draw_thresholds(ax, criteria_rows, reach=THRESHOLD_REACH * x.max())
    if far:
        ax.text(
            0.99,
            0.60,
            "beyond the axis:\n" + "\n".join(far),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="#555555",
            bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc"},
        )
    drawn = [line.get_xdata()[0] for line in ax.lines]
    ax.set_xlim(0, max(x.max() * 1.05, max(drawn) * 1.1))
    ax.set_xlabel("flow duration (s), successful flows")
    ax.set_ylabel("flows")
    total = int(results.flows["status"].isin(["ok", "failed"]).sum())
    ax.set_title(f"{title}: {x.size} of {total} flows ok")
    ax.legend(loc="center right", fontsize=8, framealpha=0.9)
    return fig


def _percentile(x: np.ndarray, summary: Mapping[str, Any] | None, name: str) -> float:
    # The summary's value is the one the criteria judged; recompute only without a summary.
    value = (summary or {}).get(f"{name}_s")
    return float(value) if value is not None else float(np.percentile(x, int(name[1:])))


def _bins(x: np.ndarray) -> np.ndarray:
    edges = np.histogram_bin_edges(x, bins="auto")
    return edges if len(edges) <= 61 else np.linspace(x.min(), x.max(), 61)


def _draw_thresholds(ax, criteria_rows, reach: float) -> list[str]:
    """Draws avg / p95 thresholds within `reach`; returns labels of those beyond it."""
    far = []
    styles = {"avg_s": (":", "avg"), "p95_s": ("--", "p95")}
    for metric, (ls, short) in styles.items():
        limits = _thresholds(criteria_rows, metric)
        for kind, color in (("target", TARGET_COLOR), ("acceptable", ACCEPTABLE_COLOR)):
            value = limits.get(kind)
            if value is None:
                continue
            label = f"{short} {kind} < {secs(value)}"
            if value > reach:
                far.append(label)
                continue
            ax.axvline(value, color=color, ls=ls, lw=1.5, gid=f"{metric}:{kind}", label=label)
    p95 = _thresholds(criteria_rows, "p95_s")
    if p95 and p95["acceptable"] <= reach:  # shade where p95 would be merely acceptable / fail
        ax.axvspan(p95["target"], p95["acceptable"], color=ACCEPTABLE_COLOR, alpha=0.08, lw=0)
        ax.axvspan(p95["acceptable"], p95["acceptable"] * 1.5, color=FAIL_COLOR, alpha=0.06, lw=0)
    return far


# ----------------------------------------------------------------------------- steps


def step_breakdown(results: Results) -> Figure:
    """Per step, in flow order: p50 and p95 of ok steps as bars, failures noted."""
    table = stats.step_breakdown(results.steps)
    fig = _figure(9.5, 1.6 + 0.38 * max(len(table), 1))
    title = "Step latency (ok steps)"
    if table.empty or table["p50"].isna().all():
        return _empty(fig, title, "no step events")
    ax = fig.subplots()
    y = np.arange(len(table))
    p50, p95 = table["p50"].to_numpy(float), table["p95"].to_numpy(float)
    ax.barh(y, p95, color="#ffbb78", height=0.75, label="p95")
    ax.barh(y, p50, color="#1f77b4", height=0.45, label="p50")
    positive = np.concatenate([p50[p50 > 0], p95[p95 > 0]])
    if positive.size and positive.max() / positive.min() > 50:
        ax.set_xscale("log")  # ms-scale crypto next to minute-scale inference
    for yi, (a, b, failed) in enumerate(zip(p50, p95, table["failed"], strict=True)):
        note = f" {secs(a)} / {secs(b)}" + (f"   {int(failed)} failed" if failed else "")
        ax.text(
            np.nan_to_num(b),
            yi,
            note,
            va="center",
            fontsize=8,
            color=FAIL_COLOR if failed else "#333333",
        )
    ax.set_yticks(y, table.index)
    ax.invert_yaxis()  # first step on top
    ax.set_xlabel("step duration (s)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_title(f"{title}: p50 / p95, in flow order")
    ax.legend(loc="upper right", fontsize=8)  # the first steps (top) are the short ones
    ax.margins(x=0.25)
    return fig


# ----------------------------------------------------------------------------- timeline


def timeline(results: Results, bin_s: float | None = None) -> Figure:
    """Flows in flight and completed flows per minute over time; driver loop lag if sampled."""
    flows, samples = results.flows, results.samples
    lag = _metric(samples, "driver", "loop_lag_ms") if not samples.empty else pd.Series()
    rows = 3 if len(lag) else 2
    fig = _figure(10, 2.3 * rows + 0.6)
    if flows.empty:
        return _empty(fig, "Concurrency and throughput", "no flows")
    axes = fig.subplots(rows, 1, sharex=True)
    conc = stats.concurrency(flows)
    axes[0].step(conc["t"], conc["in_flight"], where="post", color="#1f77b4")
    axes[0].fill_between(conc["t"], conc["in_flight"], step="post", alpha=0.15)
    axes[0].set_ylabel("flows in flight")
    axes[0].set_title(f"Concurrency (peak {int(conc['in_flight'].max())}) and throughput")
    bin_s = bin_s or _throughput_bin(flows)
    _throughput_bars(axes[1], stats.throughput(flows, bin_s), bin_s)
    if rows == 3:
        axes[2].plot(lag.index, lag.to_numpy(), color="#9467bd", lw=1)
        axes[2].set_ylabel("loop lag (ms)")
        axes[2].set_title("driver event-loop lag (worst per sample)", fontsize=9, loc="left")
    axes[-1].set_xlabel("time since run start (s)")
    axes[-1].set_xlim(left=0)
    return fig


def _throughput_bin(flows: pd.DataFrame) -> float:
    """A minute for runs long enough to show several; else ~20 windows, rounded."""
    span = float(flows["t_end"].max() - flows["t"].min()) if len(flows) else 0.0
    if span >= 300:
        return 60.0
    for candidate in (1, 2, 5, 10, 15, 20, 30):
        if span / candidate <= 20:
            return float(candidate)
    return 30.0


def _throughput_bars(ax, thr: pd.DataFrame, bin_s: float) -> None:
    if thr.empty:
        ax.text(0.5, 0.5, "no finished flows", transform=ax.transAxes, ha="center")
        return
    scale = 60.0 / bin_s
    ok, failed = thr["ok"] * scale, thr["failed"] * scale
    ax.bar(
        thr["t_start"], ok, width=bin_s, align="edge", color=OK_COLOR, label="ok", edgecolor="white"
    )
    ax.bar(
        thr["t_start"],
        failed,
        bottom=ok,
        width=bin_s,
        align="edge",
        color=FAIL_COLOR,
        label="failed",
        edgecolor="white",
    )
    ax.set_ylim(0, max(1.0, float((ok + failed).max())) * 1.25)  # headroom for the legend
    partial = thr[thr["partial"]]
    for t0 in partial["t_start"]:  # the last window is cut short by the run's end
        ax.axvspan(t0, t0 + bin_s, fill=False, hatch="//", ec="#bbbbbb", lw=0)
    ax.set_ylabel("flows / min")
    ax.set_title(
        f"completed flows per minute ({bin_s:g} s windows, by end time)", fontsize=9, loc="left"
    )
    ax.legend(loc="upper right", fontsize=8)


# ----------------------------------------------------------------------------- resources


def resources(results: Results, criteria_rows: Sequence[Mapping[str, Any]] | None = None) -> Figure:
    """Small multiples: system CPU and network, then per process CPU %, RSS and sockets/files."""
    samples = results.samples
    comps = _process_components(samples)
    fig = _figure(11, 1.9 * (len(comps) + 1) + 0.8)
    if samples.empty:
        return _empty(fig, "Resource usage", "no samples.csv")
    axes = fig.subplots(len(comps) + 1, 3, sharex=True, squeeze=False)
    cpus = int(results.config.get("cpu_count") or os.cpu_count() or 1)
    _system_row(axes[0], samples, criteria_rows, cpus)
    for row, comp in zip(axes[1:], comps, strict=True):
        _process_row(row, samples, comp)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.suptitle("Resource usage over time")
    return fig


def _process_components(samples: pd.DataFrame) -> list[str]:
    present = set(samples.loc[samples["metric"].isin(PROCESS_METRICS), "component"])
    present.discard("system")
    order = [c for c in COMPONENT_ORDER if c in present]
    return order + sorted(present - set(order))


def _system_row(row, samples: pd.DataFrame, criteria_rows, cpus: int) -> None:
    # The criterion judges the run's own processes (driver + stack); the whole box is context.
    box = _metric(samples, "system", "cpu_pct")
    row[0].plot(box.index, box.to_numpy(), color="#bbbbbb", lw=0.8, label="whole box")
    procs = samples[(samples["metric"] == "cpu_pct") & (samples["component"] != "system")]
    cpu = procs.groupby("t")["value"].sum() / cpus
    row[0].plot(
        cpu.index, cpu.to_numpy(), color=COMPONENT_COLORS["system"], lw=1, label="driver + stack"
    )
    limits = _thresholds(criteria_rows, "avg_cpu_pct")
    for kind, color in (("target", TARGET_COLOR), ("acceptable", ACCEPTABLE_COLOR)):
        if limits.get(kind) is not None:
            row[0].axhline(limits[kind], color=color, ls="--", lw=1, label=f"avg {kind}")
    row[0].set_ylim(0, 100)
    avg = f" (avg {cpu.mean():.0f}%)" if len(cpu) else ""
    row[0].set_title(f"CPU % of all cores, driver + stack{avg}", fontsize=9, loc="left")
    row[0].legend(fontsize=7, loc="upper right")
    for metric, label in (("net_sent_bytes", "sent"), ("net_recv_bytes", "received")):
        rate = _rate_kb_s(_metric(samples, "system", metric))
        row[1].plot(rate.index, rate.to_numpy(), lw=1, label=label)
    row[1].set_title("system network KB/s (loopback incl.)", fontsize=9, loc="left")
    row[1].legend(fontsize=7, loc="upper right")
    row[0].set_ylabel("system", fontweight="bold")
    _gauge_panel(row[2], samples)


def _rate_kb_s(cumulative: pd.Series) -> pd.Series:
    if len(cumulative) < 2:
        return pd.Series(dtype=float)
    dt = np.diff(cumulative.index.to_numpy(dtype=float))
    dv = np.diff(cumulative.to_numpy(dtype=float))
    return pd.Series(dv / np.where(dt > 0, dt, np.nan) / 1024, index=cumulative.index[1:])


def _gauge_panel(ax, samples: pd.DataFrame) -> None:
    """The stack's queue gauges (inference queue, relayer pending, txpool) on one panel."""
    wanted = {"queue_depth", "relayer_pending", "txpool_pending", "in_flight"}
    g = samples[samples["metric"].isin(wanted)]
    for (comp, metric), s in g.groupby(["component", "metric"]):
        series = s.groupby("t")["value"].sum()
        ax.plot(series.index, series.to_numpy(), lw=1, label=f"{comp} {metric}")
    ax.set_title("stack queues (gauges)", fontsize=9, loc="left")
    if g.empty:
        ax.text(0.5, 0.5, "no gauges sampled", transform=ax.transAxes, ha="center", color="#777")
    else:
        ax.legend(fontsize=7, loc="upper right")


def _process_row(row, samples: pd.DataFrame, comp: str) -> None:
    color = COMPONENT_COLORS.get(comp, "#333333")
    cpu, rss = _metric(samples, comp, "cpu_pct"), _metric(samples, comp, "rss_mb")
    row[0].plot(cpu.index, cpu.to_numpy(), color=color, lw=1)
    row[0].set_title(_peak_title("CPU % of one core", cpu, "%"), fontsize=9, loc="left")
    row[0].set_ylim(bottom=0)
    row[1].plot(rss.index, rss.to_numpy(), color=color, lw=1)
    row[1].set_title(_peak_title("RSS MB", rss, " MB"), fontsize=9, loc="left")
    if len(rss):  # a span of at least 20% of the peak: sampling noise must not look like a leak
        mid, half = (rss.max() + rss.min()) / 2, max(rss.max() - rss.min(), 0.2 * rss.max()) / 2
        row[1].set_ylim(max(0, mid - 1.1 * half), mid + 1.1 * half)
    for metric in ("connections", "open_files", "num_fds"):
        series = _metric(samples, comp, metric)
        if len(series):
            row[2].plot(series.index, series.to_numpy(), lw=1, label=metric)
    row[2].set_title("sockets and files", fontsize=9, loc="left")
    if row[2].lines:
        row[2].legend(fontsize=7, loc="upper left")
    else:
        row[2].text(0.5, 0.5, "no data", transform=row[2].transAxes, ha="center", color="#777")
    died = samples[(samples["component"] == comp) & (samples["metric"] == "alive")]
    for t in died.loc[died["value"] == 0, "t"]:  # the sampler saw the process exit
        for ax in row:
            ax.axvline(t, color=FAIL_COLOR, lw=1, ls="--")
        row[0].text(
            t,
            0.9,
            " exited",
            color=FAIL_COLOR,
            fontsize=8,
            transform=blended_transform_factory(row[0].transData, row[0].transAxes),
        )
    row[0].set_ylabel(comp, fontweight="bold")


def _peak_title(label: str, series: pd.Series, unit: str) -> str:
    return f"{label} (peak {series.max():.0f}{unit})" if len(series) else f"{label} (no data)"


# ----------------------------------------------------------------------------- errors


def errors(results: Results) -> Figure:
    """Flows that did not succeed, by error class (with the component at fault) and by step."""
    flows = results.flows
    bad = flows[flows["status"] != "ok"]
    fig = _figure(
        11, 1.8 + 0.35 * max(bad["error_class"].nunique(), bad["failed_step"].nunique(), 1)
    )
    title = "Errors"
    if bad.empty:
        return _empty(fig, title, f"no errors: all {len(flows)} flows completed")
    by_class, by_step = fig.subplots(1, 2)
    classes = bad.groupby(bad["error_class"].fillna("unknown").astype(str))
    counts = classes.size().sort_values()
    steps_of = classes["failed_step"].agg(lambda s: s.mode().iloc[0] if s.notna().any() else None)
    labels = [f"{c} -> {fault_component(c, steps_of.get(c))}" for c in counts.index]
    colors = [CANCEL_COLOR if c == "cancelled" else FAIL_COLOR for c in counts.index]
    by_class.bar_label(by_class.barh(labels, counts.to_numpy(), color=colors), padding=3)
    by_class.set_title("by error class -> component at fault", fontsize=10, loc="left")
    steps = bad["failed_step"].fillna("unknown").astype(str).value_counts()
    order = [s for s in STEPS if s in steps.index] + sorted(set(steps.index) - set(STEPS))
    by_step.bar_label(by_step.barh(order, steps.loc[order].to_numpy(), color="#ff9896"), padding=3)
    by_step.invert_yaxis()  # flow order, first step on top
    by_step.set_title("by failed step (flow order)", fontsize=10, loc="left")
    for ax in (by_class, by_step):
        ax.set_xlabel("flows")
        ax.margins(x=0.15)
        ax.xaxis.get_major_locator().set_params(integer=True)
    n_done = int(flows["status"].isin(["ok", "failed"]).sum())
    failed, cancelled = (
        int((bad["status"] == "failed").sum()),
        int((bad["status"] == "cancelled").sum()),
    )
    fig.suptitle(
        f"{title}: {failed} failed of {n_done}" + (f", {cancelled} cancelled" if cancelled else "")
    )
    return fig


# ----------------------------------------------------------------------------- capacity


def capacity_curve(results: Results | pd.DataFrame, knee: int | None = None) -> Figure:
    """For a `steps` run: throughput and p95 against users, the knee marked (gid `knee`).

    Takes a Results, or a curve already computed by `stats.capacity_curve` (with its knee;
    computed here when None)."""
    is_curve = isinstance(results, pd.DataFrame) and "throughput_per_min" in results
    curve = results if is_curve else stats.capacity_curve(results)
    fig = _figure(9, 4.8)
    title = "Capacity curve"
    if curve.empty:
        return _empty(fig, title, "not a steps run: no capacity curve")
    ax = fig.subplots()
    ax.plot(
        curve["users"],
        curve["throughput_per_min"],
        "o-",
        color=OK_COLOR,
        label="throughput (ok flows/min)",
    )
    ax.set_xlabel("concurrent users (per stage)")
    ax.set_ylabel("ok flows / min", color=OK_COLOR)
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(curve["users"], curve["p95_s"], "s--", color=PCT_COLORS["p95"], label="p95 (s)")
    ax2.set_ylabel("p95 flow duration (s)", color=PCT_COLORS["p95"])
    ax2.set_ylim(bottom=0)
    knee = stats.knee(curve) if knee is None else knee
    if knee is not None:
        ax.axvline(knee, color=FAIL_COLOR, ls=":", lw=2, gid="knee", label=f"knee at {knee} users")
    handles = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8)
    ax.set_title(f"{title}: " + (f"stops scaling at {knee} users" if knee else "no knee found"))
    return fig


# ----------------------------------------------------------------------------- all


def save_all(
    results: Results,
    summary: Mapping[str, Any] | None,
    criteria_rows: Sequence[Mapping[str, Any]] | None,
    figures_dir: str | Path,
) -> list[Path]:
    """Builds every figure and writes `<name>.png`; the capacity curve only for steps runs."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    builders = {
        "latency_histogram": lambda: latency_histogram(results, summary, criteria_rows),
        "step_breakdown": lambda: step_breakdown(results),
        "timeline": lambda: timeline(results),
        "resources": lambda: resources(results, criteria_rows),
        "errors": lambda: errors(results),
    }
    if not stats.capacity_curve(results).empty:
        builders["capacity_curve"] = lambda: capacity_curve(results)
    paths = []
    for name, build in builders.items():
        path = figures_dir / f"{name}.png"
        # No timestamp metadata: a re-render of the same results gives the same bytes.
        build().savefig(path, dpi=DPI, metadata={"Software": None})
        paths.append(path)
    return paths
