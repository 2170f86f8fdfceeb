"""A native batched vector environment: N simulated cars stepped by one set of kernels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from tm_gym.core.actions import action_space, check_actions
from tm_gym.core.settings import EnvSettings, observation_space
from tm_gym.core.visuals import Visuals, VisualsSpec
from tm_gym.envs.sim_core import SimCore
from tm_gym.error import BackendUnavailableError, EnvStateError
from tm_gym.reward import RewardConfig
from tm_gym.sim.physics import CarParams
from tm_gym.sim.track import Track

__all__ = ["TrackManiaVectorEnv"]


class TrackManiaVectorEnv(
    VectorEnv[dict[str, NDArray[Any]], NDArray[np.float32], NDArray[np.float32]]
):
    """``num_envs`` simulated cars with exactly the semantics of as many ``TrackManiaEnv``.

    Created by ``gymnasium.make_vec("TrackMania-Sim-v0", num_envs=N,
    vectorization_mode="vector_entry_point", **kwargs)``; takes the same keyword arguments as
    :class:`~tm_gym.envs.trackmania.TrackManiaEnv`. Episodes reset automatically on the step
    after they end (``AutoresetMode.NEXT_STEP``, Gymnasium's default): that step returns the
    reset observation with reward 0 and ignores the action. Infos are dicts of arrays, with a
    ``_key`` mask for each key.

    With ``visuals`` ranges (``"random"`` ...) each car draws its own look whenever it resets
    (all cars at ``reset()``, one car at its autoreset), from the vector environment's seeded
    generator; cars that share a camera share its ray table, so per-car colours cost nothing
    and per-car cameras only memory. ``start_jitter`` is drawn per car in the same way.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 20,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        backend: str = "sim",
        *,
        obs_type: str = "images",
        track: str | Track = "default",
        img_size: int = 64,
        img_hist_len: int = 4,
        grayscale: bool = True,
        act_buf_len: int = 2,
        time_step_duration: float = 0.05,
        start_obs_capture: float = 0.04,
        ep_max_length: int = 1000,
        reward_trajectory: str | None = None,
        reward_config: RewardConfig | None = None,
        car_params: CarParams | None = None,
        visuals: Visuals | VisualsSpec | Mapping[str, Any] | str | None = None,
        start_jitter: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if backend != "sim":
            raise BackendUnavailableError(
                f"backend={backend!r}: the native vector environment runs the simulator only; "
                "for several game instances use one TrackMania-v0 per instance"
            )
        n_obj: object = num_envs
        if not isinstance(n_obj, int) or n_obj < 1:
            raise ValueError(f"num_envs={num_envs!r}: expected a positive integer")
        if render_mode is not None and render_mode != "rgb_array":
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.settings = EnvSettings(
            obs_type=obs_type,
            img_size=img_size,
            img_hist_len=img_hist_len,
            grayscale=grayscale,
            act_buf_len=act_buf_len,
            time_step_duration=time_step_duration,
            start_obs_capture=start_obs_capture,
            ep_max_length=ep_max_length,
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.settings)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.core = SimCore(
            num_envs,
            self.settings,
            track,
            reward_trajectory,
            reward_config,
            car_params,
            visuals=VisualsSpec.parse(visuals),
            start_jitter=start_jitter,
        )
        self.track = self.core.track
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._all_mask = np.ones(num_envs, dtype=bool)
        self._all_mask.flags.writeable = False
        self._started = False

    def _vector_info(self, info: dict[str, NDArray[Any]]) -> dict[str, Any]:
        """Gymnasium's vector info layout: each key with a ``_key`` mask, all set (every car has
        every key, ``lap_time`` included: +inf until the finish). The masks are one shared
        read-only array."""
        out: dict[str, Any] = {}
        for k, v in info.items():
            out[k] = v
            out[f"_{k}"] = self._all_mask
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Reset every car, or with ``options={"reset_mask": mask}`` the cars in ``mask`` only.

        The other cars do not move; their entries are the observations (and infos) their
        next ``step`` returns, so their episodes go on exactly as without the reset.
        """
        super().reset(seed=seed)
        self.core.rng = self.np_random
        mask = np.ones(self.num_envs, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] has shape {mask.shape}; expected ({self.num_envs},)"
                )
            if not self._started and not mask.all():
                raise EnvStateError("the first reset() must reset every environment")
        obs, info = self.core.reset(mask)
        if not mask.all():
            full, full_info = self.core.observe(), self.core.infos()
            fresh = np.flatnonzero(mask)
            for k, v in obs.items():
                full[k][fresh] = v
            for k, v in info.items():
                full_info[k][fresh] = v
            obs, info = full, full_info
        self._autoreset[mask] = False
        self._started = True
        return obs, self._vector_info(info)

    def step(  # type: ignore[override]
        self, actions: NDArray[np.float32]
    ) -> tuple[
        dict[str, NDArray[Any]],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        if not self._started:
            raise EnvStateError("step() called before reset(); call reset() first")
        a = check_actions(actions, self.num_envs)
        obs, rew, term, trunc, info = self.core.step(a, self._autoreset.copy())
        assert info is not None  # the vector env keeps the core's batched infos on
        self._autoreset = term | trunc
        return obs, rew, term, trunc, self._vector_info(info)

    def render(self) -> tuple[NDArray[np.uint8], ...] | None:
        if self.render_mode is None:
            return None
        return tuple(self.core.sim.render_rgb())

    @property
    def visuals(self) -> tuple[Visuals, ...]:
        """Each car's current look (drawn at each of its resets when ``visuals`` has ranges)."""
        return self.core.sim.visuals

    def expert_actions(self) -> NDArray[np.float32]:
        """The scripted expert's actions (num_envs, 3) for the current states."""
        return self.core.expert_actions()
