"""Resource sampling during a run: psutil per process, system totals, the stack's gauges.

Every `interval_s` the `Sampler` appends long-format rows `t, wall, component, pid, metric, value`
to `samples.csv` and flushes them, so a killed run keeps what it sampled.

- per process (the driver plus each stack component): `cpu_pct` (% of ONE core, so a busy
  multi-threaded process can exceed 100), `rss_mb`, `num_fds`, `open_files`, `connections` (inet
  sockets), `threads`; a process that dies is recorded once as `alive 0` and then skipped;
- `system`: `cpu_pct` (all cores, 0-100), `net_sent_bytes` / `net_recv_bytes` (cumulative,
  loopback included: the local stack talks over 127.0.0.1);
- gauges: every numeric value of each component's `/metrics` JSON, and anvil's `txpool_pending` /
  `txpool_queued` from `txpool_status`; a failed fetch is skipped, never fatal;
- `driver loop_lag_ms`: the worst event-loop lateness seen by a `LoopLagProbe` in the interval;
- `driver control_lag_ms`: the same for an idle `ControlTicker` in its own process over the same
  window (what the machine alone costs a loop that does nothing: the control of loop_lag_ms);
- `driver loop_cpu_pct` / `crypto_cpu_pct`: CPU of the event-loop thread and of the crypto pool's
  threads, % of one core (a loop near 100 % is the driver's own bottleneck).

On a Dask worker the sampled process is named `worker<i>` instead of `driver`, and rows go to a
`sink` (streamed to the coordinator) instead of a CSV.

The psutil work runs in the sampler's own thread so it does not stall the event loop that times
the users' flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import socket
import stat
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from workbench.events import Clock

HEADER = ("t", "wall", "component", "pid", "metric", "value")
Row = tuple[float, float, str, int | str, str, float]


class LoopLagProbe:
    """Measures how late a `tick_s` ticker wakes: a direct reading of event-loop stalls.

    All delays are kept (8 bytes each, 100 per second) so p50/p99 can be reported after a run;
    `take_max()` gives the sampler the worst delay since its previous call.
    """

    def __init__(self, tick_s: float = 0.01):
        self.tick_s = tick_s
        self.delays_ms: list[float] = []
        self._window_max = 0.0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            late_ms = max(0.0, (time.perf_counter() - before - self.tick_s) * 1000)
            self.delays_ms.append(late_ms)
            self._window_max = max(self._window_max, late_ms)

    def take_max(self) -> float:
        """The worst delay (ms) since the last call, then resets the window."""
        worst, self._window_max = self._window_max, 0.0
        return worst

    def percentiles(self) -> dict[str, float]:
        """p50 / p99 / max of all delays so far, in ms (zeros before the first tick)."""
        if len(self.delays_ms) < 2:
            worst = max(self.delays_ms, default=0.0)
            return {"p50": worst, "p99": worst, "max": worst, "count": len(self.delays_ms)}
        cuts = statistics.quantiles(self.delays_ms, n=100, method="inclusive")
        return {
            "p50": cuts[49],
            "p99": cuts[98],
            "max": max(self.delays_ms),
            "count": len(self.delays_ms),
        }

    async def __aenter__(self) -> LoopLagProbe:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# The control: a bare 10 ms asyncio ticker in its own process, printing its delays (ms) as one
# JSON list per half second. It exits when its stdout closes (the driver stopped or died).
_CONTROL_TICKER = """
import asyncio, json, sys, time
async def main(tick=0.01):
    batch, last = [], time.monotonic()
    while True:
        before = time.perf_counter()
        await asyncio.sleep(tick)
        batch.append(round(max(0.0, (time.perf_counter() - before - tick) * 1000), 3))
        if time.monotonic() - last >= 0.5:
            print(json.dumps(batch), flush=True)
            batch, last = [], time.monotonic()
try:
    asyncio.run(main())
except (BrokenPipeError, KeyboardInterrupt):
    pass
"""


class ControlTicker:
    """The control of `LoopLagProbe`: the same ticker in a separate, otherwise idle process.

    Lag it sees too comes from the machine (the stack, neighbours, too few cores); lag only the
    driver's loop sees is the driver's own. Same interface as the probe: `take_max()` per
    sample, `delays_ms` in full. A reader thread collects its lines, off the event loop.
    """

    def __init__(self) -> None:
        self.delays_ms: list[float] = []
        self._window_max = 0.0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROL_TICKER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="control-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                batch = [float(v) for v in json.loads(line)]
                with self._lock:
                    self.delays_ms += batch
                    self._window_max = max(self._window_max, *batch, 0.0)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def take_max(self) -> float:
        """The worst delay (ms) since the last call, then resets the window."""
        with self._lock:
            worst, self._window_max = self._window_max, 0.0
        return worst


class Sampler:
    """Samples processes, the system and the stack's gauges into `out_csv` every `interval_s`."""

    def __init__(
        self,
        out_csv: str | Path | None,
        processes: dict[str, int] | None = None,
        gauges: dict[str, str] | None = None,
        rpc_url: str | None = None,
        interval_s: float = 0.5,
        clock: Clock | None = None,
        lag_probe: LoopLagProbe | None = None,
        http_timeout_s: float = 1.0,
        control: ControlTicker | None = None,
        name: str = "driver",
        sink: Callable[[list[Row]], None] | None = None,
    ):
        self.out_csv = Path(out_csv) if out_csv is not None else None
        self.name = name  # this process's component: driver, or worker<i> on a Dask worker
        self.sink = sink  # rows go here instead of the CSV (a worker streams them)
        self.control = control
        self.processes: dict[str, int] = {name: os.getpid(), **(processes or {})}
        self.gauges = dict(gauges or {})
        self.rpc_url = rpc_url
        self.interval_s = interval_s
        self.clock = clock or Clock()
        self.lag_probe = lag_probe
        self.http_timeout_s = http_timeout_s
        self.ticks = 0
        self.tick_cpu_ms: list[float] = []  # CPU the psutil part of each tick cost (thread time)
        # The newest value of each (component, metric): what the live view shows.
        self.latest: dict[tuple[str, str], float] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._dead: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._file: Any = None
        self._writer: Any = None
        self._owns_probe = False
        self._loop_tid: int | None = None  # the event loop's thread (native id)
        self._thread_cpu: dict[int, float] = {}  # CPU seconds per thread at the last tick
        self._thread_t = 0.0

    def add_process(self, component: str, pid: int) -> None:
        """Starts sampling another process (e.g. a crypto pool worker) from the next tick."""
        self.processes[component] = pid
        self._dead.discard(component)
        self._procs.pop(component, None)

    async def start(self) -> None:
        if self._task is not None:
            return
        self._open_csv()
        self._loop_tid = threading.get_native_id()  # start() runs on the loop it watches
        if self.control is not None:
            self.control.start()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._prime)
        if self.gauges or self.rpc_url:
            timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        if self.lag_probe is not None and not self.lag_probe.running:
            await self.lag_probe.start()
            self._owns_probe = True
            self.lag_probe.take_max()
        self._task = asyncio.create_task(self._run(), name="sampler")

    async def stop(self) -> None:
        """Takes one last sample, then closes everything; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):  # a final sample is a bonus, never a failure
            await self.tick()
        if self._owns_probe and self.lag_probe is not None:
            await self.lag_probe.stop()
            self._owns_probe = False
        if self.control is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.control.stop)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None

    async def __aenter__(self) -> Sampler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        # Absolute deadlines: a slow tick delays the next one but the cadence does not drift.
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.tick()
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:  # overran: skip the missed ticks rather than bursting
                next_at = now + self.interval_s
            await asyncio.sleep(next_at - now)

    async def tick(self) -> list[Row]:
        """Takes one sample of everything and appends it to the CSV; returns the rows.

        Called by the sampling task; call it directly (after `start()`) for an extra sample.
        """
        t, wall = self.clock.now(), time.time()
        loop = asyncio.get_running_loop()
        local, remote = await asyncio.gather(
            loop.run_in_executor(self._pool, self._sample_local),
            self._sample_gauges(),
        )
        rows: list[Row] = [(t, wall, c, pid, m, v) for c, pid, m, v in local + remote]
        pid = self.processes[self.name]
        if self.lag_probe is not None:
            rows.append((t, wall, self.name, pid, "loop_lag_ms", self.lag_probe.take_max()))
        if self.control is not None:
            rows.append((t, wall, self.name, pid, "control_lag_ms", self.control.take_max()))
        self._write(rows)
        self.latest.update(((c, m), v) for _, _, c, _, m, v in rows)
        self.ticks += 1
        return rows

    # --- CSV -----------------------------------------------------------------------------------

    def _open_csv(self) -> None:
        if self.out_csv is None:
            return
        self.out_csv.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.out_csv.exists() or self.out_csv.stat().st_size == 0
        self._file = open(self.out_csv, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if fresh:  # appending to a resumed run must not repeat the header
            self._writer.writerow(HEADER)
            self._file.flush()

    def write_rows(self, rows: list[Row]) -> None:
        """Appends rows sampled elsewhere (a Dask worker's) to this sampler's CSV."""
        self._write(rows)

    def _write(self, rows: list[Row]) -> None:
        if self.sink is not None:
            self.sink(rows)
            return
        if self._file is None:
            return
        self._writer.writerows(
            (f"{t:.3f}", f"{wall:.3f}", c, pid, m, _fmt(v)) for t, wall, c, pid, m, v in rows
        )
        self._file.flush()  # a kill -9 keeps every completed tick

    # --- psutil (runs in the sampler thread) -----------------------------------------------------

    def _prime(self) -> None:
        # cpu_percent(None) measures since the previous call; the first call only sets the origin.
        psutil.cpu_percent(None)
        for component in self.processes:
            self._process(component)
        self._thread_cpu_pct()  # sets the origin of the threads' CPU

    def _process(self, component: str) -> psutil.Process | None:
        proc = self._procs.get(component)
        if proc is None and component not in self._dead:
            try:
                proc = psutil.Process(self.processes[component])
            except psutil.NoSuchProcess:
                return None
            with contextlib.suppress(psutil.Error):  # denied: sample what we may; gone: next tick
                proc.cpu_percent(None)
            self._procs[component] = proc
        return proc

    def _sample_local(self) -> list[tuple[str, int | str, str, float]]:
        started = time.thread_time()
        out: list[tuple[str, int | str, str, float]] = []
        inet_inodes = _inet_socket_inodes()
        for component in list(self.processes):
            if component not in self._dead:
                out += self._sample_process(component, inet_inodes)
        pid = self.processes[self.name]
        out += [(self.name, pid, m, v) for m, v in self._thread_cpu_pct().items()]
        out.append(("system", "", "cpu_pct", psutil.cpu_percent(None)))
        net = psutil.net_io_counters()
        out.append(("system", "", "net_sent_bytes", float(net.bytes_sent)))
        out.append(("system", "", "net_recv_bytes", float(net.bytes_recv)))
        self.tick_cpu_ms.append((time.thread_time() - started) * 1000)
        return out

    def _sample_process(
        self, component: str, inet_inodes: set[str] | None
    ) -> list[tuple[str, int | str, str, float]]:
        pid = self.processes[component]
        proc = self._process(component)
        if proc is None or not proc.is_running():
            return self._mark_dead(component, pid)
        values: dict[str, float] = {}
        try:
            with proc.oneshot():  # one read of /proc/<pid>/stat for cpu, rss and threads
                if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
                    return self._mark_dead(component, pid)
                values["cpu_pct"] = proc.cpu_percent(None)
                values["rss_mb"] = proc.memory_info().rss / 2**20
                values["threads"] = proc.num_threads()
                values["num_fds"] = proc.num_fds()
        except psutil.NoSuchProcess:
            return self._mark_dead(component, pid)
        except psutil.AccessDenied:
            pass  # another user's process: keep what we could read
        values.update(_optional_counts(proc, inet_inodes))
        return [(component, pid, metric, float(v)) for metric, v in values.items()]

    def _thread_cpu_pct(self) -> dict[str, float]:
        """CPU of this process's event-loop thread and crypto threads since the last call, as %
        of one core (empty on the first call, which sets the origin)."""
        proc = self._process(self.name)
        if proc is None or self._loop_tid is None:
            return {}
        try:
            now, times = (
                time.monotonic(),
                {t.id: t.user_time + t.system_time for t in proc.threads()},
            )
        except psutil.Error:
            return {}
        names = {t.native_id: t.name for t in threading.enumerate()}
        before, span = self._thread_cpu, now - self._thread_t
        self._thread_cpu, self._thread_t = times, now
        if not before or span <= 0:
            return {}
        used = {"loop_cpu_pct": 0.0, "crypto_cpu_pct": 0.0}
        for tid, cpu in times.items():
            if tid == self._loop_tid:
                used["loop_cpu_pct"] += cpu - before.get(tid, 0.0)
            elif (names.get(tid) or "").startswith("crypto"):
                used["crypto_cpu_pct"] += cpu - before.get(tid, 0.0)
        return {metric: 100 * max(0.0, cpu) / span for metric, cpu in used.items()}

    def _mark_dead(self, component: str, pid: int) -> list[tuple[str, int | str, str, float]]:
        self._dead.add(component)
        self._procs.pop(component, None)
        return [(component, pid, "alive", 0.0)]

    # --- gauges (on the event loop, over one aiohttp session) ------------------------------------

    async def _sample_gauges(self) -> list[tuple[str, int | str, str, float]]:
        if self._session is None:
            return []
        jobs = [self._fetch_metrics(c, url) for c, url in self.gauges.items()]
        if self.rpc_url:
            jobs.append(self._fetch_txpool(self.rpc_url))
        out: list[tuple[str, int | str, str, float]] = []
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, list):  # an exception means that gauge is skipped this tick
                out += result
        return out

    async def _fetch_metrics(self, component: str, url: str) -> list:
        assert self._session is not None
        async with self._session.get(url) as resp:
            resp.raise_for_status()
            body = await resp.json(content_type=None)
        pid = self.processes.get(component, "")
        return [(component, pid, name, float(v)) for name, v in _numeric_items(body)]

    async def _fetch_txpool(self, rpc_url: str) -> list:
        assert self._session is not None
        payload = {"jsonrpc": "2.0", "id": 1, "method": "txpool_status", "params": []}
        async with self._session.post(rpc_url, json=payload) as resp:
            resp.raise_for_status()
            result = (await resp.json(content_type=None))["result"]
        pid = self.processes.get("anvil", "")
        return [
            ("anvil", pid, f"txpool_{key}", float(int(str(result[key]), 0)))
            for key in ("pending", "queued")
            if key in result
        ]


def _optional_counts(proc: psutil.Process, inet_inodes: set[str] | None) -> dict[str, float]:
    """Open regular files and inet sockets; each is skipped alone when the OS denies it."""
    if inet_inodes is not None:  # Linux: both from one pass over the fds
        with contextlib.suppress(OSError):
            return _count_fds(proc.pid, inet_inodes)
        return {}
    out: dict[str, float] = {}
    with contextlib.suppress(psutil.AccessDenied, psutil.NoSuchProcess):
        out["open_files"] = len(proc.open_files())
    with contextlib.suppress(psutil.AccessDenied, psutil.NoSuchProcess, OSError):
        out["connections"] = len(proc.net_connections(kind="inet"))
    return out


def _inet_socket_inodes() -> set[str] | None:
    """Inodes of every TCP/UDP socket, read once per tick (Linux; None elsewhere).

    psutil's `Process.net_connections()` re-reads /proc/net/tcp* for each process, which costs
    ~1 ms per file on a VM; reading the tables once and matching fds makes that cost per tick.
    The tables come from the kernel's sock_diag netlink interface when it answers: /proc/net/tcp
    also lists every TIME_WAIT socket of the machine (inode 0, no process's fd), and with the
    ~15,000 a load test leaves it cost ~25 ms of CPU per read, most of the sampler's tick.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return _diag_inodes()
    except (OSError, struct.error):
        pass  # no netlink here (a sandbox): read the text tables
    inodes: set[str] = set()
    try:
        for table in ("tcp", "tcp6", "udp", "udp6"):
            with open(f"/proc/net/{table}", encoding="ascii") as f:
                next(f, None)  # header
                inodes.update(line.split()[9] for line in f)
    except (OSError, IndexError):
        return None  # unusual /proc: let psutil do it per process
    return inodes


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): one dump per family and protocol of the
# sockets in any state but TIME_WAIT (which no process holds), answering their inodes.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST = 4, 20, 0x301
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NOT_TIME_WAIT = 0xFFF & ~(1 << 6)  # a bit per TCP state; UDP sockets use the same numbers
_DIAG_INODE_AT = 16 + 4 + 48 + 16  # nlmsghdr, inet_diag_msg head, sockid, 4 u32 before inode


def _diag_inodes() -> set[str]:
    inodes: set[str] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                req = struct.pack("=BBBxI48x", family, proto, 0, _NOT_TIME_WAIT)
                nl.send(
                    struct.pack(
                        "=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_DUMP_REQUEST, 1, 0
                    )
                    + req
                )
                _read_dump(nl, inodes)
    return inodes


def _read_dump(nl: socket.socket, inodes: set[str]) -> None:
    while True:
        data = nl.recv(1 << 16)
        offset = 0
        while offset < len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR or length < 16:
                raise OSError("sock_diag refused the dump")
            (inode,) = struct.unpack_from("=I", data, offset + _DIAG_INODE_AT)
            inodes.add(str(inode))
            offset += (length + 3) & ~3


def _count_fds(pid: int, inodes: set[str]) -> dict[str, float]:
    """`open_files` (fds on a regular file, as psutil's `open_files()` counts them) and
    `connections` (fds on a socket in `inodes`), from one readlink of each fd: psutil would read
    every fd's link a second time (and each file's fdinfo) to list the files."""
    fd_dir = f"/proc/{pid}/fd"
    files = sockets = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # an fd closed while we looked
            link = os.readlink(f"{fd_dir}/{fd}")
            if link.startswith("socket:["):
                sockets += link[8:-1] in inodes
            elif link.startswith("/"):
                files += stat.S_ISREG(os.stat(link).st_mode)
    return {"open_files": files, "connections": sockets}


def _numeric_items(body: Any, prefix: str = ""):
    """Yields `(name, number)` for numeric leaves of a /metrics JSON; nested keys join with '.'."""
    if not isinstance(body, dict):
        return
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue  # a flag is not a gauge
        if isinstance(value, int | float):
            yield name, value
        elif isinstance(value, dict):
            yield from _numeric_items(value, f"{name}.")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"
