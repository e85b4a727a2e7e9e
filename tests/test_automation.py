"""VolumeAutomation: the curve's shape and its gradients (the effect contract is in
test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import noise

from diffmix.effects.automation import VolumeAutomation
from diffmix.functional.automation import gain_curve_db, volume_automation

SR = 8000
TIMES = [0.002, 0.01, 0.02, 0.03]  # within the 256-512-sample test signals at 8 kHz


def test_curve_passes_through_breakpoints_and_holds_outside():
    times = [0.5, 1.0, 2.5]
    gains = torch.tensor([-10.0, 4.0, -2.0], dtype=torch.float64)
    fs = 100
    for curve in ("cosine", "linear"):
        g = gain_curve_db(gains, times, 400, fs, curve=curve)
        for t, v in zip(times, gains.tolist(), strict=False):
            assert float(g[round(t * fs)]) == pytest.approx(v, abs=1e-12)
        assert torch.all(g[:50] == -10.0) and torch.all(g[250:] == -2.0)
        # Between breakpoints the curve stays within its two ends (no overshoot).
        seg = g[50:100]
        assert float(seg.min()) >= -10.0 and float(seg.max()) <= 4.0
        assert torch.all(seg.diff() >= 0)


def test_cosine_segments_are_raised_cosines_with_zero_slope_at_breakpoints():
    fs = 1000
    g = gain_curve_db(torch.tensor([0.0, -12.0], dtype=torch.float64), [0.0, 1.0], fs + 1, fs).numpy()
    u = np.arange(fs + 1) / fs
    np.testing.assert_allclose(g, -12.0 * (0.5 - 0.5 * np.cos(np.pi * u)), atol=1e-12)
    slope = np.diff(g) * fs  # dB per second
    assert (
        abs(slope[0]) < 0.05
        and abs(slope[-1]) < 0.05
        and abs(slope).max() == pytest.approx(6 * math.pi, rel=1e-3)
    )


def test_gain_is_applied_in_db():
    x = torch.ones(1, 2, 101, dtype=torch.float64)
    y = volume_automation(x, 100, times_s=[0.0, 1.0], gain_db=[-20.0, -20.0])
    torch.testing.assert_close(y, torch.full_like(x, 0.1), rtol=1e-12, atol=0)
    half = volume_automation(x, 100, times_s=[0.0, 1.0], gain_db=[-20.0, 0.0], amount=0.5)
    assert float(half[0, 0, 0]) == pytest.approx(10 ** (-10 / 20), rel=1e-12)


def test_per_channel_curves():
    x = torch.ones(1, 2, 50, dtype=torch.float64)
    gains = torch.tensor([[[0.0, -6.0], [-6.0, 0.0]]], dtype=torch.float64)
    with torch.no_grad():
        y = VolumeAutomation(100, times_s=[0.0, 0.4], gain_db=gains).double()(x)
    assert float(y[0, 0, -1]) == pytest.approx(10 ** (-6 / 20), rel=1e-6)
    assert float(y[0, 1, -1]) == pytest.approx(1.0, rel=1e-6)


def test_gradient_of_each_breakpoint_is_local():
    # A breakpoint only shapes its two neighbouring segments: the gradient of a loss on
    # the audio after the third breakpoint reaches gains 3 and 4, not 1 and 2.
    effect = VolumeAutomation(SR, times_s=TIMES, gain_db=[-6.0, 3.0, -20.0, 0.0]).double()
    x = noise(1, 1, 400)
    y = effect(x)
    y[..., int(0.021 * SR) :].square().sum().backward()
    grad = effect.params["gain_db"].raw.grad.flatten()
    assert grad[0] == 0 and grad[1] == 0 and grad[2] != 0 and grad[3] != 0


def test_no_python_loop_over_samples_long_signal_is_fast():
    import time

    x = torch.randn(4, 2, 44100 * 60)
    effect = VolumeAutomation(44100, times_s=[float(t) for t in range(0, 60, 5)], gain_db=[0.0, -3.0] * 6)
    # This thread's CPU time, not wall time: on a loaded machine the wall time of this
    # 0.2-0.3 s CPU render read 1.6-3.4 s (load 7.7), near the bound; not the process's
    # either, which counts every intra-op thread (spinning ones too). A per-sample loop
    # runs on this thread, for minutes.
    t0 = time.thread_time()
    with torch.no_grad():
        effect(x)
    assert time.thread_time() - t0 < 5.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VolumeAutomation(SR, times_s=[]), "times_s must be a non-empty list"),
        (lambda: VolumeAutomation(SR, times_s=[0.0, 0.0]), "strictly increasing"),
        (lambda: VolumeAutomation(SR, times_s=[-1.0]), "finite seconds >= 0"),
        (lambda: VolumeAutomation(SR, times_s=[0.0, 1.0], gain_db=[0.0]), "trailing axis of 2 values"),
        (
            lambda: VolumeAutomation(SR, times_s=[0.0], curve="spline"),
            "VolumeAutomation: unknown curve 'spline'",
        ),
        (
            lambda: VolumeAutomation(SR, times_s=[0.0], gain_db=[30.0]),
            r"gain_db=30 is outside its range \[-80, 24\]",
        ),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_audio_raises():
    with pytest.raises(ValueError, match=r"VolumeAutomation: audio must be \(batch, channels, time\)"):
        VolumeAutomation(SR)(torch.zeros(8))
    with pytest.raises(ValueError, match="VolumeAutomation: audio contains NaN"):
        VolumeAutomation(SR)(torch.full((1, 1, 4), float("inf")))
