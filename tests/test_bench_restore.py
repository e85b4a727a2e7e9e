"""The restoration benchmark's speed table (``scripts/benchmarks/restore.py``): every
engine is timed alike, by CPU time, after an untimed run that absorbs one-time costs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmarks.restore import speed_rows  # noqa: E402


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_speed_rows_time_the_warm_calls_by_cpu_time(tmp_path):
    """A stub whose first call costs 0.3 s of CPU and later calls 0.01 s: the row reads
    the warm cost (the untimed first run absorbs the one-time cost), and a sleep (wall
    time, no CPU) does not count."""
    calls = []

    def stub(x, sr):
        _burn(0.3 if not calls else 0.01)
        time.sleep(0.02)
        calls.append(1)
        return x, x

    audio = np.zeros((2, 44100))  # 1 s of stereo audio
    rows, rtf = speed_rows([("stub", stub, "adeclick", [(audio, 44100)])], False, tmp_path,
                           repeat=3)
    assert len(calls) == 4  # one untimed, three timed
    assert rows == [["stub", f"{rtf[0]:.0f}x", "skipped"]]
    # 1 s of audio in about 0.01 s of CPU: near 100x, far from the 3x a cold first call
    # (or 33x a wall-clock timing with the sleep) would give.
    assert 50 < rtf[0] <= 101
