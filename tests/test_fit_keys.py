"""The fit to a reference does not depend on the input's file name (issue 19): its
excerpts are drawn from the seed, the step and the song's length, so a renamed song is
fitted on the same excerpts, to the same loss, in the same steps (it ran 86 steps instead
of 41 under another name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def _master(tmp: Path, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "diffmix.cli", "master", f"input={name}.wav", "reference=ref.wav",
         "target=none", "fit.steps=3", "fit.excerpt_s=1.0", "plot=false", "progress=false",
         f"out=out_{name}"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp / f"out_{name}" / f"{name}_master_report.json").read_text())["fit"]


def test_a_renamed_song_is_fitted_the_same(tmp_path):
    g = np.random.default_rng(19)
    print("seed 19")
    t = np.arange(4 * SR) / SR
    song = 0.2 * np.sin(2 * np.pi * 110 * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    song += 0.02 * g.standard_normal(t.size)
    ref = 0.1 * g.standard_normal((2, 3 * SR))
    for name in ("song", "another name"):
        sf.write(str(tmp_path / f"{name}.wav"), np.stack([song, 0.8 * song]).T, SR, subtype="FLOAT")
    sf.write(str(tmp_path / "ref.wav"), ref.T, SR, subtype="FLOAT")
    a, b = _master(tmp_path, "song"), _master(tmp_path, "another name")
    print(a, b)
    assert a["steps"] == b["steps"] == 3
    assert a["loss"] == b["loss"] and a["best_loss"] == b["best_loss"]
