"""The common server base: every bad request is 4xx JSON naming the problem, bugs are 500 JSON,
and the server keeps serving. (In process; the storage tests cover a real child process.)"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from workbench.errors import WorkbenchError
from workbench.stack import server

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client():
    async def echo(request: web.Request) -> web.Response:
        body = await server.json_body(request, {"name": str, "count": int})
        return web.json_response({"name": body["name"], "count": body["count"]})

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = server.make_app(lambda: {"answers": 42}, max_body=1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_health_and_metrics(client):
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and isinstance(health["timestamp"], int)
    assert await (await client.get("/metrics")).json() == {"answers": 42}


@pytest.mark.parametrize(
    "body, status, names",
    [
        (b"{not json", 400, "JSON"),
        (b"", 400, "JSON"),
        (b"[1, 2]", 400, "object"),
        (json.dumps({"count": 1}).encode(), 400, "'name'"),
        (json.dumps({"name": "a", "count": "1"}).encode(), 400, "'count'"),
        (json.dumps({"name": "a", "count": True}).encode(), 400, "'count'"),
        (json.dumps({"name": "a" * 2000, "count": 1}).encode(), 413, "too large"),
    ],
)
async def test_bad_bodies_are_4xx_json_naming_the_problem(client, body, status, names):
    resp = await client.post("/echo", data=body, headers=JSON)
    answer = await resp.json()
    assert resp.status == status
    assert answer["success"] is False and names in answer["error"]
    ok = await client.post("/echo", json={"name": "a", "count": 1})
    assert ok.status == 200 and await ok.json() == {"name": "a", "count": 1}


GOOD = json.dumps({"name": "a", "count": 1}).encode()


@pytest.mark.parametrize(
    "body, headers, status, names",
    [
        (gzip.compress(GOOD), {"Content-Encoding": "gzip"}, 200, ""),
        (zlib.compress(GOOD), {"Content-Encoding": "deflate"}, 200, ""),
        (GOOD, {"Content-Encoding": "identity"}, 200, ""),
        (GOOD, {"Content-Type": "application/vnd.x+json"}, 200, ""),
        (b"not gzip", {"Content-Encoding": "gzip"}, 415, "Content-Encoding"),
        (gzip.compress(GOOD)[:-8], {"Content-Encoding": "gzip"}, 415, "truncated"),
        (gzip.compress(GOOD) + b"tail", {"Content-Encoding": "gzip"}, 415, "trailing"),
        (GOOD, {"Content-Encoding": "br"}, 415, "'br'"),
        (GOOD, {"Content-Encoding": "gzip, gzip"}, 415, "not supported"),
        (gzip.compress(b" " * 5000), {"Content-Encoding": "gzip"}, 413, "more than 1024 bytes"),
        (GOOD, {"Content-Type": "text/plain"}, 415, "application/json"),
        (GOOD, {"Content-Type": "multipart/form-data; boundary=x"}, 415, "application/json"),
        (GOOD, {"Content-Type": "application/json; charset=klingon"}, 415, "klingon"),
        (b'{"name": "\xff"}', {}, 400, "utf-8"),
        (rb'{"name": "\udfff", "count": 1}', {}, 400, "surrogate"),
        (b'{"name": "a", "count": NaN}', {}, 400, "NaN"),
    ],
)
async def test_encodings_and_media_types(client, body, headers, status, names):
    """One reading layer: bodies decoded per Content-Encoding within the limit, and every
    encoding, media type or text it cannot read refused as 4xx JSON naming the problem."""
    resp = await client.post("/echo", data=body, headers={**JSON, **headers})
    answer = await resp.json()
    assert resp.status == status, answer
    if status == 200:
        assert answer == {"name": "a", "count": 1}
    else:
        assert answer["success"] is False and names in answer["error"], answer


async def test_a_valid_surrogate_pair_is_text_not_an_error(client):
    body = rb'{"name": "\ud83d\ude00", "count": 1}'  # one emoji, escaped as JSON allows
    resp = await client.post("/echo", data=body, headers=JSON)
    assert resp.status == 200 and (await resp.json())["name"] == "\U0001f600"


async def test_routing_errors_and_bugs_are_json(client, caplog):
    resp = await client.get("/nowhere")
    assert resp.status == 404 and (await resp.json())["success"] is False
    resp = await client.get("/echo")
    assert resp.status == 405 and "POST" in (await resp.json())["error"]
    resp = await client.get("/boom")
    assert resp.status == 500 and (await resp.json()) == {
        "success": False,
        "error": "internal server error",
    }
    assert "a bug" in caplog.text  # logged with its traceback, not sent to the client
    assert (await client.get("/health")).status == 200


def test_int_field_accepts_decimal_strings_only():
    assert server.int_field({"n": "12"}, "n") == 12
    assert server.int_field({"n": 3}, "n", minimum=1) == 3
    for bad in ({"n": "1.5"}, {"n": -1}, {"n": 2.0}, {}):
        with pytest.raises(server.ApiError) as err:
            server.int_field(bad, "n")
        assert err.value.status == 400 and "'n'" in err.value.message


def test_config_and_secrets_from_environment(monkeypatch):
    monkeypatch.setenv(server.CONFIG_ENV, '{"port": 5}')
    monkeypatch.setenv(server.SECRETS_ENV, '{"server_seed": "abcd"}')
    assert server.component_config() == {"port": 5}
    assert server.secrets() == {"server_seed": "abcd"}
    monkeypatch.setenv(server.SECRETS_ENV, "not-json-0xdeadbeef")
    with pytest.raises(WorkbenchError) as err:
        server.secrets()
    assert "deadbeef" not in str(err.value)  # a malformed secret is never echoed
    monkeypatch.delenv(server.CONFIG_ENV)
    assert server.component_config() == {}
