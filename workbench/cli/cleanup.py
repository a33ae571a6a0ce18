"""`python -m workbench cleanup DIR`: deletes a run's uploaded objects from its storage."""

from __future__ import annotations

import asyncio

from workbench.driver.cleanup import cleanup


def cleanup_command(results_dir: str) -> int:
    """`python -m workbench cleanup DIR`: exit 0 when nothing is left, 1 if some removal failed."""
    result = asyncio.run(cleanup(results_dir))
    for line in result.lines():
        print(line)
    return 1 if result.failed else 0
