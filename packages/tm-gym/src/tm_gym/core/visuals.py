"""How the simulator's world looks: colours, brightness and the chase camera, fixed or drawn.

* :class:`Visuals` — one look: the colours of the sky, grass, road and track borders, an overall
  brightness factor, and the chase camera's height, pitch and field of view. The defaults are
  the simulator's standard look (the camera of :class:`~tm_gym.core.geometry.CameraSpec`), so
  ``Visuals()`` renders exactly the frames of an environment made without ``visuals``.
* :class:`VisualRanges` — ranges to draw looks from (visual domain randomisation): each field
  is ``(low, high)`` or ``None`` (not drawn); :data:`DEFAULT_VISUAL_RANGES` are the ranges
  ``visuals="random"`` uses.
* :class:`VisualsSpec` — what an environment's ``visuals=`` argument means: a fixed base look
  and, optionally, ranges drawn from at every reset. :meth:`VisualsSpec.parse` reads every
  accepted spelling (``None``, a :class:`Visuals`, a :class:`VisualRanges`, ``"random"``, or a
  mapping of fixed keys plus an optional ``"random"`` key).

Everything is validated on construction: an unknown key, a value of the wrong type or out of
range raises :class:`~tm_gym.core.config.ConfigError` naming the key, the value and what is
allowed::

    >>> Visuals(brightness=0.0)
    Traceback (most recent call last):
    ...
    tm_gym.core.config.ConfigError: Visuals.brightness: got 0.0 (float), expected a number from 0 (excluded) to 4 (1.0 = the standard look).

The palette a look implies (two grass tones, two road tones, the haze over distant ground, the
sky's gradient) is derived in :mod:`tm_gym.sim.raster` and :mod:`tm_gym.sim.camera`; this module
holds only the numbers, so it needs no simulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tm_gym.core.config import ConfigError, Rule, check_table, rules_of, setting, validate
from tm_gym.core.geometry import CameraSpec

__all__ = [
    "DEFAULT_VISUAL_RANGES",
    "RGB",
    "VISUAL_KEYS",
    "VisualRanges",
    "Visuals",
    "VisualsSpec",
]

RGB = tuple[int, int, int]
"""A colour: red, green, blue, each a whole number from 0 to 255."""

_CAMERA = CameraSpec()


def _is_rgb(value: Any) -> bool:
    return len(value) == 3


_RGB_RULE = Rule(
    "ints", low=0, high=255, check_fn=_is_rgb, hint="an RGB triple, e.g. [40, 60, 200]"
)
_SKY_HORIZON_RULE = Rule(
    "ints",
    optional=True,
    low=0,
    high=255,
    check_fn=_is_rgb,
    hint="an RGB triple; none = sky lightened like the standard sky",
)
_BRIGHTNESS_RULE = Rule("float", low=0.0, low_open=True, high=4.0, hint="1.0 = the standard look")
_HEIGHT_RULE = Rule("float", low=0.5, high=30.0, hint="metres above the ground")
_PITCH_RULE = Rule("float", low=-30.0, high=89.0, hint="degrees below the horizon")
_FOV_RULE = Rule(
    "float",
    low=10.0,
    low_open=True,
    high=170.0,
    check_fn=lambda v: v < 170.0,
    hint="horizontal, degrees; 170 excluded",
)


@dataclass(frozen=True)
class Visuals:
    """One look of the simulated world; validated on construction (see the module docstring).

    Colours are RGB triples of whole numbers 0–255 (lists are accepted and stored as tuples).
    ``grass`` and ``road`` are the first of the two alternating tones of each; the second tone
    (and, for grass, the haze over distant ground) keeps its standard offset from it.
    ``sky`` is the colour at the top of the window; towards the horizon it lightens to
    ``sky_horizon`` (default: ``sky`` plus the standard sky's lightening, (115, 85, 30),
    clipped to 255). ``brightness`` multiplies every colour (sky, ground, borders, car) before
    the conversion to grayscale. The camera fields replace those of the simulator's
    :class:`~tm_gym.core.geometry.CameraSpec` (``height``, ``pitch_deg``, ``hfov_deg``).

    Keep ``border_dark`` darker than (55, 55, 55) and every other colour lighter in some channel
    if frames are read by the pixel LIDAR (:func:`tm_gym.preprocess.pixel_lidar`): it finds the
    borders by that threshold. :data:`DEFAULT_VISUAL_RANGES` respects it.
    """

    sky: RGB = setting((70, 130, 210), _RGB_RULE, "colour at the top of the sky")
    sky_horizon: RGB | None = setting(None, _SKY_HORIZON_RULE, "sky colour at the horizon")
    grass: RGB = setting((78, 148, 62), _RGB_RULE, "grass (first checkerboard tone)")
    road: RGB = setting((112, 112, 118), _RGB_RULE, "road surface (first tone)")
    border_dark: RGB = setting((12, 12, 12), _RGB_RULE, "track borders and dark wall stripes")
    border_light: RGB = setting((235, 235, 235), _RGB_RULE, "light wall stripes")
    brightness: float = setting(1.0, _BRIGHTNESS_RULE, "factor on every colour")
    camera_height_m: float = setting(_CAMERA.height, _HEIGHT_RULE, "camera height, metres")
    camera_pitch_deg: float = setting(_CAMERA.pitch_deg, _PITCH_RULE, "camera pitch, degrees")
    fov_deg: float = setting(_CAMERA.hfov_deg, _FOV_RULE, "horizontal field of view, degrees")

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "visuals") -> Visuals:
        """A look from a mapping of field names to values; an unknown key is an error listing
        the known ones."""
        checked = check_table(data, rules_of(cls), where)
        return cls(**checked)

    @classmethod
    def from_assignments(cls, items: Sequence[str], where: str = "--visuals") -> Visuals:
        """A look from ``KEY=VALUE`` texts (``sky=40,60,200``, ``brightness=0.8``), as given on
        a command line; colours are three comma-separated numbers or a list ``[40, 60, 200]``."""
        rules = rules_of(cls)
        values: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(
                    f"{where}: {item!r} is not KEY=VALUE, e.g. sky=40,60,200 or brightness=0.8."
                )
            if key not in rules:
                raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(rules)}.")
            values[key] = rules[key].parse(text, f"{where} {key}")
        return cls(**values)

    def camera(self, base: CameraSpec | None = None) -> CameraSpec:
        """``base`` (default :class:`~tm_gym.core.geometry.CameraSpec`) with this look's
        height, pitch and field of view."""
        spec = _CAMERA if base is None else base
        return dataclasses.replace(
            spec,
            height=self.camera_height_m,
            pitch_deg=self.camera_pitch_deg,
            hfov_deg=self.fov_deg,
        )


VISUAL_KEYS: tuple[str, ...] = tuple(rules_of(Visuals))
"""The names of :class:`Visuals`' fields, the keys a ``visuals`` mapping may hold."""

_COLOUR_KEYS = frozenset(k for k, r in rules_of(Visuals).items() if r.kind == "ints")


def _range_rule(key: str) -> Rule:
    hint = (
        "a pair [[r, g, b], [r, g, b]]: the lowest and highest value of each channel"
        if key in _COLOUR_KEYS
        else "a pair [low, high]"
    )
    return Rule("any", hint=hint, check_fn=lambda v: isinstance(v, list | tuple) and len(v) == 2)


@dataclass(frozen=True)
class VisualRanges:
    """Ranges to draw a :class:`Visuals` from; ``None`` leaves that field at its base value.

    A number field is ``(low, high)``, drawn uniformly; a colour field is ``((r, g, b),
    (r, g, b))``, the lowest and highest value of each channel, each channel drawn uniformly
    and independently among the whole numbers in between (both ends included). Both ends
    must be valid values of the field (the rules of :class:`Visuals`) and ``low <= high``.
    ``VisualRanges()`` draws nothing; :data:`DEFAULT_VISUAL_RANGES` holds the documented
    default ranges.
    """

    sky: tuple[RGB, RGB] | None = None
    sky_horizon: tuple[RGB, RGB] | None = None
    grass: tuple[RGB, RGB] | None = None
    road: tuple[RGB, RGB] | None = None
    border_dark: tuple[RGB, RGB] | None = None
    border_light: tuple[RGB, RGB] | None = None
    brightness: tuple[float, float] | None = None
    camera_height_m: tuple[float, float] | None = None
    camera_pitch_deg: tuple[float, float] | None = None
    fov_deg: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        rules = {**rules_of(Visuals), "sky_horizon": _RGB_RULE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            where = f"VisualRanges.{f.name}"
            _range_rule(f.name).check(value, where)
            low, high = (rules[f.name].check(end, where) for end in value)
            if rules[f.name].kind == "ints":
                ok = all(lo <= hi for lo, hi in zip(low, high, strict=True))
            else:
                ok = low <= high
            if not ok:
                raise ConfigError(
                    f"{where}: got {value!r}, expected low <= high"
                    + (" in every channel" if rules[f.name].kind == "ints" else "")
                    + "; swap the two ends."
                )
            object.__setattr__(self, f.name, (low, high))

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], where: str = "visuals['random']"
    ) -> VisualRanges:
        """Ranges from a mapping of field names to ``[low, high]``; unknown keys are errors."""
        rules = {f.name: _range_rule(f.name) for f in dataclasses.fields(cls)}
        checked = check_table(data, rules, where)
        try:
            return cls(**checked)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("VisualRanges.", f"{where}.", 1)) from None

    @property
    def keys(self) -> tuple[str, ...]:
        """The fields that are drawn."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def sample(self, rng: np.random.Generator, base: Visuals | None = None) -> Visuals:
        """A look drawn from these ranges with ``rng``; the fields without a range are those of
        ``base`` (default :class:`Visuals`). Fields are drawn in declaration order, so a seeded
        ``rng`` gives the same look."""
        changes: dict[str, Any] = {}
        for key in self.keys:
            low, high = getattr(self, key)
            if key in _COLOUR_KEYS:
                drawn = rng.integers(np.asarray(low), np.asarray(high), endpoint=True)
                changes[key] = tuple(int(c) for c in drawn)
            else:
                changes[key] = float(rng.uniform(low, high))
        return dataclasses.replace(Visuals() if base is None else base, **changes)


DEFAULT_VISUAL_RANGES = VisualRanges(
    sky=((40, 80, 150), (150, 200, 255)),
    grass=((40, 110, 30), (130, 190, 110)),
    road=((85, 85, 85), (150, 150, 160)),
    border_dark=((0, 0, 0), (40, 40, 40)),
    border_light=((190, 190, 190), (255, 255, 255)),
    brightness=(0.75, 1.3),
    camera_height_m=(2.2, 3.0),
    camera_pitch_deg=(7.0, 11.0),
    fov_deg=(80.0, 100.0),
)
"""The ranges of ``visuals="random"``: blue-ish skies, green-to-olive grass, gray roads, dark
borders and light stripes, brightness 0.75–1.3, the camera 2.2–3.0 m high, pitched 7–11°, with
an 80–100° field of view (standard look: 2.6 m, 9°, 90°). Borders stay darker than (55, 55, 55)
and everything else lighter in some channel at every brightness drawn, as the pixel LIDAR needs.
"""


@dataclass(frozen=True)
class VisualsSpec:
    """An environment's ``visuals`` argument, read: a base look and optional ranges.

    ``ranges`` is None for a fixed look (``base`` for every car and episode); otherwise each
    reset of a car draws a new look from ``ranges`` with the environment's seeded random
    generator, the fields without a range keeping ``base``'s values.
    """

    base: Visuals = dataclasses.field(default_factory=Visuals)
    ranges: VisualRanges | None = None

    @property
    def random(self) -> bool:
        """Whether looks are drawn at each reset."""
        return self.ranges is not None and bool(self.ranges.keys)

    def draw(self, rng: np.random.Generator) -> Visuals:
        """The look of a car being reset: drawn from the ranges with ``rng``, or the base."""
        if self.ranges is None or not self.ranges.keys:
            return self.base
        return self.ranges.sample(rng, self.base)

    @classmethod
    def parse(cls, value: Any, where: str = "visuals") -> VisualsSpec:
        """Read every spelling of the ``visuals`` argument.

        * ``None`` or ``{}``: the standard look;
        * a :class:`Visuals`: that fixed look; a mapping of :class:`Visuals` field names to
          values: the standard look with those values;
        * ``"random"``: a new look at every reset from :data:`DEFAULT_VISUAL_RANGES`;
        * a :class:`VisualRanges`: a new look at every reset from those ranges (the other
          fields at their standard values);
        * a mapping with a ``"random"`` key: its other keys fix values, and ``"random"`` is
          ``"default"`` (:data:`DEFAULT_VISUAL_RANGES`), a :class:`VisualRanges` or a mapping
          of field names to ranges, e.g. ``{"sky": [40, 60, 200], "random": {"brightness":
          [0.6, 1.4]}}``. A field both fixed and drawn is drawn.

        Raises:
            ConfigError: naming the key, the value received and what is allowed.
        """
        if value is None:
            return cls()
        if isinstance(value, VisualsSpec):
            return value
        if isinstance(value, Visuals):
            return cls(base=value)
        if isinstance(value, VisualRanges):
            return cls(ranges=value)
        if isinstance(value, str):
            if value.strip().lower() == "random":
                return cls(ranges=DEFAULT_VISUAL_RANGES)
            raise ConfigError(
                f"{where}: got {value!r}, expected None, 'random', a Visuals, a VisualRanges, "
                "or a mapping such as {'sky': [40, 60, 200], 'brightness': 0.8}."
            )
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: got {value!r} ({type(value).__name__}), expected None, 'random', a "
                "Visuals, a VisualRanges, or a mapping such as {'brightness': 0.8}."
            )
        fixed = {k: v for k, v in value.items() if k != "random"}
        base = Visuals.from_mapping(fixed, where)
        if "random" not in value:
            return cls(base=base)
        return cls(base=base, ranges=_ranges_of(value["random"], f"{where}['random']"))


def _ranges_of(value: Any, where: str) -> VisualRanges:
    if isinstance(value, VisualRanges):
        return value
    if isinstance(value, str) and value.strip().lower() == "default":
        return DEFAULT_VISUAL_RANGES
    if isinstance(value, Mapping):
        return VisualRanges.from_mapping(value, where)
    raise ConfigError(
        f"{where}: got {value!r} ({type(value).__name__}), expected 'default', a VisualRanges or "
        "a mapping of keys to [low, high], e.g. {'brightness': [0.6, 1.4]}."
    )
