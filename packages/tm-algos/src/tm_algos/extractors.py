"""Feature extractors for tm-gym's Dict observations (Stable-Baselines3 ``BaseFeaturesExtractor``).

Each extractor turns one observation dict of ``TrackMania-Sim-v0`` / ``TrackMania-v0`` into a flat
feature vector that SB3's SAC, TQC, PPO and sb3-contrib's RecurrentPPO put their heads on:

- :class:`TMCNNExtractor` (``obs_type="images"``): a conv stack on the frames ("tmrl" or
  "small"), then the telemetry and past actions;
- :class:`TMViTExtractor` (``"images"``): frame patches and a telemetry token through a
  transformer encoder;
- :class:`TMLidarExtractor` (``"lidar"``, ``"lidar_progress"``): an MLP on the scans, speed,
  past actions (and progress);
- :class:`PerceptionExtractor` (``"images"``, preset name ``"perception"``): a trained
  :class:`~tm_algos.perception.PerceptionEncoder` (pixels → LIDAR) on every frame, frozen or
  fine-tuned, then an MLP as the LIDAR one's.

With RecurrentPPO's ``"MultiInputLstmPolicy"`` the LSTM sits on top of the extractor: the
CNN-LSTM path is ``TMCNNExtractor`` there.

Telemetry is scaled inside the network by :class:`TelemetryNorm`, with fixed constants (no
running statistics), so a saved policy means the same thing wherever it is loaded.

Pixels: SB3 policies scale ``uint8`` image observations to [0, 1] before the extractor
(``normalize_images=True``, their default); a ``uint8`` tensor given to an extractor directly is
scaled here. Keep ``normalize_images=True``: with ``False`` the frames would arrive as 0…255.

Example (one line per common case, see :func:`policy_kwargs_for`):

>>> import gymnasium as gym, tm_gym
>>> from stable_baselines3 import SAC
>>> from tm_algos.extractors import policy_kwargs_for
>>> env = gym.make("TrackMania-Sim-v0", obs_type="lidar")
>>> model = SAC("MultiInputPolicy", env, policy_kwargs=policy_kwargs_for("lidar"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from tm_algos.errors import InvalidValueError
from tm_gym.core.geometry import LIDAR_BEAMS, LIDAR_RANGE
from tm_gym.core.settings import MAX_GEAR, MAX_RPM, MAX_SPEED_KMH

__all__ = [
    "ARCHS",
    "TELEMETRY_SCALES",
    "PerceptionExtractor",
    "TMCNNExtractor",
    "TMLidarExtractor",
    "TMViTExtractor",
    "TelemetryNorm",
    "policy_kwargs_for",
    "random_shift",
]

TELEMETRY_SCALES: Mapping[str, float] = {
    "speed": MAX_SPEED_KMH,  # km/h; tm-gym's bound (TMRL's speed / 1000)
    "gear": MAX_GEAR,  # tm-gym's top gear
    "rpm": MAX_RPM,  # tm-gym's rpm bound
    "lidar": LIDAR_RANGE,  # metres; tm-gym's LIDAR range
    "progress": 1.0,  # already a fraction
    "actions": 1.0,  # already in [-1, 1]
}
"""Divisors applied to each non-image key: every value lands in about [-1, 1]."""

_ORDER = ("speed", "gear", "rpm", "progress", "actions", "lidar")
ARCHS: Mapping[str, tuple[str, ...]] = {
    "images": ("small", "tmrl", "vit", "perception"),
    "lidar": ("mlp",),
    "lidar_progress": ("mlp",),
}
"""Architectures :func:`policy_kwargs_for` knows, per observation type (the first is the default)."""


def _int_at_least(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _check_dict(space: spaces.Space[Any], who: str) -> spaces.Dict:
    if not isinstance(space, spaces.Dict):
        raise InvalidValueError(
            f"{who} got a {type(space).__name__} observation space; expected the spaces.Dict of a "
            "tm-gym environment (gymnasium.make('TrackMania-Sim-v0', obs_type=...)); use "
            "'MultiInputPolicy' and do not flatten the observations"
        )
    return space


def _need(space: spaces.Dict, key: str, who: str, hint: str) -> spaces.Box:
    if key not in space.spaces:
        raise InvalidValueError(
            f"{who} needs a {key!r} key in the observation space, got keys "
            f"{sorted(space.spaces)}; {hint}"
        )
    sub = space.spaces[key]
    if not isinstance(sub, spaces.Box):
        raise InvalidValueError(
            f"{who}: observation {key!r} is a {type(sub).__name__}; expected a Box"
        )
    return sub


def _image_space(space: spaces.Space[Any], who: str) -> tuple[spaces.Dict, tuple[int, int, int]]:
    d = _check_dict(space, who)
    box = _need(
        d,
        "images",
        who,
        "it reads pixels (obs_type='images'); for LIDAR observations use TMLidarExtractor "
        "(policy_kwargs_for('lidar'))",
    )
    if len(box.shape) != 3:
        raise InvalidValueError(
            f"{who}: 'images' has shape {box.shape}; expected channel-first (C, H, W) frames"
        )
    c, h, w = (int(n) for n in box.shape)
    return d, (c, h, w)


class TelemetryNorm(nn.Module):
    """Scales and flattens every non-image key of a tm-gym observation into one vector.

    Keys are taken in a fixed order (speed, gear, rpm, progress, actions, lidar; the ones the
    space has), each divided by :data:`TELEMETRY_SCALES` and flattened: speed / 1000, gear / 5,
    rpm / 12000, progress and actions as they are, LIDAR metres / 150. Deterministic: no running
    statistics, nothing to save. ``images`` is skipped; an unknown key is an error.
    """

    def __init__(self, observation_space: spaces.Space[Any], exclude: Sequence[str] = ()) -> None:
        super().__init__()
        d = _check_dict(observation_space, "TelemetryNorm")
        unknown = sorted(set(d.spaces) - set(_ORDER) - {"images"})
        if unknown:
            raise InvalidValueError(
                f"TelemetryNorm: unknown observation keys {unknown}; expected keys among "
                f"{[*_ORDER, 'images']} (a tm-gym observation); remove the key with a "
                "gymnasium observation wrapper, or extend the extractor to scale it"
            )
        odd = sorted(set(exclude) - set(_ORDER))
        if isinstance(exclude, str) or odd:
            raise InvalidValueError(
                f"ignore_keys={list(exclude) if not isinstance(exclude, str) else exclude!r}: "
                f"expected a list of telemetry keys among {list(_ORDER)}, e.g. ['actions']"
            )
        self.keys = tuple(k for k in _ORDER if k in d.spaces and k not in exclude)
        self.out_dim = sum(math.prod(_need(d, k, "TelemetryNorm", "").shape) for k in self.keys)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [obs[k].float().flatten(start_dim=1) / TELEMETRY_SCALES[k] for k in self.keys]
        if not parts:
            ref = next(iter(obs.values()))
            return ref.new_zeros((ref.shape[0], 0), dtype=torch.float32)
        return torch.cat(parts, dim=1)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-style augmentation: pad each (C, H, W) image by ``pad`` pixels (edge replicated) and
    crop back to (H, W) at a random offset, independently per sample."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    sy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    sx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (sy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (sx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return xp[bi, :, rows, cols].permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _check_shift(augment_shift: int, who: str) -> int:
    if not _int_at_least(augment_shift, 0):
        raise InvalidValueError(
            f"{who}: augment_shift={augment_shift!r}; expected an integer >= 0 (pixels of "
            "padding for the random-shift augmentation, 4 as in DrQ; 0 turns it off)"
        )
    return augment_shift


_MIN_SIZE = {"tmrl": 50, "small": 36}  # the smallest frames each conv stack accepts


def _conv_stack(arch: str, channels: int) -> nn.Sequential:
    if arch == "tmrl":  # the sizes of TMRL's VanillaCNN
        layers = [(64, 8, 2), (64, 4, 2), (128, 4, 2), (128, 4, 2)]
    elif arch == "small":  # lean and fast: about 5x fewer multiply-adds at 64x64
        layers = [(16, 8, 4), (32, 4, 2), (32, 3, 1)]
    else:
        raise InvalidValueError(f"TMCNNExtractor: arch={arch!r}; expected 'tmrl' or 'small'")
    mods: list[nn.Module] = []
    c = channels
    for out, k, s in layers:
        mods += [nn.Conv2d(c, out, kernel_size=k, stride=s), nn.ReLU()]
        c = out
    mods.append(nn.Flatten())
    return nn.Sequential(*mods)


class TMCNNExtractor(BaseFeaturesExtractor):
    """Convolutional features of the frames, joined with the scaled telemetry and past actions.

    Frames (H stacked grayscale images) go through a conv stack — ``"tmrl"``: TMRL's VanillaCNN
    sizes (64-64-128-128 channels, kernels 8-4-4-4, stride 2); ``"small"``: 16-32-32 channels,
    kernels 8-4-3, strides 4-2-1 — and are flattened (the size found by a dummy forward pass).
    :class:`TelemetryNorm` output (speed, gear, rpm, actions) is concatenated and one linear layer
    with ReLU maps the whole to ``features_dim``.

    ``ignore_keys`` lists telemetry keys the extractor does not read, e.g. ``["actions"]``: a
    student trained by behaviour cloning on its past actions can learn to repeat them instead of
    reading the frames (the "copycat" failure; the pixel generalist preset keeps the actions and
    uses ``imitation.history_dropout`` instead, which cost less lap time in our trials).

    ``augment_shift`` > 0 turns on random-shift augmentation (:func:`random_shift`, pad then
    random crop, as in DrQ) while the module is in training mode only; evaluation and action
    selection in eval mode see the frames unchanged.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        features_dim: int = 256,
        arch: str = "tmrl",
        augment_shift: int = 0,
        ignore_keys: Sequence[str] = (),
    ) -> None:
        who = "TMCNNExtractor"
        d, (c, h, w) = _image_space(observation_space, who)
        if not _int_at_least(features_dim, 1):
            raise InvalidValueError(
                f"{who}: features_dim={features_dim!r}; expected an integer >= 1"
            )
        super().__init__(d, features_dim)
        self.augment_shift = _check_shift(augment_shift, who)
        self.arch = arch
        self.cnn = _conv_stack(arch, c)
        if min(h, w) < _MIN_SIZE[arch]:
            raise InvalidValueError(
                f"{who}: frames of {h}x{w} are too small for arch={arch!r}, which needs at least "
                f"{_MIN_SIZE[arch]}x{_MIN_SIZE[arch]}; use a larger img_size or "
                f"{'arch=small' if arch == 'tmrl' else 'a different extractor'}"
            )
        with torch.no_grad():
            n_flat = int(self.cnn(torch.zeros(1, c, h, w)).shape[1])
        self.telemetry = TelemetryNorm(d, exclude=ignore_keys)
        self.head = nn.Sequential(
            nn.Linear(n_flat + self.telemetry.out_dim, features_dim), nn.ReLU()
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        x = _pixels(observations["images"])
        if self.training and self.augment_shift > 0:
            x = random_shift(x, self.augment_shift)
        z = torch.cat([self.cnn(x), self.telemetry(observations)], dim=1)
        return self.head(z)


class TMViTExtractor(BaseFeaturesExtractor):
    """A small vision transformer: frame patches plus one telemetry token; the output is the
    telemetry token after the encoder (``features_dim = dim``).

    The frames (C, S, S) are cut into ``patch`` × ``patch`` patches embedded to ``dim`` with
    learned position embeddings; the scaled telemetry (:class:`TelemetryNorm`) is projected to one
    more token. ``depth`` pre-norm ``torch.nn.TransformerEncoder`` layers with ``heads`` heads and
    no dropout mix them, and a final LayerNorm is applied to the telemetry token.
    ``augment_shift`` and ``ignore_keys`` work as in :class:`TMCNNExtractor`.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        patch: int = 8,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        augment_shift: int = 0,
        ignore_keys: Sequence[str] = (),
    ) -> None:
        who = "TMViTExtractor"
        d, (c, h, w) = _image_space(observation_space, who)
        for name, v in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
            if not _int_at_least(v, 1):
                raise InvalidValueError(f"{who}: {name}={v!r}; expected an integer >= 1")
        if h % patch or w % patch:
            raise InvalidValueError(
                f"{who}: patch={patch} does not divide the {h}x{w} frames; pick a divisor of the "
                "image size (8 for img_size=64)"
            )
        if dim % heads:
            raise InvalidValueError(f"{who}: dim={dim} is not a multiple of heads={heads}")
        super().__init__(d, dim)
        self.augment_shift = _check_shift(augment_shift, who)
        self.embed = nn.Conv2d(c, dim, kernel_size=patch, stride=patch)
        n_patches = (h // patch) * (w // patch)
        self.pos = nn.Parameter(torch.randn(1, n_patches, dim) * 0.02)
        self.telemetry = TelemetryNorm(d, exclude=ignore_keys)
        self.tel_token = nn.Linear(self.telemetry.out_dim, dim)
        self.tel_pos = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=2 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        x = _pixels(observations["images"])
        if self.training and self.augment_shift > 0:
            x = random_shift(x, self.augment_shift)
        patches = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, dim)
        tel = self.tel_token(self.telemetry(observations)).unsqueeze(1) + self.tel_pos
        tokens = self.encoder(torch.cat([tel, patches], dim=1))
        return self.norm(tokens[:, 0])


class TMLidarExtractor(BaseFeaturesExtractor):
    """An MLP on the flattened LIDAR history (metres / 150), speed, past actions and, with
    ``obs_type="lidar_progress"``, progress (all scaled by :class:`TelemetryNorm`).

    ``hidden`` gives the layer widths (ReLU after each); ``features_dim`` is the last one, or the
    input size when ``hidden`` is empty (the scaled inputs are passed through).
    """

    def __init__(
        self, observation_space: spaces.Space[Any], hidden: Sequence[int] = (256, 256)
    ) -> None:
        who = "TMLidarExtractor"
        d = _check_dict(observation_space, who)
        _need(
            d,
            "lidar",
            who,
            "it reads LIDAR scans (obs_type='lidar' or 'lidar_progress'); for pixel observations "
            "use TMCNNExtractor or TMViTExtractor (policy_kwargs_for('images'))",
        )
        if "images" in d.spaces:
            raise InvalidValueError(
                f"{who}: the observation space has 'images', which this MLP would ignore; use "
                "TMCNNExtractor or TMViTExtractor (policy_kwargs_for('images'))"
            )
        widths = tuple(hidden)
        if any(not _int_at_least(n, 1) for n in widths):
            raise InvalidValueError(
                f"{who}: hidden={hidden!r}; expected a sequence of integers >= 1"
            )
        telemetry = TelemetryNorm(d)
        out = widths[-1] if widths else telemetry.out_dim
        super().__init__(d, out)
        self.telemetry = telemetry
        mods: list[nn.Module] = []
        n = telemetry.out_dim
        for width in widths:
            mods += [nn.Linear(n, width), nn.ReLU()]
            n = width
        self.mlp = nn.Sequential(*mods)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.telemetry(observations))


class PerceptionExtractor(BaseFeaturesExtractor):
    """A trained perception encoder (pixels → LIDAR) on every frame of the stack, then an MLP.

    The encoder (:func:`tm_algos.perception.load_encoder` of ``path``) reads each of the ``H``
    frames; ``features="lidar"`` keeps its predicted scans (``H × 19`` values, metres / 150),
    ``features="trunk"`` the trunk's hidden layer (``H × hidden`` values). They are joined with
    the scaled telemetry and past actions (:class:`TelemetryNorm`) and go through an MLP of
    widths ``hidden`` (ReLU), as :class:`TMLidarExtractor` does with exact scans;
    ``features_dim``, when given (presets such as ``images-sac`` set it), replaces the last
    width, so ``features_dim`` is the output size.

    ``freeze=True`` (default) keeps the encoder's weights fixed: they get no gradient and the
    encoder stays in evaluation mode; ``freeze=False`` fine-tunes it with the rest of the
    network. Either way its weights are part of the policy's state, so an exported policy
    carries them; rebuilding the policy reads ``path`` again for the encoder's shape, so keep
    the encoder directory with the policy.

    Raises:
        InvalidValueError: no ``images`` key, frames that do not fit the encoder, or a bad
            setting; ``EncoderFileError`` when ``path`` is not a saved encoder.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        path: str = "",
        freeze: bool = True,
        features: str = "lidar",
        hidden: Sequence[int] = (256, 256),
        features_dim: int | None = None,
        ignore_keys: Sequence[str] = (),
    ) -> None:
        from tm_algos.perception import load_encoder

        who = "PerceptionExtractor"
        d, (c, h, w) = _image_space(observation_space, who)
        if not path:
            raise InvalidValueError(
                f"{who}: path={path!r}; give the directory of a trained encoder "
                "([policy.extractor_kwargs] path = 'runs/perception/encoder', written by "
                "benchmarks/perception.py or tm_algos.perception.save_encoder)"
            )
        if not isinstance(freeze, bool):
            raise InvalidValueError(f"{who}: freeze={freeze!r}; expected true or false")
        if features not in ("lidar", "trunk"):
            raise InvalidValueError(f"{who}: features={features!r}; expected 'lidar' or 'trunk'")
        widths = tuple(hidden)
        if features_dim is not None:
            widths = (*widths[:-1], features_dim)
        if any(not _int_at_least(n, 1) for n in widths):
            raise InvalidValueError(
                f"{who}: hidden={hidden!r}, features_dim={features_dim!r}; expected integers >= 1"
            )
        encoder = load_encoder(path)
        cfg = encoder.config
        if c % cfg.channels or (h, w) != (cfg.img_size, cfg.img_size):
            raise InvalidValueError(
                f"{who}: frames of shape {(c, h, w)}; the encoder at {path!r} reads "
                f"{cfg.channels}-channel {cfg.img_size}x{cfg.img_size} frames: set "
                f"img_size={cfg.img_size}, grayscale={cfg.channels == 1}"
            )
        telemetry = TelemetryNorm(d, exclude=ignore_keys)
        per_frame = LIDAR_BEAMS if features == "lidar" else encoder.features_dim
        n_in = (c // cfg.channels) * per_frame + telemetry.out_dim
        super().__init__(d, widths[-1] if widths else n_in)
        self.encoder = encoder
        self.frame_channels = cfg.channels
        self.freeze = freeze
        self.feature_kind = features
        self.telemetry = telemetry
        if freeze:
            self.encoder.requires_grad_(False)
        mods: list[nn.Module] = []
        n = n_in
        for width in widths:
            mods += [nn.Linear(n, width), nn.ReLU()]
            n = width
        self.mlp = nn.Sequential(*mods)

    def train(self, mode: bool = True) -> PerceptionExtractor:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def _per_frame(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        frames = _pixels(images).reshape(b * (c // self.frame_channels), self.frame_channels, h, w)
        z = self.encoder.features(frames)
        if self.feature_kind == "lidar":
            z = self.encoder.head(z) / LIDAR_RANGE
        return z.reshape(b, -1)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.freeze:
            with torch.no_grad():
                seen = self._per_frame(observations["images"])
        else:
            seen = self._per_frame(observations["images"])
        return self.mlp(torch.cat([seen, self.telemetry(observations)], dim=1))


def policy_kwargs_for(
    obs_type: str, arch: str | None = None, **extractor_kwargs: Any
) -> dict[str, Any]:
    """``policy_kwargs`` for SB3 / sb3-contrib with the right extractor for ``obs_type``.

    ``arch``: ``"small"`` (default), ``"tmrl"``, ``"vit"`` or ``"perception"`` (give
    ``path=`` the trained encoder's directory) for ``"images"``; ``"mlp"``
    (default) for ``"lidar"`` and ``"lidar_progress"``. ``extractor_kwargs`` go to the extractor
    (e.g. ``augment_shift=4``, ``features_dim=128``, ``hidden=(128, 128)``).
    Works with ``"MultiInputPolicy"`` (SAC, TQC, PPO) and ``"MultiInputLstmPolicy"``
    (RecurrentPPO: the CNN-LSTM path, the LSTM on top of the extractor). sb3-contrib 2.9's CrossQ
    builds with these kwargs (pass ``CrossQPolicy`` itself, it has no "MultiInputPolicy") but its
    training step cannot take Dict observations yet.

    >>> policy_kwargs_for("images", "small", augment_shift=4)["features_extractor_kwargs"]
    {'arch': 'small', 'augment_shift': 4}
    """
    if obs_type not in ARCHS:
        raise InvalidValueError(f"obs_type={obs_type!r}: expected one of {list(ARCHS)}")
    choices = ARCHS[obs_type]
    a = choices[0] if arch is None else arch
    if a not in choices:
        raise InvalidValueError(
            f"arch={a!r} does not fit obs_type={obs_type!r}; expected one of {list(choices)}"
        )
    cls: type[BaseFeaturesExtractor]
    kwargs: dict[str, Any] = {}
    if a in ("small", "tmrl"):
        cls, kwargs = TMCNNExtractor, {"arch": a}
    elif a == "vit":
        cls = TMViTExtractor
    elif a == "perception":
        cls = PerceptionExtractor
    else:
        cls = TMLidarExtractor
    kwargs.update(extractor_kwargs)
    return {"features_extractor_class": cls, "features_extractor_kwargs": kwargs}
