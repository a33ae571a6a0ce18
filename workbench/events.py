"""The event schema of a run, a crash-safe writer and a tolerant reader.

`events.jsonl` is the contract between running and reporting. One JSON object per line:

- `kind: "step"`  one per attempted flow step;
- `kind: "flow"`  exactly one outcome per started flow (ok, failed or cancelled);
- `kind: "run"`   run marks (`event: "start" | "end"`, plus run facts).

Times: `t` is seconds since the run's start on a monotonic clock (perf_counter_ns), `wall` is a
Unix timestamp for labels only. Durations are `duration_s`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.secrets import Redactor, env_secrets

# The flow's steps, in order, named as in the Vana reference.
STEPS = (
    "derive_key",
    "encrypt",
    "upload_file",
    "resolve_grantee",
    "upload_grant",
    "server_identity",
    "share_key",
    "read_nonce",
    "sign_permission",
    "relay",
    "confirm",
    "inference_submit",
    "inference_poll",
)

# Failure classes a failed step or flow may carry (`error_class`).
ERROR_CLASSES = (
    "storage",
    "rpc",
    "api",
    "personal",
    "http",
    "nonce",
    "relay",
    "revert",
    "timeout",
    "inference",
    "crypto",
    "cancelled",
    "internal",
)

FLOW_STATUSES = ("ok", "failed", "cancelled")


@dataclass
class Clock:
    """Run-relative monotonic time plus wall-clock labels."""

    origin_ns: int = field(default_factory=time.perf_counter_ns)

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9

    def restart(self) -> None:
        """Moves t=0 to now: the runner calls it once setup is done, before anything is recorded."""
        self.origin_ns = time.perf_counter_ns()


class EventWriter:
    """Appends one JSON line per event and flushes it, so a killed run keeps what it wrote.

    A `kill -9` can tear at most the line being written; `read_events` skips such a line.
    Thread-safe: the sampler and the runner may write from different threads.
    Events get shared: every event is redacted first (the environment's secrets, those given
    here or by `add_secrets`, and 32-byte hex under a secret-sounding key; see
    `workbench.secrets`).
    """

    def __init__(self, path: str | Path, secrets: Iterable[str] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()
        self._redactor = Redactor([*env_secrets(), *secrets])
        self.count = 0

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Values no later event may contain (the runner adds its wallets' keys and mnemonic)."""
        with self._lock:
            self._redactor.add(secrets)

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str)
        if self._redactor.needed(line):  # rare: rebuild the event with its secrets replaced
            line = json.dumps(self._redactor.value(event), separators=(",", ":"), default=str)
        line += "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.count += 1

    def sync(self) -> None:
        """Forces written events to disk (for the end of a run; flush alone survives a crash)."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yields events in file order, skipping a torn or corrupt line instead of failing."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


def read_events(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_events(path))
