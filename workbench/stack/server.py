"""The common base of the stack's aiohttp servers.

Every server answers bad requests with 4xx JSON `{"success": false, "error": "..."}` and one log
line (413 for anything too large, 415 for a Content-Type or Content-Encoding it cannot read, 400
otherwise), and keeps serving; a bug answers 500 JSON and is logged with its traceback. Bodies are
read only through this module (`json_body`, `read_body`, `reading`), which also answers what
aiohttp itself refuses (a broken request line, huge headers) in JSON.

Slow clients are dropped: a connection in the middle of a request (its headers or body incomplete)
that sends nothing for `read_timeout_s` (10; 5 dropped honest uploads when 200 concurrent 10 MiB
ones overloaded their client on a busy 2-core box), or has not finished the request
`request_timeout_s` (20) after its first byte, is closed; so is one with no request under way
(new, or kept alive between requests) after `idle_timeout_s` (30: longer than client pools keep
idle connections, 15 s for aiohttp, so a reused connection never races its closing, and long
enough for an overloaded client to get round to sending). All three are optional keys of the
component config.

It has `GET /health` and `GET /metrics` (JSON gauges), reads its config from `WORKBENCH_COMPONENT`
and its secrets from `WORKBENCH_SECRETS` (both JSON), binds 127.0.0.1 and tells its parent it is
up with one stdout line `READY {"port": N}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

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
# Patience with clients (see the module docstring); each is a component config key.
TIMEOUTS = {"read_timeout_s": 10.0, "request_timeout_s": 20.0, "idle_timeout_s": 30.0}
SWEEP_INTERVAL_S = 1.0
LINGER_S = 2.0  # after refusing a body, how long its rest is read and dropped before closing
# Content-Encodings a body may have (zlib window bits); aiohttp's own decompression is off, so a
# bomb is cut at the body limit and a broken stream is a 415 instead of a parser error.
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MESSAGE_LIMIT = 300  # characters of a refusal's text that are logged

log = logging.getLogger("workbench.stack")

Gauges = Callable[[], Mapping[str, float | int]]
GAUGES_KEY = web.AppKey[Gauges]("gauges")
MAX_BODY_KEY = web.AppKey("max_body", int)


class ApiError(Exception):
    """A request the server refuses; becomes `{"success": false, "error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str) -> web.Response:
    # An error text may quote an exception or a request; it never carries this process's keys.
    return web.json_response({"success": False, "error": redact(message)}, status=status)


def _refused(method: str, path: str, status: int, message: str) -> None:
    """The one log line of a refused request (no traceback: the client's fault, not ours)."""
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "%s %.100r -> %d %.*s", method, path, status, MESSAGE_LIMIT, message)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turns every failure into JSON so a load driver can classify it; never kills the server."""
    try:
        return await handler(request)
    except ApiError as e:
        status, message = e.status, e.message
    except web.HTTPException as e:
        if e.status < 400:  # redirects and the like pass through
            raise
        status, message = e.status, _http_message(e)
    except asyncio.CancelledError:
        raise  # the client went away or the server stops
    except Exception:
        log.exception("unhandled error in %s %.100r", request.method, request.path)
        return error_response(500, "internal server error")
    _refused(request.method, request.path, status, message)
    return error_response(status, message)


def _http_message(e: web.HTTPException) -> str:
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return "request body too large"
    if isinstance(e, web.HTTPNotFound):
        return "not found"
    if isinstance(e, web.HTTPMethodNotAllowed):
        return f"method not allowed; allowed: {', '.join(sorted(e.allowed_methods))}"
    return e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason


# --- reading request bodies: the one way every route reads its input ---------------------------


def expect_content(request: web.Request, media_type: str, encoded: bool = True) -> None:
    """415 unless the declared Content-Type is `media_type` (`application/json` also takes
    `application/*+json`; a body with no Content-Type passes), or the body is content-encoded
    when the route cannot decode (`encoded=False`)."""
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    kind = request.content_type
    is_json = kind.startswith("application/") and kind.endswith("+json")
    if (
        declared is not None
        and kind != media_type
        and not (media_type.endswith("/json") and is_json)
    ):
        raise ApiError(415, f"Content-Type {kind[:60]!r} is not {media_type}; send {media_type}")
    if not encoded and _encoding(request) not in ("", "identity"):
        raise ApiError(415, "a content-encoded body is not accepted here; send it uncompressed")


def _encoding(request: web.Request) -> str:
    return ",".join(request.headers.getall(hdrs.CONTENT_ENCODING, [])).strip().lower()


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Maps what can go wrong while a body streams in to a 4xx: a broken chunked stream or
    length, an over-long line, a client that went away or was dropped for being too slow."""
    try:
        yield
    except LineTooLong as e:
        raise ApiError(413, f"a line of the body is too long: {e.message}") from None
    except (RequestPayloadError, HttpProcessingError) as e:
        raise ApiError(400, f"malformed request body: {_one_line(e)}") from None
    except ConnectionError:
        raise ApiError(408, "the client stopped sending its request") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(getattr(e, "message", "") or e).split())[:MESSAGE_LIMIT]


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The whole body, decoded per its Content-Encoding (gzip, deflate or none). 413 when it is,
    or would decompress to, more than `limit` bytes (default: the app's `max_body`); 415 for an
    encoding it cannot read or a broken compressed stream; 400 for a broken transfer."""
    limit = request.app.get(MAX_BODY_KEY, DEFAULT_MAX_BODY) if limit is None else limit
    decoder = _decoder(request)
    if (request.content_length or 0) > limit:
        raise ApiError(413, f"request body too large: more than {limit} bytes")
    out = bytearray()
    with reading():
        async for chunk in request.content.iter_any():
            out += _decode(decoder, chunk, limit - len(out)) if decoder else chunk
            if len(out) > limit:
                raise ApiError(413, f"request body too large: more than {limit} bytes")
    if decoder is not None and (not decoder.eof or decoder.unused_data):
        raise ApiError(415, f"the {_encoding(request)} body is truncated or has trailing data")
    return bytes(out)


def _decoder(request: web.Request) -> Any:
    coding = _encoding(request)
    if coding in ("", "identity"):
        return None
    if coding not in DECODERS:
        raise ApiError(415, f"Content-Encoding {coding[:40]!r} is not supported; use gzip")
    return zlib.decompressobj(DECODERS[coding])


def _decode(decoder: Any, chunk: bytes, room: int) -> bytes:
    """At most `room` + 1 bytes of output (one more tells the caller it is over the limit)."""
    if decoder.eof:
        raise ApiError(415, "data after the end of the compressed body")
    try:
        return decoder.decompress(chunk, room + 1)
    except zlib.error:
        raise ApiError(415, "the body is not valid for its Content-Encoding") from None


def parse_json(raw: bytes, charset: str | None = None) -> Any:
    """JSON from bytes in `charset` (default UTF-8), else 400 (415 for an unknown charset).
    Refuses what JSON parsers disagree on: NaN/Infinity and lone surrogate escapes (`\udfff`
    parses, then breaks whatever encodes it: a URL, a signature, a log)."""
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError:
        raise ApiError(415, f"charset {str(charset)[:40]!r} is unknown; send UTF-8") from None
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body is not valid {e.encoding} text (byte {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
        if "\\u" in text:  # escapes are the only way to a lone surrogate in decoded text
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "body has a lone surrogate escape; send valid Unicode") from None
    except RecursionError:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def json_body(request: web.Request, schema: Mapping[str, type | tuple[type, ...]]) -> dict:
    """The JSON object body, with each field of `schema` present and of its type (else 400)."""
    expect_content(request, "application/json")
    body = parse_json(await read_body(request), request.charset)
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
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=max_body,
        handler_args={"auto_decompress": False},  # `read_body` decodes, within the body limit
    )
    app[GAUGES_KEY] = gauges or (lambda: {})
    app[MAX_BODY_KEY] = max_body
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


async def serve(
    app: web.Application, host: str = HOST, port: int = 0, timeouts: Mapping[str, float] = TIMEOUTS
) -> None:
    """Serves `app` until SIGTERM/SIGINT or the parent's death; port 0 lets the OS choose.

    The `READY` line is printed after the app's startup hooks ran and the socket listens, so a
    parent that waits for it can send requests at once. A signal during a slow startup (say,
    an RPC node that does not answer) abandons the startup and exits cleanly too.
    """
    if host != HOST:
        raise WorkbenchError("host", f"{host!r} is not loopback", f"stack servers bind {HOST}")
    timeouts = {**TIMEOUTS, **timeouts}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = _Runner(
        app,
        access_log=None,  # per-request logging would distort load runs
        keepalive_timeout=timeouts["idle_timeout_s"],  # aiohttp's timer also covers new ones
        lingering_time=LINGER_S,
    )
    watchdog = asyncio.create_task(watch_parent())
    stopping = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(_listen(runner, host, port))
    sweeper = None
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            bound = starting.result()  # a failed startup raises here
            assert runner.server is not None  # set up by _listen
            sweeper = asyncio.create_task(sweep_slow_clients(runner.server, timeouts))
            print(f"{READY_PREFIX}{json.dumps({'port': bound})}", flush=True)
            await stopping
    finally:
        tasks = [t for t in (starting, stopping, watchdog, sweeper) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()  # runs the cleanup hooks even after a failed or abandoned startup


class PatientHandler(RequestHandler):
    """aiohttp's connection protocol, plus two things it lacks: the requests it cannot parse (a
    broken request line, huge headers) answered as JSON with one log line instead of a plain
    text and a traceback, and whether the client owes bytes and since when, for
    `sweep_slow_clients`."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.heard = self.began = self._loop.time()
        self.partial = False  # until its first byte, aiohttp's keep-alive timer watches it

    def data_received(self, data: bytes) -> None:
        if data:
            now = self._loop.time()
            if not self.owes():
                self.began = now  # the first bytes of a new request
            self.heard = now
        super().data_received(data)
        if data:
            self.partial = self._idle()  # bytes came but no request is complete yet

    def _idle(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def owes(self) -> bool:
        """Whether the client still has to send part of a request."""
        request = self._current_request
        if request is not None:
            return not request.content.is_eof()
        return self.partial and self._idle()

    def overdue(self, now: float, timeouts: Mapping[str, float]) -> str | None:
        """Why this connection should be dropped now, or None."""
        if self.transport is None or not self.owes():
            return None
        if self._reading_paused or self._buffer_paused:  # our side is the slow one
            self.heard = self.began = now
            return None
        if now - self.heard > timeouts["read_timeout_s"]:
            return f"silent for {now - self.heard:.1f} s mid-request"
        if now - self.began > timeouts["request_timeout_s"]:
            return f"request still incomplete after {now - self.began:.1f} s"
        return None

    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer began: the connection is broken
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong):
            status = 413
        if status >= 500:
            log.error("error outside any handler", exc_info=exc)
            text = "internal server error"
        else:  # a request aiohttp could not parse: it has no method or path to log
            text = _one_line(exc) if exc else message or "bad request"
            log.info("refused an unparsable request -> %d %.*s", status, MESSAGE_LIMIT, text)
        response = error_response(status, text)
        response.force_close()  # as aiohttp does: the stream may be out of step
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp logs a client's broken stream (say, a body cut short while it drains it) with a
        # traceback; one line says as much. Bugs in handlers are logged by `error_middleware`.
        exc = kwargs.get("exc_info")
        text = _one_line(exc) if exc else str(args[0] % args[1:] if len(args) > 1 else args[0])
        log.info("connection dropped: %s", text)


class _PatientServer(web.Server):
    def __call__(self) -> RequestHandler:
        return PatientHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections are `PatientHandler`s."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # runs the app's startup hooks
        return _PatientServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


async def sweep_slow_clients(server: web.Server, timeouts: Mapping[str, float]) -> None:
    """Every second, closes the connections whose client is too slow (see the docstring).
    A late tick means this loop was blocked: bytes may be waiting unread, so it judges nobody."""
    loop = asyncio.get_running_loop()
    due = loop.time() + SWEEP_INTERVAL_S
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        late = now - due > SWEEP_INTERVAL_S
        due = now + SWEEP_INTERVAL_S
        if late:
            continue
        for handler in server.connections:
            reason = handler.overdue(now, timeouts) if isinstance(handler, PatientHandler) else None
            if reason:
                log.info("dropped a slow client: %s", reason)
                handler.force_close()


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    await runner.setup()
    sys.setrecursionlimit(RECURSION_LIMIT)  # after every import and startup hook: see above
    site = web.TCPSite(runner, host, port, shutdown_timeout=2.0)
    await site.start()
    return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def run(build_app: Callable[[dict[str, Any]], web.Application]) -> None:
    """Entry point of a component's `__main__`: logging to stderr, the app built from the
    component config, served on its `port` (0: any free one), exit 0 on a signal. The config's
    `read_timeout_s`, `request_timeout_s` and `idle_timeout_s` override the defaults in
    `TIMEOUTS`."""
    logging.basicConfig(
        level=os.environ.get("WORKBENCH_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact_logs()  # log lines and tracebacks never carry the keys in WORKBENCH_SECRETS
    config = component_config()
    timeouts = {k: float(config.get(k, v)) for k, v in TIMEOUTS.items()}
    asyncio.run(serve(build_app(config), HOST, int(config.get("port", 0)), timeouts))
