"""Matching features: physical checks."""

from __future__ import annotations

import math

import pytest
import torch
from contract import noise

from diffmix.features import FeatureExtractor, correlation, crest_factor_db


def test_correlation_extremes_and_silence():
    x = noise(1, 1, 4000)
    assert float(correlation(torch.cat([x, x], 1))) == pytest.approx(1.0)
    assert float(correlation(torch.cat([x, -x], 1))) == pytest.approx(-1.0)
    assert float(correlation(torch.zeros(1, 2, 100))) == 1.0


def test_crest_factor_of_a_sine_is_3db():
    t = torch.arange(48000, dtype=torch.float64) / 48000
    sine = 0.5 * torch.sin(2 * math.pi * 997 * t).view(1, 1, -1)
    assert float(crest_factor_db(sine)) == pytest.approx(10 * math.log10(2), abs=0.05)


def test_correlation_and_crest_factor_against_float64_loops_and_gradcheck():
    # The oracle: per-item sums in a Python loop over float64 values; then gradcheck in
    # float64 (the crest factor's peak is a single sample, away from ties).
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 300, generator=g, dtype=torch.float64)
    for b in range(3):
        left, right = x[b, 0].tolist(), x[b, 1].tolist()
        num = sum(a * c for a, c in zip(left, right, strict=True)) / 300
        den = math.sqrt(sum(a * a for a in left) / 300 * sum(c * c for c in right) / 300)
        assert float(correlation(x)[b]) == pytest.approx(num / den, rel=1e-12)
        flat = x[b].flatten().tolist()
        want = 20 * math.log10(max(abs(v) for v in flat) / math.sqrt(sum(v * v for v in flat) / len(flat)))
        assert float(crest_factor_db(x)[b]) == pytest.approx(want, rel=1e-12)
    short = x[..., :40].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(correlation, (short,))
    assert torch.autograd.gradcheck(crest_factor_db, (short,))
    assert torch.autograd.gradcheck(crest_factor_db, (-short,))  # the peak a negative sample
    # the values with and without a gradient are one computation
    assert torch.equal(crest_factor_db(short).detach(), crest_factor_db(short.detach()))


def test_crest_factor_of_silence_is_0db_with_no_gradient():
    for z in (torch.zeros(2, 2, 100, requires_grad=True), torch.full((1, 2, 50), 1e-14, requires_grad=True)):
        c = crest_factor_db(z)
        c.sum().backward()
        assert torch.equal(c.detach(), torch.zeros(z.shape[0])) and torch.equal(z.grad, torch.zeros_like(z))


def test_width_of_independent_noise_is_zero_db_and_mono_is_very_negative():
    fx = FeatureExtractor(44100, 4096)
    wide = fx(noise(1, 2, 44100 * 2))
    assert wide.width_db.abs().max() < 0.5
    mono = noise(1, 1, 44100 * 2).expand(-1, 2, -1)
    assert fx(mono).width_db.max() < -60


def test_tone_is_level_independent_and_sees_a_tilt():
    fx = FeatureExtractor(44100, 4096)
    x = noise(1, 2, 44100 * 2)
    a, b = fx(x), fx(0.1 * x)
    torch.testing.assert_close(a.tone_mid, b.tone_mid, atol=1e-3, rtol=0)
    tilted = torch.cumsum(x, -1) * 0.01  # integrating gives a -6 dB/octave tilt
    t = fx(tilted - tilted.mean(-1, keepdim=True)).tone_mid[0]
    # Band power of white noise rises 3 dB/oct (bands widen); the integrator's -6 dB/oct
    # leaves -3 dB/oct: 15 dB from 63 Hz (band 5) to 2 kHz (band 20).
    assert float(t[5] - t[20]) == pytest.approx(15.0, abs=1.5)


def test_feature_gradients_are_finite_on_silence():
    fx = FeatureExtractor(44100, 2048).double()
    x = torch.zeros(1, 2, 8192, dtype=torch.float64, requires_grad=True)
    f = fx(x)
    (f.tone_mid.sum() + f.width_db.sum() + f.correlation.sum() + crest_factor_db(x).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_spectral_errors_zero_on_self_and_see_differences():
    from diffmix.features import side_mid_ratio_db_floored, spectral_errors

    x = noise(1, 2, 44100)
    same = spectral_errors(x, x, 44100, 2048)
    assert max(same.values()) < 1e-9
    narrower = torch.stack([x[:, 0] + 0.5 * x[:, 1], x[:, 1] + 0.5 * x[:, 0]], 1)
    diff = spectral_errors(narrower, x, 44100, 2048)
    # L' = L + R/2, R' = R + L/2 scale mid by 1.5 and side by 0.5: the side/mid power ratio
    # falls ninefold, by 20*log10(3) dB, and the error is its magnitude.
    assert diff["side_mid_ratio_error_db"] == pytest.approx(20 * math.log10(3), abs=1e-6)
    drop = side_mid_ratio_db_floored(narrower.double()) - side_mid_ratio_db_floored(x.double())
    assert float(drop) == pytest.approx(-20 * math.log10(3), abs=1e-6)


def test_spectral_errors_side_mid_is_the_audible_bands_not_a_dc_offset():
    # A DC offset on one channel (a defect some released files carry; the master's
    # high-pass removes it) puts most of the side's broadband power at 0 Hz. The width a
    # master is judged on is that of the audible band: the same music with and without
    # the offset reads the same, and a real change of width still reads in full.
    from diffmix.features import side_mid_ratio_db_floored, spectral_errors

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    common = 0.1 * torch.randn(1, 1, 44100, generator=g, dtype=torch.float64)
    x = common + 0.02 * torch.randn(1, 2, 44100, generator=g, dtype=torch.float64)  # a narrow mix
    offset = torch.zeros(1, 2, 1, dtype=torch.float64)
    offset[0, int(torch.randint(0, 2, (), generator=g))] = 0.05 + 0.1 * float(torch.rand((), generator=g))
    with_dc = x + offset
    # the broadband ratio sees the offset (the side's power up by several dB) ...
    assert float(side_mid_ratio_db_floored(with_dc) - side_mid_ratio_db_floored(x)).__abs__() > 1.0
    # ... the metric does not
    assert spectral_errors(with_dc, x, 44100)["side_mid_ratio_error_db"] < 0.05
    narrower = torch.stack([x[:, 0] + 0.5 * x[:, 1], x[:, 1] + 0.5 * x[:, 0]], 1) + offset
    assert spectral_errors(narrower, x, 44100)["side_mid_ratio_error_db"] == pytest.approx(
        20 * math.log10(3), abs=0.05)
