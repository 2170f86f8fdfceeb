"""The ``replay`` backend: a ``.tmrec`` recording played through the game's observation pipeline.

``mode="mock"`` gives :class:`~tm_gym.recording.replay.ReplayEnv` (synchronous, actions
validated and ignored); ``mode="realtime"`` gives the replay behind the real-time layer
(:func:`~tm_gym.recording.replay_realtime.make_realtime_replay_env`). Only observation settings
may be given (obs_type, img_size, img_hist_len, grayscale, act_buf_len, ep_max_length); the rest
comes from the recording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from tm_gym.core.settings import OBSERVATION_SETTINGS
from tm_gym.recording.format import Recording
from tm_gym.recording.replay import MODES, ReplayEnv
from tm_gym.recording.replay_realtime import make_realtime_replay_env
from tm_gym.reward import RewardConfig

__all__ = ["make_replay_env"]


def make_replay_env(
    recording: str | Path | Recording | None = None,
    *,
    mode: str = "mock",
    reward_config: RewardConfig | None = None,
    render_mode: str | None = None,
    time_step_timeout_factor: float = 1.0,
    **settings: Any,
) -> gym.Env[Any, Any]:
    """The replay of ``recording`` in ``mode`` (see the module docstring)."""
    if recording is None:
        raise ValueError(
            "backend='replay' needs recording=PATH (a .tmrec file made with `tm-gym record` or "
            "tm_gym.recording.RecordEpisodes; built-in ones: tm_gym.recording.builtin_recording)"
        )
    unknown = sorted(set(settings) - set(OBSERVATION_SETTINGS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown} for backend='replay'; it takes recording, "
            f"mode, reward_config, render_mode, time_step_timeout_factor and the observation "
            f"settings {list(OBSERVATION_SETTINGS)} (the recording fixes the rest)"
        )
    if mode == "mock":
        if time_step_timeout_factor != 1.0:
            raise TypeError(
                "time_step_timeout_factor applies to mode='realtime' only (mode='mock' is not paced)"
            )
        return ReplayEnv(
            recording, reward_config=reward_config, render_mode=render_mode, **settings
        )
    if mode == "realtime":
        return make_realtime_replay_env(
            recording,
            reward_config=reward_config,
            render_mode=render_mode,
            time_step_timeout_factor=time_step_timeout_factor,
            **settings,
        )
    raise ValueError(f"mode={mode!r}: expected one of {list(MODES)}")
