"""Clicks beyond the mono, missing-data method: the noisy-observation (EM) repair against a
dense float64 oracle; the noisy and the stereo repair, and the stereo look at vetoed bursts,
each measured against the method without it on signals with a known mask, so that a
regression in any shows as a failure."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from diffmix.functional.restoration import (
    ar_residuals,
    detect_clicks,
    lsar_interpolate,
    repair_clicks,
    runs,
)

SR = 44100
SHARED = Path(os.environ.get("DIFFMIX_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def resonant(rng: np.random.Generator, pairs: int, radius: tuple[float, float]) -> np.ndarray:
    """A prediction-error filter with ``pairs`` resonant pole pairs."""
    poly = np.array([1.0])
    for _ in range(pairs):
        r, th = rng.uniform(*radius), rng.uniform(0.02, 2.8)
        poly = np.convolve(poly, [1.0, -2 * r * math.cos(th), r * r])
    return poly


def ar_process(poly: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-innovation AR process (scipy's lfilter), warm-up discarded."""
    w = rng.standard_normal((*shape[:-1], shape[-1] + 4096))
    return lfilter([1.0], poly, w)[..., 4096:]


def clicks(clean: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """White-noise bursts of 1-50 samples, peak 3-30 dB above the RMS, each channel on its
    own (as the restore benchmark draws them): ``(damaged, mask)``."""
    damaged, mask = clean.copy(), np.zeros(clean.shape, bool)
    rms = clean.std(-1)
    for ch in range(clean.shape[0]):
        for s in np.sort(rng.integers(200, clean.shape[-1] - 300, rng.poisson(rate * clean.shape[-1] / SR))):
            n = int(np.clip(np.round(np.exp(rng.uniform(0, math.log(50)))), 1, 50))
            burst = rng.standard_normal(n)
            damaged[ch, s : s + n] += burst * rms[ch] * 10 ** (rng.uniform(3, 30) / 20) / np.abs(burst).max()
            mask[ch, s : s + n] = True
    return damaged, mask


def error_db(clean: np.ndarray, damaged: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    """SNR gain over the damaged samples (dB), as the restore benchmark scores it."""
    return 10 * math.log10(((damaged - clean)[mask] ** 2).sum() / ((out - clean)[mask] ** 2).sum())


def dense_noisy_lsar(y: np.ndarray, a: np.ndarray, unknown: np.ndarray, s2: float, steps: int):
    """Independent oracle: the posterior mean of the unknown samples under the AR model
    (innovation variance ``s2``) with the observations ``y_u = x_u + n``, ``n`` white of
    variance fitted by EM, from dense float64 matrices (one row per error term)."""
    p, t = len(a) - 1, len(y)
    rows = np.zeros((t + p, t))  # every error term touching the signal, zeros beyond it
    for n in range(t + p):
        for k in range(p + 1):
            if 0 <= n - k < t:
                rows[n, n - k] = a[k]
    au, ak = rows[:, unknown], rows[:, ~unknown]
    gram, rhs = au.T @ au, -au.T @ (ak @ y[~unknown])
    yu = y[unknown]
    lam = 0.0
    for step in range(steps + 1):
        mat = gram + lam * np.eye(len(yu))
        u = np.linalg.solve(mat, rhs + lam * yu)
        if step == steps:
            break
        noise = (((yu - u) ** 2) + s2 * np.diag(np.linalg.inv(mat))).mean()
        lam = s2 / noise
    out = y.copy()
    out[unknown] = u
    return out


@pytest.mark.parametrize("case", range(3))
def test_noisy_lsar_matches_the_dense_em_oracle(case):
    seed = 300 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, int(rng.integers(1, 4)), (0.85, 0.98))
    t = 500
    clean = ar_process(a, (t,), rng)
    unknown = np.zeros(t, bool)
    start, length = int(rng.integers(150, 300)), int(rng.integers(2, 40))
    unknown[start : start + length] = True
    # 3 to 20 dB above the signal: the observations carry weight (lam well above 0)
    damaged = clean + unknown * rng.standard_normal(t) * clean.std() * 10 ** (rng.uniform(3, 20) / 20)
    x = torch.from_numpy(damaged)[None, None]
    coeffs = torch.from_numpy(a)[None, None, None].clone()
    got = lsar_interpolate(x, torch.from_numpy(unknown)[None, None], coeffs, hop=t,
                           innovation=torch.ones(1, 1, 1, dtype=torch.float64), em_steps=4)
    expected = dense_noisy_lsar(damaged, a, unknown, 1.0, steps=4)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=0, atol=1e-9 * clean.std())
    # and it moved away from plain LSAR towards the observations
    plain = lsar_interpolate(x, torch.from_numpy(unknown)[None, None], coeffs, hop=t)
    assert np.abs(plain[0, 0].numpy() - expected).max() > 1e-3 * clean.std()


@pytest.mark.parametrize("case", range(3))
def test_lsar_with_a_known_input_matches_dense_least_squares(case):
    """The ARX error ``(a * x)[n] - drive[n]`` (``drive``: the other channel's part of the
    joint model): LSAR with ``drive``, plain and noisy, against dense float64 lstsq and
    EM over every error term; ``ar_residuals`` with ``drive`` against the same rows."""
    seed = 330 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, int(rng.integers(1, 4)), (0.85, 0.98))
    t = 500
    clean = ar_process(a, (t,), rng)
    drive = rng.standard_normal(t) * clean.std()
    unknown = np.zeros(t, bool)
    start, length = int(rng.integers(150, 300)), int(rng.integers(2, 40))
    unknown[start : start + length] = True
    damaged = clean + unknown * rng.standard_normal(t) * clean.std() * 10 ** (rng.uniform(3, 20) / 20)
    p = len(a) - 1
    rows = np.zeros((t + p, t))
    for n in range(t + p):
        for k in range(p + 1):
            if 0 <= n - k < t:
                rows[n, n - k] = a[k]
    d_all = np.concatenate([drive, np.zeros(p)])  # no input beyond the signal
    au, ak = rows[:, unknown], rows[:, ~unknown]
    target = d_all - ak @ damaged[~unknown]
    u, *_ = np.linalg.lstsq(au, target, rcond=None)
    x = torch.from_numpy(damaged)[None, None]
    m = torch.from_numpy(unknown)[None, None]
    coeffs = torch.from_numpy(a)[None, None, None].clone()
    dt = torch.from_numpy(drive)[None, None]
    got = lsar_interpolate(x, m, coeffs, hop=t, drive=dt)[0, 0].numpy()
    np.testing.assert_allclose(got[unknown], u, rtol=0, atol=1e-9 * clean.std())
    np.testing.assert_array_equal(got[~unknown], damaged[~unknown])
    # noisy: the same EM as the dense oracle, on the shifted target
    gram, rhs, yu, lam = au.T @ au, au.T @ target, damaged[unknown], 0.0
    for step in range(5):
        mat = gram + lam * np.eye(len(yu))
        v = np.linalg.solve(mat, rhs + lam * yu)
        if step == 4:
            break
        lam = 1.0 / (((yu - v) ** 2) + np.diag(np.linalg.inv(mat))).mean()
    got = lsar_interpolate(x, m, coeffs, hop=t, drive=dt, em_steps=4,
                           innovation=torch.ones(1, 1, 1, dtype=torch.float64))[0, 0].numpy()
    np.testing.assert_allclose(got[unknown], v, rtol=0, atol=1e-9 * clean.std())
    fwd, _, z = (e[0, 0].numpy() for e in ar_residuals(x, coeffs, t, drive=dt))
    err = rows @ damaged - d_all
    np.testing.assert_allclose(fwd, err[:t], rtol=0, atol=1e-9 * clean.std())
    # interpolation error: the forward error filtered backwards, normalised
    want = np.array([a @ err[n : n + p + 1] for n in range(t)]) / np.sqrt((a * a).sum())
    np.testing.assert_allclose(z[: t - p], want[: t - p], rtol=0, atol=1e-9 * clean.std())


def test_noisy_lsar_rejects_beyond():
    x = torch.zeros(1, 1, 100)
    with pytest.raises(ValueError, match="lsar_interpolate: innovation"):
        lsar_interpolate(x, x > 0, torch.ones(1, 1, 1, 3), 100, beyond=True,
                         innovation=torch.ones(1, 1, 1))


def test_noisy_observation_beats_missing_data():
    """With the true AR model, reading the flagged samples as signal plus a click of fitted
    variance (the posterior mean) beats discarding them (plain LSAR, the conditional mean
    given the neighbours only): over some 200 clicks of 3-30 dB the error energy falls by
    1.5-1.8 dB (eight groups of seeds measured); it must fall by at least 1 dB. Pooled
    over four signals because a single click's error varies far more than the mean."""
    before = plain_err = noisy_err = 0.0
    for seed in (500, 501, 502, 503):
        print("seed", seed)
        rng = np.random.default_rng(seed)
        a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
        clean = ar_process(a, (1, 5 * SR), rng)
        scale = 0.1 / clean.std()
        clean *= scale
        damaged, mask = clicks(clean, 10.0, rng)
        x, m = torch.from_numpy(damaged)[None], torch.from_numpy(mask)[None]
        coeffs = torch.from_numpy(a)[None, None, None].clone()
        plain = lsar_interpolate(x, m, coeffs, hop=clean.shape[-1])[0].numpy()
        sigma = torch.full((1, 1, 1), scale, dtype=torch.float64)  # the innovation's std
        noisy = lsar_interpolate(x, m, coeffs, hop=clean.shape[-1], innovation=sigma)[0].numpy()
        before += ((damaged - clean)[mask] ** 2).sum()
        plain_err += ((plain - clean)[mask] ** 2).sum()
        noisy_err += ((noisy - clean)[mask] ** 2).sum()
    gain = 10 * math.log10(plain_err / noisy_err)
    print(f"plain {10 * math.log10(before / plain_err):.2f} dB, noisy "
          f"{10 * math.log10(before / noisy_err):.2f} dB, gain {gain:.2f} dB")
    assert gain >= 1.0


def _stereo(seed: int, side_db: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, damaged, mask)``, stereo 2 s at 10 clicks/s per channel: a shared AR
    source plus an independent AR part per channel ``side_db`` below it (``None``: the
    channels are independent AR processes)."""
    rng = np.random.default_rng(seed)
    a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
    if side_db is None:
        clean = ar_process(a, (2, 2 * SR), rng)
    else:
        side = ar_process(resonant(rng, 3, (0.85, 0.99)), (2, 2 * SR), rng)
        mid = ar_process(a, (1, 2 * SR), rng)
        clean = mid + side * mid.std() / side.std(-1, keepdims=True) * 10 ** (side_db / 20)
    clean *= 0.1 / clean.std()
    return (clean, *clicks(clean, 10.0, rng))


def _gains(clean, damaged, mask, **variants) -> dict[str, float]:
    x, m = torch.from_numpy(damaged)[None], torch.from_numpy(mask)[None]
    return {k: error_db(clean, damaged, repair_clicks(x, m, SR, **kw)[0][0].numpy(), mask)
            for k, kw in variants.items()}


VARIANTS = {"new": {}, "mono": {"stereo_taps": None},
            "previous": {"noisy": False, "stereo_taps": None}}


@pytest.mark.parametrize("seed", [600, 601])
def test_stereo_repair_uses_the_other_channel(seed):
    """A click in one channel of a stereo pair whose channels share most of their content
    (a side part 20 dB down): the residual after predicting the channel from the other is
    far easier to interpolate than the channel. Measured 10-17 dB better than the mono
    repair on six seeds; it must be at least 6 dB better than both the mono repair and
    the previous method (plain LSAR, channels apart)."""
    print("seed", seed)
    g = _gains(*_stereo(seed, -20.0), **VARIANTS)
    print({k: round(v, 2) for k, v in g.items()})
    assert g["new"] >= g["mono"] + 6.0
    assert g["new"] >= g["previous"] + 6.0


@pytest.mark.parametrize("seed", [630, 631])
def test_stereo_repair_follows_a_delayed_channel(seed):
    """One source in both channels, the right one 20 samples (0.45 ms) later, plus an
    independent part 20 dB down in each (a spaced pair, a Haas widener): the joint model
    predicts each channel from its own past and the other channel's samples up to
    ``stereo_taps`` either side, which takes in the delay; four taps do not reach it.
    Measured over seeds 630-633: 31-44 dB with 48 taps, 18-33 dB with 4, 17-30 dB mono.
    48 taps must beat both by at least 8 dB."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
    delay = 20
    mid = ar_process(a, (2 * SR + delay,), rng)
    side = ar_process(resonant(rng, 3, (0.85, 0.99)), (2, 2 * SR), rng)
    side *= mid.std() / side.std(-1, keepdims=True) * 0.1
    clean = np.stack([mid[delay:], mid[:-delay]]) + side
    clean *= 0.1 / clean.std()
    g = _gains(clean, *clicks(clean, 10.0, rng), wide={"stereo_taps": 48},
               short={"stereo_taps": 4}, mono={"stereo_taps": None})
    print({k: round(v, 2) for k, v in g.items()})
    assert g["wide"] >= g["short"] + 8.0
    assert g["wide"] >= g["mono"] + 8.0


def test_stereo_repair_keeps_the_mono_model_for_independent_channels():
    """Independent channels: the other channel predicts nothing, the per-frame choice keeps
    the mono model, and the repair is no worse than it (pooled over three seeds)."""
    pooled = {k: [0.0, 0.0] for k in VARIANTS}
    for seed in (610, 611, 612):
        print("seed", seed)
        clean, damaged, mask = _stereo(seed, None)
        x, m = torch.from_numpy(damaged)[None], torch.from_numpy(mask)[None]
        for k, kw in VARIANTS.items():
            y = repair_clicks(x, m, SR, **kw)[0][0].numpy()
            pooled[k][0] += ((damaged - clean)[mask] ** 2).sum()
            pooled[k][1] += ((y - clean)[mask] ** 2).sum()
    g = {k: 10 * math.log10(v[0] / v[1]) for k, v in pooled.items()}
    print({k: round(v, 2) for k, v in g.items()})
    assert g["new"] >= g["mono"] - 0.3
    assert g["new"] >= g["previous"] + 0.5


def test_stereo_look_finds_the_quiet_clicks_the_mono_guards_veto():
    """Clicks 3-12 dB above the RMS, one channel at a time, in a stereo pair that shares
    most of its content: the mono guards veto many as attacks (they are no louder than
    the music); in stereo the other channel shows nothing there, and on the cross-channel
    residual they stand out. Measured over seeds 700-704, the joint-model candidates
    (``arx_taps``) off in both: mono finds 39 of 50, stereo 50. Stereo must find at
    least 48 and 8 more than mono, with no span off a click; the default (both stereo
    rules) at least 48 too (measured: the joint model alone finds 45)."""
    found = {"mono": 0, "stereo": 0, "default": 0}
    for seed in range(700, 705):
        print("seed", seed)
        rng = np.random.default_rng(seed)
        a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
        side = ar_process(resonant(rng, 3, (0.85, 0.99)), (2, SR), rng)
        mid = ar_process(a, (1, SR), rng)
        clean = mid + side * mid.std() / side.std(-1, keepdims=True) * 0.1
        clean *= 0.1 / clean.std()
        damaged, truth = clean.copy(), np.zeros(clean.shape, bool)
        for k, db in enumerate(np.linspace(3, 12, 10)):
            s, n = 3000 + k * 4000, int(rng.integers(5, 40))
            burst = rng.standard_normal(n)
            damaged[k % 2, s : s + n] += burst * 0.1 * 10 ** (db / 20) / np.abs(burst).max()
            truth[k % 2, s : s + n] = True
        x = torch.from_numpy(damaged).float()[None]
        for name, kw in (("mono", {"stereo_taps": None, "arx_taps": None}),
                         ("stereo", {"stereo_taps": 4, "arx_taps": None}), ("default", {})):
            mask = detect_clicks(x, SR, **kw)[0][0].numpy()
            for k in range(10):
                ch, s = k % 2, 3000 + k * 4000
                found[name] += bool((mask[ch, s : s + 40] & truth[ch, s : s + 40]).any())
            if name != "mono":
                for r, s, e in runs(torch.from_numpy(mask)[None]).tolist():
                    assert truth[r, s:e].any(), (r, s, e)
    print(found)
    assert found["stereo"] >= 48
    assert found["stereo"] >= found["mono"] + 8
    assert found["default"] >= 48


def test_grow_repairs_the_click_edges_the_mask_missed():
    """Masks that miss the last 1-4 samples of each click (as a detection does when a
    click's edge is quiet): an edge sample left in the data pulls the interpolation after
    it. Growing the span over samples whose interpolation error in the repair exceeds 4
    innovation standard deviations takes them in: pooled over three signals the error
    falls by 6.6 dB (5.2 -> 11.8 dB gain, measured); it must fall by at least 3 dB."""
    errs = {0: [0.0, 0.0], 6: [0.0, 0.0]}
    for seed in (800, 801, 802):
        print("seed", seed)
        rng = np.random.default_rng(seed)
        a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
        clean = ar_process(a, (1, SR), rng)
        clean *= 0.1 / clean.std()
        damaged, given = clean.copy(), np.zeros(clean.shape, bool)
        truth = np.zeros(clean.shape, bool)
        for k in range(20):
            s, n = 1000 + k * 2100, int(rng.integers(8, 40))
            burst = rng.standard_normal(n)
            damaged[0, s : s + n] += burst * 0.1 * 10 ** (rng.uniform(10, 30) / 20) / np.abs(burst).max()
            truth[0, s : s + n] = True
            given[0, s : s + n - int(rng.integers(1, 5))] = True
        x, m = torch.from_numpy(damaged)[None], torch.from_numpy(given)[None]
        for g in errs:
            y = repair_clicks(x, m, SR, grow=g)[0][0].numpy()
            errs[g][0] += ((damaged - clean)[truth] ** 2).sum()
            errs[g][1] += ((y - clean)[truth] ** 2).sum()
    gain = {g: 10 * math.log10(v[0] / v[1]) for g, v in errs.items()}
    print({g: round(v, 2) for g, v in gain.items()})
    assert gain[6] >= gain[0] + 3.0


def test_grow_crosses_the_quiet_samples_inside_a_noise_burst(monkeypatch):
    """Masks on only the middle 10 samples of 30-48-sample noise bursts (as a detection
    flags a long burst around its peaks), with 3 samples of the burst at zero just outside
    them on each side (a noise burst crosses zero), 9 bursts a second on AR signals.
    Growth that stops at the first quiet sample leaves the rest of each burst in the
    data; growth across up to ``_GROW_GAP`` quiet samples takes in all but the burst
    samples no louder than the music. Measured (pooled gain over the bursts): 0.9 dB when
    growth stops at gaps, 14.7 dB across them, 16.5 dB with the true spans."""
    from diffmix.functional import restoration

    gap = restoration._GROW_GAP
    errs = {"gaps": [0.0, 0.0], "consecutive": [0.0, 0.0], "true": [0.0, 0.0]}
    for seed in (810, 811, 812):
        print("seed", seed)
        rng = np.random.default_rng(seed)
        a = resonant(rng, int(rng.integers(2, 7)), (0.85, 0.995))
        clean = ar_process(a, (1, SR), rng)
        clean *= 0.1 / clean.std()
        damaged = clean.copy()
        given, truth = np.zeros(clean.shape, bool), np.zeros(clean.shape, bool)
        for k in range(9):
            s, n = 1000 + k * 4410, int(rng.integers(30, 49))
            burst = rng.standard_normal(n)
            mid = s + n // 2 - 5
            burst[mid - s - 3 : mid - s] = 0.0
            burst[mid - s + 10 : mid - s + 13] = 0.0
            damaged[0, s : s + n] += burst * 0.1 * 10 ** (rng.uniform(10, 25) / 20) / np.abs(burst).max()
            truth[0, s : s + n] = True
            given[0, mid : mid + 10] = True
        x = torch.from_numpy(damaged)[None]
        for key in errs:
            monkeypatch.setattr(restoration.repair, "_GROW_GAP", 1 if key == "consecutive" else gap)
            m = truth if key == "true" else given
            y = repair_clicks(x, torch.from_numpy(m)[None], SR)[0]
            errs[key][0] += ((damaged - clean)[truth] ** 2).sum()
            errs[key][1] += ((y[0].numpy() - clean)[truth] ** 2).sum()
    gain = {k: 10 * math.log10(v[0] / v[1]) for k, v in errs.items()}
    print({k: round(v, 2) for k, v in gain.items()})
    assert gain["gaps"] >= gain["consecutive"] + 10.0
    assert gain["gaps"] >= gain["true"] - 3.0


def test_repair_gradient_is_the_linear_map_it_applies():
    """With the mask, models, filters and click variances fixed the repair is a linear
    map ``y = M x`` (no offset), and autograd's gradient must be that map: for a random
    ``v``, ``<M^T v, x> = <v, y>``. Stereo, with the channels sharing their content, so
    the cross-channel repair is the one used."""
    seed = 620
    print("seed", seed)
    clean, damaged, mask = _stereo(seed, -20.0)
    x = torch.from_numpy(damaged)[None].requires_grad_()
    m = torch.from_numpy(mask)[None]
    y, used = repair_clicks(x, m, SR)
    ys, _ = repair_clicks(x.detach(), m, SR, stereo_taps=None)
    assert not torch.equal(y.detach(), ys)  # the stereo branch changed the repair
    v = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    (g,) = torch.autograd.grad((v * y).sum(), x)
    np.testing.assert_allclose(float((g * x.detach()).sum()), float((v * y.detach()).sum()),
                               rtol=1e-9)
    # untouched outside the mask it used: the identity there
    keep = ~used
    torch.testing.assert_close(y.detach()[keep], x.detach()[keep], rtol=0, atol=0)



def bench_ar_draw(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The restore benchmark's synthetic AR draw at 1 click/s for seed ``seed`` (its
    ``ar_signals`` and ``insert_clicks``, repeated here): ``[(damaged, truth)]``, three
    stereo signals of 10 s."""
    rng = np.random.default_rng(seed)
    out, signals = [], []
    for _ in range(3):
        poly = np.array([1.0])
        for _ in range(int(rng.integers(2, 7))):
            r, th = rng.uniform(0.85, 0.995), rng.uniform(0.01, 3.0)
            poly = np.convolve(poly, [1.0, -2 * r * math.cos(th), r * r])
        sig = lfilter([1.0], poly, rng.standard_normal((2, 10 * SR + 4096)))[:, 4096:]
        signals.append(0.1 * sig / sig.std())
    half = int(0.010 * SR)
    for clean in signals:
        power = np.pad(clean**2, ((0, 0), (1, 0))).cumsum(-1)
        damaged, truth = clean.copy(), np.zeros(clean.shape, bool)
        for ch in range(2):
            for s in np.sort(rng.integers(half, clean.shape[1] - half - 50, rng.poisson(10.0))):
                n = int(np.clip(np.round(np.exp(rng.uniform(0, math.log(50)))), 1, 50))
                local = max(math.sqrt((power[ch, s + half] - power[ch, s - half]) / (2 * half)), 1e-3)
                amp = local * 10 ** (rng.uniform(3, 30) / 20)
                burst = rng.standard_normal(n)
                damaged[ch, s : s + n] += burst * amp / np.abs(burst).max()
                truth[ch, s : s + n] = True
        out.append((damaged, truth))
    return out


def test_second_pass_keeps_the_clicks_the_first_found():
    """The second detection pass refits the models with the first pass's clicks
    interpolated, which can move a click near the candidate threshold under it by chance;
    it must judge the clicks the first pass kept again by the guards, not drop them. The
    benchmark's synthetic AR draw, seed 2 (its seed 1's AR rows; printed): the first pass
    finds 58 of the clicks, and without the re-judging the second pass lost one of them
    (a 12-sample click 14 dB over the RMS, in a process the model predicts by 6 dB only)."""
    seed = 2
    print("seed", seed)
    lost, total = 0, {1: 0, 2: 0}
    for damaged, truth in bench_ar_draw(seed):
        x = torch.from_numpy(damaged).float()[None]
        events = runs(torch.from_numpy(truth)[None]).tolist()
        found = {}
        for passes in (1, 2):
            mask = detect_clicks(x, SR, passes=passes)[0][0].numpy()
            found[passes] = {(r, s) for r, s, e in events if mask[r, s:e].any()}
            total[passes] += len(found[passes])
        lost += len(found[1] - found[2])
    print("lost", lost, "found", total)
    assert total[1] >= 50
    assert lost == 0



def bench_clicks(clean: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The restore benchmark's ``insert_clicks`` (repeated here): ``(damaged, truth)``."""
    half = int(0.010 * SR)
    power = np.pad(clean**2, ((0, 0), (1, 0))).cumsum(-1)
    damaged, truth = clean.copy(), np.zeros(clean.shape, bool)
    for ch in range(clean.shape[0]):
        count = rng.poisson(rate * clean.shape[1] / SR)
        for s in np.sort(rng.integers(half, clean.shape[1] - half - 50, count)):
            n = int(np.clip(np.round(np.exp(rng.uniform(0, math.log(50)))), 1, 50))
            local = max(math.sqrt((power[ch, s + half] - power[ch, s - half]) / (2 * half)), 1e-3)
            amp = local * 10 ** (rng.uniform(3, 30) / 20)
            burst = rng.standard_normal(n)
            damaged[ch, s : s + n] += burst * amp / np.abs(burst).max()
            truth[ch, s : s + n] = True
    return damaged, truth


def test_strong_matched_filter_evidence_relaxes_the_localisation_test():
    """The restore benchmark's music draws, seeds 1 and 2 (printed), 1 click/s, on the
    reggae mix (dense and nearly white: the model predicts a few dB only), where a loud
    click can stand far out of the matched filter while its one-sided errors, spread over
    the burst, stay under the threshold. With the second candidate rule detection finds
    62 of the 66 clicks (60 without; each one missed costs its whole energy in the SNR
    gain: the 1/s row went from -1.0 and +0.2 dB over adeclick to +3.6 and +5.8), and
    flags nothing off a click."""
    import soundfile as sf

    songs = sorted((SHARED / "data" / "multitrack").glob("*/mix.flac"))
    if len(songs) != 3:
        pytest.skip("shared multitracks absent")
    mixes = {p.parent.name: np.ascontiguousarray(sf.read(str(p), dtype="float64", always_2d=True)[0].T)
             for p in songs}
    found = {"off": 0, "on": 0}
    for seed in (1, 2):
        print("seed", seed)
        rng = np.random.default_rng(seed)
        draws = {}
        for rate in (0.1, 1.0):  # the benchmark's order: every song at 0.1/s, then at 1/s
            for name, clean in mixes.items():
                draws[rate, name] = bench_clicks(clean, rate, rng)
        damaged, truth = draws[1.0, "CapDan-ReggaeTry"]
        x = torch.from_numpy(damaged.astype(np.float32))[None]
        events = runs(torch.from_numpy(truth)[None]).tolist()
        for name, strong in (("off", None), ("on", 16.0)):
            # the joint-model candidates off: they find these clicks too (65 either way)
            mask = detect_clicks(x, SR, z_strong=strong, arx_taps=None)[0][0].numpy()
            found[name] += sum(bool(mask[r, s:e].any()) for r, s, e in events)
            if name == "on":
                for r, s, e in runs(torch.from_numpy(mask)[None]).tolist():
                    assert truth[r, s:e].any(), (r, s, e)
    print(found)
    assert found["on"] >= found["off"] + 2


def test_stereo_rule_lets_the_two_tests_meet_on_nearby_samples():
    """The third candidate rule (``z_reach``): the matched filter is matched to an impulse,
    so over a noise burst (whose frame's model is whitened by the burst itself) its peak
    need not fall on the sample where the one-sided errors pass their test, and the
    burst passes each test on some sample but both on none. Where the other channel
    shows nothing, the two tests may hold within ``z_reach`` samples of each other. The
    benchmark's synthetic AR draw, seed 2 (printed; its seed 1's AR rows, the draw with
    the lowest recall): 62 of 77 clicks found with the rule, 58 without (measured), and
    nothing flagged off a click either way."""
    seed = 2
    print("seed", seed)
    found = {"on": 0, "off": 0}
    for damaged, truth in bench_ar_draw(seed):
        x = torch.from_numpy(damaged).float()[None]
        events = runs(torch.from_numpy(truth)[None]).tolist()
        for key, reach in (("on", 8), ("off", None)):
            mask = detect_clicks(x, SR, z_reach=reach)[0][0].numpy()
            found[key] += sum(bool(mask[r, s:e].any()) for r, s, e in events)
            for r, s, e in runs(torch.from_numpy(mask)[None]).tolist():
                assert truth[r, s:e].any(), (key, r, s, e)
    print(found)
    assert found["on"] >= found["off"] + 3


def bench_music_draw(seed: int, rate: float, song: str) -> tuple[np.ndarray, np.ndarray]:
    """The restore benchmark's music draw of ``seed`` (printed) for ``song`` at ``rate``
    clicks per second: ``(damaged, truth)``; skips where the shared multitracks are absent."""
    import soundfile as sf

    songs = sorted((SHARED / "data" / "multitrack").glob("*/mix.flac"))
    if len(songs) != 3:
        pytest.skip("shared multitracks absent")
    mixes = {p.parent.name: np.ascontiguousarray(sf.read(str(p), dtype="float64", always_2d=True)[0].T)
             for p in songs}
    print("seed", seed)
    rng = np.random.default_rng(seed)
    draws = {}
    for r in (0.1, 1.0, 10.0, 50.0):  # the benchmark's order
        for name, clean in mixes.items():
            draws[r, name] = bench_clicks(clean, r, rng)
    return draws[rate, song]


def test_dense_clicks_kept_by_the_first_pass_stay_clicks(monkeypatch):
    """At 50 clicks/s two loud clicks a few dozen samples apart are both kept by the first
    pass; the second pass's models, fitted with them interpolated, are sharper and flag
    the error each spreads between them, which joined the two into one burst longer
    than ``max_click_ms``, and both were dropped (each missed click costs its whole
    energy: the 50/s row of seed 2 was +0.7 dB over adeclick, +5.5 with them kept). The
    benchmark's music draw, seed 2 (printed), 50 clicks/s, the reggae mix: more clicks
    found with the kept bursts kept, nothing more flagged off a click."""
    from diffmix.functional import restoration

    damaged, truth = bench_music_draw(2, 50.0, "CapDan-ReggaeTry")
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    events = runs(torch.from_numpy(truth)[None]).tolist()
    found, false = {}, {}
    keep_inside = restoration._keep_inside
    for key in ("kept", "dropped"):
        monkeypatch.setattr(restoration.detect, "_keep_inside",
                            keep_inside if key == "kept" else lambda bursts, *_: bursts)
        mask = detect_clicks(x, SR)[0][0].numpy()
        found[key] = sum(bool(mask[r, s:e].any()) for r, s, e in events)
        false[key] = sum(not truth[r, s:e].any() for r, s, e in runs(torch.from_numpy(mask)[None]).tolist())
    print(len(events), found, false)
    assert found["kept"] >= found["dropped"] + 3  # measured: 1881 vs 1876 of 1998
    assert false["kept"] <= false["dropped"]


def _arx_oracle(x: np.ndarray, ref: np.ndarray, hop: int, span: int, frame: int, p: int,
                q: int, backward: bool) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 least squares for one frame of ``_arx_filters``: the Hann-
    windowed ``span`` samples centred on the frame, zero beyond the window (the
    autocorrelation method), one row per error term that touches them; ``x[n]`` predicted
    from ``x[n - k]`` (forward) or ``x[n + k]`` (backward), ``k = 1 .. p``, and ``ref[n -
    j]`` (forward) or ``ref[n + j]`` (backward), ``j = -q .. q``. ``(a, h)``."""
    half = (span - hop) // 2
    win = np.hanning(span)
    start = frame * hop - half

    def seg(v):
        out = np.zeros(span)
        lo, hi = max(start, 0), min(start + span, len(v))
        out[lo - start : hi - start] = v[lo:hi]
        return out * win

    xw, rw = seg(x), seg(ref)
    sign = 1 if backward else -1
    rows, target = [], []
    for n in range(-p - q, span + p + q):
        def at(v, i):
            return v[i] if 0 <= i < span else 0.0
        rows.append([at(xw, n + sign * k) for k in range(1, p + 1)]
                    + [at(rw, n + sign * j) for j in range(-q, q + 1)])
        target.append(at(xw, n))
    w, *_ = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)
    return np.concatenate([[1.0], -w[:p]]), w[p:]


def test_arx_fit_matches_least_squares():
    """``_arx_filters`` (forward, backward: the fit on the time-reversed signals, and the
    nested mono model) against dense least-squares solves of the same windowed problems,
    on a correlated stereo pair."""
    from diffmix.functional import restoration

    seed = 90
    print("seed", seed)
    rng = np.random.default_rng(seed)
    hop, p, q = 64, 3, 2
    src = ar_process(resonant(rng, 2, (0.8, 0.95)), (2000,), rng)
    x = np.stack([src, np.roll(src, 2) + 0.3 * rng.standard_normal(2000)])
    frames = torch.tensor([[0, 5], [1, 5], [0, 17]])
    fits = restoration._arx_filters(torch.from_numpy(x)[None], torch.from_numpy(x[::-1].copy())[None],
                                    hop, p, q, frames, mono=True, both=True)
    (a, h, a0, ab, hb), span = (f[0].numpy() for f in fits), restoration._ARX_SPAN * hop
    for row, f in frames.tolist():
        for backward, (ga, gh) in ((False, (a, h)), (True, (ab, hb))):
            ea, eh = _arx_oracle(x[row], x[1 - row], hop, span, f, p, q, backward)
            np.testing.assert_allclose(ga[row, f], ea, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(gh[row, f], eh, rtol=1e-3, atol=1e-4)
        ea, _ = _arx_oracle(x[row], 0 * x[1 - row], hop, span, f, p, 0, False)  # no input
        np.testing.assert_allclose(a0[row, f], ea, rtol=1e-3, atol=1e-4)


def test_joint_model_look_runs_in_the_last_pass_only_at_dense_clicks(monkeypatch):
    """The joint-model look (``_arx_candidates``) runs in every pass, except at dense
    clicks (30 a second here), where it runs once, in the last pass, on models refitted
    with the first pass's clicks interpolated. Click-free audio: one pass, one look."""
    from diffmix.functional import restoration

    seed = 95
    print("seed", seed)
    rng = np.random.default_rng(seed)
    src = ar_process(resonant(rng, 3, (0.9, 0.99)), (SR,), rng)
    x = np.stack([src, np.roll(src, 3) + 0.1 * rng.standard_normal(SR)])
    x *= 0.1 / x.std()
    calls = []
    real = restoration._arx_candidates

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(restoration.detect, "_arx_candidates", counting)
    mask = detect_clicks(torch.from_numpy(x).float()[None], SR)[0]
    assert len(calls) == 1 and not bool(mask.any())
    for count, looks in ((1, 2), (120, 1)):  # one click, then 60 a second a channel
        damaged = x.copy()
        # Noise bursts at random times (clicks alike and evenly spaced read as periodic).
        at = np.sort(rng.choice(np.arange(700, SR - 700, 150), count, replace=False))
        for i, s in enumerate(at):
            damaged[i % 2, s : s + 10] += rng.standard_normal(10)  # ten times the RMS
        calls.clear()
        mask = detect_clicks(torch.from_numpy(damaged).float()[None], SR)[0][0]
        found = [bool(mask[i % 2, s : s + 10].any()) for i, s in enumerate(at)]
        assert sum(found) >= 0.9 * len(at)
        assert len(calls) == looks


def _bench_music_draw(seed: int, rate: float, song: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The restore benchmark's music draw (its order: every song at each rate in turn)."""
    import soundfile as sf

    songs = sorted((SHARED / "data" / "multitrack").glob("*/mix.flac"))
    if len(songs) != 3:
        return None
    mixes = {pp.parent.name: np.ascontiguousarray(sf.read(str(pp), dtype="float64", always_2d=True)[0].T)
             for pp in songs}
    rng = np.random.default_rng(seed)
    for r in (0.1, 1.0, 10.0, 50.0):
        for name, clean in mixes.items():
            draw = bench_clicks(clean, r, rng)
            if r == rate and name == song:
                return draw
    return None


def test_joint_model_finds_the_clicks_the_mono_rules_miss():
    """The benchmark's music draws at 1 click/s on the reggae mix, seeds 4 and 6
    (printed): three clicks in one channel that the mono model misses (one whitens its
    own frame's model, one is 6 dB over the music, one's candidates spread past a
    click's length), each of which made 70-95 % of its row's residual error (the rows
    were +1.6 and -2.0 dB over adeclick, now +12.4 and +8.8). In a mix the other channel
    predicts the music: under the joint (ARX) model they stand out. Found with it, missed
    without; nothing more flagged off a click."""
    found, false = {"arx": 0, "mono": 0}, {"arx": 0, "mono": 0}
    for seed in (4, 6):
        print("seed", seed)
        draw = _bench_music_draw(seed, 1.0, "CapDan-ReggaeTry")
        if draw is None:
            pytest.skip("shared multitracks absent")
        damaged, truth = draw
        x = torch.from_numpy(damaged.astype(np.float32))[None]
        events = runs(torch.from_numpy(truth)[None]).tolist()
        for key, taps in (("arx", 48), ("mono", None)):
            mask = detect_clicks(x, SR, arx_taps=taps)[0][0].numpy()
            found[key] += sum(bool(mask[r, s:e].any()) for r, s, e in events)
            false[key] += sum(not truth[r, max(s - 6, 0) : e + 6].any()
                              for r, s, e in runs(torch.from_numpy(mask)[None]).tolist())
    print(found, false)
    assert found["arx"] >= found["mono"] + 3
    assert false["arx"] <= false["mono"]


def test_joint_model_adds_nothing_on_independent_channels():
    """Independent AR channels (the benchmark's synthetic draw, seed 2, printed): the other
    channel predicts nothing, the joint model's innovation is not below the mono model's
    by BIC's price of its extra coefficients, and detection is the mono rules' exactly."""
    seed = 2
    print("seed", seed)
    for damaged, _ in bench_ar_draw(seed):
        x = torch.from_numpy(damaged).float()[None]
        with_arx = detect_clicks(x, SR)[0]
        without = detect_clicks(x, SR, arx_taps=None)[0]
        assert torch.equal(with_arx, without)
