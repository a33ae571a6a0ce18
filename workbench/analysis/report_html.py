"""The report's HTML: tables of criteria, latency, steps, errors, resources and configuration,
and the export of the report notebook to one self-contained page (nbconvert's lab template,
no inputs, no script or stylesheet fetched from anywhere: it opens offline).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jinja2
import nbformat
from nbconvert import HTMLExporter

from workbench.analysis import criteria as crit
from workbench.analysis import plots
from workbench.analysis.console import STATUS_ICON
from workbench.analysis.results import Results
from workbench.steps import fault_component, in_flow_order, step_component

CONFIG_HIDDEN = ("wallet_addresses", "profile_settings")  # long; summarised instead

# --------------------------------------------------------------------------- tables


def criteria_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The pass/fail table, each row coloured by its status."""
    body = []
    for r in rows:
        unit = r.get("unit", "")
        cells = [
            html.escape(str(r["label"])),
            html.escape(crit.format_value(r.get("value"), unit)),
            html.escape(crit.format_threshold(r["op"], r["target"], unit)),
            html.escape(crit.format_threshold(r["op"], r["acceptable"], unit)),
            f"{STATUS_ICON.get(r['status'], '')} {html.escape(r['status'])}",
            html.escape(r.get("note") or ""),
        ]
        status = r["status"].lower().replace("/", "")
        body.append(f'<tr class="wb-{status}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("Criterion", "Value", "Target", "Acceptable", "Status", "Note")
    )
    return f'<table class="wb-table wb-criteria"><tr>{head}</tr>{"".join(body)}</table>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="wb-table {cls}"><tr>{head}</tr>{body}</table>'


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str)
    return str(value)


def badge(text: str) -> str:
    return f'<span class="wb-badge wb-badge-{text.lower()}">{html.escape(text)}</span>'


def step_table_html(summary: Mapping[str, Any]) -> str:
    stats = summary.get("step_stats") or {}
    rows = [
        [
            step,
            stats[step].get("n"),
            stats[step].get("failed"),
            *(_ms(stats[step].get(k)) for k in ("mean", "p50", "p95", "p99", "max")),
            step_component(step),
        ]
        for step in in_flow_order(stats)
    ]
    headers = ("Step", "Attempts", "Failed", "Mean", "p50", "p95", "p99", "Max", "Served by")
    return _table(headers, rows, "wb-steps")


def _ms(seconds: Any) -> str:
    return "–" if seconds is None else plots.secs(seconds)


def error_table_html(results: Results) -> str:
    """One row per error class and failed step: flows, component at fault, an example message."""
    bad = results.flows[results.flows["status"] != "ok"]
    if bad.empty:
        return "<p>No errors: every flow completed.</p>"
    keys = [bad["error_class"].fillna("unknown"), bad["failed_step"].fillna("unknown")]
    rows: list[list[Any]] = []
    for (cls, step), group in bad.groupby(keys, sort=False):
        example = group["error"].dropna().astype(str)
        rows.append(
            [
                cls,
                step,
                len(group),
                fault_component(str(cls), str(step)),
                (example.iloc[0][:120] if len(example) else ""),
            ]
        )
    rows.sort(key=lambda r: -r[2])
    return _table(("Error class", "Failed step", "Flows", "Component at fault", "Example"), rows)


def request_table_html(summary: Mapping[str, Any]) -> str:
    """Per RPC method and HTTP endpoint: attempts, failures, retries, 429s and 503s, latency of
    the successful attempts in ms, and the throttle's delays when it held calls back."""
    by_name = (summary.get("requests") or {}).get("by_name") or {}
    if not by_name:
        return ""
    throttled = any(row.get("throttled") for row in by_name.values())
    cols: tuple[str, ...] = ("requests", "failures", "retries", "rate_limited", "unavailable")
    cols += ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
    headers = ["Request", "Count", "Failures", "Retries", "429", "503"]
    headers += ["p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"]
    if throttled:
        cols += ("throttled", "wait_s")
        headers += ["Throttled", "Waited s"]
    rows = [[name, *(row.get(c) for c in cols)] for name, row in by_name.items()]
    return _table(headers, rows, "wb-requests")


def latency_table_html(summary: Mapping[str, Any]) -> str:
    lat = summary.get("latency") or {}
    conf = lat.get("confidence", 0.95)

    def ci(name: str) -> str:
        pair = lat.get(f"{name}_ci")
        return f"{plots.secs(pair[0])} – {plots.secs(pair[1])}" if pair else "–"

    rows = [[name, _ms(lat.get(name)), ci(name)] for name in ("mean", "p50", "p95", "p99")]
    rows.append(["max", _ms(lat.get("max")), ""])
    return _table(("Statistic", f"Value (n={lat.get('n', 0)})", f"{conf:.0%} CI (bootstrap)"), rows)


def resources_table_html(summary: Mapping[str, Any]) -> str:
    res = summary.get("resources") or {}
    cols: tuple[str, ...] = ("avg_cpu_pct", "peak_cpu_pct", "avg_rss_mb", "peak_rss_mb")
    cols += ("peak_open_files",)
    cols += ("peak_connections", "peak_threads")
    trends = summary.get("memory_trends") or {}

    def slope(comp: str) -> Any:  # "n/a": too short a steady span to judge a trend
        trend = trends.get(comp)
        return f"{trend['slope_mb_per_min']:+.2f}" if trend else ("n/a" if comp in trends else "")

    rows = [[comp, *(vals.get(c) for c in cols), slope(comp)] for comp, vals in res.items()]
    headers: tuple[str, ...] = ("Component", "CPU % avg", "CPU % peak", "RSS MB avg")
    headers += ("RSS MB peak", "Open files peak", "Sockets peak", "Threads peak")
    headers += ("RSS trend MB/min",)
    return _table(headers, rows)


def config_table_html(config: Mapping[str, Any]) -> str:
    """The run's configuration, flattened; long lists summarised. No secrets by construction
    (config.json holds none, and the guard refuses to render one that does)."""
    rows = []
    for key, value in config.items():
        if key == "wallet_addresses" and isinstance(value, list):
            rows.append([key, f"{len(value)} addresses"])
        elif key in CONFIG_HIDDEN:
            continue
        elif isinstance(value, Mapping):
            rows += [[f"{key}.{k}", v] for k, v in value.items()]
        else:
            rows.append([key, value])
    return _table(("Setting", "Value"), rows, "wb-config")


def saturation_banner_html(s: Mapping[str, Any]) -> str:
    """The warning at the top of a report whose driver distorted its own timings."""
    judged = s.get("driver_saturation") or {}
    items = "".join(f"<li>{html.escape(r)}</li>" for r in judged.get("reasons") or [])
    return (
        '<div class="wb-warning"><b>🚩 The driver was saturated:</b> its own delays are inside '
        "the latencies below, which are therefore upper bounds (a failure may be the driver's, "
        "not the system's). Run with fewer users per process, or spread them over Dask workers "
        f"(<code>workers</code>).<ul>{items}</ul></div>"
    )


def workers_table_html(s: Mapping[str, Any]) -> str:
    """One row per Dask worker: its flows, outcomes, clock offset, loop lag and resources."""
    stats = s.get("worker_stats") or {}
    cols = (
        *("flows", "ok", "failed", "lost_flows", "clock_offset_ms", "loop_lag_p99_ms"),
        *("control_lag_p99_ms", "avg_cpu_pct", "peak_rss_mb"),
    )
    rows = [
        [name + (" (lost)" if w.get("lost") else ""), *(w.get(c) for c in cols)]
        for name, w in stats.items()
    ]
    headers = (
        *("Worker", "Flows", "Ok", "Failed", "Lost in flight", "Clock offset ms"),
        *("Loop lag p99 ms", "Control lag p99 ms", "CPU % avg", "RSS MB peak"),
    )
    return _table(headers, rows, "wb-workers")


def run_facts_html(s: Mapping[str, Any]) -> str:
    facts = [
        ("users", s.get("users")),
        ("workers", s.get("workers") or None),
        ("shape", s.get("shape")),
        ("profile", s.get("profile")),
        ("relay", s.get("relay")),
        ("client", s.get("client")),
        ("started", s.get("started_at")),
        ("wall", plots.secs(s.get("wall_s"))),
        ("flows", s.get("flows_started")),
    ]
    return " · ".join(f"{k} <b>{html.escape(str(v))}</b>" for k, v in facts if v is not None)


# --------------------------------------------------------------------------- export

_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ output.data['text/plain'] | escape_html }}" style="max-width: 100%">
</div>
{%- endblock data_png %}
{% block extra_css %}<style type="text/css">{{ resources.wb_css }}</style>{% endblock extra_css %}
"""
_CSS = """
body { max-width: 1200px; margin: 0 auto; }
.wb-table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px; }
.wb-table th, .wb-table td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
.wb-table th { background: #f4f4f4; }
tr.wb-target td { background: #e6f4ea; }
tr.wb-acceptable td { background: #fff4d6; }
tr.wb-fail td { background: #fde2e1; font-weight: 600; }
tr.wb-na td { background: #f0f0f0; color: #666; }
tr.wb-warn td { background: #fde9d2; font-weight: 600; }
.wb-warning { background: #fde9d2; border-left: 6px solid #e37400; padding: 8px 14px;
  margin: 0.5em 0 1em; font-size: 14px; }
.wb-badge { display: inline-block; padding: 3px 12px; border-radius: 4px; color: white;
  font-weight: 700; letter-spacing: 0.05em; }
.wb-badge-passed { background: #1e8e3e; }
.wb-badge-failed { background: #d93025; }
.wb-badge-incomplete { background: #e37400; }
.wb-verdict { font-size: 15px; }
"""
# Anything that would make the browser fetch: a script/link/img pointing at http(s) or //host.
_REMOTE = re.compile(
    r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//[^>]*>", re.I
)


def export_html(notebook: nbformat.NotebookNode) -> str:
    """nbconvert's lab template without inputs, prompts, MathJax, require.js or mermaid."""
    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        extra_loaders=[jinja2.DictLoader({"wb_report.html.j2": _TEMPLATE})],
        template_file="wb_report.html.j2",
    )
    body, _ = exporter.from_notebook_node(notebook, resources={"wb_css": _CSS})
    return _REMOTE.sub("", body)  # belt and braces: the template asks for none
