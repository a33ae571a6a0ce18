"""Child processes that die with their owner, and free ports on the loopback.

A stack process must not outlive its owner by more than 10 s even after `kill -9` of the owner.
Two mechanisms: the kernel's PR_SET_PDEATHSIG (the child gets SIGTERM when the parent thread
that forked it dies) and, for our Python servers, `watch_parent()`, which exits when the parent pid
changes (covers a pool thread that forked and then ended, and non-Linux hosts).

A child is reaped the moment it exits, however it died (a crash, a `kill -9` from outside): a
daemon thread waits on it, so it never lingers as a zombie and `poll()` tells at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "WORKBENCH_PARENT_PID"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Starts `cmd` in its own process group, tied to this process's life, output to `log_path`."""
    full_env = {**os.environ, **(env or {}), PARENT_PID_ENV: str(os.getpid())}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C in a terminal reaches the owner, which stops us in order
        )
    finally:
        if not isinstance(out, int):  # DEVNULL is an int; a log file is ours to close
            out.close()
    # Popen.wait holds Popen's own lock, so `poll`, `wait` and `terminate` elsewhere stay correct.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def terminate(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; reaps the process."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


async def watch_parent(interval_s: float = 1.0) -> None:
    """Exits this process when the owner named in the environment is gone (for child servers)."""
    owner = os.environ.get(PARENT_PID_ENV)
    if not owner:
        return
    owner_pid = int(owner)
    while True:
        await asyncio.sleep(interval_s)
        if os.getppid() != owner_pid:
            os._exit(0)
