"""What a run ran on: the installed version of every package the project depends on, recursively.

The project's requirements come from pyproject.toml (the checkout the run's code is from), their
own from each installed distribution's metadata, with environment markers evaluated for this
interpreter and extras followed where a requirement asks for them (`eth-hash[pycryptodome]`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import tomllib
from collections.abc import Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from workbench.params import PROJECT_ROOT


def project_requirements() -> list[str]:
    """`[project] dependencies` of pyproject.toml (the dev extra is not what a run uses)."""
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def installed_versions(requirements: Iterable[str] | None = None) -> dict[str, str]:
    """{distribution name: installed version} for `requirements` (default: the project's) and
    everything they require, sorted by name. Requirements not installed here are left out."""
    todo = [Requirement(text) for text in (requirements or project_requirements())]
    found: dict[str, tuple[str, list[Requirement]] | None] = {}  # name -> (version, requires)
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements are queued
    while todo:
        wanted = todo.pop()
        name = canonicalize_name(wanted.name)
        extras = {"", *wanted.extras} - {extra for n, extra in followed if n == name}
        if not extras:
            continue
        followed |= {(name, extra) for extra in extras}
        if name not in found:
            found[name] = _read(wanted.name)
        entry = found[name]
        if entry is not None:
            todo += [r for r in entry[1] if _needed(r, extras)]
    return {name: entry[0] for name, entry in sorted(found.items()) if entry is not None}


def _read(name: str) -> tuple[str, list[Requirement]] | None:
    """(version, requirements) of an installed distribution, its metadata parsed once."""
    try:
        meta = metadata.metadata(name)
    except metadata.PackageNotFoundError:
        return None  # an optional dependency that is not installed here
    return meta["Version"], [Requirement(text) for text in meta.get_all("Requires-Dist") or []]


def _needed(requirement: Requirement, extras: set[str]) -> bool:
    marker = requirement.marker
    return marker is None or any(marker.evaluate({"extra": extra}) for extra in extras)
