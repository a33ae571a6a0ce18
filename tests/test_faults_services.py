"""Injected service faults: storage uploads that fail or crawl, inference that fails, hangs past
its timeout or meets a full queue. First each server alone (its `faults` config), then whole runs
on the `fast` profile, where the flow retries what is safe to retry and classifies what is not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from eth_account import Account

from tests.test_personal_server import (
    SEED,
    get_json,
    grant_permission,
    poll_operation,
    post_json,
    signed_request,
    wait_finished,
)
from workbench.analysis.summary import analyze
from workbench.driver.config import RunConfig
from workbench.driver.flow import (
    FlowError,
    FlowRecord,
    FlowRun,
    FlowSettings,
    HttpStatusError,
    Wallet,
    classify,
    flow_context,
)
from workbench.driver.runner import run
from workbench.errors import WorkbenchError
from workbench.events import read_events
from workbench.stack.anvil import CHAIN_ID, dev_address
from workbench.stack.components import ComponentStartError, start_component, stop_component
from workbench.stack.inference import FaultyBackend, InferenceError, SimulatedLLM
from workbench.stack.operations import OperationStore
from workbench.stack.storage import cid_for
from workbench.vana.target import CONTRACT_NAMES, Endpoints

pytestmark = pytest.mark.e2e


# --- storage alone ------------------------------------------------------------------------------


def storage(tmp_path, faults: dict) -> tuple[Any, str]:
    config = {"data_dir": str(tmp_path / "data"), "faults": faults, "seed": 1}
    return start_component("workbench.stack.storage", config, log_path=tmp_path / "storage.log")


async def add(session, url: str, data: bytes) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="f", content_type="application/octet-stream")
    async with session.post(f"{url}/api/v0/add", data=form) as resp:
        return resp.status, await resp.json()


async def metrics(session, url: str) -> dict:
    async with session.get(f"{url}/metrics") as resp:
        return await resp.json()


async def test_failing_storage_answers_5xx_json_and_stores_nothing(tmp_path):
    proc, url = storage(tmp_path, {"fail_rate": 1.0})
    try:
        async with aiohttp.ClientSession() as s:
            answers = [await add(s, url, b"doomed %d" % i) for i in range(6)]
            async with s.post(f"{url}/api/v0/cat", params={"arg": cid_for(b"doomed 0")}) as resp:
                cat_status = resp.status
            gauges = await metrics(s, url)
    finally:
        stop_component(proc)
    assert {status for status, _ in answers} <= {500, 503}
    assert all(body["success"] is False and "injected" in body["error"] for _, body in answers)
    assert cat_status == 404  # nothing was stored
    assert gauges["injected_failures"] == 6
    assert (gauges["objects"], gauges["uploads"], gauges["upload_errors"]) == (0, 0, 0)


async def test_slow_storage_adds_latency_and_a_retry_gets_the_same_cid(tmp_path):
    proc, url = storage(tmp_path, {"fail_rate": 0.5, "slow_rate": 1.0, "slow_ms": [100, 100]})
    data = b"content-addressed: safe to retry"
    try:
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            statuses = []
            while not statuses or statuses[-1] != 200:  # seeded: a 200 comes within a few
                status, body = await add(s, url, data)
                statuses.append(status)
                assert len(statuses) < 30, statuses
            elapsed = time.perf_counter() - t0
            gauges = await metrics(s, url)
    finally:
        stop_component(proc)
    assert body["Hash"] == cid_for(data)
    assert elapsed >= 0.1 * len(statuses)  # every upload waited its slow_ms (a lower bound)
    assert gauges["injected_slow"] == len(statuses)
    assert gauges["injected_failures"] == len(statuses) - 1
    assert gauges["objects"] == 1


@pytest.mark.parametrize(
    "faults, field",
    [
        ({"fail_rate": 1.5}, "faults.storage.fail_rate"),
        ({"slow_rate": "often"}, "faults.storage.slow_rate"),
        ({"slow_rate": 0.1, "slow_ms": [300, 100]}, "faults.storage.slow_ms"),
    ],
)
def test_bad_storage_faults_stop_the_start(tmp_path, faults, field):
    with pytest.raises(ComponentStartError, match=field):
        storage(tmp_path, faults)


async def test_pin_rm_frees_several_cids_and_refuses_unknown_ones_whole(tmp_path):
    proc, url = storage(tmp_path, {})
    blobs = [b"a" * 10, b"b" * 20]
    try:
        async with aiohttp.ClientSession() as s:
            cids = [(await add(s, url, b))[1]["Hash"] for b in blobs]
            unknown = cid_for(b"never stored")
            params = [("arg", cids[0]), ("arg", unknown)]
            async with s.post(f"{url}/api/v0/pin/rm", params=params) as resp:
                refused = resp.status
            assert (await metrics(s, url))["objects"] == 2  # a refused call removes nothing
            params = [("arg", cids[0]), ("arg", f"/ipfs/{cids[1]}"), ("arg", cids[0])]
            async with s.post(f"{url}/api/v0/pin/rm", params=params) as resp:
                freed = resp.status, await resp.json()
            gauges = await metrics(s, url)
    finally:
        stop_component(proc)
    assert refused == 404
    assert freed == (200, {"Pins": cids, "BytesFreed": 30})
    assert (gauges["objects"], gauges["bytes"], gauges["removed"], gauges["bytes_freed"]) == (
        0,
        0,
        2,
        30,
    )


# --- the client's side: retries and classes -----------------------------------------------------


async def upload_through_flow(storage_url: str, **settings: Any) -> tuple[list[int], Any]:
    """One flow's upload against `storage_url`: (attempts, the URL or the exception)."""
    zero = "0x" + "00" * 20
    endpoints = Endpoints(
        "http://127.0.0.1:9", "", "", storage_url, 1, dict.fromkeys(CONTRACT_NAMES, zero), 1
    )
    async with flow_context(endpoints, lambda e: None, FlowSettings(**settings)) as ctx:
        flow = FlowRun(ctx, FlowRecord(0, 0, zero, "small", 1), Wallet(0, zero, "0x01"))
        attempts = [1]
        try:
            return attempts, await flow.upload(attempts, b"blob", "f")
        except Exception as e:
            return attempts, e


async def test_flow_retries_uploads_then_blames_storage(tmp_path):
    fast = {"retry_attempts": 3, "retry_base_s": 0.01, "retry_cap_s": 0.02}
    proc, url = storage(tmp_path, {"fail_rate": 1.0})
    try:
        attempts, error = await upload_through_flow(url, **fast)
    finally:
        stop_component(proc)
    assert attempts == [3] and isinstance(error, HttpStatusError) and error.status in (500, 503)
    assert classify("upload_file", error) == "storage"
    proc, url = storage(tmp_path, {"slow_rate": 1.0, "slow_ms": [1000, 1000]})
    try:
        attempts, error = await upload_through_flow(url, http_timeout_s=0.2, **fast)
    finally:
        stop_component(proc)
    assert attempts == [3] and isinstance(error, FlowError), error
    assert error.error_class == "storage" and "did not answer within 0.2 s" in str(error)


@pytest.mark.parametrize(
    "step, exc, expected",
    [
        ("upload_file", HttpStatusError(503, {"error": "storage unavailable"}), "storage"),
        ("upload_grant", aiohttp.ServerDisconnectedError(), "storage"),
        ("relay", HttpStatusError(502, {"error": "send failed twice on stale nonces"}), "relay"),
        ("relay", HttpStatusError(504, {"error": "nonce read failed: timeout"}), "relay"),
        ("relay", aiohttp.ClientConnectionError(), "relay"),
        ("relay", HttpStatusError(409, {"error": "would revert: InvalidNonce(1, 2)"}), "nonce"),
        ("relay", HttpStatusError(422, {"error": "would revert: GranteeNotFound()"}), "revert"),
        (
            "inference_submit",
            HttpStatusError(502, {"error": "personal server answered 503: inference queue"}),
            "inference",
        ),
        (
            "inference_poll",
            HttpStatusError(504, {"error": "personal server timed out"}),
            "inference",
        ),
    ],
)
def test_failures_are_classified_by_component(step, exc, expected):
    assert classify(step, exc) == expected


# --- inference alone ----------------------------------------------------------------------------


async def test_faulty_backend_fails_or_hangs_as_drawn():
    failing = FaultyBackend(SimulatedLLM(), {"fail_rate": 1.0})
    with pytest.raises(InferenceError, match="injected"):
        await failing.infer("p", [b"{}"], {})
    hanging = FaultyBackend(SimulatedLLM(), {"timeout_rate": 1.0})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await hanging.infer("p", [b"{}"], {})
    healthy = FaultyBackend(SimulatedLLM(), {})
    assert (await healthy.infer("p", [b"{}"], {}))["model"] == "simulated"
    assert (failing.failures, hanging.timeouts, healthy.failures + healthy.timeouts) == (1, 1, 0)
    with pytest.raises(WorkbenchError, match="exceeds 1"):
        FaultyBackend(SimulatedLLM(), {"fail_rate": 0.6, "timeout_rate": 0.6})
    with pytest.raises(WorkbenchError, match="faults.inference.fail_rate"):
        FaultyBackend(SimulatedLLM(), {"fail_rate": -0.1})


@pytest.fixture(scope="module")
def chain_stack(anvil, deployed, tmp_path_factory):
    """A healthy storage server on the session's anvil, for personal servers with faults."""
    tmp = tmp_path_factory.mktemp("faults")
    proc, url = start_component(
        "workbench.stack.storage", {"data_dir": str(tmp / "data")}, log_path=tmp / "storage.log"
    )
    base = {
        "rpc_url": anvil.rpc_url,
        "chain_id": CHAIN_ID,
        "storage_url": url,
        "contracts": deployed,
    }
    yield {"storage_url": url, "contracts": deployed, "config": base, "tmp": tmp}
    stop_component(proc)


def personal(chain_stack, name: str, inference: dict, faults: dict) -> tuple[Any, dict]:
    config = {
        **chain_stack["config"],
        "inference": {"backend": "simulated", "latency_s": [0, 0], **inference},
        "faults": faults,
        "seed": 3,
    }
    proc, url = start_component(
        "workbench.stack.personal_server",
        config,
        {"server_seed": SEED.hex()},
        log_path=chain_stack["tmp"] / f"{name}.log",
    )
    return proc, {**chain_stack, "url": url}


async def grant(w3, s, stack) -> int:
    return await grant_permission(w3, s, stack, Account.create().key.to_0x_hex(), b'{"a": 1}')


async def test_failed_inference_keeps_its_error_and_a_resubmit_starts_afresh(chain_stack, w3):
    proc, stack = personal(chain_stack, "failing", {"workers": 1}, {"fail_rate": 1.0})
    try:
        async with aiohttp.ClientSession() as s:
            pid = await grant(w3, s, stack)
            status, first = await post_json(s, f"{stack['url']}/operations", signed_request(pid))
            assert status == 202
            op = await wait_finished(s, stack["url"], first["id"])
            # Resubmitting the permission after the failure starts a new operation (see the
            # personal server's docstring); the failed one keeps its id and its error.
            status, again = await post_json(s, f"{stack['url']}/operations", signed_request(pid))
            await wait_finished(s, stack["url"], again["id"])
            _, old = await get_json(s, f"{stack['url']}/operations/{first['id']}")
            _, gauges = await get_json(s, f"{stack['url']}/metrics")
    finally:
        stop_component(proc)
    assert op["status"] == "failed" and "injected inference failure" in op["error"], op
    assert status == 202 and again["id"] != first["id"]
    assert old["status"] == "failed" and old["error"] == op["error"]
    assert (gauges["injected_failures"], gauges["failed"], gauges["submitted"]) == (2, 2, 2)


async def test_hung_inference_times_out_and_a_full_queue_answers_503(chain_stack, w3):
    """One worker, every inference hangs, queue of one: A runs (hung), B waits, C is refused.
    A and then B fail after `inference.timeout_s`; then C gets in."""
    proc, stack = personal(
        chain_stack,
        "hanging",
        {"workers": 1, "timeout_s": 0.5},
        {"timeout_rate": 1.0, "max_queue": 1},
    )
    url = stack["url"]
    try:
        async with aiohttp.ClientSession() as s:
            a, b, c = [await grant(w3, s, stack) for _ in range(3)]
            _, op_a = await post_json(s, f"{url}/operations", signed_request(a))
            await poll_operation(s, url, op_a["id"], lambda status: status == "processing")
            status_b, op_b = await post_json(s, f"{url}/operations", signed_request(b))
            status_c, refused = await post_json(s, f"{url}/operations", signed_request(c))
            # An idempotent retry of B while it waits is the same operation, not a rejection.
            _, op_b_again = await post_json(s, f"{url}/operations", signed_request(b))
            ends = [await wait_finished(s, url, op["id"]) for op in (op_a, op_b)]
            status_c2, _ = await post_json(s, f"{url}/operations", signed_request(c))
            _, gauges = await get_json(s, f"{url}/metrics")
    finally:
        assert stop_component(proc) == 0  # exits cleanly with a hung inference in flight
    assert status_b == 202 and op_b_again["id"] == op_b["id"]
    assert status_c == 503 and refused["success"] is False and "queue is full" in refused["error"]
    for end in ends:
        assert end["status"] == "failed" and "inference timeout after 0.5 s" in end["error"], end
    assert status_c2 == 202
    assert gauges["rejected"] == 1
    assert gauges["injected_timeouts"] >= 2 and gauges["timed_out"] >= 2
    assert gauges["failed"] >= 2


# --- the personal server killed and restarted: its operations live in SQLite ---------------------


async def test_operations_survive_a_kill_and_restart_of_the_personal_server(
    chain_stack, w3, tmp_path
):
    """kill -9 with one operation done, one running and two queued; the restarted server (same
    port, same data_dir) still answers the done one, resumes the rest to `succeeded` under their
    ids, and ends an operation it cannot resume as `failed` with the reason."""
    config = {
        **chain_stack["config"],
        "inference": {"backend": "simulated", "latency_s": [0.5, 0.5], "workers": 1},
        "data_dir": str(tmp_path / "personal"),
    }

    def start(port: int = 0) -> tuple[Any, str]:
        return start_component(
            "workbench.stack.personal_server",
            {**config, "port": port},
            {"server_seed": SEED.hex()},
            log_path=tmp_path / "personal.log",
        )

    proc, url = start()
    stack = {**chain_stack, "url": url}
    try:
        async with aiohttp.ClientSession() as s:
            pids = [await grant(w3, s, stack) for _ in range(4)]
            _, done = await post_json(s, f"{url}/operations", signed_request(pids[0]))
            before = await wait_finished(s, url, done["id"])
            ids = []
            for pid in pids[1:]:
                status, op = await post_json(s, f"{url}/operations", signed_request(pid))
                assert status == 202
                ids.append(op["id"])
            await poll_operation(s, url, ids[0], lambda status: status == "processing")
            proc.kill()  # SIGKILL: no cleanup, nothing flushed on the way out
            proc.wait()
            # A row the old process left whose permission does not exist: it cannot be resumed.
            OperationStore(config["data_dir"], keep_finished=100).add(
                "ghost", 10**9, dev_address(1), "processing", time.time()
            )
            proc, again = start(port=int(url.rsplit(":", 1)[1]))
            assert again == url
            _, after = await get_json(s, f"{url}/operations/{done['id']}")
            resumed = [await wait_finished(s, url, op_id) for op_id in ids]
            ghost = await wait_finished(s, url, "ghost")
            # A client retrying its submit after the restart gets the same operation.
            status, retried = await post_json(s, f"{url}/operations", signed_request(pids[3]))
            _, gauges = await get_json(s, f"{url}/metrics")
    finally:
        stop_component(proc)
    assert before["status"] == "succeeded" and after == before
    assert [op["status"] for op in resumed] == ["succeeded"] * 3, resumed
    assert all(op["result"]["files"][0]["json_keys"] == 1 for op in resumed)  # really decrypted
    assert status == 202 and retried["id"] == ids[2]
    assert ghost["status"] == "failed"
    assert "could not resume" in ghost["error"] and "no permission" in ghost["error"]
    assert (gauges["resumed"], gauges["resume_failed"]) == (3, 1)


# --- whole runs on the fast profile -------------------------------------------------------------


async def faulty_run(tmp_path, users: int, faults: dict) -> tuple[list[dict], dict]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps(faults))  # JSON is YAML
    config = RunConfig.from_params(
        users=users,
        profile="fast",
        shape="burst",
        faults=str(plan),
        output_dir=str(tmp_path / "out"),
    )
    outcome = await run(config, progress=False, report=False)
    return read_events(outcome.results_dir / "events.jsonl"), analyze(outcome.results_dir)


def check_counts(events: list[dict], summary: dict, users: int) -> tuple[list, list]:
    """Every flow has exactly one outcome and the summary's counts agree with the events."""
    flows = [e for e in events if e["kind"] == "flow"]
    steps = [e for e in events if e["kind"] == "step"]
    assert sorted(f["flow_id"] for f in flows) == list(range(users))
    failed = [f for f in flows if f["status"] == "failed"]
    assert summary["flows_total"] == users == len(flows)
    assert summary["flows_ok"] + summary["flows_failed"] + summary["flows_cancelled"] == users
    assert summary["flows_failed"] == len(failed) and summary["flows_cancelled"] == 0
    assert sum(summary["error_classes"].values()) == len(failed)
    assert sum(summary["failed_steps"].values()) == len(failed)
    return flows, steps


def retries(steps: list[dict], names: tuple[str, ...]) -> int:
    """Failed attempts of the named steps: all but the last of each, plus the last if it failed."""
    return sum(s["attempts"] - s["ok"] for s in steps if s["step"] in names)


async def test_run_survives_storage_faults(tmp_path):
    users = 10
    faults = {"storage": {"fail_rate": 0.25, "slow_rate": 0.2, "slow_ms": [20, 80]}}
    events, summary = await faulty_run(tmp_path, users, faults)
    flows, steps = check_counts(events, summary, users)
    uploads = ("upload_file", "upload_grant")
    assert set(summary["error_classes"]) <= {"storage"}  # 5 straight failures: rare, but storage
    assert all(f["failed_step"] in uploads for f in flows if not f["ok"])
    assert summary["faults_injected"]["storage"]["fail_rate"] == 0.25
    gauges = summary["gauges"]["storage"]
    assert retries(steps, uploads) == gauges["injected_failures"] > 0  # each fault, one retry
    assert max(s["attempts"] for s in steps if s["step"] in uploads) > 1
    assert summary["uploads_total"] == sum(1 for s in steps if s["step"] in uploads)
    assert gauges["uploads"] == summary["uploads_ok"]


async def test_run_survives_inference_faults(tmp_path):
    users = 12
    faults = {"inference": {"fail_rate": 0.3, "max_queue": 1}}
    events, summary = await faulty_run(tmp_path, users, faults)
    flows, steps = check_counts(events, summary, users)
    failed = [f for f in flows if not f["ok"]]
    assert set(summary["error_classes"]) <= {"inference"}
    gauges = summary["gauges"]["personal"]
    injected = [f for f in failed if "injected inference failure" in f["error"]]
    assert len(injected) == gauges["injected_failures"] == gauges["failed"]
    assert all(f["failed_step"] == "inference_poll" for f in injected)
    # A full queue answers 503; the API server passes it on as 502 and the flow retries it.
    assert retries(steps, ("inference_submit",)) == gauges["rejected"]
    submitted = Counter(s["step"] for s in steps)["inference_submit"]
    assert summary["inference_total"] == submitted == users
    assert summary["inference_ok"] == users - len(failed)


async def test_run_inference_timeouts_fail_as_inference(tmp_path):
    """The fast profile's `inference.timeout_s` (5 s) reaches the personal server: a hung
    inference fails there, as an inference error, before the flow's own timeout."""
    users = 8
    faults = {"inference": {"timeout_rate": 0.25}}
    events, summary = await faulty_run(tmp_path, users, faults)
    flows, _ = check_counts(events, summary, users)
    failed = [f for f in flows if not f["ok"]]
    gauges = summary["gauges"]["personal"]
    assert set(summary["error_classes"]) <= {"inference"}
    assert len(failed) == gauges["injected_timeouts"] == gauges["timed_out"]
    assert all("inference timeout after 5 s" in f["error"] for f in failed)
    assert all(f["failed_step"] == "inference_poll" for f in failed)
