"""dev.py: what each command installs, and that a command already covered installs nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "dev_under_test", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STAMP", tmp_path / "stamp.json")
    return module


def installs(dev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record pip runs instead of running them."""
    calls: list[list[str]] = []

    def fake_run(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(dev, "run", fake_run)
    monkeypatch.setattr(dev, "venv_python", lambda: Path("python"))
    return calls


def test_requirements_merge_extras_per_requirement(dev: ModuleType) -> None:
    wanted = dev.requirements(["-e", "./a[x,y]", "-e", "./a[z]", "-r", "req.txt", "box2d"])
    assert wanted == {
        "-e ./a": frozenset({"x", "y", "z"}),
        "-r req.txt": frozenset(),
        "box2d": frozenset(),
    }


def test_after_train_demo_installs_nothing(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = installs(dev, monkeypatch)
    assert dev.ensure_installed("train", dev.COMMANDS["train"])
    assert len(calls) == 1
    assert dev.ensure_installed("demo", dev.COMMANDS["demo"])
    assert dev.ensure_installed("train", dev.COMMANDS["train"])
    assert len(calls) == 1  # demo's tm-gym[viz] is inside train's install
    assert dev.ensure_installed("test", dev.COMMANDS["test"])
    assert len(calls) == 2  # test needs more (tm-dist, extras, requirements-test.txt)


def test_a_changed_pin_installs_again(dev: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = installs(dev, monkeypatch)
    assert dev.ensure_installed("demo", dev.COMMANDS["demo"])
    monkeypatch.setattr(dev, "inputs_digest", lambda: "other pins")
    assert dev.ensure_installed("demo", dev.COMMANDS["demo"])
    assert len(calls) == 2


def test_an_old_style_stamp_is_treated_as_nothing_installed(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = installs(dev, monkeypatch)
    dev.STAMP.write_text('{"demo": "0123abcd"}', encoding="utf-8")
    assert dev.ensure_installed("demo", dev.COMMANDS["demo"])
    assert len(calls) == 1
