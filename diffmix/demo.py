"""A built-in demo multitrack, synthesised deterministically (no files shipped).

Eight short stereo stems at 120 BPM — kick, snare, hats, bass, pad, lead, perc, fx —
made from seeded noise and sines so that every run and machine gets the same audio.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

STEMS = ("kick", "snare", "hats", "bass", "pad", "lead", "perc", "fx")


def _env(t: Tensor, onsets: Tensor, decay_s: float) -> Tensor:
    """Sum of exponential decays starting at ``onsets`` (seconds), shape of ``t``."""
    dt = t.unsqueeze(0) - onsets.unsqueeze(1)
    return torch.where(dt >= 0, torch.exp(-dt.clamp_min(0) / decay_s), 0.0).sum(0)


def _gate_notes(t: Tensor, onsets: Tensor, freqs: Tensor, dur: float) -> tuple[Tensor, Tensor]:
    """Instantaneous frequency and gate for a monophonic note sequence."""
    idx = torch.searchsorted(onsets, t, right=True) - 1
    idx = idx.clamp(0, len(onsets) - 1)
    since = t - onsets[idx]
    gate = ((since >= 0) & (since < dur)).to(t.dtype) * torch.exp(-since.clamp_min(0) * 3.0)
    return freqs[idx], gate


def _phase(freq: Tensor, sample_rate: int) -> Tensor:
    return 2 * math.pi * torch.cumsum(freq, -1) / sample_rate


def demo_multitrack(
    sample_rate: int = 44100, seconds: float = 8.0, seed: int = 0
) -> tuple[Tensor, list[str]]:
    """Synthesise the demo stems.

    Returns:
        ``(stems, names)`` with stems float32 ``(1, 8, 2, time)`` peaking near -6 dBFS.

    >>> stems, names = demo_multitrack(8000, 1.0)
    >>> tuple(stems.shape), names[0]
    ((1, 8, 2, 8000), 'kick')
    """
    g = torch.Generator().manual_seed(seed)
    n = int(round(sample_rate * seconds))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    beat = 0.5
    beats = torch.arange(0.0, seconds, beat, dtype=torch.float64)
    eighths = torch.arange(0.0, seconds, beat / 2, dtype=torch.float64)

    kick_env = _env(t, beats, 0.12)
    kick_freq = 50 + 90 * _env(t, beats, 0.03)
    kick = torch.sin(_phase(kick_freq, sample_rate)) * kick_env

    snare_on = beats[1::2]
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    snare = 0.6 * noise * _env(t, snare_on, 0.09) + 0.4 * torch.sin(2 * math.pi * 190 * t) * _env(
        t, snare_on, 0.06
    )

    hats_noise = torch.randn(n, generator=g, dtype=torch.float64)
    hats_noise = hats_noise - torch.nn.functional.pad(hats_noise, (1, 0))[:-1]  # crude high-pass
    hats = 0.4 * hats_noise * _env(t, eighths, 0.025)

    roots = torch.tensor([55.0, 55.0, 73.42, 65.41], dtype=torch.float64)
    bar_idx = (t / (4 * beat)).floor().long() % len(roots)
    bass_f = roots[bar_idx]
    bass_ph = _phase(bass_f, sample_rate)
    bass = (torch.sin(bass_ph) + 0.3 * torch.sin(2 * bass_ph) + 0.1 * torch.sin(3 * bass_ph)) * (
        0.6 + 0.4 * _env(t, eighths, 0.1).clamp_max(1)
    )

    pad = torch.zeros_like(t)
    for mult in (2.0, 2.5198, 2.9966):  # a minor triad over the root, three partials each
        for det in (0.997, 1.003):
            pad = pad + torch.sin(_phase(bass_f * 2 * mult * det, sample_rate))
    pad = pad / 6 * (0.5 + 0.5 * torch.sin(2 * math.pi * 0.25 * t))

    scale = torch.tensor([440.0, 523.25, 587.33, 659.25, 783.99], dtype=torch.float64)
    order = torch.randint(0, len(scale), (len(eighths),), generator=g)
    lead_f, lead_gate = _gate_notes(t, eighths, scale[order], beat / 2)
    lead_ph = _phase(lead_f, sample_rate)
    lead = (torch.sin(lead_ph) + 0.5 * torch.sin(3 * lead_ph) / 3) * lead_gate

    perc_on = eighths[3::4]
    perc = torch.sin(2 * math.pi * 820 * t) * _env(t, perc_on, 0.04)

    fx = torch.randn(n, generator=g, dtype=torch.float64)
    fx = torch.nn.functional.avg_pool1d(fx.view(1, 1, -1), 9, 1, 4).flatten()
    fx = fx * (0.5 + 0.5 * torch.cos(2 * math.pi * t / seconds))

    mono = torch.stack([kick, snare, hats, bass, pad, lead, perc, fx])
    # Stereo: a per-stem spread made of a slightly delayed copy, so stems are not dual mono.
    delays = torch.tensor([0, 3, 11, 0, 17, 7, 5, 23])
    right = torch.stack([torch.roll(mono[i], int(d)) for i, d in enumerate(delays)])
    spread = torch.tensor([0.0, 0.2, 0.6, 0.0, 0.8, 0.3, 0.5, 0.9], dtype=torch.float64)
    right = (1 - spread).unsqueeze(1) * mono + spread.unsqueeze(1) * right
    stems = torch.stack([mono, right], dim=1)
    peak = stems.abs().amax(dim=(1, 2), keepdim=True)
    stems = stems / peak * 0.5
    return stems.unsqueeze(0).float(), list(STEMS)
