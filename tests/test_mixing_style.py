"""Mixing toward another song (diffmix.mixing.style): the feature distances and the
closed-form tone, width and dynamics steps, each with a case it must pass and a case
that shows it matters."""

from __future__ import annotations

import math

import torch

from diffmix.console import Console
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.mixing.style import dynamics_start, style_distances, tone_start, width_start

SR = 44100
BANDS = ["low_shelf", "peak", "peak", "peak", "high_shelf"]
FREQS = [120.0, 400.0, 1500.0, 5000.0, 9000.0]


def _song(seed: int, seconds: float = 4.0) -> torch.Tensor:
    """Four stereo stems ``(1, 4, 2, T)``: band-limited noise with their own rhythms and
    partly correlated channels."""
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    parts = []
    for lo, hi, rate in ((30, 300, 2.0), (200, 3000, 3.0), (1000, 10000, 4.0), (60, 16000, 1.5)):
        common = torch.randn(n, generator=g, dtype=torch.float64)
        x = torch.stack([common + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) for _ in range(2)])
        x = torch.fft.irfft(torch.fft.rfft(x) * ((f >= lo) & (f < hi)), n)
        x = x * (0.3 + torch.relu(torch.sin(2 * math.pi * rate * t))) ** 2
        parts.append(x / x.square().mean().sqrt() * 0.1)
    return torch.stack(parts).float().unsqueeze(0)


def _console() -> Console:
    strip = {"input": Gain(SR), "eq": ParametricEQ(SR, bands=BANDS, freq_hz=FREQS),
             "width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)}
    return Console(SR, 4, strip=strip, master={"comp": Compressor(SR, threshold_db=-6.0, ratio=1.0)})


def _reference() -> torch.Tensor:
    """Another song mixed bright, wide and squashed."""
    other = _console()
    other.load_values({"strip.eq.gain_db": torch.tensor([[-6.0, 0.0, -3.0, 4.0, 8.0]] * 4),
                       "strip.width.width": torch.full((4,), 2.0),
                       "master.comp.threshold_db": torch.tensor([-30.0]),
                       "master.comp.ratio": torch.tensor([6.0])})
    with torch.no_grad():
        return other(_song(11))


def _around(start):  # noqa: ANN001, ANN202
    """Style distances of a fresh console toward the reference before and after ``start``,
    and its summary."""
    stems, ref = _song(3), _reference()
    console = _console()
    with torch.no_grad():
        before = style_distances(console(stems), ref, SR)
    summary = start(console, stems, ref, SR)
    with torch.no_grad():
        after = style_distances(console(stems), ref, SR)
    return before, after, summary


def test_tone_start_halves_the_mid_shape_distance():
    before, after, summary = _around(tone_start)
    assert before["tone_mid"] > 3.0, before  # the two songs differ in tone: the step matters
    assert after["tone_mid"] < 0.5 * before["tone_mid"], (before, after, summary)


def test_width_start_halves_the_width_distance():
    before, after, summary = _around(width_start)
    assert before["width"] > 3.0, before
    assert after["width"] < 0.5 * before["width"], (before, after, summary)


def test_dynamics_start_brings_crest_and_lra_toward_a_squashed_reference():
    before, after, summary = _around(dynamics_start)
    assert before["crest"] > 1.0, before
    assert summary["ratio"] > 1.0 and after["crest"] < 0.5 * before["crest"], (before, after, summary)
