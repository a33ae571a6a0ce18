"""Inference backends of the personal server, behind one method:

    async infer(prompt: str, files: list[bytes], params: dict) -> dict

`files` are the user's decrypted files; `params` are the grant's `parameters` (e.g.
`response_format`). A backend raises InferenceError when it cannot produce a result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from typing import Any, Protocol

import aiohttp

from workbench.errors import WorkbenchError
from workbench.vana.retry import SERVER_CALLS, never_sent, retrying

SUMMARY_KEYS = 5


class InferenceError(Exception):
    """The backend could not produce a result (bad answer, HTTP error, timeout)."""


class Backend(Protocol):
    async def infer(self, prompt: str, files: list[bytes], params: dict) -> dict: ...


def describe_file(data: bytes) -> dict[str, Any]:
    """Facts computed from a plaintext, which only a server that really decrypted it can know."""
    facts: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    facts["json_keys"] = len(doc) if isinstance(doc, dict) else None
    facts["keys"] = sorted(doc)[:SUMMARY_KEYS] if isinstance(doc, dict) else []
    return facts


class SimulatedLLM:
    """A SIMULATION of a remote LLM: offline there is no model to call, so this stands in for one.

    It sleeps a latency drawn uniformly from `latency_s` (the remote call's time) and answers a
    JSON result computed from the decrypted files: byte counts, sha256, JSON key counts and a
    deterministic summary. Only the latency is made up; the result proves the data was read.
    """

    def __init__(
        self, latency_s: tuple[float, float] = (0.0, 0.0), rng: random.Random | None = None
    ):
        lo, hi = float(latency_s[0]), float(latency_s[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_s must be 0 <= lo <= hi, got {latency_s}")
        self.latency_s, self.rng = (lo, hi), rng or random.Random()

    async def infer(self, prompt: str, files: list[bytes], params: dict) -> dict:
        await asyncio.sleep(self.rng.uniform(*self.latency_s))
        facts = [describe_file(f) for f in files]
        return {
            "model": "simulated",
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "files": facts,
            "summary": _summary(facts),
        }


def _summary(facts: list[dict[str, Any]]) -> str:
    parts = []
    for f in facts:
        shape = f"JSON with {f['json_keys']} keys" if f["json_keys"] is not None else "not JSON"
        keys = f" ({', '.join(f['keys'])})" if f["keys"] else ""
        parts.append(f"{f['bytes']} bytes, {shape}{keys}")
    return f"{len(facts)} file(s): " + "; ".join(parts)


class OpenAICompatibleLLM:
    """A real model behind an OpenAI-compatible `POST /v1/chat/completions` endpoint.

    `base_url` is the server root or its `/v1` (both work). The API key is read from the
    environment variable named `api_key_env` (none is sent if it is unset, as local servers allow).
    The prompt and the files' text go in one user message; `params["response_format"]` is passed
    through, and a `json_object` answer is parsed into the result's `output`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 120.0,
    ):
        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.session, self.timeout = session, aiohttp.ClientTimeout(total=timeout_s)

    async def infer(self, prompt: str, files: list[bytes], params: dict) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": _user_message(prompt, files)}],
        }
        if params.get("response_format"):
            body["response_format"] = params["response_format"]
        answer = await self._post(body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InferenceError(f"unexpected answer shape from {self.url}") from None
        return {
            "model": answer.get("model", self.model),
            "output": _output(content, params),
            "usage": answer.get("usage"),
        }

    async def _post(self, body: dict) -> dict:
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        session = self.session or aiohttp.ClientSession()

        async def post(_attempt: int) -> dict:
            async with session.post(
                self.url, json=body, headers=headers, timeout=self.timeout
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise InferenceError(f"{self.url} answered {resp.status}: {text}")
                return await resp.json(content_type=None)

        try:  # a model call may be billed: only one that never reached the server is repeated
            return await retrying(post, SERVER_CALLS, never_sent)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as e:
            raise InferenceError(f"{self.url}: {type(e).__name__}: {e}") from None
        finally:
            if session is not self.session:
                await session.close()


def _user_message(prompt: str, files: list[bytes]) -> str:
    texts = [f.decode("utf-8", errors="replace") for f in files]
    return "\n\n".join([prompt, *(f"File {i + 1}:\n{t}" for i, t in enumerate(texts))])


def _output(content: str, params: dict) -> Any:
    wants_json = (params.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    if not wants_json:
        return content
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        raise InferenceError("model answer is not the JSON the response_format asked for") from None


class FaultyBackend:
    """Wraps a backend to inject faults (`faults` config: `fail_rate`, `timeout_rate`), one draw
    per call: a failure raises InferenceError at once; a timeout hangs until the caller's own
    deadline cancels it, as a stuck remote model would."""

    def __init__(self, backend: Backend, faults: dict, rng: random.Random | None = None):
        self.backend, self.rng = backend, rng or random.Random()
        self.fail_rate = _rate(faults, "fail_rate")
        self.timeout_rate = _rate(faults, "timeout_rate")
        if self.fail_rate + self.timeout_rate > 1:
            raise WorkbenchError(
                "faults.inference", "fail_rate + timeout_rate exceeds 1", "lower them"
            )
        self.failures = self.timeouts = 0

    async def infer(self, prompt: str, files: list[bytes], params: dict) -> dict:
        draw = self.rng.random()
        if draw < self.fail_rate:
            self.failures += 1
            raise InferenceError("injected inference failure")
        if draw < self.fail_rate + self.timeout_rate:
            self.timeouts += 1
            await asyncio.Event().wait()  # never set: only the caller's timeout ends this
        return await self.backend.infer(prompt, files, params)


def _rate(config: dict, name: str) -> float:
    value = config.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise WorkbenchError(f"faults.inference.{name}", f"{value!r} is not in 0..1", "use 0..1")
    return float(value)


def make_backend(
    config: dict, session: aiohttp.ClientSession | None = None, rng: random.Random | None = None
) -> Backend:
    """The backend a personal server's `inference` config names (`backend`: simulated | openai)."""
    kind = config.get("backend", "simulated")
    if kind == "simulated":
        return SimulatedLLM(tuple(config.get("latency_s", (0.0, 0.0))), rng)
    if kind == "openai":
        openai = config.get("openai") or {}
        return OpenAICompatibleLLM(
            openai.get("base_url", "https://api.openai.com/v1"),
            openai.get("model", "gpt-4o-mini"),
            openai.get("api_key_env", "OPENAI_API_KEY"),
            session,
            float(openai.get("timeout_s", 120.0)),
        )
    raise WorkbenchError(
        "inference.backend", f"unknown backend {kind!r}", "use simulated or openai"
    )
