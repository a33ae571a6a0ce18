"""config.json's versions: every installed package the project requires, recursively."""

from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from workbench.driver import runner
from workbench.driver.versions import installed_versions, project_requirements


def test_every_project_requirement_and_its_own_are_recorded():
    versions = installed_versions()
    direct = {canonicalize_name(Requirement(r).name) for r in project_requirements()}
    assert direct <= set(versions)
    # Transitive ones, a few levels down: web3 -> eth-account -> eth-keyfile; aiohttp -> yarl.
    assert {"eth-account", "eth-keyfile", "yarl", "eth-typing"} <= set(versions)
    assert all(versions[name] == metadata.version(name) for name in versions)
    assert list(versions) == sorted(versions)


def test_markers_are_evaluated_and_extras_followed_only_when_asked():
    # web3 asks for eth-hash[pycryptodome]; eth-hash alone does not need pycryptodome.
    assert "pycryptodome" not in installed_versions(["eth-hash"])
    assert "pycryptodome" in installed_versions(["eth-hash[pycryptodome]"])
    assert "pycryptodome" in installed_versions(["web3"])
    web3 = installed_versions(["web3"])
    assert "eth-tester" not in web3  # web3[tester] only
    assert "pywin32" not in web3  # platform_system == "Windows" only


def test_requirements_not_installed_are_left_out():
    assert installed_versions(["no-such-distribution-xyz>=1", "hexbytes"]) == {
        "hexbytes": metadata.version("hexbytes")
    }


def test_runner_versions_keep_their_old_keys():
    versions = runner.versions()
    assert {"workbench", "python", "web3", "aiohttp"} <= set(versions)
    assert versions["web3"] == metadata.version("web3") and len(versions) > 50
