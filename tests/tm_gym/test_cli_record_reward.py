"""``tm-gym record-reward`` records a reference from live telemetry, end to end over TCP: an
emulator core (no window) drives a short straight track on full gas to the finish."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tm_gym.cli.main import main
from tm_gym.emulator.app import EmulatorConfig, EmulatorCore
from tm_gym.reward import ReferenceTrajectory

STRAIGHT = {
    "format": "tm-gym-track/1",
    "name": "straight",
    "width": 20,
    "segments": [{"straight": 160}],
    "finish": 90,
}


@pytest.fixture
def emulator(tmp_path: Path) -> EmulatorCore:
    track = tmp_path / "straight.json"
    track.write_text(json.dumps(STRAIGHT))
    core = EmulatorCore(EmulatorConfig(track=str(track), port=0, countdown=0.5))
    core.open()
    stop = threading.Event()

    def loop() -> None:  # what the window's frame loop does, at 100 Hz
        while not stop.wait(0.01):
            core.tick()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield core
    finally:
        stop.set()
        thread.join(5)
        core.close()


@pytest.mark.slow  # a whole lap in the emulator
def test_records_from_start_to_finish(emulator: EmulatorCore, tmp_path: Path) -> None:
    out = tmp_path / "ref.npz"
    emulator.key_down("Up")
    code = main(
        ["record-reward", "--out", str(out), "--port", str(emulator.port), "--timeout", "5"]
    )
    assert code == 0
    ref = ReferenceTrajectory.load(out)
    pts = ref.points
    assert pts.shape[1] == 3
    # from the start line (x = 10) along the straight to the finish (x = 90), y = z = 0
    assert pts[0, 0] == pytest.approx(10.0, abs=0.5)
    assert 89.0 < pts[-1, 0] < 100.0
    assert np.allclose(pts[:, 2], 0.0, atol=1e-6)
    assert np.allclose(np.linalg.norm(np.diff(pts, axis=0), axis=1), 0.1, atol=1e-6)


def test_rejects_a_bad_output_name(
    emulator: EmulatorCore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["record-reward", "--out", str(tmp_path / "ref.pkl"), "--port", str(emulator.port)])
    assert code == 2
    assert ".npz or .json" in capsys.readouterr().err
