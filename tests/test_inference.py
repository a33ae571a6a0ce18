"""Inference backends: the simulation computes from the data; the OpenAI-compatible client
talks the chat-completions protocol (against a local test double of the remote service)."""

from __future__ import annotations

import hashlib
import json
import random

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from workbench.errors import WorkbenchError
from workbench.stack import inference
from workbench.stack.inference import (
    InferenceError,
    OpenAICompatibleLLM,
    SimulatedLLM,
    make_backend,
)

USER_FILE = json.dumps({"name": "alice", "age": 31, "city": "Lisbon"}).encode()
JSON_FORMAT = {"response_format": {"type": "json_object"}}


async def test_simulated_result_is_computed_from_the_files(monkeypatch):
    slept = []

    async def fake_sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(inference.asyncio, "sleep", fake_sleep)
    llm = SimulatedLLM((0.5, 1.5), random.Random(7))
    result = await llm.infer("Summarise", [USER_FILE, b"\x00not json"], JSON_FORMAT)

    assert 0.5 <= slept[0] <= 1.5
    first, second = result["files"]
    assert first["sha256"] == hashlib.sha256(USER_FILE).hexdigest()
    assert first["bytes"] == len(USER_FILE) and first["json_keys"] == 3
    assert first["keys"] == ["age", "city", "name"]
    assert second["json_keys"] is None
    assert result["summary"].startswith("2 file(s): ")
    again = await SimulatedLLM((0.5, 1.5), random.Random(7)).infer(
        "Summarise", [USER_FILE, b"\x00not json"], {}
    )
    assert again == result  # deterministic for the same data


def test_simulated_rejects_bad_latency_range():
    with pytest.raises(ValueError):
        SimulatedLLM((2.0, 1.0))


@pytest.fixture
async def fake_openai():
    """A test double of a remote OpenAI-compatible server; `state` steers and records it."""
    state = {"requests": [], "status": 200, "content": json.dumps({"summary": "a person"})}

    async def completions(request: web.Request) -> web.Response:
        state["requests"].append({"headers": dict(request.headers), "body": await request.json()})
        if state["status"] != 200:
            return web.json_response({"error": {"message": "boom"}}, status=state["status"])
        return web.json_response(
            {
                "model": "fake-model-1",
                "choices": [{"message": {"role": "assistant", "content": state["content"]}}],
                "usage": {"total_tokens": 42},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["url"] = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


async def test_openai_backend_sends_prompt_files_and_format(fake_openai, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    async with aiohttp.ClientSession() as session:
        llm = OpenAICompatibleLLM(fake_openai["url"], "fake-model", "TEST_LLM_KEY", session)
        result = await llm.infer("Describe the user", [USER_FILE], JSON_FORMAT)

    assert result["output"] == {"summary": "a person"}
    assert result["model"] == "fake-model-1" and result["usage"] == {"total_tokens": 42}
    (sent,) = fake_openai["requests"]
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert sent["body"]["model"] == "fake-model"
    assert sent["body"]["response_format"] == {"type": "json_object"}
    content = sent["body"]["messages"][0]["content"]
    assert "Describe the user" in content and '"Lisbon"' in content


async def test_openai_backend_accepts_v1_base_url_and_text_answers(fake_openai, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    fake_openai["content"] = "plain words"
    llm = OpenAICompatibleLLM(fake_openai["url"] + "/v1/", "m", "NO_SUCH_KEY")  # own session
    result = await llm.infer("p", [], {})
    assert result["output"] == "plain words"
    assert "Authorization" not in fake_openai["requests"][0]["headers"]
    assert "response_format" not in fake_openai["requests"][0]["body"]


async def test_openai_backend_errors_are_inference_errors(fake_openai):
    llm = OpenAICompatibleLLM(fake_openai["url"], "m")
    fake_openai["status"] = 500
    with pytest.raises(InferenceError, match="500"):
        await llm.infer("p", [USER_FILE], JSON_FORMAT)
    fake_openai["status"], fake_openai["content"] = 200, "not json"
    with pytest.raises(InferenceError, match="JSON"):
        await llm.infer("p", [USER_FILE], JSON_FORMAT)
    unreachable = OpenAICompatibleLLM("http://127.0.0.1:9", "m")
    with pytest.raises(InferenceError):
        await unreachable.infer("p", [], {})


def test_make_backend_from_config():
    assert isinstance(make_backend({"latency_s": [0, 0]}), SimulatedLLM)
    openai = make_backend({"backend": "openai", "openai": {"base_url": "http://x", "model": "m"}})
    assert isinstance(openai, OpenAICompatibleLLM) and openai.url == "http://x/v1/chat/completions"
    with pytest.raises(WorkbenchError, match="inference.backend"):
        make_backend({"backend": "magic"})
