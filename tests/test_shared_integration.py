"""Integration on the real LMMS multitracks in ../shared (skipped where it is absent)."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch
from jobs_helpers import run_cli

from diffmix.functional.peaks import true_peak

pytestmark = pytest.mark.slow


def test_shared_mixes_master_to_spotify_measured_independently(shared_multitrack, tmp_path):
    songs = sorted(p for p in shared_multitrack.iterdir() if (p / "mix.flac").exists())
    assert songs, "no shared songs found"
    for song in songs:
        out = run_cli("master", f"input={song / 'mix.flac'}", "target=spotify", "plot=false",
                      "progress=false", f"out={tmp_path / song.name}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        data, sr = sf.read(str(tmp_path / song.name / "mix_master.wav"), always_2d=True)
        lufs = pyloudnorm.Meter(sr).integrated_loudness(data)  # an independent meter
        assert abs(lufs - -14.0) <= 0.1, (song.name, lufs)
        tp = 20 * np.log10(float(true_peak(torch.from_numpy(data.T.copy()).unsqueeze(0), sr).max()))
        assert tp <= -1.0, (song.name, tp)


def test_shared_stems_mix_toward_the_producers_mix(shared_multitrack, tmp_path):
    song = shared_multitrack / "Shovon-ProgressiveHousePluckDemo"
    out = run_cli("mix", f"stems={song / 'stems'}", f"reference={song / 'mix.flac'}", "fit.steps=20",
                  "progress=false", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads((tmp_path / "o" / "mix_report.json").read_text())
    log = [json.loads(x) for x in (tmp_path / "o" / "fit_log.jsonl").read_text().splitlines()]
    first = np.mean([r["mrstft"] for r in log[:5]])
    last = np.mean([r["mrstft"] for r in log[-5:]])
    assert last < first, (first, last)  # the fit moves toward the producer's mix
    assert report["spectral_error"]["tone_mid_rms_db"] < 10
