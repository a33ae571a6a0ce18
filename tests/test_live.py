"""The live view: counts folded from the run's events, the status line and the panel, and a
Jupyter kernel updating one display in place (nbclient sees update_display_data)."""

from __future__ import annotations

import asyncio
import io

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from workbench.driver import live
from workbench.params import PROJECT_ROOT
from workbench.request_log import RequestLog
from workbench.steps import STEPS


def step(flow_id: int, name: str, ok: bool = True) -> dict:
    return {"kind": "step", "flow_id": flow_id, "step": name, "ok": ok}


def outcome(flow_id: int, status: str, duration_s: float, t: float = 0.0) -> dict:
    return {"kind": "flow", "flow_id": flow_id, "status": status, "duration_s": duration_s, "t": t}


def test_running_flows_are_counted_in_the_step_they_are_in():
    stats = live.LiveStats()
    for flow_id in range(4):
        stats.flow_started(flow_id)
    stats.observe(step(1, "derive_key"))  # flow 1 is now encrypting
    for name in STEPS[:10]:  # flow 2 finished relay: it waits in confirm
        stats.observe(step(2, name))
    stats.observe(step(3, "derive_key"))
    stats.observe(step(3, "encrypt", ok=False))  # a failed step: its outcome follows
    stats.observe(outcome(3, "failed", 0.5))
    stats.observe({"kind": "run", "event": "start"})  # other kinds change nothing
    running = stats.in_flight()
    assert list(running) == list(STEPS)
    assert {k: v for k, v in running.items() if v} == {"derive_key": 1, "encrypt": 1, "confirm": 1}
    assert (stats.started, stats.ok, stats.failed, len(stats.at_step)) == (4, 0, 1, 3)


def test_outcomes_and_running_percentiles_match_numpy():
    stats = live.LiveStats()
    durations = [3.0, 1.0, 7.5, 2.0, 10.0, 4.25]
    for i, d in enumerate(durations):
        stats.flow_started(i)
        stats.observe(outcome(i, "ok", d, t=i))
    stats.flow_started(6)
    stats.observe(outcome(6, "cancelled", 1.0))
    assert (stats.ok, stats.failed, stats.cancelled) == (6, 0, 1)
    for q in (50, 95):
        assert stats.percentile(q) == pytest.approx(np.percentile(durations, q))
    assert live.LiveStats().percentile(50) is None
    assert stats.points[-1] == (5 + 4.25, 4.25, True)  # (end time, duration, ok)


def test_a_snapshot_shows_gauges_requests_and_the_expected_length(tmp_path):
    stats = live.LiveStats()
    for i, d in enumerate([2.0, 4.0]):
        stats.flow_started(i)
        stats.observe(outcome(i, "ok", d))
    stats.flow_started(2)
    requests = RequestLog(None)
    requests.add("RPC", "eth_call", 0, 1, 429, "HTTP 429")
    requests.add("RPC", "eth_call", 0, 1, 200)
    gauges = {("api", "relayer_pending"): 3.0, ("driver", "loop_lag_ms"): 12.0}
    snap = live.snapshot(stats, 5.0, deadline_s=10.0, expected_flows=25, gauges=gauges,
                         requests=requests)  # fmt: skip
    assert snap.expected_s == pytest.approx(10.0 + np.percentile([2.0, 4.0], 95))
    assert (snap.started, snap.running, snap.ok) == (3, 1, 2)
    line = live.status_line(snap)
    assert "flows 3/25 started, 1 running, 2 ok, 0 failed" in line
    assert "relayer 3" in line and "lag 12ms" in line and "txpool" not in line  # not sampled
    assert "requests 2 (1 failed, 1 rate-limited)" in line
    html = live.panel_html(snap, stats.points, title="run x")
    assert "wb-live" in html and "<svg" in html and html.count("<circle") == 2
    assert "relayer pending <b>3</b>" in html and "txpool <b>–</b>" in html
    assert all(name in html for name in STEPS)
    before = live.snapshot(live.LiveStats(), 1.0, deadline_s=10.0)
    assert before.expected_s is None and "p50 –" in live.status_line(before)


def test_the_plot_stays_small_for_many_flows():
    stats = live.LiveStats()
    for i in range(5000):
        stats.flow_started(i)
        stats.observe(outcome(i, "ok" if i % 10 else "failed", 1.0 + i % 7, t=i * 0.1))
    svg = live.latency_svg(stats.points, live.snapshot(stats, 500.0))
    assert 0 < svg.count("<circle") <= live.PLOT_POINTS and "#d93025" in svg


async def test_without_a_frontend_the_view_prints_status_lines_and_ends_on_the_final_state(
    monkeypatch,
):
    monkeypatch.setattr(live, "STATUS_EVERY_S", 0.01)
    out = io.StringIO()
    stats, now = live.LiveStats(), [0.0]
    view = live.LiveView(stats, lambda: now[0], say=lambda s: print(s, file=out), panel=False)
    assert view.lines  # no Jupyter frontend here
    async with view:
        for i in range(3):
            stats.flow_started(i)
            now[0] += 1
            await asyncio.sleep(0.03)
        for i in range(3):
            stats.observe(outcome(i, "ok", 1.0))
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("⏱") for line in lines)
    assert "3 ok" in lines[-1] and "0 running" in lines[-1]  # the last refresh is the final state


def test_only_a_kernel_a_jupyter_server_started_has_a_frontend(monkeypatch):
    assert not live.in_kernel() and not live.has_frontend()  # pytest: no IPython kernel
    monkeypatch.setattr(live, "in_kernel", lambda: True)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    headless = live.LiveView(live.LiveStats(), lambda: 0.0, say=print)
    assert headless.panel and headless.lines  # papermill, nbclient: the panel and status lines
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/run.ipynb")
    lab = live.LiveView(live.LiveStats(), lambda: 0.0, say=print)
    assert lab.panel and not lab.lines  # JupyterLab: the panel alone


# --- a real kernel: the panel is one display, updated in place -------------------------------------

PANEL_CELL = """
import asyncio
from workbench.driver import live
live.PANEL_EVERY_S = 0.05
stats, now = live.LiveStats(), [0.0]
async with live.LiveView(stats, lambda: now[0], say=print, lines=False, title="nbclient"):
    for i in range(4):
        stats.flow_started(i)
        now[0] += 1.0
        await asyncio.sleep(0.1)
    for i in range(4):
        stats.observe({"kind": "flow", "flow_id": i, "status": "ok", "duration_s": 1.0 + i, "t": 0})
        await asyncio.sleep(0.1)
"""


class RecordingClient(NotebookClient):
    """nbclient, keeping (msg_type, display_id) of every display message the kernel sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.displays: list[tuple[str, str | None]] = []

    def process_message(self, msg, cell, cell_index):
        kind = msg["msg_type"]
        if kind in ("display_data", "update_display_data"):
            transient = msg["content"].get("transient") or {}
            self.displays.append((kind, transient.get("display_id")))
        return super().process_message(msg, cell, cell_index)


@pytest.mark.e2e
def test_the_panel_is_one_display_updated_in_place_by_a_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PANEL_CELL)])
    client = RecordingClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(cwd=str(PROJECT_ROOT))
    kinds = [kind for kind, _ in client.displays]
    ids = {display_id for _, display_id in client.displays}
    assert kinds[0] == "display_data" and kinds.count("display_data") == 1
    assert kinds.count("update_display_data") >= 5
    assert len(ids) == 1 and None not in ids  # every update names the first display's id
    outputs = [o for o in nb.cells[0].outputs if o.output_type == "display_data"]
    assert len(outputs) == 1  # nbclient (papermill) applied the updates to the one output
    final = outputs[0].data
    assert "flows 4 started, 0 running, 4 ok, 0 failed" in final["text/plain"]
    assert "wb-live" in final["text/html"] and final["text/html"].count("<circle") == 4
