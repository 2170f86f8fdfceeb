"""The tm_algos package is installed and its version agrees with its metadata."""

from __future__ import annotations

import importlib.metadata

import tm_algos


def test_version_matches_installed_metadata() -> None:
    assert tm_algos.__version__ == importlib.metadata.version("tm-algos")
