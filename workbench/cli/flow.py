"""`python -m workbench flow`: one timed flow on a fresh local stack."""

from __future__ import annotations

import asyncio
import json

from eth_account import Account

from workbench.driver.flow import FlowSettings, Wallet, flow_context, run_flow
from workbench.driver.shapes import make_user_data
from workbench.events import Event, FlowEvent
from workbench.stack.local import LocalStack


async def one_flow(profile: str = "fast") -> FlowEvent:
    """Starts a local stack, runs one flow with a fresh wallet, stops the stack."""
    acct = Account.create()
    wallet = Wallet(0, acct.address, "0x" + acct.key.hex().removeprefix("0x"))
    steps: list[Event] = []
    async with LocalStack(profile) as stack:
        settings = FlowSettings.from_profile(stack.profile)
        async with flow_context(stack.target.endpoints, steps.append, settings) as ctx:
            data = make_user_data("medium", 0, seed=0)
            return await run_flow(ctx, wallet, data, flow_id=0, data_size="medium")


def flow_command(profile: str, json_out: bool) -> int:
    outcome = asyncio.run(one_flow(profile))
    line = {
        "ok": outcome["ok"],
        "duration_s": outcome["duration_s"],
        "steps": outcome["steps"],
        "tx_hash": outcome["tx_hash"],
        "permission_id": outcome["permission_id"],
        "operation_id": outcome["operation_id"],
        "result": outcome["result"],
        "error": outcome["error"],
    }
    if json_out:
        print(json.dumps(line, default=str))
    else:
        mark = "✅" if outcome["ok"] else "❌"
        print(
            f"{mark} flow {'completed' if outcome['ok'] else 'failed'} in {outcome['duration_s']:.3f}s"
        )
        for step, seconds in outcome["steps"].items():
            print(f"  {step:<17} {seconds * 1000:9.1f} ms")
        if outcome["error"]:
            print(f"  error: {outcome['error']} (at {outcome['failed_step']})")
    return 0 if outcome["ok"] else 1
