"""The shared filter core: RBJ designs against scipy, renderers, crossovers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import noise
from scipy import signal

from diffmix.functional.filters import (
    BAND_TYPES,
    biquad,
    biquad_coeffs,
    biquad_response,
    butterworth_coeffs,
    fft_convolve,
    iir_tail,
    linkwitz_riley,
    linkwitz_riley_coeffs,
    next_fast_len,
    sos_filter,
    sos_filter_fft,
    sos_response,
)

RATES = [44100, 48000]
# (freq_hz, q, gain_db) designs that span the audio band, narrow and wide, cut and boost.
DESIGNS = [
    (30.0, 0.7071, 9.0),
    (250.0, 2.5, -12.0),
    (1000.0, 0.5, 6.0),
    (6000.0, 4.0, 3.0),
    (16000.0, 0.9, -6.0),
]


def rbj_reference(kind: str, f0: float, q: float, gain_db: float, fs: int) -> np.ndarray:
    """The cookbook formulas written out plainly in float64 numpy, as the oracle's design."""
    A = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * f0 / fs
    c, s = math.cos(w0), math.sin(w0)
    al = s / (2 * q)
    sa = 2 * math.sqrt(A) * al
    b, a = {
        "peak": ([1 + al * A, -2 * c, 1 - al * A], [1 + al / A, -2 * c, 1 - al / A]),
        "low_shelf": (
            [
                A * ((A + 1) - (A - 1) * c + sa),
                2 * A * ((A - 1) - (A + 1) * c),
                A * ((A + 1) - (A - 1) * c - sa),
            ],
            [(A + 1) + (A - 1) * c + sa, -2 * ((A - 1) + (A + 1) * c), (A + 1) + (A - 1) * c - sa],
        ),
        "high_shelf": (
            [
                A * ((A + 1) + (A - 1) * c + sa),
                -2 * A * ((A - 1) + (A + 1) * c),
                A * ((A + 1) + (A - 1) * c - sa),
            ],
            [(A + 1) - (A - 1) * c + sa, 2 * ((A - 1) - (A + 1) * c), (A + 1) - (A - 1) * c - sa],
        ),
        "lowpass": ([(1 - c) / 2, 1 - c, (1 - c) / 2], [1 + al, -2 * c, 1 - al]),
        "highpass": ([(1 + c) / 2, -(1 + c), (1 + c) / 2], [1 + al, -2 * c, 1 - al]),
        "notch": ([1, -2 * c, 1], [1 + al, -2 * c, 1 - al]),
        "bandpass": ([al, 0, -al], [1 + al, -2 * c, 1 - al]),
    }[kind]
    b, a = np.array(b) / a[0], np.array(a) / a[0]
    return np.concatenate([b, a])


def design(kind, f0, q, g, fs, dtype=torch.float64, device="cpu"):
    t = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    return biquad_coeffs(kind, t(f0), t(q), t(g), fs)


def db(h) -> np.ndarray:
    return 20 * np.log10(np.maximum(np.abs(h), 1e-300))


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("kind", BAND_TYPES)
def test_coefficients_equal_the_cookbook(kind, fs):
    for f0, q, g in DESIGNS:
        b, a = design(kind, f0, q, g, fs)
        ref = rbj_reference(kind, f0, q, g, fs)
        np.testing.assert_allclose(torch.cat([b, a]).numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("kind", BAND_TYPES)
def test_magnitude_matches_scipy_freqz_to_0p01_db(kind, fs, dtype, device):
    freqs = np.geomspace(20.0, 20000.0, 400)
    for f0, q, g in DESIGNS:
        ref = rbj_reference(kind, f0, q, g, fs)
        _, h_ref = signal.freqz(ref[:3], ref[3:], worN=freqs, fs=fs)
        b, a = design(kind, f0, q, g, fs, dtype, device)
        if dtype == torch.float32:
            # float32 cannot hold a 30 Hz design's a1 ~ -1.99 to the ~1e-9 that the poles'
            # distance from z = 1 needs; the oracle is then freqz of the rounded design.
            # (ParametricEQ designs in float64 and meets 0.01 dB against the exact design.)
            ref = torch.cat([b, a]).double().cpu().numpy()
            _, h_ref = signal.freqz(ref[:3], ref[3:], worN=freqs, fs=fs)
        h = biquad_response(b, a, torch.tensor(freqs, dtype=dtype, device=device), fs)
        ref_db, got_db = db(h_ref), db(h.cpu().numpy())
        # Deep notch/band-stop nulls are -100 dB and below, where 0.01 dB is below float
        # resolution of the null itself; compare where the oracle is above -60 dB.
        keep = ref_db > -60.0
        err = np.abs(got_db - ref_db)[keep].max()
        assert err < 0.01, f"{kind} {f0} Hz q={q} {g} dB: {err:.4f} dB off scipy"
        if dtype == torch.float64:
            np.testing.assert_allclose(h.cpu().numpy(), h_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fs", RATES)
def test_time_domain_matches_scipy_sosfilt(fs, dtype, device):
    # A cascade of every band type, stereo, with different designs per channel.
    rng = np.random.default_rng(1)
    x = 0.3 * rng.standard_normal((2, 2, 4000))
    sos = np.zeros((2, 2, len(BAND_TYPES), 6))
    for i in range(2):
        for c in range(2):
            for k, kind in enumerate(BAND_TYPES):
                f0, q, g = DESIGNS[(i + 2 * c + k) % len(DESIGNS)]
                sos[i, c, k] = rbj_reference(kind, f0, q, g, fs)
    b = torch.tensor(sos[..., :3], dtype=dtype, device=device)
    a = torch.tensor(sos[..., 3:], dtype=dtype, device=device)
    y = sos_filter(torch.tensor(x, dtype=dtype, device=device), b, a).cpu().double().numpy()
    for i in range(2):
        for c in range(2):
            ref = signal.sosfilt(sos[i, c], x[i, c])
            scale = np.abs(ref).max()
            # float32 recursions near z = 1 (a 30 Hz shelf) lose ~4 digits: 1e-5 applies to float64.
            tol = 1e-5 if dtype == torch.float64 else 2e-3
            err = np.abs(y[i, c] - ref).max() / scale
            assert err < tol, f"item {i} channel {c}: {err:.3g} relative to sosfilt"


@pytest.mark.parametrize("fs", RATES)
def test_butterworth_cascade_matches_scipy_butter(fs):
    for kind, btype in (("lowpass", "low"), ("highpass", "high")):
        for order in (1, 2, 3, 4, 6, 8):
            b, a = butterworth_coeffs(kind, torch.tensor(700.0, dtype=torch.float64), order, fs)
            freqs = np.geomspace(20.0, 20000.0, 300)
            h = sos_response(b, a, torch.tensor(freqs), fs).numpy()
            sos = signal.butter(order, 700.0, btype=btype, fs=fs, output="sos")
            _, h_ref = signal.sosfreqz(sos, worN=freqs, fs=fs)
            keep = db(h_ref) > -100
            assert np.abs(db(h) - db(h_ref))[keep].max() < 0.01, (kind, order)


def tone_gain_db(b, a, freq: float, fs: int) -> float:
    """Steady-state gain of a pure tone through the exact recursion (edges trimmed)."""
    n = fs  # one second; the first half lets the filter settle
    t = torch.arange(n, dtype=torch.float64) / fs
    x = torch.sin(2 * math.pi * freq * t).view(1, 1, -1)
    y = sos_filter(x, b, a) if b.ndim >= 2 else biquad(x, b, a)
    half = slice(n // 2, None)
    return 10 * math.log10(float(y[..., half].square().mean() / x[..., half].square().mean()))


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("f0", [100.0, 1000.0, 8000.0])
def test_minus_3db_points_of_highpass_and_lowpass(f0, fs):
    for kind in ("highpass", "lowpass"):
        b, a = design(kind, f0, 1 / math.sqrt(2), 0.0, fs)
        assert tone_gain_db(b, a, f0, fs) == pytest.approx(-3.0103, abs=0.01), kind
        for order in (3, 4, 8):
            b, a = butterworth_coeffs(kind, torch.tensor(f0, dtype=torch.float64), order, fs)
            assert tone_gain_db(b, a, f0, fs) == pytest.approx(-3.0103, abs=0.01), (kind, order)


@pytest.mark.parametrize("fs", RATES)
def test_shelf_and_peak_gains_at_their_frequencies(fs):
    for g in (-12.0, 6.0):
        b, a = design("peak", 2000.0, 1.5, g, fs)
        assert tone_gain_db(b, a, 2000.0, fs) == pytest.approx(g, abs=0.01)
        b, a = design("low_shelf", 200.0, 0.7071, g, fs)
        assert tone_gain_db(b, a, 200.0, fs) == pytest.approx(g / 2, abs=0.01)  # midpoint
        assert tone_gain_db(b, a, 10.0, fs) == pytest.approx(g, abs=0.02)  # shelf plateau
        b, a = design("high_shelf", 5000.0, 0.7071, g, fs)
        assert tone_gain_db(b, a, 5000.0, fs) == pytest.approx(g / 2, abs=0.01)
        h_nyq = biquad_response(b, a, torch.tensor([fs / 2], dtype=torch.float64), fs)
        assert float(db(h_nyq.numpy())[0]) == pytest.approx(g, abs=1e-9)
    b, a = design("notch", 3000.0, 2.0, 0.0, fs)
    assert tone_gain_db(b, a, 3000.0, fs) < -40.0
    b, a = design("bandpass", 3000.0, 2.0, 0.0, fs)
    assert tone_gain_db(b, a, 3000.0, fs) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("order", [2, 4, 8])
def test_linkwitz_riley_sums_to_flat_allpass(order, fs, dtype, device):
    f0 = torch.tensor([[120.0], [2500.0]], dtype=dtype, device=device)  # (B, C=1)
    b_lo, a_lo, b_hi, a_hi = linkwitz_riley_coeffs(f0, order, fs)
    freqs = torch.tensor(np.geomspace(10.0, fs / 2 * 0.999, 500), dtype=dtype, device=device)
    h_lo = sos_response(b_lo, a_lo, freqs, fs)
    h_hi = sos_response(b_hi, a_hi, freqs, fs)
    flat = db((h_lo + h_hi).cpu().numpy())
    assert np.abs(flat).max() < 0.01
    # Each side is -6.02 dB at the crossover.
    at = sos_response(b_lo, a_lo, f0.flatten(), fs)
    for i in range(2):
        assert float(db(at[i, 0, i].cpu().numpy())) == pytest.approx(-6.0206, abs=0.01)
    # The time-domain split sums to the same allpass: its impulse response has flat magnitude.
    n = 1 << 15
    impulse = torch.zeros(2, 2, n, dtype=dtype, device=device)
    impulse[..., 0] = 1.0
    for mode in ("exact", "fft"):
        low, high = linkwitz_riley(impulse, fs, freq_hz=f0, order=order, mode=mode)
        spectrum = db(torch.fft.rfft((low + high).double(), dim=-1).cpu().numpy())
        assert np.abs(spectrum[..., 1:]).max() < 0.01, mode


def test_linkwitz_riley_fft_mode_equals_the_recursion(dtype):
    x = noise(3, 2, 5000, dtype=dtype)
    for f0 in (90.0, torch.tensor([[300.0, 2000.0]]), torch.tensor([500.0, 1500.0, 7000.0])):
        exact = linkwitz_riley(x, 48000, freq_hz=f0, order=4)
        fast = linkwitz_riley(x, 48000, freq_hz=f0, order=4, mode="fft")
        for e, f in zip(exact, fast, strict=False):
            assert e.dtype == dtype and f.dtype == dtype
            assert float((e - f).abs().max() / e.abs().max()) < (1e-6 if dtype == torch.float64 else 2e-5)


def test_linkwitz_riley_bands_are_low_and_high():
    fs = 48000
    for order in (2, 4, 8):
        b_lo, a_lo, b_hi, a_hi = linkwitz_riley_coeffs(torch.tensor(1000.0, dtype=torch.float64), order, fs)
        f = torch.tensor([100.0, 10000.0], dtype=torch.float64)
        lo, hi = db(sos_response(b_lo, a_lo, f, fs).numpy()), db(sos_response(b_hi, a_hi, f, fs).numpy())
        slope = 6.0 * order  # dB per octave
        assert lo[0] > -0.1 and hi[1] > -0.1
        assert lo[1] < -slope * 3 + 3 and hi[0] < -slope * 3 + 3


@pytest.mark.parametrize("fs", RATES)
def test_fft_renderer_equals_the_recursion(fs, dtype, device):
    b = torch.stack([design(k, *DESIGNS[i], fs, dtype, device)[0] for i, k in enumerate(BAND_TYPES[:5])], -2)
    a = torch.stack([design(k, *DESIGNS[i], fs, dtype, device)[1] for i, k in enumerate(BAND_TYPES[:5])], -2)
    x = noise(2, 2, 6000, dtype=dtype, device=device)
    exact = sos_filter(x, b, a)
    fast = sos_filter_fft(x, b, a, tail=iir_tail(a))
    err = float((fast - exact).abs().max() / exact.abs().max())
    assert err < (1e-6 if dtype == torch.float64 else 2e-3), err


def test_gradcheck_through_design_and_recursion():
    x = noise(1, 2, 64)
    kw = {"eps": 1e-6, "atol": 1e-5, "fast_mode": True}
    for kind in BAND_TYPES:
        params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (3000.0, 1.3, 4.0)]

        def run(inp, f, q, g, kind=kind):
            b, a = biquad_coeffs(kind, f, q, g, 44100)
            return biquad(inp, b, a)

        assert torch.autograd.gradcheck(run, (x.clone().requires_grad_(kind == "peak"), *params), **kw)

    def split(inp, f):
        lo, hi = linkwitz_riley(inp, 44100, freq_hz=f, order=4)
        return lo, hi

    f = torch.tensor([2000.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(split, (x.clone().requires_grad_(True), f), **kw)

    def fast(inp, f, q):
        b, a = biquad_coeffs("peak", f, q, torch.tensor(6.0, dtype=torch.float64), 44100)
        return sos_filter_fft(inp, b.unsqueeze(-2), a.unsqueeze(-2), tail=200)

    q = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (x.clone().requires_grad_(True), f, q), **kw)


def test_per_item_coefficients_broadcast():
    x = noise(3, 2, 500)
    f = torch.tensor([100.0, 1000.0, 5000.0], dtype=torch.float64).view(3, 1)
    b, a = biquad_coeffs("lowpass", f, torch.full_like(f, 0.7071), torch.zeros_like(f), 44100)
    y = biquad(x, b, a)
    for i in range(3):
        alone = biquad(x[i : i + 1], b[i], a[i])
        torch.testing.assert_close(y[i : i + 1], alone, rtol=0, atol=1e-12)


def test_bad_arguments_raise_clear_errors():
    t = torch.tensor(1000.0)
    with pytest.raises(ValueError, match="biquad_coeffs: unknown band type 'bell'"):
        biquad_coeffs("bell", t, t, t, 44100)
    with pytest.raises(ValueError, match=r"linkwitz_riley: order must be one of \[2, 4, 8\]"):
        linkwitz_riley(torch.zeros(1, 1, 8), 44100, freq_hz=100.0, order=3)
    with pytest.raises(ValueError, match="does not broadcast"):
        biquad(torch.zeros(2, 2, 8), torch.zeros(3, 1, 3), torch.zeros(3, 1, 3))
    with pytest.raises(ValueError, match="must end in 3 coefficients"):
        biquad(torch.zeros(1, 1, 8), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="tail must be >= 0"):
        sos_filter_fft(torch.zeros(1, 1, 8), torch.zeros(1, 3), torch.zeros(1, 3), tail=-1)


def test_next_fast_len_is_minimal_and_smooth():
    for n in (2, 17, 100, 1023, 44100, 1_323_000 + 4096):
        m = next_fast_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
        assert all(not _smooth(k) for k in range(n, m))


def _smooth(k: int) -> bool:
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k == 1


@pytest.mark.parametrize("n_time, length", [(1000, 64), (200_000, 3000), (150_001, 4097)])
def test_fft_convolve_is_linear_convolution_in_both_regimes(n_time, length, dtype):
    # The second and third cases take the overlap-save path (signal >> filter).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, n_time, generator=g, dtype=torch.float64)
    fir = torch.randn(2, 1, length, generator=g, dtype=torch.float64) / math.sqrt(length)
    y = fft_convolve(x.to(dtype), fir.to(dtype)).double().numpy()
    ref = signal.fftconvolve(x.numpy(), fir.numpy(), axes=-1)[..., :n_time]
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err < (1e-12 if dtype == torch.float64 else 1e-5), err
