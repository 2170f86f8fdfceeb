"""The simulated cars of imitation and perception training: several tracks, stepped together.

:class:`Fleet` spreads ``n_envs`` cars over a list of tracks, one tm-gym native vector
environment (``TrackMania-Sim-v0``, ``vectorization_mode="vector_entry_point"``) per track, and
steps them all with one ``(n_envs, 3)`` action array. DAgger (:mod:`tm_algos.imitation.dagger`)
labels its observations with a teacher's actions; the perception encoder
(:mod:`tm_algos.perception`) pairs each car's newest frame with the simulator's exact LIDAR scan
of the same state (:meth:`Fleet.state_frames`, :meth:`Fleet.state_lidar`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from tm_algos.errors import InvalidValueError

__all__ = ["SIM_ENV_ID", "Fleet", "Obs", "draw_cars"]

SIM_ENV_ID = "TrackMania-Sim-v0"
Obs = dict[str, NDArray[Any]]


class Fleet:
    """``n_envs`` simulated cars spread over ``tracks`` (at least one car per track).

    :param env_kwargs: keyword arguments of every vector environment (``obs_type``, ``visuals``,
        ...); ``track`` is used only when ``tracks`` is empty, ``backend`` is ignored (always the
        simulator).
    :param tracks: track names (built-in, ``gen:SEED`` or a JSON path); cars are dealt out in
        order, the first tracks getting one more when ``n_envs`` does not divide evenly.
    :param seed: the environment of track ``i`` is reset with ``seed + i``.

    After :meth:`step`, ``obs[i]``, ``first[i]`` and ``done[i]`` hold the observations of the
    cars of track ``i``, which of them start an episode, and which just ended one (their next
    step is an automatic reset).

    Raises:
        InvalidValueError: fewer cars than tracks.
    """

    def __init__(
        self,
        env_kwargs: Mapping[str, Any],
        tracks: Sequence[str],
        n_envs: int,
        seed: int,
        car_scales: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        import tm_gym  # noqa: F401  (registers the environment ids)

        names = list(tracks) or [str(env_kwargs.get("track", "default"))]
        if n_envs < len(names):
            raise InvalidValueError(
                f"imitation: n_envs={n_envs} cars cannot drive {len(names)} tracks; give at "
                "least one car per track"
            )
        counts = [n_envs // len(names) + (i < n_envs % len(names)) for i in range(len(names))]
        kwargs = {k: v for k, v in env_kwargs.items() if k not in ("track", "backend")}
        cars = draw_cars(kwargs.pop("car_params", None), car_scales, len(names), seed)
        self.cars = cars
        self.envs = [
            gym.make_vec(
                SIM_ENV_ID,
                num_envs=c,
                vectorization_mode="vector_entry_point",
                track=t,
                car_params=car,
                **kwargs,
            )
            for t, c, car in zip(names, counts, cars, strict=True)
        ]
        self.counts = counts
        self.n = n_envs
        self.obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]
        self.first = [np.ones(c, dtype=bool) for c in counts]
        self.done = [np.zeros(c, dtype=bool) for c in counts]

    def observations(self) -> Obs:
        """The cars' last observations, all tracks concatenated in order."""
        return {k: np.concatenate([o[k] for o in self.obs]) for k in self.obs[0]}

    def step(self, actions: NDArray[np.float32]) -> None:
        """Step every car with its row of ``actions`` (``(n_envs, 3)``)."""
        start = 0
        for i, env in enumerate(self.envs):
            a = actions[start : start + self.counts[i]]
            start += self.counts[i]
            obs, _, term, trunc, _ = env.step(a)
            self.first[i] = self.done[i]  # autoreset: the step after an end gives a reset
            self.done[i] = term | trunc
            self.obs[i] = obs

    def expert_actions(self) -> NDArray[np.float32]:
        """The simulator's scripted expert's actions ``(n_envs, 3)`` for the cars' current
        states."""
        return np.concatenate(
            [np.asarray(env.unwrapped.expert_actions(), np.float32) for env in self.envs]  # type: ignore[attr-defined]
        )

    def state_frames(self) -> NDArray[np.uint8]:
        """The frame stacks ``(n_envs, C, H, W)`` of the cars' current simulator states.

        The vector environments return each observation one capture behind the simulator
        (the capture that ends a step is handed out by the next one), so these are the frames
        whose exact LIDAR is :meth:`state_lidar`; needs ``obs_type="images"``.
        """
        return np.concatenate([env.unwrapped.core.frames for env in self.envs])  # type: ignore[attr-defined]

    def state_lidar(self) -> NDArray[np.float32]:
        """The exact LIDAR scans ``(n_envs, 19)``, metres, of the cars' current states."""
        return np.concatenate(
            [np.asarray(env.unwrapped.core.sim.lidar(), np.float32) for env in self.envs]  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        """Close every environment."""
        for env in self.envs:
            env.close()


def draw_cars(
    base: Any, scales: Mapping[str, Sequence[float]] | None, n: int, seed: int
) -> list[Any]:
    """One car per track: ``base`` (a ``CarParams`` or None, the standard car) with each field in
    ``scales`` multiplied by a factor drawn uniformly from its ``[low, high]`` (seeded by
    ``seed``), so the fleet drives ``n`` different cars; without ``scales``, ``base`` for all.

    Raises:
        InvalidValueError: an unknown field, a tuple field (gear speeds), or a bad range.
    """
    if not scales:
        return [base] * n
    from tm_gym import CarParams

    car = base if base is not None else CarParams()
    known = {f.name: getattr(car, f.name) for f in dataclasses.fields(CarParams)}
    for name, bounds in scales.items():
        if name not in known or isinstance(known[name], tuple):
            raise InvalidValueError(
                f"imitation.car_scales: {name!r} is not a scalar field of CarParams; use one "
                f"of {', '.join(k for k, v in known.items() if not isinstance(v, tuple))}"
            )
        low, high = (float(b) for b in bounds) if len(bounds) == 2 else (-1.0, -1.0)
        if not 0 < low <= high:
            raise InvalidValueError(
                f"imitation.car_scales.{name} = {list(bounds)}: expected [low, high] factors "
                "with 0 < low <= high, e.g. [0.7, 1.3]"
            )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        change = {
            k: known[k] * float(rng.uniform(float(b[0]), float(b[1]))) for k, b in scales.items()
        }
        out.append(dataclasses.replace(car, **change))
    return out
