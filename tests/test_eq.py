"""ParametricEQ, HighPass, LowPass: scipy oracles and physical checks (the effect contract
is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import EQ_BANDS, EQ_SETTINGS, EQ_SIX, noise
from scipy import signal
from test_filters import rbj_reference

from diffmix.effects.eq import HighPass, LowPass, ParametricEQ, range_tail_bound
from diffmix.functional.eq import parametric_eq
from diffmix.functional.gain import left_right, mid_side

SR = 44100
# The EQ settings the contract uses (tests/contract.py): BANDS, two per-item SETTINGS of it, SIX.
BANDS, SETTINGS, SIX = EQ_BANDS, EQ_SETTINGS, EQ_SIX


def scipy_sos(bands, values, fs) -> np.ndarray:
    """The cascade as scipy sos rows, designed band by band without diffmix: scipy's own
    Butterworth for "highpassN"/"lowpassN", the plain cookbook formulas for the rest."""
    rows = []
    for band, f, q, g in zip(bands, values["freq_hz"], values["q"], values["gain_db"], strict=True):
        kind = band.rstrip("0123456789")
        if kind != band:  # "highpass4" -> an order-4 "high" Butterworth
            order = int(band[len(kind) :])
            rows.append(signal.butter(order, f, btype=kind[: -len("pass")], fs=fs, output="sos"))
        else:
            rows.append(rbj_reference(kind, f, q, g, fs)[None])
    return np.concatenate(rows)


def impulse_response_db(effect, n: int, dtype, device) -> np.ndarray:
    x = torch.zeros(1, 1, n, dtype=dtype, device=device)
    x[..., 0] = 1.0
    with torch.no_grad():
        h = effect.to(dtype=dtype, device=device)(x)
    return 20 * np.log10(np.abs(np.fft.rfft(h.double().cpu().numpy()[0, 0])) + 1e-300)


@pytest.mark.parametrize("fs", [44100, 48000])
@pytest.mark.parametrize("mode", ["fft", "exact"])
def test_eq_magnitude_matches_scipy_freqz_to_0p01_db(mode, fs, dtype, device):
    n = 1 << 16
    for values in SETTINGS:
        eq = ParametricEQ(fs, bands=BANDS, mode=mode, **values)
        got = impulse_response_db(eq, n, dtype, device)
        freqs = np.arange(n // 2 + 1) * fs / n
        _, h = signal.sosfreqz(scipy_sos(BANDS, values, fs), worN=freqs, fs=fs)
        ref = 20 * np.log10(np.abs(h) + 1e-300)
        # Audio band, and away from the notch/stopband nulls where 0.01 dB of -80 dB is
        # below the float32 resolution of the null itself.
        keep = (freqs >= 20.0) & (freqs <= 20000.0) & (ref > -60.0)
        err = np.abs(got - ref)[keep].max()
        assert err < 0.01, f"{mode} at {fs} Hz: {err:.4f} dB off scipy.signal.sosfreqz"


def test_fft_and_exact_paths_agree_within_stated_tolerance(dtype):
    # Stated tolerance: max |fft - exact| <= 1e-6 x max |exact| in float64 (measured ~1e-10),
    # 2e-5 in float32 (FFT rounding), including the slowest-ringing corner of the ranges:
    # a +24 dB, Q = 10 bell at 20 Hz, whose response rings for seconds before -120 dB.
    x = noise(2, 2, SR // 2, dtype=dtype)
    slow = {"freq_hz": [20.0, 80.0, 1000.0], "q": [10.0, 10.0, 0.3], "gain_db": [24.0, -24.0, 12.0]}
    for bands, values in [(BANDS, SETTINGS[0]), (BANDS, SETTINGS[1]), (["peak", "peak", "low_shelf"], slow)]:
        with torch.no_grad():
            exact = ParametricEQ(SR, bands=bands, mode="exact", **values).to(dtype)(x)
            fast = ParametricEQ(SR, bands=bands, mode="fft", **values).to(dtype)(x)
        err = float((fast - exact).abs().max() / exact.abs().max())
        assert err < (1e-6 if dtype == torch.float64 else 2e-5), err


def test_fft_and_exact_agree_on_a_long_signal_through_overlap_save():
    x = noise(1, 2, 4 * SR, dtype=torch.float32)
    with torch.no_grad():
        exact = ParametricEQ(SR, bands=BANDS, mode="exact", **SETTINGS[1])(x)
        fast = ParametricEQ(SR, bands=BANDS, mode="fft", **SETTINGS[1])(x)
    assert float((fast - exact).abs().max() / exact.abs().max()) < 2e-5


def test_range_bound_tail_covers_the_slowest_corner():
    # What CUDA uses (no host sync): the bound over the parameter ranges. Rendered on CPU
    # with that tail, the worst corner still matches the recursion.
    bound = range_tail_bound(("peak",), SR, 20.0)
    assert 2 * SR < bound < 20 * SR
    x = noise(1, 1, SR // 4)
    values = {"freq_hz": [20.0], "q": [10.0], "gain_db": [24.0]}
    with torch.no_grad():
        exact = ParametricEQ(SR, bands=["peak"], mode="exact", **values).double()(x)
        fast = ParametricEQ(SR, bands=["peak"], fft_tail_s=bound / SR, **values).double()(x)
    assert float((fast - exact).abs().max() / exact.abs().max()) < 1e-6


def tone_db(effect, freq: float, fs: int, channels: int = 1) -> float:
    t = torch.arange(fs, dtype=torch.float64) / fs
    x = torch.sin(2 * math.pi * freq * t).expand(1, channels, -1).contiguous()
    with torch.no_grad():
        y = effect.double()(x)
    half = slice(fs // 2, None)
    return 10 * math.log10(float(y[..., half].square().mean() / x[..., half].square().mean()))


@pytest.mark.parametrize("fs", [44100, 48000])
def test_minus_3db_points_of_highpass_and_lowpass_modules(fs):
    for order in (1, 2, 4, 8):
        for mode in ("exact", "fft"):
            assert tone_db(HighPass(fs, freq_hz=250.0, order=order, mode=mode), 250.0, fs) == pytest.approx(
                -3.0103, abs=0.01
            )
            assert tone_db(LowPass(fs, freq_hz=4000.0, order=order, mode=mode), 4000.0, fs) == pytest.approx(
                -3.0103, abs=0.01
            )
    # Slopes: 6 dB/octave per order, two octaves out (within the bilinear warping).
    assert tone_db(HighPass(fs, freq_hz=1000.0, order=4), 250.0, fs) == pytest.approx(-48.2, abs=0.5)


@pytest.mark.parametrize("fs", [44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_shelf_and_peak_gains_at_their_frequencies(fs, channels):
    eq = ParametricEQ(
        fs,
        bands=["low_shelf", "peak", "high_shelf"],
        freq_hz=[100.0, 1000.0, 10000.0],
        q=[0.7071, 1.0, 0.7071],
        gain_db=[6.0, -9.0, 4.0],
    )
    # The other bands add a little at each probe: compare against the product of the
    # three designs, and check each design alone at its own frequency.
    assert tone_db(
        ParametricEQ(fs, bands=["peak"], freq_hz=[1000.0], q=[1.0], gain_db=[-9.0]), 1000.0, fs, channels
    ) == pytest.approx(-9.0, abs=0.01)
    assert tone_db(
        ParametricEQ(fs, bands=["low_shelf"], freq_hz=[100.0], gain_db=[6.0]), 100.0, fs, channels
    ) == pytest.approx(3.0, abs=0.01)
    assert tone_db(
        ParametricEQ(fs, bands=["low_shelf"], freq_hz=[100.0], gain_db=[6.0]), 10.0, fs, channels
    ) == pytest.approx(6.0, abs=0.02)
    assert tone_db(
        ParametricEQ(fs, bands=["high_shelf"], freq_hz=[10000.0], gain_db=[4.0]), 10000.0, fs, channels
    ) == pytest.approx(2.0, abs=0.01)
    sos = scipy_sos(
        ["low_shelf", "peak", "high_shelf"],
        {"freq_hz": [100.0, 1000.0, 10000.0], "q": [0.7071, 1.0, 0.7071], "gain_db": [6.0, -9.0, 4.0]},
        fs,
    )
    for f in (100.0, 1000.0, 10000.0):
        _, h = signal.sosfreqz(sos, worN=[f], fs=fs)
        assert tone_db(eq, f, fs, channels) == pytest.approx(20 * math.log10(abs(h[0])), abs=0.01)


def test_mid_side_mode_filters_mid_and_side_separately():
    x = noise(1, 2, 4000)
    gains = torch.tensor([[[6.0, 0.0], [0.0, -9.0]]], dtype=torch.float64)  # (1, C=2 -> M, S, 2 bands)
    eq = ParametricEQ(
        SR,
        bands=["low_shelf", "high_shelf"],
        freq_hz=[200.0, 5000.0],
        gain_db=gains,
        stereo="ms",
        mode="exact",
    ).double()
    y = eq(x)
    ms_in, ms_out = mid_side(x), mid_side(y)
    mid_only = parametric_eq(
        ms_in[:, :1], SR, bands=["low_shelf"], freq_hz=200.0, q=math.sqrt(0.5), gain_db=6.0, mode="exact"
    )
    side_only = parametric_eq(
        ms_in[:, 1:], SR, bands=["high_shelf"], freq_hz=5000.0, q=math.sqrt(0.5), gain_db=-9.0, mode="exact"
    )
    # The module stores its values in the default dtype (float32): compare to 1e-8.
    torch.testing.assert_close(ms_out[:, :1], mid_only, rtol=0, atol=1e-8)
    torch.testing.assert_close(ms_out[:, 1:], side_only, rtol=0, atol=1e-8)
    # Mono material has no side: a side-only EQ leaves it untouched.
    mono = left_right(torch.cat([ms_in[:, :1], torch.zeros_like(ms_in[:, :1])], 1))
    side_eq = ParametricEQ(
        SR, bands=["peak"], freq_hz=[1000.0], gain_db=[[[0.0], [12.0]]], stereo="ms"
    ).double()
    torch.testing.assert_close(side_eq(mono), mono, rtol=0, atol=1e-12)


def test_mid_side_render_of_a_long_signal_matches_the_recursion():
    # A render (no gradient) of a signal past two FFT blocks takes overlap-save with the
    # mid/side sums on each block's spectrum: it must equal the exact recursion on mid and
    # side, dry/wet included, to the FFT mode's tolerance.
    x = noise(2, 2, 150_000)
    gains = torch.tensor([[[6.0, 0.0, -3.0], [0.0, -9.0, 4.0]], [[-2.0, 3.0, 0.0], [5.0, 0.0, -6.0]]],
                         dtype=torch.float64)
    kw = dict(bands=["highpass2", "low_shelf", "high_shelf"], freq_hz=[25.0, 200.0, 5000.0],
              gain_db=gains, stereo="ms", mix=[[0.7], [1.0]])
    with torch.no_grad():
        fast = ParametricEQ(SR, mode="fft", **kw).double()(x)
        exact = ParametricEQ(SR, mode="exact", **kw).double()(x)
    assert (fast - exact).abs().max() <= 1e-6 * x.abs().max()


def test_mix_blends_dry_and_wet_and_zero_gain_is_identity():
    x = noise(2, 2, 3000)
    for mode in ("fft", "exact"):
        wet = ParametricEQ(SR, bands=SIX, gain_db=[6.0, -4.0, 3.0, 2.0, -5.0, 4.0], mode=mode).double()
        half = ParametricEQ(
            SR, bands=SIX, gain_db=[6.0, -4.0, 3.0, 2.0, -5.0, 4.0], mix=0.25, mode=mode
        ).double()
        torch.testing.assert_close(half(x), x + 0.25 * (wet(x) - x), rtol=0, atol=1e-12)
        dry = ParametricEQ(SR, bands=SIX, gain_db=[6.0] * 6, mix=0.0, mode=mode).double()
        torch.testing.assert_close(dry(x), x, rtol=0, atol=1e-12)
        flat = ParametricEQ(SR, bands=SIX, mode=mode).double()
        torch.testing.assert_close(flat(x), x, rtol=0, atol=1e-12)


def test_gradients_reach_every_band_parameter():
    eq = ParametricEQ(SR, bands=SIX, gain_db=[3.0, -2.0, 1.0, 4.0, -3.0, 2.0])
    eq(noise(1, 2, 2048, dtype=torch.float32)).square().mean().backward()
    for name in ("freq_hz", "q", "gain_db"):
        grad = eq.params[name].raw.grad
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all(), name


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ParametricEQ(SR, bands=["bell"]), "ParametricEQ: unknown band type 'bell'"),
        (lambda: ParametricEQ(SR, bands=["highpass9"]), "N = 1..8"),
        (lambda: ParametricEQ(SR, bands=[]), "non-empty list"),
        (
            lambda: ParametricEQ(SR, bands=["peak", "peak"], gain_db=[1.0, 2.0, 3.0]),
            "trailing band axis of 2",
        ),
        (lambda: ParametricEQ(SR, mode="iir"), "ParametricEQ: unknown mode 'iir'"),
        (lambda: ParametricEQ(SR, stereo="xy"), "ParametricEQ: unknown stereo mode 'xy'"),
        (lambda: ParametricEQ(SR, fft_tail_s=0.0), "fft_tail_s must be a positive"),
        (
            lambda: ParametricEQ(SR, bands=["peak"], freq_hz=[30000.0]),
            r"freq_hz=30000 is outside its range \[20, 19845\]",
        ),
        (lambda: ParametricEQ(SR, bands=["peak"], q=[0.0]), r"q=0 is outside its range \[0.1, 10\]"),
        (lambda: HighPass(SR, order=0), "HighPass: order must be an integer 1..8"),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_audio_raises():
    with pytest.raises(ValueError, match="ParametricEQ: audio must have 2 channel"):
        ParametricEQ(SR, stereo="ms")(torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match=r"ParametricEQ: audio must be \(batch, channels, time\)"):
        ParametricEQ(SR)(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="ParametricEQ: audio contains NaN"):
        ParametricEQ(SR)(torch.full((1, 1, 8), float("nan")))
    with pytest.raises(ValueError, match="freq_hz has 3 values along batch, but the audio has 2"):
        ParametricEQ(SR, bands=["peak"], freq_hz=[[100.0], [200.0], [300.0]])(torch.zeros(2, 1, 64))
