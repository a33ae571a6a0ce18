"""Synthetic results dirs (events.jsonl + samples.csv + config.json) with known answers.

For the analysis, plots and report tests: no stack, no network, deterministic for a seed.

    path = write_results_dir(tmp_path / "run", n_flows=40, fail_every=10)
    results = workbench.analysis.load_results(path)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.events import EventWriter
from workbench.request_log import COLUMNS as REQUEST_COLUMNS
from workbench.steps import STEPS

WALL0 = 1_750_000_000.0  # a fixed wall clock so outputs are reproducible
# Share of a flow's duration each step takes (sums to 1): chain and inference dominate.
STEP_WEIGHTS = np.array([1, 2, 4, 1, 4, 1, 1, 1, 1, 10, 30, 4, 40], dtype=float)
STEP_WEIGHTS /= STEP_WEIGHTS.sum()
COMPONENTS = ("anvil", "storage", "api", "personal")
# The requests each step sends (type, name, how many), as the real flow does.
STEP_REQUESTS = {
    "upload_file": ("POST", "/api/v0/add", 1),
    "resolve_grantee": ("RPC", "eth_call", 1),
    "upload_grant": ("POST", "/api/v0/add", 1),
    "server_identity": ("GET", "/identity", 1),
    "read_nonce": ("RPC", "eth_call", 1),
    "relay": ("POST", "/api/relay", 1),
    "confirm": ("RPC", "eth_getTransactionReceipt", 3),
    "inference_submit": ("POST", "/api/trusted-server", 1),
    "inference_poll": ("POST", "/api/trusted-server/poll", 4),
}


def write_results_dir(
    path: str | Path,
    n_flows: int = 40,
    users: int = 10,
    fail_every: int = 0,
    fail_step: str = "relay",
    fail_class: str = "relay",
    durations: Sequence[float] | None = None,
    spacing_s: float = 2.0,
    cancel_last: int = 0,
    stages: Sequence[int] | None = None,
    stage_s: float = 60.0,
    complete: bool = True,
    torn_tail: bool = False,
    sample_every_s: float = 1.0,
    rss_base_mb: float = 150.0,
    rss_slope_mb_per_min: float = 0.0,
    system_cpu_pct: float = 40.0,
    api_restart_at_s: float | None = None,
    faults: Any = None,
    seed: int = 0,
    run_id: str = "synthetic",
    limit_every: int = 0,
) -> Path:
    """Writes a results dir and returns its path.

    Flow i starts at `i * spacing_s` for user `i % users`, lasts `durations[i]` (default uniform
    20..60 s), and fails at `fail_step` with `fail_class` when `(i + 1) % fail_every == 0`
    (no later steps). The last `cancel_last` flows are cancelled during `inference_poll`.
    With `stages` (users per level, a `steps` shape) flows carry `stage`; level u runs 2u flows
    spread over `stage_s`, slower once u > 8 (a knee at the level after 8).
    Samples every `sample_every_s`: driver RSS = rss_base_mb + slope * t (plus 0.2 MB noise),
    system cpu_pct = system_cpu_pct (+-1), net counters +1000 B/s sent, +2000 B/s received,
    driver loop_lag_ms, stack processes, api pid changes at `api_restart_at_s`.
    `complete=False` omits the run-end event; `torn_tail` appends half a line to both files.
    requests.csv: each attempted step's requests (`STEP_REQUESTS`) spread over the step; with
    `limit_every` every n-th RPC call is first answered 429 and retried at once (`retry` 1).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    flows = (
        _staged_flows(stages, stage_s)
        if stages
        else _flows(n_flows, users, durations, spacing_s, rng)
    )
    for i, flow in enumerate(flows):
        if fail_every and (i + 1) % fail_every == 0:
            flow.update(status="failed", failed_step=fail_step, error_class=fail_class)
    for flow in flows[len(flows) - cancel_last :] if cancel_last else []:
        flow.update(status="cancelled", failed_step="inference_poll", error_class="cancelled")
    run_end = max(f["t"] + f["duration_s"] for f in flows) + 1.0 if flows else 1.0
    events = _write_events(
        path / "events.jsonl", flows, run_id, users, run_end, complete, torn_tail
    )
    _write_requests(path / "requests.csv", events, limit_every)
    _write_samples(
        path / "samples.csv",
        run_end,
        sample_every_s,
        rss_base_mb,
        rss_slope_mb_per_min,
        system_cpu_pct,
        api_restart_at_s,
        rng,
        torn_tail,
    )
    config = {
        "run_id": run_id,
        "users": max(stages) if stages else users,
        "shape": "steps" if stages else "staggered",
        "profile": "fast",
        "criteria": "params/criteria/ms03.yaml",
    }
    if faults is not None:
        config["faults"] = faults
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def _flows(n, users, durations, spacing_s, rng) -> list[dict[str, Any]]:
    if durations is None:
        durations = rng.uniform(20.0, 60.0, n)
    return [
        {"flow_id": i, "user": i % users, "t": i * spacing_s, "duration_s": float(durations[i])}
        for i in range(n)
    ]


def _staged_flows(stages, stage_s) -> list[dict[str, Any]]:
    flows = []
    for k, level in enumerate(stages):
        n = 2 * level
        for j in range(n):
            flows.append(
                {
                    "flow_id": len(flows),
                    "user": j % level,
                    "t": k * stage_s + j * stage_s / n,
                    "duration_s": 10.0 * (1 + max(0, level - 8) / 4),
                    "stage": k,
                    "stage_users": level,
                }
            )
    return flows


def _write_events(path, flows, run_id, users, run_end, complete, torn_tail) -> list[dict]:
    written = []
    with EventWriter(path) as w:
        w.write({"kind": "run", "event": "start", "t": 0.0, "wall": WALL0, "run_id": run_id})
        for flow in flows:
            for event in _flow_events(flow, run_id):
                w.write(event)
                written.append(event)
        if complete:
            w.write(
                {
                    "kind": "run",
                    "event": "end",
                    "t": run_end,
                    "wall": WALL0 + run_end,
                    "reason": "completed",
                }
            )
    if torn_tail:
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"kind": "flow", "run_id": "' + run_id + '", "flow_id": 99')
    return written


def _write_requests(path, events, limit_every: int) -> None:
    rows, rpc_calls = [], 0
    for step in (e for e in events if e["kind"] == "step" and e["step"] in STEP_REQUESTS):
        kind, name, n = STEP_REQUESTS[step["step"]]
        ms = step["duration_s"] * 1000 / n
        for i in range(n):
            t = round(step["t"] + i * ms / 1000, 6)
            rpc_calls += kind == "RPC"
            if kind == "RPC" and limit_every and rpc_calls % limit_every == 0:
                rows.append((t, kind, name, 1.0, 429, "HTTP 429", 0, 0, ""))
                rows.append((t, kind, name, round(ms, 3), 200, "", 1, 100, ""))
                continue
            ok = step["ok"] or i < n - 1  # a failed step's last request is the failure
            if not ok and step["error_class"] == "cancelled":
                continue  # a cancelled request is not recorded
            status, error = (200, "") if ok else (500, "HTTP 500")
            rows.append((t, kind, name, round(ms, 3), status, error, 0, 100, ""))
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REQUEST_COLUMNS)
        writer.writerows(rows)


def _flow_events(flow: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    status = flow.get("status", "ok")
    stop = flow.get("failed_step")
    base = {"run_id": run_id, "flow_id": flow["flow_id"], "user": flow["user"], "address": "0x0"}
    events, t, step_times = [], flow["t"], {}
    for step, weight in zip(STEPS, STEP_WEIGHTS, strict=True):
        duration = flow["duration_s"] * weight
        failed = status != "ok" and step == stop  # a cancelled step reports too, as the flow does
        events.append(
            {
                "kind": "step",
                **base,
                "step": step,
                "t": t,
                "duration_s": duration,
                "ok": not failed,
                "error": f"synthetic {status}" if failed else None,
                "error_class": flow.get("error_class") if failed else None,
                "attempts": 1,
                "wall": WALL0 + t,
            }
        )
        step_times[step] = duration
        t += duration
        if failed:
            break
    ok = status == "ok"
    flow_event = {
        "kind": "flow",
        **base,
        "t": flow["t"],
        "duration_s": flow["duration_s"] if ok else t - flow["t"],
        "ok": ok,
        "status": status,
        "error": None if ok else f"synthetic {status}",
        "error_class": flow.get("error_class"),
        "failed_step": stop,
        "data_size": "small",
        "bytes": 1024,
        "steps": step_times,
        "wall": WALL0 + flow["t"],
    }
    if "stage" in flow:
        flow_event.update(stage=flow["stage"], stage_users=flow["stage_users"])
    return [*events, flow_event]


def _write_samples(
    path, run_end, every, rss_base, slope, cpu, api_restart_at, rng, torn_tail
) -> None:
    times = np.arange(0.0, run_end + 1e-9, every)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "wall", "component", "pid", "metric", "value"])
        for t in times:
            rows = [
                ("driver", 100, "rss_mb", rss_base + slope * t / 60 + rng.normal(0, 0.2)),
                ("driver", 100, "cpu_pct", 20.0),
                ("driver", 100, "threads", 6),
                ("driver", 100, "loop_lag_ms", 1.0 + (t % 10)),
                ("system", "", "cpu_pct", cpu + rng.uniform(-1, 1)),
                ("system", "", "net_sent_bytes", 1000 * t),
                ("system", "", "net_recv_bytes", 2000 * t),
                ("personal", 103, "queue_depth", t % 5),
            ]
            for i, comp in enumerate(COMPONENTS):
                pid = 101 + i
                if comp == "api" and api_restart_at is not None and t >= api_restart_at:
                    pid = 201
                rows += [
                    (comp, pid, "rss_mb", 50.0 + 10 * i),
                    (comp, pid, "cpu_pct", 5.0 * (i + 1)),
                    (comp, pid, "open_files", 10 + i),
                    (comp, pid, "connections", 20 + i),
                    (comp, pid, "threads", 3),
                ]
            w.writerows((round(t, 3), WALL0 + t, c, pid, m, v) for c, pid, m, v in rows)
        if torn_tail:
            f.write(f"{run_end + every},{WALL0},driv")
