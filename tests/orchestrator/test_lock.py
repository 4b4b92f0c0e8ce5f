"""The lock (requirements.lock, `make lock`): the whole dependency set pinned, no CUDA, within pyproject's ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_line_of_the_lock_is_an_exact_pin():
    assert len(_lock()) > 100


def test_the_lock_holds_no_cuda_package():
    assert not [n for n in _lock() if n.startswith(("nvidia", "cuda", "triton"))]


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_each_dependency_is_locked_within_its_range(req):
    version = _lock().get(canonicalize_name(req.name))
    assert version is not None, f"{req.name} is not in requirements.lock: run make lock"
    assert req.specifier.contains(Version(version)), f"{req.name}=={version} is outside {req.specifier}"


def test_each_dependency_has_a_compatible_range_not_a_bare_name():
    assert all(r.specifier for r in _requirements())


def test_make_venv_installs_torch_then_the_lock_then_wcscan_without_resolving():
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): pyproject.toml $(LOCK)")[1].split("\n\n")[0]
    steps = [line.strip() for line in recipe.splitlines() if "$(PIP) install" in line]
    assert steps == ["$(PIP) install --upgrade pip", "$(PIP) install '$(TORCH)'", "$(PIP) install -r $(LOCK)",
                     "$(PIP) install --no-deps -e '.[dev]'"]
