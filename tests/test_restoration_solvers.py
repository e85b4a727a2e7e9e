"""The fast paths of the LSAR repair against dense float64 oracles: the banded
(block-tridiagonal) solve of long segments, the half-octave buckets and the FFT filters
of :func:`lsar_interpolate`, plain and constrained beyond the clip level, on random
segments with a printed seed; and the small helpers the detector's speed rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf
from scipy.signal import lfilter
from test_restoration import numpy_lsar, stable_ar  # the dense LSAR oracle, AR draws

from diffmix.functional.restoration import (
    _arx_candidates,
    _arx_filters,
    _band_solve,
    _errors_cache,
    _fir_frames,
    _lsar_update,
    _residuals,
    _sliding_max,
    _unique_pairs,
    ar_coefficients,
    lsar_interpolate,
    repair_clicks,
    runs,
)
from diffmix.functional.restoration._common import _frame_windows
from diffmix.functional.restoration.guards import (
    _bracketed,
    _burst_level,
    _local_scale,
    _partner_peak,
    _periodicity,
)
from diffmix.functional.restoration.masks import _changed, _flagged, _mask_from_runs, _positions, _union
from diffmix.functional.restoration.repair import _innovation


def resonant(rng: np.random.Generator, pairs: int) -> np.ndarray:
    """Poles nearer the unit circle than :func:`stable_ar`'s defaults (radius up to 0.99)."""
    return stable_ar(rng, pairs, radius=(0.85, 0.99), angle=(0.05, 2.8))


def random_runs(rng: np.random.Generator, t: int, p: int, lengths: list[int]) -> np.ndarray:
    """A mask of runs of the given lengths, each at least ``p + 1`` samples from the next
    and from the signal's ends (so every segment's error terms lie inside the signal)."""
    mask = np.zeros(t, bool)
    pos = p + 1 + int(rng.integers(0, 20))
    for n in lengths:
        mask[pos : pos + n] = True
        pos += n + p + 1 + int(rng.integers(0, 40))
    assert pos < t - p
    return mask


@pytest.mark.parametrize("p", [5, 32, 48, 64])
def test_band_solve_matches_the_dense_solve(p):
    seed = 4100 + p
    print("seed", seed)
    rng = np.random.default_rng(seed)
    band = 1 << max(3, math.ceil(math.log2(p)))
    k, n = 4, band * int(rng.integers(4, 9))
    a = rng.standard_normal((k, p + 1)) * 0.3
    a[:, 0] = 1.0
    ra = np.stack([(a[:, : p + 1 - j] * a[:, j:]).sum(-1) for j in range(p + 1)] + [np.zeros(k)], -1)
    d = (rng.random((k, n)) < 0.7).astype(np.float64)
    rhs = rng.standard_normal((k, n))
    lag = np.minimum(np.abs(np.arange(n)[:, None] - np.arange(n)[None]), p + 1)
    mat = ra[:, lag] * d[:, :, None] * d[:, None, :] + np.eye(n) * (1 - d)[:, None, :]
    expected = np.linalg.solve(mat, rhs[..., None])[..., 0]
    got = _band_solve(torch.from_numpy(ra), torch.from_numpy(d), torch.from_numpy(rhs), band)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("case", range(3))
def test_lsar_long_and_short_segments_match_the_dense_oracle(case):
    # Segments from 1 sample to far beyond the banded solve's threshold (4 blocks), in
    # every bucket: each must equal the dense least-squares solution.
    seed = 4200 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, pairs=int(rng.integers(2, 5)))
    p = len(a) - 1
    lengths = [int(v) for v in rng.integers(1, 400, 6)] + [1, 3, 200]
    t = sum(lengths) + (len(lengths) + 2) * (p + 41)
    clean = lfilter([1.0], a, rng.standard_normal(t + 2000))[2000:]
    mask = random_runs(rng, t, p, lengths)
    damaged = clean + mask * rng.standard_normal(t) * 10 * clean.std()
    got = lsar_interpolate(torch.from_numpy(damaged)[None, None], torch.from_numpy(mask)[None, None],
                           torch.from_numpy(a)[None, None, None].clone(), hop=t)
    expected = numpy_lsar(damaged, a, mask)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=0, atol=1e-8 * clean.std())


@pytest.mark.parametrize("case", range(2))
def test_constrained_lsar_on_long_clipped_runs_matches_the_dense_active_set(case):
    # The declipping solve (beyond=True) of long runs goes by the banded path: the same
    # active-set iteration with a dense lstsq at each step is the oracle.
    seed = 4300 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    th = 2 * np.pi / rng.uniform(400, 600)
    a = np.convolve([1.0, -2 * 0.998 * math.cos(th), 0.998**2], resonant(rng, pairs=1))
    t = 2500
    # A narrow-band AR process (a resonance of period some 500 samples): clipped runs of
    # some 100 samples (the banded path takes segments of 4 blocks of 8 samples and more
    # at this order), which its own model extrapolates beyond the rail.
    n = np.arange(t)
    clean = lfilter([1.0], a, rng.standard_normal(t + 4000))[4000:]
    clean *= np.minimum(1.0, np.minimum(n, t - 1 - n) / 200.0) / np.abs(clean).max()
    rail = 0.6
    clipped = np.clip(clean, -rail, rail)
    mask = np.abs(clean) > rail
    r = runs(torch.from_numpy(mask)[None, None])
    assert int((r[:, 2] - r[:, 1]).max()) >= 64  # long runs
    iterations = 4
    got = lsar_interpolate(torch.from_numpy(clipped)[None, None], torch.from_numpy(mask)[None, None],
                           torch.from_numpy(a)[None, None, None].clone(), hop=t, beyond=True,
                           iterations=iterations)[0, 0].numpy()
    unk, sign, level = mask.copy(), np.sign(clipped), np.abs(clipped)
    for _ in range(iterations):
        u = numpy_lsar(clipped, a, unk)
        unk &= ~(sign * u < level)
    expected = np.where(unk, u, clipped)
    assert unk.sum() > 0.5 * mask.sum()  # most of the clipped samples rebuilt beyond the rail
    # A resonance this narrow makes the system ill-conditioned (rounding grows to some
    # 1e-8 of full scale in either solve): 1e-6 of full scale, where an error of the
    # solve itself shows at full scale.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.all(sign[mask] * got[mask] >= level[mask] - 1e-12)  # beyond the rail


def test_sliding_max_and_unique_pairs_match_their_plain_forms():
    seed = 4400
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    for half in (0, 1, 5, 64):
        v = torch.rand(3, 700, generator=g)
        expected = tnf.max_pool1d(tnf.pad(v, (half, half))[:, None], 2 * half + 1, 1)[:, 0]
        assert torch.equal(_sliding_max(v, half), expected)
    row = torch.randint(0, 4, (3000,), generator=g)
    frame = torch.randint(0, 50, (3000,), generator=g)
    assert torch.equal(_unique_pairs(row, frame, 50),
                       torch.unique(torch.stack([row, frame], -1), dim=0))
    mask = torch.rand(2, 3, 400, generator=g) < 0.4
    r = runs(mask)
    flat = mask.reshape(6, 400)
    rebuilt = torch.zeros_like(flat)
    for row_i, s, e in r.tolist():
        assert bool(flat[row_i, s:e].all())
        rebuilt[row_i, s:e] = True
    assert torch.equal(rebuilt, flat)
    assert bool(((r[1:, 0] > r[:-1, 0]) | (r[1:, 1] > r[:-1, 2])).all())  # maximal, ordered


@pytest.mark.parametrize("case", range(3))
def test_lsar_update_equals_the_full_solve(case):
    # The repair's rounds change a few spans at a time and solve again only the segments
    # a change reaches: the result must be the full solve's (to rounding: a segment solved
    # in another batch may round differently). Changes: spans grown, shrunk, dropped,
    # added, and two segments joined.
    seed = 4500 + case
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, pairs=int(rng.integers(2, 5)))
    p = len(a) - 1
    t = 4000
    x = torch.from_numpy(lfilter([1.0], a, rng.standard_normal((2, t + 2000)))[:, 2000:])[None]
    coeffs = torch.from_numpy(a)[None, None, None].expand(1, 2, 4, -1).clone()
    old = torch.zeros(1, 2, t, dtype=torch.bool)
    for _ in range(30):
        s0 = int(rng.integers(0, t - 60))
        old[0, int(rng.integers(0, 2)), s0 : s0 + int(rng.integers(1, 60))] = True
    new = old.clone()
    r = runs(old)
    for row, s0, e0 in r[torch.from_numpy(rng.permutation(len(r))[:8])].tolist():
        kind = rng.integers(0, 3)
        if kind == 0:
            new[0, row, max(s0 - 5, 0) : e0 + 5] = True
        elif kind == 1:
            new[0, row, s0 : s0 + (e0 - s0) // 2] = False
        else:
            new[0, row, s0:e0] = False
    new[0, 0, 100 : 100 + p + 3] = True  # joins or adds segments
    prev = lsar_interpolate(x, old, coeffs, 1000)
    expected = lsar_interpolate(x, new, coeffs, 1000)
    got = _lsar_update(x, new, coeffs, 1000, old, prev)
    assert not torch.equal(old, new)
    assert float((got - expected).abs().max()) < 1e-9 * float(x.std())
    assert torch.equal(got[~new], x[~new])  # outside the mask: the input, exactly
    assert _lsar_update(x, new, coeffs, 1000, new, expected) is expected


def test_gradcheck_through_the_banded_solve():
    # A long segment (6 blocks of 8 at order 4) goes by the banded path; the repair stays
    # linear in the audio for a fixed mask and model, so its gradient is exact.
    seed = 4600
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, pairs=2)
    t = 160
    x = torch.from_numpy(lfilter([1.0], a, rng.standard_normal(t + 500))[500:])[None, None]
    mask = torch.zeros(1, 1, t, dtype=torch.bool)
    mask[..., 60:100] = True
    mask[..., 75:78] = False  # known samples inside the segment
    coeffs = torch.from_numpy(a)[None, None, None].clone()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: lsar_interpolate(v, mask, coeffs, t), (x,))


@pytest.mark.parametrize("with_drive", [False, True])
def test_errors_cache_after_local_changes_equals_the_full_errors(with_drive):
    """The repair's incremental prediction errors (:func:`_errors_cache`: only the frames
    whose errors can see a changed sample are computed again) against the full
    computation, for every kind of error, after changes in a few short spans, some
    within ``p`` samples of a frame edge (where the neighbouring frame must be redone)."""
    seed = 4700 + with_drive
    print("seed", seed)
    rng = np.random.default_rng(seed)
    p, hop, t = 16, 100, 2030
    frames = -(-t // hop)
    x0 = torch.from_numpy(rng.standard_normal((1, 2, t)))
    a = torch.from_numpy(rng.standard_normal((1, 2, frames, p + 1)) * 0.2)
    a[..., 0] = 1.0
    drive = torch.from_numpy(rng.standard_normal((1, 2, t))) if with_drive else None
    errors = _errors_cache(a, hop, drive)
    for kind in (0, 1, 2):
        errors(x0, kind)
    x1 = x0.clone()
    edges = [int(rng.integers(1, frames - 1)) * hop + int(rng.integers(-p, p)) for _ in range(3)]
    for start in edges + [int(rng.integers(0, t - 5))]:
        x1[0, int(rng.integers(0, 2)), start : start + 3] += 1.0
    for kind in (0, 1, 2):
        expected = _residuals(x1, a, hop, drive, (kind,))[0]
        got = errors(x1, kind)
        assert got is errors(x1, kind)  # the same signal again: remembered
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_drive", [False, True])
def test_errors_cache_on_fitted_frames_equals_the_full_errors(with_drive):
    """The repair fits its models on the frames near the clicks only (zeros elsewhere):
    :func:`_errors_cache` given those frames computes the first errors there alone. The
    forward and backward errors equal the full computation everywhere (a zero model's
    are zero); the interpolation error on the fitted frames, and zero elsewhere (where
    the full one divides 0 by 0). After a local change, the same on the fitted frames."""
    seed = 4710 + with_drive
    print("seed", seed)
    rng = np.random.default_rng(seed)
    p, hop, t = 16, 100, 2030
    frames = -(-t // hop)
    x0 = torch.from_numpy(rng.standard_normal((1, 2, t)))
    fit = torch.from_numpy(rng.random((2, frames)) < 0.4)
    fit[0, 0] = fit[1, frames - 1] = True  # the signal's ends too
    fitted = fit.nonzero()
    a = torch.from_numpy(rng.standard_normal((1, 2, frames, p + 1)) * 0.2)
    a[..., 0] = 1.0
    a[0][~fit] = 0.0
    on = fit[:, :, None].expand(-1, -1, hop).reshape(2, -1)[:, :t][None]  # (1, 2, t)
    drive = (torch.from_numpy(rng.standard_normal((1, 2, t))) * on) if with_drive else None
    errors = _errors_cache(a, hop, drive, fitted)
    for kind in (0, 1, 2):
        expected = _residuals(x0, a, hop, drive, (kind,))[0]
        got = errors(x0, kind)
        if kind < 2:
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)
        else:
            np.testing.assert_allclose(got[on].numpy(), expected[on].numpy(), rtol=0, atol=1e-12)
            assert not bool(got[~on].any())
    x1 = x0.clone()
    x1[0, 1, int(fitted[-1, 1]) * hop + 5 : int(fitted[-1, 1]) * hop + 9] += 1.0
    for kind in (0, 1, 2):
        expected = _residuals(x1, a, hop, drive, (kind,))[0]
        np.testing.assert_allclose(errors(x1, kind)[on].numpy(), expected[on].numpy(), rtol=0,
                                   atol=1e-12)


def test_fir_frames_on_some_frames_equals_the_full_filter():
    """:func:`_fir_frames` on a subset of frames: the full filter's output there, zeros
    elsewhere; the same as the full filter when the taps are zero outside the subset."""
    seed = 4720
    print("seed", seed)
    rng = np.random.default_rng(seed)
    q, hop, t = 6, 64, 1000
    frames = -(-t // hop)
    ref = torch.from_numpy(rng.standard_normal((1, 2, t)))
    h = torch.from_numpy(rng.standard_normal((1, 2, frames, 2 * q + 1)))
    pick = torch.from_numpy(rng.random((2, frames)) < 0.5)
    on = pick[:, :, None].expand(-1, -1, hop).reshape(2, -1)[:, :t][None]
    got = _fir_frames(ref, h, hop, pick.nonzero())
    full = _fir_frames(ref, h, hop)
    np.testing.assert_allclose(got[on].numpy(), full[on].numpy(), rtol=0, atol=1e-12)
    assert not bool(got[~on].any())
    h[0][~pick] = 0.0
    np.testing.assert_allclose(got.numpy(), _fir_frames(ref, h, hop).numpy(), rtol=0, atol=1e-12)


def test_flagged_equals_nonzero():
    """:func:`_flagged` (the scan by 64-bit words under :func:`runs`) against ``nonzero``
    on masks of every length modulo 8, sparse to full, and on views that start mid-word."""
    seed = 4800
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    for t in (1, 5, 8, 13, 64, 1001):
        for density in (0.0, 0.002, 0.3, 1.0):
            mask = torch.rand(3, t + 3, generator=g) < density
            for m in (mask[:, :t], mask[:, 3:], mask[1:, 1 : t + 1], mask[:, :t].contiguous()):
                assert torch.equal(_flagged(m), m.nonzero()), (t, density)


def test_lsar_update_where_a_segment_grows_too_long_to_solve():
    """A segment grown past ``lsar_interpolate``'s ``max_span`` (4096) is left as the
    input by the full solve: the update must return the input there too, not the
    earlier solution of its shorter self."""
    seed = 4810
    print("seed", seed)
    rng = np.random.default_rng(seed)
    a = resonant(rng, pairs=2)
    t = 7000
    x = torch.from_numpy(lfilter([1.0], a, rng.standard_normal((2, t + 2000)))[:, 2000:])[None]
    coeffs = torch.from_numpy(a)[None, None, None].expand(1, 2, 7, -1).clone()
    old = torch.zeros(1, 2, t, dtype=torch.bool)
    old[0, 0, 1000:1040] = True
    old[0, 1, 3000:3010] = True
    new = old.clone()
    new[0, 0, 1000:5500] = True  # 4500 samples: too long to solve
    prev = lsar_interpolate(x, old, coeffs, 1000)
    expected = lsar_interpolate(x, new, coeffs, 1000)
    got = _lsar_update(x, new, coeffs, 1000, old, prev)
    assert torch.equal(expected[0, 0], x[0, 0])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("with_limit", [False, True])
def test_ar_fit_and_innovation_on_some_frames_equal_the_full_ones(with_limit):
    """:func:`ar_coefficients` on a subset of frames (read in place, clamped to ``limit``)
    equals the full fit there, at the signal's ends too; :func:`_innovation` on the
    fitted frames equals the full computation there."""
    seed = 4820 + with_limit
    print("seed", seed)
    rng = np.random.default_rng(seed)
    hop, t, order = 100, 2030, 8
    frames = -(-t // hop)
    x = torch.from_numpy(rng.standard_normal((1, 2, t)))
    limit = torch.from_numpy(rng.uniform(0.5, 2.0, (1, 2, t))) if with_limit else None
    fit = torch.from_numpy(rng.random((2, frames)) < 0.4)
    fit[0, 0] = fit[1, frames - 1] = True
    fitted = fit.nonzero()
    full = ar_coefficients(x, 44100, order=order, hop=hop, limit=limit)
    part = ar_coefficients(x, 44100, order=order, hop=hop, limit=limit, frames=fitted)
    np.testing.assert_allclose(part[0][fit].numpy(), full[0][fit].numpy(), rtol=0, atol=1e-12)
    assert not bool(part[0][~fit].any())
    mask = torch.from_numpy(rng.random((1, 2, t)) < 0.01)
    want = _innovation(x, mask, full, hop)
    got = _innovation(x, mask, full, hop, fitted=fitted)
    np.testing.assert_allclose(got[0][fit].numpy(), want[0][fit].numpy(), rtol=0, atol=1e-12)


def test_frame_windows_equal_the_padded_unfold():
    """:func:`_frame_windows` (strided reads inside, indexed at the ends) against the
    windows of a zero-padded copy, for frames at both ends and inside, in any order."""
    seed = 4830
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    for t, hop, lead, width in ((1000, 100, 16, 132), (1000, 100, 50, 200), (950, 64, 0, 64),
                                (300, 100, 150, 400)):
        rows = torch.randn(3, t, generator=g)
        nf = -(-t // hop)
        padded = tnf.pad(rows, (lead, nf * hop + width))
        frames = torch.stack([torch.randint(0, 3, (40,), generator=g),
                              torch.randint(0, nf, (40,), generator=g)], -1)
        frames[:2, 1] = torch.tensor([0, nf - 1])
        want = padded.unfold(-1, width, hop)[:, :nf][frames[:, 0], frames[:, 1]]
        assert torch.equal(_frame_windows(rows, frames, hop, lead, width), want)
        inner = frames[(frames[:, 1] > 2) & (frames[:, 1] < nf - 4)]
        assert torch.equal(_frame_windows(rows, inner, hop, lead, width),
                           padded.unfold(-1, width, hop)[:, :nf][inner[:, 0], inner[:, 1]])


def test_arx_candidates_with_the_memo_of_an_earlier_pass_equal_a_fresh_look():
    """The detector's second pass reuses the joint-model tests of the frames whose
    windows see no changed sample of ``other`` (:func:`_arx_candidates` with ``memo``):
    after changes in one channel, some near frame edges, the same candidates as a fresh
    call."""
    seed = 4840
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t, hop = 44100, 1764
    a = resonant(rng, pairs=3)
    common = lfilter([1.0], a, rng.standard_normal(t + 1000))[1000:]
    x = np.stack([common, np.roll(common, 7)]) + 0.05 * rng.standard_normal((2, t))
    x = torch.from_numpy(0.1 * x / x.std()).float()[None]
    z = torch.from_numpy(rng.exponential(1.0, (2, t))).float()
    z[0, rng.integers(0, t, 40)] = 20.0  # candidate samples in frames of channel 0
    z[1, rng.integers(0, t, 40)] = 20.0
    args = (44100, 48, 5.0, 8.0, 8, 10.0 ** (-90 / 20), 22, _partner_peak(z))
    memo: dict = {}
    _arx_candidates(x, x, x, z, *args, memo=memo)
    other = x.clone()
    for ch, start in ((0, 5 * hop - 3), (1, 11 * hop + 900), (0, 20 * hop + 1760)):
        other[0, ch, start : start + 300] = torch.from_numpy(rng.standard_normal(300)).float()
    want = _arx_candidates(x, other, other, z, *args)
    got = _arx_candidates(x, other, other, z, *args, memo=memo)
    assert bool(want[1].any())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_local_scale_of_a_partial_last_sub_block_equals_the_zero_padded_signal():
    """:func:`_local_scale` reads the whole sub-blocks in place and pads only the last,
    partial one: the same scales as on the signal zero-padded to whole sub-blocks."""
    seed = 4850
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    for t in (32 * 40, 32 * 40 + 1, 32 * 57 + 31, 100):
        v = torch.randn(3, t, generator=g) * torch.rand(3, 1, generator=g)
        padded = tnf.pad(v, (0, -t % 32))
        for width in (4, 11, 22):
            got, want = _local_scale(v, width), _local_scale(padded, width)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (t, width)


@pytest.mark.parametrize("density", [0.0, 0.001, 0.02, 0.3])
def test_bracketed_equals_the_running_count(density):
    """The joint rule's stretched one-sided test (:func:`_bracketed`), built from the few
    breaks, against the running count over the whole signal it replaced: a forward break
    at most ``reach`` samples before or on ``n`` and a backward one on or at most
    ``reach`` after, on random sparse and dense breaks, at the signal's ends too."""
    seed = 5300 + int(density * 1000)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    for reach in (0, 1, 8):
        fwd = torch.from_numpy(rng.random((4, 997)) < density)
        bwd = torch.from_numpy(rng.random((4, 997)) < density)
        fwd[0, 0] = fwd[1, -1] = bwd[2, 0] = bwd[3, -1] = True

        def seen(v: torch.Tensor, reach: int = reach) -> torch.Tensor:
            cs = tnf.pad(v.long().cumsum(-1), (reach + 1, 0))
            return (cs[:, reach + 1 :] - cs[:, : -reach - 1]) > 0

        expected = seen(fwd) & seen(bwd.flip(-1)).flip(-1)
        assert torch.equal(_bracketed(fwd, bwd, reach), expected)


def test_run_lists_equal_their_masks():
    """The repair carries its masks as runs: :func:`_union` of overlapping, touching and
    unsorted runs equals :func:`runs` of their mask, :func:`_changed` of two run lists the
    samples where the masks differ, and :func:`_positions` the mask's samples."""
    seed = 5400
    print("seed", seed)
    rng = np.random.default_rng(seed)
    n, t = 3, 500
    for _ in range(20):
        k = int(rng.integers(0, 30))
        start = rng.integers(0, t - 1, k)
        r = torch.from_numpy(np.stack([rng.integers(0, n, k), start,
                                       np.minimum(start + rng.integers(1, 40, k), t)], -1))
        mask = _mask_from_runs(r, (n, t), 0, torch.device("cpu"))
        canon = _union(r, t)
        assert torch.equal(canon, runs(mask[:, None]))
        assert torch.equal(_positions(canon), _flagged(mask))
        keep = torch.from_numpy(rng.random((n, t)) < 0.7)
        other = torch.from_numpy(rng.random((n, t)) < 0.05) | (mask & keep)
        assert torch.equal(_changed(canon, runs(other[:, None]), t), _flagged(mask != other))


@pytest.mark.parametrize("with_drive", [False, True])
def test_errors_cache_with_noted_supports_equals_the_full_errors(with_drive):
    """Signals noted as equal to a base outside some samples (the repair's: each equals
    the input outside its mask) are compared at those samples only: the errors equal the
    full computation after each change, and the errors of an unchanged signal stay."""
    seed = 5500 + with_drive
    print("seed", seed)
    rng = np.random.default_rng(seed)
    p, hop, t = 16, 100, 2030
    frames = -(-t // hop)
    base = torch.from_numpy(rng.standard_normal((1, 2, t)))
    a = torch.from_numpy(rng.standard_normal((1, 2, frames, p + 1)) * 0.2)
    a[..., 0] = 1.0
    fitted = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(frames), indexing="ij"), -1)
    fitted = fitted.reshape(-1, 2)
    drive = torch.from_numpy(rng.standard_normal((1, 2, t))) if with_drive else None
    errors = _errors_cache(a, hop, drive, fitted)
    for _ in range(6):
        x = base.clone()
        mask = torch.from_numpy(rng.random((1, 2, t)) < 0.01)
        x[mask] += torch.from_numpy(rng.standard_normal(int(mask.sum())))
        errors.note(x, _flagged(mask.reshape(2, t)))
        for kind in (0, 1, 2):
            expected = _residuals(x, a, hop, drive, (kind,))[0]
            np.testing.assert_allclose(errors(x, kind).numpy(), expected.numpy(), rtol=0, atol=1e-12)


def test_repair_of_a_click_at_the_signals_end():
    """A click in the last samples: the tightened run may reach past the signal's end
    (its ends are read clamped there), and the repair's runs are clipped as its masks
    are. The repair changes only the samples of the mask it used."""
    seed = 5600
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t = 8000
    x = torch.from_numpy(lfilter([1.0], resonant(rng, 3), rng.standard_normal((1, 2, t)))).float()
    x = x / x.abs().max()
    mask = torch.zeros(1, 2, t, dtype=torch.bool)
    mask[0, 1, t - 30 :] = True  # one channel (a click in both is repaired as one event)
    x[0, 1, t - 20 :] += 3.0 * torch.from_numpy(rng.standard_normal(20)).float()
    # a longer click before it: the runs' ends are read over the longest run's width
    # (in the last row, where a run past the end has no next row to run into)
    mask[0, 1, 3000:3080] = True
    x[0, 1, 3000:3080] += 3.0 * torch.from_numpy(rng.standard_normal(80)).float()
    y, used = repair_clicks(x, mask, 44100)
    assert bool(used[0, 1, -1]) and bool(torch.isfinite(y).all())
    assert torch.equal(y[~used], x[~used])


def test_arx_filters_reading_the_other_channel_and_the_limit_in_place():
    """The joint fits with ``ref=None`` (the other channel read by row) and ``limit``
    (each window clamped) equal the fits on the flipped and clamped copies of the whole
    signal, frames at the signal's ends included."""
    seed = 5700
    print("seed", seed)
    rng = np.random.default_rng(seed)
    hop, p, q, t = 400, 8, 6, 9000
    x = torch.from_numpy(rng.standard_normal((2, 2, t))).float()
    limit = torch.from_numpy(rng.uniform(0.5, 2.0, (2, 2, t))).float()
    frames = _unique_pairs(torch.from_numpy(rng.integers(0, 4, 12)),
                           torch.from_numpy(rng.integers(0, -(-t // hop), 12)), -(-t // hop))
    frames = torch.cat([frames, torch.tensor([[0, 0], [3, -(-t // hop) - 1]])])
    clamped = torch.maximum(torch.minimum(x, limit), -limit)
    want = _arx_filters(clamped, clamped.flip(1), hop, p, q, frames, mono=True, both=True)
    got = _arx_filters(x, None, hop, p, q, frames, mono=True, both=True, limit=limit)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_periodicity_reads_the_regions_as_the_padded_signal():
    """:func:`_periodicity` reads each burst's region in place, zero outside the signal:
    the same scores as on the signal with zeros added either side (where every region
    lies inside), bursts at both ends included."""
    seed = 5800
    print("seed", seed)
    rng = np.random.default_rng(seed)
    sr, t, extra = 44100, 6000, 1000
    res = torch.from_numpy(rng.standard_normal((2, t))).float()
    starts = torch.from_numpy(np.r_[0, 3, rng.integers(0, t - 40, 10), t - 5])
    ends = (starts + torch.from_numpy(rng.integers(1, 40, len(starts)))).clamp(max=t)
    bursts = torch.stack([torch.from_numpy(rng.integers(0, 2, len(starts))), starts, ends], -1)
    shifted = bursts + torch.tensor([0, extra, extra])
    want = _periodicity(tnf.pad(res, (extra, extra)), shifted, sr)
    assert torch.equal(_periodicity(res, bursts, sr), want)


def test_burst_level_is_the_larger_where_windows_overlap_whatever_the_order():
    """:func:`_burst_level` around bursts whose windows overlap (each median grid starts at
    its own window, so the two disagree there): every sample a window covers holds the
    largest of the levels the windows give it, the same in any order of the bursts and on
    any number of threads (a write order let the schedule choose: the detector gave two
    different masks on one signal in six runs), ones elsewhere. Random bursts (seed
    printed)."""
    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    rng = np.random.default_rng(seed)
    n, t, width, span = 2, 20000, 12, 200
    rows = torch.from_numpy(rng.standard_normal((n, t)) * rng.uniform(0.1, 2.0, (n, 1))).float()
    starts = torch.from_numpy(rng.integers(0, t - span, 30))
    bursts = torch.stack([torch.from_numpy(rng.integers(0, n, 30)), starts,
                          starts + torch.from_numpy(rng.integers(1, span, 30))], -1)
    levels = torch.stack([_burst_level(rows, bursts[k : k + 1], width, span)
                          for k in range(len(bursts))])
    covered = levels != 1.0  # each burst's own window
    want = torch.where(covered.any(0), levels.where(covered, -math.inf).amax(0), 1.0)
    threads = torch.get_num_threads()
    try:
        for k in (1, 2):
            torch.set_num_threads(k)
            for order in (torch.arange(len(bursts)), torch.from_numpy(rng.permutation(len(bursts)))):
                assert torch.equal(_burst_level(rows, bursts[order], width, span), want)
    finally:
        torch.set_num_threads(threads)
