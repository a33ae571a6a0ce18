"""The shareable report of a run, rendered from its results dir alone.

`render(results_dir)` writes `summary.json`, `criteria.csv`, `criteria.xml` (JUnit, see
`analysis.junit`), `stats.csv` and `stats_history.csv` (Locust's columns, see
`analysis.stats_csv`), `histograms/` (per-step HdrHistograms, see `analysis.histograms`),
`figures/*.png` and `report.html`.
The HTML is an nbformat notebook built in memory (markdown cells, and display_data outputs for
tables and figures; no kernel runs) exported by nbconvert without inputs, with every image a data
URI and no script or stylesheet fetched from anywhere: it opens offline, without Jupyter.

Reports get shared, so nothing is written until every output (and the run's own config.json and
events.jsonl) has been checked for private keys: `refuse_secrets` raises instead. Outputs are
staged in a hidden folder and moved into place only after that check, so a refused or crashed
render leaves no partial report behind.

Its parts live apart: the secrets guard in `workbench.secrets`, the console lines in
`analysis.console`, the HTML tables and the nbconvert export in `analysis.report_html`; here
remain `render` and the notebook's assembly.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from workbench import params
from workbench.analysis import criteria as crit
from workbench.analysis import plots
from workbench.analysis import report_html as html
from workbench.analysis.console import console_text
from workbench.analysis.histograms import write_run_histograms
from workbench.analysis.results import Results, load_results
from workbench.analysis.stats_csv import write_stats_csv
from workbench.analysis.summary import summarize, write_summary
from workbench.errors import WorkbenchError
from workbench.secrets import known_secrets, refuse_secrets

OUTPUTS = (
    "summary.json",
    "criteria.csv",
    "criteria.xml",
    "stats.csv",
    "stats_history.csv",
    "report.html",
)
FIGURE_CAPTIONS = {
    "latency_histogram": "Completion time of successful flows, with p50 / p95 / p99 and the "
    "criteria's target and acceptable thresholds.",
    "step_breakdown": "Where a flow spends its time: p50 and p95 of each step, in flow order.",
    "timeline": "Flows in flight, completed flows per minute and the driver's event-loop lag.",
    "resources": "System CPU and network, the stack's queues, then CPU, memory and sockets of "
    "each process. System CPU and network count everything on the machine, not only the "
    "workbench and its stack.",
    "errors": "Flows that did not succeed, by error class (with the component at fault) and "
    "by the step they failed at.",
    "capacity_curve": "Throughput and p95 latency against users, with the knee marked.",
}


# --------------------------------------------------------------------------- render


def render(
    results_dir: str | Path,
    criteria_path: str | Path | None = None,
    secrets: Iterable[str] | None = None,
) -> Path:
    """Writes summary.json, criteria.csv, criteria.xml, stats.csv, stats_history.csv,
    histograms/, figures/*.png and report.html; returns report.html.

    `criteria_path` defaults to the criteria file recorded in config.json, then to ms03.
    `secrets` adds keys to refuse to `known_secrets()`: the run's wallet keys and mnemonic (the
    runner passes its wallets'; `python -m workbench report` reads the run's wallet file)."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    all_secrets = known_secrets(secrets or ())
    inputs = [results_dir / name for name in ("config.json", "events.jsonl", "samples.csv")]
    refuse_secrets(inputs, all_secrets)  # a leaky run must not become a shareable report
    criteria, criteria_note = _criteria(criteria_path, results.config)
    summary = summarize(results, criteria)
    stage = results_dir / f".render-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
        write_summary(stage, summary)
        write_run_histograms(stage, results, summary.get("wall_s"))
        write_stats_csv(stage, results, summary.get("wall_s"))
        figures = plots.save_all(results, summary, summary["criteria"], stage / "figures")
        notebook = build_notebook(results, summary, figures, criteria_note)
        (stage / "report.html").write_text(html.export_html(notebook), encoding="utf-8")
        refuse_secrets([stage / name for name in OUTPUTS], all_secrets)
        _publish(stage, results_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return results_dir / "report.html"


def _publish(stage: Path, results_dir: Path) -> None:
    # os.replace per file: a reader never sees a half-written report.
    for src in sorted(stage.rglob("*")):
        if src.is_file():
            dest = results_dir / src.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)


def _criteria(
    criteria_path: str | Path | None, config: Mapping[str, Any]
) -> tuple[crit.Criteria, str]:
    """The criteria to judge by, and a note for the report when the recorded file is gone."""
    if criteria_path is not None:
        return crit.load_criteria(criteria_path), ""
    recorded = config.get("criteria")
    if recorded:
        try:  # config.json records a name or a project-relative path
            return crit.load_criteria(params.stored_path(str(recorded), "criteria")), ""
        except WorkbenchError:
            pass
        note = f"The run's criteria file {recorded!r} is not available here; judged by ms03."
        return crit.load_criteria(crit.DEFAULT_CRITERIA), note
    return crit.load_criteria(crit.DEFAULT_CRITERIA), ""


# --------------------------------------------------------------------------- notebook


def simulated_notes(config: Mapping[str, Any]) -> list[str]:
    """What in this run was not the real system, so nobody mistakes it for production numbers."""
    notes = []
    settings = config.get("profile_settings") or {}
    if config.get("inference_backend") == "simulated":
        lo_hi = (settings.get("inference") or {}).get("latency_s")
        span = f" (uniform {lo_hi[0]}–{lo_hi[1]} s per request)" if lo_hi else ""
        notes.append(
            "**Inference latency is simulated**" + span + ": the personal server's queue and "
            "workers are real, the LLM call is a timed sleep."
        )
    if config.get("target_kind") == "local":
        chain = settings.get("chain") or {}
        block = chain.get("block_time_s")
        mining = "automine" if block == 0 else f"{block:g} s blocks" if block else "anvil defaults"
        notes.append(
            f"The chain is a local anvil node ({mining}) with the workbench's own contracts; "
            "storage, API server and personal server are the embedded local stack."
        )
    return notes


def faults_markdown(summary: Mapping[str, Any]) -> str:
    faults = summary.get("faults_injected")
    if faults in (None, "none", {}, []):
        return "No faults were injected: every failure above came from the system under load."
    text = json.dumps(faults, indent=2, default=str) if not isinstance(faults, str) else faults
    return (
        "Faults were injected on purpose; errors in the components they target are expected.\n\n"
        f"```\n{text}\n```"
    )


def rate_limits_markdown(summary: Mapping[str, Any]) -> str:
    """The warning when anything answered 429, what retried, and what the throttle delayed."""
    req = summary.get("requests") or {}
    if not req.get("total"):
        return "No per-request record (`requests.csv`) in this results dir."
    parts = []
    limited = {k: v["rate_limited"] for k, v in req["by_name"].items() if v.get("rate_limited")}
    if limited:
        names = ", ".join(f"{name} {n:,}" for name, n in limited.items())
        rpc = any(name.startswith("RPC ") for name in limited)
        advice = " Against a provider's RPC, `rpc_rate_limit` keeps a run under its limit."
        parts.append(
            f"> ⚠️ **Rate limited: {req['rate_limited']:,} answers asked the driver to slow "
            f'down** (HTTP 429, or JSON-RPC -32005 "limit exceeded"): {names}. While rate '
            f"limited, a run measures the limiter more than the system.{advice if rpc else ''}"
        )
    parts.append(
        f"{req['total']:,} requests, {req['failed']:,} failed, {req['retried']:,} were retries "
        f"of a failed attempt, {req['unavailable']:,} answered 503. Latency percentiles are of "
        "the successful attempts."
    )
    retried = {k: v for k, v in (summary.get("step_retries") or {}).items() if v["retries"]}
    if retried:
        steps = ", ".join(
            f"{k} {v['retries']:,} in {v['retried']:,} steps" for k, v in retried.items()
        )
        parts.append(f"Retries and reconnects inside steps: {steps}.")
    throttle = req.get("throttle") or {}
    if throttle.get("limit_per_s"):
        parts.append(
            f"Client throttle: at most {throttle['limit_per_s']:g} RPC calls/s per endpoint; it "
            f"delayed {throttle['delayed']:,} calls by {throttle['wait_s']:.1f} s in all"
            + (f" (longest {throttle['max_wait_ms']:.0f} ms)." if throttle["delayed"] else ".")
        )
    return "\n\n".join(parts)


def build_notebook(
    results: Results,
    summary: Mapping[str, Any],
    figures: Sequence[Path],
    criteria_note: str = "",
) -> nbformat.NotebookNode:
    """The report as a notebook: markdown cells and display_data outputs, no code."""
    title = summary.get("criteria_title") or "Load test"
    cells = [_md(f"# {title}\n\nRun `{summary['run_id']}`")]
    badges = html.badge(summary["verdict"])
    if not summary.get("complete", True):
        badges += " " + html.badge("INCOMPLETE")
    cells.append(_html(f'<p class="wb-verdict">{badges} {html.run_facts_html(summary)}</p>'))
    if not summary.get("complete", True):
        cells.append(_md(_incomplete_note(summary)))
    if summary.get("driver_saturated"):
        cells.append(_html(html.saturation_banner_html(summary)))
    if summary.get("client_timeouts"):
        cells.append(_md(_client_timeout_note(summary)))
    console = console_text(results.path, results, summary)
    cells.append(_md(f"## Run output\n\n```text\n{console}\n```"))
    cells.append(_md("## Criteria" + (f"\n\n{criteria_note}" if criteria_note else "")))
    cells.append(_html(html.criteria_table_html(summary["criteria"])))
    by_name = {p.stem: p for p in figures}
    cells += _figure_cells(by_name, "latency_histogram", "## Latency")
    cells.append(_html(html.latency_table_html(summary)))
    cells += _figure_cells(by_name, "step_breakdown", "## Steps")
    cells.append(_html(html.step_table_html(summary)))
    cells += _figure_cells(by_name, "timeline", "## Concurrency and throughput")
    cells += _figure_cells(by_name, "capacity_curve", "## Capacity")
    if summary.get("saturated_first"):
        cells.append(_md(_saturated_first_markdown(summary)))
    cells += _figure_cells(by_name, "resources", "## Resources")
    cells.append(_html(html.resources_table_html(summary)))
    if summary.get("worker_stats"):
        cells.append(_md(_workers_markdown(summary)))
        cells.append(_html(html.workers_table_html(summary)))
    cells.append(_md(_trend_markdown(summary)))
    cells += _figure_cells(by_name, "errors", "## Errors")
    cells.append(_html(html.error_table_html(results)))
    cells.append(_md("## Rate limits and retries\n\n" + rate_limits_markdown(summary)))
    cells.append(_html(html.request_table_html(summary)))
    cells.append(_md("## Faults injected\n\n" + faults_markdown(summary)))
    notes = simulated_notes(results.config)
    if notes:
        cells.append(_md("## What was simulated\n\n" + "\n".join(f"- {n}" for n in notes)))
    cells.append(_md("## Run configuration"))
    cells.append(_html(html.config_table_html(results.config)))
    for i, cell in enumerate(cells):
        cell.id = f"wb-{i:02d}"  # nbformat's ids are random: fixed ones make re-renders identical
    nb = new_notebook(cells=cells)
    nb.metadata["title"] = f"{title}: {summary['run_id']} ({summary['outcome']})"
    return nb


def _md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text)


def _html(fragment: str) -> nbformat.NotebookNode:
    output = new_output("display_data", data={"text/html": fragment, "text/plain": ""})
    return new_code_cell(source="", outputs=[output])


def _figure_cells(by_name: Mapping[str, Path], name: str, heading: str) -> list:
    if name not in by_name:
        return []
    png = base64.b64encode(by_name[name].read_bytes()).decode("ascii")
    caption = FIGURE_CAPTIONS.get(name, name)
    output = new_output("display_data", data={"image/png": png, "text/plain": caption})
    return [_md(f"{heading}\n\n{caption}"), new_code_cell(source="", outputs=[output])]


def _saturated_first_markdown(s: Mapping[str, Any]) -> str:
    """Which component the capacity curve's extra latency points at, with its CPU as evidence."""
    first = s["saturated_first"]
    cpu = ", ".join(
        f"{comp} {vals['avg_cpu_pct']:.0f}% avg / {vals['peak_cpu_pct']:.0f}% peak"
        for comp, vals in (s.get("resources") or {}).items()
        if vals.get("avg_cpu_pct") is not None and vals.get("peak_cpu_pct") is not None
    )
    return (
        f"**Saturated first: {first['component']}.** From {first['users_first']} to "
        f"{first['users_last']} users the `{first['step']}` step's median grew from "
        f"{first['p50_first_s']:.2f} s to {first['p50_last_s']:.2f} s"
        + (f", {share:.0%} of all the steps' growth" if (share := first["growth_share"]) else "")
        + f". CPU (% of one core): {cpu}."
    )


def _incomplete_note(s: Mapping[str, Any]) -> str:
    return (
        "> **INCOMPLETE run.** events.jsonl has no run-end mark: the run was killed or crashed. "
        f"Everything below is computed from what it wrote up to {plots.secs(s.get('wall_s'))}; "
        "flows still in flight then have no outcome. An incomplete run cannot pass."
    )


def _saturation_markdown(s: Mapping[str, Any]) -> str:
    """The self-check's verdict and its evidence per process, saturated or not."""
    judged = s.get("driver_saturation") or {}
    if s.get("driver_saturated") is None:
        return "Driver self-check: no evidence sampled."
    lines = []
    for comp, p in (judged.get("processes") or {}).items():
        facts = [
            f"loop lag p99 {_num(p.get('loop_lag_p99_ms'))} ms "
            f"(control {_num(p.get('control_lag_p99_ms'))} ms)",
            f"loop thread {_num(p.get('loop_cpu_peak_pct'))}% of a core at its busiest",
            f"crypto queue {_share(p.get('crypto_queue_share'))} of flow time",
        ]
        lines.append(f"- `{comp}`: " + ", ".join(facts))
    head = "saturated" if s["driver_saturated"] else "not saturated"
    return f"Driver self-check: **{head}**.\n\n" + "\n".join(lines)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _workers_markdown(s: Mapping[str, Any]) -> str:
    where = f"the Dask cluster at `{s['scheduler']}`" if s.get("scheduler") else "a local cluster"
    return (
        f"### Workers\n\nThe users were sharded over {len(s['worker_stats'])} Dask worker "
        f"processes ({where}), each running the same flow code on its own event loop against "
        "one agreed start time. Latencies above come from every raw event of every worker; a "
        "lost worker's in-flight flows are failures of class `driver`, never re-run."
    )


def _client_timeout_note(s: Mapping[str, Any]) -> str:
    """Flows the client preset's own limit failed: the client gave up, the system may not have."""
    counts = s.get("client_timeouts") or {}
    listed = ", ".join(f"{n} by {limit}" for limit, n in counts.items())
    return (
        f"> **{sum(counts.values())} flow(s) failed on the `{s.get('client')}` client preset's own "
        f"timeout** ({listed}): that client would have given up there; the system may still have "
        "finished the work. Run with `client` tight to measure past it."
    )


def _trend_markdown(s: Mapping[str, Any]) -> str:
    parts = []
    trend = s.get("memory_trend")
    if trend:
        parts.append(
            f"Driver memory trend: {trend['slope_mb_per_min']:+.2f} MB/min "
            f"(± {trend['stderr_mb_per_min']:.2f}, linear fit over t ≥ {trend['t_from']:.0f} s, "
            f"the first {trend['warmup_frac']:.0%} dropped as warm-up)."
        )
    lag = s.get("loop_lag")
    if lag:
        parts.append(
            f"Driver event-loop lag: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
            f"max {lag['max_ms']:.1f} ms (worst per sample): large values mean the driver, "
            "not the system under test, delayed the timings."
        )
    chain = _chain_memory_line(s)
    if chain:
        parts.append(chain)
    parts.append(_saturation_markdown(s))
    gauges = s.get("gauges") or {}
    replaced = _replacements_line(gauges.get("api") or {}, s.get("tx_total"))
    if replaced:
        parts.append(replaced)
    peaks = [f"{c} {m} {v:g}" for c, ms in gauges.items() for m, v in ms.items()]
    if peaks:
        parts.append("Gauge peaks: " + ", ".join(peaks) + ".")
    return "\n\n".join(parts) or "No resource trends (too few samples)."


def _chain_memory_line(s: Mapping[str, Any]) -> str | None:
    """anvil's RSS trend per transaction mined: a dev node holds the whole chain in memory."""
    trend = (s.get("memory_trends") or {}).get("anvil")
    tx, wall = s.get("tx_ok") or 0, s.get("wall_s") or 0
    if not trend or tx <= 0 or wall <= 0:
        return None
    kb = trend["slope_mb_per_min"] * 1024 / (tx / (wall / 60))
    return (
        "The chain (anvil) keeps every block and receipt, and its newest states, in memory: "
        f"its RSS trend of {trend['slope_mb_per_min']:+.2f} MB/min is "
        f"{kb:.0f} KB per transaction mined ({tx} in {wall / 60:.1f} min), the chain's own data, "
        "which a real node keeps on disk."
    )


def _replacements_line(api: Mapping[str, float], tx_total: Any) -> str | None:
    """The relayer's stuck-transaction replacements, with their causes (None if not sampled)."""
    if "relay_replaced" not in api:
        return None
    n = int(api["relay_replaced"])
    share = f" ({n / tx_total:.1%} of {tx_total} relayed transactions)" if tx_total else ""
    prefix = "relay_replaced_"  # one gauge per cause (the relayer's names them)
    causes = [(m.removeprefix(prefix), int(v)) for m, v in api.items() if m.startswith(prefix)]
    detail = ", ".join(f"{c} {k}" for c, k in causes if k)
    capped = int(api.get("relay_replace_capped", 0))
    return (
        f"Relayer replacements of stuck transactions: **{n}**{share}"
        + (f"; causes: {detail}" if detail else "")
        + (f"; {capped} nonces reached the replacement cap" if capped else "")
        + ". A transaction counts as stuck only when the chain mined blocks past it."
    )
