"""Clicks at the same samples in both channels, repaired jointly
(:func:`coincident_interpolate`), against the per-channel repair with the same (true) AR
models and mask."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.signal import lfilter

from diffmix.functional.restoration import coincident_interpolate, lsar_interpolate, repair_clicks, runs
from tests.seeds import drawn_seed

HOP = 1024


def ar_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two independent unit-RMS AR processes (2-4 resonant pole pairs each): ``(x (2, n),
    coeffs (2, p + 1), innovation std (2,))``, the true models."""
    sig, polys = [], []
    for _ in range(2):
        poly = np.array([1.0])
        for _ in range(int(rng.integers(2, 5))):
            r, th = rng.uniform(0.85, 0.99), rng.uniform(0.05, 3.0)
            poly = np.convolve(poly, [1.0, -2 * r * math.cos(th), r * r])
        e = rng.standard_normal(n + 2048)
        s = lfilter([1.0], poly, e)[2048:]
        scale = s.std()
        sig.append(s / scale)
        polys.append((poly, 1.0 / scale))
    p = max(len(q) for q, _ in polys) - 1
    coeffs = np.stack([np.pad(q, (0, p + 1 - len(q))) for q, _ in polys])
    return np.stack(sig), coeffs, np.array([s for _, s in polys])


def damage(seed: int, related: bool, n: int = 8192):
    """Six bursts of 2-40 samples at the same samples in both channels, 3-30 dB over the
    RMS in each: the same shape with either sign (``related``, a rank-one stereo click)
    or independent noise. ``(clean, damaged, mask, coeffs, innovation)`` as tensors."""
    rng = np.random.default_rng(seed)
    x, coeffs, sigma = ar_pair(rng, n)
    y, mask = x.copy(), np.zeros(x.shape, bool)
    for s in rng.choice(np.arange(200, n - 300, 100), 6, replace=False):
        length = int(rng.integers(2, 41))
        burst = rng.standard_normal(length)
        other = burst if related else rng.standard_normal(length)
        y[0, s : s + length] += 10 ** rng.uniform(0.15, 1.5) * burst
        y[1, s : s + length] += 10 ** rng.uniform(0.15, 1.5) * rng.choice([-1.0, 1.0]) * other
        mask[:, s : s + length] = True
    frames = -(-n // HOP)
    c = torch.from_numpy(coeffs)[None, :, None].expand(1, 2, frames, -1).contiguous()
    s = torch.from_numpy(sigma)[None, :, None].expand(1, 2, frames).contiguous()
    return torch.from_numpy(x)[None], torch.from_numpy(y)[None], torch.from_numpy(mask)[None], c, s


def gains(seeds, related: bool) -> tuple[float, float]:
    """Pooled SNR gain (dB) over the damaged samples: per channel, joint."""
    err = np.zeros(3)
    for seed in seeds:
        x, y, m, c, s = damage(seed, related)
        per = lsar_interpolate(y, m, c, HOP, innovation=s)
        joint = coincident_interpolate(y, m, c, HOP, s)
        err += [float((v - x)[m].square().sum()) for v in (y, per, joint)]
    return 10 * math.log10(err[0] / err[1]), 10 * math.log10(err[0] / err[2])


def test_rank_one_click_repaired_better_jointly():
    # With the true models, both repairs are posterior means; the joint one also knows
    # that the click is one shape in both channels (up to its EM-fitted covariance), so
    # it cannot be worse on average, and for a rank-one click one mix of the channels is
    # click-free: half the unknowns. Pooled over 12 draws it must gain 3 dB or more.
    base = drawn_seed(100000)
    print("seeds from", base)
    per, joint = gains(range(base, base + 12), related=True)
    print(f"per channel {per:+.2f} dB, joint {joint:+.2f} dB")
    assert joint >= per + 3.0


def test_unrelated_clicks_keep_the_per_channel_repair():
    # Independent clicks at the same samples: the fitted click covariance is near
    # diagonal and the joint repair is the per-channel one, up to the estimate's noise.
    base = drawn_seed(100000)
    print("seeds from", base)
    per, joint = gains(range(base, base + 12), related=False)
    print(f"per channel {per:+.2f} dB, joint {joint:+.2f} dB")
    assert abs(joint - per) <= 1.0


def test_one_channel_clicks_are_left_to_the_per_channel_repair():
    x, y, m, c, s = damage(7, related=True)
    m = m.clone()
    m[:, 1] = False
    out = torch.full_like(y, 0.5)
    assert torch.equal(coincident_interpolate(y, m, c, HOP, s, out=out), out)


def test_gradient_is_the_linear_map():
    # Once the click covariance is fixed (detached) the repair is linear and homogeneous
    # in the audio: out = J y with J the gradient's map, so <v, out> = <J^T v, y> for
    # any v (Euler's identity), to rounding.
    x, y, m, c, s = damage(3, related=True)
    y = y.clone().requires_grad_(True)
    out = coincident_interpolate(y, m, c, HOP, s)
    v = torch.randn_like(out)
    (g,) = torch.autograd.grad((v * out).sum(), y)
    assert torch.allclose((g * y).sum(), (v * out).sum().detach(), rtol=1e-9)
    # Without EM (no click covariance) it is plain LSAR per channel, gradcheck included.
    assert torch.allclose(coincident_interpolate(y, m, c, HOP, s, em_steps=0),
                          lsar_interpolate(y, m, c, HOP), rtol=0, atol=1e-9)
    lo = int(m[0, 0].nonzero()[0]) - 60
    short, ms = y.detach()[..., lo : lo + 160].clone().requires_grad_(True), m[..., lo : lo + 160].clone()
    ms[..., 100:] = False
    assert torch.autograd.gradcheck(lambda w: coincident_interpolate(w, ms, c, HOP, s, em_steps=0), (short,))


def test_repair_clicks_uses_the_joint_repair():
    # repair_clicks fits its own models (and its joint stereo model may replace the AR
    # one frame by frame): the joint click model must reach its output there too. Pooled
    # over 4 draws of 1 s, a rank-one click is repaired better with it than without.
    base = drawn_seed(100000)
    print("seeds from", base)
    err = np.zeros(3)
    for seed in range(base, base + 4):
        x, y, m, _, _ = damage(seed, related=True, n=44100)
        # (The spans each returns may differ by edge samples: the joint model's pass fits
        # its filters on the first repair, which the joint repair changes. Both are scored
        # on the inserted mask.)
        outs = [repair_clicks(y.float(), m, 44100, coincident=co) for co in (False, True)]
        err += [float((v.double() - x)[m].square().sum()) for v in (y, outs[0][0], outs[1][0])]
    per, joint = (10 * math.log10(err[0] / e) for e in err[1:])
    print(f"per channel {per:+.2f} dB, joint {joint:+.2f} dB")
    assert joint >= per + 1.0


def test_a_span_flagged_in_either_channel_is_repaired_in_both():
    # Each channel's detection finds a click's edges against its own music: the right
    # channel's spans here miss 0-3 samples at either end. Within a group the joint
    # repair reads a sample flagged in either channel as damaged in both, so it repairs
    # the whole click in both channels, as with the true mask.
    seed = drawn_seed(100000)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    x, y, m, c, s = damage(seed, related=True)
    short = m.clone()
    for _, ch, lo, hi in [(0, 1, *r[1:]) for r in runs(m[:, 1:]).tolist()]:
        cut = rng.integers(0, 4, 2)
        if hi - lo > cut.sum() + 1:
            short[0, ch, lo : lo + cut[0]] = False
            short[0, ch, hi - cut[1] : hi] = False
    assert not torch.equal(short, m)
    full = coincident_interpolate(y, m, c, HOP, s)
    assert torch.allclose(coincident_interpolate(y, short, c, HOP, s), full, rtol=0, atol=1e-12)
