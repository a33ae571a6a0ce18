"""CPU the resource sampler costs the driver per tick.

Samples four idle child processes (standing in for anvil, storage, API and personal server), two
JSON gauges and the txpool from a local server, every `--interval-s` for `--seconds`. Prints JSON:
the driver's CPU per tick (`process_time`, everything in the process) and the part spent in
psutil calls (`Sampler.tick_cpu_ms`), and what that costs one core at the runner's 0.5 s cadence.

    python benchmarks/sampler.py [--seconds 2] [--interval-s 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.driver.sampler import Sampler

COMPONENTS = ("anvil", "storage", "api", "personal")
RUNNER_INTERVAL_S = 0.5  # the cadence a run samples at (`Sampler`'s default)


async def _metrics_server() -> tuple[web.AppRunner, str]:
    async def metrics(_request: web.Request) -> web.Response:
        return web.json_response({"queue_depth": 1, "in_flight": 0})

    async def rpc(_request: web.Request) -> web.Response:
        result = {"pending": "0x0", "queued": "0x0"}
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": result})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.post("/", rpc)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def measure(pids: dict[str, int], seconds: float, interval_s: float) -> dict:
    runner, base = await _metrics_server()
    gauges = {"personal": f"{base}/metrics", "api": f"{base}/metrics"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            async with Sampler(Path(tmp) / "samples.csv", pids, gauges, base, interval_s) as s:
                await asyncio.sleep(seconds)
            cpu_ms = (time.process_time() - cpu0) * 1000 / s.ticks
            wall_s = time.perf_counter() - wall0
    finally:
        await runner.cleanup()
    return {
        "ticks": s.ticks,
        "cpu_ms_per_tick_total": round(cpu_ms, 2),
        "cpu_ms_per_tick_psutil": round(sum(s.tick_cpu_ms) / len(s.tick_cpu_ms), 2),
        "pct_of_one_core_at_0.5s": round(cpu_ms / (RUNNER_INTERVAL_S * 1000) * 100, 2),
        "wall_s": round(wall_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--interval-s", type=float, default=0.05)
    args = parser.parse_args()
    idle = [sys.executable, "-c", "import time; time.sleep(600)"]
    children = {name: subprocess.Popen(idle) for name in COMPONENTS}
    try:
        pids = {name: child.pid for name, child in children.items()}
        report = asyncio.run(measure(pids, args.seconds, args.interval_s))
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
