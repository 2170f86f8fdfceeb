"""A perception encoder: a CNN that reads the 19 LIDAR distances off one 64 × 64 frame.

The simulator knows the exact LIDAR scan behind every frame it renders, so the encoder is trained
by plain supervised regression, on frames of many tracks under randomised looks
(``visuals="random"``), driven by the scripted expert with correlated steering noise so that the
frames show both clean driving and cars close to the walls. Once trained it serves three ways:

* :class:`PixelLidarWrapper` — a ``gymnasium.ObservationWrapper`` that turns an ``images``
  environment's observations into the ``lidar`` layout (``speed``, ``lidar`` ``(H, 19)``,
  ``actions``), so a trained LIDAR policy can drive from pixels, on tracks with or without
  black borders;
* ``tm_algos.extractors.PerceptionExtractor`` (preset name ``"perception"``) — a feature
  extractor for SAC/PPO on images that starts from the trained encoder, frozen or fine-tuned;
* on its own, :meth:`PerceptionEncoder.predict` on frames.

Pieces: :class:`EncoderConfig` (the network's shape, stored as JSON), :class:`PerceptionEncoder`,
:func:`save_encoder` / :func:`load_encoder` (``encoder.json`` + ``encoder.safetensors``, no
pickle), :func:`collect_pairs` (frames and exact scans from the simulator, with the cars of
:class:`~tm_algos.imitation.fleet.Fleet`), :func:`train_encoder` and :func:`lidar_error` (mean
absolute error in metres and in % of :data:`~tm_gym.core.geometry.LIDAR_RANGE`).
``benchmarks/perception.py`` trains one and reports its error on held-out tracks.

>>> import torch
>>> from tm_algos.perception import EncoderConfig, PerceptionEncoder
>>> enc = PerceptionEncoder(EncoderConfig())
>>> enc(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape
torch.Size([2, 19])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tm_algos.errors import InvalidValueError, TMAlgosError
from tm_gym.core.geometry import LIDAR_BEAMS, LIDAR_RANGE

__all__ = [
    "ENCODER_JSON",
    "ENCODER_WEIGHTS",
    "EncoderConfig",
    "EncoderFileError",
    "LidarError",
    "PerceptionData",
    "PerceptionEncoder",
    "PixelLidarWrapper",
    "TrainHistory",
    "collect_pairs",
    "lidar_error",
    "load_encoder",
    "photometric_jitter",
    "save_encoder",
    "train_encoder",
]

_log = logging.getLogger(__name__)

ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.safetensors"
_FORMAT = "tm-algos-perception-encoder"
_FORMAT_VERSION = 1


class EncoderFileError(TMAlgosError, ValueError):
    """An encoder directory is missing, unreadable or does not match its description."""


def _positive_int(value: object, name: str, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"{name}={value!r}: expected a positive integer{hint}")


# -- the network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """The shape of a :class:`PerceptionEncoder`; validated on construction, saved as JSON.

    :param img_size: frames are ``img_size`` × ``img_size`` (tm-gym's ``img_size``, ≥ 32).
    :param channels: channels of one frame: 1 grayscale (tm-gym's default), 3 RGB.
    :param width: channels of the first conv layer (the others are 2× and 4×).
    :param hidden: width of the hidden layer between the conv trunk and the 19 outputs.
    """

    img_size: int = 64
    channels: int = 1
    width: int = 16
    hidden: int = 256

    def __post_init__(self) -> None:
        _positive_int(self.img_size, "EncoderConfig.img_size")
        if self.img_size < 32:
            raise InvalidValueError(
                f"EncoderConfig.img_size={self.img_size}: expected at least 32 (the conv trunk "
                "halves the frame four times)"
            )
        if self.channels not in (1, 3):
            raise InvalidValueError(
                f"EncoderConfig.channels={self.channels!r}: expected 1 (grayscale) or 3 (RGB)"
            )
        _positive_int(self.width, "EncoderConfig.width")
        _positive_int(self.hidden, "EncoderConfig.hidden")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "encoder config") -> EncoderConfig:
        """A config from a JSON object; unknown keys are errors naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EncoderFileError(
                f"{where}: unknown keys {unknown}; expected keys among {sorted(known)}"
            )
        try:
            return cls(**dict(data))
        except InvalidValueError as e:
            raise EncoderFileError(f"{where}: {e}") from e


class PerceptionEncoder(nn.Module):
    """Frames ``(B, channels, S, S)`` → LIDAR scans ``(B, 19)`` in metres, in [0, 150].

    Four stride-2 convolutions (``width``, 2×, 4×, 4× channels, ReLU) and a linear layer of
    ``hidden`` units make the trunk (:meth:`features`, ``features_dim`` values); a linear layer
    and a sigmoid scaled by :data:`~tm_gym.core.geometry.LIDAR_RANGE` give the scan, beam 0 the
    leftmost (90° left), beam 18 the rightmost, as tm-gym's LIDAR. ``uint8`` frames are divided
    by 255; float frames are taken as already in [0, 1].
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = EncoderConfig() if config is None else config
        w = cfg.width
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = int(
                self.conv(torch.zeros(1, cfg.channels, cfg.img_size, cfg.img_size)).shape[1]
            )
        self.trunk = nn.Sequential(nn.Linear(n_flat, cfg.hidden), nn.ReLU())
        self.out = nn.Linear(cfg.hidden, LIDAR_BEAMS)
        self.features_dim = cfg.hidden

    def _check(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        want = (cfg.channels, cfg.img_size, cfg.img_size)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != want:
            raise InvalidValueError(
                f"PerceptionEncoder: frames of shape {tuple(frames.shape)}; expected (B, "
                f"{want[0]}, {want[1]}, {want[2]}) — one {'grayscale' if want[0] == 1 else 'RGB'} "
                f"frame of {cfg.img_size}x{cfg.img_size} per row (img_size and grayscale must "
                "match the encoder's training)"
            )
        return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """The trunk's features ``(B, features_dim)`` of ``frames``."""
        return self.trunk(self.conv(self._check(frames)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Scans in metres from :meth:`features`."""
        return torch.sigmoid(self.out(features)) * LIDAR_RANGE

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames))

    def predict(self, frames: NDArray[Any], batch_size: int = 1024) -> NDArray[np.float32]:
        """Scans ``(N, 19)`` (metres) for ``frames`` ``(N, channels, S, S)`` uint8, without
        gradients, in batches, on the encoder's device."""
        device = next(self.parameters()).device
        out = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(frames), batch_size):
                    x = torch.as_tensor(np.asarray(frames[i : i + batch_size]), device=device)
                    out.append(self(x).cpu().numpy())
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, LIDAR_BEAMS), np.float32)
        return np.concatenate(out).astype(np.float32)


def save_encoder(encoder: PerceptionEncoder, path: str | Path) -> Path:
    """Write ``encoder`` to the directory ``path`` (created): ``encoder.json`` (the config) and
    ``encoder.safetensors`` (the weights). Returns the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(out / ENCODER_WEIGHTS))
    doc = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "config": dataclasses.asdict(encoder.config),
        "lidar_range": LIDAR_RANGE,
        "lidar_beams": LIDAR_BEAMS,
    }
    (out / ENCODER_JSON).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


def load_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> PerceptionEncoder:
    """The encoder :func:`save_encoder` wrote to ``path``, in evaluation mode on ``device``.

    Nothing is unpickled: the JSON gives the shape, safetensors the weights.

    Raises:
        EncoderFileError: a file is missing or unreadable, or the weights do not fit the shape.
    """
    where = Path(path)
    try:
        doc = json.loads((where / ENCODER_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncoderFileError(
            f"{where / ENCODER_JSON} does not exist: give the directory save_encoder wrote "
            "(benchmarks/perception.py --out DIR, or tm_algos.perception.train_encoder)"
        ) from None
    except (OSError, ValueError) as e:
        raise EncoderFileError(f"{where / ENCODER_JSON} is not readable JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise EncoderFileError(f"{where / ENCODER_JSON} is not a perception encoder description")
    if doc.get("version") != _FORMAT_VERSION or doc.get("lidar_beams") != LIDAR_BEAMS:
        raise EncoderFileError(
            f"{where / ENCODER_JSON}: version {doc.get('version')!r} with "
            f"{doc.get('lidar_beams')!r} beams; this tm-algos reads version {_FORMAT_VERSION} "
            f"with {LIDAR_BEAMS} beams: retrain the encoder"
        )
    config = doc.get("config")
    if not isinstance(config, dict):
        raise EncoderFileError(f"{where / ENCODER_JSON}: 'config' must be a JSON object")
    encoder = PerceptionEncoder(EncoderConfig.from_mapping(config, str(where / ENCODER_JSON)))
    try:
        tensors = load_file(str(where / ENCODER_WEIGHTS), device="cpu")
    except FileNotFoundError:
        raise EncoderFileError(
            f"{where / ENCODER_WEIGHTS} does not exist; re-save the encoder"
        ) from None
    except (SafetensorError, OSError, ValueError) as e:
        raise EncoderFileError(
            f"{where / ENCODER_WEIGHTS} is not a readable safetensors file ({e})"
        ) from e
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise EncoderFileError(
            f"{where / ENCODER_WEIGHTS} does not match the network in {ENCODER_JSON} ({e}); the "
            "two files must come from the same save_encoder call"
        ) from e
    return encoder.to(device).eval()


# -- data ---------------------------------------------------------------------------------------


@dataclass
class PerceptionData:
    """Frames and the exact LIDAR scans of the same simulator states.

    ``frames`` ``(N, channels, S, S)`` uint8; ``lidar`` ``(N, 19)`` float32 metres; ``track``
    ``(N,)`` the index in ``tracks`` of the track each sample comes from.
    """

    frames: NDArray[np.uint8]
    lidar: NDArray[np.float32]
    track: NDArray[np.int64]
    tracks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.frames)
        if (
            self.frames.ndim != 4
            or self.lidar.shape != (n, LIDAR_BEAMS)
            or self.track.shape != (n,)
        ):
            raise InvalidValueError(
                f"PerceptionData: frames {self.frames.shape}, lidar {self.lidar.shape}, track "
                f"{self.track.shape}; expected (N, C, S, S), (N, {LIDAR_BEAMS}) and (N,)"
            )

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, indices: NDArray[np.integer[Any]]) -> PerceptionData:
        """The samples at ``indices``."""
        return PerceptionData(
            self.frames[indices], self.lidar[indices], self.track[indices], self.tracks
        )


def collect_pairs(
    tracks: Sequence[str],
    steps: int,
    *,
    n_envs: int | None = None,
    visuals: Any = "random",
    noise: tuple[float, float] = (0.0, 0.6),
    seed: int = 0,
    img_size: int = 64,
    grayscale: bool = True,
    ep_max_length: int = 1000,
    start_jitter: float = 1.0,
    every: int = 1,
) -> PerceptionData:
    """Frames and exact LIDAR scans from ``steps`` steps of ``n_envs`` simulated cars.

    The cars (one :class:`~tm_algos.imitation.fleet.Fleet`, default one per track) follow the
    scripted expert with an AR(1) steering noise (correlation 0.9 per step) whose scale each car
    draws uniformly from ``noise`` at every episode start, so some cars drive cleanly and others
    weave into the walls; episodes that fail or end restart automatically. Every ``every``
    steps each car's newest frame is paired with the simulator's LIDAR of the same state.

    :param visuals: the environments' ``visuals`` argument (``"random"``: a new look per car at
        every reset; a :class:`~tm_gym.core.visuals.VisualRanges` for other ranges).
    :param start_jitter: tm-gym's ``start_jitter`` (perturbed starts, 0 … 1).

    Raises:
        InvalidValueError: no track, a count that is not positive, or ``noise`` that is not
            ``(low, high)`` with ``0 <= low <= high``.
    """
    from tm_algos.imitation.fleet import Fleet

    names = list(tracks)
    if not names:
        raise InvalidValueError(
            "collect_pairs: tracks is empty; give at least one, e.g. ['default']"
        )
    n = len(names) if n_envs is None else n_envs
    _positive_int(steps, "steps")
    _positive_int(n, "n_envs")
    _positive_int(every, "every")
    lo, hi = (float(v) for v in noise)
    if not 0.0 <= lo <= hi:
        raise InvalidValueError(f"noise={noise!r}: expected (low, high) with 0 <= low <= high")
    kwargs = {
        "obs_type": "images",
        "img_size": img_size,
        "grayscale": grayscale,
        "visuals": visuals,
        "ep_max_length": ep_max_length,
        "start_jitter": start_jitter,
    }
    fleet = Fleet(kwargs, names, n, seed)
    rng = np.random.default_rng(seed)
    car_track = np.repeat(np.arange(len(fleet.counts)), fleet.counts)
    channels = 1 if grayscale else 3
    frames, scans, where = [], [], []
    scale = rng.uniform(lo, hi, size=n)
    state = np.zeros(n)
    try:
        for t in range(steps):
            if t % every == 0:
                frames.append(fleet.state_frames()[:, -channels:].copy())
                scans.append(fleet.state_lidar())
                where.append(car_track)
            actions = fleet.expert_actions()
            state = 0.9 * state + math.sqrt(1 - 0.9**2) * scale * rng.standard_normal(n)
            actions[:, 2] = np.clip(actions[:, 2] + state, -1.0, 1.0)
            fleet.step(actions)
            ended = np.concatenate(fleet.done)
            if ended.any():
                scale[ended] = rng.uniform(lo, hi, size=int(ended.sum()))
                state[ended] = 0.0
    finally:
        fleet.close()
    return PerceptionData(
        np.concatenate(frames),
        np.concatenate(scans).astype(np.float32),
        np.concatenate(where).astype(np.int64),
        tuple(names),
    )


# -- training and evaluation --------------------------------------------------------------------


@dataclass(frozen=True)
class LidarError:
    """Mean absolute error of predicted scans against the exact ones."""

    mae_m: float
    """Metres, over every beam of every sample."""
    mae_pct: float
    """``mae_m`` in % of :data:`~tm_gym.core.geometry.LIDAR_RANGE`."""
    per_beam_m: tuple[float, ...]
    """Metres, beam 0 (left) … 18 (right)."""
    median_m: float
    """Median absolute error, metres."""
    samples: int


def lidar_error(predicted: NDArray[Any], exact: NDArray[Any]) -> LidarError:
    """The :class:`LidarError` of ``predicted`` scans ``(N, 19)`` against ``exact`` ones.

    Raises:
        InvalidValueError: the shapes differ, are not ``(N, 19)``, or ``N`` is 0.
    """
    p, e = np.asarray(predicted, np.float64), np.asarray(exact, np.float64)
    if p.shape != e.shape or p.ndim != 2 or p.shape[1] != LIDAR_BEAMS or len(p) == 0:
        raise InvalidValueError(
            f"lidar_error: predicted {p.shape} and exact {e.shape}; expected two equal (N, "
            f"{LIDAR_BEAMS}) arrays with N >= 1"
        )
    err = np.abs(p - e)
    mae = float(err.mean())
    return LidarError(
        mae_m=mae,
        mae_pct=100.0 * mae / LIDAR_RANGE,
        per_beam_m=tuple(float(v) for v in err.mean(axis=0)),
        median_m=float(np.median(err)),
        samples=len(p),
    )


@dataclass
class TrainHistory:
    """What :func:`train_encoder` did: the loss (mean absolute error, metres) of each logged
    stretch of updates, and the validation error after each epoch if validation data was given."""

    updates: int = 0
    epochs: int = 0
    wall_s: float = 0.0
    train_mae_m: list[float] = dataclasses.field(default_factory=list)
    val: list[LidarError] = dataclasses.field(default_factory=list)


def _shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (edge replicated), the same for a batch."""
    if pad <= 0:
        return x
    h, w = x.shape[-2:]
    xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return xp[..., dy : dy + h, dx : dx + w]


def photometric_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random per-sample contrast, brightness and gamma on frames in [0, 1] (``(B, C, H, W)``).

    Each sample draws a contrast factor and a brightness factor from ``[1 - s, 1 + s]`` and a
    gamma from ``[1 - s/2, 1 + s/2]`` (``s = strength``); the result is clipped to [0, 1].
    ``strength`` 0 returns ``x`` unchanged. The geometry (and so the LIDAR label) is untouched.
    """
    if strength <= 0:
        return x
    b = x.shape[0]

    def draw(half_width: float) -> torch.Tensor:
        u = torch.rand((b, 1, 1, 1), generator=gen).to(x.device)
        return 1.0 + half_width * (2.0 * u - 1.0)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    y = ((x - mean) * draw(strength) + mean) * draw(strength)
    return y.clamp(0.0, 1.0).pow(draw(strength / 2))


def _check_training(
    data: PerceptionData, epochs: int, batch_size: int, learning_rate: float, photometric: float
) -> None:
    if len(data) == 0:
        raise InvalidValueError("train_encoder: data is empty; collect pairs with collect_pairs")
    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch_size")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise InvalidValueError(f"learning_rate={learning_rate!r}: expected a positive number")
    if not 0.0 <= photometric < 1.0:
        raise InvalidValueError(f"photometric={photometric!r}: expected a number in [0, 1)")


def train_encoder(
    data: PerceptionData,
    *,
    encoder: PerceptionEncoder | None = None,
    config: EncoderConfig | None = None,
    epochs: int = 10,
    seconds: float | None = None,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    augment_pad: int = 0,
    photometric: float = 0.0,
    validation: PerceptionData | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, TrainHistory], None] | None = None,
) -> tuple[PerceptionEncoder, TrainHistory]:
    """Fit an encoder to ``data`` by minimising the mean absolute error (metres / 150).

    :param encoder: continue training this one (default: a new one of ``config``, by default
        the frames' size and channels).
    :param epochs: passes over ``data`` in shuffled batches; ``seconds`` stops earlier when the
        wall-clock budget is spent (checked after every batch).
    :param augment_pad: random translations of up to this many pixels (0: none); the scans are
        unchanged, so keep it small (≤ 2) — a shifted frame is a slightly different camera.
    :param photometric: strength of :func:`photometric_jitter` on every training batch (0:
        none; 0.4 widens the looks the encoder copes with, see ``benchmarks/perception.py``).
    :param validation: data to measure :func:`lidar_error` on after every epoch.
    :param on_epoch: called with the epoch index and the history after each epoch.

    Returns the encoder (evaluation mode) and a :class:`TrainHistory`. Learning rate: Adam,
    cosine decay to 1/10 over the planned epochs.

    Raises:
        InvalidValueError: ``data`` is empty, or a setting is out of range.
    """
    _check_training(data, epochs, batch_size, learning_rate, photometric)
    c, s = data.frames.shape[1], data.frames.shape[2]
    if encoder is None:
        encoder = PerceptionEncoder(config or EncoderConfig(img_size=s, channels=c))
    encoder.to(device).train()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(encoder.parameters(), lr=learning_rate)
    per_epoch = max(1, len(data) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * per_epoch, eta_min=learning_rate / 10
    )
    frames = torch.from_numpy(data.frames)
    targets = torch.from_numpy(data.lidar / LIDAR_RANGE)
    history = TrainHistory()
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(epochs):
        order = rng.permutation(len(data))
        running, count = 0.0, 0
        for b in range(per_epoch):
            idx = torch.from_numpy(order[b * batch_size : (b + 1) * batch_size])
            x = _shift(frames[idx].to(device), augment_pad, gen)
            if photometric > 0:
                x = photometric_jitter(x.float() / 255.0, photometric, gen)
            y = targets[idx].to(device)
            loss = (encoder(x) / LIDAR_RANGE - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.updates += 1
            running += loss.item() * LIDAR_RANGE
            count += 1
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                out_of_time = True
                break
        history.epochs = epoch + 1
        history.train_mae_m.append(running / max(count, 1))
        if validation is not None:
            history.val.append(lidar_error(encoder.predict(validation.frames), validation.lidar))
        history.wall_s = time.perf_counter() - t0
        _log.info("perception epoch %d: train MAE %.2f m", epoch, history.train_mae_m[-1])
        if on_epoch is not None:
            on_epoch(epoch, history)
        if out_of_time:
            break
    return encoder.eval(), history


# -- the wrapper --------------------------------------------------------------------------------


class PixelLidarWrapper(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """An ``images`` tm-gym environment seen through a perception encoder, in the ``lidar``
    layout: ``speed`` ``(1,)``, ``lidar`` ``(H, 19)`` metres, ``actions`` ``(A, 3)`` — the keys,
    shapes and bounds of ``obs_type="lidar"`` with the same ``img_hist_len`` and ``act_buf_len``.

    Each of the ``H`` frames of the stack is read by the encoder, so scan ``i`` of the history
    is the prediction for frame ``i`` (the history of the first observation of an episode
    repeats its first scan, as the LIDAR environment's does). ``speed`` and ``actions`` are
    passed through; ``gear`` and ``rpm`` are dropped. Nothing is kept between calls.

    :param env: a tm-gym environment (or wrapper) with ``obs_type="images"``.
    :param encoder: a :class:`PerceptionEncoder`, or the directory :func:`save_encoder` wrote.

    >>> import gymnasium as gym, tm_gym
    >>> from tm_algos.perception import PerceptionEncoder, PixelLidarWrapper
    >>> env = PixelLidarWrapper(gym.make("TrackMania-Sim-v0"), PerceptionEncoder())
    >>> obs, _ = env.reset(seed=0)
    >>> obs["lidar"].shape
    (4, 19)

    Raises:
        InvalidValueError: the environment's observations are not tm-gym ``images``
            observations, or their frames do not fit the encoder.
    """

    def __init__(self, env: gym.Env[Any, Any], encoder: PerceptionEncoder | str | Path) -> None:
        super().__init__(env)
        self.encoder = encoder if isinstance(encoder, PerceptionEncoder) else load_encoder(encoder)
        self.encoder.eval()
        space = env.observation_space
        need = {"images", "speed", "actions"}
        if not isinstance(space, spaces.Dict) or not need <= set(space.spaces):
            keys = sorted(space.spaces) if isinstance(space, spaces.Dict) else type(space).__name__
            raise InvalidValueError(
                f"PixelLidarWrapper: the environment's observations are {keys}; expected a "
                "tm-gym images observation (keys images, speed, actions): make the environment "
                "with obs_type='images'"
            )
        images = space.spaces["images"]
        cfg = self.encoder.config
        c = int(images.shape[0]) if images.shape else 0
        if (
            images.shape is None
            or len(images.shape) != 3
            or c % cfg.channels
            or tuple(images.shape[1:]) != (cfg.img_size, cfg.img_size)
        ):
            raise InvalidValueError(
                f"PixelLidarWrapper: frames of shape {images.shape}; the encoder reads "
                f"{cfg.channels}-channel {cfg.img_size}x{cfg.img_size} frames: make the "
                f"environment with img_size={cfg.img_size}, grayscale={cfg.channels == 1}"
            )
        self.history = c // cfg.channels
        self.observation_space = spaces.Dict(
            {
                "speed": space.spaces["speed"],
                "lidar": spaces.Box(0.0, LIDAR_RANGE, (self.history, LIDAR_BEAMS), np.float32),
                "actions": space.spaces["actions"],
            }
        )

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The ``lidar``-layout observation of one ``images`` observation."""
        cfg = self.encoder.config
        frames = np.asarray(observation["images"], dtype=np.uint8)
        stack = frames.reshape(self.history, cfg.channels, cfg.img_size, cfg.img_size)
        return {
            "speed": np.asarray(observation["speed"], dtype=np.float32),
            "lidar": self.encoder.predict(stack),
            "actions": np.asarray(observation["actions"], dtype=np.float32),
        }
