"""The restoration benchmark's speed table (``scripts/benchmarks/restore.py``): every
engine is timed alike, by CPU time, after an untimed run that absorbs one-time costs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmarks.restore import _held_out, speed_rows  # noqa: E402


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


def test_held_out_row_counts_each_files_detections(tmp_path):
    """The held-out row reads every audio file of its folder: two clicks far over quiet noise
    in one file (one per channel) and none in the other read 2 per 20 s, 6 a minute, the
    clicked file 12 a minute and the clean one 0."""
    import soundfile as sf

    sr = 44100
    rng = np.random.default_rng(0)
    x = np.convolve(rng.standard_normal(sr * 10), np.ones(8) / 8, "same") * 0.05
    clean = np.stack([x, np.roll(x, 7)])
    sf.write(tmp_path / "a_clean.flac", clean.T, sr, subtype="PCM_24")
    y = clean.copy()
    y[0, 3 * sr : 3 * sr + 5] += 0.8
    y[1, 6 * sr : 6 * sr + 3] -= 0.8
    sf.write(tmp_path / "b_clicks.wav", y.T, sr, subtype="FLOAT")
    (tmp_path / "notes.txt").write_text("not audio")
    row, note = _held_out(tmp_path)
    assert row[0].startswith("none (held-out click-free songs, 2 files") and row[1] == "6.00", row
    assert "1 of 2 files at or under 1 detection a minute, median 6.00" in note, note
    assert note.endswith("b_clicks 12.00, a_clean 0.00."), note
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _held_out(empty) is None
