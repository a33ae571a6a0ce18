"""Where a run points: the endpoints and contract addresses of a local stack or a remote deployment.

A `Target` carries no secrets, only the *name* of the environment variable that holds the funder's
key, so it can be written into `config.json` and reports as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.errors import WorkbenchError

CONTRACT_NAMES = (
    "DataPortabilityPermissions",
    "DataPortabilityGrantees",
    "DataPortabilityServers",
    "DataRegistry",
)
# The env var a local target's funder key sits in (anvil dev account 0; public knowledge).
LOCAL_FUNDER_KEY_ENV = "WORKBENCH_FUNDER_KEY"


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoints:
        return cls(**{**data, "contracts": dict(data["contracts"])})


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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoints": self.endpoints.to_json(),
            "profile": self.profile.get("name"),
            "funder_key_env": self.funder_key_env,
            "pids": dict(self.pids),
        }


def load_target(name_or_path: str | Path) -> Target:
    """Loads a remote target from `params/targets/<name>.yaml` (seam for a later issue)."""
    raise WorkbenchError(
        "target",
        f"remote targets: not yet supported ({name_or_path})",
        "omit the target to run against the embedded local stack",
    )
