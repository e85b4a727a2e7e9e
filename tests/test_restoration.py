"""Restoration: LSAR interpolation against an independent float64 least-squares solve,
click detection on pure AR signals and on percussion, declipping, DC, gradients."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffmix.functional.restoration import (
    _frames_near,
    _periodicity,
    ar_coefficients,
    ar_residuals,
    declick,
    declip,
    detect_clicks,
    detect_clipping,
    levinson,
    lsar_interpolate,
    remove_dc,
    repair_clicks,
    runs,
    spans,
)
from tests.seeds import drawn_seed

SR = 44100
SHARED = Path(os.environ.get("DIFFMIX_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def ar_signal(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A pure AR process ``sum_k a[k] x[n - k] = w[n]`` (a[0] = 1), float64 loop."""
    p = len(a) - 1
    w = rng.standard_normal(n + 500)
    x = np.zeros(n + 500)
    for i in range(n + 500):
        acc = w[i]
        for k in range(1, p + 1):
            if i - k >= 0:
                acc -= a[k] * x[i - k]
        x[i] = acc
    return x[500:]


def stable_ar(rng: np.random.Generator, pairs: int, *, radius: tuple[float, float] = (0.85, 0.98),
              angle: tuple[float, float] = (0.05, 2.5)) -> np.ndarray:
    """Prediction-error filter with resonant pole pairs inside the unit circle (radii and
    angles drawn uniformly from ``radius`` and ``angle``)."""
    poly = np.array([1.0])
    for _ in range(pairs):
        r, th = rng.uniform(*radius), rng.uniform(*angle)
        poly = np.convolve(poly, [1.0, -2 * r * math.cos(th), r * r])
    return poly


def numpy_lsar(x: np.ndarray, a: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Independent LSAR: minimise ||A x||^2 over the unknown samples by lstsq, where A has
    one row per prediction error e[n] = sum_k a[k] x[n - k], n = p .. T - 1."""
    p, t = len(a) - 1, len(x)
    rows = np.zeros((t - p, t))
    for i, n in enumerate(range(p, t)):
        rows[i, n - p : n + 1] = a[::-1]
    au, ak = rows[:, unknown], rows[:, ~unknown]
    u, *_ = np.linalg.lstsq(au, -ak @ x[~unknown], rcond=None)
    out = x.copy()
    out[unknown] = u
    return out


def one_frame(a: np.ndarray, t: int) -> torch.Tensor:
    return torch.from_numpy(a)[None, None, None].expand(1, 1, 1, -1).clone()


def test_levinson_matches_normal_equations():
    seed = 11
    print("seed", seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(4000)
    p = 6
    r = np.array([x[: len(x) - k] @ x[k:] for k in range(p + 1)])
    toeplitz = np.array([[r[abs(i - j)] for j in range(p)] for i in range(p)])
    expected = np.concatenate([[1.0], np.linalg.solve(toeplitz, -r[1:])])
    got = levinson(torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", range(4))
def test_lsar_matches_numpy_least_squares(case):
    # Random AR model, click positions and lengths; the oracle is a dense lstsq in float64.
    seed = 1000 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=rng.integers(1, 4))
    t = 600
    clean = ar_signal(a, t, rng)
    damaged = clean.copy()
    unknown = np.zeros(t, bool)
    start = int(rng.integers(150, 300))
    length = int(rng.integers(1, 30))
    unknown[start : start + length] = True
    # a second run closer than the order for some cases: one joint segment
    if case % 2:
        s2 = start + length + int(rng.integers(1, len(a)))
        unknown[s2 : s2 + 3] = True
    damaged[unknown] += rng.standard_normal(unknown.sum()) * 20 * clean.std()
    x = torch.from_numpy(damaged)[None, None]
    got = lsar_interpolate(x, torch.from_numpy(unknown)[None, None], one_frame(a, t), hop=t)
    expected = numpy_lsar(damaged, a, unknown)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=0, atol=1e-9 * clean.std())
    # physics: the interpolant is far closer to the clean signal than the click was
    err = np.abs(got[0, 0].numpy() - clean)[unknown].max()
    assert err < 0.25 * np.abs(damaged - clean)[unknown].max()


def test_declick_finds_and_repairs_a_click_on_an_ar_signal():
    seed = 7
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=3)
    clean = ar_signal(a, 2 * SR // 5, rng)
    clean *= 0.1 / clean.std()
    damaged = clean.copy()
    damaged[9000:9004] += [0.5, -0.4, 0.6, -0.3]
    x = torch.from_numpy(damaged)[None, None]
    y, mask = declick(x, SR)
    found = runs(mask).tolist()
    assert len(found) == 1, found
    _, s, e = found[0]
    assert s <= 9000 and e >= 9004 and e - s <= 4 + 2 * 6 + 2  # pad: 6 samples a side
    err_before = np.abs(damaged - clean)[9000:9004].max()
    err = (y[0, 0].numpy() - clean)[s:e]
    assert np.abs(err).max() < 0.15 * err_before
    assert np.sqrt((err**2).mean()) < 0.5 * clean.std()  # well beyond zero-filling the span
    # untouched elsewhere
    keep = ~mask[0, 0].numpy()
    np.testing.assert_array_equal(y[0, 0].numpy()[keep], damaged[keep])


def test_ar_residuals_match_direct_sums():
    # Forward, backward and interpolation errors against float64 loops, frame by frame,
    # at the frame edges and the signal ends (zeros beyond them).
    seed = 14
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t, hop, p = 3000, 700, 7
    x = rng.standard_normal(t)
    a = rng.standard_normal((5, p + 1)) * 0.3
    a[:, 0] = 1.0
    got = [e[0, 0].numpy() for e in ar_residuals(
        torch.from_numpy(x)[None, None], torch.from_numpy(a)[None, None], hop)]

    def at(i: int) -> float:
        return x[i] if 0 <= i < t else 0.0

    for n in [0, 1, p, hop - 1, hop, 2 * hop + 3, t - p, t - 1, *rng.integers(0, t, 20)]:
        f = a[n // hop]
        r = np.correlate(f, f, "full")  # lags -p .. p
        fwd = sum(f[k] * at(n - k) for k in range(p + 1))
        bwd = sum(f[k] * at(n + k) for k in range(p + 1))
        interp = sum(r[j + p] * at(n + j) for j in range(-p, p + 1)) / math.sqrt(r[p])
        np.testing.assert_allclose([g[n] for g in got], [fwd, bwd, interp], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_declick_repair_is_exact_on_a_deterministic_ar_signal(seed):
    """A sum of sinusoids is an AR(2k) process with no innovation: its samples are exactly
    predictable, so LSAR interpolation of a known click recovers the clean signal (to the
    -60 dB floor the AR fit adds), and the detected span covers the click exactly once."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    n = np.arange(SR // 4) / SR
    clean = sum(rng.uniform(0.1, 0.3) * np.sin(2 * math.pi * f * n + rng.uniform(0, 6))
                for f in rng.uniform(80, 4000, 3))
    start, length = int(rng.integers(3000, 8000)), int(rng.integers(1, 40))
    damaged = clean.copy()
    click = rng.standard_normal(length)
    damaged[start : start + length] += click * 0.8 / np.abs(click).max()
    y, mask = declick(torch.from_numpy(damaged)[None, None], SR)
    found = runs(mask).tolist()
    assert len(found) == 1, found
    _, s, e = found[0]
    assert s <= start and e >= start + length and (e - s) - length <= 2 * 6 + 2
    err = np.abs(y[0, 0].numpy() - clean).max()
    assert err < 1e-3 * np.abs(clean).max(), err


@pytest.mark.parametrize("seed", [51, 52, 53])
def test_declick_repair_near_the_oracle_on_a_noisy_ar_signal(seed):
    """On an AR process with innovation the best repair of a span is the LSAR
    interpolation with the *true* model (the conditional mean of the missing samples).
    declick fits its own models: over ten clicks its error energy must stay within 1.5x
    of that oracle's on the same spans (an order-96 model fitted on 40 ms windows gives
    1.7x for seed 52), and every click must be found. The oracle is
    :func:`lsar_interpolate` with the true filter, itself checked against lstsq above."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=int(rng.integers(2, 6)))
    clean = ar_signal(a, SR // 2, rng)
    clean *= 0.05 / clean.std()
    damaged, truth = clean.copy(), np.zeros(clean.size, bool)
    for s in np.arange(1, 11) * (SR // 22):
        length = int(rng.integers(1, 30))
        damaged[s : s + length] += rng.standard_normal(length) * 0.5
        truth[s : s + length] = True
    x = torch.from_numpy(damaged)[None, None]
    y, mask = declick(x, SR)
    m = mask[0, 0].numpy()
    damage = (damaged - clean) ** 2
    # every click is found; its samples left out of the span are the few quiet ones
    for s in np.arange(1, 11) * (SR // 22):
        assert m[s : s + 30][truth[s : s + 30]].any()
    assert damage[truth & ~m].sum() < 1e-3 * damage[truth].sum()
    oracle = lsar_interpolate(x, mask, one_frame(a, clean.size), hop=clean.size)[0, 0].numpy()
    ours = ((y[0, 0].numpy() - clean)[truth] ** 2).sum()
    best = ((oracle - clean)[truth] ** 2).sum()
    assert ours <= 1.5 * best, (ours / best)
    assert ours < 0.01 * ((damaged - clean)[truth] ** 2).sum()


def _percussion(seed: int) -> np.ndarray:
    """Hi-hats, rimshots and plucked strings over a soft pad, stereo (2, T), 4 s."""
    rng = np.random.default_rng(seed)
    t = 4 * SR
    out = np.zeros((2, t))
    n = np.arange(t) / SR
    out += 0.05 * np.sin(2 * math.pi * 110 * n) + 0.03 * np.sin(2 * math.pi * 164.8 * n)
    for beat in range(16):  # hi-hats: high-passed noise, 30-80 ms decays
        s = beat * SR // 4 + int(rng.integers(0, 200))
        length = SR // 8
        noise = rng.standard_normal((2, length))
        noise = np.diff(noise, axis=-1, prepend=0.0)
        env = np.exp(-np.arange(length) / (rng.uniform(0.03, 0.08) * SR))
        out[:, s : s + length] += rng.uniform(0.1, 0.3) * noise * env
    for beat in range(4):  # rimshots: an impulse into two resonators, plus a noise tick
        s = beat * SR + SR // 2
        length = SR // 5
        k = np.arange(length)
        ring = sum(np.exp(-k / (0.02 * SR)) * np.sin(2 * math.pi * f * k / SR) for f in (420, 1650))
        tick = rng.standard_normal(length) * np.exp(-k / (0.002 * SR))
        out[:, s : s + length] += 0.3 * ring + 0.2 * tick
    for beat in range(6):  # plucks: Karplus-Strong
        s = beat * SR * 2 // 3 + SR // 8
        period = int(rng.integers(60, 300))
        length = SR // 2
        buf = rng.uniform(-1, 1, period)
        y = np.zeros(length)
        for i in range(length):  # test-signal synthesis only
            y[i] = buf[i % period]
            buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        out[:, s : s + length] += 0.2 * y
    return out


def test_percussion_is_not_flagged():
    seed = 3
    print("seed", seed)
    x = torch.from_numpy(_percussion(seed)).float()[None]
    mask, _, _ = detect_clicks(x, SR)
    assert runs(mask).tolist() == []


@pytest.mark.parametrize("seed", [3, 4, 7])
def test_percussion_in_one_channel_is_not_flagged(seed):
    """Percussion hard-panned to one channel, the pad alone in the other: the other
    channel shows nothing at each hit, which is where the stereo candidate rule
    (``z_reach``) is laxer; the guards must still leave every attack alone."""
    print("seed", seed)
    audio = _percussion(seed)
    n = np.arange(audio.shape[1]) / SR
    pad = 0.05 * np.sin(2 * math.pi * 110 * n) + 0.03 * np.sin(2 * math.pi * 164.8 * n)
    for ch in (0, 1):
        panned = audio.copy()
        panned[1 - ch] = pad
        assert runs(detect_clicks(torch.from_numpy(panned).float()[None], SR)[0]).tolist() == []


@pytest.mark.parametrize("seed", [3, 5, 7])
def test_attacks_the_repair_cannot_explain_are_not_clicks(seed):
    """The explanation guard: a plucked string's or a rimshot's attack is unpredictable,
    but interpolating it leaves the error of the sound it starts (the repair explains
    less than ``explain_db`` of the error it touches); without the guard these synthetic
    percussion tracks get false alarms, with it none."""
    print("seed", seed)
    x = torch.from_numpy(_percussion(seed)).float()[None]
    assert runs(detect_clicks(x, SR, explain_db=None)[0]).tolist() != []
    assert runs(detect_clicks(x, SR)[0]).tolist() == []


def test_percussion_with_clicks_only_clicks_flagged():
    seed = 4
    print("seed", seed)
    audio = _percussion(seed)
    rng = np.random.default_rng(seed)
    truth = np.zeros(audio.shape, bool)
    # one click per half second, anywhere in it: over hi-hats, rimshots, plucks or the pad
    for s in np.arange(8) * (SR // 2) + rng.integers(1000, SR // 2 - 1000, 8):
        ch = int(rng.integers(0, 2))
        local = np.sqrt((audio[ch, s - 441 : s + 441] ** 2).mean())  # RMS over +-10 ms
        audio[ch, s : s + 3] += 32 * local * np.array([1.0, -1.0, 0.7])  # 30 dB above it
        truth[ch, s : s + 3] = True
    mask, _, _ = detect_clicks(torch.from_numpy(audio).float()[None], SR)
    m = mask[0].numpy()
    for ch, s, e in runs(mask).tolist():
        assert truth[ch % 2, max(s - 5, 0) : e + 5].any(), ("false alarm", ch, s / SR)
    assert m[truth].mean() == 1.0


FALSE_ALARMS_PER_MINUTE = 1.0  # issue 22's goal on click-free music


@pytest.mark.parametrize(
    "song", ["Alf42red-Mauiwowi", "CapDan-ReggaeTry", "Shovon-ProgressiveHousePluckDemo"]
)
def test_real_mix_false_alarms_within_the_goal(song):
    """Click-free shared mixes (hi-hats, rimshots, slap bass, kicks): at most the goal's
    false alarms per minute, rounded down over the mix's length (0 for a 20 s mix)."""
    path = SHARED / "data" / "multitrack" / song / "mix.flac"
    if not path.exists():
        pytest.skip("shared multitracks absent")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    allowed = math.floor(FALSE_ALARMS_PER_MINUTE * data.shape[0] / sr / 60.0)
    mask, _, _ = detect_clicks(torch.from_numpy(data.T.copy())[None], sr)
    found = [(ch, round(s / sr, 3)) for ch, s, _ in runs(mask).tolist()]
    assert len(found) <= allowed, found


@pytest.mark.parametrize("seed", [61, 62])
def test_a_loud_click_where_the_music_starts_is_still_a_click(seed):
    """The onset guard spares a sound that starts out of silence; a click far above the
    music (``loud_db``) right where the music starts is repaired all the same."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=3)
    music = ar_signal(a, SR // 2, rng)
    music *= 0.1 / music.std() * np.minimum(1.0, np.arange(music.size) / 200.0)  # 5 ms fade-in
    x = np.concatenate([np.zeros(SR // 4), music])
    at = SR // 4 + int(rng.integers(5, 60))
    length = int(rng.integers(5, 30))
    clean = x.copy()
    x[at : at + length] += rng.standard_normal(length) * 1.0  # ~30 dB over the music
    y, mask = declick(torch.from_numpy(x)[None, None], SR)
    assert mask[0, 0, at : at + length].any()
    before = ((x - clean)[at : at + length] ** 2).sum()
    assert ((y[0, 0].numpy() - clean)[at : at + length] ** 2).sum() < 0.05 * before


PERCUSSION_STEMS = [
    "Alf42red-Mauiwowi/05-hihat-closed05", "Alf42red-Mauiwowi/07-snare01",
    "Alf42red-Mauiwowi/08-bassdrum-acoustic01", "Alf42red-Mauiwowi/09-crash01",
    "Alf42red-Mauiwowi/12-ride3", "Alf42red-Mauiwowi/13-snare-muffled02",
    "Alf42red-Mauiwowi/14-kick", "Alf42red-Mauiwowi/15-wood", "CapDan-ReggaeTry/05-bd-03",
    "CapDan-ReggaeTry/06-snare-05", "CapDan-ReggaeTry/07-snare-06",
    "CapDan-ReggaeTry/08-open-hihat-02", "CapDan-ReggaeTry/09-closed-hihhat-03",
    "Shovon-ProgressiveHousePluckDemo/02-bassdrum04", "Shovon-ProgressiveHousePluckDemo/03-kick01",
]
# Percussive stems that still get false alarms (per 20 s): known, not accepted. strict:
# when one passes, move it up.
PERCUSSION_KNOWN = {
    "Alf42red-Mauiwowi/06-hollow-wood-2": 4, "Alf42red-Mauiwowi/16-wood2": 2,
    "CapDan-ReggaeTry/02-bass-slap-02": 19,
}


@pytest.mark.parametrize("stem", PERCUSSION_STEMS + [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=f"{v} false alarms"))
    for k, v in PERCUSSION_KNOWN.items()])
def test_real_percussion_stems_are_untouched(stem):
    """Solo hi-hats, snares, cymbals, kicks (one out of digital silence) and woodblocks
    from the shared multitracks, nothing to mask an attack: declick leaves them bit for
    bit as they are."""
    song, name = stem.split("/")
    path = SHARED / "data" / "multitrack" / song / "stems" / f"{name}.flac"
    if not path.exists():
        pytest.skip("shared multitracks absent")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(data.T.copy())[None]
    y, mask = declick(x, sr)
    assert [(ch, round(s / sr, 3)) for ch, s, _ in runs(mask).tolist()] == []
    assert torch.equal(y, x)


def test_declick_batch_matches_items_and_leaves_input():
    seed = 5
    print("seed", seed)
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(2):
        a = stable_ar(rng, pairs=2)
        sig = np.stack([ar_signal(a, SR // 4, rng) for _ in range(2)]) * 0.02
        sig[int(rng.integers(0, 2)), int(rng.integers(2000, 9000))] += 0.5
        items.append(sig)
    x = torch.from_numpy(np.stack(items)).float()
    before = x.clone()
    y, mask = declick(x, SR)
    assert torch.equal(x, before)
    for i in range(2):
        yi, mi = declick(x[i : i + 1], SR)
        assert torch.equal(mi, mask[i : i + 1])
        torch.testing.assert_close(yi, y[i : i + 1], rtol=0, atol=1e-6)


def _music(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = np.arange(int(seconds * SR)) / SR
    x = sum(rng.uniform(0.2, 1.0) * np.sin(2 * math.pi * f * n + rng.uniform(0, 6))
            for f in rng.uniform(60, 2000, 6))
    return x / np.abs(x).max()


@pytest.mark.parametrize("clip_db", [-1.0, -3.0, -6.0])
def test_declip_beats_the_clipped_signal(clip_db):
    seed = 21
    print("seed", seed)
    clean = np.stack([_music(1.0, seed), _music(1.0, seed + 1)])
    rail = 10 ** (clip_db / 20)
    clipped = np.clip(clean, -rail, rail)
    truth = np.abs(clean) > rail
    x = torch.from_numpy(clipped)[None]
    y, mask = declip(x, SR)
    m = mask[0].numpy()
    assert (m == (np.abs(clipped) >= rail * (1 - 1e-9))).all()
    out = y[0].numpy()
    snr_in = 10 * np.log10((clean[truth] ** 2).sum() / ((clipped - clean)[truth] ** 2).sum())
    snr_out = 10 * np.log10((clean[truth] ** 2).sum() / ((out - clean)[truth] ** 2).sum())
    assert snr_out > snr_in + 10.0, (snr_in, snr_out)
    # beyond the rail, never pulled inside it; unclipped samples untouched
    assert (np.abs(out[m]) >= rail - 1e-12).all() and np.abs(out).max() > rail * 1.01
    np.testing.assert_array_equal(out[~m], clipped[~m])


def test_clean_music_is_not_declipped():
    x = torch.from_numpy(np.stack([_music(1.0, 30), _music(1.0, 31)]))[None]
    assert not detect_clipping(x, SR).any()
    y, mask = declip(x, SR)
    assert y is x and not mask.any()


def test_remove_dc_exact_and_linear():
    seed = 8
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 1000, generator=g, dtype=torch.float64) + 0.3
    y, dc = remove_dc(x, SR)
    torch.testing.assert_close(y + dc, x, rtol=0, atol=1e-15)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_gradcheck_lsar_with_fixed_mask():
    seed = 9
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=2)
    t = 120
    x = torch.from_numpy(ar_signal(a, t, rng))[None, None].repeat(1, 2, 1).requires_grad_()
    mask = torch.zeros(1, 2, t, dtype=torch.bool)
    mask[0, 0, 40:46] = True
    mask[0, 1, 70:72] = True
    coeffs = torch.from_numpy(a)[None, None, None].expand(1, 2, 2, -1).clone()
    assert torch.autograd.gradcheck(lambda v: lsar_interpolate(v, mask, coeffs, hop=64), (x,))
    assert torch.autograd.gradcheck(lambda v: remove_dc(v, SR)[0], (x,))
    # with a known input (the joint stereo model's drive): linear in both
    drive = torch.from_numpy(rng.standard_normal((1, 2, t)))[None][0].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, d: lsar_interpolate(v, mask, coeffs, hop=64, drive=d), (x, drive))
    with pytest.raises(ValueError, match="lsar_interpolate: drive shape"):
        lsar_interpolate(x, mask, coeffs, hop=64, drive=drive[..., :-1])


def test_declick_gradient_is_the_fixed_mask_linear_map():
    seed = 10
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=2)
    clean = ar_signal(a, 8000, rng)
    clean *= 0.1 / clean.std()
    clean[4000] += 1.0  # 20 dB above the signal's RMS
    x = torch.from_numpy(clean)[None, None].requires_grad_()
    y, mask = declick(x, SR, noisy=False)
    assert mask[0, 0, 4000]
    (g,) = torch.autograd.grad(y[0, 0, 4000], x)
    assert g[0, 0, 4000] == 0  # plain LSAR: the repaired sample does not depend on the click
    assert g.abs().sum() > 0
    # The noisy-observation repair weighs the click by lam / (G + lam), lam = sigma_e^2 /
    # sigma_n^2: almost nothing for a click 20 dB above the signal, but not zero.
    y, mask = declick(x, SR)
    (g,) = torch.autograd.grad(y[0, 0, 4000], x)
    assert 0 < g[0, 0, 4000] < 1e-4, float(g[0, 0, 4000])


def test_ar_coefficients_recover_a_known_model():
    seed = 12
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=2)
    x = torch.from_numpy(ar_signal(a, 20000, rng))[None, None]
    got = ar_coefficients(x, SR, order=4, hop=4096)[0, 0, 2].numpy()
    np.testing.assert_allclose(got, a, atol=0.05)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mask shape"):
        lsar_interpolate(torch.zeros(1, 1, 10), torch.zeros(1, 1, 9, dtype=torch.bool),
                         torch.zeros(1, 1, 1, 3), hop=10)
    with pytest.raises(ValueError, match="batch, channels, time"):
        declick(torch.zeros(10), SR)
    with pytest.raises(ValueError, match="repair_clicks: mask shape"):
        repair_clicks(torch.zeros(1, 1, 10), torch.zeros(1, 2, 10, dtype=torch.bool), SR)


def test_repair_clicks_with_the_detected_mask_is_declick():
    # declick = detect_clicks + repair_clicks with the detection's models (one concept)
    seed = 15
    print("seed", seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([_music(0.5, seed), _music(0.5, seed + 1)]) * 0.3)[None]
    for s in rng.integers(2000, 20000, 4):
        x[0, int(rng.integers(0, 2)), s : s + 5] += 0.8
    y, mask = declick(x, SR)
    found, coeffs, hop = detect_clicks(x, SR)
    y2, mask2 = repair_clicks(x, found, SR, coeffs=coeffs, hop=hop)
    assert int(runs(found).shape[0]) == 4
    assert torch.equal(mask, mask2) and torch.equal(y, y2)


def test_analysis_reports_clicks_and_clipped_runs_with_times():
    from diffmix.functional.analysis import analysis_report

    seed = 13
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = stable_ar(rng, pairs=2)
    sig = np.stack([ar_signal(a, SR, rng) for _ in range(2)])
    sig *= 0.1 / sig.std()
    sig[1, 30000] += 1.0
    sig[0] = np.clip(sig[0], -0.12, 0.12)
    rep = analysis_report(torch.from_numpy(sig).float()[None], SR)[0]["defects"]
    assert rep["clicks_count"] == 1 and rep["clicks_per_minute"] == 60.0
    click = rep["clicks"][0]
    assert click["channel"] == 1 and 0 <= 30000 / SR - click["time_s"] <= 8 / SR
    expected = int(np.sum(np.diff(np.pad((np.abs(sig[0]) >= 0.12).astype(int), 1)) == 1))
    assert rep["clipped_runs_count"] == expected > 10
    assert all(r["channel"] == 0 for r in rep["clipped_runs"])
    silent = analysis_report(torch.zeros(1, 2, 4800), 48000)[0]["defects"]
    assert silent["clicks_count"] == silent["clipped_runs_count"] == 0


def test_analysis_lists_what_the_repair_job_repairs():
    """analyze's clicks and clipped runs are the spans `diffmix repair` (polish) repairs,
    on audio with a DC offset, clicks and a clipped channel (random, printed seed), and on
    the CapDan mix's 2-12 s: there, detected on the raw signal with its DC offset
    (-36.6 dBFS), three borderline onsets read as clicks that the repair, which removes
    the offset first, leaves alone."""
    from diffmix.functional.analysis import analysis_report
    from diffmix.polish import polish

    def same(x: torch.Tensor) -> dict:
        found = analysis_report(x, SR)[0]["defects"]
        _, rep = polish(x, SR)
        for key, listed in (("clicks", "clicks"), ("clipping", "clipped_runs")):
            want = sorted((s["channel"], s["time_s"], s["samples"]) for s in rep[key]["spans"])
            got = sorted((s["channel"], s["time_s"], s["samples"]) for s in found[listed])
            assert got == want and found[f"{listed}_count"] == rep[key]["count"], key
        return found

    seed = drawn_seed(2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    sig = np.stack([ar_signal(stable_ar(rng, pairs=2), SR, rng) for _ in range(2)])
    sig = sig * 0.1 / sig.std() + rng.uniform(-0.05, 0.05, (2, 1))
    for s in rng.integers(2000, sig.shape[-1] - 2000, 3):
        sig[int(rng.integers(0, 2)), s : s + int(rng.integers(1, 8))] += rng.choice([-1, 1]) * 0.8
    rail = 1.1 * np.abs(sig[0]).max()
    for s in rng.integers(2000, sig.shape[-1] - 2000, 3):  # runs held at channel 0's rail
        sig[0, s : s + int(rng.integers(4, 9))] = rail
    found = same(torch.from_numpy(sig).float()[None])
    assert found["clicks_count"] >= 1 and found["clipped_runs_count"] >= 1
    mix = SHARED / "data" / "multitrack" / "CapDan-ReggaeTry" / "mix.flac"
    if not mix.exists():
        pytest.skip("shared multitracks absent: the CapDan excerpt is not checked")
    audio, sr = sf.read(str(mix), dtype="float32", always_2d=True, start=2 * SR, stop=12 * SR)
    assert sr == SR
    x = torch.from_numpy(audio.T.copy())[None]
    assert same(x)["clicks_count"] == 0
    # What analyze reported before it followed the repair: the detector on the raw signal,
    # DC offset and all, finds borderline clicks there (which and how many follow the
    # CPU's rounding: 3 on an AMD EPYC, 1 on an Intel Xeon), the repair none.
    raw, _, _ = detect_clicks(x, SR)
    assert len(spans(raw)) >= 1


def test_clipping_rail_needs_a_histogram_spike():
    n = np.arange(4000)
    x = np.sin(2 * math.pi * n / 400.0) * 0.5
    one_run = x.copy()
    one_run[1000:1005] = 0.6  # one clipped run of five samples at the top
    got = detect_clipping(torch.from_numpy(one_run)[None, None], SR)[0, 0].numpy()
    assert got.sum() == 5 and got[1000:1005].all()
    pair = x.copy()
    pair[1000:1002] = 0.6  # quantised music may reach its peak twice in a row: not clipping
    assert not detect_clipping(torch.from_numpy(pair)[None, None], SR).any()



@pytest.mark.parametrize("seed", [21, 22, 23])
def test_periodicity_needs_repeats_at_the_same_level(seed):
    """The periodicity guard: an error spike that repeats a period earlier and later is a
    buzzy waveform's cusp (score ~1, vetoed as a click); the same spike 20-30 dB louder
    than its neighbours is a click that happens to fall on a cusp (score far below the
    0.6 veto), though its shape correlates perfectly (shape alone scored it ~1 and
    vetoed loud clicks in buzzy music)."""
    print("seed", seed)
    rng = np.random.default_rng(seed)
    period = int(rng.integers(90, 800))  # 2-18 ms: inside the guard's 1.5-20 ms lags
    res = 1e-4 * rng.standard_normal((1, SR // 2))
    res[0, 1000::period] += 1.0 + 0.3 * rng.uniform(-1, 1, len(res[0, 1000::period]))
    at = 1000 + period * int(rng.integers(10, 20))
    burst = torch.tensor([[0, at, at + 1]])
    cusp = float(_periodicity(torch.from_numpy(res), burst, SR)[0])
    res[0, at] *= 10 ** (rng.uniform(20, 30) / 20)
    click = float(_periodicity(torch.from_numpy(res), burst, SR)[0])
    assert cusp > 0.9 and click < 0.5, (cusp, click)  # the veto is at 0.6



def test_refit_of_some_frames_matches_the_full_fit():
    """Refitting only the frames near changed samples (``_frames_near`` + ``frames=``)
    gives exactly the full refit: every frame whose model changes is in the subset."""
    seed = 31
    print("seed", seed)
    rng = np.random.default_rng(seed)
    hop = 441
    x = torch.from_numpy(rng.standard_normal((1, 2, 20 * hop)))
    base = ar_coefficients(x, SR, order=8, hop=hop)
    starts = rng.integers(0, 20 * hop - 60, 6)
    r = torch.tensor(sorted((int(rng.integers(0, 2)), int(s), int(s) + int(rng.integers(1, 60)))
                            for s in starts))
    changed = x.clone()
    for row, s, e in r.tolist():
        changed[0, row, max(s - 3, 0) : e + 3] += 5.0  # reach 3 samples beyond each run
    full = ar_coefficients(changed, SR, order=8, hop=hop)
    near = _frames_near(r, hop, base.shape[-2], 3)
    part = ar_coefficients(changed, SR, order=8, hop=hop, frames=near, into=base)
    torch.testing.assert_close(part, full, rtol=0, atol=0)
    differs = (full != base).any(-1)[0].nonzero().tolist()
    assert sorted(map(tuple, differs)) == sorted(map(tuple, near.tolist()))
