"""The worker's driving core, independent of the network: weights in, episode chunks out.

:class:`Rollout` drives one tm-gym environment with the newest policy it was given. It only
swaps weights between episodes (an episode is driven by one policy version, which on-policy
training needs), runs a deterministic test episode every ``test_every`` episodes (reported, not
trained on), and encodes each episode with :class:`~tm_dist.codec.EpisodeEncoder` into
self-contained :class:`~tm_dist.wire.EpisodeChunk` s of at most ``chunk_steps`` steps.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from tm_algos.policy import LoadedPolicy, policy_from_bytes, update_weights
from tm_dist.codec import EpisodeEncoder
from tm_dist.errors import InvalidTypeError, InvalidValueError, StateError
from tm_dist.wire import EpisodeChunk, Weights

__all__ = ["Rollout", "WeightsConfig"]

_log = logging.getLogger(__name__)

EnvFactory = Callable[[str, dict[str, Any]], gym.Env[Any, Any]]


@dataclass(frozen=True)
class WeightsConfig:
    """What a :class:`~tm_dist.wire.Weights` message's JSON says besides the network."""

    policy_json: str
    env_id: str
    env_kwargs: dict[str, Any]
    random_actions: bool
    weights_subset: str | None = None

    @classmethod
    def parse(cls, config_json: str) -> WeightsConfig:
        try:
            data = json.loads(config_json)
            env = data["env"]
            if not isinstance(env["id"], str) or not isinstance(env["kwargs"], dict):
                raise InvalidTypeError("env.id must be a string and env.kwargs an object")
            subset = data["policy"].get("weights_subset")
            return cls(
                weights_subset=subset if isinstance(subset, str) else None,
                policy_json=json.dumps(data["policy"]),
                env_id=env["id"],
                env_kwargs=dict(env["kwargs"]),
                random_actions=bool(data.get("random_actions", False)),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidValueError(f"weights config is not the trainer's format ({e})") from e


def _make_env(env_id: str, kwargs: dict[str, Any]) -> gym.Env[Any, Any]:
    import tm_gym  # noqa: F401  (registers the ids)

    return gym.make(env_id, **kwargs)


class Rollout:
    """Drives episodes for one worker.

    :param name: the worker's name (unique per process: it keys episodes on the trainer).
    :param test_every: every ``test_every``-th episode is a deterministic test episode.
    :param chunk_steps: steps per chunk (a chunk is sent as soon as it is full).
    :param debug_codec: add observation digests so the trainer verifies its rebuild.
    :param env_factory: ``(env_id, kwargs) -> env``; ``gymnasium.make`` by default.
    """

    def __init__(
        self,
        name: str,
        *,
        test_every: int = 10,
        chunk_steps: int = 100,
        debug_codec: bool = False,
        seed: int | None = None,
        env_factory: EnvFactory = _make_env,
        device: str = "cpu",
    ) -> None:
        if test_every < 1 or chunk_steps < 1:
            raise InvalidValueError(
                f"test_every={test_every}, chunk_steps={chunk_steps}: expected >= 1"
            )
        self.name = name
        self.test_every = test_every
        self.chunk_steps = chunk_steps
        self.debug_codec = debug_codec
        self.env_factory = env_factory
        self.device = device
        self.rng = np.random.default_rng(seed)
        self._seed = seed
        self.env: gym.Env[Any, Any] | None = None
        self._env_spec: tuple[str, str] | None = None
        self.policy: LoadedPolicy | None = None
        self._policy_json: str | None = None
        self.config: WeightsConfig | None = None
        self.version = -1
        self._newest: Weights | None = None
        self.episodes = 0
        self.rejected_weights = 0
        # episode ids unique to this process: a worker restarted under the same name never
        # reuses the ids of episodes the trainer already has (it drops repeats as duplicates)
        self._episode_base = secrets.randbits(30) << 32

    # -- weights -----------------------------------------------------------------------------

    def offer(self, weights: Weights) -> None:
        """Keep ``weights`` if newer; they are put to use at the next episode start."""
        if self._newest is None or weights.version >= self._newest.version:
            self._newest = weights

    @property
    def has_weights(self) -> bool:
        return self._newest is not None or self.policy is not None

    def _swap(self) -> None:
        w, self._newest = self._newest, None
        if w is None or (w.version == self.version and self.policy is not None):
            return
        try:
            config = WeightsConfig.parse(w.config_json)
            if self.policy is not None and config.policy_json == self._policy_json:
                update_weights(self.policy, w.safetensors, subset=config.weights_subset)
            else:
                policy = policy_from_bytes(w.safetensors, config.policy_json, device=self.device)
                self.policy, self._policy_json = policy, config.policy_json
        except ValueError as e:  # PolicyFileError too: keep driving with what we had
            self.rejected_weights += 1
            _log.warning("ignored weights version %d: %s", w.version, e)
            return
        spec = (config.env_id, json.dumps(config.env_kwargs, sort_keys=True))
        if spec != self._env_spec:
            if self.env is not None:
                self.env.close()
            self.env = self.env_factory(config.env_id, config.env_kwargs)
            self._env_spec = spec
        self.config = config
        self.version = w.version

    def prepare(self) -> bool:
        """Put the newest weights to use; False while no usable policy has arrived."""
        self._swap()
        return self.policy is not None

    # -- episodes ----------------------------------------------------------------------------

    def episode(self) -> Iterator[EpisodeChunk]:
        """Drive one episode, yielding its chunks as they fill (the last has ``final=True``)."""
        self._swap()
        if self.policy is None or self.env is None or self.config is None:
            raise StateError("no weights yet: offer() the trainer's first Weights message")
        env, policy = self.env, self.policy
        index = self.episodes
        self.episodes += 1
        test = index % self.test_every == self.test_every - 1
        random_actions = self.config.random_actions and not test
        encoder = EpisodeEncoder(
            env.observation_space,  # type: ignore[arg-type]
            env.action_space,  # type: ignore[arg-type]
            chunk_steps=self.chunk_steps,
            debug=self.debug_codec,
        )
        seed = None if self._seed is None or index else self._seed
        obs, info = env.reset(seed=seed)
        encoder.reset(obs)
        policy.reset()
        chunk_no, steps, total = 0, 0, 0.0
        start = True
        while True:
            if random_actions:
                action = self.rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
            else:
                action = policy.act(obs, deterministic=test, episode_start=start)
            start = False
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            done = bool(terminated or truncated)
            payload = encoder.step(action, float(reward), bool(terminated), bool(truncated), obs)
            if payload is not None:
                episode_id = self._episode_base + index
                yield self._chunk(episode_id, chunk_no, payload, steps, done, test, total, info)
                chunk_no += 1
                steps = 0
            if done:
                break

    def _chunk(
        self,
        episode: int,
        chunk: int,
        payload: bytes,
        n_steps: int,
        final: bool,
        test: bool,
        total: float,
        info: dict[str, Any],
    ) -> EpisodeChunk:
        stats: dict[str, float | int | str | bool | None] = {}
        if final:
            finished = bool(info.get("finished", False))
            lap = info.get("lap_time")  # tm-gym reports +inf until the finish
            lap_s = None if lap is None else float(lap)
            stats = {
                "return": round(total, 4),
                "progress": float(info.get("progress", 0.0)),
                "finished": finished,
                "lap_time": lap_s
                if finished and lap_s is not None and math.isfinite(lap_s)
                else None,
                "wall_contacts": int(info.get("wall_contacts", 0)),
            }
        return EpisodeChunk(
            worker=self.name,
            episode=episode,
            chunk=chunk,
            final=final,
            test=test,
            weights_version=self.version,
            n_steps=n_steps,
            payload=payload,
            stats=stats,
        )

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
