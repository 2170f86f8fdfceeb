"""Keyboard control of the car (:class:`~tm_gym.core.ports.Controller`), TMRL's fallback.

A keyboard is binary, so actions are thresholded with TMRL's rule (:func:`keys_for`): gas if
``a[0] > 0``, brake if ``a[1] > 0``, right if ``a[2] > 0.5``, left if ``a[2] < -0.5``.
:class:`KeyboardController` remembers which keys it holds and sends only the differences (key
up, then key down), so a step that changes nothing sends nothing. Like TMRL's keyboard mode it
closes the game's finish pop-up with the mouse: :meth:`KeyboardController.dismiss_finish` clicks
the left button at ``finish_button`` (fractions of the game window's client area).

Two backends, chosen by ``backend="auto"`` from the platform:

* ``"xdotool"`` (Linux, X11 or XWayland): arrow keys and BackSpace (respawn) through ONE
  persistent ``xdotool -`` process that reads commands on its stdin, so a step costs a pipe
  write (microseconds) instead of a process spawn (milliseconds). Events go to the focused
  window through XTEST; with ``window_id`` the window is focused once when opening. If this
  xdotool cannot run a script from stdin, each change spawns one ``xdotool`` process instead.
* ``"sendinput"`` (Windows): ``SendInput`` with hardware scan codes — W/A/S/D for
  gas/left/brake/right and Delete for respawn, like TMRL. It cannot be tested on Linux; it is
  kept small and separate (:mod:`tm_gym.game.keyboard.sendinput`).

Example::

    with KeyboardController(window_id=0x3A00007) as kb:
        kb.apply(np.array([1.0, 0.0, 0.8], np.float32))  # Up + Right held
        kb.apply(np.array([1.0, 0.0, 0.0], np.float32))  # Right released
        kb.respawn()
"""

from tm_gym.game.keyboard.controller import BACKENDS, KeyboardController
from tm_gym.game.keyboard.keys import KEYS, SCAN_CODES, SCAN_RESPAWN, keys_for

__all__ = ["BACKENDS", "KEYS", "SCAN_CODES", "SCAN_RESPAWN", "KeyboardController", "keys_for"]
