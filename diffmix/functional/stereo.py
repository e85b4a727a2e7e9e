"""Mastering stereo tools: mid/side width per band, and a mono-compatibility check.

Both split the signal into low, mid and high bands with fourth-order Linkwitz-Riley
crossovers (:func:`diffmix.functional.filters.linkwitz_riley_coeffs`) arranged so that the
three bands sum to an all-pass: ``low = LP1·AP2``, ``mid = HP1·LP2``, ``high = HP1·HP2``
with ``AP2 = LP2 + HP2``, hence ``low + mid + high = AP1·AP2``. The filters are applied
exactly on an FFT grid with the exponential-window method of
:mod:`diffmix.functional.delay` (each response evaluated at ``z = r e^{jω}``), so the long
ring of a low crossover needs no padding guess and forces no host sync.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffmix.functional.delay import delay_phasor
from diffmix.functional.filters import linkwitz_riley_coeffs, next_fast_len
from diffmix.functional.gain import left_right, mid_side
from diffmix.params import ParamValue, broadcast_param


def _sections_at(b: Tensor, a: Tensor, z_1: Tensor) -> Tensor:
    """Product over sections (axis -2) of ``B(z) / A(z)``, given ``z^-1`` on a grid."""
    z_2 = z_1 * z_1
    num = b[..., 0:1] + b[..., 1:2] * z_1 + b[..., 2:3] * z_2
    den = a[..., 0:1] + a[..., 1:2] * z_1 + a[..., 2:3] * z_2
    return (num / den).prod(-2)


def band_responses(
    low_hz: Tensor, high_hz: Tensor, sample_rate: int, n_fft: int, *, damp: float = 0.0
) -> Tensor:
    """Responses of the low, mid and high bands on an ``n_fft`` rfft grid.

    Args:
        low_hz, high_hz: crossover frequencies, any broadcastable shape ``(...)``.
        sample_rate: Hz.
        n_fft: transform size.
        damp: exponential-window rate (responses taken at ``z = e^{damp} e^{jω}``).

    Returns:
        complex128 ``(3, ..., n_fft // 2 + 1)``: low, mid, high. Evaluated in float64
        (a 40 Hz crossover loses digits in float32); differentiable in the frequencies.
    """
    z_1 = delay_phasor(torch.ones(1, device=low_hz.device), n_fft, damp=damp)
    lo = linkwitz_riley_coeffs(low_hz.double(), 4, sample_rate)
    hi = linkwitz_riley_coeffs(high_hz.double(), 4, sample_rate)
    lp1, hp1 = _sections_at(lo[0], lo[1], z_1), _sections_at(lo[2], lo[3], z_1)
    lp2, hp2 = _sections_at(hi[0], hi[1], z_1), _sections_at(hi[2], hi[3], z_1)
    return torch.stack(torch.broadcast_tensors(lp1 * (lp2 + hp2), hp1 * lp2, hp1 * hp2))


def _windowed(x: Tensor) -> tuple[Tensor, Tensor, int, float]:
    """Exponentially windowed ``x``, the inverse window, the FFT size and the rate."""
    n = x.shape[-1]
    pad = max(n, 64)
    alpha = (120.0 if x.dtype == torch.float64 else 60.0) / 20.0 * math.log(10.0) / pad
    down = torch.exp(-alpha * torch.arange(n, dtype=x.dtype, device=x.device))
    return x * down, 1.0 / down, next_fast_len(n + pad), alpha


def _check_crossovers(
    x: Tensor, low_hz: ParamValue, high_hz: ParamValue, sample_rate: int, effect: str
) -> tuple[Tensor, Tensor]:
    if x.shape[1] != 2:
        raise ValueError(f"{effect}: audio must have 2 channel(s), got {x.shape[1]}")
    lo = broadcast_param(low_hz, x, name="low_hz", effect=effect)[:, :1]
    hi = broadcast_param(high_hz, x, name="high_hz", effect=effect)[:, :1]
    for name, value in (("low_hz", low_hz), ("high_hz", high_hz)):
        if isinstance(value, (int, float)) and not 0.0 < value < sample_rate / 2:
            raise ValueError(
                f"{effect}: {name}={value:g} must lie between 0 and Nyquist ({sample_rate / 2:g} Hz)"
            )
    if isinstance(low_hz, (int, float)) and isinstance(high_hz, (int, float)) and not low_hz < high_hz:
        raise ValueError(f"{effect}: low_hz={low_hz:g} must be below high_hz={high_hz:g}")
    return lo, hi


def band_width(
    x: Tensor,
    sample_rate: int,
    *,
    low_width: ParamValue = 0.0,
    mid_width: ParamValue = 1.0,
    high_width: ParamValue = 1.0,
    low_hz: ParamValue = 150.0,
    high_hz: ParamValue = 4000.0,
) -> Tensor:
    """Mid/side stereo width per band: low, mid and high, split by LR4 crossovers.

    The side signal of each band is scaled by its width (0 mono, 1 unchanged, 2 twice as
    wide); the mid signal is left at its level. With ``low_width = 0`` the side channel has
    nothing below the low crossover but the 24 dB/octave skirt of the mid band: the lows
    fold to mono without loss. At unity widths the output is the input through the
    crossovers' all-pass (as in every Linkwitz-Riley multiband processor).

    Args:
        x: stereo audio ``(B, 2, T)``.
        sample_rate: Hz.
        low_width, mid_width, high_width: side gains per band, >= 0. Defaults 0, 1, 1.
        low_hz: low/mid crossover, Hz. Default 150.
        high_hz: mid/high crossover, Hz (> ``low_hz``). Default 4000.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.

    Returns:
        Left/right audio.

    Differentiable in ``x``, the three widths and both crossovers. CPU and CUDA.

    References:
        S. Linkwitz, "Active crossover networks for noncoincident drivers", JAES 1976.

    >>> y = band_width(torch.randn(1, 2, 4410), 44100, low_width=0.0, high_width=1.5)
    >>> y.shape
    torch.Size([1, 2, 4410])
    """
    effect = "band_width"
    lo, hi = _check_crossovers(x, low_hz, high_hz, sample_rate, effect)
    widths = torch.stack(
        [
            broadcast_param(w, x, name=n, effect=effect)[:, :1]
            for n, w in (("low_width", low_width), ("mid_width", mid_width), ("high_width", high_width))
        ]
    )  # (3, B|1, 1)
    ms, up, n_fft, alpha = _windowed(mid_side(x))
    spec = torch.fft.rfft(ms, n_fft)
    bands = band_responses(lo, hi, sample_rate, n_fft, damp=alpha).to(spec.dtype)  # (3, B|1, 1, F)
    mid = spec[:, :1] * bands.sum(0)
    side = spec[:, 1:] * (widths.unsqueeze(-1) * bands).sum(0)
    out = torch.fft.irfft(torch.cat([mid, side], 1), n_fft)[..., : x.shape[-1]] * up
    return left_right(out)


class MonoCompatibility(NamedTuple):
    """Result of :func:`mono_compatibility`; each field ``(B,)`` or ``(B, 3)`` per band."""

    correlation: Tensor
    """Pearson-style correlation of left and right, ``sum(LR) / sqrt(sum(L²) sum(R²))``:
    1 identical, 0 unrelated, -1 opposite polarity."""
    fold_down_db: Tensor
    """Level of the mono fold ``(L + R) / 2`` relative to the mean channel level
    ``(L² + R²) / 2``: 0 dB for identical channels, -3 dB for unrelated ones, falling
    towards the -120 dB floor as they cancel."""


def mono_compatibility(
    x: Tensor,
    sample_rate: int,
    *,
    crossover_hz: tuple[float, float] | None = None,
) -> MonoCompatibility:
    """How stereo audio survives a fold-down to mono: correlation and level lost.

    Args:
        x: stereo audio ``(B, 2, T)``.
        sample_rate: Hz.
        crossover_hz: ``(low_hz, high_hz)`` to report low, mid and high bands separately
            (LR4 bands as in :func:`band_width`); ``None`` for the whole signal.

    Returns:
        :class:`MonoCompatibility` with fields ``(B,)``, or ``(B, 3)`` per band.

    Differentiable in ``x`` (usable as a loss term). CPU and CUDA.

    >>> x = torch.randn(1, 1, 48000).expand(1, 2, 48000)
    >>> r = mono_compatibility(x, 48000)
    >>> round(r.correlation.item(), 6), round(r.fold_down_db.item(), 6)
    (1.0, 0.0)
    """
    effect = "mono_compatibility"
    if x.shape[1] != 2:
        raise ValueError(f"{effect}: audio must have 2 channel(s), got {x.shape[1]}")
    if crossover_hz is None:
        sig = x.unsqueeze(1)  # (B, 1, 2, T)
    else:
        lo, hi = _check_crossovers(x, float(crossover_hz[0]), float(crossover_hz[1]), sample_rate, effect)
        win, up, n_fft, alpha = _windowed(x)
        bands = band_responses(lo, hi, sample_rate, n_fft, damp=alpha)
        spec = torch.fft.rfft(win, n_fft)
        sig = torch.fft.irfft(spec.unsqueeze(0) * bands.to(spec.dtype), n_fft)[..., : x.shape[-1]] * up
        sig = sig.movedim(0, 1)  # (B, 3, 2, T)
    left, right = sig[..., 0, :], sig[..., 1, :]
    ll, rr, lr = left.square().sum(-1), right.square().sum(-1), (left * right).sum(-1)
    tiny = torch.finfo(x.dtype).tiny
    corr = lr / torch.sqrt(ll * rr + tiny)
    fold = (ll + rr + 2.0 * lr) / 4.0
    ratio = fold / ((ll + rr) / 2.0 + tiny)
    db = 10.0 * torch.log10(ratio.clamp_min(1e-12))
    if crossover_hz is None:
        corr, db = corr.squeeze(1), db.squeeze(1)
    return MonoCompatibility(corr, db)
