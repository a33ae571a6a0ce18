"""Starting one stack server (`python -m workbench.stack.<name>`) as a child process.

The child gets its config and secrets as JSON in the environment (never argv, which `ps` shows),
binds a port (the OS picks one when the config says 0 or nothing) and prints `READY {"port": N}`
once it serves. We wait for that line in its log file, so a caller can use the URL at once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.params import PROJECT_ROOT
from workbench.stack.process import spawn, terminate
from workbench.stack.server import CONFIG_ENV, READY_PREFIX, SECRETS_ENV

LOG_TAIL_LINES = 30


class ComponentStartError(RuntimeError):
    """A server exited or stayed silent before it was ready; the message carries its log tail."""


def start_component(
    module: str,
    config: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen, str]:
    """Starts `module` and waits until it serves; returns `(process, "http://127.0.0.1:PORT")`.

    Output goes to `log_path` (appended; a temp file if not given). Raises ComponentStartError
    with the log's tail if the process dies or is not ready within `timeout_s`; it is then stopped.
    """
    launch = _Launch(module, config, secrets, log_path, timeout_s)
    try:
        for delay in launch.waits():
            time.sleep(delay)
    except BaseException:
        launch.abort()
        raise
    return launch.proc, launch.url


async def astart_component(
    module: str,
    config: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen, str]:
    """`start_component` without blocking the event loop (several can start concurrently).

    The fork happens on the calling thread on purpose: PR_SET_PDEATHSIG fires when the forking
    *thread* ends, and an executor thread ends with `asyncio.run`, which would kill the server.
    """
    launch = _Launch(module, config, secrets, log_path, timeout_s)
    try:
        for delay in launch.waits():
            await asyncio.sleep(delay)
    except BaseException:
        launch.abort()
        raise
    return launch.proc, launch.url


def stop_component(proc: subprocess.Popen, grace_s: float = 5.0) -> int | None:
    """SIGTERM (the servers exit cleanly on it), SIGKILL after `grace_s`; returns the exit code."""
    terminate(proc, grace_s)
    return proc.returncode


class _Launch:
    """One starting process: spawned on construction, then watched until its READY line."""

    def __init__(self, module, config, secrets, log_path: Path | None, timeout_s: float):
        if log_path is None:
            name = module.rsplit(".", 1)[-1]
            log_path = Path(tempfile.mkdtemp(prefix="workbench-")) / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path, self.timeout_s = log_path, timeout_s
        self.offset = log_path.stat().st_size if log_path.exists() else 0  # the log may be reused
        env = {
            CONFIG_ENV: json.dumps(config or {}),
            SECRETS_ENV: json.dumps(secrets or {}),
            "PYTHONUNBUFFERED": "1",  # a log tail that shows the real last words
        }
        self.cmd = [sys.executable, "-m", module]
        self.proc = spawn(self.cmd, env=env, log_path=log_path, cwd=PROJECT_ROOT)
        self.deadline = time.monotonic() + timeout_s
        self.url = ""

    def waits(self) -> Iterator[float]:
        """Pauses to sleep between looks at the log, until READY (then `url` is set); raises
        ComponentStartError if the process exits or the deadline passes first."""
        delay = 0.01
        while (port := self._look()) is None:
            yield delay
            delay = min(delay * 1.5, 0.1)
        self.url = f"http://127.0.0.1:{port}"

    def _look(self) -> int | None:
        port = _ready_port(self._log_text())
        if port is not None:
            return port
        code = self.proc.poll()
        if code is not None:
            raise ComponentStartError(self._failure(f"exited with code {code}"))
        if time.monotonic() > self.deadline:
            raise ComponentStartError(self._failure(f"not ready after {self.timeout_s:g} s"))
        return None

    def abort(self) -> None:
        terminate(self.proc, grace_s=2.0)

    def _log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> str:
        tail = "\n".join(self._log_text().splitlines()[-LOG_TAIL_LINES:])
        return f"{' '.join(self.cmd)} {what}; log {self.log_path}:\n{tail or '(empty)'}"


def _ready_port(log_text: str) -> int | None:
    for line in log_text.splitlines():
        if line.startswith(READY_PREFIX):
            try:
                return int(json.loads(line[len(READY_PREFIX) :])["port"])
            except (ValueError, KeyError, TypeError):
                continue  # a partly written line: read again on the next look
    return None
