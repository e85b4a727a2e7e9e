"""Saturation: aliasing of a driven 5 kHz sine, curve shapes, the tone filter and bad input
(the effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import noise

from diffmix.effects.distortion import Saturation
from diffmix.functional.distortion import saturate, shape

SR = 44100


def _spectrum(y: torch.Tensor, sr: int, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """Blackman-windowed magnitude spectrum of the steady middle of ``y``."""
    sig = y[0, 0].double().cpu().numpy()
    sig = sig[len(sig) // 10 : -len(sig) // 10]
    mag = np.abs(np.fft.rfft(sig * np.blackman(len(sig))))
    return np.fft.rfftfreq(len(sig), 1.0 / sr), mag


def _alias_db(y: torch.Tensor, sr: int, f0: float) -> float:
    """Strongest component that is not a harmonic of f0 (or DC), dB re the fundamental."""
    f, mag = _spectrum(y, sr, f0)
    keep = f > 30.0
    for h in np.arange(f0, sr / 2, f0):
        keep &= np.abs(f - h) > 60.0
    fund = mag[np.abs(f - f0) < 30.0].max()
    return 20.0 * math.log10(mag[keep].max() / fund)


def _sine(f0: float, sr: int, n: int, amp: float = 0.5, dtype=torch.float64, device="cpu") -> torch.Tensor:  # noqa: ANN001
    t = torch.arange(n, dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * f0 * t)).view(1, 1, -1).to(dtype=dtype, device=device)


@pytest.mark.parametrize("curve", ["tanh", "soft", "tube"])
def test_driven_5khz_sine_aliases_at_least_60db_down(curve, dtype, device):
    x = _sine(5000.0, SR, SR // 2, dtype=dtype, device=device)
    y = saturate(x, SR, drive_db=24.0, curve=curve, oversample=8)
    assert _alias_db(y, SR, 5000.0) <= -60.0
    # The check can fail: without oversampling the same drive aliases within ~20 dB.
    assert _alias_db(saturate(x, SR, drive_db=24.0, curve=curve, oversample=1), SR, 5000.0) > -30.0


@pytest.mark.parametrize("curve", ["tanh", "soft", "tube"])
def test_small_signals_pass_through_only_the_post_filters(curve):
    # Every curve has unit slope at 0, and the resamplers are transparent below 0.9 x
    # Nyquist, so a quiet signal leaves through the tone low-pass (and, for tube, the DC
    # blocker) alone: compare with scipy's lfilter of those recursions.
    import scipy.signal as ss

    n = 8192
    t = np.arange(n) / SR
    x = 1e-4 * (np.sin(2 * np.pi * 210 * t) + np.sin(2 * np.pi * 1130 * t + 1) + np.sin(2 * np.pi * 4300 * t))
    y = saturate(
        torch.from_numpy(x).view(1, 1, -1), SR, drive_db=0.0, tone_hz=8000.0, curve=curve, oversample=4
    )
    a = math.exp(-2 * math.pi * 8000.0 / SR)
    want = ss.lfilter([1 - a], [1, -a], x)
    if curve == "tube":
        r = math.exp(-2 * math.pi * 10.0 / SR)
        want = ss.lfilter([1, -1], [1, -r], want)
    body = slice(n // 8, -n // 8)
    err = np.abs(y[0, 0].numpy()[body] - want[body]).max() / np.abs(want[body]).max()
    assert err < 1e-4, err


def test_curves_are_bounded_odd_or_asymmetric():
    u = torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64)
    for curve in ("tanh", "soft"):
        y = shape(u, curve)
        assert y.abs().max() <= 1.0 and torch.allclose(y, -shape(-u, curve))
    tube = shape(u, "tube")
    assert float(tube.max()) < 1.0 and float(-tube.min()) > 1.2  # clips later going negative


def test_tube_adds_even_harmonics_and_tanh_does_not():
    x = _sine(1000.0, SR, SR // 2)
    for curve, even in (("tanh", False), ("tube", True)):
        f, mag = _spectrum(saturate(x, SR, drive_db=12.0, curve=curve), SR, 1000.0)
        fund = mag[np.abs(f - 1000) < 20].max()
        second = 20 * math.log10(mag[np.abs(f - 2000) < 20].max() / fund)
        assert (second > -40.0) if even else (second < -100.0), (curve, second)
    # ...and its DC blocker removes the offset the asymmetry creates.
    assert abs(float(saturate(x, SR, drive_db=18.0, curve="tube")[..., SR // 4 :].mean())) < 1e-3


@pytest.mark.parametrize("drive_db", [6.0, 12.0, 24.0, 36.0])
def test_tanh_harmonics_match_pedalboard_distortion(drive_db):
    """pedalboard's Distortion is tanh(drive * x) at the base rate. On a 100 Hz sine, whose
    harmonics stay far below Nyquist so neither side aliases, the fundamental and the 3rd, 5th
    and 7th harmonics of ``curve="tanh"`` agree with it to 0.02 dB."""
    import pedalboard as pb

    sr = 48000
    x = (0.5 * np.sin(2 * np.pi * 100.0 * np.arange(sr) / sr)).astype(np.float32)
    ours = Saturation(sr, drive_db=drive_db, curve="tanh")(torch.from_numpy(x).view(1, 1, -1))
    theirs = pb.Distortion(drive_db=drive_db)(x[None], sr)[0]

    def harmonics_db(y: np.ndarray) -> np.ndarray:
        half = y[sr // 2 :]  # 0.5 s = 50 whole cycles: harmonic k sits in bin 50 k
        mag = np.abs(np.fft.rfft(half)) * 2 / len(half)
        return 20 * np.log10(mag[[50, 150, 250, 350]])

    got, want = harmonics_db(ours.detach().numpy()[0, 0]), harmonics_db(theirs)
    np.testing.assert_allclose(got, want, atol=0.02)
    assert want[1] > -30.0  # the drive really distorts: a 3rd harmonic within 30 dB


@pytest.mark.parametrize("fc", [1000.0, 5000.0])
def test_tone_is_a_one_pole_low_pass(fc):
    x = noise(1, 1, 8192) * 1e-4
    y = saturate(x, SR, drive_db=0.0, tone_hz=fc, curve="tanh", oversample=1)
    a = math.exp(-2 * math.pi * fc / SR)
    w = 2 * math.pi * np.fft.rfftfreq(8192, 1 / SR) / SR
    want = np.abs((1 - a) / (1 - a * np.exp(-1j * w)))
    got = np.abs(np.fft.rfft(y[0, 0].numpy()) / np.fft.rfft(x[0, 0].numpy()))
    # Signal edges make the ratio ragged; compare bins over the body of the spectrum.
    np.testing.assert_allclose(np.median(got[100:3000] / want[100:3000]), 1.0, atol=2e-3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Saturation(SR, curve="fuzz"), r"Saturation: unknown curve 'fuzz'"),
        (lambda: Saturation(SR, oversample=3), "Saturation: oversample must be one of"),
        (lambda: Saturation(SR, drive_db=50.0), r"Saturation: drive_db=50 is outside its range"),
        (lambda: saturate(torch.zeros(1, 1, 8), SR, curve="x"), "saturate: unknown curve"),
        (lambda: Saturation(SR)(torch.zeros(1, 8)), r"Saturation: audio must be \(batch, channels, time\)"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
