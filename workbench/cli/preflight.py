"""`python -m workbench preflight TARGET`: checks every endpoint of a target file, changes nothing."""

from __future__ import annotations

import asyncio

from workbench.driver.preflight import DEFAULT_TIMEOUT_S, preflight
from workbench.errors import WorkbenchError
from workbench.vana.target import load_target


def preflight_command(target: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """`python -m workbench preflight TARGET`: exit 0 when ready, 1 listing every problem."""
    if target == "local":
        raise WorkbenchError(
            "target", "local needs no preflight", "a run starts and checks its own stack"
        )
    loaded = load_target(target)  # a malformed file raises: exit 2 with its message
    report = asyncio.run(preflight(loaded, timeout_s))
    print(f"🔎 Preflight of target {loaded.name} ({loaded.source}), {report.duration_s:.1f} s")
    for line in report.lines():
        print(f"   {line}")
    if report.ok:
        print(f"✅ Target {loaded.name} is ready")
        return 0
    print(f"❌ {len(report.problems)} problem(s): fix them in {loaded.source} and run again")
    return 1
