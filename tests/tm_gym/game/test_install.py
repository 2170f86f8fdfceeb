"""Tests for the OpenPlanet plugin files and their installer (tm_gym.game.install)."""

from __future__ import annotations

import io
import re
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from tm_gym.error import TMGymError
from tm_gym.game.install import (
    NEXT_STEPS,
    OP_FILE,
    PLUGIN_FILES,
    PLUGIN_FOLDER,
    PluginInstallError,
    build_op,
    find_plugins_dir,
    install_plugin,
    plugin_dirs,
    plugin_files,
    steam_libraries,
)
from tm_gym.game.telemetry import MAGIC_V2, TMRL_FLOATS, V2_FLOATS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

STEAM_PLUGINS = Path(
    ".local/share/Steam/steamapps/compatdata/2225070/pfx/drive_c/users/steamuser/"
    "OpenplanetNext/Plugins"
)

# --------------------------------------------------------------------------- the plugin


def test_the_package_ships_the_plugin() -> None:
    folder = resources.files("tm_gym.game").joinpath("plugin")
    for name in PLUGIN_FILES:
        assert folder.joinpath(name).is_file(), f"{name} missing from the package"
    assert [name for name, _ in plugin_files()] == list(PLUGIN_FILES)


def test_info_toml_parses_with_the_expected_keys() -> None:
    text = resources.files("tm_gym.game").joinpath("plugin", "info.toml").read_text("utf-8")
    info = tomllib.loads(text)
    meta = info["meta"]
    assert meta["name"] == "tm-gym telemetry"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["category"]
    assert meta["author"]
    assert "VehicleState" in info["script"]["dependencies"]


def test_main_as_follows_the_protocol() -> None:
    """The plugin cannot run here; check what can be checked from its text."""
    src = resources.files("tm_gym.game").joinpath("plugin", "main.as").read_text("utf-8")
    assert "int Setting_Port = 9000;" in src
    assert "bool Setting_TmrlCompatible" in src
    assert '"127.0.0.1"' in src
    # the magic, byte by byte
    magic = re.search(r"array<uint8> magic = \{([^}]*)\}", src)
    assert magic is not None
    assert bytes(int(b, 16) for b in magic.group(1).split(",")) == MAGIC_V2
    # one float per field of each layout: 11 before the TMRL cut, 19 in all
    record = re.search(r"void FillRecord\(.*?\n\}", src, re.S)
    orientation = re.search(r"void WriteOrientation\(.*?\n\}", src, re.S)
    assert record is not None and orientation is not None
    first, rest = record.group(0).split("if (tmrl) return;")
    assert len(re.findall(r"buf\.Write\(", first)) == TMRL_FLOATS
    extras = len(re.findall(r"buf\.Write\(", rest)) + 3  # + WriteOrientation: 3 floats
    assert "WriteOrientation(buf, player);" in rest
    assert TMRL_FLOATS + extras == V2_FLOATS
    assert orientation.group(0).count("buf.Write(") == 6  # 3 values, or 3 NaNs
    assert "yield();" in src
    # balanced braces: a cheap guard against a truncated edit
    assert src.count("{") == src.count("}")


def test_op_archive_holds_the_plugin_files_at_its_root(tmp_path: Path) -> None:
    data = build_op(tmp_path / "tm-gym.op")
    assert (tmp_path / "tm-gym.op").read_bytes() == data == build_op()  # reproducible
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == list(PLUGIN_FILES)
        for name, content in plugin_files():
            assert archive.read(name) == content
        assert archive.testzip() is None


# --------------------------------------------------------------------------- candidates


def test_windows_candidate_is_in_the_user_profile(tmp_path: Path) -> None:
    dirs = plugin_dirs(env={"USERPROFILE": str(tmp_path)}, platform="win32")
    assert dirs == [tmp_path / "OpenplanetNext" / "Plugins"]


def test_linux_candidates_include_steam_proton_prefixes(tmp_path: Path) -> None:
    dirs = plugin_dirs(home=tmp_path, env={"USER": "ann"}, platform="linux")
    assert tmp_path / STEAM_PLUGINS in dirs
    assert (
        tmp_path
        / ".steam/steam/steamapps/compatdata/2225070/pfx/drive_c/users/steamuser"
        / "OpenplanetNext/Plugins"
    ) in dirs
    assert tmp_path / ".wine/drive_c/users/ann/OpenplanetNext/Plugins" in dirs
    # Steam first
    assert "compatdata" in str(dirs[0])
    assert len(dirs) == len(set(dirs))


def test_home_comes_from_env_when_not_given(tmp_path: Path) -> None:
    dirs = plugin_dirs(env={"HOME": str(tmp_path)}, platform="linux")
    assert all(str(d).startswith(str(tmp_path)) for d in dirs)


def test_wineprefix_is_searched(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    dirs = plugin_dirs(
        home=tmp_path / "home", env={"WINEPREFIX": str(prefix), "USER": "bob"}, platform="linux"
    )
    assert prefix / "drive_c/users/bob/OpenplanetNext/Plugins" in dirs


def test_extra_steam_libraries_are_searched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    vdf = home / ".local/share/Steam/steamapps/libraryfolders.vdf"
    vdf.parent.mkdir(parents=True)
    library = tmp_path / "games disk" / "SteamLibrary"
    vdf.write_text(
        '"libraryfolders"\n{\n\t"0"\n\t{\n\t\t"path"\t\t"'
        + str(home / ".local/share/Steam")
        + '"\n\t}\n\t"1"\n\t{\n\t\t"path"\t\t"'
        + str(library)
        + '"\n\t\t"apps"\n\t\t{\n\t\t\t"2225070"\t\t"123"\n\t\t}\n\t}\n}\n'
    )
    assert library in steam_libraries(home / ".local/share/Steam")
    dirs = plugin_dirs(home=home, env={}, platform="linux")
    assert (
        library / "steamapps/compatdata/2225070/pfx/drive_c/users/steamuser/OpenplanetNext/Plugins"
    ) in dirs


def test_symlinked_steam_roots_are_listed_once(tmp_path: Path) -> None:
    real = tmp_path / ".local/share/Steam"
    real.mkdir(parents=True)
    (tmp_path / ".steam").mkdir()
    (tmp_path / ".steam/steam").symlink_to(real)
    dirs = plugin_dirs(home=tmp_path, env={}, platform="linux")
    prefixes = [d for d in dirs if "compatdata" in str(d)]
    resolved = [str(Path(*d.parts).resolve()) for d in prefixes]
    assert len(resolved) == len(set(resolved))


def test_find_needs_openplanet_folder(tmp_path: Path) -> None:
    found, searched = find_plugins_dir(home=tmp_path, env={}, platform="linux")
    assert found is None
    assert searched
    (tmp_path / STEAM_PLUGINS).parent.mkdir(parents=True)  # OpenplanetNext, no Plugins yet
    found, _ = find_plugins_dir(home=tmp_path, env={}, platform="linux")
    assert found == tmp_path / STEAM_PLUGINS


# --------------------------------------------------------------------------- install


def test_install_copies_into_a_tm_gym_folder(tmp_path: Path) -> None:
    (tmp_path / STEAM_PLUGINS).mkdir(parents=True)
    plan = install_plugin(home=tmp_path, env={}, platform="linux")
    target = tmp_path / STEAM_PLUGINS / PLUGIN_FOLDER
    assert plan.target == target
    assert plan.plugins_dir == tmp_path / STEAM_PLUGINS
    assert not plan.dry_run
    assert sorted(p.name for p in target.iterdir()) == sorted(PLUGIN_FILES)
    for name, data in plugin_files():
        assert (target / name).read_bytes() == data
    assert [c.destination for c in plan.copies] == [target / n for n in PLUGIN_FILES]
    assert not any(c.replaces for c in plan.copies)
    assert plan.searched
    assert "Developer" in plan.next_steps and "(Re)load plugin" in plan.next_steps
    # a second install replaces the files
    again = install_plugin(home=tmp_path, env={}, platform="linux")
    assert all(c.replaces for c in again.copies)


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    plugins = tmp_path / "Plugins"
    plan = install_plugin(plugins, dry_run=True)
    assert plan.dry_run
    assert not plugins.exists()
    assert [c.destination for c in plan.copies] == [
        plugins / PLUGIN_FOLDER / n for n in PLUGIN_FILES
    ]
    assert all(c.size > 0 for c in plan.copies)
    assert plan.searched == ()


def test_explicit_folder_is_created(tmp_path: Path) -> None:
    plugins = tmp_path / "OpenplanetNext" / "Plugins"
    plan = install_plugin(plugins)
    assert (plugins / PLUGIN_FOLDER / "main.as").is_file()
    assert plan.next_steps == NEXT_STEPS


def test_explicit_folder_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "Plugins"
    f.write_text("")
    with pytest.raises(PluginInstallError, match="is a file"):
        install_plugin(f)


def test_nothing_found_lists_the_places_searched(tmp_path: Path) -> None:
    with pytest.raises(PluginInstallError) as info:
        install_plugin(home=tmp_path, env={}, platform="linux")
    text = str(info.value)
    assert "--plugins-dir" in text and "--openplanet-dir" in text
    assert str(tmp_path / STEAM_PLUGINS) in text
    assert isinstance(info.value, TMGymError)
    assert not any(tmp_path.iterdir())  # nothing created


def test_write_failure_is_explained(tmp_path: Path) -> None:
    plugins = tmp_path / "Plugins"
    plugins.mkdir()
    (plugins / PLUGIN_FOLDER).write_text("a file where the plugin folder should go")
    with pytest.raises(PluginInstallError, match="cannot write the plugin"):
        install_plugin(plugins)


def test_openplanet_dir_installs_into_its_plugins_folder(tmp_path: Path) -> None:
    base = tmp_path / "pfx" / "drive_c" / "users" / "steamuser" / "OpenplanetNext"
    plan = install_plugin(openplanet_dir=base)
    assert plan.plugins_dir == base / "Plugins"
    assert (base / "Plugins" / PLUGIN_FOLDER / "main.as").is_file()
    # pointing at Plugins itself works too
    assert install_plugin(openplanet_dir=base / "Plugins").plugins_dir == base / "Plugins"
    with pytest.raises(PluginInstallError, match="not both"):
        install_plugin(base / "Plugins", openplanet_dir=base)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(PluginInstallError, match="is a file"):
        install_plugin(openplanet_dir=afile)


def test_op_install_writes_the_archive_and_notes_a_folder_copy(tmp_path: Path) -> None:
    plugins = tmp_path / "OpenplanetNext" / "Plugins"
    install_plugin(plugins)  # the folder first
    plan = install_plugin(plugins, op=True)
    assert plan.target == plugins / OP_FILE
    assert (plugins / OP_FILE).read_bytes() == build_op()
    assert [c.name for c in plan.copies] == [OP_FILE]
    assert plan.notes and "prefers the folder" in plan.notes[0]
    dry = install_plugin(tmp_path / "elsewhere", op=True, dry_run=True)
    assert not (tmp_path / "elsewhere").exists() and dry.copies[0].size == len(build_op())


def test_install_plugin_cli_op_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tm_gym.cli.main import main

    out = tmp_path / "tm-gym.op"
    assert main(["install-plugin", "--op", "--out", str(out)]) == 0
    assert out.read_bytes() == build_op()
    assert main(["install-plugin", "--out", str(out)]) == 2
    assert "--op" in capsys.readouterr().err
    target = tmp_path / "OpenplanetNext"
    assert main(["install-plugin", "--openplanet-dir", str(target)]) == 0
    assert (target / "Plugins" / PLUGIN_FOLDER / "info.toml").is_file()
    assert "Signature Mode" in capsys.readouterr().out
