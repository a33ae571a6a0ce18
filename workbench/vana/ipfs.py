"""The two IPFS providers of Vana's SDK, as the flow's client speaks them.

- `kubo`: a Kubo-compatible RPC API, `POST <storage_url>/api/v0/add` (multipart `file`) ->
  `{"Hash"}`, objects served by a gateway at `<gateway_url>/<cid>` (default
  `<storage_url>/ipfs`, as the embedded storage serves them). The SDK's `IpfsStorage`.
- `pinata`: `POST <storage_url>/pinning/pinFileToIPFS` (multipart `file` and `pinataMetadata`)
  with `Authorization: Bearer <JWT>` -> `{"IpfsHash"}`; the JWT comes from the environment
  variable `token_env` names, read at upload time and never stored. The SDK's `PinataStorage`.

Both of the SDK's providers answer `ipfs://<cid>` as the file's URL, and that is what the flow
registers on chain (the SDK's IpfsStorage.upload returns it, read from its published build; the
personal server resolves it through a gateway). A provider description holds no secret, so
`to_json` can go into `config.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp

from workbench.errors import WorkbenchError

KINDS = ("kubo", "pinata")
PINATA_API = "https://api.pinata.cloud"
PINATA_GATEWAY = "https://gateway.pinata.cloud/ipfs"
DEFAULT_TOKEN_ENV = "PINATA_JWT"


@dataclass(frozen=True)
class IpfsProvider:
    kind: str
    storage_url: str  # kubo: the RPC API's base; pinata: its API base
    gateway_url: str  # `<gateway_url>/<cid>` serves an object
    token_env: str | None = None  # pinata: the variable holding the JWT

    @classmethod
    def kubo(cls, storage_url: str, gateway_url: str | None = None) -> IpfsProvider:
        base = storage_url.rstrip("/")
        return cls("kubo", base, (gateway_url or f"{base}/ipfs").rstrip("/"))

    @classmethod
    def pinata(
        cls,
        storage_url: str = PINATA_API,
        gateway_url: str | None = None,
        token_env: str = DEFAULT_TOKEN_ENV,
    ) -> IpfsProvider:
        return cls(
            "pinata",
            storage_url.rstrip("/"),
            (gateway_url or PINATA_GATEWAY).rstrip("/"),
            token_env,
        )

    @property
    def add_url(self) -> str:
        path = "/api/v0/add" if self.kind == "kubo" else "/pinning/pinFileToIPFS"
        return self.storage_url + path

    def token(self) -> str | None:
        """The JWT from the environment (pinata); WorkbenchError naming the variable if unset."""
        if self.kind != "pinata":
            return None
        value = os.environ.get(self.token_env or "", "").strip()
        if not value:
            raise WorkbenchError(
                str(self.token_env),
                "not set: Pinata uploads need its JWT",
                f"export {self.token_env}=<your Pinata JWT>; it is read from the environment only",
            )
        return value

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def form(self, data: bytes, name: str) -> aiohttp.FormData:
        """A fresh multipart body (aiohttp sends a FormData only once)."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        if self.kind == "pinata":  # as the SDK's PinataStorage names its uploads
            meta = {"name": name, "keyvalues": {"uploadedBy": "vana-sdk"}}
            form.add_field("pinataMetadata", json.dumps(meta))
        return form

    def cid(self, answer: Any) -> str:
        """The CID in an upload answer; ValueError if the answer has none."""
        key = "Hash" if self.kind == "kubo" else "IpfsHash"
        cid = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(cid, str) or not cid:
            raise ValueError(f"{self.kind} upload answer has no {key}: {str(answer)[:200]}")
        return cid

    @staticmethod
    def registered_url(cid: str) -> str:
        """The URL the SDK's providers answer for an upload, and so the one put on chain."""
        return f"ipfs://{cid}"

    def gateway(self, cid: str) -> str:
        return f"{self.gateway_url}/{cid}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "storage_url": self.storage_url,
            "gateway_url": self.gateway_url,
            "token_env": self.token_env,
        }
