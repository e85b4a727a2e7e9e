"""``scripts/lmms-sets``: the window it cuts from a rendered LMMS song holds the most tracks."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.seeds import drawn_seed

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "lmms-sets"
_loader = importlib.machinery.SourceFileLoader("lmms_sets", str(_PATH))
_spec = importlib.util.spec_from_loader("lmms_sets", _loader)
assert _spec is not None
lmms_sets = importlib.util.module_from_spec(_spec)
_loader.exec_module(lmms_sets)


def test_window_holds_the_most_sounding_tracks():
    seed = drawn_seed(10**6)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    sr, seconds, length = 1000, 60, 10_000
    n = seconds * sr
    # Each track sounds over a random span; the window of 10 s that the most of them reach
    # is known by brute force over the 1 s grid.
    spans = [sorted(rng.integers(0, n, 2)) for _ in range(6)]
    tracks = []
    for lo, hi in spans:
        t = np.zeros((2, n))
        t[:, lo:hi] = rng.standard_normal((2, hi - lo)) * 0.1
        tracks.append(t)
    mix = sum(tracks) + 1e-3 * rng.standard_normal((2, n))
    start = lmms_sets.window(tracks, mix, length, sr, 2 * sr)

    def sounding(s: int) -> int:
        e = np.square(mix[:, s : s + length]).sum()
        return sum(np.square(t[:, s : s + length]).sum() > e * 1e-4 for t in tracks)

    best = max(sounding(s) for s in range(2 * sr, n - length + 1, sr))
    assert start >= 2 * sr and start % sr == 0, (seed, start)
    assert sounding(start) == best, (seed, start, spans)


def test_window_refuses_a_song_shorter_than_it():
    x = np.zeros((2, 5000))
    with pytest.raises(ValueError, match="shorter"):
        lmms_sets.window([x], x, 4000, 1000, 2000)
