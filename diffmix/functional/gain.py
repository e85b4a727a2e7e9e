"""Gain, polarity, constant-power pan, balance and mid/side width, and the dB/amplitude
conversions.

The effects take ``(batch, channels, time)`` audio and are differentiable in their
parameters and the input (polarity excepted: it is a switch); the conversions take any
tensor. CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmix.params import ParamValue, per_sample


def db_to_amp(db: Tensor) -> Tensor:
    """Decibels to linear amplitude, ``10 ** (db / 20)``."""
    return torch.pow(10.0, db / 20.0)


def amp_to_db(amp: Tensor) -> Tensor:
    """Linear amplitude to decibels, ``20 log10(amp)``: ``-inf`` (not NaN) for zero.

    For meters and reports, where silence reads ``-inf``; a loss wants
    :func:`amp_to_db_floored`.

    >>> amp_to_db(torch.tensor([1.0, 0.1, 0.0])).tolist()
    [0.0, -20.0, -inf]
    """
    return 20.0 * torch.log10(amp)


def amp_to_db_floored(amp: Tensor, floor: float = 1e-12) -> Tensor:
    """Linear amplitude to decibels, clamped at ``floor`` to stay finite on silence (and
    keep gradients finite): ``-240`` dB for zero at the default floor."""
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


def apply_matrix(x: Tensor, matrix: Tensor) -> Tensor:
    """Mix channels: ``y[b, i] = sum_j matrix[b, i, j] x[b, j]``.

    One batched matrix product: it reads ``x`` once and writes the output once, and its
    backward is two more products, where slicing channels apart and concatenating them
    back costs a zero-filled gradient buffer per slice.

    Shape:
        ``x`` ``(B, C, T)``, ``matrix`` ``(B|1, C', C)`` -> ``(B, C', T)``.

    >>> apply_matrix(torch.ones(1, 2, 3), torch.tensor([[[1.0, 1.0], [1.0, -1.0]]]))[0, :, 0]
    tensor([2., 0.])
    """
    m = matrix.to(x.dtype)
    b, c, t = x.shape
    if m.shape[0] != b:
        m = m.expand(b, *m.shape[1:])
    if c == 1:  # a column: a broadcast multiply is the same product with no gemm set-up
        return x * m
    return torch.bmm(m, x)


def pan_matrix(
    pan: ParamValue, x: Tensor, *, mono_items: Tensor | None = None
) -> Tensor:
    """The gains of :func:`pan` as a channel matrix ``(B|1, 2, C)`` for ``x``'s ``C``.

    Differentiable in ``pan``.
    """
    p = per_sample(pan, x, name="pan", effect="pan")[..., 0]  # (B|1, C|1)
    gl, gr = _pan_angles(p[:, :1])
    if x.shape[1] == 1:
        return torch.stack([gl, gr], dim=1)  # (B|1, 2, 1)
    if x.shape[1] != 2:
        raise ValueError(f"pan: input must have 1 or 2 channels, got {x.shape[1]}")
    # A stereo source: each input channel travels on its own constant-power arc.
    ll, lr = _pan_angles(-1.0 + 2.0 * torch.relu(p[:, :1]))
    rl, rr = _pan_angles(1.0 - 2.0 * torch.relu(-p[:, -1:]))
    stereo = torch.stack([torch.cat([ll, rl], 1), torch.cat([lr, rr], 1)], dim=1)
    if mono_items is None:
        return stereo
    zero = torch.zeros_like(gl)
    mono = torch.stack([torch.cat([gl, zero], 1), torch.cat([gr, zero], 1)], dim=1)
    flags = mono_items.to(device=x.device, dtype=torch.bool).view(-1, 1, 1)
    return torch.where(flags, mono, stereo)


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
    return apply_matrix(x, pan_matrix(pan, x, mono_items=mono_items))


def balance_matrix(balance: ParamValue, x: Tensor) -> Tensor:
    """The gains of :func:`balance` as a diagonal channel matrix ``(B|1, 2, 2)``."""
    if x.shape[1] != 2:
        raise ValueError(f"balance: input must have 2 channels, got {x.shape[1]}")
    b = per_sample(balance, x, name="balance", effect="balance")[..., 0]
    gl, gr = _pan_angles(b[:, :1])
    return torch.diag_embed(torch.cat([gl, gr], 1) * math.sqrt(2.0))


def balance(x: Tensor, sample_rate: int, *, balance: ParamValue) -> Tensor:
    """Constant-power stereo balance: unity at 0, ``√2·cos θ, √2·sin θ`` channel gains.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.
    """
    return apply_matrix(x, balance_matrix(balance, x))


_MS = ((0.5, 0.5), (0.5, -0.5))
_LR = ((1.0, 1.0), (1.0, -1.0))


def mid_side(x: Tensor) -> Tensor:
    """``(B, 2, T)`` left/right -> ``(B, 2, T)`` mid/side with ``M = (L+R)/2``, ``S = (L-R)/2``."""
    return apply_matrix(x, torch.tensor([_MS], dtype=x.dtype, device=x.device))


def left_right(ms: Tensor) -> Tensor:
    """Inverse of :func:`mid_side`."""
    return apply_matrix(ms, torch.tensor([_LR], dtype=ms.dtype, device=ms.device))


def width_matrix(width: ParamValue, x: Tensor) -> Tensor:
    """The mid/side :func:`width` as one channel matrix ``(B|1, 2, 2)`` on left/right:
    ``LR · diag(c, w c) · MS`` with ``c = sqrt(2 / (1 + w²))``. Differentiable in ``width``."""
    if x.shape[1] != 2:
        raise ValueError(f"width: input must have 2 channels, got {x.shape[1]}")
    w = per_sample(width, x, name="width", effect="width")[:, :1, 0]  # (B|1, 1)
    comp = torch.sqrt(2.0 / (1.0 + w * w))
    same = 0.5 * comp * (1.0 + w)  # L <- L and R <- R
    cross = 0.5 * comp * (1.0 - w)  # L <- R and R <- L
    return torch.stack([torch.cat([same, cross], 1), torch.cat([cross, same], 1)], dim=1)


def width(x: Tensor, sample_rate: int, *, width: ParamValue) -> Tensor:
    """Mid/side stereo width: 0 mono, 1 unchanged, 2 wide.

    The side channel is scaled by ``width`` and both mid and side by
    ``sqrt(2 / (1 + width²))``, which keeps the power of decorrelated stereo material
    unchanged at every width.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.
    """
    return apply_matrix(x, width_matrix(width, x))
