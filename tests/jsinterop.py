"""Runs the JavaScript reference libraries (tests/js/*.mjs) to produce interop vectors.

Each script reads one JSON document on stdin and writes one on stdout; tests batch all their
cases into one call because a node start with its imports costs ~0.1-0.3 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from workbench.params import PROJECT_ROOT

JS_DIR = PROJECT_ROOT / "tests" / "js"


def run_node(
    script: str, payload: dict[str, Any], timeout_s: float = 120, preload: str | None = None
) -> dict[str, Any]:
    """Runs `tests/js/<script>` with `payload` on stdin and answers its JSON output;
    `preload` is a `tests/js` module imported first (`node --import`), e.g. a loader hook."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; install Node 20 (`make setup` needs it too)")
    if not (PROJECT_ROOT / "node_modules").is_dir():
        raise RuntimeError("node_modules missing; run `make setup` (npm ci)")
    proc = subprocess.run(
        [
            node,
            *(["--import", (JS_DIR / preload).as_uri()] if preload else []),
            str(JS_DIR / script),
        ],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"node {script} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_jobs(script: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches `jobs` into one node call; answers one result per job, in order."""
    results = run_node(script, {"jobs": jobs})["results"]
    assert len(results) == len(jobs)
    return results
