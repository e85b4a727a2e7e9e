"""Parametric EQ: any number of bands (RBJ cookbook shapes and Butterworth high/low-pass
cascades), rendered exactly or by FFT, in left/right or mid/side.

The filter primitives (designs, responses, the exact and FFT renderers) live in
:mod:`diffmix.functional.filters`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.functional.filters import (
    BAND_TYPES,
    EQ_MODES,
    MAX_ORDER,
    LinearFilter,
    biquad_coeffs,
    butterworth_coeffs,
    iir_tail,
    sections_filter,
    sos_filter,
)
from diffmix.functional.gain import left_right, mid_side
from diffmix.params import ParamValue, broadcast_param

STEREO_MODES = ("lr", "ms")


def parse_band(band: str, effect: str = "parametric_eq") -> tuple[str, int]:
    """``"peak"`` -> ``("peak", 0)``; ``"highpass4"`` -> ``("highpass", 4)`` (Butterworth order).

    Plain ``"highpass"``/``"lowpass"`` are the cookbook's resonant 2nd-order filters (order
    0 here: their ``q`` is used); ``"highpassN"``/``"lowpassN"`` with ``N`` in 1..8 are
    ``N``-th order Butterworth cascades (their ``q`` is not used).

    >>> parse_band("lowpass8"), parse_band("low_shelf")
    (('lowpass', 8), ('low_shelf', 0))
    """
    if not isinstance(band, str):
        raise ValueError(f"{effect}: a band must be a string, got {band!r}")
    if band in BAND_TYPES:
        return band, 0
    for kind in ("highpass", "lowpass"):
        suffix = band[len(kind) :]
        if band.startswith(kind) and suffix.isdigit() and 1 <= int(suffix) <= MAX_ORDER:
            return kind, int(suffix)
    raise ValueError(
        f"{effect}: unknown band type {band!r}; choose one of {list(BAND_TYPES)}, or "
        f"'highpassN'/'lowpassN' with N = 1..{MAX_ORDER} for Butterworth cascades"
    )


def eq_coeffs(
    bands: list[str] | tuple[str, ...],
    freq_hz: Tensor,
    q: Tensor,
    gain_db: Tensor,
    sample_rate: int,
) -> tuple[Tensor, Tensor]:
    """Second-order sections of a parametric EQ, band after band.

    Args:
        bands: band types (see :func:`parse_band`).
        freq_hz, q, gain_db: ``(..., n_bands)``, broadcastable together.
        sample_rate: Hz.

    Shape:
        ``b, a``: ``(..., n_sections, 3)``: one section per RBJ band, ``ceil(N / 2)`` per
        order-N Butterworth band.

    >>> b, a = eq_coeffs(["low_shelf", "peak", "highpass4"], torch.tensor([100.0, 1e3, 30.0]),
    ...                  torch.full((3,), 0.7), torch.tensor([3.0, -2.0, 0.0]), 44100)
    >>> tuple(b.shape)
    (4, 3)
    """
    freq_hz, q, gain_db = torch.broadcast_tensors(freq_hz, q, gain_db)
    if freq_hz.shape[-1] != len(bands):
        raise ValueError(
            f"parametric_eq: {len(bands)} bands but parameters have {freq_hz.shape[-1]} on their band axis"
        )
    bs, as_ = [], []
    for i, band in enumerate(bands):
        kind, order = parse_band(band)
        f = freq_hz[..., i]
        if order == 0:
            b, a = biquad_coeffs(kind, f, q[..., i], gain_db[..., i], sample_rate)
            bs.append(b.unsqueeze(-2))
            as_.append(a.unsqueeze(-2))
        else:
            b, a = butterworth_coeffs(kind, f, order, sample_rate)
            bs.append(b)
            as_.append(a)
    return torch.cat(bs, dim=-2), torch.cat(as_, dim=-2)


def _band_param(value: ParamValue, x: Tensor, n_bands: int, name: str) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(n_bands)
    p = broadcast_param(t, x, name=name, effect="parametric_eq", trailing=1)
    if p.shape[-1] not in (1, n_bands):
        raise ValueError(
            f"parametric_eq: {name} has {p.shape[-1]} values on its band axis, but there are {n_bands} bands"
        )
    return p


def parametric_eq(
    x: Tensor,
    sample_rate: int,
    *,
    bands: list[str] | tuple[str, ...],
    freq_hz: ParamValue,
    q: ParamValue,
    gain_db: ParamValue,
    mode: str = "fft",
    stereo: str = "lr",
    mix: ParamValue = 1.0,
    tail: int | None = None,
) -> Tensor:
    """A parametric EQ: any number of RBJ bands in series, rendered exactly or by FFT.

    Args:
        x: ``(B, C, T)`` audio.
        sample_rate: Hz.
        bands: band types, e.g. ``["highpass4", "low_shelf", "peak", "peak", "high_shelf"]``
            (see :func:`parse_band`).
        freq_hz: centre/corner frequencies in Hz, ``(n_bands,)``, ``(B, n_bands)`` or
            ``(B, C, n_bands)``; a scalar applies to every band (likewise ``q``, ``gain_db``).
        q: quality factors.
        gain_db: gains in dB (peaks and shelves).
        mode: ``"fft"`` (default; frequency sampling, fast) or ``"exact"`` (the recursion).
        stereo: ``"lr"`` (default) filters left and right; ``"ms"`` filters mid and side
            (channel 0 of per-channel values is M, channel 1 is S) and returns left/right.
        mix: dry/wet, 0 to 1 (default 1). Float, ``(B,)`` or ``(B, C)`` (M and S in ``"ms"``).
        tail: FFT mode only: samples the impulse response is allowed to ring. ``None``
            derives it from the poles with :func:`iir_tail` (a host sync); modules pass a
            bound computed from their parameter ranges instead.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        The equalised audio, in ``x``'s dtype.

    Precision: coefficients are designed in float64 whatever ``x``'s dtype (a float32
    a1 = -1.99... cannot place a 30 Hz pole to 0.01 dB), and the exact recursion runs in
    float64 too. The FFT mode frequency-samples the cascade on a ``tail``-point grid in
    float64 to get its impulse response (time-aliased beyond ``tail``, i.e. truncated once
    it has decayed), then convolves by one rfft of size ``>= T + tail``, so no output wraps
    around. It agrees with ``"exact"`` to the impulse response's energy past ``tail``:
    below 1e-6 of full scale with the bound of :class:`~diffmix.effects.eq.ParametricEQ`,
    plus float32 FFT rounding (~1e-6 relative) for float32 audio.

    Differentiable in ``x``, ``freq_hz``, ``q``, ``gain_db`` and ``mix`` (not in the band
    types or modes). CUDA: yes (cuFFT; lfilter's CUDA kernel for ``"exact"``).

    References:
        R. Bristow-Johnson, Audio-EQ-Cookbook.

    >>> x = torch.randn(2, 2, 4410)
    >>> y = parametric_eq(x, 44100, bands=["low_shelf", "peak", "high_shelf"],
    ...                   freq_hz=[100.0, 1000.0, 8000.0], q=0.7071, gain_db=[3.0, -4.0, 2.0])
    >>> y.shape
    torch.Size([2, 2, 4410])
    """
    check_choice(mode, EQ_MODES, "parametric_eq", "mode")
    if mode == "fft":
        return parametric_eq_filter(x, sample_rate, bands=bands, freq_hz=freq_hz, q=q, gain_db=gain_db,
                                    stereo=stereo, mix=mix, tail=tail)(x)
    b, a, m = _design(x, sample_rate, bands, freq_hz, q, gain_db, stereo, mix)
    inp = mid_side(x) if stereo == "ms" else x
    wet = sos_filter(inp.double(), b, a).to(x.dtype)
    out = inp + m.unsqueeze(-1) * (wet - inp)  # in "ms" a mix per channel is M's and S's
    return left_right(out) if stereo == "ms" else out


def parametric_eq_filter(
    x: Tensor,
    sample_rate: int,
    *,
    bands: list[str] | tuple[str, ...],
    freq_hz: ParamValue,
    q: ParamValue,
    gain_db: ParamValue,
    stereo: str = "lr",
    mix: ParamValue = 1.0,
    tail: int | None = None,
) -> LinearFilter:
    """:func:`parametric_eq`'s FFT mode as the :class:`~diffmix.functional.filters.LinearFilter`
    it applies to audio shaped like ``x`` ``(B, C, T)`` (read for its shape, device and dtype
    only); arguments as :func:`parametric_eq`'s. Dry/wet is linear, so it folds into the
    impulse response, ``(1 - mix) delta + mix h``. Differentiable in ``freq_hz``, ``q``,
    ``gain_db`` and ``mix``."""
    b, a, m = _design(x, sample_rate, bands, freq_hz, q, gain_db, stereo, mix)
    if tail is None:
        tail = iir_tail(a)
    return sections_filter(b, a, tail, mix=m, ms=stereo == "ms")


def _design(x: Tensor, sample_rate: int, bands: list[str] | tuple[str, ...], freq_hz: ParamValue,
            q: ParamValue, gain_db: ParamValue, stereo: str,
            mix: ParamValue) -> tuple[Tensor, Tensor, Tensor]:
    """The checked bands' sections ``b, a`` ``(B|1, C|1, S, 3)`` (float64) and ``mix`` ``(B|1, C|1)``."""
    check_choice(stereo, STEREO_MODES, "parametric_eq", "stereo mode")
    bands = list(bands)
    for band in bands:
        parse_band(band)
    if not bands:
        raise ValueError("parametric_eq: at least one band is needed")
    if stereo == "ms" and x.shape[1] != 2:
        raise ValueError(f"parametric_eq: stereo='ms' needs 2 channels, got {x.shape[1]}")
    n = len(bands)
    f = _band_param(freq_hz, x, n, "freq_hz").double()
    qq = _band_param(q, x, n, "q").double()
    g = _band_param(gain_db, x, n, "gain_db").double()
    b, a = eq_coeffs(bands, f, qq, g, sample_rate)  # (B|1, C|1, S, 3), float64
    return b, a, broadcast_param(mix, x, name="mix", effect="parametric_eq")
