"""Tracks: the JSON file format, validation and the geometry the simulator needs.

Track file format (``tm-gym-track/1``), a JSON object with these keys:

=================  ========================================================================
key                meaning
=================  ========================================================================
``format``         the string ``"tm-gym-track/1"`` (required)
``name``           short identifier, letters/digits/``-_`` (required)
``description``    free text (optional)
``width``          road width from wall to wall in metres, 8…80 (default 20)
``centerline``     list of ``[x, y]`` points in metres (x east, y north), at least 2; the
                   road follows the polyline through them. Optional ``widths``: one width per
                   point, interpolated in between.
``segments``       alternative to ``centerline``: a list of pieces laid end to end from
                   ``origin`` (``[x, y]``, default ``[0, 0]``) and ``heading`` (degrees,
                   counter-clockwise from east, default 0): ``{"straight": length_m}`` or
                   ``{"turn": angle_deg, "radius": r_m}`` (angle > 0 turns left, < 0 right).
                   Any piece may carry ``"width"``; widths are interpolated between pieces.
``start``          distance along the centre line where the car starts, metres (default 10)
``checkpoints``    increasing distances along the centre line, between start and finish
``finish``         distance of the finish line along the centre line (default: length − 30)
=================  ========================================================================

The road continues past the finish line to the end of the centre line (a run-off), and walls
close both ends. Unknown keys are rejected so typos do not pass silently.

Size limits, checked before any expensive work (a track file is untrusted input: a JSON text
nested 100,000 deep or listing 200,000 pieces must be refused at once, not crash the parser or
resample for minutes). A valid track nests 3 levels deep (object, list, piece) and the largest
generated tracks are 2 km long; each limit leaves a wide margin above that:

=============================  ==============  ============================================
limit                          value           what it bounds
=============================  ==============  ============================================
:data:`MAX_TRACK_BYTES`        16 MiB          the JSON file (bytes) or text (characters)
:data:`MAX_NESTING`            8               nesting depth of lists and objects
:data:`MAX_SEGMENTS`           20,000          pieces in ``segments``
:data:`MAX_POINTS`             100,000         points in ``centerline`` (and ``widths``)
:data:`MAX_CHECKPOINTS`        1,000           entries in ``checkpoints``
:data:`MAX_TRACK_LENGTH`       50,000 m        length of the whole centre line
=============================  ==============  ============================================

Geometry is resampled every :data:`SAMPLE_SPACING` metres; distances "along the centre line" are
arc lengths of that resampled line, starting at 0 at its first point.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tm_gym.error import TrackFormatError

__all__ = [
    "BORDER_WIDTH",
    "FORMAT",
    "MAX_CHECKPOINTS",
    "MAX_NESTING",
    "MAX_POINTS",
    "MAX_SEGMENTS",
    "MAX_TRACK_BYTES",
    "MAX_TRACK_LENGTH",
    "SAMPLE_SPACING",
    "Track",
    "track_from_dict",
    "track_from_json",
]

FORMAT = "tm-gym-track/1"
SAMPLE_SPACING = 0.5
"""Distance between two resampled centre-line points, metres."""
BORDER_WIDTH = 0.8
"""Width of the black border band painted inside each wall, metres."""
MIN_WIDTH, MAX_WIDTH = 8.0, 80.0
MAX_TRACK_BYTES = 16 * 1024 * 1024
"""Largest track file in bytes (or JSON text in characters) that is parsed at all."""
MAX_NESTING = 8
"""Deepest nesting of JSON lists and objects accepted (a valid track needs 3)."""
MAX_SEGMENTS = 20_000
"""Most pieces in ``segments``."""
MAX_POINTS = 100_000
"""Most points in ``centerline`` (and numbers in ``widths``)."""
MAX_CHECKPOINTS = 1_000
"""Most entries in ``checkpoints``."""
MAX_TRACK_LENGTH = 50_000.0
"""Longest centre line in metres (the self-overlap check grows with its square)."""
_MAX_NODES = 4 * MAX_POINTS + 8 * MAX_SEGMENTS + MAX_CHECKPOINTS + 64
"""Most lists, objects and values a description may hold (what the limits above allow)."""
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TOP_KEYS = {
    "format",
    "name",
    "description",
    "width",
    "widths",
    "centerline",
    "segments",
    "origin",
    "heading",
    "start",
    "checkpoints",
    "finish",
}

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Track:
    """A validated track with resampled geometry.

    Attributes:
        name: identifier of the track.
        description: free text.
        centerline: (M, 2) centre-line points every :data:`SAMPLE_SPACING` metres.
        widths: (M,) road width (wall to wall) at each point, metres.
        start_s: arc length of the start position.
        finish_s: arc length of the finish line.
        checkpoints_s: (K,) arc lengths of the checkpoints, increasing.
        source: the JSON-compatible description it was built from (for saving).
    """

    name: str
    description: str
    centerline: FloatArray
    widths: FloatArray
    start_s: float
    finish_s: float
    checkpoints_s: FloatArray
    source: dict[str, Any] = field(repr=False)

    # -- derived geometry -------------------------------------------------------------------
    @cached_property
    def s(self) -> FloatArray:
        """(M,) arc length at each centre-line point."""
        seg = np.linalg.norm(np.diff(self.centerline, axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(seg)])

    @cached_property
    def tangents(self) -> FloatArray:
        """(M, 2) unit tangents (direction of travel)."""
        g = np.gradient(self.centerline, axis=0)
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    @cached_property
    def normals(self) -> FloatArray:
        """(M, 2) unit normals pointing to the left of the direction of travel."""
        t = self.tangents
        return np.stack([-t[:, 1], t[:, 0]], axis=1)

    @property
    def left_border(self) -> FloatArray:
        """(M, 2) left wall line."""
        return self.centerline + self.normals * (self.widths[:, None] / 2)

    @property
    def right_border(self) -> FloatArray:
        """(M, 2) right wall line."""
        return self.centerline - self.normals * (self.widths[:, None] / 2)

    @property
    def length(self) -> float:
        """Racing distance from the start to the finish line, metres."""
        return float(self.finish_s - self.start_s)

    @property
    def total_length(self) -> float:
        """Length of the whole centre line including run-in and run-off, metres."""
        return float(self.s[-1])

    def point_at(self, s: float | FloatArray) -> FloatArray:
        """Centre-line position at arc length(s) ``s`` (linear interpolation)."""
        s_arr = np.asarray(s, dtype=np.float64)
        x = np.interp(s_arr, self.s, self.centerline[:, 0])
        y = np.interp(s_arr, self.s, self.centerline[:, 1])
        return np.stack([x, y], axis=-1)

    def heading_at(self, s: float) -> float:
        """Direction of travel at arc length ``s``, radians counter-clockwise from east."""
        i = int(np.clip(np.searchsorted(self.s, s), 0, len(self.s) - 1))
        t = self.tangents[i]
        return float(math.atan2(t[1], t[0]))

    @property
    def start_xy(self) -> FloatArray:
        return self.point_at(self.start_s)

    @property
    def finish_xy(self) -> FloatArray:
        return self.point_at(self.finish_s)

    @property
    def checkpoints_xy(self) -> FloatArray:
        return self.point_at(self.checkpoints_s).reshape(-1, 2)

    @cached_property
    def curvature(self) -> FloatArray:
        """(M,) signed curvature (1/m, > 0 turning left), smoothed over about 4 m."""
        t = self.tangents
        ang = np.unwrap(np.arctan2(t[:, 1], t[:, 0]))
        k = np.gradient(ang, self.s)
        win = max(1, round(4.0 / SAMPLE_SPACING))
        kernel = np.ones(win) / win
        return np.convolve(k, kernel, mode="same")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-compatible description (the same one it was loaded from)."""
        return json.loads(json.dumps(self.source))

    def save(self, path: str | Path) -> Path:
        """Write the track as a JSON file readable by :func:`load_track`."""
        p = Path(path)
        p.write_text(json.dumps(self.source, indent=1) + "\n", encoding="utf-8")
        return p


# --------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------
def _err(where: str, msg: str) -> TrackFormatError:
    return TrackFormatError(f"{where}: {msg}")


def _number(where: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(where, f"expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise _err(where, f"expected a finite number, got {value!r}")
    if lo is not None and v < lo:
        raise _err(where, f"{v:g} is below the minimum {lo:g}")
    if hi is not None and v > hi:
        raise _err(where, f"{v:g} is above the maximum {hi:g}")
    return v


def _nesting_of_json(text: str) -> int:
    """The deepest nesting of lists and objects in JSON ``text``, found without parsing it.

    Exact for valid JSON (brackets inside strings are skipped); for invalid JSON it is only an
    estimate, and the parser reports the syntax error afterwards.
    """
    bare = _JSON_STRING_RE.sub('""', text).encode("utf-8", "replace")
    b = np.frombuffer(bare, dtype=np.uint8)
    opens = ((b == 0x5B) | (b == 0x7B)).astype(np.int64)
    closes = ((b == 0x5D) | (b == 0x7D)).astype(np.int64)
    return int(np.cumsum(opens - closes).max(initial=0))


def _check_nesting(origin: str, data: Any) -> None:
    """Refuse a description nested deeper than :data:`MAX_NESTING` or with too many values.

    Walks the lists and objects with an explicit stack (never recursion), so a hostile
    description cannot raise :class:`RecursionError` here or later in an error message.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        obj, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            raise _err(
                origin,
                f"the description holds more than {_MAX_NODES:,} values; the limits are "
                f"{MAX_SEGMENTS:,} pieces or {MAX_POINTS:,} points — is this a track?",
            )
        if not isinstance(obj, (dict, list, tuple)):
            continue
        if depth > MAX_NESTING:
            raise _err(
                origin,
                f"lists and objects are nested more than {MAX_NESTING} deep; a track needs "
                "only 3 (the object, its lists, their pieces or points) — is this a track?",
            )
        children = obj.values() if isinstance(obj, dict) else obj
        stack.extend((child, depth + 1) for child in children)


_COUNT_LIMITS = (
    ("segments", MAX_SEGMENTS, "pieces", "merge consecutive pieces into longer ones"),
    ("centerline", MAX_POINTS, "points", "resample it more coarsely (tm-gym uses 0.5 m)"),
    ("widths", MAX_POINTS, "widths", "give one width per centerline point"),
    ("checkpoints", MAX_CHECKPOINTS, "checkpoints", "use fewer checkpoints"),
)


def _check_counts(origin: str, data: dict[str, Any]) -> None:
    """Refuse lists longer than their documented limit, before any of them is read."""
    for key, limit, what, fix in _COUNT_LIMITS:
        value = data.get(key)
        if isinstance(value, list) and len(value) > limit:
            raise _err(
                f"{origin}: {key}",
                f"{len(value):,} {what}, more than the limit of {limit:,}; {fix}",
            )


def _metres(x: float) -> str:
    """``x`` for a message: with thousands separators, or in e-notation when enormous."""
    return f"{x:,.0f}" if x < 1e15 else f"{x:.3g}"


def _check_room(where: str, piece: float, room: float) -> None:
    """Refuse a piece ``piece`` metres long when only ``room`` metres of track are left."""
    if piece > room:
        raise _err(
            where,
            f"this {_metres(piece)} m piece takes the centre line past the limit of "
            f"{MAX_TRACK_LENGTH:,.0f} m (it is {MAX_TRACK_LENGTH - room:,.0f} m long before "
            "it); shorten the pieces or split the track",
        )


def _segments_to_polyline(
    origin: str, segs: Any, x0: float, y0: float, heading_deg: float, default_width: float
) -> tuple[FloatArray, FloatArray]:
    """Lay the pieces ``segs`` end to end from (x0, y0): the centre-line points and widths."""
    if not isinstance(segs, list) or not segs:
        raise _err(f"{origin}: segments", "expected a non-empty list of pieces")
    pts: list[tuple[float, float]] = [(x0, y0)]
    widths: list[float] = []
    h = math.radians(heading_deg)
    w_prev = default_width
    room = MAX_TRACK_LENGTH
    for i, seg in enumerate(segs):
        where = f"{origin}: segments[{i}]"
        if not isinstance(seg, dict):
            raise _err(where, f"expected an object like {{'straight': 100}}, got {seg!r}")
        unknown = set(seg) - {"straight", "turn", "radius", "width"}
        if unknown:
            raise _err(
                where, f"unknown key(s) {sorted(unknown)}; allowed: straight, turn, radius, width"
            )
        w = _number(f"{where}.width", seg.get("width", w_prev), MIN_WIDTH, MAX_WIDTH)
        if "straight" in seg:
            room -= _lay_straight(where, seg, pts, h, room)
        elif "turn" in seg:
            h, piece = _lay_turn(where, seg, pts, h, w, room)
            room -= piece
        else:
            raise _err(where, "expected 'straight' or 'turn'")
        # one width per point added by this piece, ramping from the previous width
        n_new = len(pts) - 1 - len(widths)
        widths.extend(np.linspace(w_prev, w, n_new + 1)[1:].tolist())
        w_prev = w
    widths.insert(0, widths[0] if widths else default_width)
    return np.asarray(pts, dtype=np.float64), np.asarray(widths, dtype=np.float64)


def _lay_straight(
    where: str, seg: dict[str, Any], pts: list[tuple[float, float]], h: float, room: float
) -> float:
    """Append the points of the straight piece ``seg`` (every 2 m at most), heading ``h``.

    Returns its length; refuses it when longer than ``room`` (metres of track left).
    """
    if "turn" in seg or "radius" in seg:
        raise _err(where, "a piece is either {'straight': L} or {'turn': A, 'radius': R}")
    length = _number(f"{where}.straight", seg["straight"], 1.0, 10_000.0)
    _check_room(where, length, room)
    x, y = pts[-1]
    n = max(1, math.ceil(length / 2.0))
    for k in range(1, n + 1):
        d = length * k / n
        pts.append((x + d * math.cos(h), y + d * math.sin(h)))
    return length


def _lay_turn(
    where: str,
    seg: dict[str, Any],
    pts: list[tuple[float, float]],
    h: float,
    w: float,
    room: float,
) -> tuple[float, float]:
    """Append the points of the turn ``seg`` (road ``w`` m wide) from heading ``h``.

    Returns the heading (radians) at the end of the turn and the turn's length; refuses the
    turn when longer than ``room`` (metres of track left).
    """
    if "radius" not in seg:
        raise _err(where, "a turn needs a 'radius' in metres")
    ang = _number(f"{where}.turn", seg["turn"], -360.0, 360.0)
    if ang == 0:
        raise _err(where, "turn angle 0: use a straight instead")
    r = _number(f"{where}.radius", seg["radius"], 1.0, 100_000.0)
    if r < w / 2 + 2.0:
        raise _err(
            f"{where}.radius",
            f"{r:g} m is too tight for a {w:g} m wide road; use a radius of at "
            f"least {w / 2 + 2:g} m",
        )
    a_total = math.radians(abs(ang))
    _check_room(where, a_total * r, room)
    x, y = pts[-1]
    sign = 1.0 if ang > 0 else -1.0
    cx = x - sign * r * math.sin(h)
    cy = y + sign * r * math.cos(h)
    n = max(2, math.ceil(a_total * r / 2.0))
    for k in range(1, n + 1):
        hk = h + sign * a_total * k / n
        pts.append((cx + sign * r * math.sin(hk), cy - sign * r * math.cos(hk)))
    return h + sign * a_total, a_total * r


def _resample(points: FloatArray, widths: FloatArray, spacing: float) -> tuple[FloatArray, ...]:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    points, widths = points[keep], widths[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    n = math.floor(s[-1] / spacing) + 1
    s_new = np.arange(n) * spacing
    out = np.stack([np.interp(s_new, s, points[:, 0]), np.interp(s_new, s, points[:, 1])], 1)
    return out, np.interp(s_new, s, widths)


def _first_clash(p: FloatArray, w: FloatArray, s: FloatArray) -> tuple[int, int] | None:
    """The first pair ``(i, j)``, ``i < j``, of points whose roads overlap, or ``None``.

    ``i`` is the smallest index with a clash and ``j`` the smallest it clashes with (the
    relation is symmetric). Two points can only clash closer than ``max(w) + 4`` m, so the
    points are binned into square cells of that size and each is compared only with the nine
    cells around its own: linear in the track's length instead of quadratic. Points are taken
    in order in chunks, so the scan stops at the first chunk that holds a clash.
    """
    reach = float(w.max()) + 4.0
    cells = np.floor((p - p.min(axis=0)) / reach).astype(np.int64)
    members: dict[tuple[int, int], list[int]] = {}
    for idx, (cx, cy) in enumerate(cells.tolist()):
        members.setdefault((cx, cy), []).append(idx)
    near: dict[tuple[int, int], list[int]] = {}
    chunk = 64
    for lo in range(0, len(p), chunk):
        rows = np.arange(lo, min(lo + chunk, len(p)))
        cand_l: list[int] = []
        for cx, cy in {(int(a), int(b)) for a, b in cells[rows]}:
            if (cx, cy) not in near:
                near[cx, cy] = [
                    j
                    for dx in (-1, 0, 1)
                    for dy in (-1, 0, 1)
                    for j in members.get((cx + dx, cy + dy), [])
                ]
            cand_l.extend(near[cx, cy])
        cols = np.unique(np.asarray(cand_l, dtype=np.int64))
        cols = cols[cols > lo]
        wsum = w[rows][:, None] + w[cols][None, :]
        d = np.hypot(
            p[cols, 0][None, :] - p[rows, 0][:, None], p[cols, 1][None, :] - p[rows, 1][:, None]
        )
        clash = (cols[None, :] > rows[:, None]) & (
            s[cols][None, :] - s[rows][:, None] > wsum * 1.6 + 10.0
        )
        clash &= d < wsum / 2 + 4.0
        if np.any(clash):
            r, c = np.nonzero(clash)  # row-major: the first hit has the smallest i, then j
            return int(rows[r[0]]), int(cols[c[0]])
    return None


def _check_overlap(origin: str, pts: FloatArray, widths: FloatArray) -> None:
    """Reject tracks whose road comes back over itself (walls would cross).

    Reports the first point along the line that clashes, with the first point it clashes with.
    """
    step = 4  # check every 2 m
    p = pts[::step]
    w = widths[::step]
    s: FloatArray = np.arange(len(p), dtype=np.float64) * (step * SAMPLE_SPACING)
    found = _first_clash(p, w, s)
    if found is not None:
        i, j = found
        raise _err(
            origin,
            f"the road overlaps itself: near {s[i]:.0f} m and {s[j]:.0f} m "
            f"along the centre line (points {p[i].round(1).tolist()} and "
            f"{p[j].round(1).tolist()} are {math.hypot(*(p[j] - p[i])):.1f} m apart); move "
            "the pieces apart or narrow the road",
        )


def track_from_dict(data: Any, origin: str = "<track>") -> Track:
    """Validate a track description (as loaded from JSON) and build the :class:`Track`.

    The size limits in the module docstring are checked first (list lengths, then nesting,
    then the centre line's length before it is resampled), so an oversized or deeply nested
    description is refused at once.

    Raises:
        TrackFormatError: naming ``origin`` and the offending key when anything is wrong.
    """
    if not isinstance(data, dict):
        raise _err(origin, f"expected a JSON object at the top level, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _err(origin, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    _check_counts(origin, data)
    _check_nesting(origin, data)
    if data.get("format") != FORMAT:
        raise _err(f"{origin}: format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err(f"{origin}: name", f"expected 1-64 letters, digits or -_.: , got {name!r}")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise _err(f"{origin}: description", f"expected a string, got {desc!r}")
    width = _number(f"{origin}: width", data.get("width", 20.0), MIN_WIDTH, MAX_WIDTH)

    has_c, has_s = "centerline" in data, "segments" in data
    if has_c == has_s:
        raise _err(origin, "give exactly one of 'centerline' (list of [x, y]) or 'segments'")
    if has_c:
        pts, wid = _centerline_polyline(origin, data, width)
    else:
        pts, wid = _segments_polyline(origin, data, width)
    with np.errstate(over="ignore", invalid="ignore"):
        raw_length = float(np.sum(np.hypot(*np.diff(pts, axis=0).T)))
    if not raw_length <= MAX_TRACK_LENGTH:  # also refuses inf and NaN
        raise _err(
            f"{origin}: centerline",
            f"the centre line is {_metres(raw_length)} m long, more than the limit of "
            f"{MAX_TRACK_LENGTH:,.0f} m; check the units (metres) or split the track",
        )

    centre, widths = _resample(pts, wid, SAMPLE_SPACING)
    total = (len(centre) - 1) * SAMPLE_SPACING
    if total < 100.0:
        raise _err(
            f"{origin}: centerline", f"the track is {total:.1f} m long; it must be at least 100 m"
        )
    start, finish, cps = _race_marks(origin, data, total)
    _check_overlap(origin, centre, widths)
    return Track(
        name=name,
        description=desc,
        centerline=centre,
        widths=widths,
        start_s=start,
        finish_s=finish,
        checkpoints_s=cps,
        source=dict(data),
    )


def _centerline_polyline(
    origin: str, data: dict[str, Any], width: float
) -> tuple[FloatArray, FloatArray]:
    """The points and widths of a track given as ``centerline`` (and optional ``widths``)."""
    for k in ("origin", "heading"):
        if k in data:
            raise _err(f"{origin}: {k}", "only meaningful with 'segments'")
    raw = data["centerline"]
    if not isinstance(raw, list) or len(raw) < 2:
        raise _err(f"{origin}: centerline", "expected a list of at least 2 [x, y] points")
    pts_l = []
    for i, p in enumerate(raw):
        if not isinstance(p, list) or len(p) != 2:
            raise _err(f"{origin}: centerline[{i}]", f"expected [x, y], got {p!r}")
        pts_l.append(
            (
                _number(f"{origin}: centerline[{i}][0]", p[0]),
                _number(f"{origin}: centerline[{i}][1]", p[1]),
            )
        )
    pts = np.asarray(pts_l, dtype=np.float64)
    if "widths" not in data:
        return pts, np.full(len(pts), width)
    ws = data["widths"]
    if not isinstance(ws, list) or len(ws) != len(raw):
        raise _err(
            f"{origin}: widths",
            f"expected {len(raw)} numbers (one per centerline point), got {ws!r:.80}",
        )
    wid = np.array(
        [_number(f"{origin}: widths[{i}]", w, MIN_WIDTH, MAX_WIDTH) for i, w in enumerate(ws)]
    )
    return pts, wid


def _segments_polyline(
    origin: str, data: dict[str, Any], width: float
) -> tuple[FloatArray, FloatArray]:
    """The points and widths of a track given as ``segments`` from ``origin`` and ``heading``."""
    if "widths" in data:
        raise _err(f"{origin}: widths", "use a 'width' per piece with 'segments'")
    o = data.get("origin", [0.0, 0.0])
    if not isinstance(o, list) or len(o) != 2:
        raise _err(f"{origin}: origin", f"expected [x, y], got {o!r}")
    x0 = _number(f"{origin}: origin[0]", o[0])
    y0 = _number(f"{origin}: origin[1]", o[1])
    h0 = _number(f"{origin}: heading", data.get("heading", 0.0))
    return _segments_to_polyline(origin, data["segments"], x0, y0, h0, width)


def _race_marks(origin: str, data: dict[str, Any], total: float) -> tuple[float, float, FloatArray]:
    """``start``, ``finish`` and ``checkpoints`` (metres along a centre line ``total`` m long)."""
    start = _number(f"{origin}: start", data.get("start", 10.0), 5.0, total - 50.0)
    finish = _number(
        f"{origin}: finish", data.get("finish", total - 30.0), start + 20.0, total - 10.0
    )
    cps_raw = data.get("checkpoints", [])
    if not isinstance(cps_raw, list):
        raise _err(f"{origin}: checkpoints", f"expected a list of distances, got {cps_raw!r}")
    cps = np.array(
        [
            _number(f"{origin}: checkpoints[{i}]", c, start + 1.0, finish - 1.0)
            for i, c in enumerate(cps_raw)
        ],
        dtype=np.float64,
    )
    if len(cps) > 1 and np.any(np.diff(cps) <= 0):
        raise _err(f"{origin}: checkpoints", f"distances must increase, got {cps_raw}")
    return start, finish, cps


def track_from_json(text: str, origin: str = "<track>") -> Track:
    """Parse and validate a track from its JSON text (``origin`` names it in errors).

    The text's size (:data:`MAX_TRACK_BYTES` characters) and nesting (:data:`MAX_NESTING`)
    are checked before it is parsed, so the JSON parser never recurses deeply.

    Raises:
        TrackFormatError: the text is too large, too deeply nested, not JSON, or not a track.
    """
    if len(text) > MAX_TRACK_BYTES:
        raise _err(
            origin,
            f"{len(text):,} characters of JSON, more than the limit of {MAX_TRACK_BYTES:,} "
            "for a track; a track file is far smaller — is this the right file?",
        )
    depth = _nesting_of_json(text)
    if depth > MAX_NESTING:
        raise _err(
            origin,
            f"the JSON is nested {depth:,} deep, more than the limit of {MAX_NESTING} (a track "
            "needs 3: the object, its lists, their pieces or points) — is this a track file?",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrackFormatError(
            f"{origin}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except RecursionError:  # only if the scan above misjudged invalid JSON
        raise _err(origin, f"the JSON is nested too deeply (the limit is {MAX_NESTING})") from None
    return track_from_dict(data, origin)
