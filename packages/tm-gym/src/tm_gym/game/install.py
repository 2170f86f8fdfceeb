"""Install the tm-gym OpenPlanet plugin into the game's ``OpenplanetNext/Plugins`` folder.

The plugin ships inside this package (``tm_gym/game/plugin/``: ``info.toml`` and ``main.as``).
:func:`install_plugin` copies it, as a plain folder, to ``<Plugins>/tm-gym/``, or with
``op=True`` packs it as ``<Plugins>/tm-gym.op`` (:func:`build_op`: a zip of the two files at its
root, which is what an ``.op`` is). Then, in TrackMania: open the OpenPlanet overlay (F3) and
choose Developer → (Re)load plugin → tm-gym telemetry.

**Signed or not.** OpenPlanet's signature modes (Openplanet menu → Signature Mode) decide what it
loads: *Regular* (the default) loads only plugins signed by openplanet.dev after review;
*Developer* loads unsigned plugins too — ours, as a folder or an ``.op`` — and turns on *School
mode*, which disables leaderboard times and online play on most maps. A plugin's ID is its file
or folder name, so ``tm-gym/`` and ``tm-gym.op`` are the same plugin: Developer mode prefers the
folder, the other modes the ``.op``. Training needs neither leaderboards nor online play, so
Developer mode costs nothing for it; only a signed release would avoid School mode.

Where the Plugins folder is (:func:`plugin_dirs` lists the candidates, in this order):

* Windows: ``%USERPROFILE%\\OpenplanetNext\\Plugins``.
* Linux, Steam with Proton (TrackMania's Steam app id is 2225070): the game's prefix
  ``steamapps/compatdata/2225070/pfx/drive_c/users/steamuser/OpenplanetNext/Plugins`` under
  each Steam root — ``~/.steam/steam``, ``~/.steam/root``, ``~/.local/share/Steam``, Flatpak's
  ``~/.var/app/com.valvesoftware.Steam/.local/share/Steam`` and Snap's
  ``~/snap/steam/common/.local/share/Steam`` — and under every extra library listed in their
  ``steamapps/libraryfolders.vdf``.
* Linux, other Wine prefixes: ``$WINEPREFIX``, ``~/.wine``, and — **guesses** from the default
  prefix names of the Lutris installers — ``~/Games/ubisoft-connect``, ``~/Games/trackmania``
  and Heroic's ``~/Games/Heroic/Prefixes/default/Trackmania``, each with
  ``drive_c/users/<you or steamuser>/OpenplanetNext/Plugins``.

A candidate counts as found when its ``Plugins`` folder or its ``OpenplanetNext`` folder exists.
Nothing is read at import time; the home folder and environment are parameters, so tests pass
fake ones.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tm_gym.error import TMGymError

__all__ = [
    "OP_FILE",
    "PLUGIN_FILES",
    "PLUGIN_FOLDER",
    "InstallPlan",
    "PlannedCopy",
    "PluginInstallError",
    "build_op",
    "find_plugins_dir",
    "install_plugin",
    "plugin_dirs",
    "plugin_files",
]

logger = logging.getLogger(__name__)

PLUGIN_FOLDER = "tm-gym"
"""Folder name of the plugin inside ``OpenplanetNext/Plugins``."""
OP_FILE = f"{PLUGIN_FOLDER}.op"
"""File name of the packed plugin inside ``OpenplanetNext/Plugins``."""
PLUGIN_FILES = ("info.toml", "main.as")
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
"""A fixed timestamp for the archive's entries: the same plugin gives the same ``.op`` bytes."""
TRACKMANIA_STEAM_APP_ID = 2225070

NEXT_STEPS = (
    "In TrackMania, open the OpenPlanet overlay (F3). The plugin is not signed: set Openplanet → "
    "Signature Mode → Developer (this also turns on School mode: no leaderboard times, no online "
    "play on most maps; training needs neither). Then choose Developer → (Re)load plugin → "
    "tm-gym telemetry. Its port is under Openplanet → Settings → tm-gym telemetry (default "
    "9000). Then drive onto a map and run `tm-gym check`."
)


class PluginInstallError(TMGymError, FileNotFoundError):
    """No OpenPlanet Plugins folder was found, or the plugin could not be copied there."""


@dataclass(frozen=True)
class PlannedCopy:
    """One plugin file and where it goes."""

    name: str
    destination: Path
    size: int
    replaces: bool
    """Whether a file is already there (it is overwritten)."""


@dataclass(frozen=True)
class InstallPlan:
    """What :func:`install_plugin` copied (or, with ``dry_run``, would copy)."""

    plugins_dir: Path
    target: Path
    copies: tuple[PlannedCopy, ...]
    dry_run: bool
    searched: tuple[Path, ...] = ()
    """Candidate folders that were looked at (empty when the folder was given)."""
    next_steps: str = NEXT_STEPS
    notes: tuple[str, ...] = ()
    """Warnings about what is already there (a folder and an ``.op`` of the same plugin)."""


def plugin_files() -> list[tuple[str, bytes]]:
    """The plugin's files (name, content), read from this package."""
    folder = resources.files("tm_gym.game").joinpath("plugin")
    files = []
    for name in PLUGIN_FILES:
        entry = folder.joinpath(name)
        if not entry.is_file():
            raise PluginInstallError(
                f"the plugin file {name!r} is missing from the installed tm-gym package "
                f"(looked in {folder}); reinstall tm-gym (`pip install --force-reinstall tm-gym`)"
            )
        files.append((name, entry.read_bytes()))
    return files


def _home(home: Path | None, env: Mapping[str, str], platform: str) -> Path:
    if home is not None:
        return Path(home)
    key = "USERPROFILE" if platform == "win32" else "HOME"
    if env.get(key):
        return Path(env[key])
    return Path.home()


def _steam_roots(home: Path) -> list[Path]:
    return [
        home / ".steam" / "steam",
        home / ".steam" / "root",
        home / ".local" / "share" / "Steam",
        home / ".var" / "app" / "com.valvesoftware.Steam" / ".local" / "share" / "Steam",
        home / "snap" / "steam" / "common" / ".local" / "share" / "Steam",
    ]


_VDF_PATH = re.compile(r'"path"\s+"((?:[^"\\]|\\.)*)"')


def steam_libraries(root: Path) -> list[Path]:
    """Extra Steam library folders listed in ``root/steamapps/libraryfolders.vdf``."""
    vdf = root / "steamapps" / "libraryfolders.vdf"
    try:
        text = vdf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [Path(m.group(1).replace("\\\\", "\\")) for m in _VDF_PATH.finditer(text)]


def plugin_dirs(
    *,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> list[Path]:
    """Candidate OpenPlanet ``Plugins`` folders on this machine, most likely first.

    Args:
        home: The user's home folder (default: from ``env``, then :meth:`Path.home`).
        env: Environment variables (default: ``os.environ``, read when called).
        platform: ``sys.platform`` value (default: this machine's).

    The list contains candidates whether or not they exist; see :func:`find_plugins_dir`.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = _home(home, env, platform)
    if platform == "win32":
        return [home / "OpenplanetNext" / "Plugins"]

    candidates: list[Path] = []
    libraries: list[Path] = []
    for root in _steam_roots(home):
        libraries.append(root)
        libraries.extend(steam_libraries(root))
    for lib in libraries:
        prefix = lib / "steamapps" / "compatdata" / str(TRACKMANIA_STEAM_APP_ID) / "pfx"
        candidates.append(prefix / "drive_c" / "users" / "steamuser" / "OpenplanetNext" / "Plugins")

    user = env.get("USER") or env.get("LOGNAME") or home.name
    prefixes = []
    if env.get("WINEPREFIX"):
        prefixes.append(Path(env["WINEPREFIX"]))
    prefixes += [
        home / ".wine",
        home / "Games" / "ubisoft-connect",  # guess: Lutris' Ubisoft Connect installer
        home / "Games" / "trackmania",  # guess: Lutris' TrackMania installer
        home / "Games" / "Heroic" / "Prefixes" / "default" / "Trackmania",  # guess: Heroic (Epic)
    ]
    for prefix in prefixes:
        for name in dict.fromkeys((user, "steamuser")):
            candidates.append(prefix / "drive_c" / "users" / name / "OpenplanetNext" / "Plugins")
    return _dedupe(candidates)


def _dedupe(paths: list[Path]) -> list[Path]:
    """Drop repeats, including the same folder reached through a symlink (~/.steam/steam)."""
    seen: set[str] = set()
    out = []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _looks_installed(plugins: Path) -> bool:
    return plugins.is_dir() or plugins.parent.is_dir()


def find_plugins_dir(
    *,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> tuple[Path | None, list[Path]]:
    """The first candidate whose ``Plugins`` (or ``OpenplanetNext``) folder exists, and every
    candidate searched."""
    searched = plugin_dirs(home=home, env=env, platform=platform)
    found = [p for p in searched if _looks_installed(p)]
    if len(found) > 1:
        logger.info(
            "several OpenPlanet folders found, using the first: %s", ", ".join(map(str, found))
        )
    return (found[0] if found else None), searched


def build_op(out: Path | None = None) -> bytes:
    """The plugin packed as an OpenPlanet ``.op`` archive: a zip with ``info.toml`` and
    ``main.as`` at its root. Written to ``out`` too when given.

    Raises:
        PluginInstallError: ``out`` cannot be written.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in plugin_files():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    data = buffer.getvalue()
    if out is not None:
        try:
            Path(out).write_bytes(data)
        except OSError as exc:
            raise PluginInstallError(
                f"cannot write the plugin archive {str(out)!r}: {exc.strerror or exc}"
            ) from None
    return data


def _plugins_dir(
    dest: Path | None,
    openplanet_dir: Path | None,
    *,
    home: Path | None,
    env: Mapping[str, str] | None,
    platform: str | None,
) -> tuple[Path, list[Path]]:
    """The Plugins folder to install into, and the candidates searched (when it was found)."""
    if dest is not None and openplanet_dir is not None:
        raise PluginInstallError(
            "give either --plugins-dir (…/OpenplanetNext/Plugins) or --openplanet-dir "
            "(…/OpenplanetNext), not both"
        )
    if openplanet_dir is not None:
        base = Path(openplanet_dir).expanduser()
        if base.exists() and not base.is_dir():
            raise PluginInstallError(
                f"--openplanet-dir {base} is a file; expected the OpenplanetNext folder (in "
                "your user profile, or under the Wine/Proton prefix on Linux)"
            )
        # Someone who points at the Plugins folder itself means it.
        return (base if base.name.lower() == "plugins" else base / "Plugins"), []
    if dest is not None:
        plugins = Path(dest).expanduser()
        if plugins.exists() and not plugins.is_dir():
            raise PluginInstallError(
                f"--plugins-dir {plugins} is a file; expected the OpenPlanet Plugins folder "
                "(…/OpenplanetNext/Plugins)"
            )
        return plugins, []
    found, searched = find_plugins_dir(home=home, env=env, platform=platform)
    if found is None:
        places = "\n  ".join(str(p) for p in searched)
        raise PluginInstallError(
            "no OpenPlanet Plugins folder found; searched:\n  "
            f"{places}\nIs OpenPlanet installed (https://openplanet.dev) and has the game "
            "been started once with it? Otherwise give the folder with --openplanet-dir DIR "
            "(the OpenplanetNext folder) or --plugins-dir DIR (the Plugins folder inside it)."
        )
    return found, searched


def _notes(plugins_dir: Path, op: bool) -> tuple[str, ...]:
    other = plugins_dir / (PLUGIN_FOLDER if op else OP_FILE)
    if not other.exists():
        return ()
    kind = "folder" if op else "packed"
    return (
        f"a {kind} copy of the plugin is also installed ({other}): OpenPlanet treats both as "
        "plugin 'tm-gym' and in Developer mode prefers the folder; delete the one you do not "
        "want so the right version runs",
    )


def install_plugin(
    dest: Path | None = None,
    *,
    openplanet_dir: Path | None = None,
    op: bool = False,
    dry_run: bool = False,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> InstallPlan:
    """Copy the plugin into ``<Plugins>/tm-gym/`` (or, with ``op``, ``<Plugins>/tm-gym.op``).

    Args:
        dest: The OpenPlanet ``Plugins`` folder (created if missing).
        openplanet_dir: The ``OpenplanetNext`` folder; the plugin goes to its ``Plugins``.
            Default for both: the first folder :func:`find_plugins_dir` finds (Windows user
            profile; Steam/Proton, Lutris, Heroic and Wine prefixes on Linux).
        op: Install the packed ``.op`` (:func:`build_op`) instead of the folder.
        dry_run: Only plan: return the copies without touching the disk.
        home, env, platform: See :func:`plugin_dirs`.

    Raises:
        PluginInstallError: no Plugins folder was found (the message lists the places
            searched), both folders were given, or writing failed.
    """
    plugins_dir, searched = _plugins_dir(
        dest, openplanet_dir, home=home, env=env, platform=platform
    )
    if op:
        target = plugins_dir
        files = [(OP_FILE, build_op())]
    else:
        target = plugins_dir / PLUGIN_FOLDER
        files = plugin_files()
    copies = tuple(
        PlannedCopy(
            name=name,
            destination=target / name,
            size=len(data),
            replaces=(target / name).exists(),
        )
        for name, data in files
    )
    plan = InstallPlan(
        plugins_dir=plugins_dir,
        target=target / OP_FILE if op else target,
        copies=copies,
        dry_run=dry_run,
        searched=tuple(searched),
        notes=_notes(plugins_dir, op),
    )
    if dry_run:
        return plan
    try:
        target.mkdir(parents=True, exist_ok=True)
        for (_, data), copy in zip(files, copies, strict=True):
            copy.destination.write_bytes(data)
    except OSError as exc:
        raise PluginInstallError(
            f"cannot write the plugin to {target}: {exc}; check that the folder is writable "
            "(or choose another with --openplanet-dir / --plugins-dir)"
        ) from exc
    for note in plan.notes:
        logger.warning("%s", note)
    logger.info("installed the OpenPlanet plugin in %s", plan.target)
    return plan
