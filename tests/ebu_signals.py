"""EBU Tech 3341 / 3342 compliance signals, synthesised from their published definitions.

The EBU's own files are not available here, so each case is built from its description in
the specifications (EBU Tech 3341 v4.0, 2016, table 1; EBU Tech 3342 v3.0, 2016, table 1).
All loudness cases are 1 kHz sines at 48 kHz whose levels are peak dBFS per channel; a
stereo sine at -23 dBFS reads -23.0 LUFS. Where the text describes a case's purpose and
expected reading but not every timing detail (cases 10, 11, 13, 14 and 20-23), the
docstring of the builder says what we chose; the expected readings are the standard's.

Each builder returns float64 audio ``(1, channels, time)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SR = 48000


def tone(segments: list[tuple[float, float]], *, channels: int = 2, sr: int = SR,
         freq: float = 1000.0) -> Tensor:
    """A continuous-phase sine whose peak level steps through ``(dBFS, seconds)`` segments."""
    lengths = [round(sec * sr) for _, sec in segments]
    gain = np.concatenate([np.full(n, 10.0 ** (db / 20.0)) for (db, _), n in zip(segments, lengths,
                                                                                  strict=True)])
    t = np.arange(gain.size) / sr
    x = gain * np.sin(2 * math.pi * freq * t)
    return torch.from_numpy(np.tile(x, (channels, 1)))[None]


def silence(seconds: float, channels: int = 2, sr: int = SR) -> Tensor:
    return torch.zeros(1, channels, round(seconds * sr), dtype=torch.float64)


# ---------------------------------------------------------------- Tech 3341: loudness
# Case -> (audio, expected integrated loudness in LUFS); tolerance +-0.1 LU in the spec.
def case_3341_integrated(case: int) -> tuple[Tensor, float]:
    if case == 1:
        return tone([(-23.0, 20.0)]), -23.0
    if case == 2:
        return tone([(-33.0, 20.0)]), -33.0
    if case == 3:
        return tone([(-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0)]), -23.0
    if case == 4:
        levels = [(-72.0, 10.0), (-36.0, 10.0), (-23.0, 60.0), (-36.0, 10.0), (-72.0, 10.0)]
        return tone(levels), -23.0
    if case == 5:
        return tone([(-26.0, 20.0), (-20.0, 20.1), (-26.0, 20.0)]), -23.0
    if case == 6:
        return five_channel(), -23.0
    raise KeyError(case)


def five_channel(with_lfe: bool = False) -> Tensor:
    """Case 6: L and R at -28 dBFS, C at -24 dBFS, Ls and Rs at -30 dBFS, 20 s (order
    L R C Ls Rs; the surrounds carry BS.1770's +1.5 dB weight).

    ``with_lfe`` adds a full-scale LFE channel in position 4 (L R C LFE Ls Rs), which a
    BS.1770 meter must ignore, so the reading stays -23.0.
    """
    front = torch.cat([tone([(-28.0, 20.0)]), tone([(-24.0, 20.0)], channels=1)], dim=1)
    rear = tone([(-30.0, 20.0)], channels=2)
    parts = [front, rear]
    if with_lfe:
        parts = [front, tone([(0.0, 20.0)], channels=1, freq=60.0), rear]
    return torch.cat(parts, dim=1)


def case_3341_9() -> Tensor:
    """Short-term: 1.34 s at -20 dBFS then 1.66 s at -30 dBFS, five times; S = -23.0 +-0.1
    once 3 s have passed (every 3 s window holds one whole period)."""
    return tone([(-20.0, 1.34), (-30.0, 1.66)] * 5)


def case_3341_12() -> Tensor:
    """Momentary: 0.18 s at -20 dBFS then 0.22 s at -30 dBFS, 25 times; M = -23.0 +-0.1
    once 1 s has passed."""
    return tone([(-20.0, 0.18), (-30.0, 0.22)] * 25)


def burst_onsets(n: int = 20) -> list[float]:
    """Onsets for cases 10 and 13: steps of 5 ms that sweep a 100 ms meter period, so the
    maximum must be caught wherever a burst starts relative to the meter's updates."""
    return [1.0 + 0.005 * k for k in range(1, n + 1)]


def case_3341_10(k: int) -> Tensor:
    """Short-term maximum: a 3 s burst at -23 dBFS after ``burst_onsets()[k]`` s of
    silence and before 1 s more; max S = -23.0 +-0.1."""
    onset = burst_onsets()[k]
    return torch.cat([silence(onset), tone([(-23.0, 3.0)]), silence(1.0)], dim=-1)


def case_3341_13(k: int) -> Tensor:
    """Momentary maximum: a 0.4 s burst at -23 dBFS after ``burst_onsets()[k]`` s of
    silence; max M = -23.0 +-0.1."""
    onset = burst_onsets()[k]
    return torch.cat([silence(onset), tone([(-23.0, 0.4)]), silence(1.0)], dim=-1)


def bursts_sequence(burst_s: float, gap_s: float) -> tuple[Tensor, list[tuple[int, int, float]]]:
    """Cases 11 (3 s bursts) and 14 (0.4 s bursts): the 20 bursts of cases 10/13 in one
    file, separated by silence, at levels -38 .. -19 dBFS. Returns the audio and, per
    burst, ``(start_sample, end_sample, level_dbfs)``; the max reading over each burst's
    span equals its level +-0.1 LU."""
    parts, spans, pos = [], [], 0
    for k, onset in enumerate(burst_onsets()):
        level = -38.0 + k
        gap = silence(gap_s + onset - 1.0)
        burst = tone([(level, burst_s)])
        parts += [gap, burst]
        pos += gap.shape[-1]
        spans.append((pos, pos + burst.shape[-1], level))
        pos += burst.shape[-1]
    parts.append(silence(gap_s))
    return torch.cat(parts, dim=-1), spans


# ---------------------------------------------------------------- Tech 3341: true peak
TRUE_PEAK_TOLERANCE = (-0.4, 0.2)  # dB, Tech 3341 cases 15-23


def _ideal_true_peak(x: np.ndarray, oversample: int = 32) -> float:
    # The band-limited reconstruction's maximum, by zero-padding the spectrum of the signal
    # with silence around it (a converter sees the same continuation).
    pad = np.pad(x, (4096, 4096))
    n = pad.size
    spec = np.fft.rfft(pad)
    up = np.fft.irfft(spec, n * oversample) * oversample
    return float(np.abs(up).max())


def case_3341_true_peak(case: int) -> tuple[Tensor, int, float]:
    """Cases 15-23: ``(audio (1, 2, T), sample_rate, expected dBTP)``.

    15-18: 48 kHz sine at fs/4 (12 kHz), true peak -6 dBTP, starting phase 0, 45, 60 and
    67.5 degrees: the samples fall on the crest, 3.0 dB, 1.25 dB and 0.69 dB below it.
    19: as 16 at +3 dBTP (samples at 0 dBFS, the inter-sample peak above full scale).
    20-23 (our own signals for the same purpose, 0 dBTP each, scaled so the ideal
    band-limited reconstruction peaks at exactly 0 dBFS): 20, 48 kHz sine at 0.4 fs
    (19.2 kHz) with samples off the crest; 21, 44.1 kHz 5 kHz sine (drifting sample
    phase); 22, 48 kHz band-limited pulse centred between two samples; 23, 44.1 kHz sum of
    7 kHz and 11 kHz sines.
    """
    if 15 <= case <= 19:
        phase = {15: 0.0, 16: 45.0, 17: 60.0, 18: 67.5, 19: 45.0}[case]
        level = 3.0 if case == 19 else -6.0
        n = np.arange(SR)
        x = 10 ** (level / 20) * np.sin(math.pi / 2 * n + math.radians(phase))
        return torch.from_numpy(np.tile(x, (2, 1)))[None], SR, level
    if case == 20:
        sr, n = 48000, np.arange(48000)
        x = np.sin(2 * math.pi * 0.4 * n + 0.3)
    elif case == 21:
        sr, n = 44100, np.arange(44100)
        x = np.sin(2 * math.pi * 5000 / 44100 * n + 0.1)
    elif case == 22:
        sr = 48000
        d = np.arange(-480, 480) + 0.5
        x = 0.8 * np.sinc(0.8 * d) * np.kaiser(960, 8.0)
    elif case == 23:
        sr, n = 44100, np.arange(44100)
        x = 0.5 * np.sin(2 * math.pi * 7000 / sr * n)
        x = x + 0.5 * np.sin(2 * math.pi * 11000 / sr * n + 1.0)
    else:
        raise KeyError(case)
    x = x / _ideal_true_peak(x)
    return torch.from_numpy(np.tile(x, (2, 1)))[None], sr, 0.0


# ---------------------------------------------------------------- Tech 3342: loudness range
def case_3342(case: int) -> tuple[Tensor, float]:
    """Cases 1-4: ``(audio, expected LRA in LU)``; tolerance +-1 LU."""
    if case == 1:
        return tone([(-20.0, 20.0), (-30.0, 20.0)]), 10.0
    if case == 2:
        return tone([(-20.0, 20.0), (-15.0, 20.0)]), 5.0
    if case == 3:
        return tone([(-40.0, 20.0), (-20.0, 20.0)]), 20.0
    if case == 4:
        levels = [(-50.0, 20.0), (-35.0, 20.0), (-20.0, 20.0), (-35.0, 20.0), (-50.0, 20.0)]
        return tone(levels), 15.0
    raise KeyError(case)
