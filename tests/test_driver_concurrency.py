"""The driver really runs users at the same time, and its crypto does not starve the event loop.

A 20-user burst through the real `Runner` on the shared `fast` local stack. Nothing here asserts
on elapsed time (that belongs in `benchmarks/driver.py`); the checks are about order and place:
- the flows overlap (unlike the upstream script, which ran its users one after another);
- every flow has its thirteen step events, in order;
- the CPU-heavy crypto runs on the run's `crypto` executor threads, never on the loop thread,
  and the loop keeps turning while an encryption is in progress.
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest

from workbench.driver.config import RunConfig
from workbench.driver.runner import Runner
from workbench.events import read_events
from workbench.steps import STEPS
from workbench.vana import crypto, permission

USERS = 20

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def max_in_flight(flows: list[dict]) -> int:
    """Most flows running at one instant, from their start `t` and `duration_s`."""
    edges = sorted(
        [(f["t"], 1) for f in flows] + [(f["t"] + f["duration_s"], -1) for f in flows],
        key=lambda e: (e[0], e[1]),  # at a tie an end comes first: touching is not overlapping
    )
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


class CryptoProbe:
    """Wraps the flow's crypto functions to record the thread each call ran on, and how many
    times a loop-side ticker advanced while each encryption was running."""

    def __init__(self) -> None:
        self.threads: dict[str, list[str]] = {}
        self.loop_thread = threading.get_ident()
        self.ticks = 0
        self.ticks_during_encrypt: list[int] = []
        self._lock = threading.Lock()

    def wrap(self, name: str, fn):
        def probe(*args, **kwargs):
            on_loop = threading.get_ident() == self.loop_thread
            with self._lock:
                self.threads.setdefault(name, []).append(
                    "<loop>" if on_loop else threading.current_thread().name
                )
            before = self.ticks
            try:
                return fn(*args, **kwargs)
            finally:
                if name == "encrypt_file":
                    with self._lock:
                        self.ticks_during_encrypt.append(self.ticks - before)

        return probe

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1


async def test_burst_overlaps_and_keeps_crypto_off_the_loop(
    local_stack, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("WORKBENCH_WALLET_FILE", str(tmp_path / "wallets.json"))
    probe = CryptoProbe()
    for module, name in (
        (crypto, "encryption_key"),
        (crypto, "encrypt_file"),
        (crypto, "ecies_encrypt"),
        (permission, "sign"),
    ):
        monkeypatch.setattr(module, name, probe.wrap(name, getattr(module, name)))
    config = RunConfig(
        users=USERS,
        profile="fast",
        shape="burst",
        data_size="medium",
        output_dir=str(tmp_path),
        run_id="concurrency",
    )
    ticker = asyncio.create_task(probe.tick())
    try:
        outcome = await Runner(
            config, local_stack.target, progress=False, out=io.StringIO()
        ).execute()
    finally:
        ticker.cancel()

    events = read_events(outcome.results_dir / "events.jsonl")
    flows = [e for e in events if e["kind"] == "flow"]
    assert len(flows) == USERS
    assert all(f["ok"] for f in flows), [f["error"] for f in flows if not f["ok"]]

    # Concurrency: a burst starts every user before any finishes, so they overlap.
    assert max_in_flight(flows) > 1
    assert max(f["t"] for f in flows) < min(f["t"] + f["duration_s"] for f in flows)

    # Thirteen step events per flow, in the reference order.
    for flow in flows:
        steps = sorted(
            (e for e in events if e["kind"] == "step" and e["flow_id"] == flow["flow_id"]),
            key=lambda e: e["t"],
        )
        assert [s["step"] for s in steps] == list(STEPS)
        assert all(s["ok"] for s in steps)

    # The crypto ran on the executor's threads, never on the loop thread.
    assert len(probe.threads["encrypt_file"]) == USERS
    for name, threads in probe.threads.items():
        assert "<loop>" not in threads, name
        assert all(t.startswith("crypto") for t in threads), (name, set(threads))
    # ... and the loop kept turning while encryptions were in progress.
    assert sum(probe.ticks_during_encrypt) > 0
