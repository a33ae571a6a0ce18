"""Finding anvil on each supported platform: fake npm trees, a monkeypatched platform, no process."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.stack import anvil

# (platform.system(), platform.machine()) as Python reports them -> npm's package for that machine.
PLATFORMS = [
    ("Linux", "x86_64", "anvil-linux-amd64"),
    ("Linux", "aarch64", "anvil-linux-arm64"),
    ("Darwin", "x86_64", "anvil-darwin-amd64"),
    ("Darwin", "arm64", "anvil-darwin-arm64"),
]
ALL_PACKAGES = [package for _, _, package in PLATFORMS] + ["anvil-win32-amd64"]


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def npm_dir(monkeypatch, tmp_path) -> Path:
    """An empty node_modules/@foundry-rs and a PATH without anvil."""
    root = tmp_path / "node_modules" / "@foundry-rs"
    root.mkdir(parents=True)
    monkeypatch.setattr(anvil, "FOUNDRY_NPM_DIR", root)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    return root


def on(monkeypatch, system: str, machine: str) -> None:
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)


@pytest.mark.parametrize(("system", "machine", "package"), PLATFORMS)
def test_the_platform_package_for_this_machine_wins(monkeypatch, npm_dir, system, machine, package):
    # As if every platform package were present: the one for this OS and CPU is chosen.
    for name in ALL_PACKAGES:
        executable(npm_dir / name / "bin" / "anvil")
    executable(npm_dir / "anvil" / "anvil")
    on(monkeypatch, system, machine)
    assert anvil.platform_package() == package
    assert anvil.anvil_binary() == npm_dir / package / "bin" / "anvil"


@pytest.mark.parametrize(("system", "machine", "package"), PLATFORMS)
def test_the_launchers_own_download_when_npm_skipped_optional_packages(
    monkeypatch, npm_dir, system, machine, package
):
    # `npm ci --omit=optional`: @foundry-rs/anvil's postinstall puts the binary into itself.
    executable(npm_dir / "anvil-win32-amd64" / "bin" / "anvil")  # another platform's: not used
    launcher_binary = executable(npm_dir / "anvil" / "anvil")
    on(monkeypatch, system, machine)
    assert anvil.anvil_binary() == launcher_binary


def test_anvil_on_path_for_foundry_users(monkeypatch, npm_dir, tmp_path):
    foundry = executable(tmp_path / "foundry" / "bin" / "anvil")
    monkeypatch.setenv("PATH", str(foundry.parent))
    on(monkeypatch, "Darwin", "arm64")
    assert anvil.anvil_binary() == foundry


def test_a_file_that_is_not_executable_is_skipped(monkeypatch, npm_dir, tmp_path):
    broken = npm_dir / "anvil-linux-amd64" / "bin" / "anvil"
    broken.parent.mkdir(parents=True)
    broken.write_text("")  # a half-extracted package: no exec bit
    foundry = executable(tmp_path / "foundry" / "anvil")
    monkeypatch.setenv("PATH", str(foundry.parent))
    on(monkeypatch, "Linux", "x86_64")
    assert anvil.anvil_binary() == foundry


@pytest.mark.parametrize(("system", "machine", "package"), PLATFORMS)
def test_missing_anvil_names_this_platforms_package_and_foundryup(
    monkeypatch, npm_dir, system, machine, package
):
    executable(npm_dir / "anvil-win32-amd64" / "bin" / "anvil")
    on(monkeypatch, system, machine)
    with pytest.raises(WorkbenchError) as info:
        anvil.anvil_binary()
    assert info.value.field == "anvil"
    assert f"{system} {machine}" in info.value.problem
    assert f"@foundry-rs/{package}" in info.value.fix and "make setup" in info.value.fix
    assert "foundryup" in info.value.fix


@pytest.mark.parametrize(("system", "machine"), [("Windows", "AMD64"), ("Linux", "riscv64")])
def test_an_unsupported_platform_is_told_what_is_supported(monkeypatch, npm_dir, system, machine):
    executable(npm_dir / "anvil-win32-amd64" / "bin" / "anvil")
    on(monkeypatch, system, machine)
    assert anvil.platform_package() is None
    with pytest.raises(WorkbenchError) as info:
        anvil.anvil_binary()
    assert "Linux and macOS on x86-64 and arm64" in info.value.problem
    assert "WSL2" in info.value.fix and "make setup" not in info.value.fix


def test_this_checkout_finds_a_runnable_anvil():
    # The real tree `make setup` left: whatever this machine is, the lookup lands on a binary.
    path = anvil.anvil_binary()
    assert path.is_file() and path.name == "anvil"
