"""The per-request record of a run: `requests.csv`, one row per HTTP request or JSON-RPC call
attempt the flows make, from which the report and `stats.csv` give per-endpoint statistics.

Columns (`COLUMNS`):

- `t`: when the request was sent, seconds since the run's start (the events' clock);
- `type`: `RPC` for a JSON-RPC call, else the HTTP method (`GET`, `POST`): Locust's Type;
- `name`: the RPC method (`eth_call`; `batch` for a batch) or the URL path (`/api/relay`);
- `ms`: from sending to the answer or the failure (the throttle's wait not included);
- `status`: the HTTP status; 0 when no answer came (timeout, refused or dropped connection);
- `error`: empty when the request succeeded; else `HTTP <status>`, `RPC <code>` (a JSON-RPC error
  in a 200 answer: -32005 is "limit exceeded", a rate limit like 429), `success: false` (a
  server's refusal in a 200 answer) or the exception's class (`TimeoutError`, ...);
- `retry`: 1 when this attempt repeats a failed one (a retry or a reconnect), else 0;
- `bytes`: size of the answer's body (0 when unknown);
- `wait_ms`: how long the client-side throttle (`rpc_rate_limit`) held the call back.

A request cut short by a cancel (the run's end, a flow's own deadline) is not recorded: it was
neither answered nor failed by the system under test.

Cheap enough for every request at 1,000 users: recording appends a tuple to a list on the event
loop; the CSV is formatted and written once per `flush_s` (and at close). A run killed with -9
loses at most the last `flush_s` of rows and may leave a torn last line (readers skip it).
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

COLUMNS = ("t", "type", "name", "ms", "status", "error", "retry", "bytes", "wait_ms")
FILE = "requests.csv"
RATE_LIMIT_CODE = -32005  # JSON-RPC "limit exceeded": what some providers answer instead of 429


def rate_limited(status: int, error: str) -> bool:
    """Whether an answer asks the client to slow down: HTTP 429 or JSON-RPC -32005."""
    return status == 429 or error == f"RPC {RATE_LIMIT_CODE}"


class RequestLog:
    """Buffers request rows and appends them to `path` (None: counts only, writes nothing).

    `origin_ns` is the run clock's origin (`events.Clock.origin_ns`), so `t` lines up with the
    events. Used from one event loop; not thread-safe.
    """

    def __init__(
        self,
        path: str | Path | None,
        origin_ns: int = 0,
        flush_s: float = 1.0,
        sink: Callable[[list[tuple[Any, ...]]], None] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.sink = sink  # rows go here instead of a file (a Dask worker ships them)
        self.origin_ns = origin_ns
        self.flush_s = flush_s
        self.rows: list[tuple[Any, ...]] = []
        self.count = self.failed = self.limited = 0  # running totals, for the live view
        self._next_flush = time.monotonic() + flush_s
        self._file: Any = None
        self._writer: Any = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file)
            if fresh:
                self._writer.writerow(COLUMNS)
                self._file.flush()

    def timed(self, type_: str, name: str, retry: bool = False, wait_ns: int = 0) -> Timed:
        """A context manager timing one attempt; set `status`, `error`, `nbytes` on it inside."""
        return Timed(self, type_, name, retry, wait_ns)

    def add(
        self,
        type_: str,
        name: str,
        start_ns: int,
        end_ns: int,
        status: int,
        error: str = "",
        retry: bool = False,
        nbytes: int = 0,
        wait_ns: int = 0,
    ) -> None:
        """Records one finished attempt (times from `time.perf_counter_ns`)."""
        self.count += 1
        if error:
            self.failed += 1
            self.limited += rate_limited(status, error)
        if self._writer is None and self.sink is None:
            return
        t = round((start_ns - self.origin_ns) / 1e9, 6)
        ms = round((end_ns - start_ns) / 1e6, 3)
        wait = round(wait_ns / 1e6, 3) if wait_ns else ""
        self.rows.append((t, type_, name, ms, status, error, int(retry), nbytes, wait))
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered rows (one write per call, not per row)."""
        self._next_flush = time.monotonic() + self.flush_s
        if not self.rows or (self._writer is None and self.sink is None):
            return
        rows, self.rows = self.rows, []
        if self.sink is not None:
            self.sink(rows)
            return
        self._writer.writerows(rows)
        self._file.flush()

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        """Appends rows recorded elsewhere (a Dask worker's, on this run's clock)."""
        for row in rows:
            self.count += 1
            error, status = str(row[5] or ""), int(row[4] or 0)
            if error:
                self.failed += 1
                self.limited += rate_limited(status, error)
        self.rows += rows
        if time.monotonic() >= self._next_flush:
            self.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


class Timed:
    """Times one attempt from `__enter__` to `__exit__` and records it, unless it was cancelled.

    An exception without an `error` set first is recorded by its class name."""

    __slots__ = ("log", "type", "name", "retry", "wait_ns", "start_ns", "status", "error", "nbytes")

    def __init__(self, log: RequestLog, type_: str, name: str, retry: bool, wait_ns: int):
        self.log, self.type, self.name, self.retry, self.wait_ns = log, type_, name, retry, wait_ns
        self.start_ns, self.status, self.error, self.nbytes = 0, 0, "", 0

    def __enter__(self) -> Timed:
        self.start_ns = time.perf_counter_ns()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end_ns = time.perf_counter_ns()
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            return
        error = self.error or (kind.__name__ if kind is not None else "")
        self.log.add(
            self.type,
            self.name,
            self.start_ns,
            end_ns,
            self.status,
            error,
            self.retry,
            self.nbytes,
            self.wait_ns,
        )


NO_LOG = RequestLog(None)  # for clients outside a run: counts, writes nothing
