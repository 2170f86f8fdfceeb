"""What the real-time backends share: their settings, checked against :class:`EnvSettings`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tm_gym.core.settings import SETTING_NAMES, EnvSettings

__all__ = ["env_settings"]


def env_settings(kwargs: Mapping[str, Any], backend: str) -> EnvSettings:
    """``kwargs`` as :class:`EnvSettings`.

    Raises:
        TypeError: a keyword that is not a setting (the message lists the settings).
        ValueError: a setting's value is out of range (from :class:`EnvSettings`).
    """
    unknown = sorted(set(kwargs) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown} for {backend}; its settings are "
            f"{list(SETTING_NAMES)} (tm_gym.backends.factory lists each backend's other arguments)"
        )
    return EnvSettings(**kwargs)
