"""The shareable report of a run, rendered from its results dir alone.

`render(results_dir)` writes `summary.json`, `criteria.csv`, `figures/*.png` and `report.html`.
The HTML is an nbformat notebook built in memory (markdown cells, and display_data outputs for
tables and figures; no kernel runs) exported by nbconvert without inputs, with every image a data
URI and no script or stylesheet fetched from anywhere: it opens offline, without Jupyter.

Reports get shared, so nothing is written until every output (and the run's own config.json and
events.jsonl) has been checked for private keys: `refuse_secrets` raises instead. Outputs are
staged in a hidden folder and moved into place only after that check, so a refused or crashed
render leaves no partial report behind.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from workbench.analysis import criteria as crit
from workbench.analysis import plots
from workbench.analysis.results import Results, load_results
from workbench.analysis.summary import summarize, write_summary
from workbench.errors import WorkbenchError
from workbench.events import STEPS
from workbench.params import PROJECT_ROOT
from workbench.secrets import (
    HEX64,
    env_secrets,
    find_mnemonics,
    phrase_pattern,
    secret_label,
)

OUTPUTS = ("summary.json", "criteria.csv", "report.html")
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
STATUS_ICON = {"TARGET": "✅", "ACCEPTABLE": "⚠️", "FAIL": "❌", "N/A": "➖"}
PER_USER_OK_LINES, PER_USER_FAIL_LINES = 10, 10
CONFIG_HIDDEN = ("wallet_addresses", "profile_settings")  # long; summarised instead

# --------------------------------------------------------------------------- secrets guard

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_TAG = re.compile(r"<[^>]*>")
_DATA_URI = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=\s]+")


def known_secrets(config: Mapping[str, Any] | None = None) -> list[str]:
    """Keys this machine knows: the environment's (`workbench.secrets.env_secrets`) and the keys
    and mnemonic of the wallet file the run used (config's `wallet_file`, else
    `$WORKBENCH_WALLET_FILE`) when it is readable here."""
    return env_secrets() + _wallet_secrets(config or {})


def _wallet_secrets(config: Mapping[str, Any]) -> list[str]:
    path = config.get("wallet_file") or os.environ.get("WORKBENCH_WALLET_FILE")
    if not path or not Path(path).is_file():
        return []  # rendered elsewhere: the heuristic and the runner's keys still apply
    from workbench.driver import (
        wallets,  # eth_account is slow to import; only when a file is at hand
    )

    users = config.get("users")
    try:
        try:
            ws = wallets.load(Path(path), count=users if isinstance(users, int) else None)
        except WorkbenchError:  # fewer wallets than users (open-model runs): take the file's
            ws = wallets.load(Path(path))
    except WorkbenchError:
        return []  # unreadable (e.g. bad mode): cannot check against it
    return [*ws.private_keys(), ws.mnemonic]


def find_secrets(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """Where `text` holds a secret: each hit described without the secret itself.

    Three rules: (1) any of `secrets`, with or without `0x`, case-insensitive (a mnemonic also
    with its words split by newlines, commas or quotes); (2) a 32-byte hex value whose nearest
    preceding label names a key or secret (`funder_private_key: 0x…`) and not a public value
    (`tx_hash`, `public_key`, `*_id`), so transaction hashes pass; (3) any valid BIP-39 mnemonic,
    known or not."""
    hits = []
    lowered = text.lower()
    known_hex: dict[str, int] = {}  # 32-byte keys: one pass over the text finds them all
    for i, secret in enumerate(secrets):
        needle = secret.strip().lower().removeprefix("0x")
        if HEX64.fullmatch(needle):
            known_hex[needle] = i
        elif len(needle) >= 16 and needle in lowered:
            hits.append(f"known secret #{i + 1} at offset {lowered.index(needle)}")
        elif len(needle.split()) > 1 and (words := phrase_pattern(needle).search(text)):
            hits.append(f"the words of known secret #{i + 1} at offset {words.start()}")
    for match in HEX64.finditer(lowered):
        i = known_hex.get(match.group().removeprefix("0x"))
        if i is not None:
            hits.append(f"known secret #{i + 1} at offset {match.start()}")
    scannable = _DATA_URI.sub("data:image", text)  # our own PNGs: huge and never text
    for match in HEX64.finditer(scannable):
        label = _label_before(scannable, match.start())
        if label and secret_label(label):
            hits.append(f"a 32-byte hex value labelled {label!r}")
    hits += [f"a {len(m.split())}-word BIP-39 mnemonic" for m in find_mnemonics(scannable)]
    return hits


def _label_before(text: str, pos: int) -> str | None:
    window = _TAG.sub(" ", text[max(0, pos - 300) : pos])[-80:]
    labels = _LABEL.findall(window)
    return labels[-1] if labels else None


def refuse_secrets(paths: Iterable[str | Path], secrets: Iterable[str] = ()) -> None:
    """Raises WorkbenchError if any file holds a private key; says where, never what."""
    secrets = list(secrets)
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        hits = find_secrets(path.read_text(encoding="utf-8", errors="replace"), secrets)
        if hits:
            raise WorkbenchError(
                "report",
                "refusing to write: contains a private key",
                f"{path.name} has {hits[0]}; keys belong in the environment or a 0600 wallet "
                "file, never in params, events or results. Remove it and render again",
            )


# --------------------------------------------------------------------------- render


def render(
    results_dir: str | Path,
    criteria_path: str | Path | None = None,
    secrets: Iterable[str] | None = None,
) -> Path:
    """Writes summary.json, criteria.csv, figures/*.png and report.html; returns report.html.

    `criteria_path` defaults to the criteria file recorded in config.json, then to ms03.
    `secrets` adds keys to refuse (the runner passes its wallets') to `known_secrets()`."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    all_secrets = [*(secrets or ()), *known_secrets(results.config)]
    inputs = [results_dir / name for name in ("config.json", "events.jsonl", "samples.csv")]
    refuse_secrets(inputs, all_secrets)  # a leaky run must not become a shareable report
    criteria, criteria_note = _criteria(criteria_path, results.config)
    summary = summarize(results, criteria)
    stage = results_dir / f".render-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
        write_summary(stage, summary)
        figures = plots.save_all(results, summary, summary["criteria"], stage / "figures")
        notebook = build_notebook(results, summary, figures, criteria_note)
        (stage / "report.html").write_text(export_html(notebook), encoding="utf-8")
        refuse_secrets([stage / name for name in OUTPUTS], all_secrets)
        _publish(stage, results_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return results_dir / "report.html"


def _publish(stage: Path, results_dir: Path) -> None:
    # os.replace per file: a reader never sees a half-written report.
    (results_dir / "figures").mkdir(exist_ok=True)
    for src in sorted(stage.rglob("*")):
        if src.is_file():
            os.replace(src, results_dir / src.relative_to(stage))


def _criteria(
    criteria_path: str | Path | None, config: Mapping[str, Any]
) -> tuple[crit.Criteria, str]:
    """The criteria to judge by, and a note for the report when the recorded file is gone."""
    if criteria_path is not None:
        return crit.load_criteria(_resolve(criteria_path)), ""
    recorded = config.get("criteria")
    if recorded:
        path = _resolve(recorded)
        if path.is_file() or not Path(str(recorded)).suffix:
            try:
                return crit.load_criteria(path), ""
            except WorkbenchError:
                pass
        note = f"The run's criteria file {recorded!r} is not available here; judged by ms03."
        return crit.load_criteria(crit.DEFAULT_CRITERIA), note
    return crit.load_criteria(crit.DEFAULT_CRITERIA), ""


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if not path.suffix or path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path  # config.json records paths relative to the project root


# --------------------------------------------------------------------------- text sections


def console_text(
    results_dir: str | Path,
    results: Results | None = None,
    summary: Mapping[str, Any] | None = None,
) -> str:
    """The milestone's expected output, filled in from the run: setup lines where known, a
    sample of per-user lines, Performance Results, Resource Usage and the verdict line."""
    results = results or load_results(results_dir)
    if summary is None:
        path = Path(results_dir) / "summary.json"
        summary = json.loads(path.read_text("utf-8")) if path.is_file() else None
        summary = summary or summarize(results)
    title = summary.get("criteria_title") or "Milestone 3: Multi-User Validation"
    lines = [f"🚀 Starting {title}", ""]
    lines += _setup_lines(results, summary)
    lines += _user_lines(results.flows)
    lines += ["", *_performance_lines(summary), "", *_resource_lines(results, summary), ""]
    lines += _verdict_lines(summary)
    return "\n".join(lines)


def _setup_lines(results: Results, summary: Mapping[str, Any]) -> list[str]:
    cfg, users = results.config, summary.get("users")
    lines = [f"👥 Setting up {users} concurrent users..."]
    wallets = cfg.get("wallet_addresses")
    if wallets:
        lines.append(f"✅ {len(wallets)} test wallets loaded and validated")
    if results.run_start:  # the runner marks the start only once every wallet is funded
        lines.append("✅ All wallets have sufficient funding")
    api_url = (cfg.get("endpoints") or {}).get("api_url")
    if api_url:
        where = "local" if cfg.get("target_kind") == "local" else "remote"
        port = api_url.rstrip("/").rsplit(":", 1)[-1]
        ready = f"on port {port}" if port.isdigit() else f"at {api_url}"
        lines += ["", "📡 Starting API server...", f"✅ API server ready {ready} ({where})"]
    if not results.samples.empty:
        lines += ["", "📊 Starting metrics collection...", "✅ Resource monitoring active"]
    lines += ["", f"🔄 Launching {users} concurrent E2E flows ({summary.get('shape')})..."]
    return lines


def user_line(flow: Mapping[str, Any]) -> str:
    """`[User 03] ✅ Flow completed in 43.8s` / `[User 07] ❌ Flow failed at relay (nonce)`."""
    who = f"[User {int(flow['user']) + 1:02d}]"
    if flow["status"] == "ok":
        return f"  {who} ✅ Flow completed in {flow['duration_s']:.1f}s"
    icon = "⏹️" if flow["status"] == "cancelled" else "❌"
    where, why = flow.get("failed_step") or "?", flow.get("error_class") or "?"
    return (
        f"  {who} {icon} Flow {flow['status']} at {where} ({why}) after {flow['duration_s']:.1f}s"
    )


def _user_lines(flows) -> list[str]:
    """In completion order like the milestone: the first and last ok flows, then failures."""
    if flows.empty:
        return ["  (no flows)"]
    done = flows.sort_values("t_end", kind="stable")
    ok, bad = done[done["status"] == "ok"], done[done["status"] != "ok"]
    head = ok.head(PER_USER_OK_LINES - 2)
    tail = ok.iloc[len(head) :].tail(2)
    lines = [user_line(f) for _, f in head.iterrows()]
    if len(ok) > len(head) + len(tail):
        lines.append(f"  ... ({len(ok) - len(head) - len(tail)} more completed)")
    lines += [user_line(f) for _, f in tail.iterrows()]
    lines += [user_line(f) for _, f in bad.head(PER_USER_FAIL_LINES).iterrows()]
    if len(bad) > PER_USER_FAIL_LINES:
        lines.append(f"  ... ({len(bad) - PER_USER_FAIL_LINES} more not completed)")
    return lines


STATUS_WORD = {"TARGET": "target", "ACCEPTABLE": "acceptable", "FAIL": "FAIL", "N/A": "n/a"}


def _judged(summary: Mapping[str, Any], metric: str) -> str:
    """` [✅ target]` after a line the criteria judge; empty for lines they do not."""
    for row in summary.get("criteria", []):
        if row.get("metric") == metric:
            return f"  [{STATUS_ICON.get(row['status'], '')} {STATUS_WORD.get(row['status'], '')}]"
    return ""


def _ratio(k: Any, n: Any) -> str:
    """`24/25 (96%)`; one decimal when rounding would hide a miss (89.7% is not 90%)."""
    if not n:
        return "n/a (none attempted)"
    pct = 100 * k / n
    return f"{k}/{n} ({pct:.0f}%)" if pct == round(pct) else f"{k}/{n} ({pct:.1f}%)"


def _performance_lines(s: Mapping[str, Any]) -> list[str]:
    cancelled = f", {s['flows_cancelled']} cancelled" if s.get("flows_cancelled") else ""
    thr = s.get("throughput_per_min")
    ok_icon = "✅" if s.get("success_rate") is not None and not _failed(s, "success_rate") else "❌"
    return [
        "📊 Performance Results:",
        f"  {ok_icon} Success Rate: {_ratio(s['flows_ok'], s['flows_total'])}{cancelled}"
        + _judged(s, "success_rate"),
        f"  ⏱️  Average Duration: {_seconds(s.get('avg_s'))}" + _judged(s, "avg_s"),
        f"  📈 P95 Duration: {_seconds(s.get('p95_s'))}" + _judged(s, "p95_s"),
        f"  📈 P99 Duration: {_seconds(s.get('p99_s'))}",
        f"  🚀 Throughput: {'n/a' if thr is None else f'{thr:.1f}'} flows/min",
        f"  🔗 Transaction Success: {_ratio(s['tx_ok'], s['tx_total'])}"
        + _judged(s, "tx_success_rate"),
        f"  📤 Upload Success: {_ratio(s['uploads_ok'], s['uploads_total'])}"
        + _judged(s, "upload_success_rate"),
        f"  🛑 API server timeouts/crashes: {_or_na(s.get('api_errors'))}"
        + _judged(s, "api_errors"),
    ]


def _or_na(value: Any, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _failed(summary: Mapping[str, Any], metric: str) -> bool:
    return any(
        r.get("metric") == metric and r["status"] == "FAIL" for r in summary.get("criteria", [])
    )


def _seconds(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f} seconds"


def _resource_lines(results: Results, s: Mapping[str, Any]) -> list[str]:
    net = (s.get("network") or {}).get("total_bytes")
    fds = peak_fds(results.samples)
    peak, cpu = s.get("peak_rss_mb"), s.get("avg_cpu_pct")
    return [
        "📊 Resource Usage:",
        f"  💾 Peak Memory: {'n/a' if peak is None else f'{peak:.0f}MB'} (driver)"
        + _judged(s, "peak_rss_mb"),
        f"  🖥️  Average CPU: {'n/a' if cpu is None else f'{cpu:.0f}%'} (driver + stack, of all cores)"
        + _judged(s, "avg_cpu_pct"),
        f"  🌐 Network: {'n/a' if net is None else f'{net / 1e6:.1f}MB'} transferred",
        f"  📁 File Descriptors: {_or_na(fds)} peak (driver)",
        f"  📉 Memory trend: {_or_na(s.get('memory_slope_mb_per_min'), '{:+.2f} MB/min')}"
        + _judged(s, "memory_slope_mb_per_min"),
    ]


def peak_fds(samples, component: str = "driver") -> int | None:
    """Peak descriptors of a process: `num_fds` when sampled, else open files + sockets."""
    mine = samples[samples["component"] == component]
    fds = mine[mine["metric"] == "num_fds"]
    if fds.empty:
        parts = mine[mine["metric"].isin(["open_files", "connections"])]
        fds = parts.groupby("t")["value"].sum().rename("value").to_frame()
    return None if fds.empty else int(fds["value"].max())


def _verdict_lines(s: Mapping[str, Any]) -> list[str]:
    title = s.get("criteria_title") or "Milestone 3: Multi-User Validation"
    head, _, tail = title.partition(":")
    failed = [r["label"] for r in s.get("criteria", []) if r["status"] == "FAIL"]
    if not s.get("complete", True):
        return [
            f"⚠️ {head} INCOMPLETE: the run stopped without its end mark (killed or crashed);",
            f"   judged on the data it left, the verdict is {s['verdict']}.",
        ]
    if s["verdict"] == "PASSED":
        return [f"🎉 {head} PASSED! {tail.strip() or 'Validation'} successful."]
    return [f"❌ {head} FAILED: {', '.join(failed) or 'see the criteria table'}."]


# --------------------------------------------------------------------------- HTML pieces


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


def _badge(text: str) -> str:
    return f'<span class="wb-badge wb-badge-{text.lower()}">{html.escape(text)}</span>'


def step_table_html(summary: Mapping[str, Any]) -> str:
    stats = summary.get("step_stats") or {}
    order = [s for s in STEPS if s in stats] + sorted(set(stats) - set(STEPS))
    rows = [
        [
            step,
            stats[step].get("n"),
            stats[step].get("failed"),
            *(_ms(stats[step].get(k)) for k in ("mean", "p50", "p95", "p99", "max")),
            plots.STEP_COMPONENT.get(step, ""),
        ]
        for step in order
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
    rows = []
    for (cls, step), group in bad.groupby(keys, sort=False):
        example = group["error"].dropna().astype(str)
        rows.append(
            [
                cls,
                step,
                len(group),
                plots.fault_component(cls, step),
                (example.iloc[0][:120] if len(example) else ""),
            ]
        )
    rows.sort(key=lambda r: -r[2])
    return _table(("Error class", "Failed step", "Flows", "Component at fault", "Example"), rows)


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
    cols = ("avg_cpu_pct", "peak_cpu_pct", "avg_rss_mb", "peak_rss_mb", "peak_open_files")
    cols += ("peak_connections", "peak_threads")
    rows = [[comp, *(vals.get(c) for c in cols)] for comp, vals in res.items()]
    headers = ("Component", "CPU % avg", "CPU % peak", "RSS MB avg", "RSS MB peak")
    headers += ("Open files peak", "Sockets peak", "Threads peak")
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
        mining = "automine" if block == 0 else f"{block} s blocks" if block else "anvil defaults"
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


# --------------------------------------------------------------------------- notebook


def build_notebook(
    results: Results,
    summary: Mapping[str, Any],
    figures: Sequence[Path],
    criteria_note: str = "",
) -> nbformat.NotebookNode:
    """The report as a notebook: markdown cells and display_data outputs, no code."""
    title = summary.get("criteria_title") or "Load test"
    cells = [_md(f"# {title}\n\nRun `{summary['run_id']}`")]
    badges = _badge(summary["verdict"])
    if not summary.get("complete", True):
        badges += " " + _badge("INCOMPLETE")
    cells.append(_html(f'<p class="wb-verdict">{badges} {_run_facts_html(summary)}</p>'))
    if not summary.get("complete", True):
        cells.append(_md(_incomplete_note(summary)))
    console = console_text(results.path, results, summary)
    cells.append(_md(f"## Run output\n\n```text\n{console}\n```"))
    cells.append(_md("## Criteria" + (f"\n\n{criteria_note}" if criteria_note else "")))
    cells.append(_html(criteria_table_html(summary["criteria"])))
    by_name = {p.stem: p for p in figures}
    cells += _figure_cells(by_name, "latency_histogram", "## Latency")
    cells.append(_html(latency_table_html(summary)))
    cells += _figure_cells(by_name, "step_breakdown", "## Steps")
    cells.append(_html(step_table_html(summary)))
    cells += _figure_cells(by_name, "timeline", "## Concurrency and throughput")
    cells += _figure_cells(by_name, "capacity_curve", "## Capacity")
    cells += _figure_cells(by_name, "resources", "## Resources")
    cells.append(_html(resources_table_html(summary)))
    cells.append(_md(_trend_markdown(summary)))
    cells += _figure_cells(by_name, "errors", "## Errors")
    cells.append(_html(error_table_html(results)))
    cells.append(_md("## Faults injected\n\n" + faults_markdown(summary)))
    notes = simulated_notes(results.config)
    if notes:
        cells.append(_md("## What was simulated\n\n" + "\n".join(f"- {n}" for n in notes)))
    cells.append(_md("## Run configuration"))
    cells.append(_html(config_table_html(results.config)))
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


def _run_facts_html(s: Mapping[str, Any]) -> str:
    facts = [
        ("users", s.get("users")),
        ("shape", s.get("shape")),
        ("profile", s.get("profile")),
        ("started", s.get("started_at")),
        ("wall", plots.secs(s.get("wall_s"))),
        ("flows", s.get("flows_started")),
    ]
    return " · ".join(f"{k} <b>{html.escape(str(v))}</b>" for k, v in facts if v is not None)


def _incomplete_note(s: Mapping[str, Any]) -> str:
    return (
        "> **INCOMPLETE run.** events.jsonl has no run-end mark: the run was killed or crashed. "
        f"Everything below is computed from what it wrote up to {plots.secs(s.get('wall_s'))}; "
        "flows still in flight then have no outcome. An incomplete run cannot pass."
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
    gauges = s.get("gauges") or {}
    replaced = _replacements_line(gauges.get("api") or {}, s.get("tx_total"))
    if replaced:
        parts.append(replaced)
    peaks = [f"{c} {m} {v:g}" for c, ms in gauges.items() for m, v in ms.items()]
    if peaks:
        parts.append("Gauge peaks: " + ", ".join(peaks) + ".")
    return "\n\n".join(parts) or "No resource trends (too few samples)."


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


# --------------------------------------------------------------------------- HTML export

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
    from nbconvert import HTMLExporter

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


# --------------------------------------------------------------------------- CLI
