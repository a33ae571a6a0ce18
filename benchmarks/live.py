"""What the run's own recording costs the driver's event loop: one request row, one live refresh.

- `request_row_us`: recording one request attempt in the request log (`RequestLog.timed` around
  nothing), the CSV written once per second as in a run; `rows_per_s_at_1000_users` assumes
  ~5 requests per second per flow in flight (inference and receipt polls) and gives the share
  of one core that recording takes at 1,000 users.
- `panel_ms`, `status_line_ms`: one refresh of the live panel (HTML and SVG) and one status line
  with `--running` flows in flight and `--finished` finished ones.
- `matplotlib_png_ms`: the same latency plot drawn by matplotlib (Agg, PNG), the alternative
  the panel does not use: it would run on the same loop every refresh.

    python benchmarks/live.py [--rows 200000] [--running 1000] [--finished 5000]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.driver import live  # noqa: E402
from workbench.request_log import RequestLog  # noqa: E402
from workbench.steps import STEPS  # noqa: E402

REQUESTS_PER_FLOW_S = 5  # polls of an operation and a receipt, per flow in flight


def request_rows(n: int) -> float:
    """Microseconds of CPU per recorded request, flushes included."""
    with tempfile.TemporaryDirectory() as tmp:
        log = RequestLog(Path(tmp) / "requests.csv", flush_s=1.0)
        names = [("RPC", "eth_call"), ("POST", "/api/trusted-server/poll"), ("GET", "/identity")]
        started = time.process_time()
        for i in range(n):
            kind, name = names[i % 3]
            with log.timed(kind, name, bool(i % 17 == 0)) as record:
                record.status, record.nbytes = 200, 120
        log.close()
        return (time.process_time() - started) / n * 1e6


def live_stats(running: int, finished: int) -> live.LiveStats:
    rng = random.Random(0)
    stats = live.LiveStats()
    for flow_id in range(running + finished):
        stats.flow_started(flow_id)
        stats.at_step[flow_id] = rng.randrange(len(STEPS))
    for flow_id in range(running, running + finished):
        ok = rng.random() > 0.05
        stats.observe(
            {
                "kind": "flow",
                "flow_id": flow_id,
                "status": "ok" if ok else "failed",
                "duration_s": rng.uniform(20, 60),
                "t": flow_id * 0.1,
            }
        )
    return stats


def per_call_ms(fn, repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - started) / repeats * 1e3


def matplotlib_png_ms(stats: live.LiveStats, repeats: int) -> float:
    from matplotlib.figure import Figure

    points = stats.points[:: max(1, len(stats.points) // live.PLOT_POINTS)]

    def draw() -> None:
        fig = Figure(figsize=(3.6, 1.3), dpi=100)
        ax = fig.add_subplot()
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=4)
        fig.savefig(io.BytesIO(), format="png")

    draw()  # the first draw loads fonts: not what a refresh costs
    return per_call_ms(draw, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--running", type=int, default=1000)
    p.add_argument("--finished", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    row_us = request_rows(args.rows)
    stats = live_stats(args.running, args.finished)
    gauges = {key: 1.0 for key in live.GAUGES.values()}
    snap = live.snapshot(stats, 300.0, 600.0, None, gauges)
    rows_per_s = 1000 * REQUESTS_PER_FLOW_S
    print(
        json.dumps(
            {
                "request_row_us": round(row_us, 2),
                "rows_per_s_at_1000_users": rows_per_s,
                "recording_core_pct_at_1000_users": round(rows_per_s * row_us / 1e4, 2),
                "running": args.running,
                "finished": args.finished,
                "snapshot_ms": round(
                    per_call_ms(lambda: live.snapshot(stats, 300.0, 600.0), args.repeats), 3
                ),
                "panel_ms": round(
                    per_call_ms(lambda: live.panel_html(snap, stats.points), args.repeats), 3
                ),
                "panel_bytes": len(live.panel_html(snap, stats.points)),
                "status_line_ms": round(per_call_ms(lambda: live.status_line(snap), 1000), 4),
                "matplotlib_png_ms": round(matplotlib_png_ms(stats, 10), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
