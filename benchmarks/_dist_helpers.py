"""Pieces of benchmarks/dist.py: episodes, message formats, transports and worker processes.

Kept apart so that dist.py reads as the measurement plan. Nothing here is library code: the
tlspyo baselines use tlspyo's default serializer (Python object serialization) on purpose,
because that is what they measure; the data is our own, made in this run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

OURS = "tm-dist"
TMRL = "tlspyo-tmrl"
FULL = "tlspyo-full"
TRANSPORTS = (OURS, TMRL, FULL)
TRANSPORT_NOTES = {
    OURS: "tm-dist Link/RelayServer: msgpack EpisodeChunk, codec payload (newest frame, zstd)",
    TMRL: "tlspyo defaults: TMRL's image samples (act, obs with newest frame, rew, ...)",
    FULL: "tlspyo defaults: full stacked obs AND next_obs per transition (SB3 replay layout)",
}
TRAINERS = "trainers"
WORKERS = "workers"
ENV_ID = "TrackMania-Sim-v0"
TMRL_MAX_BUF_LEN = 268_435_456
"""``max_buf_len`` TMRL gives its tlspyo endpoints (its BUFFER_SIZE); tlspyo's own default,
4096, makes the endpoint reassemble a large message from thousands of small reads."""
STANDING_CREDIT = 1 << 40
"""Consumables the baseline trainer asks for once, so the relay pushes each as it arrives (as
tm-dist's Link does); TMRL's own trainer polls with notify(-1) instead, which is slower."""

Obs = dict[str, NDArray[Any]]


# -- episodes -----------------------------------------------------------------------------------
@dataclass
class Episode:
    """One episode as the environment returned it."""

    first_obs: Obs
    actions: list[NDArray[np.float32]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    next_obs: list[Obs] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return len(self.actions)


def _steer_towards_middle(frame: NDArray[np.uint8], rng: np.random.Generator) -> float:
    """Steer towards the middle of the dark track borders seen a little ahead of the car."""
    dark = (frame[34:46] < 60).any(axis=0)
    cols = np.nonzero(dark)[0]
    centre = frame.shape[1] // 2
    left, right = cols[cols < centre], cols[cols >= centre]
    lo = int(left.max()) if left.size else 0
    hi = int(right.min()) if right.size else frame.shape[1] - 1
    return float(np.clip(((lo + hi) / 2 - centre) / 12 + rng.normal(0.0, 0.15), -1.0, 1.0))


class _NoisyFrames:
    """Adds Gaussian noise of ``sigma`` grey levels to each new frame, once, keeping the stack
    consistent (a stand-in for game screenshots, whose pixels never repeat exactly)."""

    def __init__(self, sigma: float, rng: np.random.Generator) -> None:
        self.sigma = sigma
        self.rng = rng
        self.stack: NDArray[np.uint8] | None = None

    def __call__(self, obs: Obs, first: bool) -> Obs:
        if self.sigma <= 0:
            return obs
        frame = obs["images"][-1].astype(np.float32)
        frame += self.rng.normal(0.0, self.sigma, frame.shape).astype(np.float32)
        new = np.clip(np.rint(frame), 0, 255).astype(np.uint8)[None]
        if first or self.stack is None:
            self.stack = np.repeat(new, obs["images"].shape[0], axis=0)
        else:
            self.stack = np.concatenate([self.stack[1:], new])
        return {**obs, "images": self.stack.copy()}


def episode_stream(seed: int, frame_noise: float) -> Generator[Episode, None, None]:
    """Endless episodes of the images simulator driven by a scripted driver (gas on, steering
    towards the middle of the borders it sees), so frames change as in a real drive."""
    import gymnasium as gym

    import tm_gym  # noqa: F401  (registers the environments)

    env = gym.make(ENV_ID, obs_type="images")
    rng = np.random.default_rng(seed)
    noisy = _NoisyFrames(frame_noise, rng)
    try:
        for i in range(1 << 62):
            obs, _ = env.reset(seed=seed + i)
            obs = noisy(obs, True)
            ep = Episode(first_obs=obs)
            done = False
            while not done:
                action = np.array([1.0, 0.0, _steer_towards_middle(obs["images"][-1], rng)])
                action = action.astype(np.float32)
                obs, reward, term, trunc, _ = env.step(action)
                obs = noisy(obs, False)
                ep.actions.append(action)
                ep.rewards.append(float(reward))
                ep.terminated.append(bool(term))
                ep.truncated.append(bool(trunc))
                ep.next_obs.append(obs)
                done = bool(term or trunc)
            yield ep
    finally:
        env.close()


def record(n_workers: int, episodes: int, seed: int, frame_noise: float) -> list[list[Episode]]:
    """``episodes`` episodes for each of ``n_workers`` workers (a different seed each)."""
    out = []
    for k in range(n_workers):
        stream = episode_stream(seed + 1000 * k, frame_noise)
        out.append([next(stream) for _ in range(episodes)])
        stream.close()
    return out


def spaces() -> tuple[Any, Any]:
    import gymnasium as gym

    import tm_gym  # noqa: F401

    env = gym.make(ENV_ID, obs_type="images")
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


# -- message formats ----------------------------------------------------------------------------
Message = tuple[Any, int]
"""An object to send and the number of transitions it carries."""


class MessageMaker:
    """Turns episodes into the messages of one transport for one worker."""

    def __init__(self, transport: str, worker: int, chunk_steps: int) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r}: expected one of {TRANSPORTS}")
        self.transport = transport
        self.worker = worker
        self.episode = 0
        self.encoder: Any = None
        if transport == OURS:
            from tm_dist.codec import EpisodeEncoder

            obs_space, act_space = spaces()
            self.encoder = EpisodeEncoder(obs_space, act_space, chunk_steps=chunk_steps)

    def __call__(self, ep: Episode) -> list[Message]:
        self.episode += 1
        if self.transport == OURS:
            return self._chunks(ep)
        if self.transport == TMRL:
            return [(self._tmrl_buffer(ep), ep.n_steps)]
        return [(self._full_buffer(ep), ep.n_steps)]

    def _chunks(self, ep: Episode) -> list[Message]:
        from tm_dist.wire import EpisodeChunk

        enc = self.encoder
        enc.reset(ep.first_obs)
        out: list[Message] = []
        ret = 0.0
        for t in range(ep.n_steps):
            ret += ep.rewards[t]
            payload = enc.step(
                ep.actions[t], ep.rewards[t], ep.terminated[t], ep.truncated[t], ep.next_obs[t]
            )
            if payload is None:
                continue
            final = t == ep.n_steps - 1
            n = t + 1 - sum(m[1] for m in out)
            chunk = EpisodeChunk(
                worker=f"w{self.worker}",
                episode=self.episode,
                chunk=len(out),
                final=final,
                test=False,
                weights_version=0,
                n_steps=n,
                payload=payload,
                stats={"return": ret, "steps": ep.n_steps} if final else {},
            )
            out.append((chunk, n))
        return out

    def _tmrl_buffer(self, ep: Episode) -> dict[str, Any]:
        """TMRL's image samples: (previous action, (speed, gear, rpm, newest frame), reward,
        terminated, truncated, info), the reset sample first, one buffer per episode."""

        def obs(o: Obs) -> tuple[Any, ...]:
            return (o["speed"].copy(), o["gear"].copy(), o["rpm"].copy(), o["images"][-1].copy())

        zero = np.zeros(3, np.float32)
        samples: list[tuple[Any, ...]] = [(zero, obs(ep.first_obs), 0.0, False, False, {})]
        for t in range(ep.n_steps):
            samples.append(
                (
                    ep.actions[t].copy(),
                    obs(ep.next_obs[t]),
                    ep.rewards[t],
                    ep.terminated[t],
                    ep.truncated[t],
                    {},
                )
            )
        return self._buffer(samples, ep)

    def _full_buffer(self, ep: Episode) -> dict[str, Any]:
        """(obs, action, reward, next_obs, terminated, truncated, info) with full observations;
        obs and next_obs are separate copies, as a replay buffer holds them."""
        observations = [ep.first_obs, *ep.next_obs]
        samples: list[tuple[Any, ...]] = [
            (
                copy.deepcopy(observations[t]),
                ep.actions[t].copy(),
                ep.rewards[t],
                copy.deepcopy(observations[t + 1]),
                ep.terminated[t],
                ep.truncated[t],
                {},
            )
            for t in range(ep.n_steps)
        ]
        return self._buffer(samples, ep)

    def _buffer(self, samples: list[tuple[Any, ...]], ep: Episode) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "memory": samples,
            "stat_train_return": float(sum(ep.rewards)),
            "stat_train_steps": ep.n_steps,
        }


def frame_bytes(transport: str, obj: Any) -> int:
    """Bytes of the tlspyo frame that carries ``obj`` from an endpoint to the relay (before TLS),
    with the transport's own serializer; ``obj`` is what the endpoint is asked to send."""
    header = 10  # tlspyo's length header
    dest = {TRAINERS: 1}
    if transport == OURS:
        from tm_dist.wire import encode_message, tlspyo_serializer

        data = encode_message(obj) if not isinstance(obj, bytes) else obj
        return header + len(tlspyo_serializer(("OBJ", dest, tlspyo_serializer(data))))
    from tlspyo.api import DEFAULT_SERIALIZER

    return header + len(DEFAULT_SERIALIZER(("OBJ", dest, DEFAULT_SERIALIZER(obj))))


# -- transports ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Net:
    """Where and how to connect: the same for every process of one measurement."""

    password: str
    port: int
    use_tls: bool
    keys_dir: str | None


class Relay:
    """A running relay of either kind; ``pids`` are its child processes."""

    def __init__(self, transport: str, password: str, use_tls: bool, keys_dir: str | None):
        self.transport = transport
        self._obj: Any
        if transport == OURS:
            from tm_dist.transport import RelayServer

            self._obj = RelayServer(password, port=0, use_tls=use_tls, keys_dir=keys_dir).start()
            port = self._obj.port
        else:
            from tlspyo import Relay as TlspyoRelay

            from tm_dist.transport import free_local_port

            port = free_local_port()
            self._obj = TlspyoRelay(
                port=port,
                password=password,
                local_com_port=free_local_port(),
                security="TLS" if use_tls else None,
                keys_dir=keys_dir,
            )
        self.net = Net(password, port, use_tls, keys_dir)

    @property
    def pids(self) -> list[int]:
        pid = self._obj.pid if self.transport == OURS else self._obj._p.pid
        return [pid] if pid else []

    def stop(self) -> None:
        self._obj.stop()


class Endpoint:
    """One process's connection: produce, broadcast and receive, for either transport."""

    def __init__(self, transport: str, net: Net, group: str, *, sync_decode: bool = False):
        self.transport = transport
        self._obj: Any
        if transport == OURS:
            from tm_dist.transport import Link

            self._obj = Link(
                net.password,
                port=net.port,
                groups=group,
                use_tls=net.use_tls,
                keys_dir=net.keys_dir,
            ).connect()
        else:
            from tlspyo import Endpoint as TlspyoEndpoint

            from tm_dist.transport import free_local_port

            self._obj = TlspyoEndpoint(
                ip_server="127.0.0.1",
                port=net.port,
                password=net.password,
                groups=group,
                local_com_port=free_local_port(),
                security="TLS" if net.use_tls else None,
                keys_dir=net.keys_dir,
                max_buf_len=TMRL_MAX_BUF_LEN,
                deserializer_mode="synchronous" if sync_decode else "asynchronous",
            )
            if group == TRAINERS:
                self._obj.notify(groups={TRAINERS: STANDING_CREDIT})

    @property
    def pid(self) -> int | None:
        return self._obj.pid if self.transport == OURS else self._obj._p.pid

    def produce(self, group: str, obj: Any) -> None:
        if self.transport == OURS:
            from tm_dist.wire import encode_message

            self._obj.send(group, encode_message(obj))
        else:
            self._obj.produce(obj, group)

    def broadcast(self, group: str, obj: Any) -> None:
        if self.transport == OURS:
            self._obj.broadcast(group, obj)
        else:
            self._obj.broadcast(obj, group)

    def wait(self, timeout: float) -> list[Any]:
        """What has arrived, waiting up to ``timeout`` s for the first item."""
        if self.transport == OURS:
            try:
                first = self._obj.receive(timeout=timeout)
            except TimeoutError:
                return []
            return [first, *self._obj.receive_all()]
        deadline = time.perf_counter() + timeout
        while True:
            items: list[Any] = self._obj.receive_all(blocking=False)
            if items or time.perf_counter() >= deadline:
                return items
            time.sleep(0.0002)

    def close(self) -> None:
        self._obj.stop()


def kill_pids(pids: Sequence[int | None]) -> None:
    """SIGTERM, then SIGKILL, each process in ``pids`` that is still alive (children of ours)."""
    alive = [p for p in pids if p]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        still = []
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    continue  # it has exited and is now reaped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                still.append(pid)
        if not still:
            return
        time.sleep(0.3)
        alive = still


# -- worker processes ---------------------------------------------------------------------------
def throughput_worker(
    transport: str,
    net: Net,
    index: int,
    source: Callable[[], Iterator[Message]],
    sent: Any,
    acked: Any,
    window: int,
    start: Any,
    stop: Any,
    pids: Any,
) -> None:
    """Send messages from ``source`` to the trainers while no more than ``window`` transitions
    are in flight (sent, not yet decoded by the trainer), until ``stop`` is set."""
    endpoint = Endpoint(transport, net, WORKERS)
    pids.put((index, endpoint.pid))
    try:
        start.wait(60)
        messages = source()
        while not stop.is_set():
            if sent[index] - acked[index] >= window:
                time.sleep(0.0005)
                continue
            obj, n = next(messages)
            endpoint.produce(TRAINERS, obj)
            sent[index] += n
    finally:
        endpoint.close()


def broadcast_worker(transport: str, net: Net, index: int, results: Any, reps: int) -> None:
    """Receive ``reps`` policy broadcasts; for each, report when it arrived, when its message was
    decoded, and when the policy was rebuilt (``perf_counter``, the same clock in every process
    of a Linux machine)."""
    import torch

    from tm_algos.policy import policy_from_bytes

    torch.set_num_threads(1)
    endpoint = Endpoint(transport, net, WORKERS, sync_decode=True)
    results.put(("ready", index, endpoint.pid, 0.0, 0.0, 0.0))
    try:
        seen = 0
        while seen < reps:
            items = endpoint.wait(1.0)
            if not items:
                continue
            t_arrived = time.perf_counter()
            item = items[-1]  # the newest broadcast, as a worker would use it
            if transport == OURS:
                from tm_dist.wire import Weights, decode_message

                msg = decode_message(item)
                assert isinstance(msg, Weights)
                version, weights, config = msg.version, msg.safetensors, msg.config_json
            else:
                version, weights, config = item["version"], item["weights"], item["config"]
            t_decoded = time.perf_counter()
            policy_from_bytes(weights, config)
            t_built = time.perf_counter()
            results.put(("done", index, version, t_arrived, t_decoded, t_built))
            seen += 1
    finally:
        endpoint.close()


def prerecorded(messages: list[Message]) -> Callable[[], Iterator[Message]]:
    def source() -> Iterator[Message]:
        while True:
            yield from messages

    return source


def live(
    transport: str, index: int, seed: int, frame_noise: float, chunk_steps: int
) -> Callable[[], Iterator[Message]]:
    def source() -> Iterator[Message]:
        make = MessageMaker(transport, index, chunk_steps)
        for ep in episode_stream(seed, frame_noise):
            yield from make(ep)

    return source
