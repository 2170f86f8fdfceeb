"""tm_gym must stay usable without PyTorch: importing it must not import torch."""

from __future__ import annotations

import subprocess
import sys


def test_importing_tm_gym_does_not_import_torch() -> None:
    # A fresh interpreter: in this one, other tests may already have imported torch.
    code = "import sys, tm_gym; assert 'torch' not in sys.modules, 'tm_gym imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
