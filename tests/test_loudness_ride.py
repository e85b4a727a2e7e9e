"""The loudness ride (diffmix.functional.loudness_ride, diffmix.effects.LoudnessRide):
against an independent float64 numpy loop on pyloudnorm's K-weighting filters, its
gradients, the LRA it gives, and the master-bus stage that solves it
(diffmix.mixing.style_master.ride_stage)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmix.effects.dynamics import LoudnessRide
from diffmix.functional.loudness import loudness_range
from diffmix.functional.loudness_ride import loudness_ride, ride_gain_db
from tests.seeds import drawn_seed


def _seed() -> int:
    seed = drawn_seed(10**6)
    print("seed", seed)
    return seed


def swinging(sr: int, seconds: float, seed: int, channels: int = 2) -> torch.Tensor:
    """Two sources whose levels drift independently, ``(1, C, T)`` float64: a low band
    (K-weighting hears it less) and a bright band, each with its own slow swell (+-6 dB,
    periods 5-13 s) and a faster pulse; the short-term loudness swings by several LU."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    t = torch.arange(n, dtype=torch.float64) / sr
    f = torch.fft.rfftfreq(n, 1 / sr, dtype=torch.float64)
    out = torch.zeros(channels, n, dtype=torch.float64)
    for lo, hi in ((40.0, 250.0), (1500.0, min(12000.0, 0.45 * sr))):
        x = torch.randn(channels, n, generator=g, dtype=torch.float64)
        x = torch.fft.irfft(torch.fft.rfft(x) * ((f >= lo) & (f < hi)), n)
        x = x / x.square().mean().sqrt()
        period = 5.0 + 8.0 * float(torch.rand((), generator=g))
        phase = 2 * math.pi * float(torch.rand((), generator=g))
        swell = 6.0 * torch.sin(2 * math.pi * t / period + phase)
        pulse = 1.0 + 0.5 * torch.sin(2 * math.pi * 2.0 * t + phase)
        out = out + 0.05 * x * 10 ** (swell / 20) * pulse
    return out.unsqueeze(0)


# ------------------------------------------------------------------ the oracle
def _oracle(x: np.ndarray, sr: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The ride written out per EBU Tech 3342 as a float64 loop: pyloudnorm's K-weighting
    (its standard "DeMan" filters) by scipy, each 3 s window every 100 ms, the two gates,
    numpy's percentiles, numpy's interpolation. ``x`` ``(C, T)``: (output, window gains dB)."""
    lufs, keep, hop, win = _oracle_windows(x, sr)
    n = lufs.shape[0]
    low, centre, high = np.percentile(lufs[keep], [10, 50, 95])
    gains = np.empty(n)
    for j in range(n):
        gains[j] = (scale - 1.0) * (min(max(lufs[j], low), high) - centre)
    gains -= gains.max()  # the ride only turns down
    centres = np.arange(n) * hop + (win - 1) / 2
    curve = np.interp(np.arange(x.shape[-1]), centres, gains)
    return x * 10 ** (curve / 20), gains


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("scale", [0.3, 1.8])
def test_agrees_with_a_float64_loop_on_pyloudnorm_filters(sr, scale):
    seed = _seed()
    x = swinging(sr, 12.0, seed)
    want, gains = _oracle(x[0].numpy(), sr, scale)
    got_gains = ride_gain_db(x, sr, range_scale=scale)[0, 0].numpy()
    got = loudness_ride(x, sr, range_scale=scale)[0].numpy()
    # The ride does something on this signal (over 1.8 dB on 300 draws; the tolerance is 1e-6 dB).
    assert np.ptp(gains) > 0.5, (seed, gains)
    # At 48 kHz pyloudnorm's filters are the meter's to rounding; at 44.1 kHz its high-pass
    # keeps the digital (1, -2, 1) numerator, 0.004 dB off in level and a little in shape,
    # of which the ride (deviations from the median) sees only the shape.
    tol_db = 1e-6 if sr == 48000 else 2e-4
    np.testing.assert_allclose(got_gains, gains, rtol=0, atol=tol_db)
    np.testing.assert_allclose(got, want, rtol=0.12 * tol_db, atol=1e-12)


def test_range_scale_one_is_the_identity_and_short_audio_passes_through():
    # (and the ride never turns up: no peak after it is higher than before it)
    x = swinging(44100, 8.0, _seed())
    torch.testing.assert_close(loudness_ride(x, 44100, range_scale=1.0), x, rtol=0, atol=0)
    for s in (0.0, 0.4, 2.5):
        assert (loudness_ride(x, 44100, range_scale=s).abs() <= x.abs()).all()
    short = x[..., : 3 * 44100]  # one short-term window: nothing to ride
    torch.testing.assert_close(loudness_ride(short, 44100, range_scale=0.2), short, rtol=0, atol=0)


def test_gradcheck_in_the_input_and_the_scale():
    # The input's gradient through a random 4-dimensional family of signals (the dense
    # Jacobian of 4 s of audio is out of reach); every window, gate and percentile takes part.
    seed = _seed()
    sr = 8000
    base = swinging(sr, 4.0, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dirs = 0.02 * torch.randn(4, *base.shape[1:], generator=g, dtype=torch.float64)

    def run(a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return loudness_ride(base + torch.einsum("k,kct->ct", a, dirs), sr, range_scale=scale)

    a = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    for s in (0.4, 2.5):
        scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(run, (a, scale), eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True)
    # The scale's gradient is not zero: the ride moves the signal.
    scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    run(a, scale).square().sum().backward()
    assert float(scale.grad.abs()) > 0


def _solve(x: torch.Tensor, sr: int, goal: float, steps: int = 5) -> tuple[float, float, int]:
    """Secant steps on range_scale for the output LRA ``goal``: (scale, LRA, renders)."""
    lra_in = float(loudness_range(x, sr)[0])

    def lra(s: float) -> float:
        return float(loudness_range(loudness_ride(x, sr, range_scale=s), sr)[0])

    tried = [(goal / lra_in, lra(goal / lra_in))]
    tried.append((tried[0][0] * goal / tried[0][1], lra(tried[0][0] * goal / tried[0][1])))
    while len(tried) < steps and abs(tried[-1][1] - goal) > 0.01:
        (sa, ea), (sb, eb) = tried[-2:]
        if eb == ea:
            break
        s = min(4.0, max(-1.0, sb - (eb - goal) * (sb - sa) / (eb - ea)))  # the effect's range
        tried.append((s, lra(s)))
    s, got = min(tried, key=lambda t: abs(t[1] - goal))
    return s, got, len(tried)


@pytest.mark.parametrize("factor", [0.35, 0.6, 1.6])
def test_a_swinging_mix_is_ridden_to_a_target_lra(factor):
    # Must pass: the LRA of a mix whose short-term loudness swings (within 3 s too) is set
    # to a target (less and more range) within 0.05 LU by a few secant steps on the scale,
    # and the independent oracle's LRA (pyloudnorm's filters, numpy) agrees.
    seed = _seed()
    sr = 44100
    x = swinging(sr, 30.0, seed)
    lra_in = float(loudness_range(x, sr)[0])
    assert lra_in > 2.0, (seed, lra_in)  # it swings (3.65-9.2 LU on 25 draws)
    goal = factor * lra_in
    s, got, renders = _solve(x, sr, goal)
    print(f"LRA {lra_in:.2f} -> {got:.3f} (goal {goal:.3f}) at scale {s:.3f} in {renders} renders")
    assert abs(got - goal) < 0.05
    y, _ = _oracle(loudness_ride(x, sr, range_scale=s)[0].numpy(), sr, 1.0)
    assert abs(_oracle_lra(y, sr) - goal) < 0.06


def _oracle_windows(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """EBU Tech 3342's short-term loudness of ``x`` ``(C, T)`` in a float64 loop: pyloudnorm's
    K-weighting (its standard "DeMan" filters) by scipy, each 3 s window every 100 ms, and
    the windows its two gates keep: ``(lufs, keep, hop, window)``."""
    pyln = pytest.importorskip("pyloudnorm")
    signal = pytest.importorskip("scipy.signal")
    y = x.copy()
    for f in pyln.Meter(sr, filter_class="DeMan")._filters.values():
        y = signal.lfilter(f.b, f.a, y, axis=-1) * f.passband_gain
    hop = round(0.1 * sr)
    win = 30 * hop
    power = np.array([sum(np.mean(y[c, j * hop : j * hop + win] ** 2) for c in range(len(y)))
                      for j in range((x.shape[-1] - win) // hop + 1)])
    lufs = -0.691 + 10 * np.log10(power)
    keep = lufs > -70.0
    keep &= power > power[keep].mean() * 10 ** (-20 / 10)
    return lufs, keep, hop, win


def _oracle_lra(x: np.ndarray, sr: int) -> float:
    lufs, keep, _, _ = _oracle_windows(x, sr)
    low, high = np.percentile(lufs[keep], [10, 95])
    return float(high - low)


def test_the_closed_form_scale_holds_on_slow_sections():
    # By construction: where the loudness is steady over each window (sections of 12 s at
    # levels spread over 12 dB), the output's LRA is range_scale times the input's, no
    # solve needed; quiet parts under P10 (a fade to -60 dB) are not boosted past P10's gain.
    sr = 44100
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    levels = torch.linspace(-12.0, 0.0, 6, dtype=torch.float64)[torch.randperm(6, generator=g)]
    sections = [0.1 * torch.randn(2, 12 * sr, generator=g, dtype=torch.float64) * 10 ** (v / 20)
                for v in levels]
    fade = 0.1 * torch.randn(2, 4 * sr, generator=g, dtype=torch.float64) * 10 ** (-60.0 / 20)
    x = torch.cat([*sections, fade], -1).unsqueeze(0)
    lra_in = float(loudness_range(x, sr)[0])
    gains = ride_gain_db(x, sr, range_scale=0.5)[0, 0]
    for s in (0.5, 2.0):
        got = float(loudness_range(loudness_ride(x, sr, range_scale=s), sr)[0])
        assert got == pytest.approx(s * lra_in, rel=0.1), (s, lra_in, got)
    # It only turns down, by at most (1 - scale) times the input's LRA, the fade included.
    assert float(gains.max()) == 0.0 and float(gains.min()) >= -0.5 * lra_in - 1e-9, gains


def test_the_effect_is_a_thin_module_over_the_function():
    x = swinging(44100, 6.0, _seed()).float()
    ride = LoudnessRide(44100, range_scale=0.6)
    torch.testing.assert_close(ride(x), loudness_ride(x, 44100, range_scale=torch.tensor([0.6])))
    with pytest.raises(ValueError, match="range_scale"):
        LoudnessRide(44100, range_scale=-1.5)
