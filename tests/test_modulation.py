"""Chorus and phaser: the chorus against a float64 sample loop, the static phaser against
scipy's lfilter, notches, the phaser's sweep and bad input (the effect contract is in
test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal as ss
import torch
from contract import noise

from diffmix.effects.modulation import Chorus, Phaser
from diffmix.functional.modulation import chorus, phaser

SR = 44100


def _chorus_loop(x: np.ndarray, rate: float, depth: float, centre_ms: float, g: float) -> np.ndarray:
    """float64 sample loop: w[n] = x(n - d[n]) + g * w(n - d[n]), linear interpolation."""
    n = len(x)
    d = centre_ms * SR / 1000 * (1 + depth * np.sin(2 * np.pi * rate * np.arange(n) / SR))

    def read(s: np.ndarray, p: float) -> float:
        i0 = math.floor(p)
        f = p - i0
        v0 = s[i0] if 0 <= i0 < n else 0.0
        v1 = s[i0 + 1] if 0 <= i0 + 1 < n else 0.0
        return v0 + f * (v1 - v0)

    w = np.zeros(n)
    for i in range(n):
        w[i] = read(x, i - d[i]) + g * read(w, i - d[i])
    return w


@pytest.mark.parametrize("g", [0.0, 0.5, -0.6])
def test_chorus_matches_a_float64_sample_loop(g):
    n = 5000
    t = np.arange(n) / SR
    x = np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 430 * t + 1)
    y = chorus(
        torch.from_numpy(x).view(1, 1, -1),
        SR,
        rate_hz=2.0,
        depth=0.6,
        centre_ms=3.0,
        feedback=g,
        mix=1.0,
        voices=1,
    )[0, 0].numpy()
    ref = _chorus_loop(x, 2.0, 0.6, 3.0, g)
    # Without feedback the two are the same computation. With it, both interpolate their
    # own interpolated output, in a different order (per sample vs per doubling); after
    # the start-up they agree to 0.2 %.
    body = slice(1000, None)
    err = np.abs(y[body] - ref[body]).max() / np.abs(ref[body]).max()
    assert err < (1e-12 if g == 0.0 else 2e-3), err


def test_chorus_without_depth_is_a_fixed_delay():
    x = noise(1, 1, 2000)
    y = chorus(x, SR, depth=0.0, centre_ms=1000.0 * 40 / SR, mix=1.0, voices=3)
    torch.testing.assert_close(y[..., 40:], x[..., :-40])
    assert y[..., :40].abs().max() == 0


def test_chorus_depth_and_mix_gradients_point_downhill():
    t = torch.arange(3000, dtype=torch.float64) / SR
    x = torch.sin(2 * math.pi * 150.0 * t).expand(1, 2, -1)
    target = chorus(x, SR, rate_hz=5.0, depth=0.5, mix=0.6)
    for name, start in (("depth", {"depth": 0.4, "mix": 0.6}), ("mix", {"depth": 0.5, "mix": 0.4})):
        effect = Chorus(SR, rate_hz=5.0, **start).double()
        (effect(x) - target).square().sum().backward()
        assert effect.params[name].raw.grad < 0, name


@pytest.mark.parametrize("stages, g", [(4, 0.0), (4, 0.7), (8, -0.5)])
def test_static_phaser_matches_lfilter(stages, g):
    fc = 700.0
    tn = math.tan(math.pi * fc / SR)
    a = (tn - 1) / (tn + 1)
    num, den = np.array([1.0]), np.array([1.0])
    for _ in range(stages):
        num, den = np.convolve(num, [a, 1.0]), np.convolve(den, [1.0, a])
    x = noise(1, 1, 12000, seed=4)
    # W = A^N / (1 - g A^N) = num / (den - g num)
    want = ss.lfilter(num, den - g * num, x[0, 0].numpy())
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 2e-4)):
        y = phaser(x.to(dtype), SR, depth=0.0, centre_hz=fc, feedback=g, mix=1.0, stages=stages)
        err = np.abs(y[0, 0].double().numpy() - want).max() / np.abs(want).max()
        assert err < tol, (dtype, err)


def test_phaser_mix_half_notches_where_the_cascade_inverts():
    # Each first-order all-pass turns -pi/2 at its break frequency: two stages invert there.
    fc = 1000.0
    t = torch.arange(SR // 2, dtype=torch.float64) / SR
    tone = torch.sin(2 * math.pi * fc * t).view(1, 1, -1)
    y = phaser(tone, SR, depth=0.0, centre_hz=fc, feedback=0.0, mix=0.5, stages=2)
    off = phaser(
        torch.sin(2 * math.pi * 3 * fc * t).view(1, 1, -1),
        SR,
        depth=0.0,
        centre_hz=fc,
        feedback=0.0,
        mix=0.5,
        stages=2,
    )
    body = slice(SR // 8, -SR // 8)
    assert float(y[..., body].abs().max()) < 1e-4
    assert float(off[..., body].abs().max()) > 0.3


def test_phaser_sweeps_depth_octaves_either_side_of_the_centre():
    # Documented law: the break frequency sweeps `depth` octaves either side of centre_hz,
    # sinusoidally at rate_hz. Two stages turn -pi at the break frequency (where mix 0.5
    # notches), so track that crossing block by block, from the transfer of white noise
    # measured with scipy (cross over auto spectrum), across one whole LFO cycle.
    rate, depth, centre = 0.2, 0.8, 800.0
    x = noise(1, 1, 6 * SR, seed=11)
    y = phaser(x, SR, rate_hz=rate, depth=depth, centre_hz=centre, feedback=0.0, mix=1.0, stages=2)
    xs, ys = x[0, 0].numpy(), y[0, 0].numpy()
    times = 0.5 + 0.1 * np.arange(50)  # 50 blocks 0.1 s apart: one whole 5 s LFO cycle
    notch = []
    for t in times:
        block = slice(round(t * SR) - 4096, round(t * SR) + 4096)
        f, pxy = ss.csd(xs[block], ys[block], fs=SR, nperseg=1024)
        h = pxy / ss.welch(xs[block], fs=SR, nperseg=1024)[1]
        # Phase -pi: the imaginary part turns from - to + while the real part is negative.
        i = np.flatnonzero((h.imag[:-1] < 0) & (h.imag[1:] >= 0) & (h.real[:-1] < 0))[0]
        notch.append(f[i] + (f[i + 1] - f[i]) * h.imag[i] / (h.imag[i] - h.imag[i + 1]))
    notch = np.array(notch)
    assert notch.min() == pytest.approx(centre * 2**-depth, rel=0.03)
    assert notch.max() == pytest.approx(centre * 2**depth, rel=0.03)
    # In octaves the track is one sinusoid at rate_hz of amplitude `depth` about the centre
    # (measured: amplitude 0.797, residue <= 0.034 octave, estimator noise included).
    octaves = np.log2(notch / centre)
    lfo = 2 * np.mean(octaves * np.exp(-2j * math.pi * rate * times))
    fit = np.real(lfo * np.exp(2j * math.pi * rate * times))
    assert abs(lfo) == pytest.approx(depth, abs=0.03)
    assert abs(octaves.mean()) < 0.02
    assert np.abs(octaves - fit).max() < 0.08


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Chorus(SR, voices=0), "Chorus: voices must be an integer from 1 to 8"),
        (lambda: Chorus(SR, feedback=0.9), r"Chorus: feedback=0.9 is outside its range"),
        (lambda: Phaser(SR, stages=5), r"Phaser: stages must be one of"),
        (lambda: phaser(torch.zeros(1, 1, 8), SR, stages=3), r"phaser: stages must be one of"),
        (lambda: Phaser(SR)(torch.zeros(1, 8)), r"Phaser: audio must be \(batch, channels, time\)"),
        (lambda: Chorus(SR)(torch.full((1, 1, 8), float("inf"))), "Chorus: audio contains NaN or Inf"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
