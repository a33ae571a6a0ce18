"""requirements.lock (what `make setup` installs) and environment.yml agree with pyproject.toml."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from workbench.params import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def pins() -> dict[str, Version]:
    """The lock's pins that apply to this interpreter and platform (it is universal)."""
    found = {}
    for line in (PROJECT_ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", line
            found[canonicalize_name(req.name)] = Version(spec.version)
    return found


@pytest.mark.parametrize("text", PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"])
def test_every_requirement_is_pinned_within_its_range(text):
    req = Requirement(text)
    version = pins().get(canonicalize_name(req.name))
    assert version is not None, f"{req.name} is not in requirements.lock: run make lock"
    assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} vs {req}"


def test_floors_are_not_below_what_web3_8_needs():
    # web3 8.0's own requirements on the packages we also name.
    web3_needs = {"eth-account": "0.14", "eth-abi": "6", "eth-utils": "5.3", "hexbytes": "2"}
    ours = {canonicalize_name(Requirement(t).name): Requirement(t) for t in PROJECT["dependencies"]}
    for name, floor in web3_needs.items():
        lows = [Version(s.version) for s in ours[name].specifier if s.operator == ">="]
        assert lows and min(lows) >= Version(floor), (name, ours[name])


def test_the_conda_route_pins_python_and_installs_the_lock():
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text(encoding="utf-8"))
    deps = env["dependencies"]
    assert "python=3.11" in deps and any(str(d).startswith("nodejs=") for d in deps)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-r requirements.lock" in pip
