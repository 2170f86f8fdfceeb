"""tm_gym must stay usable without PyTorch: importing it, or any of its modules, must not import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

NOT_IMPORTED = {
    "tm_gym.__main__": "importing it runs the tm-gym command line (it is `python -m tm_gym`)",
}
"""Modules the walk does not import, each with the reason. Every other module must import here,
on Linux without a game or display: platform-specific adapters (``tm_gym.game.capture.windows``,
``tm_gym.game.keyboard.sendinput``) and optional extras (``minari``) fail only when used."""

# Runs in a fresh interpreter (in this one, other tests may already have imported torch). Prints a
# JSON report: the modules walked, the .py files found on disk, import failures, and the first
# module after whose import torch was loaded.
_WALK = """
import importlib, json, pkgutil, sys, traceback
from pathlib import Path
import tm_gym

skip = set(json.loads(sys.argv[1]))
root = Path(tm_gym.__file__).parent
report = {"walked": ["tm_gym"], "failed": {}, "torch_after": None}
report["files"] = sorted(
    ".".join(("tm_gym",) + p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    for p in root.rglob("*.py")
)
if "torch" in sys.modules:
    report["torch_after"] = "tm_gym"
def onerror(name):
    report["failed"][name] = traceback.format_exc(limit=3)
for info in pkgutil.walk_packages(tm_gym.__path__, "tm_gym.", onerror=onerror):
    report["walked"].append(info.name)
    if info.name in skip:
        continue
    try:
        importlib.import_module(info.name)
    except BaseException:
        report["failed"][info.name] = traceback.format_exc(limit=3)
    if report["torch_after"] is None and "torch" in sys.modules:
        report["torch_after"] = info.name
print(json.dumps(report))
"""


def _walk() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _WALK, json.dumps(sorted(NOT_IMPORTED))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_importing_tm_gym_does_not_import_torch() -> None:
    # A fresh interpreter: in this one, other tests may already have imported torch.
    code = "import sys, tm_gym; assert 'torch' not in sys.modules, 'tm_gym imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_tm_gym_module_imports_without_torch() -> None:
    report = _walk()
    walked, files = set(report["walked"]), set(report["files"])
    # a folder without __init__.py is skipped by the walk: its modules would go unchecked
    assert files <= walked, f"modules the walk did not reach: {sorted(files - walked)}"
    assert set(NOT_IMPORTED) <= walked, (
        f"NOT_IMPORTED names modules that no longer exist: {sorted(set(NOT_IMPORTED) - walked)}"
    )
    assert not report["failed"], "modules that fail to import:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in sorted(report["failed"].items())
    )
    assert report["torch_after"] is None, (
        f"importing {report['torch_after']} imported torch; tm_gym must work without PyTorch "
        "(import it lazily, inside the function that needs it)"
    )
    assert len(files) > 1, f"found no modules under tm_gym: {sorted(files)}"
