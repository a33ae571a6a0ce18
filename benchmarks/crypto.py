"""CPU cost of one flow's client-side crypto: the floor under what the driver can measure.

Prints JSON: median CPU (`process_time`) and wall (`perf_counter`) ms per operation for 1/10/100 KB
files, the per-flow floor, how much two threads encrypting at once gain over one (about 2x when
the S2K runs without the GIL and two cores are idle, about 1x when it holds the GIL), and how late
the main thread wakes while a worker thread encrypts (the event-loop stall a driver would see).

    python benchmarks/crypto.py [--repeats 20]

`crypto_floor(data)` is importable (e.g. by benchmarks/driver.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pysequoia
from eth_account import Account

from workbench.vana import crypto, permission

USER_KEY = "0x" + hashlib.sha256(b"benchmark user").hexdigest()
SERVER_KEY = "0x" + hashlib.sha256(b"benchmark server").hexdigest()
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SIZES = {"1KB": 1024, "10KB": 10 * 1024, "100KB": 100 * 1024}
# What a client computes per flow, in flow order; decrypt_file is the personal server's cost.
FLOW_OPS = ("encryption_key", "encrypt_file", "ecies_encrypt", "typed_data", "eip712_sign")


def _median_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {
        "cpu_ms": round(statistics.median(cpu) * 1e3, 3),
        "wall_ms": round(statistics.median(wall) * 1e3, 3),
    }


def _message(password: str) -> dict:
    server = Account.from_key(SERVER_KEY).address
    server_public = crypto.public_key_of(SERVER_KEY)
    shared = crypto.ecies_encrypt(server_public, password.encode())
    return {
        "nonce": 3,
        "granteeId": 1,
        "grant": "ipfs://bafkreigrantgrantgrantgrantgrantgrantgrantgrantgrantgrant",
        "fileUrls": ["ipfs://bafkreifilefilefilefilefilefilefilefilefilefilefilefile"],
        "schemaIds": [0],
        "serverAddress": server,
        "serverUrl": "http://127.0.0.1:8080",
        "serverPublicKey": server_public,
        "filePermissions": [[{"account": server, "key": shared}]],
    }


def crypto_floor(data: bytes, repeats: int = 20) -> dict:
    """Median CPU/wall ms per crypto op of one flow for a file of `data`, and their sum."""
    password = crypto.encryption_key(USER_KEY)
    server_public = crypto.public_key_of(SERVER_KEY)
    message = _message(password)
    typed = permission.typed_data(14800, CONTRACT, message)
    blob = crypto.encrypt_file(data, password)
    ops = {
        "encryption_key": lambda: crypto.encryption_key(USER_KEY),
        "encrypt_file": lambda: crypto.encrypt_file(data, password),
        "ecies_encrypt": lambda: crypto.ecies_encrypt(server_public, password.encode()),
        "typed_data": lambda: permission.typed_data(14800, CONTRACT, message),
        "eip712_sign": lambda: permission.sign(USER_KEY, typed),
        "decrypt_file": lambda: crypto.decrypt_file(blob, password),
    }
    timings = {name: _median_ms(fn, repeats) for name, fn in ops.items()}
    floor = {
        unit: round(sum(timings[op][unit] for op in FLOW_OPS), 3) for unit in ("cpu_ms", "wall_ms")
    }
    return {"bytes": len(data), "repeats": repeats, "ops": timings, "flow_floor": floor}


def thread_speedup(
    encrypt: Callable[[bytes, str], object], jobs: int = 16, rounds: int = 3
) -> dict:
    """Wall time of `jobs` encryptions one after another vs on two threads (best of `rounds`,
    since other processes on a shared machine only ever add time)."""
    data, password = os.urandom(10 * 1024), crypto.encryption_key(USER_KEY)
    sequential, threaded = [], []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(jobs):
                encrypt(data, password)
            sequential.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            list(pool.map(lambda _: encrypt(data, password), range(jobs)))
            threaded.append(time.perf_counter() - t0)
    return {
        "jobs": jobs,
        "sequential_s": round(min(sequential), 4),
        "two_threads_s": round(min(threaded), 4),
        "speedup": round(min(sequential) / min(threaded), 2),
    }


def main_thread_lag(encrypt: Callable[[bytes, str], object], ticks: int = 200) -> dict:
    """How late a 1 ms sleep in the main thread wakes while another thread encrypts nonstop:
    the event-loop stall a driver would see. Unlike the speedup it needs no idle core."""
    data, password = os.urandom(10 * 1024), crypto.encryption_key(USER_KEY)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            encrypt(data, password)

    worker = threading.Thread(target=work)
    worker.start()
    late = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        time.sleep(0.001)
        late.append((time.perf_counter() - t0 - 0.001) * 1e3)
    stop.set()
    worker.join()
    late.sort()
    return {
        "p50_ms": round(late[len(late) // 2], 2),
        "p99_ms": round(late[int(len(late) * 0.99)], 2),
        "max_ms": round(late[-1], 2),
    }


def _sequoia_encrypt(data: bytes, password: str) -> bytes:
    return pysequoia.encrypt(data, passwords=[password], armor=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    password = crypto.encryption_key(USER_KEY)
    data = os.urandom(10 * 1024)
    report = {
        "cpus": os.cpu_count(),
        "sizes": {name: crypto_floor(os.urandom(n), args.repeats) for name, n in SIZES.items()},
        "threads": {
            "encrypt_file": thread_speedup(crypto.encrypt_file),
            "pysequoia_encrypt": thread_speedup(_sequoia_encrypt, jobs=4, rounds=2),
        },
        "main_thread_lag": {
            "encrypt_file": main_thread_lag(crypto.encrypt_file),
            "pysequoia_encrypt": main_thread_lag(_sequoia_encrypt, ticks=50),
        },
        "reference": {
            "pysequoia_encrypt_10KB": _median_ms(lambda: _sequoia_encrypt(data, password), 5),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
