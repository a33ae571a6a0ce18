"""report.html from a results dir alone: self-contained, complete, idempotent, and never a leak."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from synthetic import write_results_dir

from workbench.analysis import report
from workbench.cli import report as report_cli
from workbench.errors import WorkbenchError
from workbench.events import EventWriter
from workbench.params import PROJECT_ROOT

KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
OUTPUTS = ("report.html", "summary.json", "criteria.csv")
HLOG = "histograms/histograms.hlog"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A failing run with a fault set, a simulated backend and a cancelled flow, rendered once."""
    path = write_results_dir(
        tmp_path_factory.mktemp("report") / "run",
        n_flows=40,
        fail_every=8,
        cancel_last=1,
        faults={"storage": {"error_rate": 0.1}},
    )
    config = json.loads((path / "config.json").read_text())
    config.update(
        inference_backend="simulated",
        target_kind="local",
        profile_settings={"inference": {"latency_s": [0.04, 0.06]}, "chain": {"block_time_s": 0}},
        endpoints={"api_url": "http://127.0.0.1:3001"},
        wallet_addresses=["0x" + "00" * 20] * 10,
    )
    (path / "config.json").write_text(json.dumps(config))
    out = report.render(path)
    return path, out.read_text(encoding="utf-8")


def _passing_dir(tmp_path, **kw):
    return write_results_dir(
        tmp_path / "ok", n_flows=12, durations=[30.0 + i for i in range(12)], **kw
    )


def test_writes_every_output(rendered):
    path, _ = rendered
    for name in OUTPUTS:
        assert (path / name).stat().st_size > 0
    assert sorted(p.name for p in (path / "figures").glob("*.png")) == [
        "errors.png",
        "latency_histogram.png",
        "resources.png",
        "step_breakdown.png",
        "timeline.png",
    ]
    assert not list(path.glob(".render-*"))  # the staging folder is gone
    hgrm = {p.stem for p in (path / "histograms").glob("*.hgrm")}
    assert {"flow", "relay", "inference_poll"} <= hgrm and (path / HLOG).stat().st_size > 0


def test_html_is_self_contained(rendered):
    _, html = rendered
    for tag in re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html, re.I):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", tag, re.I), tag
    assert "<script src" not in html and "mathjax" not in html.lower()
    images = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]{0,30})", html)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)


def test_no_code_cells_shown(rendered):
    _, html = rendered
    code_cells = re.findall(r'class="jp-Cell jp-CodeCell[^"]*"', html)
    assert code_cells and all("jp-mod-noInput" in c for c in code_cells)  # outputs only
    body = html[html.index("<body") :]
    assert "jp-CodeMirrorEditor" not in body and "jp-InputPrompt" not in body
    assert "In&nbsp;[" not in body


def test_content_follows_the_milestone(rendered):
    path, html = rendered
    summary = json.loads((path / "summary.json").read_text())
    assert summary["verdict"] == "FAILED"  # 1 in 8 flows fail at relay: under 90% success
    assert 'wb-badge-failed">FAILED' in html and "INCOMPLETE" not in html
    assert "❌ Milestone 3 FAILED" in html
    for section in ("📊 Performance Results", "📊 Resource Usage", "✅ Resource monitoring"):
        assert section in html
    assert "✅ 10 test wallets loaded and validated" in html
    assert "✅ API server ready on port 3001" in html
    assert re.search(r"\[User \d\d\] ✅ Flow completed in \d+\.\ds", html)
    assert "❌ Flow failed at relay (relay)" in html
    for row in summary["criteria"]:
        assert row["label"] in html
    assert 'class="wb-fail"' in html and 'class="wb-target"' in html  # colour-coded rows
    driver_slope = summary["memory_trends"]["driver"]["slope_mb_per_min"]
    assert "RSS trend MB/min" in html and f"{driver_slope:+.2f}" in html  # every process's slope
    headings = re.findall(r"<h2 id=\"([^\"]+)\"", html)
    assert headings[:3] == ["Run-output", "Criteria", "Latency"]
    assert headings.index("Errors") < headings.index("Faults-injected")


def test_errors_faults_and_simulation_are_explained(rendered):
    _, html = rendered
    assert "API server (relayer)" in html  # relay class -> the component at fault
    assert "error_rate" in html  # the faults injected
    assert "Inference latency is simulated" in html
    assert "anvil" in html


def test_rerender_is_idempotent(rendered):
    path, _ = rendered
    before = {p.name: p.read_bytes() for p in [*map(path.joinpath, OUTPUTS)]}
    figures = {p.name: p.read_bytes() for p in (path / "figures").glob("*.png")}
    hists = {p.name: p.read_bytes() for p in (path / "histograms").iterdir()}
    report.render(path)
    assert {p.name: p.read_bytes() for p in [*map(path.joinpath, OUTPUTS)]} == before
    assert {p.name: p.read_bytes() for p in (path / "figures").glob("*.png")} == figures
    assert {p.name: p.read_bytes() for p in (path / "histograms").iterdir()} == hists


def test_passing_run(tmp_path):
    path = _passing_dir(tmp_path)
    html = report.render(path).read_text(encoding="utf-8")
    assert 'wb-badge-passed">PASSED' in html and "🎉 Milestone 3 PASSED!" in html
    assert "🚀 Ready to proceed to Milestone 4: Load Pattern Testing" in html
    assert "No faults were injected" in html and "no errors" in html.lower()


def test_incomplete_run_is_marked(tmp_path):
    path = _passing_dir(tmp_path, complete=False, torn_tail=True)
    html = report.render(path).read_text(encoding="utf-8")
    summary = json.loads((path / "summary.json").read_text())
    assert summary["complete"] is False and summary["outcome"] == "INCOMPLETE"
    assert summary["verdict"] == "FAILED"  # a killed run cannot pass
    assert 'wb-badge-incomplete">INCOMPLETE' in html and "INCOMPLETE run" in html
    assert "Ready to proceed" not in html  # only a PASSED verdict leads on
    assert "🎉" not in html


def _assert_nothing_written(path):
    for name in OUTPUTS:
        assert not (path / name).exists(), name
    assert not (path / "figures").exists() and not list(path.glob(".render-*"))


def test_refuses_a_labelled_key_in_config(tmp_path):
    path = _passing_dir(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["funder_private_key"] = KEY
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WorkbenchError, match="refusing to write: contains a private key") as err:
        report.render(path)
    assert KEY[2:] not in str(err.value).lower()  # the refusal never repeats the key
    assert "config.json" in str(err.value)
    _assert_nothing_written(path)


def test_refuses_a_known_key_in_events(tmp_path, monkeypatch):
    path = _passing_dir(tmp_path)
    with EventWriter(path / "events.jsonl") as w:  # unlabelled: only the known-key rule sees it
        w.write({"kind": "run", "event": "note", "t": 1.0, "text": KEY[2:].upper()})
    monkeypatch.setenv("LOADTEST_PRIVATE_KEY", KEY)
    with pytest.raises(WorkbenchError, match="private key"):
        report.render(path)
    _assert_nothing_written(path)
    monkeypatch.delenv("LOADTEST_PRIVATE_KEY")
    with pytest.raises(WorkbenchError):  # the runner hands its wallets' keys over directly
        report.render(path, secrets=[KEY])
    _assert_nothing_written(path)


def test_refuses_a_key_that_reaches_only_the_outputs(tmp_path):
    """A criteria file is not in the results dir, but its labels reach the report."""
    path = _passing_dir(tmp_path)
    criteria = tmp_path / "leaky.yaml"
    row = {"id": "x", "label": f"secret {KEY}", "metric": "avg_s", "op": "<", "target": 90}
    criteria.write_text(json.dumps({"name": "leaky", "criteria": [row]}))
    with pytest.raises(WorkbenchError, match="private key"):
        report.render(path, criteria_path=criteria, secrets=[KEY])
    _assert_nothing_written(path)


def test_tx_hashes_are_not_keys(tmp_path):
    path = _passing_dir(tmp_path)
    with EventWriter(path / "events.jsonl") as w:
        w.write({"kind": "run", "event": "note", "t": 1.0, "tx_hash": KEY, "permission_id": 3})
    report.render(path)
    assert (path / "report.html").is_file()


def test_criteria_from_config_with_fallback(tmp_path):
    path = _passing_dir(tmp_path)
    custom = tmp_path / "one.yaml"
    row = {"id": "p95", "label": "Only p95", "metric": "p95_s", "op": "<", "target": 90}
    custom.write_text(json.dumps({"name": "one", "criteria": [row]}))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "criteria": str(custom)}))
    report.render(path)
    assert json.loads((path / "summary.json").read_text())["criteria_name"] == "one"
    (path / "config.json").write_text(json.dumps({**config, "criteria": "gone/missing.yaml"}))
    html = report.render(path).read_text(encoding="utf-8")
    assert "not available here" in html
    assert json.loads((path / "summary.json").read_text())["criteria_name"] == "ms03"


@pytest.mark.e2e
def test_cli_renders_again_from_the_dir_alone(tmp_path):
    path = _passing_dir(tmp_path)
    report.render(path)
    shutil.rmtree(path / "figures")
    (path / "report.html").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "report", str(path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(path / "report.html")
    assert (path / "figures" / "latency_histogram.png").is_file()
    assert "verdict: PASSED" in proc.stderr


def test_main_reports_a_bad_dir(tmp_path, capsys):
    assert report_cli.main([str(tmp_path / "nope")]) == 2
    assert "events.jsonl" in capsys.readouterr().err


def test_relayer_replacements_are_named_with_their_causes():
    api = {"relay_replaced": 3.0, "relay_replaced_underpriced": 2.0, "relay_replaced_dropped": 1.0}
    api |= {"relay_replaced_stalled": 0.0, "relay_replace_capped": 1.0, "relayer_pending": 7.0}
    text = report._trend_markdown({"gauges": {"api": api}, "tx_total": 1000})
    assert "Relayer replacements of stuck transactions: **3** (0.3% of 1000 relayed" in text
    assert "causes: underpriced 2, dropped 1; 1 nonces reached the replacement cap" in text
    assert "stalled" not in text.split("Gauge peaks")[0]  # a cause that never happened
    assert "Relayer replacements" not in report._trend_markdown({"gauges": {"personal": {}}})


def test_the_chains_memory_trend_is_put_per_transaction_mined():
    anvil = {"component": "anvil", "slope_mb_per_min": 1.5}
    s = {"memory_trends": {"anvil": anvil, "driver": None}, "tx_ok": 600, "wall_s": 600}
    text = report._trend_markdown(s)
    # 1.5 MB/min over 60 transactions a minute: 25.6 KB each
    assert "+1.50 MB/min is 26 KB per transaction mined (600 in 10.0 min)" in text
    assert "per transaction mined" not in report._trend_markdown({**s, "tx_ok": 0})
    assert "per transaction mined" not in report._trend_markdown({"memory_trends": {}})
