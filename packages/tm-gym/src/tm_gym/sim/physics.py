"""Car physics: a Stadium-like car on a flat track with walls, N cars per call.

The model (all quantities per unit mass, SI units, fixed substep ``dt``, default 10 ms):

* **Engine and brakes.** Drive acceleration ``gas · min(accel_max, power / v)`` (a power-limited
  engine), minus aerodynamic drag ``drag · v|v|`` and rolling resistance. Braking decelerates by
  ``brake · brake_decel`` and, held at a standstill, drives backwards (up to ``reverse_max``).
  With the defaults: 0→200 km/h in about 4.5 s, about 370 km/h after 1 km from a standstill,
  top speed about 420 km/h.
* **Gearbox.** Automatic, five gears with hysteresis (shift speeds in ``CarParams``); gear 0 is
  neutral at a standstill. rpm follows speed within the current gear's range (1,000–11,000).
  Gears are reported (like the game's telemetry); the power curve does not depend on them.
* **Steering and grip.** Steering sets a target yaw rate from a bicycle model whose steering lock
  shrinks with speed; the yaw rate follows it with a short lag and is capped at ``oversteer``
  times what the tyres can hold. Tyres pull the velocity towards the heading with at most
  ``grip`` m/s² (the friction circle shares it with braking and throttle). When they cannot, the
  car slides: grip drops to ``slide_grip`` of its value and the slide costs speed. A turn of
  radius R can be taken at up to √(grip·R): tight turns need braking.
* **Walls.** Along both track borders and at both ends of the road. The car (a disc of radius
  ``half_width``) cannot pass them: on contact it is pushed back, its velocity into the wall is
  reversed with ``wall_restitution``, and it loses speed along the wall in proportion to the
  impact (``wall_friction``) plus a scraping drag while touching.
* **Race.** Race time advances with every substep from the reset; checkpoints must be crossed in
  order; crossing the finish line (after all checkpoints) records a lap time interpolated within
  the substep.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields

import numpy as np
from numba import njit
from numpy.typing import NDArray

__all__ = ["CarParams", "advance", "gear_and_rpm"]


@dataclass(frozen=True)
class CarParams:
    """Physical constants of the car (SI units, per unit mass). See the module docstring."""

    accel_max: float = 13.0
    power: float = 700.0
    drag: float = 0.00043
    rolling: float = 0.25
    brake_decel: float = 22.0
    reverse_accel: float = 6.0
    reverse_max: float = 12.0
    grip: float = 25.0
    slide_grip: float = 0.8
    slide_drag: float = 0.6
    oversteer: float = 1.35
    wheelbase: float = 2.8
    steer_lock_deg: float = 28.0
    steer_speed_ref: float = 30.0
    yaw_lag: float = 0.08
    half_width: float = 1.0
    wall_restitution: float = 0.15
    wall_friction: float = 0.5
    wall_scrape: float = 2.0
    upshift_kmh: tuple[float, float, float, float] = (60.0, 110.0, 170.0, 240.0)
    downshift_kmh: tuple[float, float, float, float] = (45.0, 95.0, 150.0, 220.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in vals):
                raise ValueError(f"CarParams.{f.name}={v!r}: expected finite non-negative values")
        if list(self.upshift_kmh) != sorted(self.upshift_kmh):
            raise ValueError(f"CarParams.upshift_kmh={self.upshift_kmh}: must increase")
        if any(d >= u for d, u in zip(self.downshift_kmh, self.upshift_kmh, strict=True)):
            raise ValueError("CarParams.downshift_kmh must be below upshift_kmh gear by gear")

    def as_array(self) -> NDArray[np.float64]:
        """Flat float64 array in the order the kernels expect."""
        flat: list[float] = []
        for v in astuple(self):
            flat.extend(v if isinstance(v, tuple) else (v,))
        return np.asarray(flat, dtype=np.float64)


# indices into CarParams.as_array()
(
    _ACC,
    _POW,
    _DRAG,
    _ROLL,
    _BRK,
    _REVA,
    _REVM,
    _GRIP,
    _SGRIP,
    _SDRAG,
    _OVER,
    _WB,
    _LOCK,
    _SREF,
    _YLAG,
    _HW,
    _REST,
    _WFRIC,
    _SCRAPE,
    _UP0,
    _UP1,
    _UP2,
    _UP3,
    _DN0,
    _DN1,
    _DN2,
    _DN3,
) = range(27)

IDLE_RPM = 1000.0
MAX_RPM = 11000.0


@njit(cache=True, inline="always")
def _clip(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else (hi if v > hi else v)


@njit(cache=True)
def _gear_rpm(v_kmh: float, gear: int, gas: float, p: NDArray[np.float64]) -> tuple[int, float]:
    av = abs(v_kmh)
    if av < 1.0 and gas <= 0.0:
        return 0, IDLE_RPM + 2000.0 * max(gas, 0.0)
    if gear == 0:
        gear = 1
    while gear < 5 and av > p[_UP0 + gear - 1]:
        gear += 1
    while gear > 1 and av < p[_DN0 + gear - 2]:
        gear -= 1
    lo = 0.0 if gear == 1 else p[_DN0 + gear - 2]
    hi = 450.0 if gear == 5 else p[_UP0 + gear - 1]
    frac = _clip((av - lo) / (hi - lo), 0.0, 1.0)
    return gear, 2500.0 + (MAX_RPM - 2500.0) * frac


def gear_and_rpm(speed_kmh: float, params: CarParams | None = None) -> tuple[int, float]:
    """The gear and rpm the gearbox settles on at ``speed_kmh`` without throttle, starting from
    neutral (gear 0 and idle rpm below 1 km/h) — the state of a car that rolls at that speed."""
    gear, rpm = _gear_rpm(speed_kmh, 0, 0.0, (params or CarParams()).as_array())
    return int(gear), float(rpm)


@njit(cache=True)
def _longitudinal(
    v_long: float, gas: float, brk: float, dt: float, p: NDArray[np.float64]
) -> float:
    """Acceleration along the heading: engine, brakes, reverse, rolling resistance and drag."""
    if brk > 0.0 and gas <= 0.0 and v_long < 0.5:
        a_long = -brk * p[_REVA] if v_long > -p[_REVM] else 0.0
        a_long += p[_ROLL] if v_long < 0.0 else 0.0
    else:
        a_long = 0.0
        if v_long > -0.5:
            a_long += gas * min(p[_ACC], p[_POW] / max(v_long, 0.1))
        if v_long > 0.0:
            a_long -= brk * p[_BRK] + p[_ROLL]
        elif v_long < 0.0:
            a_long += brk * p[_BRK] + p[_ROLL]
    a_long -= p[_DRAG] * v_long * abs(v_long)
    # do not let braking or rolling resistance reverse the direction of travel
    if (v_long > 0.0 and v_long + a_long * dt < 0.0 and gas <= 0.0) or (
        v_long < 0.0 and v_long + a_long * dt > 0.0 and brk <= 0.0 and gas <= 0.0
    ):
        a_long = -v_long / dt
    return a_long


@njit(cache=True)
def _steer(
    yaw: float,
    psi: float,
    v_long: float,
    speed: float,
    steer: float,
    lock0: float,
    dt: float,
    p: NDArray[np.float64],
) -> tuple[float, float]:
    """The new (yaw rate, heading): a target yaw rate, capped by what the tyres can hold."""
    lock = lock0 / (1.0 + abs(v_long) / p[_SREF])
    r_target = -v_long * math.tan(steer * lock) / p[_WB]
    r_cap = min(p[_OVER] * p[_GRIP] / max(speed, 1.0), 3.0)
    r_target = _clip(r_target, -r_cap, r_cap)
    yaw += (r_target - yaw) * min(1.0, dt / p[_YLAG])
    psi += yaw * dt
    if psi > math.pi:
        psi -= 2.0 * math.pi
    elif psi < -math.pi:
        psi += 2.0 * math.pi
    return yaw, psi


@njit(cache=True)
def _tyres(
    vx: float, vy: float, psi: float, a_long: float, dt: float, p: NDArray[np.float64]
) -> tuple[float, float, float]:
    """The new (vx, vy, forward speed): tyres pull the velocity towards the heading, sliding
    when they cannot hold it (a slide costs speed)."""
    c, sn = math.cos(psi), math.sin(psi)
    v_long = vx * c + vy * sn
    v_lat = -vx * sn + vy * c
    lat_avail = math.sqrt(max(p[_GRIP] ** 2 - (0.6 * a_long) ** 2, (0.4 * p[_GRIP]) ** 2))
    need = abs(v_lat)
    if need > lat_avail * dt:
        lat_avail *= p[_SGRIP]
        corr = lat_avail * dt
        v_lat -= corr if v_lat > 0.0 else -corr
        slide = abs(v_lat)
        a_long -= p[_SDRAG] * slide * (1.0 if v_long > 0.0 else -1.0)
    else:
        v_lat = 0.0
    v_long += a_long * dt
    return v_long * c - v_lat * sn, v_long * sn + v_lat * c, v_long


@njit(cache=True)
def _nearest(x: float, y: float, start: int, cl: NDArray[np.float64]) -> int:
    """The centre-line point nearest to (x, y), searched around index ``start``."""
    m = cl.shape[0]
    j0 = max(start - 6, 0)
    j1 = min(start + 10, m - 1)
    best = 1e300
    bj = start
    for j in range(j0, j1 + 1):
        dx = x - cl[j, 0]
        dy = y - cl[j, 1]
        d2 = dx * dx + dy * dy
        if d2 < best:
            best = d2
            bj = j
    return bj


@njit(cache=True)
def _wall(
    s_new: float,
    lat_new: float,
    lim: float,
    half_width: float,
    total: float,
    tan_x: float,
    tan_y: float,
    nrm_x: float,
    nrm_y: float,
) -> tuple[bool, float, float, float, float, float]:
    """(hit, wall normal x, y, penetration, clamped s, clamped lateral offset) against the side
    walls (``lim`` from the centre line) and the walls at both ends of the road."""
    hit = False
    wnx, wny, pen = 0.0, 0.0, 0.0
    if lat_new > lim:
        hit, wnx, wny, pen = True, nrm_x, nrm_y, lat_new - lim
        lat_new = lim
    elif lat_new < -lim:
        hit, wnx, wny, pen = True, -nrm_x, -nrm_y, -lim - lat_new
        lat_new = -lim
    if s_new < half_width:
        hit, wnx, wny, pen = True, -tan_x, -tan_y, half_width - s_new
        s_new = half_width
    elif s_new > total - half_width:
        hit, wnx, wny, pen = True, tan_x, tan_y, s_new - (total - half_width)
        s_new = total - half_width
    return hit, wnx, wny, pen, s_new, lat_new


@njit(cache=True)
def _bounce(
    vx: float, vy: float, wnx: float, wny: float, dt: float, p: NDArray[np.float64]
) -> tuple[float, float]:
    """The velocity after touching a wall of normal (wnx, wny): the part into the wall reversed
    with restitution, the part along it slowed by wall friction and scraping."""
    vn = vx * wnx + vy * wny  # > 0: moving into the wall
    if vn > 0.0:
        vx -= (1.0 + p[_REST]) * vn * wnx
        vy -= (1.0 + p[_REST]) * vn * wny
    tx, ty = -wny, wnx
    vt = vx * tx + vy * ty
    loss = p[_WFRIC] * max(vn, 0.0) + p[_SCRAPE] * dt
    vt_new = max(abs(vt) - loss, 0.0) * (1.0 if vt >= 0.0 else -1.0)
    return vx + (vt_new - vt) * tx, vy + (vt_new - vt) * ty


@njit(cache=True)
def advance(
    n_sub: int,
    dt: float,
    controls: NDArray[np.float64],
    p: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    vx: NDArray[np.float64],
    vy: NDArray[np.float64],
    yaw: NDArray[np.float64],
    gear: NDArray[np.int64],
    rpm: NDArray[np.float64],
    idx: NDArray[np.int64],
    s: NDArray[np.float64],
    lat: NDArray[np.float64],
    race_time: NDArray[np.float64],
    finished: NDArray[np.bool_],
    finish_time: NDArray[np.float64],
    cp: NDArray[np.int64],
    driven: NDArray[np.float64],
    contacts: NDArray[np.int64],
    cl: NDArray[np.float64],
    tan: NDArray[np.float64],
    nrm: NDArray[np.float64],
    s_arr: NDArray[np.float64],
    widths: NDArray[np.float64],
    finish_s: float,
    cps: NDArray[np.float64],
) -> None:
    """Advance every car by ``n_sub`` substeps of ``dt`` seconds under ``controls`` (N, 3)."""
    n = x.shape[0]
    m = cl.shape[0]
    total = s_arr[m - 1]
    lock0 = math.radians(p[_LOCK])
    for i in range(n):
        gas = _clip(controls[i, 0], 0.0, 1.0)
        brk = _clip(controls[i, 1], 0.0, 1.0)
        steer = _clip(controls[i, 2], -1.0, 1.0)
        for _ in range(n_sub):
            c, sn = math.cos(psi[i]), math.sin(psi[i])
            v_long = vx[i] * c + vy[i] * sn
            speed = math.hypot(vx[i], vy[i])
            a_long = _longitudinal(v_long, gas, brk, dt, p)
            yaw[i], psi[i] = _steer(yaw[i], psi[i], v_long, speed, steer, lock0, dt, p)
            vx[i], vy[i], v_long = _tyres(vx[i], vy[i], psi[i], a_long, dt, p)
            x0, y0 = x[i], y[i]
            x[i] += vx[i] * dt
            y[i] += vy[i] * dt
            # -- localise on the centre line, then the walls ---------------------------------
            bj = _nearest(x[i], y[i], idx[i], cl)
            idx[i] = bj
            dx = x[i] - cl[bj, 0]
            dy = y[i] - cl[bj, 1]
            hit, wnx, wny, pen, s_new, lat_new = _wall(
                s_arr[bj] + dx * tan[bj, 0] + dy * tan[bj, 1],
                dx * nrm[bj, 0] + dy * nrm[bj, 1],
                widths[bj] / 2.0 - p[_HW],
                p[_HW],
                total,
                tan[bj, 0],
                tan[bj, 1],
                nrm[bj, 0],
                nrm[bj, 1],
            )
            if hit:
                contacts[i] += 1
                x[i] -= wnx * pen
                y[i] -= wny * pen
                vx[i], vy[i] = _bounce(vx[i], vy[i], wnx, wny, dt, p)
                yaw[i] *= 0.5
            # -- race --------------------------------------------------------------------
            s_old = s[i]
            s[i] = s_new
            lat[i] = lat_new
            driven[i] += math.hypot(x[i] - x0, y[i] - y0)
            if cp[i] < cps.shape[0] and s_new >= cps[cp[i]] and s_old < cps[cp[i]]:
                cp[i] += 1
            if (not finished[i]) and cp[i] == cps.shape[0] and s_new >= finish_s > s_old:
                frac = (finish_s - s_old) / (s_new - s_old)
                finish_time[i] = race_time[i] + frac * dt
                finished[i] = True
            race_time[i] += dt
            g, r = _gear_rpm(v_long * 3.6, int(gear[i]), gas, p)
            gear[i] = g
            rpm[i] = r


@njit(cache=True)
def advance_split(
    n_first: int,
    first: NDArray[np.float64],
    n_second: int,
    second: NDArray[np.float64],
    dt: float,
    p: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    psi: NDArray[np.float64],
    vx: NDArray[np.float64],
    vy: NDArray[np.float64],
    yaw: NDArray[np.float64],
    gear: NDArray[np.int64],
    rpm: NDArray[np.float64],
    idx: NDArray[np.int64],
    s: NDArray[np.float64],
    lat: NDArray[np.float64],
    race_time: NDArray[np.float64],
    finished: NDArray[np.bool_],
    finish_time: NDArray[np.float64],
    cp: NDArray[np.int64],
    driven: NDArray[np.float64],
    contacts: NDArray[np.int64],
    cl: NDArray[np.float64],
    tan: NDArray[np.float64],
    nrm: NDArray[np.float64],
    s_arr: NDArray[np.float64],
    widths: NDArray[np.float64],
    finish_s: float,
    cps: NDArray[np.float64],
) -> None:
    """``n_first`` substeps under ``first``, then ``n_second`` under ``second`` (one call)."""
    advance(
        n_first,
        dt,
        first,
        p,
        x,
        y,
        psi,
        vx,
        vy,
        yaw,
        gear,
        rpm,
        idx,
        s,
        lat,
        race_time,
        finished,
        finish_time,
        cp,
        driven,
        contacts,
        cl,
        tan,
        nrm,
        s_arr,
        widths,
        finish_s,
        cps,
    )
    advance(
        n_second,
        dt,
        second,
        p,
        x,
        y,
        psi,
        vx,
        vy,
        yaw,
        gear,
        rpm,
        idx,
        s,
        lat,
        race_time,
        finished,
        finish_time,
        cp,
        driven,
        contacts,
        cl,
        tan,
        nrm,
        s_arr,
        widths,
        finish_s,
        cps,
    )
