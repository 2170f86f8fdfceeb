"""Hyperparameters for the RL Baselines3 Zoo (``rl_zoo3``), made from tm-algos' presets.

The Zoo trains from a table of hyperparameters per algorithm and environment id; its own tables
know nothing of TrackMania, so ``python -m rl_zoo3.train --env TrackMania-Sim-v0`` falls back to
an ``MlpPolicy`` that cannot read Dict observations. Point it at the module of the algorithm
here (``--conf-file`` takes a Python module), which builds the table from the matching preset,
so Zoo runs train what ``tm-train`` trains::

    python -m rl_zoo3.train --algo sac --env TrackMania-Sim-v0 --gym-packages tm_gym \\
        --conf-file tm_algos.zoo.sac

========  ==============  ========================================================
``--algo``  preset          ``--conf-file``
========  ==============  ========================================================
``sac``   ``lidar-sac``   ``tm_algos.zoo.sac``
``tqc``   ``lidar-tqc``   ``tm_algos.zoo.tqc``
``ppo``   ``images-ppo``  ``tm_algos.zoo.ppo``
========  ==============  ========================================================

Zoo options still apply on top (``-n STEPS``, ``--hyperparams key:value``, ``--env-kwargs
track:"'gen:7'"``). The entries differ from ``tm-train`` only where the Zoo decides: it uses
SB3's own replay buffer (``tm-train`` shares frames between transitions) and its own run folder
and model format.
"""

from __future__ import annotations

from typing import Any

from tm_algos.factory import policy_kwargs_of
from tm_algos.presets import load_preset

__all__ = ["ENV_IDS", "zoo_hyperparams"]

ENV_IDS = ("TrackMania-Sim-v0", "TrackMania-v0")
"""The ids each table has an entry for (the live game takes the same settings)."""


def zoo_hyperparams(preset_name: str) -> dict[str, dict[str, Any]]:
    """The Zoo's table (env id → hyperparameters) for the preset ``preset_name``."""
    preset = load_preset(preset_name)
    entry: dict[str, Any] = {
        "policy": "MultiInputPolicy",
        "n_timesteps": int(preset.algo.total_timesteps),
        "n_envs": int(preset.env.n_envs),
        "env_kwargs": {"obs_type": preset.env.obs_type, **dict(preset.env.kwargs)},
        "policy_kwargs": policy_kwargs_of(preset),
        **dict(preset.algo.hyperparameters),
    }
    return {env_id: dict(entry) for env_id in ENV_IDS}
