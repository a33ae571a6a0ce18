"""Driver cost under load: CPU per flow against the crypto floor, event-loop lag, memory, success.

For each user count, one fresh process runs the real `Runner` (embedded stack on the `fast`
profile, one flow per user, `burst` by default: every user starts at t=0) and reports, for the
flows phase only (from the first launch to the last outcome):

- `wall_s`, `flows_per_min`, `success_rate`, flow duration p50/p95;
- `driver_cpu_ms_per_flow`: user+system CPU of the driver's own pid (psutil; every thread of it:
  event loop, crypto pool, sampler), divided by the flows. The stack's servers and anvil are
  separate processes and are not in it (`stack_cpu_s` shows theirs beside); nothing is
  subtracted. `threads_cpu_s` splits it by thread (the crypto pool also builds the user data);
- `crypto_floor_ms`: what the flow's client-side crypto costs timed alone in the same process right
  after the run (`benchmarks/crypto.py`'s `crypto_floor` on the same data sizes), and `cpu_vs_floor`
  = driver CPU per flow / floor;
- `loop_lag_ms`: p50/p99/max delay of the run's 10 ms asyncio ticker (the Runner's `LoopLagProbe`,
  on the driver loop) while the flows ran; `control_loop_lag_ms`: the same ticker in a separate
  idle process over the same window, i.e. what the machine alone (stack, other users) costs a
  loop that does nothing; `loop_thread.runqueue_wait_s`: time the driver's loop thread was
  runnable but had no CPU (Linux schedstat);
- `peak_rss_mb`: the driver process's peak RSS (getrusage; the whole process lifetime, which is
  one run) and `rss_end_mb`.

    .venv/bin/python benchmarks/driver.py [--users 50 500] [--runs 3]
        [--shape burst|staggered --ramp-s 2] [--data-size medium] [--repeats 20] [--keep]
    .venv/bin/python benchmarks/driver.py --workers 2 [--users 2000]

`--workers N` runs each user count (default 2,000) twice, in-process and on a local Dask cluster
of N worker processes (`workbench.driver.cluster`), and prints them side by side: CPU per flow
(in-process: the driver; on Dask: the workers' processes, psutil, over the flows phase, with the
coordinator's beside it), loop lag p99 per flow-running process (worst per 0.5 s sample, from
samples.csv, for both modes alike; the idle control's beside it), RSS per 1,000 users (peak RSS
of every driver process summed: the workers and the coordinator), and flows/min.

`BENCH_CPROFILE=out.prof` adds a cProfile (thread CPU clock) of the loop thread over the flows
phase, for finding hot spots; never quote the figures of a profiled run.

Prints one JSON document. Each run is its own process, so peak RSS is per run; with `--runs K`
every figure is the median of K runs (the machine is shared: `system_cpu_busy_pct` and the loop
thread's `runqueue_wait_s` show how much of the lag was other processes holding the cores).
Wallets go to a temporary wallet file (not the shared `.wallets/`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from crypto import crypto_floor  # benchmarks/crypto.py

from workbench.driver.config import RunConfig
from workbench.driver.runner import Runner
from workbench.driver.shapes import make_user_data
from workbench.events import read_events


def _pct(values: list[float], q: float) -> float:
    """Inclusive quantile q in [0, 1] (median for 0.5)."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(q * 100) - 1] if q < 1 else max(values)


def _thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def _thread_group(name: str, main_id: int, tid: int) -> str:
    if tid == main_id:
        return "event_loop"
    for prefix in ("crypto", "sampler", "asyncio"):
        if name.startswith(prefix):
            return prefix
    return "other"


def _stack_procs(processes: dict[str, int]) -> dict:
    out = {}
    for component, pid in processes.items():
        if component != "driver":
            try:
                out[component] = psutil.Process(pid)
            except psutil.Error:
                pass
    return out


def _cpu_of(procs: dict) -> dict[str, float]:
    """User+system CPU seconds of each stack process (for context; never subtracted)."""
    out = {}
    for component, p in procs.items():
        try:
            t = p.cpu_times()
            out[component] = t.user + t.system
        except psutil.Error:
            pass
    return out


def _busy_pct(t0, t1) -> float:
    """Whole-machine CPU busy % between two psutil.cpu_times() (other engineers' work too)."""
    idle = (t1.idle + getattr(t1, "iowait", 0)) - (t0.idle + getattr(t0, "iowait", 0))
    total = sum(t1) - sum(t0)
    return round(100 * (1 - idle / total), 1) if total > 0 else 0.0


def _schedstat() -> tuple[int, int]:
    """(ns on CPU, ns runnable but waiting for a CPU) of the calling thread (Linux)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            run, wait, _ = (int(x) for x in f.read().split())
        return run, wait
    except (OSError, ValueError):
        return 0, 0


# A bare asyncio ticker in its own process, recording only between "go" and the end of stdin:
# the lag a loop that does nothing sees on this machine at the same time (the control).
_CONTROL_TICKER = """
import asyncio, json, statistics, sys, threading, time
go, stop, delays = threading.Event(), threading.Event(), []
def read():
    sys.stdin.readline(); go.set(); sys.stdin.readline(); stop.set()
async def main():
    threading.Thread(target=read, daemon=True).start()
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        if go.is_set():
            delays.append(max(0.0, (time.perf_counter() - before - 0.01) * 1000))
    q = statistics.quantiles(delays, n=100, method="inclusive") if len(delays) > 1 else [0.0] * 99
    print(json.dumps({"p50": round(q[49], 2), "p99": round(q[98], 2), "ticks": len(delays)}))
asyncio.run(main())
"""


class ControlTicker:
    """The control for `loop_lag_ms`: a 10 ms ticker in a separate, otherwise idle process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROL_TICKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        out, _ = self.proc.communicate("stop\n", timeout=10)
        return json.loads(out)


def _config(
    prefix: str, users: int, shape: str, ramp_s: float, data_size: str, **more
) -> RunConfig:
    """A `fast` run writing to a fresh temp dir, with its own wallet file there."""
    out_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["WORKBENCH_WALLET_FILE"] = str(out_dir / "wallets.json")
    return RunConfig.from_params(
        users=users,
        profile="fast",
        shape=shape,
        ramp_s=ramp_s,
        data_size=data_size,
        output_dir=str(out_dir),
        seed=0,
        **more,
    )


def _loop_profiler():
    """`BENCH_CPROFILE=path`: cProfile of the event-loop thread during the flows phase (for
    finding hot spots; it inflates the CPU figures, so never quote a profiled run)."""
    if not os.environ.get("BENCH_CPROFILE"):
        return None
    profiler = cProfile.Profile(time.thread_time)  # CPU of the loop thread, not waits
    profiler.enable()
    return profiler


def measure_one(
    users: int, shape: str, ramp_s: float, data_size: str, repeats: int, keep: bool = False
) -> dict:
    """One run in this process; returns its figures."""

    class MeasuredRunner(Runner):
        """The real Runner; only brackets its flows phase with measurements."""

        def _sampler(self, target):
            self.bench_sampler = super()._sampler(target)
            self.control = ControlTicker()  # starts now, records from go()
            return self.bench_sampler

        async def _drive(self, ctx, ws):
            proc, probe = psutil.Process(), self.bench_sampler.lag_probe
            lag_from = len(probe.delays_ms)
            stack = _stack_procs(self.bench_sampler.processes)
            stack0, sys0, sched0 = _cpu_of(stack), psutil.cpu_times(), _schedstat()
            before = {t.id: t.user_time + t.system_time for t in proc.threads()}
            self.control.go()
            cpu0, t0 = proc.cpu_times(), time.perf_counter()
            profiler = _loop_profiler()
            try:
                await super()._drive(ctx, ws)
            finally:
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(os.environ["BENCH_CPROFILE"])
                wall = time.perf_counter() - t0
                cpu1 = proc.cpu_times()
                stack1, sys1, sched1 = _cpu_of(stack), psutil.cpu_times(), _schedstat()
                after = {t.id: t.user_time + t.system_time for t in proc.threads()}
                names, groups = _thread_names(), Counter()
                for tid, cpu in after.items():
                    group = _thread_group(
                        names.get(tid, "?"), threading.main_thread().native_id, tid
                    )
                    groups[group] += cpu - before.get(tid, 0.0)
                # threads that ended inside the window (e.g. resolver threads) are in no group
                total = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                groups["ended_threads"] = max(0.0, total - sum(groups.values()))
                lag = sorted(probe.delays_ms[lag_from:])
                control = self.control.result()
                self.bench = {
                    "wall_s": wall,
                    "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                    "cpu_user_s": cpu1.user - cpu0.user,
                    "cpu_system_s": cpu1.system - cpu0.system,
                    "threads_cpu_s": {k: round(v, 3) for k, v in sorted(groups.items())},
                    "lag": lag,
                    "rss_end_mb": proc.memory_info().rss / 2**20,
                    "loop_thread": {
                        "cpu_s": round((sched1[0] - sched0[0]) / 1e9, 3),
                        "runqueue_wait_s": round((sched1[1] - sched0[1]) / 1e9, 3),
                    },
                    "stack_cpu_s": {
                        c: round(stack1[c] - stack0[c], 3) for c in stack1 if c in stack0
                    },
                    "system_cpu_busy_pct": _busy_pct(sys0, sys1),
                    "control_lag_ms": control,
                }

    config = _config("bench-driver-", users, shape, ramp_s, data_size)
    runner = MeasuredRunner(config, progress=True, out=sys.stderr)
    outcome = asyncio.run(runner.execute())
    b = runner.bench
    events = read_events(outcome.results_dir / "events.jsonl")
    flows = [e for e in events if e.get("kind") == "flow"]
    durations = [e["duration_s"] for e in flows if e["ok"]]
    failures = Counter(f"{e['failed_step']}:{e['error_class']}" for e in flows if not e["ok"])

    # The floor, timed alone in this process after the run (same sizes of data as the flows).
    sizes = Counter(e["data_size"] for e in flows)
    floors = {
        size: crypto_floor(make_user_data(size, 0, seed=0), repeats)["flow_floor"]["cpu_ms"]
        for size in sizes
    }
    floor_ms = sum(floors[s] * n for s, n in sizes.items()) / max(1, len(flows))
    n = max(1, len(flows))
    cpu_per_flow_ms = b["cpu_s"] / n * 1e3
    lag = b["lag"]
    sampled = _sampled(outcome.results_dir).get("driver", {})
    if not keep:
        shutil.rmtree(config.output_dir, ignore_errors=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "users": users,
        "shape": shape if shape == "burst" else f"{shape} over {ramp_s:g} s",
        "data_size": data_size,
        "flows": len(flows),
        "ok": sum(e["ok"] for e in flows),
        "success_rate": round(sum(e["ok"] for e in flows) / n, 4),
        "failures": dict(failures),
        "wall_s": round(b["wall_s"], 3),
        "flows_per_min": round(len(flows) / b["wall_s"] * 60, 1),
        "ok_flows_per_min": round(sum(e["ok"] for e in flows) / b["wall_s"] * 60, 1),
        "flow_duration_s": {
            "p50": round(_pct(durations, 0.5), 3),
            "p95": round(_pct(durations, 0.95), 3),
        },
        "driver_cpu_s": round(b["cpu_s"], 3),
        "driver_cpu_ms_per_flow": round(cpu_per_flow_ms, 2),
        "threads_cpu_s": b["threads_cpu_s"],
        "crypto_floor_ms": round(floor_ms, 2),
        "crypto_floor_by_size_ms": floors,
        "cpu_vs_floor": round(cpu_per_flow_ms / floor_ms, 2) if floor_ms else None,
        "loop_lag_ms": {
            "p50": round(_pct(lag, 0.5), 2),
            "p99": round(_pct(lag, 0.99), 2),
            "max": round(max(lag, default=0.0), 2),
            "ticks": len(lag),
        },
        "control_loop_lag_ms": b["control_lag_ms"],
        "loop_thread": b["loop_thread"],
        "stack_cpu_s": b["stack_cpu_s"],
        "system_cpu_busy_pct": b["system_cpu_busy_pct"],
        "peak_rss_mb": round(peak_rss, 1),
        "rss_mb_per_1000_users": round(peak_rss / users * 1000, 1),
        "sampled_loop_lag_p99_ms": {"driver": sampled.get("loop_lag_p99_ms")},
        "sampled_control_lag_p99_ms": {"driver": sampled.get("control_lag_p99_ms")},
        "rss_end_mb": round(b["rss_end_mb"], 1),
        "results_dir": str(outcome.results_dir) if keep else None,
    }


def _sampled(results_dir: Path) -> dict:
    """Per flow-running process, from samples.csv and summary-style reading: loop lag p99
    (worst per sample), its control's, peak RSS; the same statistic for both modes."""
    from workbench.analysis.results import load_samples

    samples = load_samples(results_dir / "samples.csv")
    out = {}
    for comp, rows in samples.groupby("component"):
        lag = rows.loc[rows["metric"] == "loop_lag_ms", "value"].tolist()
        if not lag:
            continue
        control = rows.loc[rows["metric"] == "control_lag_ms", "value"].tolist()
        rss = rows.loc[rows["metric"] == "rss_mb", "value"].tolist()
        out[comp] = {
            "loop_lag_p99_ms": round(_pct(lag, 0.99), 1),
            "control_lag_p99_ms": round(_pct(control, 0.99), 1) if control else None,
            "peak_rss_mb": round(max(rss), 1) if rss else None,
        }
    return out


def measure_workers(users: int, workers: int, shape: str, ramp_s: float, data_size: str) -> dict:
    """One run on a local Dask cluster of `workers` processes; its figures."""
    import psutil

    from workbench.driver.cluster import Coordinator
    from workbench.driver.runner import Runner
    from workbench.events import read_events

    bench: dict = {}

    class MeasuredCoordinator(Coordinator):
        """The real coordinator; brackets the flows phase (agreed start to last shard)."""

        async def _start(self, runner):
            self.procs = {w.index: psutil.Process(w.pid) for w in self.workers}
            self.cpu0 = {i: sum(p.cpu_times()[:2]) for i, p in self.procs.items()}
            self.me, self.t0 = psutil.Process(), time.perf_counter()
            self.me0 = sum(self.me.cpu_times()[:2])
            return await super()._start(runner)

        async def _until_done(self):
            try:
                await super()._until_done()
            finally:
                cpu = {}
                for i, p in self.procs.items():
                    try:
                        cpu[i] = sum(p.cpu_times()[:2]) - self.cpu0[i]
                    except psutil.Error:
                        cpu[i] = None
                bench.update(
                    wall_s=time.perf_counter() - self.t0 - 1.0,  # less START_LEAD_S
                    workers_cpu_s=cpu,
                    coordinator_cpu_s=sum(self.me.cpu_times()[:2]) - self.me0,
                )

    class MeasuredRunner(Runner):
        async def _cluster(self, stack):
            self.cluster = await stack.enter_async_context(
                MeasuredCoordinator(self.cfg, self.console.say)
            )

    config = _config("bench-workers-", users, shape, ramp_s, data_size, workers=workers)
    outcome = asyncio.run(MeasuredRunner(config, progress=True, out=sys.stderr).execute())
    flows = [e for e in read_events(outcome.results_dir / "events.jsonl") if e["kind"] == "flow"]
    n = max(1, len(flows))
    sampled = _sampled(outcome.results_dir)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    cpu = [v for v in bench["workers_cpu_s"].values() if v is not None]
    rss = [p["peak_rss_mb"] for p in sampled.values() if p["peak_rss_mb"]]
    return {
        "users": users,
        "workers": workers,
        "flows": len(flows),
        "success_rate": round(sum(e["ok"] for e in flows) / n, 4),
        "failures": dict(
            Counter(f"{e['failed_step']}:{e['error_class']}" for e in flows if not e["ok"])
        ),
        "wall_s": round(bench["wall_s"], 2),
        "flows_per_min": round(len(flows) / bench["wall_s"] * 60, 1),
        "ok_flows_per_min": round(sum(e["ok"] for e in flows) / bench["wall_s"] * 60, 1),
        "cpu_ms_per_flow": round(sum(cpu) / n * 1e3, 2),
        "coordinator_cpu_ms_per_flow": round(bench["coordinator_cpu_s"] / n * 1e3, 2),
        "loop_lag_p99_ms": {c: p["loop_lag_p99_ms"] for c, p in sampled.items() if c != "driver"},
        "control_lag_p99_ms": {
            c: p["control_lag_p99_ms"] for c, p in sampled.items() if c != "driver"
        },
        "peak_rss_mb": {c: p["peak_rss_mb"] for c, p in sampled.items()},
        "rss_mb_per_1000_users": round(sum(rss) / users * 1000, 1),
    }


def side_by_side(here: dict, dask: dict) -> dict:
    """The four figures the issue asks for, in-process vs on Dask."""
    return {
        "cpu_ms_per_flow": [here.get("driver_cpu_ms_per_flow"), dask.get("cpu_ms_per_flow")],
        "loop_lag_p99_ms_per_process": [
            here.get("sampled_loop_lag_p99_ms"),
            dask.get("loop_lag_p99_ms"),
        ],
        "rss_mb_per_1000_users": [
            here.get("rss_mb_per_1000_users"),
            dask.get("rss_mb_per_1000_users"),
        ],
        "flows_per_min": [here.get("flows_per_min"), dask.get("flows_per_min")],
        "ok_flows_per_min": [here.get("ok_flows_per_min"), dask.get("ok_flows_per_min")],
        "success_rate": [here.get("success_rate"), dask.get("success_rate")],
        "columns": ["in_process", f"workers_{dask.get('workers')}"],
    }


def median_of(runs: list[dict]) -> dict:
    """Leaf-wise median of the runs' numeric figures (other leaves from the first run)."""
    first = runs[0]
    out: dict = {}
    for key, value in first.items():
        values = [r.get(key) for r in runs]
        if isinstance(value, dict):
            out[key] = median_of([v for v in values if isinstance(v, dict)])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            nums = [v for v in values if isinstance(v, int | float)]
            out[key] = round(statistics.median(nums), 3)
        else:
            out[key] = value
    return out


def _child(args: argparse.Namespace, users: int, ramp_s: float, workers: int = 0) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        "--workers",
        str(workers),
        "--users",
        str(users),
        "--shape",
        args.shape,
        "--ramp-s",
        str(ramp_s),
        "--data-size",
        args.data_size,
        "--repeats",
        str(args.repeats),
        *(["--keep"] if args.keep else []),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"users": users, "error": f"exit {done.returncode}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", help="default 50 500; with --workers, 2000")
    parser.add_argument(
        "--workers", type=int, default=0, help="N: also run on N Dask workers, side by side"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per user count (medians)")
    parser.add_argument("--shape", default="burst", choices=["burst", "staggered"])
    parser.add_argument("--ramp-s", type=float, default=0.0, help="for --shape staggered")
    parser.add_argument("--data-size", default="medium", help="small | medium | large | mixed")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each floor op")
    parser.add_argument("--keep", action="store_true", help="keep each run's results dir")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    ramp_s = args.ramp_s if args.shape == "staggered" else 0.0
    args.users = args.users or ([2000] if args.workers else [50, 500])
    if args.one:
        if args.workers:
            figures = measure_workers(
                args.users[0], args.workers, args.shape, ramp_s, args.data_size
            )
        else:
            figures = measure_one(
                args.users[0], args.shape, ramp_s, args.data_size, args.repeats, args.keep
            )
        print(json.dumps(figures))
        return
    report = {"profile": "fast", "cpus": os.cpu_count(), "runs_per_count": args.runs}
    if args.workers:  # one run each: in-process, then on Dask
        for users in args.users:
            here = _child(args, users, ramp_s)
            dask = _child(args, users, ramp_s, args.workers)
            report[f"users_{users}"] = {
                "side_by_side": side_by_side(here, dask),
                "in_process": here,
                f"workers_{args.workers}": dask,
            }
        print(json.dumps(report, indent=2))
        return
    for users in args.users:
        runs = [_child(args, users, ramp_s) for _ in range(args.runs)]
        good = [r for r in runs if "error" not in r]
        entry = median_of(good) if good else {"users": users}
        if args.runs > 1:
            entry["per_run"] = {
                key: [r.get(key) for r in good]
                for key in ("driver_cpu_ms_per_flow", "cpu_vs_floor", "wall_s", "success_rate")
            }
            entry["per_run"]["loop_lag_p99_ms"] = [r["loop_lag_ms"]["p99"] for r in good]
        entry["failed_runs"] = len(runs) - len(good)
        report[f"users_{users}"] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
