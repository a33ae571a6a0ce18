"""`stack up`: starts the local stack, prints its endpoints, runs until SIGINT/SIGTERM.

With `--json` it prints exactly one line, the endpoints as `Endpoints.to_json()`, for scripts
and other-language clients; otherwise an aligned listing for a person. Wired by the lead into
`python -m workbench stack up`; also `python -m workbench.cli.stack up [--profile P] [--json]`.
`--vana-addresses` starts it in Vana-address mode (chain id 14800, the contracts at the addresses
Vana's SDK has built in; see `workbench.stack.local`).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

from workbench.errors import WorkbenchError
from workbench.stack.components import ComponentStartError
from workbench.stack.local import LocalStack

SIGNAL_POLL_S = 0.2


def stack_up(profile: str, json_out: bool, vana_addresses: bool = False) -> int:
    """Runs a stack until SIGINT/SIGTERM: 0 after a clean stop, 1 if it failed to start, 2 on a
    user-fixable error (bad profile)."""
    # We own the main thread here, so the handlers are ours. They only set a flag: a handler
    # that takes a lock (threading.Event.set) can deadlock with the same lock held by the code
    # it interrupted, and raising (KeyboardInterrupt) could land anywhere in the start.
    signals: list[int] = []
    previous = _on_signals(lambda signum, _frame: signals.append(signum))
    try:
        stack = LocalStack(profile, vana_addresses=vana_addresses or None)
        with stack:
            if not signals:  # a signal that arrived while starting means: stop right away
                print(_render(stack, json_out), flush=True)
            while not signals:
                time.sleep(SIGNAL_POLL_S)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ComponentStartError, RuntimeError, TimeoutError) as e:  # the message has the log tail
        print(f"error: the local stack did not start: {e}", file=sys.stderr)
        return 1
    finally:
        _restore(previous)
    if not json_out:
        print("stack stopped", flush=True)
    return 0


def _on_signals(handler: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _render(stack: LocalStack, json_out: bool) -> str:
    endpoints = stack.target.endpoints.to_json()
    if json_out:
        return json.dumps(endpoints)
    rows = [(k, v) for k, v in endpoints.items() if k != "contracts"]
    rows += list(endpoints["contracts"].items())
    rows += [("logs", str(stack.logs_dir)), ("started in", f"{stack.startup_s:.2f} s")]
    width = max(len(k) for k, _ in rows)
    mode = ", Vana addresses: test wallets only" if stack.vana_addresses else ""
    lines = [f"local stack up (profile {stack.profile.get('name', '?')}{mode})"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append("Ctrl-C to stop")
    return "\n".join(lines)
