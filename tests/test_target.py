"""Remote target files (`workbench.vana.target.load_target`) and preflight against a live stack."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from workbench.__main__ import main
from workbench.driver.config import RunConfig
from workbench.driver.preflight import preflight
from workbench.driver.runner import Runner
from workbench.errors import WorkbenchError
from workbench.stack.process import free_port
from workbench.vana.target import CONTRACT_NAMES, load_target

MOKSHA = {
    "DataPortabilityPermissions": "0xD54523048AdD05b4d734aFaE7C68324Ebb7373eF",
    "DataPortabilityGrantees": "0x8325C0A0948483EdA023A1A2Fd895e62C5131234",
    "DataPortabilityServers": "0x1483B1F634DBA75AeaE60da7f01A679aabd5ee2c",
    "DataRegistry": "0x8C8788f98385F6ba1adD4234e551ABba0f82Cb7C",
}
GOOD: dict[str, Any] = {
    "chain_id": 14800,
    "rpc_urls": ["https://rpc.example.org"],
    "contracts": MOKSHA,
    "api_url": "http://127.0.0.1:3001",
    "personal_server_url": "https://ps.example.org/",
    "storage_url": "http://127.0.0.1:5001",
    "grantee_id": 7,
}
KEY = "0x" + "ab" * 32
PS_V1 = "https://ps.example.org/api/v1"


def write(tmp_path: Path, doc: dict[str, Any], name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def refused(tmp_path: Path, doc: dict[str, Any]) -> WorkbenchError:
    with pytest.raises(WorkbenchError) as err:
        load_target(write(tmp_path, doc))
    assert "t.yaml" in err.value.field  # every mistake names the file ...
    assert err.value.fix  # ... and says what to do
    return err.value


# --------------------------------------------------------------------------- parsing


def test_a_good_file_loads(tmp_path):
    target = load_target(write(tmp_path, GOOD))
    ep = target.endpoints
    assert target.kind == "remote" and target.name == "t" and ep.chain_id == 14800
    assert ep.rpc_url == "https://rpc.example.org" and target.rpc_urls == (
        "https://rpc.example.org",
    )
    assert ep.personal_server_url == "https://ps.example.org"  # trailing slash dropped
    assert ep.contracts == MOKSHA and ep.grantee_id == 7 and not target.placeholders
    assert target.funder_key_env == "WORKBENCH_FUNDER_KEY" and target.funder_key is None
    assert 'funder_key"' not in json.dumps(target.to_json())


def test_moksha_file_has_public_addresses_and_marked_placeholders():
    target = load_target("moksha")
    assert target.endpoints.chain_id == 14800 and target.endpoints.contracts == MOKSHA
    assert target.rpc_urls == ("https://rpc.moksha.vana.org",)
    assert set(target.placeholders) == {"api_url", "grantee_id"}
    # As Vana's example apps and the SDK's PinataStorage: a base path, a JWT from the env.
    assert target.endpoints.personal_server_url == "https://test.server.vana.com/api/v1"
    ipfs = target.ipfs
    assert (ipfs.kind, ipfs.add_url) == ("pinata", "https://api.pinata.cloud/pinning/pinFileToIPFS")
    assert ipfs.gateway("bafy") == "https://gateway.pinata.cloud/ipfs/bafy"
    assert ipfs.token_env == "PINATA_JWT" and "PINATA_JWT" in json.dumps(target.to_json())


def test_storage_providers_and_their_defaults(tmp_path, monkeypatch):
    kubo = load_target(write(tmp_path, GOOD)).ipfs
    assert kubo.add_url == "http://127.0.0.1:5001/api/v0/add"
    assert kubo.gateway("bafk") == "http://127.0.0.1:5001/ipfs/bafk" and kubo.headers() == {}
    doc = {**GOOD, "gateway_url": "http://127.0.0.1:8080/ipfs/", "personal_server_url": PS_V1}
    target = load_target(write(tmp_path, doc))
    assert target.ipfs.gateway("bafk") == "http://127.0.0.1:8080/ipfs/bafk"
    assert target.endpoints.personal_server_url == PS_V1  # the path is kept
    pinata = {**GOOD, "storage_kind": "pinata", "storage_token_env": "MY_JWT"}
    ipfs = load_target(write(tmp_path, pinata)).ipfs
    monkeypatch.delenv("MY_JWT", raising=False)
    with pytest.raises(WorkbenchError) as err:
        ipfs.headers()
    assert err.value.field == "MY_JWT" and "export MY_JWT=" in err.value.fix
    monkeypatch.setenv("MY_JWT", "jwt-for-the-test")
    assert ipfs.headers() == {"Authorization": "Bearer jwt-for-the-test"}
    assert "jwt-for-the-test" not in json.dumps(ipfs.to_json())


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"api_url": None}, "api_url", "missing"),
        ({"rpc_url": "https://x.org"}, "rpc_url", "did you mean 'rpc_urls'"),
        ({"api_url": "127.0.0.1:3001"}, "api_url", "not an http(s) URL"),
        ({"storage_url": "http://host:99999"}, "storage_url", "bad port"),
        ({"rpc_urls": []}, "rpc_urls", "non-empty list"),
        ({"rpc_urls": ["https://a.org", "ftp://b.org"]}, "rpc_urls[1]", "not an http(s) URL"),
        ({"chain_id": "14800"}, "chain_id", "integer"),
        ({"chain_id": 1.5}, "chain_id", "integer"),
        ({"grantee_id": 0}, "grantee_id", "integer >= 1"),
        ({"storage_kind": "s3"}, "storage_kind", "unknown kind"),
        ({"funder_key_env": "my key"}, "funder_key_env", "environment variable name"),
        ({"storage_kind": "pinata", "storage_token_env": "a-b"}, "storage_token_env", "variable"),
        ({"gateway_url": "gateway.example.org"}, "gateway_url", "not an http(s) URL"),
    ],
)
def test_mistakes_name_file_key_and_fix(tmp_path, change, key, words):
    doc = {**GOOD, **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    err = refused(tmp_path, doc)
    assert err.field.endswith(f": {key}") and words in str(err)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("0x1234", "not an address"),
        (MOKSHA["DataRegistry"] + "00", "not an address"),
        (MOKSHA["DataRegistry"].replace("8C87", "8c87"), "EIP-55 checksum"),
    ],
)
def test_bad_addresses_are_named(tmp_path, address, words):
    err = refused(tmp_path, {**GOOD, "contracts": {**MOKSHA, "DataRegistry": address}})
    assert err.field.endswith("contracts.DataRegistry") and words in err.problem


def test_contract_names_are_checked(tmp_path):
    missing = {k: v for k, v in MOKSHA.items() if k != "DataRegistry"}
    assert "missing" in refused(tmp_path, {**GOOD, "contracts": missing}).problem
    typo = {**MOKSHA, "DataRegistryy": MOKSHA["DataRegistry"]}
    assert refused(tmp_path, {**GOOD, "contracts": typo}).field.endswith("contracts.DataRegistryy")


def test_all_lowercase_addresses_are_accepted_and_checksummed(tmp_path):
    lower = {k: v.lower() for k, v in MOKSHA.items()}
    assert load_target(write(tmp_path, {**GOOD, "contracts": lower})).endpoints.contracts == MOKSHA


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"funder_key": KEY}, "funder_key"),  # a key instead of the variable's name
        ({"funder_key_env": KEY[2:]}, "funder_key_env"),
        ({"description": f"funded by {KEY}"}, "description"),
        ({"description": "test test test test test test test test test test test junk"}, "desc"),
        ({"api_token": "abc"}, "api_token"),
    ],
)
def test_key_shaped_values_are_refused_naming_the_key(tmp_path, extra, key):
    err = refused(tmp_path, {**GOOD, **extra})
    assert key in err.field and "never hold" in err.problem
    assert KEY[2:] not in str(err)  # the error itself never repeats the secret


def test_unknown_target_and_broken_yaml(tmp_path):
    with pytest.raises(WorkbenchError, match="no target file"):
        load_target("no-such-target")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chain_id: [1,\n", encoding="utf-8")
    with pytest.raises(WorkbenchError, match="cannot read"):
        load_target(bad)
    with pytest.raises(WorkbenchError, match="mapping"):
        load_target(write(tmp_path, ["a"], "list.yaml"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- preflight, live


def stack_doc(stack: Any, **changes: Any) -> dict[str, Any]:
    """The local stack described as a target file."""
    ep = stack.endpoints
    doc = {
        "name": "local-as-remote",
        "chain_id": ep.chain_id,
        "rpc_urls": [ep.rpc_url],
        "contracts": dict(ep.contracts),
        "api_url": ep.api_url,
        "personal_server_url": ep.personal_server_url,
        "storage_kind": "kubo",
        "storage_url": ep.storage_url,
        "grantee_id": ep.grantee_id,
    }
    return {**doc, **changes}


def run_preflight(path: Path):
    return asyncio.run(preflight(load_target(path), timeout_s=5))


@pytest.mark.e2e
def test_preflight_passes_on_the_local_stack(local_stack, tmp_path):
    report = run_preflight(write(tmp_path, stack_doc(local_stack)))
    assert report.ok, report.lines()
    items = {c.item for c in report.checks if c.ok}
    assert {"rpc_urls[0]", "api_url", "personal_server_url", "storage_url", "grantee_id"} <= items
    assert "gateway_url" in items  # it served the probe the storage just stored
    assert "unified" in next(c.detail for c in report.checks if c.item == "api_url")
    assert {f"contracts.{n}" for n in CONTRACT_NAMES} <= items
    report.raise_for_problems()  # no-op when ok


@pytest.mark.e2e
def test_wrong_chain_id_fails_naming_chain_id(local_stack, tmp_path):
    report = run_preflight(write(tmp_path, stack_doc(local_stack, chain_id=14800)))
    assert [c.item for c in report.problems] == ["chain_id", "contracts"]
    assert "14800" in report.problems[0].detail and "31337" in report.problems[0].detail


@pytest.mark.e2e
def test_unreachable_api_is_named(local_stack, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    report = run_preflight(write(tmp_path, stack_doc(local_stack, api_url=dead)))
    assert [c.item for c in report.problems] == ["api_url"]
    assert "unreachable" in report.problems[0].detail and dead in report.problems[0].detail


@pytest.mark.e2e
def test_every_problem_is_reported_at_once(local_stack, tmp_path):
    ep = local_stack.endpoints
    doc = stack_doc(
        local_stack,
        rpc_urls=[ep.rpc_url, f"http://127.0.0.1:{free_port()}"],  # a second, dead RPC
        personal_server_url=ep.api_url + "/nothing",
        storage_url="REPLACE_ME with your Kubo URL",
        grantee_id=999,
        contracts={**ep.contracts, "DataRegistry": "0x000000000000000000000000000000000000dEaD"},
    )
    report = run_preflight(write(tmp_path, doc))
    problems = {c.item for c in report.problems}
    assert problems == {
        "rpc_urls[1]",
        "personal_server_url",
        "storage_url",
        "grantee_id",
        "contracts.DataRegistry",
    }
    with pytest.raises(WorkbenchError) as err:
        report.raise_for_problems()
    text = str(err.value)
    assert "5 preflight check(s) failed" in text and "python -m workbench preflight" in text
    assert all(f"- {item}:" in text for item in problems)


@pytest.mark.e2e
def test_an_api_without_the_unified_relay_protocol_and_a_wrong_gateway_fail(local_stack, tmp_path):
    ep = local_stack.endpoints
    # The personal server has /health but no /api/relay: its 404 carries no {type: "error"}.
    doc = stack_doc(local_stack, api_url=ep.personal_server_url, gateway_url=ep.api_url)
    report = run_preflight(write(tmp_path, doc))
    assert [c.item for c in report.problems] == ["api_url", "gateway_url"]
    assert "unified relayer protocol" in report.problems[0].detail
    assert "not the probe" in report.problems[1].detail


@pytest.mark.e2e
def test_a_foreign_permissions_contract_fails_the_domain_check(local_stack, tmp_path):
    ep = local_stack.endpoints
    swapped = {**ep.contracts, "DataPortabilityPermissions": ep.contracts["DataRegistry"]}
    report = run_preflight(write(tmp_path, stack_doc(local_stack, contracts=swapped)))
    [problem] = report.problems
    assert (
        problem.item == "contracts.DataPortabilityPermissions" and "eip712Domain" in problem.detail
    )


@pytest.mark.e2e
def test_cli_preflight_exit_codes(local_stack, tmp_path, capsys):
    assert main(["preflight", str(write(tmp_path, stack_doc(local_stack)))]) == 0
    assert "is ready" in capsys.readouterr().out
    dead = write(tmp_path, stack_doc(local_stack, api_url=f"http://127.0.0.1:{free_port()}"))
    assert main(["preflight", str(dead)]) == 1
    assert "❌ api_url" in capsys.readouterr().out
    assert main(["preflight", str(write(tmp_path, {**GOOD, "chain_id": "x"}, "b.yaml"))]) == 2


@pytest.mark.e2e
def test_a_run_stops_at_preflight_before_any_wallet(local_stack, tmp_path, monkeypatch):
    wallet_file = tmp_path / "wallets.json"
    monkeypatch.setenv("WORKBENCH_WALLET_FILE", str(wallet_file))
    path = write(tmp_path, stack_doc(local_stack, chain_id=1))
    config = RunConfig(users=2, profile="fast", target=str(path), output_dir=str(tmp_path / "o"))
    runner = Runner(config, progress=False, out=io.StringIO())
    with pytest.raises(WorkbenchError) as err:
        asyncio.run(runner.execute())
    assert "chain_id" in str(err.value)
    assert not wallet_file.exists()  # nothing generated, nothing funded
    events = (config.results_dir() / "events.jsonl").read_text()
    assert '"reason":"error: WorkbenchError"' in events


@pytest.mark.e2e
def test_a_run_that_passes_preflight_goes_on_to_the_wallets(local_stack, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_WALLET_FILE", str(tmp_path / "wallets.json"))
    path = write(tmp_path, stack_doc(local_stack))
    config = RunConfig(users=2, profile="fast", target=str(path), output_dir=str(tmp_path / "o"))
    console = io.StringIO()
    with pytest.raises(WorkbenchError) as err:  # remote wallets are never funded by a run
        asyncio.run(Runner(config, progress=False, out=console).execute())
    assert err.value.field == "wallets" and "wallets --fund" in err.value.fix
    assert "✅ Target local-as-remote ready" in console.getvalue()


def test_a_run_with_a_bad_target_file_fails_before_anything_starts(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: broken\nchain_id: 5\n")
    config = RunConfig.from_params(users=1, target=str(bad), output_dir=str(tmp_path / "out"))
    with pytest.raises(WorkbenchError, match="rpc_urls"):
        Runner(config)
    assert not (tmp_path / "out").exists()
