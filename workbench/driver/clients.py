"""Client timing presets (`client`): how often and how long a flow's client polls, waits and
retries, so a run measures what a given client would see.

- `tight` (default): the profile's own `flow` settings, fine-grained polling and patient retries;
  for measuring the system's own latency with the least client overhead.
- `sdk`: Vana's SDK with its defaults. Receipts as viem's `waitForTransactionReceipt` (polled
  every 4 s, 180 s timeout); the operation as `waitForOperation` (every 500 ms, 30 s timeout,
  shorter than the 10-30 s of inference the `moksha` profile simulates); no retries, as the SDK
  makes none.
- `upstream`: the upstream load-test client (vana-sdk `load-test/src/client/
  data-portability-flow.ts`): uploads and the identity once; receipts with viem's defaults;
  inference submit 3 attempts with 1 s doubling backoff capped at 5 s, no jitter; the operation
  polled every 5 s, at most 30 polls, a failed poll retried up to 5 times. (It treated any status
  but `processing` as final; the flow keeps the correct terminal states.)

A preset overrides the profile's `flow` settings it names; the rest (flow timeout, HTTP
timeout) stay the profile's. `limit` texts name the client's own wait that a timeout hit, for
the report's note on flows the preset's own timeout failed.
"""

from __future__ import annotations

from typing import Any

CLIENTS = ("tight", "sdk", "upstream")
VIEM_RECEIPT = {"receipt_poll_s": 4.0, "receipt_timeout_s": 180.0}
PRESETS: dict[str, dict[str, Any]] = {
    "tight": {},
    "sdk": {
        **VIEM_RECEIPT,
        "poll_interval_s": 0.5,
        "poll_growth": 1.0,
        "operation_timeout_s": 30.0,
        "retry_attempts": 1,
        "wait_out_restarts": False,
    },
    "upstream": {
        **VIEM_RECEIPT,
        "poll_interval_s": 5.0,
        "poll_growth": 1.0,
        "operation_timeout_s": 150.0,  # 30 polls, 5 s apart
        "retry_attempts": 1,
        "step_attempts": {"inference_submit": 3, "inference_poll": 5},
        "retry_base_s": 1.0,
        "retry_cap_s": 5.0,
        "retry_jitter": False,
        "wait_out_restarts": False,
    },
}
# What each client calls the wait a timeout ended, per flow step.
LIMITS = {
    "sdk": {"confirm": "viem waitForTransactionReceipt", "inference_poll": "waitForOperation"},
    "upstream": {"confirm": "viem waitForTransactionReceipt", "inference_poll": "30 polls"},
    "tight": {"confirm": "receipt_timeout_s", "inference_poll": "operation_timeout_s"},
}


def preset(name: str) -> dict[str, Any]:
    """The FlowSettings overrides of client preset `name` (a fresh copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown client preset {name!r}; known: {', '.join(CLIENTS)}")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[name].items()}


def limit_name(client: str, step: str) -> str:
    """How `client` names its own wait that timed out in `step`, e.g. `waitForOperation`."""
    return LIMITS.get(client, {}).get(step, f"{step} timeout")
