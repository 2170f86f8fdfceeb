"""The tm_dist package is installed and its version agrees with its metadata."""

from __future__ import annotations

import importlib.metadata

import tm_dist


def test_version_matches_installed_metadata() -> None:
    assert tm_dist.__version__ == importlib.metadata.version("tm-dist")
