"""Match EQ: its designed response against scipy, and the closed-form match (the effect
contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
from contract import noise

from diffmix.effects.match_eq import MatchEQ
from diffmix.features import spectral_errors
from diffmix.functional.gain import left_right
from diffmix.functional.match_eq import design_curve_db, design_fir, fir_length, match_centres, match_eq
from tests.seeds import drawn_seed

SR = 44100


def gains(n: int, seed: int, scale: float = 6.0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (scale * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)).tolist()


def test_bad_options_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"MatchEQ: bands_per_octave must be an integer 1\.\.24, got 0"):
        MatchEQ(SR, bands_per_octave=0)
    with pytest.raises(ValueError, match="MatchEQ: n_fir must be an even integer >= 64, got 1001"):
        MatchEQ(SR, n_fir=1001)
    with pytest.raises(ValueError, match="MatchEQ: mid_gain_db needs a trailing band axis of 29"):
        MatchEQ(SR, mid_gain_db=[0.0] * 5)
    with pytest.raises(ValueError, match="MatchEQ: side_gain_db=-70 is outside"):
        MatchEQ(SR, side_gain_db=[-70.0] * 29)
    with pytest.raises(ValueError, match="MatchEQ: mid_gain_db=30 is outside"):
        MatchEQ(SR, mid_gain_db=[30.0] * 29)
    with pytest.raises(ValueError, match=r"MatchEQ: audio must have 2 channel\(s\), got 1"):
        MatchEQ(SR)(torch.zeros(1, 1, 100))  # mid/side needs stereo


@pytest.mark.parametrize("sr", [44100, 48000])
def test_fir_response_is_the_designed_curve(sr):
    # Oracle: scipy's freqz of the causal FIR (delay removed) against the designed curve,
    # at every band centre from 31.5 Hz up, and between centres.
    centres = match_centres(sr)
    g = torch.tensor(gains(centres.numel(), 5, scale=9.0), dtype=torch.float64)
    n_fir = fir_length(sr)
    h = torch.roll(design_fir(g, centres, sr, n_fir), n_fir // 2).numpy()
    probe = np.geomspace(31.5, 0.4 * sr, 400)
    _, resp = scipy.signal.freqz(h, worN=probe, fs=sr)
    resp = resp * np.exp(2j * np.pi * probe / sr * (n_fir // 2))  # remove the linear phase
    assert np.abs(resp.imag).max() < 1e-6 * np.abs(resp).max()  # zero phase
    curve = design_curve_db(g, centres, sr, 16 * n_fir)
    want = np.interp(probe, np.arange(curve.numel()) * sr / (16 * n_fir), curve.numpy())
    got = 20 * np.log10(np.abs(resp))
    # The window smooths ~5 Hz: near 31.5 Hz slopes of 9 dB per third octave blur a little.
    assert np.abs(got - want).max() < 0.35
    assert np.abs(got - want)[probe > 100].max() < 0.05


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("channel", ["mid", "side"])
def test_a_plus_6_db_band_reads_plus_6_db_at_its_centre(sr, channel):
    centres = match_centres(sr)
    k = int(torch.argmin((centres - 1000.0).abs()))
    g = torch.zeros(centres.numel(), dtype=torch.float64)
    g[k] = 6.0
    n = sr
    t = torch.arange(4 * n, dtype=torch.float64) / sr
    tone = torch.sin(2 * torch.pi * float(centres[k]) * t)
    off = torch.sin(2 * torch.pi * float(centres[k + 3]) * t)  # one octave up: untouched
    ms = (
        torch.stack([tone + off, 0.5 * (tone + off)])
        if channel == "mid"
        else torch.stack([0.5 * (tone + off), tone + off])
    )
    x = left_right(ms.unsqueeze(0))
    kw = (
        {"mid_gain_db": g, "side_gain_db": torch.zeros_like(g)}
        if channel == "mid"
        else {"mid_gain_db": torch.zeros_like(g), "side_gain_db": g}
    )
    y = match_eq(x, sr, **kw)
    from diffmix.functional.gain import mid_side

    ys = mid_side(y)[0, 0 if channel == "mid" else 1, n : 3 * n]
    other = mid_side(y)[0, 1 if channel == "mid" else 0, n : 3 * n]
    spec = np.abs(np.fft.rfft(ys.numpy() * np.hanning(2 * n)))
    spec_o = np.abs(np.fft.rfft(other.numpy() * np.hanning(2 * n)))
    bins = (np.round(np.array([centres[k], centres[k + 3]]) * 2 * n / sr)).astype(int)
    ref = np.array(
        [
            np.abs(np.fft.rfft(s[n : 3 * n].numpy() * np.hanning(2 * n)))[b]
            for s, b in zip((tone, off), bins, strict=True)
        ]
    )
    level = 20 * np.log10(spec[bins] / ref)
    assert abs(level[0] - 6.0) < 0.02 and abs(level[1]) < 0.02
    assert abs(20 * np.log10(spec_o[bins[0]] / ref[0]) - 20 * np.log10(0.5)) < 0.02  # other channel flat


def test_neutral_is_identity_and_mix_blends():
    x = noise(2, 2, 3000)
    eq = MatchEQ(SR).double()
    torch.testing.assert_close(eq(x), x, rtol=0, atol=1e-9)
    n = eq.num_bands
    wet = MatchEQ(SR, mid_gain_db=[6.0] * n, side_gain_db=[-6.0] * n).double()(x)
    half = MatchEQ(SR, mid_gain_db=[6.0] * n, side_gain_db=[-6.0] * n, mix=0.5).double()(x)
    torch.testing.assert_close(half, 0.5 * (x + wet), rtol=0, atol=1e-9)


def coloured(seed: int, seconds: float = 6.0, tilt: float = 0.0, width: float = 0.3) -> torch.Tensor:
    """Stereo noise with a spectral tilt (dB/octave) and a side level, ``(1, 2, T)``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    spec = torch.fft.rfft(torch.randn(2, n, generator=g, dtype=torch.float64))
    f = torch.arange(spec.shape[-1], dtype=torch.float64) * SR / n
    shape = torch.pow(10.0, tilt * torch.log2(f.clamp_min(20.0) / 1000.0) / 20.0)
    shape = shape * (1 + 3 * torch.exp(-((torch.log2(f.clamp_min(1.0) / 120.0)) ** 2)))  # a bass bump
    mid, side = torch.fft.irfft(spec * shape, n=n)
    return left_right(torch.stack([mid, width * side]).unsqueeze(0)) * 0.1


def test_closed_form_match_moves_tone_and_width_onto_the_reference():
    x = coloured(1, tilt=-1.0, width=0.15)
    ref = coloured(2, tilt=-4.0, width=0.5)
    eq = MatchEQ(SR).double()
    before = spectral_errors(x, ref, SR)
    eq.match(x, ref)
    after = spectral_errors(eq(x), ref, SR)
    assert before["tone_mid_rms_db"] > 4 and before["tone_side_rms_db"] > 8
    assert after["tone_mid_rms_db"] < 0.5 and after["tone_side_rms_db"] < 0.6
    assert after["side_mid_ratio_error_db"] < 0.3 < before["side_mid_ratio_error_db"]


def test_a_signals_band_levels_are_measured_once_and_again_after_an_in_place_change():
    from diffmix.functional.match_eq import band_levels_db, match_centres, signal_band_levels_db

    g = torch.Generator().manual_seed(4)
    x = 0.1 * torch.randn(1, 2, 20_000, generator=g)
    c = match_centres(44100)
    first = signal_band_levels_db(x, 44100, c)
    # Transformed in float32 (the signal's dtype), powers summed in float64: a float64
    # analysis's levels within 1e-5 dB.
    full = band_levels_db(x.double(), 44100, c)
    assert first.dtype == torch.float64 and float((first - full).abs().max()) < 1e-5
    assert signal_band_levels_db(x, 44100, c) is first  # the same signal: measured once
    assert signal_band_levels_db(x.clone(), 44100, c) is not first  # another tensor: measured
    x.mul_(2.0)  # changed in place: its version moved, so it is measured again
    again = signal_band_levels_db(x, 44100, c)
    assert again is not first and torch.allclose(again, first + 20 * math.log10(2.0), atol=1e-9)


def test_refine_passes_without_a_render_agree_with_rendered_passes():
    # MatchEQ.match's refine passes take the output's band levels from the input's spectrum
    # and the FIR's response (filtered_band_levels_db), not from a render: the oracle runs
    # the same passes on float64 renders. A steep tilt and a side 30 dB down put bands far
    # under the top; the bass bump makes the lowest bands' gains move steeply.
    from diffmix.functional.match_eq import band_levels_db, match_gains

    x, ref = coloured(31, tilt=-6.0, width=0.03).float(), coloured(32, tilt=2.0, width=0.5).float()
    eq = MatchEQ(SR)
    mid, side = eq.match(x, ref, refine=2)
    oracle = MatchEQ(SR)
    c = oracle.centres_hz
    ref_db = band_levels_db(ref, SR, c, shared=True)
    m, s = match_gains(x, ref, SR, c, mid_range_db=(-24.0, 24.0), side_range_db=(-60.0, 24.0),
                       reference_db=ref_db)
    closed = m.clone()
    for _ in range(2):
        oracle.load_values({"mid_gain_db": m[0].double(), "side_gain_db": s[0].double()})
        with torch.no_grad():
            y = oracle(x)
        wide = (-120.0, 120.0)
        dm, ds = match_gains(y, ref, SR, c, mid_range_db=wide, side_range_db=wide, reference_db=ref_db,
                             x_db=band_levels_db(y, SR, c, shared=True))
        m, s = (m + dm).clamp(-24.0, 24.0), (s + ds).clamp(-60.0, 24.0)
    oracle.load_values({"mid_gain_db": m[0].double(), "side_gain_db": s[0].double()})
    # dB: the passes' levels agree with the renders' to ~1e-3 dB (FilteredBandLevels)
    assert (mid.double() - m[0].double()).abs().max() < 0.01
    assert (side.double() - s[0].double()).abs().max() < 0.01
    assert (m - closed).abs().max() > 0.5  # the passes acted
    with torch.no_grad():
        got, want = spectral_errors(eq(x), ref, SR), spectral_errors(oracle(x), ref, SR)
    for k in ("tone_mid_rms_db", "tone_side_rms_db"):
        assert got[k] == pytest.approx(want[k], abs=0.002), (k, got, want)


@pytest.mark.parametrize("rate", [44100, 48000, 11025])  # decimated by 4, 4, and not at all
@pytest.mark.parametrize("seed", [3, drawn_seed(10**6)])
def test_filtered_band_levels_equal_the_rendered_ones(seed, rate):
    # FilteredBandLevels against the oracle: match_eq rendered in float64 and its band levels
    # measured, for random gains (up to +-24 dB band by band: far steeper between bands than
    # a match curve) and a random mix, on coloured noise. Over seeds 0-19 at 44.1 kHz the
    # worst band read 1e-4 dB off up to 2 kHz (the decimated render) and 0.0044 dB above
    # (the spectrum times the response).
    from diffmix.functional.match_eq import FilteredBandLevels, band_levels_db

    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    x = coloured(seed, seconds=20.0, tilt=float(torch.empty(1).uniform_(-6, 2, generator=g)),
                 width=float(torch.empty(1).uniform_(0.02, 0.8, generator=g)))
    c = match_centres(rate)
    gains = torch.empty(1, 2, c.numel(), dtype=torch.float64).uniform_(-24.0, 24.0, generator=g)
    mix = torch.rand(1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = match_eq(x, rate, mid_gain_db=gains[:, 0], side_gain_db=gains[:, 1], mix=mix)
    levels = FilteredBandLevels(x, rate, c, fir_length(rate))
    want = band_levels_db(y, rate, c, shared=True)
    err = (levels(gains, mix) - want).abs()[0]
    print("factor", levels.factor, "max dB error up to 2 kHz", float(err[:, c <= 2000].max()),
          "above", float(err[:, c > 2000].max()))
    assert levels.factor == (1 if rate % 2 else 4)
    assert err[:, c <= 2000].max() < 1e-3
    assert err.max() < 0.02


def test_response_is_the_rendered_impulse_response():
    # response(): the amplitude spectrum of match_eq's output for an impulse (mid only: the
    # side of an impulse in both channels is 0), on a grid finer and coarser than the FIR.
    from diffmix.functional.match_eq import response

    c = match_centres(SR)
    g = torch.Generator().manual_seed(5)
    gains = torch.empty(2, c.numel(), dtype=torch.float64).uniform_(-12.0, 12.0, generator=g)
    n_fir = fir_length(SR)
    x = torch.zeros(1, 2, 4 * n_fir, dtype=torch.float64)
    x[..., 2 * n_fir] = 1.0
    with torch.no_grad():
        y = match_eq(x, SR, mid_gain_db=gains[0], side_gain_db=gains[1])[0, 0]
    for n_fft in (n_fir // 4, 2 * n_fir):
        taps = torch.roll(y, -2 * n_fir)  # zero-phase: lag 0 first, negative lags last
        half = n_fir // 2
        kept = torch.cat([taps[:half], taps.new_zeros(max(n_fft, n_fir) - n_fir), taps[-half:]])
        want = torch.fft.rfft(kept).real[:: max(1, n_fir // n_fft)]
        got = response(gains, c, SR, n_fir, n_fft)[0]
        assert torch.allclose(got, want, atol=1e-9), n_fft


def test_no_band_boosts_under_the_first_band():
    """Every band at the +24 dB bound: the designed curve reads +24 dB from the first band's
    lower edge up (the bands the features measure are untouched), falls monotonically under
    it and is 0 dB from half that frequency down to DC (a boost there would feed the
    limiter rumble no loudness meter hears)."""
    centres = match_centres(44100)
    curve = design_curve_db(torch.full((centres.numel(),), 24.0, dtype=torch.float64), centres, 44100, 44100)
    edge = float(centres[0]) / 2 ** (1 / 6)  # third-octave bands
    assert torch.allclose(curve[int(np.ceil(edge)) : 19000], torch.tensor(24.0, dtype=torch.float64))
    assert (curve[: int(edge / 2) + 1] == 0).all()
    under = curve[: int(np.ceil(edge))]
    assert (under.diff() >= 0).all() and float(under[int(edge / 2) + 2]) > 0
