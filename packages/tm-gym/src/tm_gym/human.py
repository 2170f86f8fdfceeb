"""The human-driving window: a person drives any TrackMania env with the keyboard.

Keys: Up/W gas, Down/S brake, Left/A and Right/D steer, Backspace or Delete respawn, Esc quit.
``tm-gym play`` (drive the simulator) and ``tm-gym record --driver keyboard`` (record a person's
laps) are both built on it.

The pieces are split so the logic is testable without a screen or a person:

- :func:`action_from_keys` maps the set of held key names to an action, a pure function;
- :class:`PlaySession` owns the environment: keys in, one step per :meth:`PlaySession.tick`,
  the HUD text out; it works with any env that has ``reset``/``step``/``render``;
- :class:`PlayWindow` is the pygame window (a context manager): key polling, drawing, pacing
  (``pip install 'tm-gym[play]'``);
- :func:`run_loop` ties them together.
"""

from __future__ import annotations

import os
from collections.abc import Set
from types import ModuleType
from typing import Any, Protocol, SupportsFloat

import numpy as np

from tm_gym.error import BackendUnavailableError, DependencyNotInstalled, EnvStateError

__all__ = [
    "BRAKE_KEYS",
    "GAS_KEYS",
    "LEFT_KEYS",
    "QUIT_KEYS",
    "RESPAWN_KEYS",
    "RIGHT_KEYS",
    "PlaySession",
    "PlayWindow",
    "action_from_keys",
    "run_loop",
]

# Key names as pygame.key.name() spells them.
GAS_KEYS = frozenset({"up", "w"})
BRAKE_KEYS = frozenset({"down", "s"})
LEFT_KEYS = frozenset({"left", "a"})
RIGHT_KEYS = frozenset({"right", "d"})
RESPAWN_KEYS = frozenset({"backspace", "delete"})
QUIT_KEYS = frozenset({"escape"})
WATCHED_KEYS = GAS_KEYS | BRAKE_KEYS | LEFT_KEYS | RIGHT_KEYS | RESPAWN_KEYS | QUIT_KEYS


def action_from_keys(pressed: Set[str]) -> np.ndarray:
    """Map held key names to the action ``[gas, brake, steer]`` (float32, steer +1 = right).

    Gas and brake are 0 or 1; left and right together cancel out.
    """
    keys = {key.lower() for key in pressed}
    gas = 1.0 if keys & GAS_KEYS else 0.0
    brake = 1.0 if keys & BRAKE_KEYS else 0.0
    steer = (1.0 if keys & RIGHT_KEYS else 0.0) - (1.0 if keys & LEFT_KEYS else 0.0)
    return np.array([gas, brake, steer], dtype=np.float32)


class _Env(Protocol):
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]: ...

    def render(self) -> Any: ...


class PlaySession:
    """One person's drive: holds the env, the current action and what the HUD shows.

    Args:
        env: a ``TrackMania-Sim-v0`` env made with ``render_mode="rgb_array"`` (or any env with
            the same ``reset``/``step``/``render`` and ``info`` keys).
        checkpoints_total: number of checkpoints on the track, shown as ``checkpoint 2/5``
            when the env's ``info`` has no ``checkpoints_total``.
    """

    def __init__(self, env: _Env, *, checkpoints_total: int | None = None) -> None:
        self.env = env
        self.checkpoints_total = checkpoints_total
        self.action = np.zeros(3, dtype=np.float32)
        self.info: dict[str, Any] = {}
        self.steps = 0
        self.episodes = 0
        self.terminated = False
        self.truncated = False
        self.quit_requested = False
        self._previous_keys: frozenset[str] = frozenset()
        self._started = False

    @property
    def episode_over(self) -> bool:
        return self.terminated or self.truncated

    @property
    def finished(self) -> bool:
        """Whether the car crossed the finish line in this episode."""
        if not self.terminated:
            return False
        if "finished" in self.info:
            return bool(self.info["finished"])
        return float(self.info.get("progress", 0.0)) >= 1.0

    def reset(self) -> None:
        """Respawn at the start (a new episode)."""
        _, self.info = self.env.reset()
        self.action = np.zeros(3, dtype=np.float32)
        self.terminated = self.truncated = False
        self.steps = 0
        self.episodes += 1
        self._started = True

    def handle_keys(self, pressed: Set[str]) -> np.ndarray:
        """Take the held key names for this frame; respawn or quit if asked; return the action.

        Respawn fires once when Backspace/Delete goes down, not on every frame it is held.
        """
        keys = frozenset(key.lower() for key in pressed)
        if keys & QUIT_KEYS:
            self.quit_requested = True
        if keys & RESPAWN_KEYS and not self._previous_keys & RESPAWN_KEYS:
            self.reset()
        self._previous_keys = keys
        self.action = action_from_keys(keys)
        return self.action

    def tick(self) -> np.ndarray:
        """Step once with the current action (not after the episode ended); return the frame."""
        if not self._started:
            raise RuntimeError("call PlaySession.reset() before tick()")
        if not self.episode_over:
            _, _, self.terminated, self.truncated, self.info = self.env.step(self.action)
            self.steps += 1
        frame = self.env.render()
        if frame is None:
            raise EnvStateError(
                f"env.render() returned None: make the env with render_mode='rgb_array' "
                f"(got {self.env!r})"
            )
        return np.asarray(frame)

    def hud_lines(self) -> list[str]:
        """Speed, gear, race time, checkpoints and progress, one string per HUD line."""
        from tm_gym.viz import format_race_time

        info = self.info
        total_raw = info.get("checkpoints_total", self.checkpoints_total)
        total = "?" if total_raw is None else str(int(total_raw))
        race_time = float(info.get("race_time", 0.0))
        return [
            f"{abs(float(info.get('speed_kmh', 0.0))):4.0f} km/h   gear {info.get('gear', '-')}",
            f"time {format_race_time(max(race_time, 0.0))}",
            f"checkpoint {info.get('checkpoint', 0)}/{total}",
            f"progress {100.0 * float(info.get('progress', 0.0)):5.1f} %",
        ]

    def banner(self) -> list[str]:
        """Big centred text for the end of an episode; empty while driving."""
        from tm_gym.viz import format_race_time

        if self.finished:
            race_time = max(float(self.info.get("race_time", 0.0)), 0.0)
            return [f"FINISHED {format_race_time(race_time)}", "Backspace: drive again   Esc: quit"]
        if self.episode_over:
            return ["press Backspace to respawn", "Esc: quit"]
        return []


def _import_pygame() -> ModuleType:
    # Keep pygame's greeting off stdout; set only when play actually runs, never at import.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as exc:
        raise DependencyNotInstalled(
            "pygame is not installed (it draws the driving window), run: pip install 'tm-gym[play]'"
        ) from exc
    return pygame


class PlayWindow:
    """The pygame window: polls keys, draws the scaled frame with a HUD, paces the frame rate.

    Use it as a context manager; the window closes on exit.
    """

    def __init__(self, *, scale: int = 4, fps: float = 20.0, title: str = "tm-gym play") -> None:
        if scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.scale = scale
        self.fps = fps
        self.title = title
        self._pygame: ModuleType | None = None
        self._screen: Any = None
        self._font: Any = None
        self._big_font: Any = None
        self._clock: Any = None
        self._key_codes: dict[str, int] = {}

    def __enter__(self) -> PlayWindow:
        pygame = _import_pygame()
        pygame.display.init()
        pygame.font.init()
        try:
            self._screen = pygame.display.set_mode((256 * self.scale, 128 * self.scale))
        except pygame.error as exc:
            pygame.display.quit()
            raise BackendUnavailableError(
                f"cannot open a window ({exc}): driving by hand needs a desktop session with a display"
            ) from exc
        pygame.display.set_caption(self.title)
        self._pygame = pygame
        self._font = pygame.font.Font(None, max(18, 7 * self.scale))
        self._big_font = pygame.font.Font(None, max(28, 14 * self.scale))
        self._clock = pygame.time.Clock()
        self._key_codes = {name: pygame.key.key_code(name) for name in WATCHED_KEYS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pygame is not None:
            self._pygame.font.quit()
            self._pygame.display.quit()
            self._pygame = None

    def _require_open(self) -> ModuleType:
        if self._pygame is None:
            raise RuntimeError("PlayWindow is not open: use it in a `with PlayWindow(...)` block")
        return self._pygame

    def poll(self) -> tuple[frozenset[str], bool]:
        """Return (names of held keys, whether the window was closed).

        Keys pressed and released between two frames still count for this frame.
        """
        pygame = self._require_open()
        closed = False
        tapped: set[str] = set()
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                closed = True
            elif event.type == pygame.KEYDOWN:
                name = pygame.key.name(event.key)
                if name in WATCHED_KEYS:
                    tapped.add(name)
        held = pygame.key.get_pressed()
        pressed = {name for name, code in self._key_codes.items() if held[code]}
        return frozenset(pressed | tapped), closed

    def show(self, frame: np.ndarray, hud_lines: list[str], banner: list[str]) -> None:
        """Draw ``frame`` (H, W, 3 uint8) scaled up, the HUD top-left and the banner centred."""
        pygame = self._require_open()
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        height, width = image.shape[:2]
        size = (width * self.scale, height * self.scale)
        if self._screen.get_size() != size:
            self._screen = pygame.display.set_mode(size)
        surface = pygame.image.frombuffer(image.tobytes(), (width, height), "RGB")
        self._screen.blit(pygame.transform.scale(surface, size), (0, 0))
        self._draw_text_box(hud_lines, [self._font] * len(hud_lines), topleft=(8, 8))
        if banner:
            fonts = [self._big_font] + [self._font] * (len(banner) - 1)
            self._draw_text_box(banner, fonts, center=(size[0] // 2, size[1] // 2))
        pygame.display.flip()

    def _draw_text_box(
        self,
        lines: list[str],
        fonts: list[Any],
        *,
        topleft: tuple[int, int] | None = None,
        center: tuple[int, int] | None = None,
    ) -> None:
        pygame = self._require_open()
        rendered = [
            font.render(line, True, (255, 255, 255))
            for line, font in zip(lines, fonts, strict=True)
        ]
        pad = 2 * self.scale
        width = max(text.get_width() for text in rendered) + 2 * pad
        height = sum(text.get_height() for text in rendered) + 2 * pad
        box = pygame.Surface((width, height), pygame.SRCALPHA)
        box.fill((0, 0, 0, 160))
        y = pad
        for text in rendered:
            x = pad if center is None else (width - text.get_width()) // 2
            box.blit(text, (x, y))
            y += text.get_height()
        rect = box.get_rect()
        if center is not None:
            rect.center = center
        elif topleft is not None:
            rect.topleft = topleft
        self._screen.blit(box, rect)

    def wait(self) -> None:
        """Sleep so frames come at ``fps`` per second."""
        self._require_open()
        self._clock.tick(self.fps)


def run_loop(session: PlaySession, window: PlayWindow, *, max_frames: int | None = None) -> int:
    """Play until Esc, the window closes, or ``max_frames`` frames; return the frames shown."""
    session.reset()
    frames = 0
    while not session.quit_requested and (max_frames is None or frames < max_frames):
        pressed, closed = window.poll()
        if closed:
            break
        session.handle_keys(pressed)
        if session.quit_requested:
            break
        window.show(session.tick(), session.hud_lines(), session.banner())
        window.wait()
        frames += 1
    return frames
