"""Delivery: formats, dither statistics, quantisation, re-limiting, atomic outputs; album."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from diffmix.album import cue_sheet, fade, sequence
from diffmix.delivery import check_format, deliver, prepare, quantise, tpdf_dither
from tests.seeds import drawn_seed


def sample_peak_db(x, rate):
    return float(20 * torch.log10(x.abs().max()))


def test_tpdf_dither_is_triangular_with_one_lsb_peak():
    gen = torch.Generator().manual_seed(0)
    noise = tpdf_dither(torch.zeros(400_000, dtype=torch.float64), 16, gen) * 2.0**15
    assert float(noise.abs().max()) <= 1.0
    assert float(noise.var()) == pytest.approx(1 / 6, rel=0.02)  # variance of TPDF ±1 LSB
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.005)


def test_quantise_hits_the_grid_and_clamps():
    x = torch.tensor([0.3, -1.5, 1.5], dtype=torch.float64)
    q = quantise(x, 16) * 2.0**15
    assert torch.equal(q, q.round()) and q.tolist()[1:] == [-32768.0, 32767.0]


@pytest.mark.parametrize("bits", [16, 24])
def test_prepare_is_dither_then_quantise_a_block_at_a_time(bits):
    # prepare works a block at a time (memory) and returns the file's float32 samples: the
    # same values as dithering and quantising the whole signal in float64.
    x = 0.4 * torch.randn(2, 150_001, generator=torch.Generator().manual_seed(5))
    q, rate, dithered = prepare(x, 44100, bit_depth=str(bits), seed=9)
    whole = quantise(tpdf_dither(x.double(), bits, torch.Generator().manual_seed(9)), bits)
    assert q.dtype == torch.float32 and rate == 44100 and dithered
    assert torch.equal(q.double(), whole)
    plain, _, _ = prepare(x, 44100, bit_depth=str(bits), dither=False)
    assert torch.equal(plain.double(), quantise(x.double(), bits))


def test_dither_decorrelates_quantisation_error_of_a_quiet_tone():
    t = torch.arange(48000, dtype=torch.float64) / 48000
    tone = 1.5 * 2.0**-15 * torch.sin(2 * torch.pi * 1000 * t).unsqueeze(0)
    plain, _, _ = prepare(tone, 48000, bit_depth="16", dither=False)
    dithered, _, _ = prepare(tone, 48000, bit_depth="16", dither=True)
    # Undithered error is a deterministic function of the signal (harmonic distortion);
    # dithered error is uncorrelated with it.
    corr = lambda e: float((e * tone).sum() / (e.norm() * tone.norm()))  # noqa: E731
    assert abs(corr(dithered - tone)) < 0.02 < abs(corr(plain - tone))


@pytest.mark.parametrize("fmt, depth", [("wav", 16), ("wav", "float"), ("flac", 24), ("aiff", 16)])
def test_formats_write_what_they_say(tmp_path, fmt, depth):
    x = 0.5 * torch.sin(torch.linspace(0, 100, 4410)).expand(2, -1)
    rep = deliver(x, 44100, tmp_path / f"out.{fmt}", fmt=fmt, bit_depth=depth, target_rate=48000)
    info = sf.info(rep.path)
    assert info.samplerate == 48000 and info.channels == 2
    assert info.frames == 4800  # 4410 samples at 44.1 kHz resampled to 48 kHz
    assert info.subtype == {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}[str(depth)]
    written, _ = sf.read(rep.path, always_2d=True)
    assert float(abs(written).max()) == pytest.approx(0.5, abs=0.02)
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{fmt}"]


def test_ceiling_is_enforced_after_quantisation(tmp_path):
    x = 0.999 * torch.sin(torch.linspace(0, 300, 8000, dtype=torch.float64)).expand(2, -1)
    rep = deliver(
        x, 8000, tmp_path / "o.wav", bit_depth=16, ceiling_dbtp=-1.0, true_peak_db=sample_peak_db
    )
    written, _ = sf.read(rep.path, always_2d=True)
    assert rep.relimited and rep.relimit_gain_db < -0.9
    assert 20 * torch.log10(torch.tensor(abs(written).max())) <= -1.0


def test_bad_delivery_options():
    with pytest.raises(ValueError, match="format must be one of"):
        check_format("mp4", 16)
    with pytest.raises(ValueError, match="bit_depth must be 16, 24 or float"):
        check_format("wav", 12)
    with pytest.raises(ValueError, match="FLAC cannot hold float"):
        check_format("flac", "float")


def test_sequence_gaps_fades_and_cue():
    sr = 100
    a, b = torch.ones(2, 300), torch.ones(2, 200)
    album, starts = sequence([a, b], sr, gaps_s=1.5, fade_in_s=0.5, fade_out_s=0.5)
    assert album.shape == (2, 650) and starts == [0, 450]
    assert float(album[0, 0]) == 0.0 and float(album[0, 150]) == 1.0
    assert float(album[0, 300:450].abs().max()) == 0.0
    cue = cue_sheet("album.wav", ["one", "two"], starts, sr)
    assert "INDEX 01 00:04:38" in cue  # 4.5 s = 4 s + 37.5 frames -> 38 (nearest)
    with pytest.raises(ValueError, match="1 gaps for 3 tracks"):
        sequence([a, a, a], sr, gaps_s=[1.0])


def test_fade_is_monotone():
    env = fade(torch.ones(1, 1000), 1000, 0.3, 0.0)[0]
    assert (env[1:300] >= env[:299]).all() and float(env[0]) == 0.0
    # 0.3 s at 1 kHz = a 300-sample ramp: halfway up mid-ramp, fully open from its last sample on
    assert 0.0 < float(env[150]) < 1.0 and torch.all(env[299:] == 1.0)


def _strict_peak(x: torch.Tensor, sr: int) -> float:
    from diffmix.functional.peaks import strict_envelope

    return float(strict_envelope(x.float().unsqueeze(0), sr).max())


@pytest.mark.parametrize("depth, dither", [("24", True), ("24", False), ("16", True), ("float", False)])
def test_the_stored_true_peak_never_reads_above_its_bound(depth, dither):
    # A render's own strict reading bounds what its dithered, quantised samples read
    # (quantised_peak_bound): over random renders, gains and seeds, never above, and at 24
    # bits within 5e-5 of the peak. At 16 bits storing alone moves the reading past the
    # render's (so a bound without the quantisation's term would fail there).
    from diffmix.delivery import quantised_peak_bound

    seed = drawn_seed(2**31)
    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    sr, rose = 44100, 0
    # At 16 bits about half the draws read above the render's peak: 24 of them all reading
    # at or under it has odds of 6e-8.
    for k in range(24 if depth == "16" else 6):
        # near-Nyquist-rich or dull content, loud or quiet, a few thousand samples
        x = torch.randn(2, 3000 + 997 * (k % 6), generator=gen)
        if k % 2:
            x = x - torch.roll(x, 1, -1)  # tilted toward Nyquist: inter-sample overs
        # The strict reading (not the sample peak) drawn under full scale: the bound is
        # infinite where a sample could reach the clamp, and a true peak reads above the
        # sample peak (seed 985522444: a sample peak drawn under 0.9 read 1.03, 24 bits).
        level = float(torch.empty(()).uniform_(0.05, 0.9, generator=gen))
        x = (level / _strict_peak(x, sr) * x).float()
        gain = 10 ** (float(torch.empty(()).uniform_(-3.0, 0.0, generator=gen)) / 20)
        peak = _strict_peak(x, sr)
        stored, _, _ = prepare(x * gain, sr, bit_depth=depth, dither=dither, seed=k)
        measured = _strict_peak(stored, sr)
        bound = quantised_peak_bound(peak, sr, bit_depth=depth, dither=dither, gain=gain)
        assert measured <= bound, (k, measured, bound)
        if depth != "16":
            assert bound - measured <= 5e-5 * gain * peak + 3e-6
        rose += measured > gain * peak
    if depth == "16":
        assert rose > 0


def test_the_bound_refuses_where_the_clamp_could_act():
    from diffmix.delivery import quantised_peak_bound
    from diffmix.functional.peaks import strict_sensitivity

    _, rounding = strict_sensitivity(44100)
    assert quantised_peak_bound(0.5, 44100, bit_depth="24", dither=True) < 0.5001
    assert quantised_peak_bound(1.0, 44100, bit_depth="24", dither=True) == float("inf")
    assert quantised_peak_bound(0.5, 44100, bit_depth="float", dither=False) == 0.5 * (1 + rounding)
