"""Seeded procedural tracks, for training policies that generalise beyond the built-in ones.

``generate_track(seed)`` lays straights and turns end to end (turn angles 25°–160° either way,
radii 30–220 m, straights 40–260 m, width 14–24 m) until the track is 900–1,900 m long, and
rejects layouts whose road overlaps itself, trying again deterministically. The same seed always
gives the same track. ``load_track("gen:SEED")`` is the same as ``generate_track(SEED)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tm_gym.error import TrackFormatError
from tm_gym.sim.track import FORMAT, Track, track_from_dict

__all__ = ["generate_track", "generate_track_dict"]

_MAX_ATTEMPTS = 200


def generate_track_dict(
    seed: int, *, min_length: float = 900.0, max_length: float = 1900.0
) -> dict[str, Any]:
    """The JSON description of procedural track ``seed`` (validated by :func:`generate_track`)."""
    if not 200.0 <= min_length < max_length:
        raise ValueError(
            f"min_length={min_length}, max_length={max_length}: expected "
            "200 <= min_length < max_length"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A7]))
    width = float(rng.uniform(14.0, 24.0))
    target = float(rng.uniform(min_length, max_length))
    segs: list[dict[str, float]] = [{"straight": round(float(rng.uniform(80.0, 200.0)), 1)}]
    length = segs[0]["straight"]
    last_sign = 0.0
    while length < target:
        sign = -last_sign if last_sign and rng.random() < 0.65 else float(rng.choice([-1, 1]))
        angle = float(rng.uniform(25.0, 160.0))
        radius = float(rng.uniform(max(30.0, width / 2 + 8.0), 220.0))
        segs.append({"turn": round(sign * angle, 1), "radius": round(radius, 1)})
        straight = float(rng.uniform(40.0, 260.0))
        segs.append({"straight": round(straight, 1)})
        length += np.radians(angle) * radius + straight
        last_sign = sign
    segs.append({"straight": 60.0})  # run-off after the finish
    finish = length + 30.0
    n_cp = max(1, int(finish // 350))
    cps = [round(10.0 + (finish - 10.0) * (k + 1) / (n_cp + 1), 1) for k in range(n_cp)]
    return {
        "format": FORMAT,
        "name": f"gen:{int(seed)}",
        "description": f"Procedural track, seed {int(seed)}.",
        "width": round(width, 1),
        "segments": segs,
        "start": 10.0,
        "checkpoints": cps,
        "finish": round(finish, 1),
    }


def generate_track(seed: int) -> Track:
    """A procedural track; the same seed always gives the same track."""
    last_error: TrackFormatError | None = None
    for attempt in range(_MAX_ATTEMPTS):
        data = generate_track_dict(int(seed) * _MAX_ATTEMPTS + attempt)
        data["name"] = f"gen:{int(seed)}"
        data["description"] = f"Procedural track, seed {int(seed)}."
        try:
            return track_from_dict(data, f"generated track gen:{seed}")
        except TrackFormatError as e:  # overlapping layout: try the next candidate
            last_error = e
    raise TrackFormatError(
        f"could not generate a non-overlapping track for seed {seed} in "
        f"{_MAX_ATTEMPTS} attempts: {last_error}"
    )
