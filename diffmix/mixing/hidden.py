"""Hidden mix settings for testing the mix fit: drawn at random, rendered through a console.

A setting spans what mixing engineers do, and every part of it is realisable by the
default console (so a perfect fit exists): per track a gain, a width (some stems narrowed
to mono), a pan anywhere from hard left to hard right, an EQ with one to three bands at
random frequencies, gains and Qs, a compressor on a random subset (ratio 1.5-8, attack
1-50 ms, release 30-500 ms), a reverb send on some; on the master bus a compressor.
:func:`contributions` measures what each track adds to the mix, with the master's
dynamics keyed by the whole mix.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffmix.console import Console
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.functional.loudness import integrated_loudness

# Frequency ranges (Hz) a band of each type is drawn from.
BAND_RANGES = {
    "low_shelf": (60.0, 300.0),
    "peak": (150.0, 8000.0),
    "high_shelf": (3000.0, 12000.0),
    "high_pass": (20.0, 120.0),
    "low_pass": (8000.0, 18000.0),
}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_setting(console: Console, stems: Tensor, seed: int) -> dict[str, Tensor]:
    """A random, realisable setting of ``console`` for ``(1, N, 2, T)`` stems.

    Expects the default strip (``input``, ``eq``, ``comp``, ``width``, ``pan``, ``fader``), a
    ``reverb`` send and a master ``comp``; parts the console lacks are skipped. Thresholds
    are drawn relative to each signal's own level, so compressors do work.

    Returns:
        Parameter path -> value, for :meth:`~diffmix.console.Console.load_values`.
    """
    rng = np.random.default_rng(seed)
    n = stems.shape[1]
    values = console.named_values()
    out: dict[str, Tensor] = {}
    lufs = integrated_loudness(stems[0].double(), console.sample_rate)
    level = torch.where(torch.isfinite(lufs), lufs, torch.full_like(lufs, -30.0))
    # Gains around an equal-loudness balance, +-9 dB.
    gain = (-24.0 - level + torch.as_tensor(rng.uniform(-9, 9, n))).clamp(-40.0, 24.0)
    out["strip.input.gain_db"] = gain
    if "strip.width.width" in values:
        narrow = rng.random(n) < 0.3
        out["strip.width.width"] = torch.as_tensor(np.where(narrow, 0.0, rng.uniform(0.3, 1.8, n)))
    if "strip.pan.pan" in values:
        out["strip.pan.pan"] = torch.as_tensor(rng.uniform(-1.0, 1.0, n))
    eq = console.strip.effects["eq"] if "eq" in console.strip.effects else None
    if isinstance(eq, ParametricEQ):
        bands = list(eq.bands)
        freq = values["strip.eq.freq_hz"].exact().double().clone().expand(n, len(bands)).clone()
        q = values["strip.eq.q"].exact().double().clone().expand(n, len(bands)).clone()
        g = torch.zeros(n, len(bands), dtype=torch.float64)
        for k in range(n):
            for b in rng.choice(len(bands), size=int(rng.integers(1, 4)), replace=False):
                lo, hi = BAND_RANGES.get(bands[b], (100.0, 8000.0))
                freq[k, b] = _log_uniform(rng, lo, min(hi, 0.4 * console.sample_rate))
                g[k, b] = rng.uniform(-6.0, 6.0)
                q[k, b] = _log_uniform(rng, 0.5, 3.0) if bands[b] == "peak" else 0.707
        out.update({"strip.eq.freq_hz": freq, "strip.eq.q": q, "strip.eq.gain_db": g})
    if isinstance(console.strip.effects["comp"] if "comp" in console.strip.effects else None, Compressor):
        on = rng.random(n) < 0.5
        peak = stems[0].abs().amax(dim=(1, 2)).clamp_min(1e-9)
        # Threshold 3-20 dB under the stem's peak level at the compressor (after its gain).
        top = 20 * torch.log10(peak) + gain
        out["strip.comp.threshold_db"] = (top - torch.as_tensor(rng.uniform(3.0, 20.0, n))).clamp(-60.0, 0.0)
        out["strip.comp.ratio"] = torch.as_tensor(
            np.where(on, [_log_uniform(rng, 1.5, 8.0) for _ in range(n)], 1.0)
        )
        out["strip.comp.attack_ms"] = torch.as_tensor([_log_uniform(rng, 1.0, 50.0) for _ in range(n)])
        out["strip.comp.release_ms"] = torch.as_tensor([_log_uniform(rng, 30.0, 500.0) for _ in range(n)])
    if "sends.reverb.send_db" in values:
        send = rng.random(n) < 0.3
        out["sends.reverb.send_db"] = torch.as_tensor(np.where(send, rng.uniform(-24.0, -10.0, n), -80.0))
    if "master.comp.ratio" in values:
        console.load_values(out)
        with torch.no_grad():
            mix = console(stems)
        mix_top = 20 * math.log10(max(float(mix.abs().max()), 1e-9))
        out["master.comp.threshold_db"] = torch.tensor([min(0.0, mix_top - rng.uniform(3.0, 10.0))])
        out["master.comp.ratio"] = torch.tensor([_log_uniform(rng, 1.5, 4.0)])
        out["master.comp.attack_ms"] = torch.tensor([_log_uniform(rng, 5.0, 30.0)])
        out["master.comp.release_ms"] = torch.tensor([_log_uniform(rng, 80.0, 300.0)])
    return {k: v.view(values[k].exact().shape) if v.numel() == values[k].exact().numel() else v
            for k, v in out.items()}


def contributions(console: Console, stems: Tensor) -> Tensor:
    """What each track adds to the mix: ``(1, N, C, T)`` -> ``(N, 2, T)``.

    Each track through its strip and sends, then through the master bus with every
    dynamics stage keyed (side-chained) by the whole mix, so the tracks' shares sum to
    the mix exactly where the master is otherwise linear. Without groups.
    """
    if console.groups or console.offset_samples:
        raise ValueError("contributions: a console with groups or an offset is not supported")
    n = stems.shape[1]
    with torch.no_grad():
        parts = console.strip(stems[0])
        pre = parts
        for name, fx in console.sends.items():
            level = 10 ** (console.send_levels[name]().to(parts.dtype).view(n, 1, 1) / 20)
            ret = 10 ** (console.return_levels[name]().to(parts.dtype).view(-1, 1, 1) / 20)
            pre = pre + ret * fx(parts * level)
        full = pre.sum(0, keepdim=True)
        for effect in console.master.effects.values():
            if isinstance(effect, Compressor):
                key = full.expand_as(pre)
                pre = effect(pre, sidechain=key)
                full = effect(full)
            else:
                pre, full = effect(pre), effect(full)
        return pre
