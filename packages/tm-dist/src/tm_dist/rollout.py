"""The worker's driving core, independent of the network: weights in, episode chunks out.

:class:`Rollout` drives one tm-gym environment with the newest policy it was given. It only
swaps weights between episodes (an episode is driven by one policy version, which on-policy
training needs), runs a deterministic test episode every ``test_every`` episodes (reported, not
trained on), and encodes each episode with :class:`~tm_dist.codec.EpisodeEncoder` into
self-contained :class:`~tm_dist.wire.EpisodeChunk` s of at most ``chunk_steps`` steps.

Weights come from the network, so nothing in them is trusted (:mod:`tm_dist.trust`): their
configuration is checked when they are offered (env id, env arguments, network shapes), and the
environment and the policy are built before anything is replaced. Weights that fail any step
are refused with a log line naming the reason and counted in :attr:`Rollout.rejected_weights`;
the rollout keeps driving with the policy and environment it had (or keeps waiting for usable
weights when it has none), so a bad broadcast, even one the relay keeps for late joiners, never
stops a worker. Signatures are checked before this, by the worker's inbox (:mod:`tm_dist.roles`).
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
from tm_dist.errors import InvalidValueError, StateError
from tm_dist.trust import UntrustedConfigError, WorkerTrust, check_weights_config
from tm_dist.wire import EpisodeChunk, Weights

__all__ = ["Rollout", "WeightsConfig"]

_log = logging.getLogger(__name__)

EnvFactory = Callable[[str, dict[str, Any]], gym.Env[Any, Any]]


@dataclass(frozen=True)
class WeightsConfig:
    """What a :class:`~tm_dist.wire.Weights` message's JSON says besides the network."""

    policy_json: str
    env_id: str
    """A plain id the worker builds (checked by :func:`tm_dist.trust.check_env_id`)."""
    env_kwargs: dict[str, Any]
    random_actions: bool
    weights_subset: str | None = None

    @classmethod
    def parse(cls, config_json: str, trust: WorkerTrust | None = None) -> WeightsConfig:
        """The configuration in ``config_json``, checked against ``trust`` (default limits).

        Raises:
            InvalidValueError: not the trainer's format (missing or mistyped parts).
            UntrustedConfigError: a part the worker refuses (see :mod:`tm_dist.trust`).
        """
        try:
            data = json.loads(config_json)
        except (json.JSONDecodeError, TypeError, RecursionError) as e:
            raise InvalidValueError(f"weights config is not JSON ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise InvalidValueError("weights config is not the trainer's format: not an object")
        policy, env = data.get("policy"), data.get("env")
        if not isinstance(policy, dict) or not isinstance(env, dict):
            raise InvalidValueError(
                "weights config is not the trainer's format: expected objects 'policy' and 'env'"
            )
        random_actions = data.get("random_actions", False)
        subset = policy.get("weights_subset")
        if not isinstance(random_actions, bool) or not isinstance(subset, str | None):
            raise InvalidValueError(
                "weights config is not the trainer's format: random_actions must be true or "
                "false and policy.weights_subset a string"
            )
        env_id = check_weights_config(
            env.get("id"), env.get("kwargs"), policy, trust or WorkerTrust()
        )
        return cls(
            weights_subset=subset,
            policy_json=json.dumps(policy),
            env_id=env_id,
            env_kwargs=dict(env["kwargs"]),
            random_actions=random_actions,
        )


def _spaces_mismatch(policy: LoadedPolicy, env: gym.Env[Any, Any]) -> str | None:
    """Why ``policy`` cannot drive ``env`` (observation keys, shapes or dtypes differ), or None."""
    pairs = [("action", policy.action_space, env.action_space)]
    p_obs, e_obs = policy.observation_space, env.observation_space
    if isinstance(p_obs, gym.spaces.Dict) and isinstance(e_obs, gym.spaces.Dict):
        if set(p_obs.spaces) != set(e_obs.spaces):
            return f"observation keys {sorted(p_obs.spaces)} != the env's {sorted(e_obs.spaces)}"
        pairs += [(f"observation {k!r}", p_obs[k], e_obs[k]) for k in p_obs.spaces]
    else:
        pairs.append(("observation", p_obs, e_obs))
    for what, p, e in pairs:
        if type(p) is not type(e) or p.shape != e.shape or p.dtype != e.dtype:
            return (
                f"{what} space {type(p).__name__}{p.shape} {p.dtype} does not fit the env's "
                f"{type(e).__name__}{e.shape} {e.dtype}"
            )
    return None


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
    :param trust: the limits on what weights may ask for (:class:`~tm_dist.trust.WorkerTrust`;
        tm-gym's ids and the default bounds when None).
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
        trust: WorkerTrust | None = None,
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
        self.trust = trust or WorkerTrust()
        self.rng = np.random.default_rng(seed)
        self._seed = seed
        self.env: gym.Env[Any, Any] | None = None
        self._env_spec: tuple[str, str] | None = None
        self.policy: LoadedPolicy | None = None
        self._policy_json: str | None = None
        self.config: WeightsConfig | None = None
        self.version = -1
        self._newest: tuple[Weights, WeightsConfig] | None = None
        self.episodes = 0
        self.rejected_weights = 0
        """Weights refused (unusable configuration, or a policy or env that would not build)."""
        self.last_refusal: str | None = None
        """Why the latest weights were refused (None until one is)."""
        # episode ids unique to this process: a worker restarted under the same name never
        # reuses the ids of episodes the trainer already has (it drops repeats as duplicates)
        self._episode_base = secrets.randbits(30) << 32

    # -- weights -----------------------------------------------------------------------------

    def offer(self, weights: Weights) -> bool:
        """Keep ``weights`` if their configuration is acceptable and they are the newest offered;
        they are put to use at the next episode start. False when refused (logged, counted)."""
        try:
            config = WeightsConfig.parse(weights.config_json, self.trust)
        except (InvalidValueError, UntrustedConfigError) as e:
            self._refuse(weights.version, str(e))
            return False
        if self._newest is None or weights.version >= self._newest[0].version:
            self._newest = (weights, config)
        return True

    @property
    def has_weights(self) -> bool:
        return self._newest is not None or self.policy is not None

    def _refuse(self, version: int, reason: str) -> None:
        self.rejected_weights += 1
        self.last_refusal = reason
        if self.policy is not None:
            then = f"driving on with version {self.version}"
        else:
            then = "waiting for usable weights"
        _log.warning("refused weights version %d: %s; %s", version, reason, then)

    def _swap(self) -> None:
        """Put the newest acceptable weights to use; on any failure keep everything as it was."""
        if self._newest is None:
            return
        (w, config), self._newest = self._newest, None
        if w.version == self.version and self.policy is not None:
            return
        spec = (config.env_id, json.dumps(config.env_kwargs, sort_keys=True))
        new_env: gym.Env[Any, Any] | None = None
        try:
            if spec != self._env_spec:
                new_env = self.env_factory(config.env_id, config.env_kwargs)
            env = new_env if new_env is not None else self.env
            policy = self._policy_for(w, config, env)
        except Exception as e:  # from the network: any failure to build is a refusal
            if new_env is not None:
                new_env.close()
            self._refuse(w.version, f"{type(e).__name__}: {e}")
            return
        if new_env is not None:
            if self.env is not None:
                self.env.close()
            self.env, self._env_spec = new_env, spec
        self.policy, self._policy_json = policy, config.policy_json
        self.config = config
        self.version = w.version

    def _policy_for(
        self, w: Weights, config: WeightsConfig, env: gym.Env[Any, Any] | None
    ) -> LoadedPolicy:
        """The policy of ``w``: the current one updated in place when the network is the same
        (only once everything else has passed), else a new one. Raises when unusable."""
        same = self.policy is not None and config.policy_json == self._policy_json
        policy = self.policy if same else None
        if policy is None:
            policy = policy_from_bytes(w.safetensors, config.policy_json, device=self.device)
        if env is not None:
            mismatch = _spaces_mismatch(policy, env)
            if mismatch is not None:
                raise InvalidValueError(f"the policy does not fit the environment: {mismatch}")
        if same:
            update_weights(policy, w.safetensors, subset=config.weights_subset)
        return policy

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
