"""The sampler against real child processes and a tiny local /metrics server."""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from workbench.driver import sampler
from workbench.driver.sampler import (
    HEADER,
    LoopLagProbe,
    Sampler,
    _diag_inodes,
    _optional_counts,
)

BUSY = "while True: pass"
IDLE = "import time; time.sleep(60)"


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def children():
    procs: list[subprocess.Popen] = []

    def start(code: str) -> subprocess.Popen:
        procs.append(_spawn(code))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _values(rows, component: str, metric: str) -> list[float]:
    return [
        float(r["value"]) for r in rows if r["component"] == component and r["metric"] == metric
    ]


@pytest.mark.e2e
async def test_rows_per_interval_and_busy_beats_idle(tmp_path, children):
    busy, idle = children(BUSY), children(IDLE)
    out = tmp_path / "samples.csv"
    async with Sampler(out, {"busy": busy.pid, "idle": idle.pid}, interval_s=0.2) as sampler:
        await asyncio.sleep(1.3)
    rows = _rows(out)
    assert list(rows[0]) == list(HEADER)
    assert {r["component"] for r in rows} >= {"driver", "busy", "idle", "system"}
    ticks = sorted({float(r["t"]) for r in rows})
    assert len(ticks) == sampler.ticks >= 6  # ~1.3 s / 0.2 s, plus the final sample at stop
    gaps = [b - a for a, b in zip(ticks, ticks[1:-1], strict=False)]
    assert max(gaps) < 1.0  # the cadence holds (loosely: a shared 2-core machine)
    for metric in ("cpu_pct", "rss_mb", "open_files", "connections", "threads", "num_fds"):
        assert _values(rows, "busy", metric), metric
    assert {r["pid"] for r in rows if r["component"] == "busy"} == {str(busy.pid)}
    busy_cpu = _values(rows, "busy", "cpu_pct")[1:]
    idle_cpu = _values(rows, "idle", "cpu_pct")[1:]
    assert sum(busy_cpu) / len(busy_cpu) > 30 > max(idle_cpu)
    assert all(0 <= v <= 100 for v in _values(rows, "system", "cpu_pct"))
    sent = _values(rows, "system", "net_sent_bytes")
    assert sent == sorted(sent)  # cumulative counters


@pytest.mark.e2e
async def test_process_that_exits_is_recorded_once_then_skipped(tmp_path, children):
    short = children("import time; time.sleep(0.3)")  # never reaped while sampled: a zombie
    out = tmp_path / "samples.csv"
    async with Sampler(out, {"short": short.pid, "gone": 2**22 + 7}, interval_s=0.1):
        await asyncio.sleep(1.0)
    rows = _rows(out)
    for component in ("short", "gone"):
        mine = [r for r in rows if r["component"] == component]
        assert [r["metric"] for r in mine].count("alive") == 1
        assert mine[-1]["metric"] == "alive" and mine[-1]["value"] == "0"
    assert _values(rows, "short", "cpu_pct")  # it was sampled while it lived
    assert _values(rows, "driver", "rss_mb")  # the others carried on


async def _metrics_server(body: dict) -> tuple[web.AppRunner, str]:
    async def metrics(_request):
        return web.json_response(body)

    async def rpc(request):
        call = await request.json()
        assert call["method"] == "txpool_status"
        return web.json_response(
            {"jsonrpc": "2.0", "id": 1, "result": {"pending": "0x2", "queued": "0x0"}}
        )

    async def broken(_request):
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.post("/", rpc), web.get("/broken", broken)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def test_gauges_and_txpool_land_in_csv(tmp_path):
    body = {"queue_depth": 3, "in_flight": 1.5, "name": "ps", "ready": True, "nested": {"x": 4}}
    runner, base = await _metrics_server(body)
    out = tmp_path / "samples.csv"
    gauges = {
        "personal": f"{base}/metrics",
        "api": f"{base}/broken",  # a failing gauge is skipped, not fatal
        "storage": "http://127.0.0.1:9/metrics",  # nothing listens there
    }
    try:
        async with Sampler(out, gauges=gauges, rpc_url=base, interval_s=0.2):
            await asyncio.sleep(0.5)
    finally:
        await runner.cleanup()
    rows = _rows(out)
    assert _values(rows, "personal", "queue_depth")[0] == 3
    assert _values(rows, "personal", "in_flight")[0] == 1.5
    assert _values(rows, "personal", "nested.x")[0] == 4
    assert not _values(rows, "personal", "name") and not _values(rows, "personal", "ready")
    assert _values(rows, "anvil", "txpool_pending")[0] == 2
    assert not [r for r in rows if r["component"] in ("api", "storage")]


async def test_loop_lag_probe_sees_a_blocking_call(tmp_path):
    probe = LoopLagProbe(tick_s=0.01)
    out = tmp_path / "samples.csv"
    async with Sampler(out, interval_s=0.3, lag_probe=probe):
        await asyncio.sleep(0.35)
        time.sleep(0.1)  # noqa: ASYNC251 (a deliberate 100 ms stall of the event loop)
        await asyncio.sleep(0.35)
    assert not probe.running  # the sampler started it, so it stopped it
    lags = _values(_rows(out), "driver", "loop_lag_ms")
    assert max(lags) >= 90
    stats = probe.percentiles()
    assert stats["max"] >= 90 and stats["p50"] < 20 and stats["count"] > 20


async def test_header_once_when_appending(tmp_path):
    out = tmp_path / "samples.csv"
    for _ in range(2):
        async with Sampler(out, interval_s=0.1):
            await asyncio.sleep(0.15)
    lines = out.read_text().splitlines()
    assert lines.count(",".join(HEADER)) == 1


def _inode(sock: socket.socket) -> str:
    return str(os.fstat(sock.fileno()).st_ino)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and sock_diag")
def test_socket_and_file_counts_match_psutil(tmp_path):
    """The sock_diag dump finds every open TCP/UDP socket (hundreds: several netlink messages),
    no unix socket; the one-pass fd count agrees with psutil's open_files and inet connections."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(300)]
    accepted = [listener.accept()[0] for _ in clients]
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", 0))  # an unbound UDP socket is in no table (nor in psutil's answer)
    unix_a, unix_b = socket.socketpair()
    files = [open(tmp_path / f"f{i}", "w") for i in range(3)]  # noqa: SIM115
    try:
        inodes = _diag_inodes()
        ours = [listener, udp, *clients, *accepted]
        assert {_inode(s) for s in ours} <= inodes
        assert _inode(unix_a) not in inodes and _inode(unix_b) not in inodes
        me = psutil.Process()
        counts = _optional_counts(me, inodes)
        assert counts["connections"] == len(me.net_connections(kind="inet")) >= len(ours)
        assert counts["open_files"] == len(me.open_files()) >= len(files)
    finally:
        for sock in [listener, udp, unix_a, unix_b, *clients, *accepted]:
            sock.close()
        for f in files:
            f.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_without_sock_diag_the_proc_tables_are_read(monkeypatch):
    def refused() -> set[str]:
        raise OSError("no netlink in this sandbox")

    monkeypatch.setattr(sampler, "_diag_inodes", refused)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert _inode(listener) in sampler._inet_socket_inodes()
