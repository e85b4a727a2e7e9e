"""Chorus and phaser, rendered without a loop over samples.

**Chorus.** Each voice reads the input through a delay ``d(t) = centre · (1 + depth ·
sin(2π·rate·t + φ))`` with linear interpolation (a gather, so the read position, and with
it ``rate_hz``, ``depth`` and ``centre_ms``, is differentiable). Feedback
``w(t) = x(t - d(t)) + g · w(t - d(t))`` is ``w = (I - gS)^-1 S x`` for the operator
``S f(t) = f(t - d(t))``; its series ``Σ g^k S^k`` factors into
``Π_j (I + g^(2^j) S^(2^j))``, and ``S^(2m)`` is again a time-varying delay whose time
composes as ``τ_2m(t) = τ_m(t) + τ_m(t - τ_m(t))``. So ``J`` gathers render ``2^J``
recirculations exactly (up to the interpolation every pass of a real loop also makes);
the series is cut where ``|g|^(2^J)`` is 80 dB down.

**Phaser.** ``stages`` first-order all-passes whose break frequency sweeps as
``centre · 2^(depth · sin(2π·rate·t))`` (±1 octave at depth 1), with feedback around the
cascade: ``W = A^N / (1 - g·A^N)`` and output ``x + mix·(W x - x)`` (mix 0.5 gives the
deepest notches). The sweep is slow next to the signal, so the time-varying filter is
rendered frame by frame: Hann-windowed frames (1024 samples, hop 256, summing to a
constant) are filtered by the response of their own instant, in an FFT four times the
frame, and overlap-added. Inside each frame the recursion is evaluated exactly with an
exponential window (see :mod:`diffmix.functional.delay`), so the long low-frequency group
delay of the all-passes does not wrap around.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

from diffmix.params import ParamValue, broadcast_param

CHORUS_FEEDBACK_MAX = 0.7
PHASER_STAGES = (2, 4, 6, 8, 12)
_FRAME, _HOP, _NFFT = 1024, 256, 4096


def _lfo_phase(x: Tensor, channels: int, voices: int) -> Tensor:
    """Start phases ``(1, V, C, 1)``: voices spread over a cycle, stereo in quadrature."""
    v = torch.arange(voices, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) / voices
    c = torch.arange(channels, dtype=x.dtype, device=x.device).view(1, 1, -1, 1) * 0.25
    return 2.0 * math.pi * (v + c)


def _read(sig: Tensor, pos: Tensor, *, edge: bool = False) -> Tensor:
    """Linear-interpolated ``sig[..., pos]``; differentiable in ``pos``.

    Before the start it reads zero, or with ``edge`` the first value. ``sig`` and ``pos``
    broadcast on the leading dims; the last dim is time.
    """
    sig, pos = torch.broadcast_tensors(sig, pos)
    n = sig.shape[-1]
    i0 = torch.floor(pos.detach())
    frac = pos - i0
    i0 = i0.long()
    if edge:
        i0 = i0.clamp(-1, n - 1)
        frac = torch.where(i0 < 0, torch.ones_like(frac), frac)
    v0 = torch.gather(sig, -1, i0.clamp(0, n - 1)) * (i0 >= 0)
    v1 = torch.gather(sig, -1, (i0 + 1).clamp(0, n - 1)) * (i0 + 1 >= 0)
    return v0 + frac * (v1 - v0)


def _doublings(feedback: ParamValue) -> int:
    """Doubling steps so that the echoes left out are 80 dB down: ``|g|^(2^J) <= 1e-4``."""
    bound = abs(float(feedback)) if isinstance(feedback, (int, float)) else CHORUS_FEEDBACK_MAX
    if bound == 0.0:
        return 0
    terms = math.log(1e-4) / math.log(min(bound, CHORUS_FEEDBACK_MAX))
    return max(1, math.ceil(math.log2(terms)))


def chorus(
    x: Tensor,
    sample_rate: int,
    *,
    rate_hz: ParamValue = 0.8,
    depth: ParamValue = 0.3,
    centre_ms: ParamValue = 12.0,
    feedback: ParamValue = 0.0,
    mix: ParamValue = 0.5,
    voices: int = 2,
) -> Tensor:
    """Chorus: ``voices`` modulated delay lines, optionally recirculating.

    Args:
        x: audio ``(B, C, T)``. With two channels the right LFO runs a quarter cycle
            ahead of the left.
        sample_rate: Hz.
        rate_hz: LFO rate, Hz. Default 0.8.
        depth: modulation as a fraction of the centre delay, 0 to 1 (< 1 keeps the delay
            positive). Default 0.3.
        centre_ms: mean delay, ms. Default 12.
        feedback: recirculation gain, ``|feedback| <= 0.7``. Default 0.
        mix: 0 dry, 1 wet only. Default 0.5.
        voices: number of delay lines, LFO phases spread evenly. Default 2.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        ``x + mix * (wet - x)``, the wet signal being the mean of the voices.

    Differentiable in ``x`` and every parameter. CPU and CUDA. With a tensor
    ``feedback`` the series has 31 recirculations in 5 doublings (past the -80 dB point
    of |g| = 0.7); a float ``feedback`` sets its own count (none for 0).

    >>> chorus(torch.randn(1, 2, 2000), 44100, depth=0.5, voices=3).shape
    torch.Size([1, 2, 2000])
    """
    effect = "chorus"
    if isinstance(voices, bool) or not isinstance(voices, int) or not 1 <= voices <= 8:
        raise ValueError(f"{effect}: voices must be an integer from 1 to 8, got {voices!r}")
    n, channels = x.shape[-1], x.shape[1]

    def param(value: ParamValue, name: str) -> Tensor:
        return broadcast_param(value, x, name=name, effect=effect).unsqueeze(1).unsqueeze(-1)

    rate, dep, centre = param(rate_hz, "rate_hz"), param(depth, "depth"), param(centre_ms, "centre_ms")
    g = param(feedback, "feedback")
    t = torch.arange(n, dtype=x.dtype, device=x.device)
    lfo = torch.sin(2.0 * math.pi * rate * (t / sample_rate) + _lfo_phase(x, channels, voices))
    d = centre * (sample_rate / 1000.0) * (1.0 + dep * lfo)  # (B, V, C, T) samples
    src = x.unsqueeze(1)
    # (I - gS)^-1 S x with S the modulated delay, as the product of (I + g^(2^j) S^(2^j)):
    # each factor is one gather of the running sum through the delay tau_(2^j), and the
    # delays double by composition, tau_2m(t) = tau_m(t) + tau_m(t - tau_m(t)).
    tau = d
    wet = _read(src, t - d)
    gain = g
    for level in range(_doublings(feedback)):
        wet = wet + gain * _read(wet, t - tau)
        if level + 1 < _doublings(feedback):
            # Before the start the delay only has to exceed t, which reading the edge keeps.
            tau = tau + _read(tau, t - tau, edge=True)
            gain = gain * gain
    wet = wet.mean(1)
    m = broadcast_param(mix, x, name="mix", effect=effect).unsqueeze(-1)
    return x + m * (wet - x)


def _frames(x: Tensor) -> tuple[Tensor, int]:
    """Hann-windowed frames ``(B, C, F, FRAME)`` covering ``x`` (padded), and the pad."""
    pad = _FRAME - _HOP
    xp = nnf.pad(x, (pad, pad + (-x.shape[-1]) % _HOP))
    window = torch.hann_window(_FRAME, periodic=True, dtype=x.dtype, device=x.device)
    # Periodic Hann at hop FRAME/4 sums to 2: halve it so the frames add up to one.
    return xp.unfold(-1, _FRAME, _HOP) * (0.5 * window), pad


def phaser(
    x: Tensor,
    sample_rate: int,
    *,
    rate_hz: ParamValue = 0.5,
    depth: ParamValue = 0.8,
    centre_hz: ParamValue = 800.0,
    feedback: ParamValue = 0.3,
    mix: ParamValue = 0.5,
    stages: int = 4,
) -> Tensor:
    """Phaser: swept all-pass cascade with feedback, mixed with the dry signal.

    Args:
        x: audio ``(B, C, T)``; with two channels the right LFO runs a quarter cycle ahead.
        sample_rate: Hz.
        rate_hz: LFO rate, Hz (up to about 20 Hz; the filter updates every 256 samples).
            Default 0.5.
        depth: sweep in octaves either side of ``centre_hz``, 0 to 1. Default 0.8.
        centre_hz: centre break frequency of the all-passes, Hz. Default 800.
        feedback: gain around the cascade, ``|feedback| < 1``. Default 0.3.
        mix: 0 dry, 0.5 deepest notches, 1 all-pass only. Default 0.5.
        stages: number of first-order all-passes: 2, 4, 6, 8 or 12. Default 4.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        ``x + mix * (W x - x)``.

    Differentiable in ``x`` and every parameter. CPU and CUDA.

    >>> phaser(torch.randn(2, 1, 3000), 44100, stages=6).shape
    torch.Size([2, 1, 3000])
    """
    effect = "phaser"
    if stages not in PHASER_STAGES or isinstance(stages, bool):
        raise ValueError(f"{effect}: stages must be one of {list(PHASER_STAGES)}, got {stages!r}")
    n, channels = x.shape[-1], x.shape[1]

    def param(value: ParamValue, name: str) -> Tensor:
        return broadcast_param(value, x, name=name, effect=effect).unsqueeze(-1)

    frames, pad = _frames(x)
    n_frames = frames.shape[-2]
    # Each frame uses the LFO at its centre.
    t_mid = (torch.arange(n_frames, dtype=x.dtype, device=x.device) * _HOP + (_FRAME // 2 - pad))
    phase = 2.0 * math.pi * param(rate_hz, "rate_hz") * (t_mid / sample_rate)
    phase = phase + _lfo_phase(x, channels, 1)[0]
    fc = param(centre_hz, "centre_hz") * torch.exp2(param(depth, "depth") * torch.sin(phase))
    fc = fc.clamp(max=0.45 * sample_rate)
    tn = torch.tan(math.pi * fc / sample_rate)
    a = ((tn - 1.0) / (tn + 1.0)).unsqueeze(-1)  # (B, C, F, 1)

    # Exponential window: 40 dB of extra damping over the zero padding of each frame.
    alpha = 40.0 / 20.0 * math.log(10.0) / (_NFFT - _FRAME)
    k = torch.arange(_NFFT // 2 + 1, dtype=torch.float64, device=x.device)
    z_1 = torch.polar(
        torch.full_like(k, math.exp(-alpha)), -2.0 * math.pi * k / _NFFT
    ).to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    ap = ((a + z_1) / (1.0 + a * z_1)) ** stages
    g = param(feedback, "feedback").unsqueeze(-1)
    h = ap / (1.0 - g * ap)

    tw = torch.arange(_NFFT, dtype=x.dtype, device=x.device) * alpha
    spec = torch.fft.rfft(frames * torch.exp(-tw[:_FRAME]), _NFFT)
    out = torch.fft.irfft(spec * h, _NFFT) * torch.exp(tw)  # (B, C, F, NFFT)
    # Overlap-add: each frame's FFT block is NFFT / HOP hops long; add hop-sized slices.
    reach = _NFFT // _HOP
    seg = out.reshape(*out.shape[:-2], n_frames, reach, _HOP)
    acc = out.new_zeros(*out.shape[:-2], n_frames + reach - 1, _HOP)
    for j in range(reach):
        acc[..., j : j + n_frames, :] += seg[..., j, :]
    wet = acc.flatten(-2)[..., pad : pad + n]
    m = param(mix, "mix")
    return x + m * (wet - x)
