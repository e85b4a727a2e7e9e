"""The strict meter (issue 16) is fast (issue 19) without reading lower than its exhaustive
definition: every FIR row of every usual upsampler and ideal 8x interpolation, here in
float64 numpy, written from the definition (one zero-padded 8x inverse transform per block,
each filter row by ``np.convolve``), with no shortcut of the library's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from diffmix.functional.peaks import (
    _kaiser_resampler,
    _strict_rows,
    _strict_rows_all,
    interpolation_filter,
    strict_envelope,
    strict_true_peak,
)
from tests.seeds import drawn_seed

SR = 44100
CORE, OVERLAP, UP = 1 << 15, 1 << 11, 8  # the meter's FFT blocks (a definition, not a knob)
DB = 1e-6  # the fast meter may read at most this many dB below the exhaustive one


def _ideal_points(x: np.ndarray) -> np.ndarray:
    """``(T,)`` -> ``(T,)``: largest ideal 8x point from sample m up to m + 1, per block."""
    t = len(x)
    core = min(CORE, t + t % 2)
    n_blocks = -(-t // core)
    padded = np.pad(x, (OVERLAP, n_blocks * core - t + OVERLAP))
    width = core + 2 * OVERLAP
    out = np.empty(n_blocks * core)
    for i in range(n_blocks):
        spec = np.fft.rfft(padded[i * core: i * core + width])
        spec[-1] *= 0.5
        up = np.fft.irfft(spec, UP * width) * UP
        points = np.abs(up[UP * OVERLAP: UP * (OVERLAP + core)])
        out[i * core: (i + 1) * core] = points.reshape(core, UP).max(1)
    return out[:t]


def _fir_points(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """``(T,)`` -> ``(T,)``: largest ``|row . x[m - half + 1 .. m + half]|`` over the rows."""
    half = taps.shape[1] // 2
    padded = np.pad(x, (half - 1, half))
    return np.max([np.abs(np.convolve(padded, row[::-1], "valid")) for row in taps], axis=0)


def exhaustive(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(C, T)`` -> envelope ``(T,)`` (channels linked) and true peak ``(C,)``."""
    points = []
    for row in x:
        p = np.maximum(_ideal_points(row), _fir_points(row, _strict_rows_all()))
        if sample_rate < 96000:
            p = np.maximum(p, _fir_points(row, interpolation_filter(4 if sample_rate < 96000 else 2)))
        points.append(p)
    points = np.stack(points)
    before = np.pad(points[:, :-1], ((0, 0), (1, 0)))
    level = np.maximum(np.abs(x), np.maximum(points, before))
    return level.max(0), level.max(1)


def _signals(seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    n = 2 * CORE + 1234  # three FFT blocks, the last partial
    t = np.arange(n) / SR
    spec = np.fft.rfft(g.standard_normal((2, n)))
    spec *= np.where(np.fft.rfftfreq(n, 1 / SR) > 15000, 1.0, 0.3)  # dense near Nyquist
    clicks = 0.001 * g.standard_normal((2, n))
    clicks[:, g.integers(0, n, 40)] = g.choice([-0.9, 0.9], (2, 40))
    return {
        "white": 0.3 * g.standard_normal((2, n)),
        "hf": 0.1 * np.fft.irfft(spec, n),
        "clicks": clicks,
        "square": 0.5 * np.stack([np.sign(np.sin(2 * np.pi * 997 * t)),
                                  np.sign(np.sin(2 * np.pi * 11025.3 * t))]),
        "nyquist": 0.7 * np.stack([np.cos(np.pi * np.arange(n) + 0.3), np.sin(np.pi * np.arange(n))]),
        "short odd": 0.5 * g.standard_normal((2, 777)),
        "one sample": g.standard_normal((2, 1)),
        "spiky": 0.2 * g.standard_normal((2, n)) ** 5,
    }


def _check(name: str, x: np.ndarray, sample_rate: int = SR) -> None:
    low = 10 ** (-DB / 20)
    for dtype in (torch.float32, torch.float64):
        xt = torch.from_numpy(x).to(dtype)[None]
        want_env, want_peak = exhaustive(xt[0].double().numpy(), sample_rate)  # what it saw
        env = strict_envelope(xt, sample_rate)[0].double().numpy()
        peak = strict_true_peak(xt, sample_rate)[0].double().numpy()
        gap_db = 20 * np.log10(peak / want_peak)
        top = want_peak.max()
        print(f"{name} {dtype}: peak - exhaustive {gap_db} dB; envelope - exhaustive "
              f"{(env - want_env).min() / top:.2e} .. {(env - want_env).max() / top:.2e} of the peak")
        assert (peak >= want_peak * low).all(), (name, dtype, gap_db)
        # Per sample, relative to the item's peak: float64 input is metered exactly (the
        # ideal points' float32 transforms carry a bound on their rounding); float32 input
        # rounds the FIR rows' sums in float32 (measured 3.5e-7; the peak stays in DB).
        slack = 1e-12 if dtype == torch.float64 else 1e-6
        assert (env >= want_env - slack * top).all(), (name, dtype)
        # And tight, so a limiter holding this level is not pulled lower: 4e-6 of the
        # block's peak is the ideal points' rounding bound.
        assert (env <= want_env + 1e-5 * top).all(), (name, dtype)
        assert (peak <= want_peak * (1 + 1e-5)).all(), (name, dtype)


@pytest.mark.parametrize("seed", [19, 2019])
def test_fast_strict_meter_never_reads_below_the_exhaustive_one(seed):
    print(f"seed {seed}")
    for name, x in _signals(seed).items():
        _check(name, x)


def test_fast_strict_meter_on_real_music(shared_multitrack):
    for song in sorted(p for p in shared_multitrack.iterdir() if (p / "mix.flac").exists()):
        data, sr = sf.read(str(song / "mix.flac"), dtype="float64", always_2d=True, frames=3 * CORE)
        _check(song.name, 1.2 * data.T.copy(), sr)


def test_left_out_rows_never_read_higher():
    # The Kaiser 4x phases are the 8x even phases scaled down; phase 0 is a gain on the
    # sample. So the reduced rows plus that gain read exactly what all 16 rows read.
    g = np.random.default_rng(5)
    x = g.standard_normal(5000)
    rows, gain = _strict_rows()
    full = np.maximum(_fir_points(x, _strict_rows_all()), np.abs(x))
    reduced = np.maximum(_fir_points(x, rows), gain * np.abs(x))
    assert reduced == pytest.approx(full, rel=1e-12, abs=1e-15)
    k4, k8 = _kaiser_resampler(4), _kaiser_resampler(8)
    assert (np.abs(k4).sum(1) <= np.abs(k8[::2]).sum(1)).all()
    assert math.isclose(gain, k8[0].max(), rel_tol=0, abs_tol=0)


def test_without_the_meter_plus_the_limiters_envelope_is_the_whole_level():
    from diffmix.functional.limiter import limiter_envelope

    g = torch.Generator().manual_seed(11)
    x = 0.3 * torch.randn(2, 2, 9000, generator=g)
    whole = strict_envelope(x, SR)
    parts = torch.maximum(strict_envelope(x, SR, meter=False), limiter_envelope(x, SR)[:, 0])
    assert torch.equal(parts, whole)
    assert (strict_envelope(x, SR, meter=False) < whole).any()  # the meter's points count


def test_a_few_blocks_at_a_time_reads_exactly_as_the_whole_signal(monkeypatch):
    # On CPU the envelope runs a few FFT blocks at a time (memory); every part, FIR rows
    # included, must read bit for bit as the whole signal does, with and without a gain.
    import diffmix.functional.peaks as peaks

    seed = 20261205
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(2, 2, 5 * CORE + 777, generator=g)
    x[..., ::5] *= 3.0
    gain = 0.5 + torch.rand(2, 1, x.shape[-1], generator=g)
    monkeypatch.setattr(peaks, "_STRICT_PART_BLOCKS", 2)
    parts, gained = strict_envelope(x, SR), strict_envelope(x, SR, gain=gain)
    monkeypatch.setattr(peaks, "_STRICT_PART_BLOCKS", 10**9)
    assert torch.equal(parts, strict_envelope(x, SR))
    assert torch.equal(gained, strict_envelope(x * gain, SR))
    with pytest.raises(ValueError, match="gain must be"):
        strict_envelope(x, SR, gain=gain[:, :, :-1])


def test_the_sensitivity_bounds_a_worst_case_change_and_is_tight():
    # strict_sensitivity: a change of at most d per sample moves the strict level by at
    # most gain * d (+ float rounding). The worst case, built from the definition: the
    # signs of the ideal half-sample kernel (an 8x zero-padded inverse transform of an
    # impulse over one FFT block) laid around one point, so that point's reading is
    # d * ||kernel||_1. It reads within the bound, and the bound is not loose.
    from diffmix.functional.peaks import strict_sensitivity

    width = CORE + 2 * OVERLAP
    spec = np.ones(width // 2 + 1, dtype=complex)
    spec[-1] *= 0.5
    up = np.fft.irfft(spec, UP * width) * UP
    kernels = up.reshape(width, UP).T  # kernels[p, k]: phase p / 8, offset k (circular)
    p = int(np.abs(kernels).sum(1).argmax())
    gain, rounding = strict_sensitivity(SR)
    d = 1e-3
    block, centre = 2, OVERLAP + CORE // 2  # an output in the middle of block 2's lane
    lane = d * np.sign(kernels[p][(centre - np.arange(width)) % width])
    x = np.zeros((2, 5 * CORE))
    x[0, block * CORE - OVERLAP: block * CORE - OVERLAP + width] = lane
    level = strict_envelope(torch.from_numpy(x).float().unsqueeze(0), SR)[0].double().numpy()
    n = block * CORE - OVERLAP + centre  # the sample the point follows
    worst = max(level[n], level[n + 1])
    print("ideal kernel L1", np.abs(kernels[p]).sum(), "gain", gain)
    assert worst <= gain * d + rounding * d
    assert worst >= 0.99 * gain * d


@pytest.mark.parametrize("seed", [0, 1])
def test_the_strict_correction_reports_the_peak_it_leaves(seed):
    # strict_correction meters its own output on the way (the first stage's meter level
    # reused, not re-run): the peak it returns is the strict meter's reading of y * gain,
    # and it holds the ceiling. Items over and under the ceiling, near-Nyquist content.
    from diffmix.functional import limiter as L

    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 2, 40000, generator=gen)
    y[1] = y[1] - torch.roll(y[1], 1, -1)
    y = (y / y.abs().amax((1, 2), keepdim=True) * torch.tensor([1.2, 0.95]).view(2, 1, 1)).float()
    ceiling = torch.tensor([0.9, 0.89]).view(2, 1, 1)
    release = L.ms_to_pole(torch.tensor(80.0).view(1, 1, 1), SR).expand(2, 1, 1)
    gain, peak = L.strict_correction(y, SR, ceiling * (1 - 1e-4), ceiling, 220, release)
    read = strict_true_peak(y * gain, SR).amax(1)
    torch.testing.assert_close(peak, read, rtol=1e-6, atol=0)
    assert (peak <= ceiling.view(-1)).all() and float(gain.min()) < 1.0


def _floors_hold(x: torch.Tensor, gain: torch.Tensor | None, g: torch.Generator, *, count: int,
                 decades: float, **options: bool) -> tuple[torch.Tensor, int]:
    """The strict level of ``x`` under ``count`` random floors from ``decades`` decades under
    its peak up to the peak: exact wherever the exact level reaches the floor, never above
    it elsewhere, and its peak exact. Returns the exact level and how many points were left
    under their floor."""
    exact = strict_envelope(x, SR, gain=gain, meter=gain is None)
    top = exact.amax(1).double()
    left = 0
    for scale in torch.rand(count, generator=g, dtype=torch.float64):
        floor = top * 10 ** (-decades * scale)
        got = strict_envelope(x, SR, gain=gain, meter=gain is None, floor=floor, **options)
        reach = exact.double() >= floor[:, None]
        case = (x.dtype, gain is None, float(scale))
        assert torch.equal(got[reach], exact[reach]), case
        assert (got <= exact).all(), case
        assert torch.equal(got.amax(1), exact.amax(1)), case
        left += int((got != exact).sum())
    return exact, left


def _burst_signal(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Two stereo items over 3+ FFT blocks: noise whose level jumps over 40 dB from one
    256-sample stretch to the next, with clicks and near-Nyquist content (so some blocks'
    FIR points stay under a floor and some don't), and a gain that moves per sample."""
    g = torch.Generator().manual_seed(seed)
    n = 3 * CORE + int(torch.randint(1, 5000, (1,), generator=g))
    x = torch.randn(2, 2, n, generator=g, dtype=torch.float64)
    x[:, 1] -= torch.roll(x[:, 1], 1, -1)  # one channel dense near Nyquist
    steps = 10 ** (-2 * torch.rand(2, 1, -(-n // 256), generator=g, dtype=torch.float64))
    x *= steps.repeat_interleave(256, -1)[..., :n]
    x[..., torch.randint(0, n, (30,), generator=g)] *= 20.0
    x = x / x.abs().amax((1, 2), keepdim=True) * (0.5 + torch.rand(2, 1, 1, generator=g, dtype=torch.float64))
    gain = 0.6 + 0.4 * torch.rand(2, 1, n, generator=g, dtype=torch.float64)
    return x.to(dtype), gain.to(dtype)


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 7])
def test_a_floor_leaves_exact_every_level_that_reaches_it(seed):
    # strict_envelope(floor=): the FIR rows skip the blocks their L1 bound keeps under the
    # floor. Checked against the full computation on both dtypes, with and without a gain:
    # bit for bit wherever the exact level reaches the floor, never above it below, and the
    # peak exact; at a floor under every sample nothing is skipped.
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    skipped = 0
    for dtype in (torch.float32, torch.float64):
        x, gain = _burst_signal(seed, dtype)
        for gn in (None, gain):
            exact, left = _floors_hold(x, gn, g, count=3, decades=2.0)  # floors from -40 dB to the peak
            skipped += left
            assert torch.equal(strict_envelope(x, SR, gain=gn, meter=gn is None, floor=torch.zeros(2)), exact)
    print("levels left under their floor:", skipped)
    assert skipped > 0  # the shortcut ran
    with pytest.raises(ValueError, match="floor must have"):
        strict_envelope(x, SR, floor=torch.ones(3))


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 8])
def test_the_skipped_fir_blocks_stay_under_the_floor_and_the_bound_is_reached(seed):
    # _fir_todo's bound (the largest row's L1 norm times the largest |x| within reach of a
    # block) against the rows' full envelope: every block it leaves out reads under the
    # floor. That row's worst case (the signs of its taps times one level, planted astride
    # block edges) reaches the bound, and a floor just under it must keep its block: a
    # smaller norm would leave it out.
    from diffmix.functional.peaks import _fir_envelope, _fir_todo

    print(f"seed {seed}")
    g = np.random.default_rng(seed)
    for dtype in (torch.float32, torch.float64):
        x, _ = _burst_signal(seed, dtype)
        for rows in (_strict_rows()[0], interpolation_filter(4)):
            half = rows.shape[1] // 2
            worst = rows[np.abs(rows).sum(1).argmax()]
            l1 = float(np.abs(worst.astype(np.float32 if dtype == torch.float32 else np.float64)).sum())
            xs = x.clone()
            planted = []
            # in distinct blocks: a plant written over another one's samples would not reach it
            for at in g.choice(np.arange(2, xs.shape[-1] // 256 - 2), 4, replace=False):
                item, m = int(g.integers(0, 2)), int(at) * 256
                m += int(g.integers(-half, half))
                level = float(g.uniform(0.05, 0.5))
                xs[item, :, m - half + 1: m + half + 1] = torch.from_numpy(level * np.sign(worst)).to(dtype)
                planted.append((item, m, level))
            fir = _fir_envelope(xs, rows).double()
            blocks = torch.nn.functional.pad(fir, (0, -fir.shape[-1] % 256)).view(2, -1, 256).amax(-1)
            for item, m, level in planted:
                assert float(fir[item, m: m + 2].max()) >= (1 - 1e-6) * l1 * level  # the bound, reached
            floors = [blocks.amax(1) * g.uniform(0.02, 1.0)]
            floors += [torch.full((2,), (1 - 1e-4) * l1 * lv, dtype=torch.float64) for _, _, lv in planted]
            for floor in floors:
                todo = torch.from_numpy(_fir_todo(xs, rows, floor).astype(bool))
                assert (blocks[~todo] < floor[:, None].expand_as(blocks)[~todo]).all(), (dtype, rows.shape)


def _lanes(x: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """``(T,)`` -> the meter's FFT lanes ``(blocks, width)`` float32, and their core offsets."""
    t = len(x)
    core = min(CORE, t + t % 2)
    n_blocks = -(-t // core)
    padded = np.pad(x, (OVERLAP, n_blocks * core - t + OVERLAP))
    width = core + 2 * OVERLAP
    return np.arange(n_blocks) * core, torch.from_numpy(
        np.stack([padded[i * core: i * core + width] for i in range(n_blocks)])).float()


def _adversarial(seed: int, n: int) -> np.ndarray:
    """A signal whose every sample pushes one ideal point away from its Kaiser 8x point:
    ``0.5 sign(a[m])`` with ``a`` the difference of their weights on ``x[m]`` (the worst
    case of :func:`~diffmix.functional.peaks._ideal_error_bound`, up to its margin)."""
    from diffmix.functional.peaks import _phase_twists

    g = np.random.default_rng(seed)
    width = CORE + 2 * OVERLAP
    p, m0 = int(g.integers(1, UP)), int(g.integers(100, CORE - 100))
    kernel = torch.fft.irfft(_phase_twists(width, UP, torch.float64, "cpu")[p - 1], n=width).numpy()
    a = kernel[(OVERLAP + m0 - np.arange(width)) % width]  # weight of lane sample m on the point
    rows = _kaiser_resampler(UP)
    a[OVERLAP + m0 - 9: OVERLAP + m0 + 11] -= rows[p]
    x = np.zeros(n)
    x[: width - OVERLAP] = 0.5 * np.sign(a[OVERLAP:])
    return x


def _bound_signals(seed: int) -> dict[str, np.ndarray]:
    """The suite's signals, the adversarial one (each sample's sign chosen against the
    bound) and a music-like one (a 1/f fall), ``(2, n)`` each."""
    signals = {k: v for k, v in _signals(seed).items() if v.shape[-1] > 1}
    n = 2 * CORE + 1234
    signals["adversarial"] = np.stack([_adversarial(seed, n), _adversarial(seed + 1, n)])
    g = np.random.default_rng(seed)
    spec = np.fft.rfft(g.standard_normal((2, n)))
    spec /= 1 + np.fft.rfftfreq(n, 1 / SR) / 200.0
    signals["pink"] = 0.2 * np.fft.irfft(spec, n) / np.abs(np.fft.irfft(spec, n)).max()
    return signals


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 23])
def test_ideal_points_stay_within_the_error_bound_of_the_kaiser_points(seed):
    # The bound that lets the strict meter skip an FFT block: every ideal 8x point (the
    # exhaustive float64 definition) is at most the Kaiser 8x rows' point at the same place
    # plus _ideal_error_bound of its block, on every signal of the suite and on the
    # adversarial one (each sample's sign chosen against the bound), which comes near it.
    from diffmix.functional.peaks import _ideal_error_bound

    print(f"seed {seed}")
    signals = _bound_signals(seed)
    kaiser = _kaiser_resampler(UP)[1:]
    widest = 0.0  # the bound on the music-like signal, of its block's peak
    for name, x in signals.items():
        for row in x:
            # (the ideal points from each sample m up to m + 1: |x[m]| on both sides)
            ideal, fir = _ideal_points(row), np.maximum(_fir_points(row, kaiser), np.abs(row))
            starts, lanes = _lanes(row)
            bound = _ideal_error_bound(torch.fft.rfft(lanes), lanes, UP).numpy()
            core = min(CORE, len(row) + len(row) % 2)
            reached = []
            for s, e, peak in zip(starts, bound, lanes.abs().amax(1).double().numpy(), strict=True):
                worst = float((ideal[s: s + core] - fir[s: s + core]).max())
                assert worst <= e, (name, s, worst, e)
                reached.append(worst / e if e > 0 else 0.0)
                widest = max(widest, e / peak) if name == "pink" else widest
            if name == "adversarial":  # its first block holds the point it was built against
                print(f"adversarial: reached {reached[0]:.3f} of the bound")
                assert reached[0] > 0.5  # the bound is the worst case, not far above it
    print(f"pink: the bound at most {widest:.3f} of its block's peak")


def _stepped_signal(seed: int) -> torch.Tensor:
    """Two stereo items over 6+ FFT blocks, each block at its own level (0 to -30 dB),
    music-like (a 1/f spectrum) or dense near Nyquist, with a few clicks: some blocks' ideal
    points stay far under a floor and some don't."""
    g = torch.Generator().manual_seed(seed)
    n = 6 * CORE + int(torch.randint(1, 9000, (1,), generator=g))
    spec = torch.fft.rfft(torch.randn(2, 2, n, generator=g, dtype=torch.float64))
    freq = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    x = torch.fft.irfft(spec / (1 + freq / 300.0), n)
    x[1, 1] = torch.fft.irfft(spec[1, 1] * (freq > 16000), n)  # one channel near Nyquist
    steps = 10 ** (-1.5 * torch.rand(2, 1, -(-n // CORE), generator=g, dtype=torch.float64))
    x = x * steps.repeat_interleave(CORE, -1)[..., :n]
    x[..., torch.randint(0, n, (6,), generator=g)] *= 8.0
    scale = 0.3 + torch.rand(2, 1, 1, generator=g, dtype=torch.float64)
    return x / x.abs().amax((1, 2), keepdim=True) * scale


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 31])
def test_a_floor_skips_ideal_blocks_and_leaves_every_level_that_reaches_it(seed, monkeypatch):
    # strict_envelope(floor=) skips the ideal interpolation of FFT blocks whose points can't
    # reach the floor: bit for bit wherever the exact level reaches it, never above it
    # below, the peak exact, on both dtypes, with and without a gain; and blocks were
    # skipped (counted at the transforms).
    from diffmix.functional import peaks

    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    real = peaks._ideal_blocks
    skipped = [0, 0]

    def spy(lanes, out, factor, overlap, core, room=None, errors=None):  # noqa: ANN001, ANN202
        real(lanes, out, factor, overlap, core, room, errors)
        if room is not None:
            skipped[0] += int((out.amax(1) == 0).sum())
            skipped[1] += lanes.shape[0]

    monkeypatch.setattr(peaks, "_ideal_blocks", spy)
    for dtype in (torch.float32, torch.float64):
        x = _stepped_signal(seed).to(dtype)
        gain = (0.7 + 0.3 * torch.rand(2, 1, x.shape[-1] // 4096 + 1, generator=g, dtype=torch.float64))
        gain = gain.repeat_interleave(4096, -1)[..., : x.shape[-1]].to(dtype)
        for gn in (None, gain):
            _floors_hold(x, gn, g, count=4, decades=1.5)  # floors from -30 dB to the peak
    print(f"ideal lanes skipped: {skipped[0]} of {skipped[1]}")
    assert skipped[0] > 0


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 41])
def test_fir_bounds_in_parts_read_as_the_whole(seed, monkeypatch):
    # A long signal's FIR bounds are taken in parts with a block of context each side: the
    # same values as over the whole, at any part length and signal length.
    from diffmix.functional import peaks

    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5000, 20000, (1,), generator=g))
    x = torch.randn(2, 2, n, generator=g) * torch.rand(2, 1, n, generator=g) ** 4
    for rows in (_strict_rows()[0], interpolation_filter(4)):
        monkeypatch.setattr(peaks, "_BOUND_PART", 1 << 40)
        whole = peaks._fir_bounds(x, rows)
        monkeypatch.setattr(peaks, "_BOUND_PART", 256 * int(torch.randint(2, 12, (1,), generator=g)))
        assert torch.equal(peaks._fir_bounds(x, rows), whole)


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 29])
def test_fir_points_stay_within_the_error_bound_above_the_ideal_points(seed):
    # The bound that lets a floored level skip the Kaiser 8x rows and the meter's own rows
    # (ideal_first): each of their points is at most the ideal points around it plus
    # _ideal_error_bound under _fir_error_weights, on every signal of the suite and a
    # music-like one; the meter's rows at 4x (below 96 kHz) and 2x (below 192 kHz).
    from diffmix.functional.peaks import _fir_error_weights, _ideal_error_bound

    print(f"seed {seed}")
    signals = _bound_signals(seed)
    for factor in (4, 2):
        # the Kaiser rows (over x[m - 9 .. m + 10]) padded to the meter's (x[m - 39 .. m + 40])
        kaiser = np.pad(_kaiser_resampler(UP)[1:], ((0, 0), (30, 30)))
        rows = np.concatenate([kaiser, interpolation_filter(factor)])
        for name, x in signals.items():
            for row in x:
                ideal, fir = _ideal_points(row), _fir_points(row, rows)
                starts, lanes = _lanes(row)
                weights = _fir_error_weights(lanes.shape[1], factor)
                bound = _ideal_error_bound(torch.fft.rfft(lanes), lanes, UP, weights).numpy()
                core = min(CORE, len(row) + len(row) % 2)
                for s, e in zip(starts, bound, strict=True):
                    worst = float((fir[s: s + core] - ideal[s: s + core]).max())
                    assert worst <= e, (factor, name, s, worst, e)


@pytest.mark.parametrize("seed", [drawn_seed(10**6), 37])
def test_ideal_first_leaves_every_level_that_reaches_the_floor(seed, monkeypatch):
    # strict_envelope(floor=, ideal_first=True) computes every ideal point, then runs the
    # Kaiser and meter rows only in blocks where those points plus their bound reach the
    # floor: bit for bit wherever the exact level reaches it, never above it below, the
    # peak exact, on both dtypes, with and without a gain and the meter; and rows were
    # skipped (counted at the kernel).
    from diffmix.functional import peaks

    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    real = peaks._fir_envelope
    counts = [0, 0]

    def spy(x, taps, todo=None):  # noqa: ANN001, ANN202
        if todo is not None and taps.shape[0] == 7:  # the Kaiser 8x rows
            counts[0] += int(todo.sum())
            counts[1] += todo.size
        return real(x, taps, todo)

    monkeypatch.setattr(peaks, "_fir_envelope", spy)
    for dtype in (torch.float32, torch.float64):
        x, gain = _burst_signal(seed, dtype)
        for gn in (None, gain):
            _floors_hold(x, gn, g, count=3, decades=1.5, ideal_first=True)
        _floors_hold(_stepped_signal(seed).to(dtype), None, g, count=3, decades=1.5, ideal_first=True)
    print(f"Kaiser row blocks run: {counts[0]} of {counts[1]}")
    assert 0 < counts[0] < counts[1]
