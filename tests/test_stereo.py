"""Per-band width and the mono-compatibility check: mono lows, all-pass reconstruction, band
gains and the check's figures (the effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
from contract import noise

from diffmix.effects.stereo import BandWidth
from diffmix.functional.gain import mid_side
from diffmix.functional.stereo import band_width, mono_compatibility

SR = 44100


def _tones(freqs: list[float], n: int, sr: int) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    return sum(torch.sin(2 * math.pi * f * t + i) for i, f in enumerate(freqs))


def _rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt())


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("low_hz", [80.0, 200.0])
def test_low_band_side_is_zero_at_zero_width(sr, low_hz, dtype):
    # Side content an octave and more below the crossover, mid content everywhere.
    n = sr // 2
    side = _tones([low_hz / 8, low_hz / 4, low_hz / 2], n, sr)
    mid = _tones([low_hz / 4, 1000.0, 6000.0], n, sr)
    x = torch.stack([mid + side, mid - side]).unsqueeze(0).to(dtype)
    y = band_width(x, sr, low_width=0.0, mid_width=1.5, high_width=2.0, low_hz=low_hz, high_hz=4000.0)
    ms = mid_side(y.double())[..., n // 10 : -n // 10]
    # LR4 skirt: -24 dB/octave from the crossover, -6 dB at it, so -18 dB an octave down.
    assert _rms(ms[:, 1]) / _rms(side) < 10 ** (-17 / 20)
    # Strictly two octaves and more down, the side is gone (< -60 dB).
    deep = band_width(
        torch.stack([mid + _tones([low_hz / 8], n, sr), mid - _tones([low_hz / 8], n, sr)])
        .unsqueeze(0)
        .to(dtype),
        sr,
        low_width=0.0,
        low_hz=low_hz,
    )
    assert _rms(mid_side(deep.double())[:, 1, n // 10 : -n // 10]) < 10 ** (-60 / 20)
    # ...and the mid keeps its level.
    assert _rms(ms[:, 0]) == pytest.approx(_rms(mid), rel=1e-3)


def test_unity_widths_are_an_all_pass():
    x = noise(1, 2, 1 << 14)
    y = band_width(x, SR, low_width=1.0, mid_width=1.0, high_width=1.0, low_hz=150.0, high_hz=4000.0)
    # Same magnitude spectrum (to the FFT's resolution at the signal edges), same energy.
    assert float(y.square().sum() / x.square().sum()) == pytest.approx(1.0, abs=2e-3)
    torch.testing.assert_close(
        mono_compatibility(y, SR).correlation, mono_compatibility(x, SR).correlation, atol=5e-3, rtol=0
    )


@pytest.mark.parametrize("band, freq", [("mid_width", 1000.0), ("high_width", 10000.0)])
def test_each_band_scales_its_side(band, freq):
    n = SR
    s = _tones([freq], n, SR)
    x = torch.stack([s, -s]).unsqueeze(0)  # pure side
    y = band_width(x, SR, **{"low_width": 1.0, "mid_width": 1.0, "high_width": 1.0, band: 1.7})
    assert _rms(mid_side(y)[:, 1, n // 10 : -n // 10]) == pytest.approx(1.7 * _rms(s), rel=0.01)


def test_mono_compatibility_figures():
    a, b = noise(1, 1, 100_000, seed=1), noise(1, 1, 100_000, seed=2)
    same = mono_compatibility(torch.cat([a, a], 1), SR)
    unrelated = mono_compatibility(torch.cat([a, b], 1), SR)
    opposite = mono_compatibility(torch.cat([a, -a], 1), SR)
    assert same.correlation.item() == pytest.approx(1.0, abs=1e-9)
    assert same.fold_down_db.item() == pytest.approx(0.0, abs=1e-9)
    assert unrelated.correlation.item() == pytest.approx(0.0, abs=0.02)
    assert unrelated.fold_down_db.item() == pytest.approx(-3.01, abs=0.1)
    assert opposite.correlation.item() == pytest.approx(-1.0, abs=1e-9)
    assert opposite.fold_down_db.item() <= -100.0
    # Per band: an anti-phase bass beside a mono one, under a mono top.
    n = SR
    bass, top = _tones([50.0], n, SR), _tones([1500.0, 8000.0], n, SR)
    mono_bass = 0.3 * _tones([70.0], n, SR)
    x = torch.stack([top + mono_bass + bass, top + mono_bass - bass]).unsqueeze(0)
    bands = mono_compatibility(x, SR, crossover_hz=(150.0, 4000.0))
    assert bands.correlation.shape == (1, 3)
    assert (
        bands.correlation[0, 0] < -0.8 and bands.correlation[0, 1] > 0.99 and bands.correlation[0, 2] > 0.99
    )
    fixed = mono_compatibility(
        band_width(x, SR, low_width=0.0, low_hz=150.0), SR, crossover_hz=(150.0, 4000.0)
    )
    assert fixed.correlation[0, 0] > 0.99 and fixed.fold_down_db[0, 0] > -0.01


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: BandWidth(SR)(torch.zeros(1, 1, 64)), "BandWidth: audio must have 2 channel"),
        (lambda: BandWidth(16000), "BandWidth: sample_rate must be at least 22050"),
        (lambda: BandWidth(SR, low_hz=20.0), r"BandWidth: low_hz=20 is outside its range"),
        (
            lambda: band_width(torch.zeros(1, 2, 64), 8000, high_hz=6000.0),
            "high_hz=6000 must lie between 0 and Nyquist",
        ),
        (
            lambda: mono_compatibility(torch.zeros(1, 3, 64), SR),
            "mono_compatibility: audio must have 2 channel",
        ),
        (
            lambda: mono_compatibility(torch.zeros(1, 2, 64), SR, crossover_hz=(500.0, 200.0)),
            "low_hz=500 must be below high_hz=200",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
