"""Per-request statistics: every RPC method and HTTP endpoint the flows called (`requests.csv`,
see `workbench.request_log`), and the retries inside each step (the step events' `attempts`).

Per (type, name), over the attempts recorded:

- `requests` attempts; `failures` attempts without a good answer; `retries` attempts that
  repeated a failed one; `rate_limited` answers that asked the client to slow down (HTTP 429, or
  JSON-RPC -32005 "limit exceeded" in a 200); `unavailable` HTTP 503 answers;
- latency of the successful attempts in milliseconds: `p50_ms, p90_ms, p95_ms, p99_ms, max_ms`
  (numpy's linear percentiles, as everywhere in the workbench; failures are left out, or a
  run of fast 429s would look like a fast endpoint);
- `throttled` attempts the client-side throttle (`rpc_rate_limit`) held back, `wait_s` in all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from workbench.steps import in_flow_order

PERCENTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}
COLUMNS = (
    "type",
    "name",
    "requests",
    "failures",
    "retries",
    "rate_limited",
    "unavailable",
    *PERCENTILES,
    "max_ms",
    "throttled",
    "wait_s",
)


def request_table(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per (type, name), sorted by type then name; columns `COLUMNS`."""
    if requests.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    r = requests.assign(
        failed=~requests["ok"],
        unavailable=requests["status"] == 503,
        throttled=requests["wait_ms"] > 0,
    )
    keys = ["type", "name"]
    table = r.groupby(keys).agg(
        requests=("ok", "size"),
        failures=("failed", "sum"),
        retries=("retry", "sum"),
        rate_limited=("rate_limited", "sum"),
        unavailable=("unavailable", "sum"),
        throttled=("throttled", "sum"),
        wait_ms=("wait_ms", "sum"),
    )
    ok = r[r["ok"]].groupby(keys)["ms"]
    if len(ok):
        quantiles = ok.quantile(np.array(list(PERCENTILES.values()))).unstack()
        quantiles.columns = list(PERCENTILES)
        table = table.join(quantiles).join(ok.max().rename("max_ms"))
    table["wait_s"] = table.pop("wait_ms") / 1000
    counts = ["requests", "failures", "retries", "rate_limited", "unavailable", "throttled"]
    table[counts] = table[counts].astype(int)
    return table.reset_index().reindex(columns=list(COLUMNS))


def request_summary(requests: pd.DataFrame, config: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json's `requests`: totals, `by_name` ("RPC eth_call": its row) and `throttle`."""
    table = request_table(requests)
    by_name = {
        f"{row['type']} {row['name']}": {k: row[k] for k in COLUMNS[2:]}
        for row in table.to_dict("records")
    }
    waits = requests.loc[requests["wait_ms"] > 0, "wait_ms"].astype(float)
    return {
        "total": len(requests),
        "failed": int((~requests["ok"]).sum()),
        "retried": int(requests["retry"].sum()),
        "rate_limited": int(requests["rate_limited"].sum()),
        "unavailable": int((requests["status"] == 503).sum()),
        "by_name": by_name,
        "throttle": {
            "limit_per_s": config.get("rpc_rate_limit"),
            "delayed": len(waits),
            "wait_s": float(waits.sum()) / 1000,
            "max_wait_ms": float(waits.max()) if len(waits) else None,
        },
    }


def step_retries(steps: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per step (flow order): `retries` (attempts beyond the first, summed) and `retried` (steps
    that needed more than one attempt)."""
    if steps.empty or "attempts" not in steps:
        return {}
    extra = (pd.to_numeric(steps["attempts"], errors="coerce").fillna(1) - 1).clip(lower=0)
    rows = {
        str(step): {"retries": int(x.sum()), "retried": int((x > 0).sum())}
        for step, x in extra.groupby(steps["step"])
    }
    return {step: rows[step] for step in in_flow_order(rows)}
