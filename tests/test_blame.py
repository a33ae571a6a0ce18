"""Blame follows the evidence: a connection refused or reset by a component's port is that
component's failure whatever step ran, while a server's answer keeps its step's class; and a
killed stack process is reaped at once (no zombie)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from workbench.driver import flow
from workbench.driver.flow import FlowError, FlowRecord, FlowRun, FlowSettings, Wallet
from workbench.stack.process import free_port, spawn
from workbench.steps import ERROR_CLASSES
from workbench.vana.target import CONTRACT_NAMES, Endpoints

WALLET = Wallet(0, "0x" + "11" * 20, "0x" + "22" * 32)
SETTINGS = FlowSettings(http_timeout_s=0.5, retry_attempts=2, retry_base_s=0.01)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def resetting_url() -> Iterator[str]:
    """A port that accepts connections and closes them unanswered (a server dying mid-request)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


def endpoints(**urls: str) -> Endpoints:
    base = {name: dead_url() for name in ("rpc_url", "api_url", "personal_server_url")}
    base["storage_url"] = dead_url()
    return Endpoints(
        **{**base, **urls},
        chain_id=31337,
        contracts={name: "0x" + "33" * 20 for name in CONTRACT_NAMES},
        grantee_id=1,
    )


async def failed_class(ep: Endpoints, step: str, call) -> str:
    """The error class a step gets when `call(flow_run)` fails inside it."""
    async with flow.flow_context(ep, lambda e: None, SETTINGS) as ctx:
        run = FlowRun(ctx, FlowRecord(0, 0, WALLET.address, "small", 0), WALLET)
        with pytest.raises(FlowError) as err:
            async with run.step(step):
                await call(run)
        return err.value.error_class


def poll(run: FlowRun):
    url = f"{run.ctx.endpoints.api_url}/api/trusted-server/poll"
    return run.retrying([1], lambda: run.post_json(url, {"operationId": "x", "chainId": 1}))


def test_refused_ports_blame_their_component_whatever_the_step():
    """The red-team case: the API server killed after permissions mined; the inference steps'
    refused connections are the API server's failure, not the personal server's."""
    ep = endpoints()
    cases = [
        ("inference_submit", poll, "api"),
        ("inference_poll", poll, "api"),
        ("relay", lambda r: r.reconnecting([1], lambda: poll(r)), "api"),
        ("server_identity", lambda r: r.get_json(f"{ep.personal_server_url}/identity"), "personal"),
        ("upload_file", lambda r: r.upload([1], b"data", "f"), "storage"),
        ("read_nonce", lambda r: r.ctx.read("DataPortabilityPermissions", "userNonce", WALLET.address), "rpc"),
    ]  # fmt: skip
    for step, call, expected in cases:
        assert asyncio.run(failed_class(ep, step, call)) == expected, step
    assert {"api", "personal", "storage", "rpc"} <= set(ERROR_CLASSES)


def test_a_reset_connection_blames_the_port_it_was_made_to(resetting_url):
    ep = endpoints(api_url=resetting_url)
    assert asyncio.run(failed_class(ep, "inference_poll", poll)) == "api"


def test_an_answer_keeps_its_step_class():
    """A live server that answers 500 is not a refused connection: the step's class stays (the
    personal server's for /identity, asked directly; `inference` for what the API server says)."""

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"success": False, "error": "a bug"}, status=500)

    def identity(run: FlowRun):
        return run.get_json(f"{run.ctx.endpoints.personal_server_url}/identity")

    async def scenario() -> tuple[str, str]:
        app = web.Application()
        app.router.add_post("/api/trusted-server/poll", broken)
        app.router.add_get("/identity", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            ep = endpoints(api_url=url, personal_server_url=url)
            return (
                await failed_class(ep, "inference_poll", poll),
                await failed_class(ep, "server_identity", identity),
            )
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == ("inference", "personal")


@pytest.mark.e2e
def test_a_killed_child_is_reaped_at_once():
    """Killed from outside (not through the stack), a child leaves no zombie behind."""
    proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while os.path.exists(f"/proc/{proc.pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/{proc.pid}")  # a zombie keeps its /proc entry
        assert proc.poll() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
