"""Multiband compressor: the bands summing flat at unity, per-band settings acting on their
own band only, and bad input (the effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

from diffmix.effects.dynamics import MultibandCompressor
from diffmix.functional import multiband as F

SR = 44100
pytestmark = pytest.mark.usefixtures("_single_thread")

@pytest.mark.parametrize("sr", [44100, 48000, 96000])
@pytest.mark.parametrize("crossovers", [[200.0, 2000.0], [80.0, 800.0, 8000.0], [40.0, 41.0, 15000.0]])
def test_bands_at_unity_sum_flat(sr, crossovers):
    n = sr  # 1 s captures the crossover allpasses' decay to far below 0.01 dB
    x = torch.zeros(1, 1, n, dtype=torch.float64)
    x[..., 10] = 1.0
    y = F.multiband_compressor(x, sr, crossover_hz=crossovers, ratio=1.0, threshold_db=-60.0)
    mag_db = 20 * torch.log10(torch.fft.rfft(y[0, 0]).abs())
    freqs = torch.fft.rfftfreq(n, 1 / sr)
    band = (freqs >= 10.0) & (freqs <= 0.45 * sr)
    assert float(mag_db[band].abs().max()) <= 0.01
    # ...and it is the input through an allpass, not the input itself (phase does move).
    assert float((y - x).abs().max()) > 1e-3


def test_bands_split_at_their_crossovers():
    sr = 48000
    t = torch.arange(sr // 2, dtype=torch.float64) / sr
    for f, band in ((60.0, 0), (700.0, 1), (9000.0, 2)):
        x = torch.sin(2 * math.pi * f * t).view(1, 1, -1)
        bands = F.split_bands(x, sr, crossover_hz=[200.0, 2500.0])
        rms = torch.stack([b[..., sr // 4 :].square().mean().sqrt() for b in bands]).flatten()
        assert int(rms.argmax()) == band
        assert float(rms[band]) == pytest.approx(1 / math.sqrt(2), rel=0.02)


def test_each_band_compresses_only_its_own_band():
    sr = 44100
    t = torch.arange(sr, dtype=torch.float64) / sr
    low_tone = 0.5 * torch.sin(2 * math.pi * 60.0 * t).view(1, 1, -1)  # -6 dBFS peak
    high_tone = 0.5 * torch.sin(2 * math.pi * 8000.0 * t).view(1, 1, -1)
    x = low_tone + high_tone
    kw = dict(crossover_hz=[300.0, 3000.0], attack_ms=1.0, release_ms=200.0, knee_db=0.0)
    # Compress only the low band hard: the 60 Hz tone drops by the static curve's amount,
    # the 8 kHz tone passes at its level.
    y = F.multiband_compressor(x, sr, threshold_db=[-26.0, 0.0, 0.0], ratio=[10.0, 1.0, 1.0], **kw)
    spec = torch.fft.rfft(y[0, 0, sr // 2 :]).abs()
    ref = torch.fft.rfft(x[0, 0, sr // 2 :]).abs()
    bin_low, bin_high = 30, 4000  # 60 Hz and 8 kHz in a 0.5 s window
    low_change = 20 * math.log10(float(spec[bin_low] / ref[bin_low]))
    high_change = 20 * math.log10(float(spec[bin_high] / ref[bin_high]))
    assert low_change == pytest.approx((1 / 10 - 1) * (26.0 - 6.0206), abs=1.0)  # static curve
    assert abs(high_change) < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(crossover_hz=[500.0]), r"MultibandCompressor: crossover_hz needs 2 or 3 frequencies"),
        (dict(crossover_hz=[100.0, 200.0, 300.0, 400.0]), r"needs 2 or 3 frequencies"),
        (dict(crossover_hz=[2000.0, 200.0]), r"MultibandCompressor: crossover_hz must be strictly ascending"),
        (dict(crossover_hz=[200.0, 2000.0], ratio=[2.0, 3.0]), r"ratio needs one value per band \(3\)"),
        (dict(crossover_hz=[10.0, 2000.0]), r"crossover_hz=10 is outside its range \[20, 20000\]"),
        (dict(detector="vu"), r"MultibandCompressor: unknown detector 'vu'"),
    ],
)
def test_multiband_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultibandCompressor(SR, **kwargs)
