"""Stereo image, 1/3-octave spectrum, defects and the analyze() report: physical checks,
the dtype x device matrix and the documented edge cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffmix.functional.analysis import (
    STEREO_BANDS,
    analysis_report,
    analyze,
    band_stereo,
    clipped_samples,
    dc_offset,
    side_mid_ratio_db,
    stereo_correlation,
    third_octave_centres,
    third_octave_spectrum,
)

SR = 48000


def noise(c: int, t: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.2 * torch.randn(1, c, t, generator=g, dtype=torch.float64)).to(dtype)


def sine(freq: float, amp: float, seconds: float = 1.0, sr: int = SR) -> torch.Tensor:
    t = torch.arange(round(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).reshape(1, 1, -1)


def test_correlation_and_side_mid_of_reference_images():
    x = noise(1, 20000, seed=1)
    other = noise(1, 20000, seed=2)
    mono = torch.cat([x, x], 1)
    inverted = torch.cat([x, -x], 1)
    wide = torch.cat([x, other], 1)
    assert float(stereo_correlation(mono, SR)) == pytest.approx(1.0, abs=1e-12)
    assert float(stereo_correlation(inverted, SR)) == pytest.approx(-1.0, abs=1e-12)
    assert abs(float(stereo_correlation(wide, SR))) < 0.03
    assert float(side_mid_ratio_db(mono, SR)) == -math.inf
    assert float(side_mid_ratio_db(inverted, SR)) == math.inf
    assert float(side_mid_ratio_db(wide, SR)) == pytest.approx(0.0, abs=0.3)
    # Half the level on the right: r = 1, S/M = ((1 - 0.5) / (1 + 0.5))^2 = -9.54 dB.
    half = torch.cat([x, 0.5 * x], 1)
    assert float(side_mid_ratio_db(half, SR)) == pytest.approx(20 * math.log10(1 / 3), abs=1e-9)


def test_band_stereo_separates_bands():
    # Mono below 150 Hz, inverted above 8 kHz, uncorrelated in between.
    low = sine(80.0, 0.3)
    high = sine(12000.0, 0.3)
    mid_l, mid_r = sine(1000.0, 0.3), sine(1000.0, 0.3) * 0  # left only in the mid band
    left = low + mid_l + high
    right = low + mid_r - high
    bands = band_stereo(torch.cat([left, right], 1), SR)
    names = [b[0] for b in STEREO_BANDS]
    corr, sm = bands["correlation"][0], bands["side_mid_db"][0]
    assert float(corr[names.index("low")]) == pytest.approx(1.0, abs=1e-6)
    assert float(corr[names.index("high")]) == pytest.approx(-1.0, abs=1e-6)
    assert float(corr[names.index("mid")]) == pytest.approx(0.0, abs=0.01)
    assert float(sm[names.index("mid")]) == pytest.approx(0.0, abs=1e-3)  # one side only: S = M
    # Empty bands (only rounding leakage) read 0 correlation and -inf side/mid, never NaN.
    assert float(corr[names.index("low_mid")]) == 0.0
    assert float(sm[names.index("high_mid")]) == -math.inf
    assert not torch.isnan(sm).any()


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize(("freq", "band"), [(100.0, 7), (1000.0, 17), (8000.0, 26)])
def test_third_octave_sine_reads_its_level_in_its_band(sr, freq, band):
    x = sine(freq, 10 ** (-12 / 20), seconds=2.0, sr=sr)
    centres, level = third_octave_spectrum(x, sr)
    assert float(centres[band]) == pytest.approx(freq, rel=0.01)
    assert float(level[0, 0, band]) == pytest.approx(-12.0, abs=0.1)
    others = torch.cat([level[0, 0, : band - 1], level[0, 0, band + 2:]])
    assert float(others.max()) < -12.0 - 60.0  # Hann side lobes are far below


def test_third_octave_of_white_noise_rises_3db_per_octave():
    x = noise(1, 10 * SR, seed=3)
    centres, level = third_octave_spectrum(x, SR)
    slope = (level[0, 0, 27] - level[0, 0, 17]) / math.log2(float(centres[27] / centres[17]))
    assert float(slope) == pytest.approx(3.01, abs=0.15)
    # Total power over the bands equals the noise's share within their coverage
    # (17.8 Hz to 22.39 kHz of the 24 kHz of white noise).
    total = 10 * torch.log10((10 ** (level[0, 0] / 10)).sum() / 2)
    lo, hi = float(centres[0]) * 10 ** (-1 / 20), float(centres[-1]) * 10 ** (1 / 20)
    share = (hi - lo) / (SR / 2)
    expected = 10 * math.log10(float(x.square().mean()) * share)
    assert float(total) == pytest.approx(expected, abs=0.05)


def test_centres_follow_iec_61260_and_stop_below_nyquist():
    c = third_octave_centres(48000)
    assert c.shape[0] == 31 and float(c[0]) == pytest.approx(19.95, abs=0.01)
    assert float(third_octave_centres(8000).max()) < 4000 / 10 ** (1 / 20)


def test_dc_offset_and_clipped_samples():
    x = noise(2, 1000, seed=4) + torch.tensor([0.1, -0.2], dtype=torch.float64)[None, :, None]
    torch.testing.assert_close(dc_offset(x, SR), x.mean(-1))
    y = torch.zeros(1, 2, 10)
    y[0, 0, :3] = 1.0
    y[0, 1, 5] = -1.2
    y[0, 1, 6] = 0.999
    assert clipped_samples(y, SR).tolist() == [[3, 1]]
    assert clipped_samples(y, SR, level=0.99).tolist() == [[3, 2]]
    with pytest.raises(ValueError, match="clipped_samples: level"):
        clipped_samples(y, SR, level=0)


def test_stereo_measurements_need_two_channels():
    for fn in (stereo_correlation, side_mid_ratio_db, band_stereo):
        with pytest.raises(ValueError, match="needs 2 channels"):
            fn(torch.zeros(1, 1, 100), SR)


class TestMatrix:
    def test_analyze_dtype_device(self, dtype, device):
        x = noise(2, SR, seed=5)
        ref = analyze(x, SR)
        got = analyze(x.to(dtype=dtype, device=device), SR)
        tol = 1e-6 if dtype == torch.float64 else 2e-3
        for key in ("integrated_lufs", "true_peak_dbtp", "correlation", "side_mid_db",
                    "band_correlation", "third_octave_db", "crest_factor_db"):
            assert got[key].device.type == device
            torch.testing.assert_close(got[key].cpu().double(), ref[key], atol=tol, rtol=0)
        assert torch.equal(got["clipped_samples"].cpu(), ref["clipped_samples"])

    def test_batch_consistent_and_not_in_place(self, dtype, device):
        x = torch.cat([noise(2, 8000, seed=s) for s in (6, 7)]).to(dtype=dtype, device=device)
        before = x.clone()
        both = analyze(x, SR)
        assert torch.equal(x, before)
        for i in range(2):
            alone = analyze(x[i: i + 1], SR)
            for key in ("integrated_lufs", "true_peak_dbtp", "band_side_mid_db", "third_octave_db"):
                torch.testing.assert_close(both[key][i], alone[key][0], atol=1e-4, rtol=0)


def _finite_or_inf_strings(obj) -> None:  # noqa: ANN001
    if isinstance(obj, dict):
        for v in obj.values():
            _finite_or_inf_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            _finite_or_inf_strings(v)
    elif isinstance(obj, float):
        assert math.isfinite(obj)
    elif isinstance(obj, str):
        # a name such as a channel label; "nan" is a name too, but a NaN in disguise
        assert obj in ("inf", "-inf") or (obj.isidentifier() and obj.lower() != "nan")


@pytest.mark.parametrize(
    ("channels", "sr", "seconds"),
    [(2, 48000, 4.0), (1, 44100, 1.0), (6, 48000, 3.5), (2, 8000, 2.0), (2, 192000, 1.0),
     (2, 48000, 0.2)],
)
def test_report_is_strict_json_without_nan(channels, sr, seconds):
    x = noise(channels, round(seconds * sr), seed=8)
    report = analysis_report(x, sr)[0]
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN, no bare Infinity
    _finite_or_inf_strings(json.loads(text))
    assert (report["stereo"] is None) == (channels != 2)
    assert report["channels"] == channels and report["sample_rate"] == sr
    assert len(report["true_peak_dbtp_per_channel"]) == channels


def test_report_of_silence_says_minus_inf():
    report = analysis_report(torch.zeros(1, 2, SR), SR)[0]
    json.dumps(report, allow_nan=False)
    assert report["silent"] is True
    for key in ("integrated_lufs", "true_peak_dbtp", "sample_peak_dbfs", "momentary_max_lufs",
                "short_term_max_lufs"):
        assert report[key] == "-inf"
    assert report["loudness_range_lu"] == 0.0 and report["plr_db"] == 0.0
    assert report["stereo"]["correlation"] == 0.0 and report["stereo"]["side_mid_db"] == "-inf"
    assert set(report["third_octave"]["level_db_per_channel"][0]) == {"-inf"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_plr_and_psr_have_one_definition(dtype):
    """analyze(), peaks.plr/psr and the job summary all take PLR and PSR from
    peaks.peak_ratio_db: analyze() equals plr()/psr() bit for bit, the summary equals the
    ratio of its own float64 figures, and silence reads 0 dB everywhere."""
    from diffmix.functional.peaks import peak_ratio_db, plr, psr
    from diffmix.jobs._common import summary

    seed = 18
    print("seed", seed)
    x = torch.cat([noise(2, 3 * SR, seed=seed, dtype=dtype), torch.zeros(1, 2, 3 * SR, dtype=dtype)])
    r = analyze(x, SR)
    assert torch.equal(r["plr_db"], plr(x, SR))
    assert torch.equal(r["psr_db"], psr(x, SR))
    assert r["plr_db"][1] == 0.0 and r["psr_db"][1] == 0.0
    for i in range(2):
        s = summary(x[i : i + 1], SR)
        lufs, tp, st = s["integrated_lufs"], s["true_peak_dbtp"], s["max_short_term_lufs"]
        assert s["plr_db"] == (0.0 if math.isinf(lufs) else tp - lufs)
        assert s["psr_db"] == (0.0 if math.isinf(st) else tp - st)
    ratio = peak_ratio_db(torch.tensor([-1.0, -3.0, -1.0]), torch.tensor([-14.0, -math.inf, math.inf]))
    assert ratio.tolist() == [13.0, 0.0, -math.inf]
