"""Hostile and careless clients at length: the long variant of tests/test_hostile_clients.py.

Starts `LocalStack(profile)` plus an unarmed RPC proxy in front of its chain, then sends each
category of issue 11's red-team pass, many times, while a separate process polls every server's
`/health` (every 20 ms) and RSS:

- malformed request lines and huge headers, huge bodies (2 MiB JSON, 50 MB chunked uploads,
  1 MiB multipart lines), invalid UTF-8 and lone surrogates, deep JSON, wrong content types and
  encodings (broken gzip, gzip bombs), storage traversal and invalid CIDs;
- relay semantics abuse (200 KB grants, 10,000 file permissions, high-s signatures), then the
  biggest relays that are accepted (`--big-relays` of them, 700 file permissions each, about
  the most calldata a relay may carry), with the API server's /health latency while they run;
- slowloris: idle, silent and dripping connections per server, and how long they were kept;
- 2,000 concurrent connections per server, each then asking /health;
- `--uploads` concurrent 10 MiB uploads, storage RSS at start, peak and after `pin/rm`.

Prints JSON: requests sent, 5xx count (should be 0), worst /health latency and peak RSS per
server, and each phase's figures. All traffic goes to 127.0.0.1.

    .venv/bin/python benchmarks/hostile.py [--profile fast] [--rounds 20] [--uploads 200]

Aims (issue 11): no 5xx; /health within 100 ms during the biggest accepted relay; storage RSS
under 300 MB at the peak of 200 concurrent 10 MiB uploads and back near its start after pin/rm.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import multiprocessing
import os
import sys
import time
import urllib.parse
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from eth_account import Account  # noqa: E402

from workbench.stack.components import start_component, stop_component  # noqa: E402
from workbench.stack.local import LocalStack  # noqa: E402
from workbench.vana import permission  # noqa: E402

TIMEOUT_S = 60.0
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
JSON_ROUTES = {
    "api": ["/api/relay", "/api/trusted-server", "/api/trusted-server/poll"],
    "personal": ["/operations"],
    "rpc_proxy": ["/faults", "/"],
}
BROKEN = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    b"GET /health HTTP/9.9\r\n\r\n",
    b"GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]
LOGS = {"storage": "storage", "api": "api", "personal": "personal", "rpc_proxy": "rpc_proxy"}
TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    "b" + "a" * 5000,
    ".tmp-0123",
]


# --- the probe: a separate process, so this one's load does not colour what it measures ----------


def probe(servers: dict[str, tuple[str, int]], stop, out) -> None:
    worst: dict[str, float] = {}
    peak: dict[str, float] = {}
    failures: Counter[str] = Counter()
    marks: list[tuple[float, str, float]] = []  # (time, server, latency) of every /health
    procs = {name: psutil.Process(pid) for name, (_, pid) in servers.items()}
    while not stop.is_set():
        for name, (url, _) in servers.items():
            parts = urllib.parse.urlsplit(url)
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            took = time.perf_counter() - t0
            failures[name] += not ok
            worst[name] = max(worst.get(name, 0.0), took)
            marks.append((time.time(), name, took))
            try:
                peak[name] = max(peak.get(name, 0.0), procs[name].memory_info().rss / 2**20)
            except psutil.Error:
                failures[name] += 1
        stop.wait(0.02)
    out.send({"worst": worst, "peak": peak, "failures": dict(failures), "marks": marks})


# --- sending ------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.by_phase: dict[str, Counter[str]] = {}

    def add(self, phase: str, status: int) -> None:
        kind = f"{status // 100}xx" if 200 <= status < 600 else "no_answer"
        self.by_phase.setdefault(phase, Counter())["requests"] += 1
        self.by_phase[phase][kind] += 1

    def totals(self) -> dict[str, int]:
        total = Counter()
        for counts in self.by_phase.values():
            total.update(counts)
        return {"requests": total["requests"], **{k: total[k] for k in ("5xx", "4xx", "no_answer")}}


def address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port


async def exchange(url: str, raw: bytes) -> int:
    """Status of the answer to `raw` on a fresh connection (0 if none came)."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), TIMEOUT_S)
    except (ConnectionError, TimeoutError):
        answer = b""
    finally:
        writer.close()
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    if body and "Transfer-Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(data: bytes, size: int = 1 << 20) -> bytes:
    parts = (data[i : i + size] for i in range(0, len(data), size))
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


async def send_all(tally: Tally, phase: str, jobs: list[tuple[str, bytes]], width: int = 32):
    sem = asyncio.Semaphore(width)

    async def one(url: str, raw: bytes) -> None:
        async with sem:
            tally.add(phase, await exchange(url, raw))

    await asyncio.gather(*(one(url, raw) for url, raw in jobs))


JSON = {"Content-Type": "application/json"}


def input_jobs(servers: dict[str, tuple[str, int]], rounds: int, chain_id: int) -> dict:
    """The bad-input phases: name -> [(url, raw request)]."""
    urls = {name: url for name, (url, _) in servers.items()}
    big = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    deep = b"[" * 100_000 + b"]" * 100_000
    poll = json.dumps({"operationId": "nope", "chainId": chain_id}).encode()
    bomb = gzip.compress(b" " * (64 << 20))
    form = {"Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"}
    part = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n"
    line = b"--b\r\nContent-Disposition: form-data; name=" + b"f" * (1 << 20) + b"\r\n\r\nx"
    routes = [(urls[s], p) for s, paths in JSON_ROUTES.items() for p in paths]
    jobs: dict[str, list] = {
        "malformed_lines": [(u, raw) for u in urls.values() for raw in BROKEN] * rounds,
        "huge_bodies": [(u, request("POST", p, JSON, big)) for u, p in routes] * max(1, rounds // 4)
        + [(urls["storage"], request("POST", "/api/v0/add", form, chunked(line)))] * rounds
        + [(urls["storage"], request("POST", "/api/v0/add", form, chunked(part + bytes(50 << 20))))]
        * 3,
        "utf8_surrogates": [
            (urls["api"], request("POST", "/api/trusted-server/poll", JSON, body))
            for body in (b'{"operationId": "\\udfff", "chainId": %d}' % chain_id, b'{"a": "\xff"}')
        ]
        * rounds
        * 4
        + [(urls["personal"], request("POST", "/operations", JSON, b'{"a": "\\ud800"}'))] * rounds,
        "deep_json": [(u, request("POST", p, JSON, deep)) for u, p in routes] * max(1, rounds // 2),
        "types_encodings": [
            (urls["api"], request("POST", "/api/trusted-server/poll", headers, body))
            for headers, body in (
                ({"Content-Type": "text/plain"}, poll),
                ({**JSON, "Content-Type": "application/json; charset=klingon"}, poll),
                ({**JSON, "Content-Encoding": "gzip"}, b"not gzip"),
                ({**JSON, "Content-Encoding": "br"}, poll),
                ({**JSON, "Content-Encoding": "gzip"}, bomb),
            )
        ]
        * rounds,
        "traversal_cids": [
            (urls["storage"], request(m, p.format(urllib.parse.quote(a, safe="")), {}))
            for a in TRAVERSALS
            for m, p in (("POST", "/api/v0/cat?arg={}"), ("GET", "/ipfs/{}"))
        ]
        * rounds,
    }
    return jobs


# --- relays -------------------------------------------------------------------------------------


def relay_body(stack: LocalStack, key: str, **message: Any) -> bytes:
    ep = stack.endpoints
    base = {
        "nonce": 0,
        "granteeId": ep.grantee_id,
        "grant": "ipfs://grant",
        "fileUrls": [f"ipfs://hostile-{os.urandom(6).hex()}"],
        "schemaIds": [0],
        "serverAddress": "0x" + "00" * 20,
        "serverUrl": "",
        "serverPublicKey": "",
        "filePermissions": [[]],
    }
    typed = permission.typed_data(
        ep.chain_id, ep.contracts["DataPortabilityPermissions"], {**base, **message}
    )
    body = {
        "typedData": typed,
        "signature": permission.sign(key, typed),
        "expectedUserAddress": Account.from_key(key).address,
    }
    return json.dumps(body).encode()


def abusive_relays(stack: LocalStack, rounds: int) -> list[bytes]:
    key = Account.create().key.to_0x_hex()
    server = Account.create().address
    many = [[{"account": server, "key": "00"} for _ in range(10_000)]]
    bodies = [
        relay_body(stack, key, grant="g" * 200_000),
        relay_body(stack, key, filePermissions=many),
        relay_body(stack, key, grant="g" * 45_000),
        relay_body(stack, key, schemaIds=[0, 0]),
    ]
    typed = json.loads(relay_body(stack, key, nonce=9))
    raw = bytes.fromhex(typed["signature"][2:])
    s = int.from_bytes(raw[32:64], "big")
    typed["signature"] = (
        "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()
    )
    bodies.append(json.dumps(typed).encode())
    return bodies * max(1, rounds // 4)


async def big_accepted_relays(stack: LocalStack, count: int, tally: Tally) -> dict[str, Any]:
    """`count` relays of 700 file permissions (distinct readers) each, one after another:
    near the most calldata a relay may carry (128 KiB), and mined."""
    url = f"{stack.endpoints.api_url}/api/relay"
    seconds, statuses = [], Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        for _ in range(count):
            key = Account.create().key.to_0x_hex()
            readers = [{"account": Account.create().address, "key": "aa" * 8} for _ in range(700)]
            body = relay_body(stack, key, filePermissions=[readers])
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=JSON) as resp:
                statuses[resp.status] += 1
                tally.add("big_relays", resp.status)
                await resp.read()
            seconds.append(round(time.perf_counter() - t0, 2))
    return {"statuses": dict(statuses), "body_bytes": len(body), "seconds": seconds}


# --- slowloris and crowds -----------------------------------------------------------------------


async def lifetime(url: str, start: bytes, drip: bool) -> float:
    """Seconds until the server closes a connection that sent `start`, then nothing (or, with
    `drip`, one more byte each second)."""
    reader, writer = await asyncio.open_connection(*address(url))
    t0 = time.monotonic()
    writer.write(start)
    try:
        while True:
            try:
                if await asyncio.wait_for(reader.read(65536), 1.0 if drip else TIMEOUT_S) == b"":
                    break
            except TimeoutError:
                if time.monotonic() - t0 > TIMEOUT_S:
                    break
                writer.write(b"z")
    except ConnectionError:
        pass
    writer.close()
    return time.monotonic() - t0


async def slowloris(servers: dict[str, tuple[str, int]], per_server: int) -> dict[str, float]:
    """Longest life the servers gave connections that never send (idle), stop mid request line
    (silent) or send a header byte a second (drip)."""
    kinds = {
        "idle": (b"", False),
        "silent": (b"GET /hea", False),
        "drip": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ", True),
    }
    jobs = [(kind, url) for kind in kinds for url, _ in servers.values()] * per_server
    times = await asyncio.gather(*(lifetime(url, *kinds[kind]) for kind, url in jobs))
    return {
        f"max_{kind}_s": round(
            max(t for (k, _), t in zip(jobs, times, strict=True) if k == kind), 2
        )
        for kind in kinds
    }


async def crowd(url: str, n: int) -> list[int]:
    """Opens `n` connections at once, then sends /health on each: the statuses (0: none)."""
    sem = asyncio.Semaphore(500)

    async def connect():
        async with sem:
            return await asyncio.open_connection(*address(url))

    conns = await asyncio.gather(*(connect() for _ in range(n)))
    try:
        for _, writer in conns:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), TIMEOUT_S) for reader, _ in conns),
            return_exceptions=True,
        )
    finally:
        for _, writer in conns:
            writer.close()
    return [int(a.split(b" ", 2)[1]) if isinstance(a, bytes) and a else 0 for a in answers]


# --- storage memory -----------------------------------------------------------------------------


async def uploads(url: str, pid: int, n: int, size: int, tally: Tally) -> dict[str, Any]:
    proc = psutil.Process(pid)
    start = proc.memory_info().rss / 2**20
    peak = [start]

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            peak.append(proc.memory_info().rss / 2**20)
            await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int) -> str:
            form = aiohttp.FormData()
            data = i.to_bytes(4, "big") + bytes(size - 4)
            form.add_field("file", data, filename="big", content_type="application/octet-stream")
            async with session.post(f"{url}/api/v0/add", data=form) as resp:
                tally.add("uploads", resp.status)
                return (await resp.json())["Hash"] if resp.status == 200 else ""

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        t0 = time.perf_counter()
        cids = await asyncio.gather(*(one(i) for i in range(n)))
        took = time.perf_counter() - t0
        stop.set()
        await sampler
        stored = [c for c in cids if c]
        freed = 0
        for i in range(0, len(stored), 50):  # 50 CIDs per call: a request line stays < 8 KiB
            query = "&".join(f"arg={c}" for c in stored[i : i + 50])
            async with session.post(f"{url}/api/v0/pin/rm?{query}") as resp:
                freed += (await resp.json()).get("BytesFreed", 0)
    await asyncio.sleep(0.5)
    return {
        "concurrent": n,
        "size_mib": size >> 20,
        "stored": sum(bool(c) for c in cids),
        "seconds": round(took, 2),
        "rss_start_mb": round(start, 1),
        "rss_peak_mb": round(max(peak), 1),
        "rss_after_pin_rm_mb": round(proc.memory_info().rss / 2**20, 1),
        "bytes_freed": freed,
    }


# --- the run ------------------------------------------------------------------------------------


async def attack(stack: LocalStack, servers: dict, args) -> tuple[Tally, dict, dict[str, Any]]:
    """Runs every phase; (tally, {phase: (start, end) wall time}, each phase's figures)."""
    tally, windows, out = Tally(), {}, {}

    @asynccontextmanager
    async def phase(name: str):
        t0 = time.time()
        yield
        windows[name] = (t0, time.time())

    for name, jobs in input_jobs(servers, args.rounds, stack.endpoints.chain_id).items():
        async with phase(name):
            await send_all(tally, name, jobs)
    api = servers["api"][0]
    relays = abusive_relays(stack, args.rounds)
    async with phase("relay_abuse"):
        await send_all(tally, "relay_abuse", [(api, request("POST", "/api/relay", JSON, b))
                                              for b in relays], width=4)  # fmt: skip
    async with phase("big_relays"):
        out["big_relays"] = await big_accepted_relays(stack, args.big_relays, tally)
    async with phase("slowloris"):
        out["slowloris"] = await slowloris(servers, args.slowloris)
    async with phase("crowd_2000"):
        out["crowd_2000_answered_200"] = {}
        for name, (url, _) in servers.items():
            statuses = await crowd(url, 2000)
            for status in statuses:
                tally.add("crowd_2000", status)
            out["crowd_2000_answered_200"][name] = statuses.count(200)
    storage_url, storage_pid = servers["storage"]
    async with phase("uploads"):
        out["uploads"] = await uploads(storage_url, storage_pid, args.uploads, 10 << 20, tally)
    return tally, windows, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--rounds", type=int, default=20, help="repeats of each bad request")
    parser.add_argument("--big-relays", type=int, default=5)
    parser.add_argument("--slowloris", type=int, default=50, help="connections of each kind")
    parser.add_argument("--uploads", type=int, default=200, help="concurrent 10 MiB uploads")
    args = parser.parse_args()
    with LocalStack(args.profile) as stack:
        config = {"upstream": stack.endpoints.rpc_url, "armed": False}
        log = stack.logs_dir / "rpc_proxy.log"
        proxy, proxy_url = start_component("workbench.stack.rpc_proxy", config, log_path=log)
        try:
            pids = stack.pids
            ep = stack.endpoints
            servers = {
                "storage": (ep.storage_url, pids["storage"]),
                "api": (ep.api_url, pids["api"]),
                "personal": (ep.personal_server_url, pids["personal"]),
                "rpc_proxy": (proxy_url, proxy.pid),
            }
            stop = multiprocessing.Event()
            receive, send = multiprocessing.Pipe(duplex=False)
            watcher = multiprocessing.Process(target=probe, args=(servers, stop, send))
            watcher.start()
            try:
                tally, windows, figures = asyncio.run(attack(stack, servers, args))
            finally:
                stop.set()
                seen = receive.recv()
                watcher.join()
            tracebacks = {
                name: (stack.logs_dir / f"{log}.log").read_text(errors="replace").count("Traceback")
                for name, log in LOGS.items()
            }
        finally:
            stop_component(proxy)
    by_phase = {
        name: {
            server: round(max((t for at, s, t in seen["marks"] if s == server and a <= at <= b),
                              default=0) * 1e3, 1)
            for server in servers
        }
        for name, (a, b) in windows.items()
    }  # fmt: skip
    report = {
        "profile": args.profile,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **tally.totals(),
        "by_phase": {k: dict(v) for k, v in tally.by_phase.items()},
        "worst_health_ms": {k: round(v * 1e3, 1) for k, v in seen["worst"].items()},
        "api_health_during_big_relays_ms": by_phase["big_relays"]["api"],
        "worst_health_ms_by_phase": by_phase,
        "health_failures": seen["failures"],
        "peak_rss_mb": {k: round(v, 1) for k, v in seen["peak"].items()},
        "tracebacks_in_logs": tracebacks,
        "phase_seconds": {k: round(b - a, 2) for k, (a, b) in windows.items()},
        **figures,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
