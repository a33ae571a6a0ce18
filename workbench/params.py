"""Stack and flow timing profiles, kept as data in `params/profiles/*.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workbench.errors import WorkbenchError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_ROOT / "params" / "profiles"


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> dict[str, Any]:
    """Loads a profile by name (`fast`, `moksha`) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise WorkbenchError(
            "profile",
            f"no profile {name_or_path!r}",
            f"use one of {profile_names()} or a YAML path",
        )
    with open(path, encoding="utf-8") as f:
        profile = yaml.safe_load(f)
    for section in ("chain", "storage", "inference", "relayer", "flow"):
        if not isinstance(profile.get(section), dict):
            raise WorkbenchError(
                f"profile.{section}", f"missing in {path}", "copy it from fast.yaml"
            )
    return profile
