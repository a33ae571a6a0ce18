"""Embedded stack and one timed flow: how long the stack takes to start, and one flow's steps.

Prints JSON:
- `stack_start_s`: median (and each) of `--starts` LocalStack starts on the profile (`startup_s`,
  anvil + deploy + servers ready), each followed by a stop (`stop_s`);
- `flows`: `--flows` sequential flows on one fresh stack (10 KB of data each, one fresh wallet per
  flow, one shared flow context as a run has): median and p95 of every step and of the total,
  plus the first flow alone (it opens the connections).

    .venv/bin/python benchmarks/flow.py [--profile fast] [--starts 3] [--flows 20]

Aims (fast profile): stack start under 5 s, a flow under 0.5 s median.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_account import Account

from workbench.driver.flow import FlowSettings, Wallet, flow_context, run_flow
from workbench.driver.shapes import make_user_data
from workbench.stack.local import LocalStack
from workbench.steps import STEPS


def _pct(values: list[float], q: float) -> float:
    """Inclusive quantile q (0.5 = median, 0.95 = p95)."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(_pct(values, 0.5) * 1e3, 2),
        "p95_ms": round(_pct(values, 0.95) * 1e3, 2),
    }


def stack_starts(profile: str, starts: int) -> dict:
    startup, stop = [], []
    for _ in range(starts):
        stack = LocalStack(profile)
        stack.start()
        startup.append(stack.startup_s)
        t0 = time.perf_counter()
        stack.stop()
        stop.append(time.perf_counter() - t0)
    return {
        "median_s": round(statistics.median(startup), 3),
        "each_s": [round(s, 3) for s in startup],
        "stop_median_s": round(statistics.median(stop), 3),
    }


def _wallet(i: int) -> Wallet:
    key = "0x" + hashlib.sha256(f"benchmarks/flow.py user {i}".encode()).hexdigest()
    return Wallet(i, Account.from_key(key).address, key)


async def sequential_flows(profile: str, flows: int) -> dict:
    events: list[dict] = []
    outcomes = []
    data = make_user_data("medium", 0, seed=0)
    async with LocalStack(profile) as stack:
        settings = FlowSettings.from_profile(stack.profile)
        async with flow_context(stack.endpoints, events.append, settings) as ctx:
            for i in range(flows):
                outcomes.append(
                    await run_flow(ctx, _wallet(i), data, flow_id=i, data_size="medium")
                )
    ok = [o for o in outcomes if o["ok"]]
    steps = {
        step: _summary([o["steps"][step] for o in ok if step in o["steps"]])
        for step in STEPS
        if any(step in o["steps"] for o in ok)
    }
    return {
        "count": flows,
        "ok": len(ok),
        "errors": sorted({o["error"] for o in outcomes if not o["ok"]}),
        "total": _summary([o["duration_s"] for o in ok]),
        "first_flow_ms": round(outcomes[0]["duration_s"] * 1e3, 2),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--flows", type=int, default=20)
    args = parser.parse_args()
    report = {
        "profile": args.profile,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "stack_start_s": stack_starts(args.profile, args.starts),
        "flows": asyncio.run(sequential_flows(args.profile, args.flows)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
