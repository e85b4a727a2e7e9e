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
    from diffmix.functional.loudness import integrated_loudness
    from diffmix.losses import MRSTFTLoss

    song = shared_multitrack / "Shovon-ProgressiveHousePluckDemo"
    out = run_cli("mix", f"stems={song / 'stems'}", f"reference={song / 'mix.flac'}", "fit.steps=20",
                  "progress=false", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads((tmp_path / "o" / "mix_report.json").read_text())
    assert report["spectral_error"]["tone_mid_rms_db"] < 10

    def load(path):  # noqa: ANN001, ANN202
        data, sr = sf.read(str(path), always_2d=True, dtype="float32")
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(data.T, (2, data.shape[0]))))[None], sr

    ref, sr = load(song / "mix.flac")
    mixed, _ = load(tmp_path / "o" / "mix.wav")
    stems = [load(p)[0] for p in sorted((song / "stems").glob("*.flac"))]
    n = min(ref.shape[-1], mixed.shape[-1], *(s.shape[-1] for s in stems))
    ref, mixed = ref[..., :n], mixed[..., :n]
    # The baseline: every stem at one loudness, the sum at the reference's loudness.
    def at(x, lufs):  # noqa: ANN001, ANN202
        return x * 10 ** ((lufs - float(integrated_loudness(x, sr)[0])) / 20)

    target = float(integrated_loudness(ref, sr)[0])
    baseline = at(sum(at(s[..., :n], -30.0) for s in stems), target)
    distance = MRSTFTLoss(sr)
    fitted = float(distance(at(mixed, target), ref))
    assert fitted < 0.97 * float(distance(baseline, ref))  # the fit moves toward the producer's mix
