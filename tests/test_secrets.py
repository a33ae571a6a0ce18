"""Secrets: keys stay in the environment and the wallet file; events, logs, server errors,
results and reports never carry one; the stack listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from workbench import secrets
from workbench.analysis import report
from workbench.driver import wallets
from workbench.driver.config import RunConfig
from workbench.driver.runner import Runner
from workbench.errors import WorkbenchError
from workbench.events import EventWriter, read_events
from workbench.stack.local import MINER
from workbench.stack.server import ApiError, make_app

KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
OTHER = "0x" + "ab" * 32
MNEMONIC = "test test test test test test test test test test test junk"
TX = "0x" + "cd" * 32


# --------------------------------------------------------------------------- the redactor


def test_redactor_rules():
    r = secrets.Redactor([KEY, MNEMONIC])
    assert KEY[2:] not in r.text(f"boom: {KEY[2:].upper()} in a message")  # any case, no 0x
    words = json.dumps(MNEMONIC.split())  # the words, as a JSON list
    assert "junk" not in r.text(words) and "junk" not in r.text(MNEMONIC.replace(" ", "\n"))
    labelled = {"relayer_private_key": OTHER, "seed": OTHER, "steps": {"secret": [OTHER]}}
    assert OTHER[2:] not in json.dumps(r.value(labelled))
    public = {"tx_hash": TX, "block_hash": TX, "public_key": TX, "permission_id": TX, "note": TX}
    assert r.value(public) == public  # public values and unlabelled unknown hex pass
    assert r.value({"n": 1, "ok": True, "x": None, "f": 0.5}) == {
        "n": 1,
        "ok": True,
        "x": None,
        "f": 0.5,
    }
    assert r.value({"key": b"\x00"}) == {"key": "b'\\x00'"}  # as json.dumps(default=str) would


def test_env_secrets_reads_the_funder_key_and_the_stack_secrets():
    env = {
        "WORKBENCH_FUNDER_KEY": KEY,
        "WORKBENCH_SECRETS": json.dumps({"app_key": OTHER, "relayer_keys": [TX], "n": 1}),
        "DEPLOYER_PRIVATE_KEY": "x" * 20,
        "HOME": "/root/somewhere/long/enough",
    }
    assert sorted(secrets.env_secrets(env)) == sorted([KEY, OTHER, TX, "x" * 20])


def test_mnemonics_are_found_by_shape():
    assert secrets.find_mnemonics(f"words: {', '.join(MNEMONIC.split())}.") == [MNEMONIC]
    assert not secrets.find_mnemonics("test " * 12)  # BIP-39 words, but a bad checksum
    prose = "the quick brown fox jumps over the lazy dog while everyone else keeps on sleeping"
    assert not secrets.find_mnemonics(prose)


def test_find_secrets_rules():
    assert secrets.find_secrets(f'"private_key": "{KEY}"')
    assert secrets.find_secrets(f"WORKBENCH_FUNDER_KEY={KEY[2:]}")
    assert secrets.find_secrets(f"<td>relayer_key</td>\n<td>{KEY}</td>")
    assert not secrets.find_secrets(f'"tx_hash": "{KEY}", "block_hash": "{KEY}"')
    assert not secrets.find_secrets(f'"public_key": "{KEY}"')
    assert secrets.find_secrets(f"any text {KEY.upper()[2:]} here", [KEY])
    assert not secrets.find_secrets(f"any text {KEY} here", ["0x" + "1" * 64])


def test_known_secrets_from_env_and_wallet_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FUNDER_KEY", KEY)
    monkeypatch.setenv("WORKBENCH_SECRETS", json.dumps({"relayers": ["0x" + "ab" * 32]}))
    ws = wallets.generate(2, tmp_path / "wallets.json")
    found = secrets.known_secrets(wallets.file_secrets({"wallet_file": str(ws.path), "users": 2}))
    assert KEY in found and "0x" + "ab" * 32 in found
    assert set(ws.private_keys()) <= set(found) and ws.mnemonic in found


# --------------------------------------------------------------------------- events and logs


def test_the_cheap_pre_check_misses_no_redaction():
    """`needed` skips the walk only when `value()` would change nothing: a secret-named field
    counts only when its own value holds a 32-byte hex (a flow event's step timings `derive_key`
    and its result's `keys` list of words do not)."""
    r = secrets.Redactor([KEY])
    events = [
        {"tx_hash": TX, "steps": {"derive_key": 0.2}, "result": {"keys": ["note", "user"]}},
        {"tx_hash": TX, "keys": ["note", OTHER]},
        {"tx_hash": TX, "wallet": {"private_key": f"x{OTHER[2:]}y"}},
        {"error": f"boom {KEY[2:].upper()}"},
        {"seed": [[OTHER]], "n": 1},
        {"note": TX, "private_key": "0x" + "ab" * 33},  # 66 digits: no 32-byte value
    ]
    for event in events:
        line = json.dumps(event, separators=(",", ":"))
        assert r.needed(line) == (r.value(event) != event), event
    assert [r.needed(json.dumps(e, separators=(",", ":"))) for e in events] == [
        False,
        True,
        True,
        True,
        True,
        False,
    ]


def test_hex64_values_are_the_runs_of_exactly_64_digits():
    text = f"a {TX} b{OTHER[2:]}c {'1' * 65} {KEY.upper()}-{'f' * 63}"
    expected = [m.group().lower().removeprefix("0x") for m in secrets.HEX64.finditer(text)]
    assert secrets.hex64_values(text) == expected == [TX[2:], KEY[2:]]


def test_event_writer_redacts_known_and_labelled_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FUNDER_KEY", KEY)
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.write({"kind": "step", "error": f"signing with {KEY} failed", "tx_hash": TX})
        writer.add_secrets([MNEMONIC])
        writer.write({"kind": "run", "note": MNEMONIC.replace(" ", "\n"), "seed": OTHER})
    text = path.read_text()
    assert KEY[2:] not in text and "junk" not in text and OTHER[2:] not in text
    assert TX in text and text.count(secrets.REDACTED) == 3
    assert [e["kind"] for e in read_events(path)] == ["step", "run"]


def test_log_lines_and_tracebacks_are_redacted():
    stream = io.StringIO()
    logger = logging.getLogger("workbench.test_secrets")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        secrets.redact_logs(secrets.Redactor([KEY]), logger)
        try:
            raise RuntimeError(f"bad key {KEY}")
        except RuntimeError:
            logger.exception("relay failed for %s", KEY)
    finally:
        logger.removeHandler(handler)
    assert "relay failed for [redacted]" in stream.getvalue() and KEY[2:] not in stream.getvalue()


# --------------------------------------------------------------------------- servers


async def test_server_error_messages_never_echo_the_process_secrets(monkeypatch):
    monkeypatch.setenv("WORKBENCH_SECRETS", json.dumps({"app_key": KEY}))
    secrets.process_redactor.cache_clear()

    async def leaky(request: web.Request) -> web.Response:
        raise ApiError(502, f"upstream refused key {KEY}")

    app = make_app()
    app.router.add_get("/leaky", leaky)
    try:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/leaky")
            body = await resp.json()
    finally:
        secrets.process_redactor.cache_clear()
    assert resp.status == 502 and KEY[2:] not in json.dumps(body)
    assert body == {"success": False, "error": "upstream refused key [redacted]"}


def stack_secrets(local_stack) -> list[str]:
    """The keys the stack's processes hold, read from their environment."""
    found = []
    for pid in local_stack.pids.values():
        found += secrets.env_secrets(psutil.Process(pid).environ())
    return found


BAD_REQUESTS = {
    "api": [
        ("POST", "/api/relay", "{not json"),
        ("POST", "/api/relay", {"typedData": {"domain": {}}, "signature": "0x00"}),
        ("POST", "/api/relay", {"typedData": 5, "signature": KEY, "expectedUserAddress": "0x1"}),
        ("POST", "/api/trusted-server", {"permissionId": 10**9}),
        ("POST", "/api/trusted-server/poll", {"operationId": "nope", "chainId": 31337}),
        ("GET", "/no/such/route", None),
    ],
    "personal": [
        ("GET", "/identity?address=not-an-address", None),
        ("POST", "/operations", {"app_signature": "0x00", "operation_request_json": "{}"}),
        ("POST", "/operations", {"app_signature": KEY, "operation_request_json": "[1]"}),
        ("GET", "/operations/unknown", None),
    ],
    "storage": [
        ("POST", "/api/v0/cat?arg=bafkbad", None),
        ("POST", "/api/v0/pin/rm?arg=" + "b" * 60, None),
        ("POST", "/api/v0/add", "not multipart"),
    ],
}


@pytest.mark.e2e
async def test_stack_errors_never_echo_a_stack_secret(local_stack):
    held = stack_secrets(local_stack)
    assert len(held) >= 3  # the app key, relayer keys, the personal server's seed
    ep = local_stack.endpoints
    bases = {"api": ep.api_url, "personal": ep.personal_server_url, "storage": ep.storage_url}
    async with aiohttp.ClientSession() as http:
        for component, requests in BAD_REQUESTS.items():
            for method, path, body in requests:
                kwargs = {"data": body} if isinstance(body, str) else {"json": body}
                async with http.request(method, bases[component] + path, **kwargs) as resp:
                    text = (await resp.text()).lower()
                assert resp.status >= 400, (component, path)
                leaked = [s for s in held if s.lower().removeprefix("0x") in text]
                assert not leaked, f"{component} {path} echoed a stack secret"


@pytest.mark.e2e
def test_every_stack_process_listens_on_loopback_only(local_stack):
    for component, pid in local_stack.pids.items():
        listening = [
            c.laddr
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        if component == MINER:  # a client of anvil only
            assert listening == []
            continue
        assert listening, f"{component} listens nowhere"
        assert all(addr.ip == "127.0.0.1" for addr in listening), (component, listening)


# --------------------------------------------------------------------------- results and reports


@pytest.mark.e2e
def test_run_results_hold_no_key(local_stack, tmp_path, monkeypatch):
    """A real run: its events, samples and config hold none of the wallets' keys or mnemonic."""
    monkeypatch.setenv("WORKBENCH_WALLET_FILE", str(tmp_path / "wallets.json"))
    config = RunConfig(users=2, profile="fast", shape="burst", output_dir=str(tmp_path / "o"))
    outcome = asyncio.run(
        Runner(config, local_stack.target, progress=False, out=io.StringIO()).execute()
    )
    ws = wallets.load(tmp_path / "wallets.json")
    forbidden = [k.removeprefix("0x") for k in ws.private_keys()] + [ws.mnemonic]
    for name in ("events.jsonl", "samples.csv", "config.json"):
        text = (outcome.results_dir / name).read_text().lower()
        assert not [s for s in forbidden if s in text], name


def results_with(tmp_path: Path, events: list[dict], samples: str = "") -> Path:
    path = tmp_path / "run"
    path.mkdir()
    lines = [json.dumps(e) for e in events]
    (path / "events.jsonl").write_text("\n".join(lines) + "\n")
    header = "t,wall,component,pid,metric,value\n"
    (path / "samples.csv").write_text(header + samples)
    (path / "config.json").write_text(json.dumps({"users": 1}))
    return path


def refusal(path: Path, secrets_: tuple[str, ...] = ()) -> str:
    with pytest.raises(WorkbenchError, match="refusing to write") as err:
        report.render(path, secrets=secrets_)
    assert not (path / "report.html").exists()
    return str(err.value)


def test_report_refuses_a_wallet_key(tmp_path):
    path = results_with(tmp_path, [{"kind": "run", "event": "start", "t": 0, "note": KEY}])
    text = refusal(path, (KEY,))
    assert "events.jsonl" in text and KEY[2:] not in text  # says where, never what


def test_report_refuses_mnemonic_words_even_when_split(tmp_path):
    event = {"kind": "run", "event": "start", "t": 0, "words": MNEMONIC.split()}
    assert "mnemonic" in refusal(results_with(tmp_path, [event]))  # no secret list needed


def test_report_refuses_a_key_in_samples(tmp_path):
    path = results_with(tmp_path, [{"kind": "run", "event": "start", "t": 0}], f"0,1,x,1,{KEY},1\n")
    assert "samples.csv" in refusal(path, (KEY,))
