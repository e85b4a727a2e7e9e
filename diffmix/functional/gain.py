"""Gain, polarity, constant-power pan, balance and mid/side width.

All functions take ``(batch, channels, time)`` audio and are differentiable in their
parameters and the input (polarity excepted: it is a switch). CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmix.params import ParamValue, per_sample


def db_to_amp(db: Tensor) -> Tensor:
    """Decibels to linear amplitude, ``10 ** (db / 20)``."""
    return torch.pow(10.0, db / 20.0)


def amp_to_db(amp: Tensor, floor: float = 1e-12) -> Tensor:
    """Linear amplitude to decibels, clamped at ``floor`` to stay finite on silence."""
    return 20.0 * torch.log10(amp.clamp_min(floor))


def gain(x: Tensor, sample_rate: int, *, gain_db: ParamValue) -> Tensor:
    """Scale by ``gain_db`` decibels.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> gain(torch.ones(1, 1, 3), 44100, gain_db=-6.0206).round(decimals=4).tolist()
    [[[0.5, 0.5, 0.5]]]
    """
    return x * db_to_amp(per_sample(gain_db, x, name="gain_db", effect="gain"))


def polarity(x: Tensor, sample_rate: int, *, invert: bool | list[bool]) -> Tensor:
    """Invert the polarity of all channels (``invert=True``) or of chosen ones (one bool each).

    Not differentiable in ``invert`` (a switch); differentiable in ``x``.
    """
    flags = [invert] * x.shape[1] if isinstance(invert, bool) else list(invert)
    if len(flags) != x.shape[1]:
        raise ValueError(f"polarity: {len(flags)} flags for {x.shape[1]} channels")
    sign = torch.tensor([-1.0 if f else 1.0 for f in flags], dtype=x.dtype, device=x.device)
    return x * sign.view(1, -1, 1)


def _pan_angles(position: Tensor) -> tuple[Tensor, Tensor]:
    theta = (position + 1.0) * (math.pi / 4.0)
    return torch.cos(theta), torch.sin(theta)


def pan(
    x: Tensor, sample_rate: int, *, pan: ParamValue, mono_items: Tensor | None = None
) -> Tensor:
    """Constant-power pan to stereo; ``pan`` from -1 (hard left) to 1 (hard right).

    A mono source is placed at ``pan`` with gains ``cos θ, sin θ`` (θ = (pan+1)·π/4), so
    ``L² + R² = x²`` everywhere, -3 dB per side at centre. A stereo source keeps its image
    at ``pan = 0``; moving right, the left channel travels to the right (reaching it at
    ``pan = 1``) while the right channel stays put, and vice versa. Each input channel's
    power is preserved. Gradients are finite at both extremes.

    ``mono_items`` (bool ``(B,)``) marks stereo-shaped items that are really mono sources
    (dual-mono stems batched with stereo ones): those are panned from channel 0 with the
    mono law.

    Shape:
        ``(B, 1 or 2, T)`` -> ``(B, 2, T)``.

    >>> y = pan(torch.ones(1, 1, 1), 44100, pan=0.0)
    >>> [round(v, 4) for v in y.flatten().tolist()]
    [0.7071, 0.7071]
    """
    p = per_sample(pan, x, name="pan", effect="pan")
    if x.shape[1] == 1:
        return _pan_mono(x, p)
    if x.shape[1] != 2:
        raise ValueError(f"pan: input must have 1 or 2 channels, got {x.shape[1]}")
    if mono_items is not None:
        mono = mono_items.view(-1, 1, 1).to(x.device)
        return torch.where(mono, _pan_mono(x[:, :1], p), _pan_stereo(x, p))
    return _pan_stereo(x, p)


def _pan_mono(x: Tensor, p: Tensor) -> Tensor:
    gl, gr = _pan_angles(p[:, :1])
    return torch.cat([x * gl, x * gr], dim=1)


def _pan_stereo(x: Tensor, p: Tensor) -> Tensor:
    pos_left = -1.0 + 2.0 * torch.relu(p)
    pos_right = 1.0 - 2.0 * torch.relu(-p)
    ll, lr = _pan_angles(pos_left[:, :1])
    rl, rr = _pan_angles(pos_right[:, -1:])
    left, right = x[:, :1], x[:, 1:]
    return torch.cat([left * ll + right * rl, left * lr + right * rr], dim=1)


def balance(x: Tensor, sample_rate: int, *, balance: ParamValue) -> Tensor:
    """Constant-power stereo balance: unity at 0, ``√2·cos θ, √2·sin θ`` channel gains.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.
    """
    b = per_sample(balance, x, name="balance", effect="balance")
    gl, gr = _pan_angles(b[:, :1])
    return torch.cat([x[:, :1] * gl, x[:, 1:] * gr], dim=1) * math.sqrt(2.0)


def mid_side(x: Tensor) -> Tensor:
    """``(B, 2, T)`` left/right -> ``(B, 2, T)`` mid/side with ``M = (L+R)/2``, ``S = (L-R)/2``."""
    left, right = x[:, :1], x[:, 1:]
    return torch.cat([(left + right) * 0.5, (left - right) * 0.5], dim=1)


def left_right(ms: Tensor) -> Tensor:
    """Inverse of :func:`mid_side`."""
    mid, side = ms[:, :1], ms[:, 1:]
    return torch.cat([mid + side, mid - side], dim=1)


def width(x: Tensor, sample_rate: int, *, width: ParamValue) -> Tensor:
    """Mid/side stereo width: 0 mono, 1 unchanged, 2 wide.

    The side channel is scaled by ``width`` and both mid and side by
    ``sqrt(2 / (1 + width²))``, which keeps the power of decorrelated stereo material
    unchanged at every width.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.
    """
    w = per_sample(width, x, name="width", effect="width")[:, :1]
    comp = torch.sqrt(2.0 / (1.0 + w * w))
    ms = mid_side(x)
    return left_right(torch.cat([ms[:, :1] * comp, ms[:, 1:] * (w * comp)], dim=1))
