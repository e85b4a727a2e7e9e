"""Album assembly: sequencing with gaps and fades, and a CD-style cue sheet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def fade(x: Tensor, sample_rate: int, fade_in_s: float, fade_out_s: float) -> Tensor:
    """Raised-cosine fade-in and fade-out on ``(channels, time)`` audio."""
    n = x.shape[-1]
    env = torch.ones(n, dtype=x.dtype, device=x.device)
    for seconds, rising in ((fade_in_s, True), (fade_out_s, False)):
        k = min(n, int(round(seconds * sample_rate)))
        if k <= 0:
            continue
        ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, k, dtype=x.dtype, device=x.device))
        if rising:
            env[:k] = env[:k] * ramp
        else:
            env[n - k :] = env[n - k :] * ramp.flip(0)
    return x * env


def sequence(
    tracks: Sequence[Tensor],
    sample_rate: int,
    *,
    gaps_s: float | Sequence[float] = 2.0,
    fade_in_s: float = 0.0,
    fade_out_s: float = 0.0,
) -> tuple[Tensor, list[int]]:
    """Join ``(channels, time)`` tracks in order with silent gaps and fades.

    Args:
        gaps_s: silence after each track but the last: one value or one per gap.

    Returns:
        ``(album, starts)``: the album audio and each track's start sample.
    """
    gaps = [float(gaps_s)] * (len(tracks) - 1) if isinstance(gaps_s, (int, float)) else list(gaps_s)
    if len(gaps) != max(0, len(tracks) - 1):
        raise ValueError(f"album: {len(gaps)} gaps for {len(tracks)} tracks (need one fewer)")
    if any(g < 0 for g in gaps):
        raise ValueError("album: gaps must be >= 0 seconds")
    parts, starts, pos = [], [], 0
    for i, track in enumerate(tracks):
        starts.append(pos)
        parts.append(fade(track, sample_rate, fade_in_s, fade_out_s))
        pos += track.shape[-1]
        if i < len(gaps):
            silence = torch.zeros(track.shape[0], int(round(gaps[i] * sample_rate)), dtype=track.dtype)
            parts.append(silence)
            pos += silence.shape[-1]
    return torch.cat(parts, dim=-1), starts


def _cue_time(sample: int, sample_rate: int) -> str:
    frames = round(sample * 75 / sample_rate)  # CD frames: 75 per second
    return f"{frames // (75 * 60):02d}:{(frames // 75) % 60:02d}:{frames % 75:02d}"


def cue_sheet(
    album_file: str, titles: Sequence[str], starts: Sequence[int], sample_rate: int,
    *, performer: str = "diffmix", album_title: str = "Album",
) -> str:
    """A cue sheet for one album file with a TRACK/INDEX 01 per track.

    >>> print(cue_sheet("album.wav", ["a"], [0], 44100).splitlines()[3])
      TRACK 01 AUDIO
    """
    lines = [f'PERFORMER "{performer}"', f'TITLE "{album_title}"', f'FILE "{album_file}" WAVE']
    for i, (title, start) in enumerate(zip(titles, starts, strict=True), 1):
        lines += [
            f"  TRACK {i:02d} AUDIO",
            f'    TITLE "{title}"',
            f"    INDEX 01 {_cue_time(start, sample_rate)}",
        ]
    return "\n".join(lines) + "\n"
