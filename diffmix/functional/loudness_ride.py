"""Loudness ride: a slow gain that scales a signal's short-term loudness range.

A broadband level detector (a compressor's) follows the waveform's level; what EBU Tech
3342's loudness range (LRA) measures is the K-weighted short-term loudness (3 s windows
every 100 ms), which drifts with what plays (a bass line entering moves it, a hi-hat
hardly). This ride reads exactly the meter's windows (:func:`~diffmix.functional.loudness.
loudness_range`'s) and moves each window's loudness toward the median of the gated ones::

    d_j  = clip(L_j, P10, P95) - P50          (L_j: window j's short-term loudness, LUFS)
    g_j  = (range_scale - 1) * d_j - max_k (range_scale - 1) * d_k     (dB, window j's centre)

with the percentiles taken over the windows the LRA's gates keep. Clipping to the LRA's
own percentiles makes the map ``L -> L + g`` (for ``range_scale`` >= 0) monotone and
exactly ``range_scale`` times the range between P10 and P95, so were the gain constant
over each window the output's LRA would be ``range_scale`` times the input's; quiet
windows (under P10: fades, silence) get the gain of P10 and loud ones that of P95, never
more. The constant ``max_k`` makes the highest gain 0 dB: the ride only turns down, so
after a limiter it cannot push a peak over the ceiling (a constant changes no range; a
loudness solve downstream of it, or the limiter's drive before it, gives the level
back). The gain moves linearly between window centres (100 ms apart), held before the
first and after the last; its slope is that of the 3 s loudness, so it rides, it does
not pump. The ride is non-causal (it reads the whole signal): an offline mixing stage.

Because the gain varies within a window, a window's output loudness is a power average
of the gains around it, not its own: on music the open-loop gain above gives about
0.5-0.75 of the asked change. A ``range_scale`` below 0 over-corrects each window (a
louder window ends up turned down by more than its excess), which is what a loudness
that moves within 3 s needs to be levelled; there the map is no longer monotone window
by window, and the smoothing is what keeps the output in order. So a caller that needs
an exact LRA solves ``range_scale`` on the output (secant steps on the measured LRA,
:func:`diffmix.mixing.style_master.ride_stage`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffmix.checks import check_audio, check_sample_rate
from diffmix.functional.gain import db_to_amp
from diffmix.functional.loudness import (
    ABSOLUTE_GATE_LUFS,
    LRA_RELATIVE_GATE_LU,
    LUFS_OFFSET,
    _gate,
    _masked_quantile,
    _window_power,
    block_samples,
    meter_unit,
)
from diffmix.params import ParamValue, broadcast_param

LOW_Q, CENTRE_Q, HIGH_Q = 0.10, 0.50, 0.95  # EBU Tech 3342's percentiles, and the median


def ride_gain_db(x: Tensor, sample_rate: int, *, range_scale: ParamValue,
                 channel_weights: Sequence[float] | None = None) -> Tensor:
    """The ride's gain per window, at the windows' centres, in dB (at most 0).

    Args:
        x: audio; sample_rate: Hz; range_scale: see :func:`loudness_ride`.

    Shape:
        ``(B, C, T)`` -> ``(B, C|1, N)``, N the meter's short-term windows (one when ``x`` is
        shorter than 3.1 s: then zero). Window ``j`` covers samples
        ``[j*hop, j*hop + 30*hop)``, ``hop`` = 100 ms.
    """
    sr = check_sample_rate(sample_rate, "loudness_ride")
    hop, _, short = block_samples(sr)
    power = _window_power(x, sr, short, hop // meter_unit(sr), channel_weights, "loudness_ride")
    keep = _gate(power, ABSOLUTE_GATE_LUFS, LRA_RELATIVE_GATE_LU)
    lufs = LUFS_OFFSET + 10.0 * torch.log10(power.clamp_min(1e-300))
    low, centre, high = (_masked_quantile(lufs, keep, q)[:, None] for q in (LOW_Q, CENTRE_Q, HIGH_Q))
    dev = torch.minimum(torch.maximum(lufs, low), high) - centre  # (B, N); 0 without gated windows
    scale = broadcast_param(range_scale, x, name="range_scale", effect="loudness_ride").to(dev.dtype)
    gain = (scale.unsqueeze(-1) - 1.0) * dev.unsqueeze(1)
    return gain - gain.amax(-1, keepdim=True)


def loudness_ride(x: Tensor, sample_rate: int, *, range_scale: ParamValue,
                  channel_weights: Sequence[float] | None = None) -> Tensor:
    """Scale the short-term loudness range by ``range_scale`` with a slow gain (see the
    module's docstring).

    Args:
        x: audio.
        sample_rate: Hz.
        range_scale: how far each 3 s window's loudness is moved from the median: 1 leaves
            the signal as it is, 0.5 halves its distance to the median (a leveller), 2
            doubles it, below 0 over-corrects (see above); then the whole curve is lowered
            so its highest point is 0 dB (the ride only turns down). A float, ``(B,)`` or
            ``(B, C)``.
        channel_weights: BS.1770 channel weights for the loudness (the default for 1, 2,
            3, 5, 6 channels); one gain is read for all channels.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``. Under 3.1 s (one short-term window) nothing to ride:
        the output is the input.

    Returns:
        The ridden audio, ``x``'s dtype.

    Differentiable in ``x`` and ``range_scale`` (the gates' decisions carry no gradient,
    as in the meter). CPU and CUDA; no host sync beyond the meters' NaN/Inf check of the
    input (off under :func:`~diffmix.checks.input_checks` ``(False)``).

    References:
        EBU Tech 3342 (2016), loudness range; ITU-R BS.1770 K-weighting.

    >>> sr = 8000
    >>> t = torch.arange(12 * sr) / sr
    >>> swell = 10 ** ((-20 + 6 * torch.sin(2 * torch.pi * t / 12)) / 20)
    >>> x = (swell * torch.sin(2 * torch.pi * 997 * t)).expand(1, 2, -1)
    >>> loudness_ride(x, sr, range_scale=0.5).shape
    torch.Size([1, 2, 96000])
    """
    check_audio(x, "loudness_ride")
    sr = check_sample_rate(sample_rate, "loudness_ride")
    hop, _, short = block_samples(sr)
    t = x.shape[-1]
    gain = ride_gain_db(x, sr, range_scale=range_scale, channel_weights=channel_weights)
    n = gain.shape[-1]
    if n < 2:
        return x * db_to_amp(gain.to(x.dtype))
    # Sample i between window centres k and k+1 (window j's centre: j*hop + (short-1)/2).
    pos = (torch.arange(t, device=x.device, dtype=torch.float64) - (short - 1) / 2) / hop
    pos = pos.clamp(0.0, n - 1)
    k = pos.floor().long().clamp(max=n - 2)
    w = (pos - k).to(gain.dtype)
    curve = gain[..., k] + w * (gain[..., k + 1] - gain[..., k])
    return x * db_to_amp(curve).to(x.dtype)
