"""The common base of the stack's aiohttp servers.

Every server answers bad requests with 4xx JSON `{"success": false, "error": "..."}` and keeps
serving; a bug answers 500 JSON and is logged. It has `GET /health` and `GET /metrics` (JSON
gauges), reads its config from `WORKBENCH_COMPONENT` and its secrets from `WORKBENCH_SECRETS`
(both JSON), binds 127.0.0.1 and tells its parent it is up with one stdout line
`READY {"port": N}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from workbench.errors import WorkbenchError
from workbench.secrets import redact, redact_logs
from workbench.stack.process import watch_parent

CONFIG_ENV = "WORKBENCH_COMPONENT"
SECRETS_ENV = "WORKBENCH_SECRETS"
READY_PREFIX = "READY "
HOST = "127.0.0.1"
DEFAULT_MAX_BODY = 1024 * 1024
UINT256_MAX = 2**256 - 1  # what the contracts take: a larger id can only be a bad request
# py_ecc (imported by eth-account's keyfile module) raises the recursion limit to 100000. The C
# JSON parser then no longer stops at a RecursionError: a body of 100000 `[` overflows the C stack
# and the server dies of SIGSEGV. Servers need no deep recursion: back to Python's default.
RECURSION_LIMIT = 1000

log = logging.getLogger("workbench.stack")

Gauges = Callable[[], Mapping[str, float | int]]
GAUGES_KEY = web.AppKey[Gauges]("gauges")


class ApiError(Exception):
    """A request the server refuses; becomes `{"success": false, "error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> web.Response:
    # An error text may quote an exception or a request; it never carries this process's keys.
    return web.json_response({"success": False, "error": redact(message)}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turns every failure into JSON so a load driver can classify it; never kills the server."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:  # redirects and the like pass through
            raise
        return error_response(e.status, _http_message(e))
    except asyncio.CancelledError:
        raise  # the client went away or the server stops
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error")


def _http_message(e: web.HTTPException) -> str:
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return "request body too large"
    if isinstance(e, web.HTTPNotFound):
        return "not found"
    if isinstance(e, web.HTTPMethodNotAllowed):
        return f"method not allowed; allowed: {', '.join(sorted(e.allowed_methods))}"
    return e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason


# --- request parsing: errors name the field -----------------------------------------------------


async def json_body(request: web.Request, schema: Mapping[str, type | tuple[type, ...]]) -> dict:
    """The JSON object body, with each field of `schema` present and of its type (else 400)."""
    try:
        body = await request.json(loads=json.loads)
    except web.HTTPException:
        raise
    except (ValueError, LookupError, RecursionError) as e:  # bad JSON or UTF-8, unknown charset
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    for name, kind in schema.items():
        field(body, name, kind)
    return body


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """`body[name]` if present and of `kind` (bool is not accepted as int), else 400."""
    if name not in body or body[name] is None:
        raise ApiError(400, f"missing field '{name}'")
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ApiError(400, f"field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def query_arg(request: web.Request, name: str) -> str:
    """A required query parameter, else 400."""
    value = request.query.get(name)
    if not value:
        raise ApiError(400, f"missing query parameter '{name}'")
    return value


def int_field(
    body: Mapping[str, Any], name: str, minimum: int = 0, maximum: int = UINT256_MAX
) -> int:
    """An integer field (also accepted as a decimal string, as JS clients send big numbers)."""
    value = field(body, name, (int, str))
    if isinstance(value, str):
        digits = value.strip()
        # ASCII only: str.isdigit() also admits '²', which int() refuses. 78 digits fit uint256.
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 78):
            raise ApiError(400, f"field '{name}' must be an integer")
        value = int(digits)
    if not minimum <= value <= maximum:
        raise ApiError(400, f"field '{name}' must be in {minimum}..{maximum}")
    return value


# --- the app and its standard routes ------------------------------------------------------------


def make_app(gauges: Gauges | None = None, max_body: int = DEFAULT_MAX_BODY) -> web.Application:
    """An app with the error middleware, `/health` and `/metrics` (fed by `gauges()`)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    app[GAUGES_KEY] = gauges or (lambda: {})
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "timestamp": int(time.time() * 1000)})


async def _metrics(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[GAUGES_KEY]()))


# --- configuration from the environment ---------------------------------------------------------


def component_config() -> dict[str, Any]:
    """This component's config: the JSON object in `WORKBENCH_COMPONENT` (may be absent)."""
    return _env_json(CONFIG_ENV)


def secrets() -> dict[str, Any]:
    """Secrets from `WORKBENCH_SECRETS`. Never log or echo the result."""
    return _env_json(SECRETS_ENV)


def _env_json(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        # The value itself is not shown: for secrets it may be a key.
        raise WorkbenchError(name, "is not valid JSON", "pass a JSON object") from None
    if not isinstance(value, dict):
        raise WorkbenchError(name, "is not a JSON object", "pass a JSON object")
    return value


# --- running ------------------------------------------------------------------------------------


async def serve(app: web.Application, host: str = HOST, port: int = 0) -> None:
    """Serves `app` until SIGTERM/SIGINT or the parent's death; port 0 lets the OS choose.

    The `READY` line is printed after the app's startup hooks ran and the socket listens, so a
    parent that waits for it can send requests at once. A signal during a slow startup (say,
    an RPC node that does not answer) abandons the startup and exits cleanly too.
    """
    if host != HOST:
        raise WorkbenchError("host", f"{host!r} is not loopback", f"stack servers bind {HOST}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None)  # per-request logging would distort load runs
    watchdog = asyncio.create_task(watch_parent())
    stopping = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(_listen(runner, host, port))
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            bound = starting.result()  # a failed startup raises here
            print(f"{READY_PREFIX}{json.dumps({'port': bound})}", flush=True)
            await stopping
    finally:
        for task in (starting, stopping, watchdog):
            task.cancel()
        await asyncio.gather(starting, stopping, watchdog, return_exceptions=True)
        await runner.cleanup()  # runs the cleanup hooks even after a failed or abandoned startup


def _json_protocol_errors() -> None:
    """Requests aiohttp cannot parse (a request line over 8 KiB, a bad header byte) never reach
    the middleware: aiohttp answers them itself, in plain text. Make those answers JSON too, so
    every error a client sees has one shape. Patches this server process only."""
    plain = RequestHandler.handle_error
    if plain.__module__ == __name__:  # patched already
        return

    def handle_error(
        self: RequestHandler,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        answer = plain(self, request, status, exc, message)  # logs; raises if a reply began
        text = "internal server error" if status >= 500 else message or answer.reason
        response = error_response(status, text)
        response.force_close()  # as aiohttp does: the stream may be out of step
        return response

    # A deliberate patch: aiohttp offers no hook for errors raised before routing.
    RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    await runner.setup()
    sys.setrecursionlimit(RECURSION_LIMIT)  # after every import and startup hook: see above
    site = web.TCPSite(runner, host, port, shutdown_timeout=2.0)
    await site.start()
    return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def run(app: web.Application, port: int = 0) -> None:
    """Entry point of a component's `__main__`: logging to stderr, serve, exit 0 on a signal."""
    logging.basicConfig(
        level=os.environ.get("WORKBENCH_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact_logs()  # log lines and tracebacks never carry the keys in WORKBENCH_SECRETS
    _json_protocol_errors()
    asyncio.run(serve(app, HOST, port))
