"""The live view of a run: what the flows are doing now, refreshed while they run.

It shows only what the runner already records: the events it writes (`LiveStats.observe`, fed
by the runner's emit), the sampler's newest gauges (`Sampler.latest`) and the request log's
running totals. It measures nothing itself.

- In a Jupyter kernel: a panel (counts, flows in flight per step, running p50/p95 of ok flows,
  relayer, inference queue and txpool gauges, the driver's loop lag and CPU, elapsed and
  expected time, a small latency plot) displayed once under a display_id and updated in place
  every `PANEL_EVERY_S`. JupyterLab redraws it; papermill (nbclient) applies each update to the
  stored output, so an executed notebook keeps the panel's final state.
- Without a Jupyter frontend (a terminal, a pipe, papermill's log): a compact status line every
  `STATUS_EVERY_S`, plain text, one line each, so a log stays readable. A Jupyter server sets
  `JPY_SESSION_NAME` for the kernels it starts; papermill and nbclient do not.

The plot is a few lines of inline SVG rather than matplotlib: the panel is drawn on the event
loop that times the flows, and a matplotlib figure takes tens of milliseconds to draw there
(`benchmarks/live.py` measures both).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import html
import itertools
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.request_log import NO_LOG, RequestLog
from workbench.steps import STEPS

PANEL_EVERY_S = 1.5
STATUS_EVERY_S = 5.0
PLOT_POINTS = 400  # at most this many flows drawn (evenly thinned beyond)
_STEP_INDEX = {name: i for i, name in enumerate(STEPS)}
# The gauges shown, by label: (component, metric) in the sampler's names.
GAUGES = {
    "relayer pending": ("api", "relayer_pending"),
    "inference queue": ("personal", "queue_depth"),
    "txpool": ("anvil", "txpool_pending"),
    "loop lag ms": ("driver", "loop_lag_ms"),
    "driver CPU %": ("driver", "cpu_pct"),
}


@dataclass
class LiveStats:
    """Counts folded from the run's events: flows by outcome, the step each running flow is in,
    and the durations of finished flows."""

    started: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    at_step: dict[int, int] = field(default_factory=dict)  # flow_id -> index of its step now
    ok_durations: list[float] = field(default_factory=list)  # sorted
    points: list[tuple[float, float, bool]] = field(default_factory=list)  # (end t, s, ok)

    def flow_started(self, flow_id: int) -> None:
        self.started += 1
        self.at_step[flow_id] = 0

    def observe(self, event: Mapping[str, Any]) -> None:
        """Takes in an event as the runner writes it (step and flow events; others ignored)."""
        kind, flow_id = event.get("kind"), event.get("flow_id", -1)
        if kind == "step" and event.get("ok") and flow_id in self.at_step:
            self.at_step[flow_id] = _STEP_INDEX.get(event["step"], -1) + 1  # on to the next step
        elif kind == "flow":
            self.at_step.pop(flow_id, None)
            status, duration = event.get("status"), float(event.get("duration_s") or 0.0)
            if status == "cancelled":
                self.cancelled += 1
                return
            ok = status == "ok"
            self.ok += ok
            self.failed += not ok
            if ok:
                bisect.insort(self.ok_durations, duration)
            self.points.append((float(event.get("t") or 0.0) + duration, duration, ok))

    def in_flight(self) -> dict[str, int]:
        """Running flows per step, every step in flow order (zeros too)."""
        counts = Counter(self.at_step.values())
        return {name: counts.get(i, 0) for i, name in enumerate(STEPS)}

    def percentile(self, q: float) -> float | None:
        """Percentile `q` (0-100) of ok flows' durations, linear as numpy's default."""
        x = self.ok_durations
        if not x:
            return None
        h = (len(x) - 1) * q / 100
        lo = math.floor(h)
        return x[lo] + (h - lo) * (x[min(lo + 1, len(x) - 1)] - x[lo])


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh shows."""

    elapsed_s: float
    expected_s: float | None
    started: int
    expected_flows: int | None
    running: int
    ok: int
    failed: int
    cancelled: int
    p50_s: float | None
    p95_s: float | None
    in_flight: dict[str, int]
    gauges: dict[str, float | None]
    requests: int
    requests_failed: int
    rate_limited: int


def snapshot(
    stats: LiveStats,
    elapsed_s: float,
    deadline_s: float | None = None,
    expected_flows: int | None = None,
    gauges: Mapping[tuple[str, str], float] | None = None,
    requests: RequestLog = NO_LOG,
) -> Snapshot:
    """The numbers of one refresh. The expected length is the shape's last start (`deadline_s`)
    plus the p95 of ok flows so far (unknown until one has finished)."""
    p95 = stats.percentile(95)
    latest = gauges or {}
    return Snapshot(
        elapsed_s=elapsed_s,
        expected_s=None if deadline_s is None or p95 is None else max(deadline_s + p95, elapsed_s),
        started=stats.started,
        expected_flows=expected_flows,
        running=len(stats.at_step),
        ok=stats.ok,
        failed=stats.failed,
        cancelled=stats.cancelled,
        p50_s=stats.percentile(50),
        p95_s=p95,
        in_flight=stats.in_flight(),
        gauges={label: latest.get(key) for label, key in GAUGES.items()},
        requests=requests.count,
        requests_failed=requests.failed,
        rate_limited=requests.limited,
    )


# --------------------------------------------------------------------------- text


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"


def _n(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def status_line(s: Snapshot) -> str:
    """One compact line: time, flows, latency, stack gauges, driver, requests."""
    g = s.gauges
    expected = f"/~{_s(s.expected_s)}" if s.expected_s is not None else ""
    of = f"/{s.expected_flows}" if s.expected_flows else ""
    parts = [
        f"⏱ {_s(s.elapsed_s)}{expected}",
        f"flows {s.started}{of} started, {s.running} running, {s.ok} ok, {s.failed} failed"
        + (f", {s.cancelled} cancelled" if s.cancelled else ""),
        f"p50 {_s(s.p50_s)} p95 {_s(s.p95_s)}",
    ]
    short = {"relayer pending": "relayer", "inference queue": "queue", "txpool": "txpool"}
    stack = [f"{word} {_n(g[label])}" for label, word in short.items() if g[label] is not None]
    if stack:
        parts.append(" ".join(stack))
    if g["loop lag ms"] is not None or g["driver CPU %"] is not None:
        parts.append(f"lag {_n(g['loop lag ms'])}ms cpu {_n(g['driver CPU %'])}%")
    if s.requests:
        limited = f", {s.rate_limited} rate-limited" if s.rate_limited else ""
        parts.append(f"requests {s.requests} ({s.requests_failed} failed{limited})")
    return " | ".join(parts)


# --------------------------------------------------------------------------- panel

_CSS = (
    "font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;"
    " line-height: 1.5; border: 1px solid #ccc; border-radius: 4px; padding: 6px 10px;"
    " display: inline-block"
)


def panel_html(s: Snapshot, points: list[tuple[float, float, bool]], title: str = "") -> str:
    """The panel: facts, flows in flight per step, gauges and the latency plot."""
    g = s.gauges
    head = html.escape(title) + " · " if title else ""
    expected = f" of ~{_s(s.expected_s)}" if s.expected_s is not None else ""
    of = f" of {s.expected_flows}" if s.expected_flows else ""
    lines = [
        f"<b>{head}{_s(s.elapsed_s)}{expected}</b>",
        f"flows <b>{s.started}</b>{of} started · <b>{s.running}</b> running · "
        f"<b style='color:#1e8e3e'>{s.ok}</b> ok · <b style='color:#d93025'>{s.failed}</b> failed"
        + (f" · {s.cancelled} cancelled" if s.cancelled else ""),
        f"ok flows: p50 <b>{_s(s.p50_s)}</b> · p95 <b>{_s(s.p95_s)}</b>",
        " · ".join(f"{label} <b>{_n(value)}</b>" for label, value in g.items()),
    ]
    if s.requests:
        lines.append(
            f"requests <b>{s.requests:,}</b> · failed <b>{s.requests_failed:,}</b> · "
            f"rate-limited (429) <b>{s.rate_limited:,}</b>"
        )
    steps = "".join(
        f"<tr><td>{name}</td><td style='text-align:right'>{n}</td>"
        f"<td><div style='background:#4a7fd4;height:8px;width:{min(n, 60) * 3}px'></div></td></tr>"
        for name, n in s.in_flight.items()
    )
    table = f"<table style='border-collapse:collapse;font-size:11px'>{steps}</table>"
    body = "<br>".join(lines)
    return (
        f"<div class='wb-live' style='{_CSS}'>{body}"
        f"<div style='display:flex;gap:16px;margin-top:4px'>"
        f"<div><i>in flight per step</i>{table}</div>"
        f"<div><i>flow duration by completion time</i><br>{latency_svg(points, s)}</div>"
        f"</div></div>"
    )


def latency_svg(points: list[tuple[float, float, bool]], s: Snapshot, w: int = 360) -> str:
    """Finished flows as dots (x: when they ended, y: how long they took; red: failed) with the
    running p50 and p95 as dashed lines."""
    h, pad = 130, 28
    if len(points) > PLOT_POINTS:  # thin evenly: the shape over time stays, the SVG stays small
        points = points[:: math.ceil(len(points) / PLOT_POINTS)]
    x_max = max([s.elapsed_s, 1.0, *(p[0] for p in points)])
    y_max = max([1.0, *(p[1] for p in points)]) * 1.1

    def x(t: float) -> float:
        return pad + (w - pad - 6) * t / x_max

    def y(v: float) -> float:
        return h - 16 - (h - 24) * v / y_max

    dots = "".join(
        f"<circle cx='{x(t):.1f}' cy='{y(d):.1f}' r='2' fill='{'#1e8e3e' if ok else '#d93025'}'/>"
        for t, d, ok in points
    )
    lines = "".join(
        f"<line x1='{pad}' x2='{w - 6}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='{colour}' "
        f"stroke-dasharray='4 3'/><text x='{w - 6}' y='{y(v) - 2:.1f}' text-anchor='end' "
        f"fill='{colour}'>{label} {_s(v)}</text>"
        for label, v, colour in (("p50", s.p50_s, "#555"), ("p95", s.p95_s, "#e37400"))
        if v is not None
    )
    axes = (
        f"<line x1='{pad}' y1='{h - 16}' x2='{w - 6}' y2='{h - 16}' stroke='#999'/>"
        f"<line x1='{pad}' y1='8' x2='{pad}' y2='{h - 16}' stroke='#999'/>"
        f"<text x='{pad}' y='{h - 3}'>0</text>"
        f"<text x='{w - 6}' y='{h - 3}' text-anchor='end'>{x_max:.0f} s</text>"
        f"<text x='{pad - 3}' y='14' text-anchor='end'>{y_max:.0f}s</text>"
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
        f"style='font-size:10px'>{axes}{lines}{dots}</svg>"
    )


# --------------------------------------------------------------------------- where it shows


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell), whoever its client is."""
    ipython = sys.modules.get("IPython")  # never imported here: a CLI run stays without it
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def has_frontend() -> bool:
    """Whether a Jupyter frontend (JupyterLab, Notebook) shows this kernel's output live."""
    return in_kernel() and bool(os.environ.get("JPY_SESSION_NAME"))


class LiveView:
    """Refreshes the panel and/or the status lines while the run goes; `async with` it around
    the flows. The last refresh happens on exit, so both end on the run's final state."""

    def __init__(
        self,
        stats: LiveStats,
        now: Callable[[], float],
        *,
        say: Callable[[str], None],
        gauges: Callable[[], Mapping[tuple[str, str], float]] = dict,
        requests: RequestLog = NO_LOG,
        deadline_s: float | None = None,
        expected_flows: int | None = None,
        title: str = "",
        panel: bool | None = None,
        lines: bool | None = None,
    ):
        self.stats, self.now, self.say, self.gauges = stats, now, say, gauges
        self.requests, self.deadline_s, self.expected_flows = requests, deadline_s, expected_flows
        self.title = title
        self.panel = in_kernel() if panel is None else panel
        self.lines = not has_frontend() if lines is None else lines
        self._handle: Any = None
        self._task: asyncio.Task | None = None

    def snapshot(self) -> Snapshot:
        return snapshot(
            self.stats,
            self.now(),
            self.deadline_s,
            self.expected_flows,
            self.gauges(),
            self.requests,
        )

    def show(self, line: bool) -> Snapshot:
        """One refresh: the panel updated in place, and a status line if `line`."""
        snap = self.snapshot()
        if self.panel:
            self._display(snap)
        if line and self.lines:
            self.say(status_line(snap))
        return snap

    def _display(self, snap: Snapshot) -> None:
        from IPython.display import display  # only in a kernel, where IPython is loaded already

        bundle = {
            "text/html": panel_html(snap, self.stats.points, self.title),
            "text/plain": status_line(snap),
        }
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    async def _run(self) -> None:
        every = PANEL_EVERY_S if self.panel else STATUS_EVERY_S
        line_every = max(1, round(STATUS_EVERY_S / every))  # refreshes per status line
        for n in itertools.count(1):
            await asyncio.sleep(every)
            self.show(line=n % line_every == 0)

    async def __aenter__(self) -> LiveView:
        # The first refresh comes one interval in: the panel then sits below the lines the run
        # prints as it launches its flows.
        if self.panel or self.lines:
            self._task = asyncio.create_task(self._run(), name="live-view")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.show(line=True)
