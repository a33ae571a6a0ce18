"""Where a run points: the endpoints and contract addresses of a local stack or a remote deployment.

A `Target` carries no secrets, only the *name* of the environment variable that holds the funder's
key, so it can be written into `config.json` and reports as is.

Remote targets are YAML files (`params/targets/<name>.yaml`, or any path): chain id, RPC URLs,
the four contract addresses, the app's API server, the personal server (its base URL may carry a
path, as Vana's `https://test.server.vana.com/api/v1`), storage (one of the SDK's IPFS providers,
see `workbench.vana.ipfs`) and the grantee id. `load_target` checks the file's shape (every mistake names the file, the key and the fix);
`workbench.driver.preflight` then checks that each endpoint answers as the file says.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from eth_utils import is_checksum_address, to_checksum_address

from workbench import params
from workbench.errors import WorkbenchError
from workbench.secrets import HEX64, looks_like_mnemonic
from workbench.vana.contracts import CONTRACT_NAMES
from workbench.vana.ipfs import DEFAULT_TOKEN_ENV, KINDS, IpfsProvider

# The env var a local target's funder key sits in (anvil dev account 0; public knowledge).
LOCAL_FUNDER_KEY_ENV = "WORKBENCH_FUNDER_KEY"
# Storage kinds a target may name: the SDK's IPFS providers (workbench.vana.ipfs). A new kind
# needs a client there, a check in preflight.py and a deleter in cleanup.py.
STORAGE_KINDS = KINDS
# A value that starts with this is a slot the user has to fill; preflight refuses to go on.
PLACEHOLDER = "REPLACE_ME"
ZERO_ADDRESS = "0x" + "0" * 40


@dataclass(frozen=True)
class Endpoints:
    """The URLs and on-chain addresses a flow needs; identical in shape for local and remote."""

    rpc_url: str
    api_url: str
    personal_server_url: str
    storage_url: str
    chain_id: int
    contracts: dict[str, str]
    grantee_id: int

    def __post_init__(self) -> None:
        missing = [n for n in CONTRACT_NAMES if n not in self.contracts]
        if missing:
            raise WorkbenchError(
                "contracts", f"missing addresses for {missing}", f"give all of {CONTRACT_NAMES}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "rpc_url": self.rpc_url,
            "api_url": self.api_url,
            "personal_server_url": self.personal_server_url,
            "storage_url": self.storage_url,
            "chain_id": self.chain_id,
            "contracts": {n: self.contracts[n] for n in CONTRACT_NAMES},
            "grantee_id": self.grantee_id,
        }


@dataclass
class Target:
    """A system under test: endpoints plus where keys come from and, when local, its processes."""

    kind: Literal["local", "remote"]
    endpoints: Endpoints
    profile: dict[str, Any]
    funder_key_env: str  # the environment variable a run reads the funder's key from
    pids: dict[str, int] = field(default_factory=dict)  # component -> pid, local targets only
    # Local only: the key used when `funder_key_env` is unset (anvil's dev account 0, public).
    funder_key: str | None = field(default=None, repr=False)
    # Remote only: the file it came from, every RPC URL (endpoints.rpc_url is the first),
    # the storage kind and the keys still holding a placeholder ({key: the file's hint}).
    name: str = "local"
    source: str | None = None
    rpc_urls: tuple[str, ...] = ()
    storage_kind: str = "kubo"
    placeholders: dict[str, str] = field(default_factory=dict)
    gateway_url: str = ""  # "" = the provider's default (kubo: <storage_url>/ipfs)
    storage_token_env: str = DEFAULT_TOKEN_ENV  # pinata: the variable holding its JWT

    @property
    def ipfs(self) -> IpfsProvider:
        """The storage the flow uploads to and how (no secret: the JWT stays in the env)."""
        url, gateway = self.endpoints.storage_url, self.gateway_url or None
        if self.storage_kind == "pinata":
            return IpfsProvider.pinata(url, gateway, self.storage_token_env)
        return IpfsProvider.kubo(url, gateway)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "endpoints": self.endpoints.to_json(),
            "rpc_urls": list(self.rpc_urls or (self.endpoints.rpc_url,)),
            "storage_kind": self.storage_kind,
            "storage": self.ipfs.to_json(),
            "profile": self.profile.get("name"),
            "funder_key_env": self.funder_key_env,
            "pids": dict(self.pids),
        }


# --------------------------------------------------------------------------- target files

URL_KEYS = ("api_url", "personal_server_url", "storage_url")
REQUIRED_KEYS = ("chain_id", "rpc_urls", "contracts", *URL_KEYS, "grantee_id")
OPTIONAL_KEYS = (
    "name",
    "description",
    "storage_kind",
    "gateway_url",
    "storage_token_env",
    "funder_key_env",
)
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_SECRET_WORDS = ("private", "secret", "mnemonic", "seed", "password", "token", "key")


def load_target(name_or_path: str | Path) -> Target:
    """The remote target in `params/targets/<name>.yaml` or at a path, its shape checked.

    Raises WorkbenchError naming the file, the key and the fix for a missing, unknown or
    malformed key, and refuses a file holding anything key-shaped (keys live in the
    environment: the file names the variable, e.g. `funder_key_env: WORKBENCH_FUNDER_KEY`).
    Placeholders (`REPLACE_ME…`) pass here and are reported by preflight.
    """
    path, shown, doc = params.load(name_or_path, "targets")
    _refuse_secrets(doc, shown)
    _check_keys(doc, shown)
    placeholders = {k: v for k, v in _flat(doc) if _is_placeholder(v)}
    rpc_urls = _rpc_urls(doc["rpc_urls"], shown, placeholders)
    return Target(
        kind="remote",
        endpoints=Endpoints(
            rpc_url=rpc_urls[0],
            **{k: _url(doc[k], f"{shown}: {k}", k in placeholders) for k in URL_KEYS},
            chain_id=_int(doc["chain_id"], f"{shown}: chain_id", minimum=1),
            contracts=_contracts(doc["contracts"], shown),
            grantee_id=_grantee_id(doc["grantee_id"], shown),
        ),
        profile={},
        funder_key_env=_env_name(
            doc.get("funder_key_env", LOCAL_FUNDER_KEY_ENV), shown, "funder_key_env"
        ),
        name=str(doc.get("name") or path.stem),
        source=shown,
        rpc_urls=tuple(rpc_urls),
        storage_kind=_storage_kind(doc.get("storage_kind", "kubo"), shown),
        placeholders=placeholders,
        gateway_url=_gateway_url(doc.get("gateway_url"), shown, "gateway_url" in placeholders),
        storage_token_env=_env_name(
            doc.get("storage_token_env", DEFAULT_TOKEN_ENV), shown, "storage_token_env"
        ),
    )


def _flat(doc: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) pairs; list items as `key[i]`."""
    if isinstance(doc, dict):
        return [
            pair for k, v in doc.items() for pair in _flat(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(doc, list):
        return [pair for i, v in enumerate(doc) for pair in _flat(v, f"{prefix}[{i}]")]
    return [(prefix, doc)]


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith(PLACEHOLDER)


def _refuse_secrets(doc: dict[str, Any], shown: str) -> None:
    """A target file gets committed and shared: anything key-shaped in it is refused."""
    for key, value in _flat(doc):
        text = str(value) if value is not None else ""
        leaf = key.rsplit(".", 1)[-1].lower()
        named_secret = any(w in leaf for w in _SECRET_WORDS) and not leaf.endswith("_env")
        if HEX64.search(text) or looks_like_mnemonic(text) or (named_secret and text):
            raise WorkbenchError(
                f"{shown}: {key}",
                "looks like a private key, seed or secret; target files must never hold one",
                "delete it from the file (and rotate it if the file was shared); put the key in "
                f"an environment variable and name that variable: "
                f"funder_key_env: {LOCAL_FUNDER_KEY_ENV}",
            )


def _check_keys(doc: dict[str, Any], shown: str) -> None:
    known = (*REQUIRED_KEYS, *OPTIONAL_KEYS)
    for key in doc:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise WorkbenchError(
                f"{shown}: {key}", "unknown key", f"{hint}known keys: {', '.join(known)}"
            )
    for key in REQUIRED_KEYS:
        if doc.get(key) is None:
            raise WorkbenchError(
                f"{shown}: {key}",
                "missing",
                f"add it (see params/targets/moksha.yaml), or `{key}: {PLACEHOLDER}` for now",
            )


def _rpc_urls(value: Any, shown: str, placeholders: dict[str, str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise WorkbenchError(
            f"{shown}: rpc_urls", "must be a non-empty list of URLs", "rpc_urls: [https://…]"
        )
    return [
        _url(v, f"{shown}: rpc_urls[{i}]", f"rpc_urls[{i}]" in placeholders)
        for i, v in enumerate(value)
    ]


def _url(value: Any, where: str, placeholder: bool = False) -> str:
    """An http(s) URL with a host, without a trailing slash; placeholders pass as they are."""
    if placeholder:
        return str(value).strip()
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise WorkbenchError(
            where, f"{value!r} is not an http(s) URL", "write it as https://host[:port][/path]"
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise WorkbenchError(where, f"{value!r} has a bad port", "use 1-65535") from None
    return value.strip().rstrip("/")


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WorkbenchError(
            where, f"must be an integer >= {minimum}, got {value!r}", "write it without quotes"
        )
    return value


def _contracts(value: Any, shown: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise WorkbenchError(
            f"{shown}: contracts",
            "must map contract names to addresses",
            f"give {', '.join(CONTRACT_NAMES)}",
        )
    for name in value:
        if name not in CONTRACT_NAMES:
            raise WorkbenchError(
                f"{shown}: contracts.{name}", "unknown contract", f"use {', '.join(CONTRACT_NAMES)}"
            )
    addresses = {}
    for name in CONTRACT_NAMES:
        where = f"{shown}: contracts.{name}"
        if value.get(name) is None:
            raise WorkbenchError(where, "missing", "add its address (0x + 40 hex)")
        addresses[name] = (
            ZERO_ADDRESS if _is_placeholder(value[name]) else _address(value[name], where)
        )
    return addresses


def _address(value: Any, where: str) -> str:
    """A 20-byte hex address; mixed case must be a valid EIP-55 checksum (it catches typos)."""
    text = value if isinstance(value, str) else ""
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", text):
        raise WorkbenchError(
            where,
            f"{value!r} is not an address (0x + 40 hex digits; quote it in YAML)",
            "copy the address again from the deployment or the explorer",
        )
    lower_or_upper = text[2:] == text[2:].lower() or text[2:] == text[2:].upper()
    if not lower_or_upper and not is_checksum_address(text):
        raise WorkbenchError(
            where,
            f"{text} fails its EIP-55 checksum (a typo?)",
            "copy the address again; all-lowercase skips the checksum",
        )
    return to_checksum_address(text)


def _grantee_id(value: Any, shown: str) -> int:
    return 0 if _is_placeholder(value) else _int(value, f"{shown}: grantee_id", minimum=1)


def _env_name(value: Any, shown: str, key: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        example = LOCAL_FUNDER_KEY_ENV if key == "funder_key_env" else DEFAULT_TOKEN_ENV
        raise WorkbenchError(
            f"{shown}: {key}",
            f"{value!r} is not an environment variable name",
            f"name the variable, e.g. {example}; the secret itself stays in the environment",
        )
    return value


def _gateway_url(value: Any, shown: str, placeholder: bool) -> str:
    return "" if value is None else _url(value, f"{shown}: gateway_url", placeholder)


def _storage_kind(value: Any, shown: str) -> str:
    if value not in STORAGE_KINDS:
        raise WorkbenchError(
            f"{shown}: storage_kind", f"unknown kind {value!r}", f"use one of {STORAGE_KINDS}"
        )
    return value
