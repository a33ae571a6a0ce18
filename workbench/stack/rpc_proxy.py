"""A JSON-RPC proxy in front of anvil that injects the RPC faults of a fault plan.

`python -m workbench.stack.rpc_proxy`, config (`WORKBENCH_COMPONENT`, JSON):
  port (0 = any free), upstream (the node's URL), upstream_timeout_s (60), seed (optional),
  armed (true): whether faults are injected yet (the run's fault schedule arms it at run start,
  so stack start-up and wallet funding are not part of the experiment),
  faults {error_rate, statuses, timeout_rate, timeout_s, drop_rate} (see `workbench.stack.faults`).

Each HTTP request (a batch counts once) draws one number: with `error_rate` it is answered with
one of `statuses` (429 / 503 ...) and a JSON-RPC error body, with `timeout_rate` it hangs
`timeout_s` then answers 504 (a client with a shorter deadline sees its own timeout), with
`drop_rate` the connection is closed without an answer. A hung or dropped request is forwarded
first half of the time: the node acted but the answer was lost, which is what makes a re-sent
transaction dangerous. Everything else is forwarded verbatim. The anvil control methods the
harness itself uses (`evm_*`, `anvil_*`, `txpool_*`) are never faulted.

Routes: POST / (JSON-RPC), GET /health, GET /metrics, POST /faults {"armed": bool}.
Gauges: requests, forwarded, bad_requests, upstream_errors, injected (total), injected_error,
injected_timeout, injected_drop, injected_status_<code>, armed.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from workbench.errors import WorkbenchError
from workbench.stack.faults import SECTIONS
from workbench.stack.server import json_body, make_app, read_body, run

PROXY_KEY = web.AppKey("rpc_proxy", object)
CONTROL_PREFIXES = ("evm_", "anvil_", "txpool_")
FAULT_CODE = -32005  # "limit exceeded", what public RPC providers answer when they throttle
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
Calls = list[dict[str, Any]] | dict[str, Any]  # a batch, or one call


class RpcProxy:
    def __init__(self, config: dict[str, Any]):
        self.upstream = config["upstream"]
        self.faults = {**SECTIONS["rpc"], **(config.get("faults") or {})}
        self.armed = bool(config.get("armed", True))
        self.timeout = aiohttp.ClientTimeout(total=float(config.get("upstream_timeout_s", 60)))
        self.rng = random.Random(config.get("seed"))
        self.session: aiohttp.ClientSession | None = None
        self.counts: Counter[str] = Counter()

    def gauges(self) -> dict[str, int]:
        keys = ("requests", "forwarded", "bad_requests", "upstream_errors", "injected")
        kinds = ("injected_error", "injected_timeout", "injected_drop")
        return {
            **{k: self.counts[k] for k in keys + kinds},
            **self._by_status(),
            "armed": int(self.armed),
        }

    def _by_status(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if k.startswith("injected_status_")}

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256)
        )

    async def stop(self, app: web.Application) -> None:
        if self.session:
            await self.session.close()

    # --- routes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        body = await read_body(request)  # any Content-Type, as nodes take; encodings decoded
        try:
            calls, batch = _parse(body)
        except ValueError as e:
            self.counts["bad_requests"] += 1
            code = PARSE_ERROR if "JSON" in str(e) else INVALID_REQUEST
            return web.json_response(_error(None, code, str(e)), status=400)
        fault = self._draw(calls)
        if fault is None:
            return await self._forward(body)
        self.counts["injected"] += 1
        self.counts[f"injected_{fault}"] += 1
        inject = getattr(self, f"_inject_{fault}")
        return await inject(request, body, calls if batch else calls[0])

    async def set_faults(self, request: web.Request) -> web.Response:
        body = await json_body(request, {"armed": bool})
        self.armed = body["armed"]
        return web.json_response({"success": True, "armed": self.armed})

    # --- faults

    def _draw(self, calls: list[dict[str, Any]]) -> str | None:
        """One draw per HTTP request: error, timeout, drop, or None (forward)."""
        if not self.armed or all(_is_control(c.get("method")) for c in calls):
            return None
        x, f = self.rng.random(), self.faults
        for kind, rate in (("error", f["error_rate"]), ("timeout", f["timeout_rate"])):
            if x < rate:
                return kind
            x -= rate
        return "drop" if x < f["drop_rate"] else None

    async def _inject_error(self, request: web.Request, body: bytes, calls: Calls) -> web.Response:
        status = self.rng.choice(self.faults["statuses"])
        self.counts[f"injected_status_{status}"] += 1
        return _answer(calls, status, f"injected fault: HTTP {status}")

    async def _inject_timeout(
        self, request: web.Request, body: bytes, calls: Calls
    ) -> web.Response:
        await self._maybe_forward(body)
        await asyncio.sleep(float(self.faults["timeout_s"]))
        return _answer(calls, 504, f"injected fault: no answer within {self.faults['timeout_s']} s")

    async def _inject_drop(self, request: web.Request, body: bytes, calls: Calls) -> web.Response:
        await self._maybe_forward(body)
        if request.transport is not None:
            request.transport.close()  # no answer at all; aiohttp skips writing the response below
        return web.Response(status=500)

    async def _maybe_forward(self, body: bytes) -> None:
        """Half the time the node gets the call and only its answer is lost."""
        if self.rng.random() < 0.5:
            await self._forward(body)

    async def _forward(self, body: bytes) -> web.Response:
        headers = {"Content-Type": "application/json"}
        assert self.session is not None  # set by start(), before any request is served
        try:
            async with self.session.post(self.upstream, data=body, headers=headers) as resp:
                payload = await resp.read()
                self.counts["forwarded"] += 1
                return web.Response(
                    body=payload, status=resp.status, content_type="application/json"
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.counts["upstream_errors"] += 1
            return _answer(_calls_of(body), 502, f"upstream unreachable: {type(e).__name__}")


def _parse(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The calls of a request and whether it was a batch; ValueError names what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: `[[[[…` too deep
        raise ValueError("body is not valid JSON") from None
    calls = data if isinstance(data, list) else [data]
    if not calls or not all(
        isinstance(c, dict) and isinstance(c.get("method"), str) for c in calls
    ):
        raise ValueError("expected a JSON-RPC request object or a non-empty batch of them")
    return calls, isinstance(data, list)


def _calls_of(body: bytes) -> Calls:
    """The request as `_answer` takes it: a batch list or one call (its id, if readable)."""
    try:
        calls, batch = _parse(body)
    except ValueError:
        return {}
    return calls if batch else calls[0]


def _is_control(method: Any) -> bool:
    return isinstance(method, str) and method.startswith(CONTROL_PREFIXES)


def _error(call_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}}


def _answer(calls: Calls, status: int, message: str) -> web.Response:
    """A JSON-RPC error for the call, or a list of them for a batch, under HTTP `status`."""
    if isinstance(calls, dict):
        return web.json_response(_error(calls.get("id"), FAULT_CODE, message), status=status)
    return web.json_response(
        [_error(c.get("id"), FAULT_CODE, message) for c in calls], status=status
    )


def build_app(config: dict[str, Any]) -> web.Application:
    if not config.get("upstream"):
        raise WorkbenchError("rpc_proxy.upstream", "missing", "pass the node's URL")
    proxy = RpcProxy(config)
    app = make_app(proxy.gauges)
    app[PROXY_KEY] = proxy
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_post("/", proxy.handle)
    app.router.add_post("/faults", proxy.set_faults)
    return app


if __name__ == "__main__":
    run(build_app)
