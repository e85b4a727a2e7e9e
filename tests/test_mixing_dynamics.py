"""The mix fit's dynamics start: the master bus compressor read off the reference against
the mix, and each strip compressor from its own frame gains with the master's taken out."""

from __future__ import annotations

import math

import torch

from diffmix.console import Console
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.mixing.wiring import (
    compressor_start,
    console_estimate,
    initialise_console,
    master_compressor_start,
    master_frame_gain,
)

SR = 44100


def _stems(seconds: float, seed: int) -> torch.Tensor:
    """Three stereo stems ``(1, 3, 2, T)``: a pulsing low one (a kick: it drives the master
    compressor), a steady mid pad and pulsing highs, each with its own rhythm."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    parts = []
    for (lo, hi), rate, depth in (((30, 200), 2.0, 1.0), ((300, 2500), 0.5, 0.2), ((3000, 12000), 3.0, 1.0)):
        noise = torch.randn(2, n, generator=g, dtype=torch.float64)
        x = torch.fft.irfft(torch.fft.rfft(noise) * ((f >= lo) & (f < hi)), n)
        env = (1.0 - depth) + depth * torch.relu(torch.sin(2 * math.pi * rate * t)) ** 4
        x = x * env
        parts.append(x / x.square().mean().sqrt() * 0.1)
    return torch.stack(parts).float().unsqueeze(0)


def _console(master_ratio: float = 1.5) -> Console:
    strip = {
        "input": Gain(SR),
        "eq": ParametricEQ(SR, bands=["low_shelf", "peak", "high_shelf"], freq_hz=[150.0, 1000.0, 8000.0]),
        "comp": Compressor(SR, threshold_db=-10.0, ratio=1.0, attack_ms=10.0, release_ms=120.0),
        "width": Width(SR),
        "pan": Pan(SR),
        "fader": Gain(SR),
    }
    master = {"comp": Compressor(SR, threshold_db=-6.0, ratio=master_ratio, attack_ms=20.0, release_ms=200.0),
              "gain": Gain(SR)}
    return Console(SR, 3, strip=strip, master=master)


def _truth(stems: torch.Tensor) -> tuple[Console, torch.Tensor]:
    """No strip compressor; the master compressor 18 dB under the mix's peak, ratio 6."""
    truth = _console()
    truth.load_values({"strip.input.gain_db": torch.tensor([6.0, -2.0, 0.0]),
                       "strip.pan.pan": torch.tensor([0.0, -0.4, 0.5])})
    with torch.no_grad():
        top = 20 * math.log10(float(truth(stems).abs().max()))
    truth.load_values({
        "master.comp.threshold_db": torch.tensor([top - 18.0]), "master.comp.ratio": torch.tensor([6.0]),
        "master.comp.attack_ms": torch.tensor([10.0]), "master.comp.release_ms": torch.tensor([100.0]),
    })
    with torch.no_grad():
        return truth, truth(stems)


def _error(console: Console, stems: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad():
        return float((console(stems) - ref).square().sum() / ref.square().sum())


def test_master_compressor_start_reads_the_master_compressor_off_the_reference():
    stems = _stems(4.0, seed=0)
    _, ref = _truth(stems)
    fitted = _console(master_ratio=1.0)
    with torch.no_grad():
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        before = _error(fitted, stems, ref)
        summary = master_compressor_start(fitted, stems, ref, SR)
        after = _error(fitted, stems, ref)
    # Threshold and ratio trade against each other over the levels the mix reaches: the
    # gain it takes off is what is judged (the waveform error), the ratio only for being found.
    assert summary["ratio"] >= 3.0, summary
    # The static start leaves the master's moving gain in the residual.
    assert after < 0.5 * before, (before, after)


def test_master_frame_gain_is_one_without_compression_and_dips_with_it():
    stems = _stems(2.0, seed=1)
    plain = _console(master_ratio=1.0)
    gain = master_frame_gain(plain, stems)
    assert torch.allclose(gain, torch.ones_like(gain), atol=1e-6)
    _, ref = _truth(stems)
    squeezed = _console(master_ratio=8.0)
    squeezed.load_values({"master.comp.threshold_db": torch.tensor([-30.0])})
    assert float(master_frame_gain(squeezed, stems).min()) < 0.5


def test_strip_compressors_do_not_take_up_the_master_compressors_pumping():
    """An uncompressed kick that pumps the master: with the master's gain taken out of its
    frame gains its strip stays (nearly) uncompressed; read with a master that does nothing
    (ratio 1, the gain not yet estimated), the pumping is taken for a strip compressor."""
    stems = _stems(4.0, seed=2)
    _, ref = _truth(stems)
    ratios = {}
    for case in ("master first", "no master"):
        fitted = _console(master_ratio=1.0)
        with torch.no_grad():
            est = console_estimate(fitted, stems, ref, SR, coherent=True)
            initialise_console(fitted, stems, ref, SR, estimate=est)
            if case == "master first":
                master_compressor_start(fitted, stems, ref, SR)
            ratios[case] = compressor_start(fitted, stems, est, SR)["ratio"]
    assert ratios["master first"][0] <= 2.0, ratios
    assert ratios["no master"][0] >= 2.5, ratios
