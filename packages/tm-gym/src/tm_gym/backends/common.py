"""What the real-time backends share: their settings, checked against :class:`EnvSettings`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tm_gym.core.settings import EnvSettings

__all__ = ["SETTING_NAMES", "env_settings"]

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(EnvSettings))
"""The keyword arguments that become :class:`EnvSettings` fields."""


def env_settings(kwargs: Mapping[str, Any], backend: str) -> EnvSettings:
    """``kwargs`` as :class:`EnvSettings`.

    Raises:
        TypeError: a keyword that is not a setting (the message lists the settings).
        ValueError: a setting's value is out of range (from :class:`EnvSettings`).
    """
    unknown = sorted(set(kwargs) - SETTING_NAMES)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown} for {backend}; its settings are "
            f"{sorted(SETTING_NAMES)}"
        )
    return EnvSettings(**kwargs)
