"""Checks on the packages' metadata, read from their pyproject.toml files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PACKAGES_DIR = Path(__file__).resolve().parent.parent / "packages"
PACKAGES = sorted(p.name for p in PACKAGES_DIR.iterdir() if (p / "pyproject.toml").is_file())


def project_table(package: str) -> dict[str, Any]:
    with (PACKAGES_DIR / package / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def requirements(project: dict[str, Any]) -> list[Requirement]:
    """Every requirement of a project, its extras' included."""
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_the_three_packages_are_found() -> None:
    assert {"tm-gym", "tm-algos", "tm-dist"} <= set(PACKAGES)


def test_tm_gym_depends_on_nothing_heavy() -> None:
    names = {canonicalize_name(r.name) for r in requirements(project_table("tm-gym"))}
    heavy = sorted(names & {"torch", "stable-baselines3", "tlspyo"})
    assert heavy == [], f"tm-gym must install without {heavy}; they belong in tm-algos or tm-dist"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_layout(package: str) -> None:
    project = project_table(package)
    assert project["name"] == package
    src = PACKAGES_DIR / package / "src" / package.replace("-", "_")
    assert (src / "__init__.py").is_file(), f"the import name must be {src.name}"
    assert (src / "py.typed").is_file(), (
        "without py.typed, type checkers ignore the package's hints"
    )
    assert (PACKAGES_DIR / package / project["readme"]).is_file()


@pytest.mark.parametrize("package", PACKAGES)
def test_torch_is_not_pinned_in_metadata(package: str) -> None:
    for requirement in requirements(project_table(package)):
        if canonicalize_name(requirement.name) == "torch":
            assert all(s.operator != "==" for s in requirement.specifier), (
                f"{package} pins torch; pin it in constraints.txt instead"
            )
