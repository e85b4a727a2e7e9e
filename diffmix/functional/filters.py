"""Biquad filters: RBJ cookbook designs, exact and FFT rendering, Linkwitz-Riley crossovers.

Coefficients are plain tensors ``b, a`` shaped ``(..., 3)`` (``a0 = 1``) or, for a cascade
of second-order sections, ``(..., n_sections, 3)``. The leading dims broadcast against the
audio's ``(batch, channels)``. Everything is differentiable in the coefficients, in the
design parameters behind them and in the input, and runs on CPU and CUDA.

Renderers:

- :func:`biquad` / :func:`sos_filter`: the exact time-domain recursion (torchaudio's
  ``lfilter``, run with ``clamp=False`` so nothing is clipped);
- :func:`sos_filter_fft`: frequency sampling on the whole signal's FFT grid. The input
  is zero-padded by ``tail`` samples; what the filter rings past that wraps onto the
  start, so the error is bounded by the impulse response's energy after ``tail``
  samples, which :func:`iir_tail` puts below -120 dB;
- :func:`render_fft` (the FFT mode of :func:`linkwitz_riley` and of
  :func:`diffmix.functional.eq.parametric_eq`): frequency sampling
  on a ``tail``-point grid gives the impulse response (time-aliased only past
  ``tail``), convolved by :func:`fft_convolve` with no wrap at all. Evaluating the
  response on a few thousand bins instead of the signal's million is what makes it
  fast.

References:
    R. Bristow-Johnson, "Cookbook formulae for audio EQ biquad filter coefficients"
    (Audio-EQ-Cookbook, W3C note 2021 edition).
    S. Linkwitz, "Active crossover networks for noncoincident drivers", JAES 24(1), 1976.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torchaudio.functional import lfilter

from diffmix.checks import check_choice
from diffmix.functional._cache import ValueCache, constant_key
from diffmix.functional._fft_conv import overlap_save, real_fft
from diffmix.functional.gain import left_right, mid_side
from diffmix.params import ParamValue, broadcast_param

BAND_TYPES = ("peak", "low_shelf", "high_shelf", "highpass", "lowpass", "notch", "bandpass")
LR_ORDERS = (2, 4, 8)
EQ_MODES = ("fft", "exact")
_FIRS = ValueCache(16, 64 << 20)  # impulse responses of fixed sections (render_fft)
# Spectra of fixed inputs (fft_convolve), kept only inside fixed_input_spectra(), per thread
# (a job measures on a worker thread while the main one fits).
_FIXED = threading.local()
MAX_ORDER = 8  # highest Butterworth order of a "highpassN"/"lowpassN" band


@contextlib.contextmanager
def fixed_input_spectra(max_bytes: int = 64 << 20) -> Iterator[None]:
    """Inside this block, :func:`fft_convolve` keeps the spectrum of an input that needs no
    gradient (by its content) while the filter needs one, and reuses it for the same input:
    a fit that cycles through a fixed pool of excerpts (:func:`diffmix.mastering.fit.fit_chain`)
    transforms each excerpt once instead of at every step. The same values bit for bit; at
    most ``max_bytes`` of spectra, released when the block ends."""
    outer = getattr(_FIXED, "inputs", None)
    _FIXED.inputs = ValueCache(16, max_bytes)
    try:
        yield
    finally:
        _FIXED.inputs = outer


def _as_tensor(value: ParamValue, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value if like is None else value.to(dtype=like.dtype, device=like.device)
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=torch.get_default_dtype())


def biquad_coeffs(
    kind: str,
    freq_hz: Tensor,
    q: Tensor,
    gain_db: Tensor,
    sample_rate: int,
) -> tuple[Tensor, Tensor]:
    """RBJ Audio-EQ-Cookbook biquad design, batched and differentiable.

    Args:
        kind: one of :data:`BAND_TYPES`.
        freq_hz: centre / corner / shelf-midpoint frequency in Hz, below Nyquist.
        q: quality factor (> 0). For shelves it is the cookbook's shelf Q
            (``q = 1/sqrt(2)`` is the steepest shelf without overshoot, slope ``S = 1``).
        gain_db: gain in dB, used by ``peak``, ``low_shelf`` and ``high_shelf``
            (ignored by the others, which then get a zero gradient).
        sample_rate: Hz.

    Shape:
        ``freq_hz``, ``q``, ``gain_db`` broadcast together to ``(...)``; ``b`` and ``a`` are
        ``(..., 3)``, normalised so that ``a[..., 0] == 1``.

    Returns:
        ``(b, a)``: numerator and denominator of ``H(z) = (b0 + b1 z^-1 + b2 z^-2) /
        (1 + a1 z^-1 + a2 z^-2)``.

    Differentiable in ``freq_hz``, ``q`` and ``gain_db``. CUDA: yes.

    ``1 - cos w0`` and ``1 + cos w0`` are written as ``2 sin^2(w0/2)`` and ``2 cos^2(w0/2)``:
    at 20 Hz the first is ~4e-6 and would lose most of its float32 digits otherwise.

    >>> b, a = biquad_coeffs("peak", torch.tensor(1000.0), torch.tensor(0.7), torch.tensor(6.0), 48000)
    >>> b.shape, float(a[0])
    (torch.Size([3]), 1.0)
    """
    check_choice(kind, BAND_TYPES, "biquad_coeffs", "band type")
    freq_hz = _as_tensor(freq_hz)
    q, gain_db = _as_tensor(q, freq_hz), _as_tensor(gain_db, freq_hz)
    freq_hz, q, gain_db = torch.broadcast_tensors(freq_hz, q, gain_db)
    w0 = (2.0 * math.pi / sample_rate) * freq_hz
    cos_w = torch.cos(w0)
    sin_w = torch.sin(w0)
    alpha = sin_w / (2.0 * q)
    one_minus_cos = 2.0 * torch.sin(0.5 * w0).square()
    one_plus_cos = 2.0 * torch.cos(0.5 * w0).square()
    ones = torch.ones_like(cos_w)
    zeros = torch.zeros_like(cos_w)
    if kind == "peak":
        amp = torch.pow(10.0, gain_db / 40.0)
        b = (1.0 + alpha * amp, -2.0 * cos_w, 1.0 - alpha * amp)
        a = (1.0 + alpha / amp, -2.0 * cos_w, 1.0 - alpha / amp)
    elif kind in ("low_shelf", "high_shelf"):
        amp = torch.pow(10.0, gain_db / 40.0)
        t = 2.0 * torch.sqrt(amp) * alpha
        # (A+1) -+ (A-1) cos w0 and (A-1) -+ (A+1) cos w0, written via 1 -+ cos w0 so the
        # low-frequency digits survive in float32.
        lo = amp * one_minus_cos + one_plus_cos  # (A+1) - (A-1) cos w0
        hi = amp * one_plus_cos + one_minus_cos  # (A+1) + (A-1) cos w0
        d_lo = amp * one_minus_cos - one_plus_cos  # (A-1) - (A+1) cos w0
        d_hi = amp * one_plus_cos - one_minus_cos  # (A-1) + (A+1) cos w0
        if kind == "low_shelf":
            b = (amp * (lo + t), 2.0 * amp * d_lo, amp * (lo - t))
            a = (hi + t, -2.0 * d_hi, hi - t)
        else:
            b = (amp * (hi + t), -2.0 * amp * d_hi, amp * (hi - t))
            a = (lo + t, 2.0 * d_lo, lo - t)
    elif kind == "lowpass":
        b = (0.5 * one_minus_cos, one_minus_cos, 0.5 * one_minus_cos)
        a = (1.0 + alpha, -2.0 * cos_w, 1.0 - alpha)
    elif kind == "highpass":
        b = (0.5 * one_plus_cos, -one_plus_cos, 0.5 * one_plus_cos)
        a = (1.0 + alpha, -2.0 * cos_w, 1.0 - alpha)
    elif kind == "notch":
        b = (ones, -2.0 * cos_w, ones)
        a = (1.0 + alpha, -2.0 * cos_w, 1.0 - alpha)
    else:  # bandpass, constant 0 dB peak gain
        b = (alpha, zeros, -alpha)
        a = (1.0 + alpha, -2.0 * cos_w, 1.0 - alpha)
    a0 = a[0]
    b_t = torch.stack([t / a0 for t in b], dim=-1)
    a_t = torch.stack([ones, a[1] / a0, a[2] / a0], dim=-1)
    return b_t, a_t


def first_order_coeffs(kind: str, freq_hz: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    """First-order Butterworth low- or high-pass (bilinear, prewarped), as a biquad.

    Used for the odd section of odd-order Butterworth cascades. ``b2 = a2 = 0``.

    Args:
        kind: ``"lowpass"`` or ``"highpass"``.
        freq_hz: -3 dB frequency in Hz.
        sample_rate: Hz.

    Shape:
        ``freq_hz`` ``(...)`` -> ``b, a`` ``(..., 3)``.

    >>> b, a = first_order_coeffs("lowpass", torch.tensor(1000.0), 48000)
    >>> round(float(b.sum() / a.sum()), 5)  # unity at DC
    1.0
    """
    check_choice(kind, ("lowpass", "highpass"), "first_order_coeffs", "kind")
    freq_hz = _as_tensor(freq_hz)
    k = torch.tan((math.pi / sample_rate) * freq_hz)
    norm = 1.0 / (1.0 + k)
    zeros = torch.zeros_like(k)
    if kind == "lowpass":
        b = torch.stack([k * norm, k * norm, zeros], dim=-1)
    else:
        b = torch.stack([norm, -norm, zeros], dim=-1)
    a = torch.stack([torch.ones_like(k), (k - 1.0) * norm, zeros], dim=-1)
    return b, a


def butterworth_qs(order: int) -> tuple[list[float], bool]:
    """Section Qs of an ``order``-th order Butterworth filter.

    Returns:
        ``(qs, first_order)``: the Q of each second-order section, and whether a
        first-order section completes an odd order.

    >>> [round(q, 4) for q in butterworth_qs(4)[0]]
    [1.3066, 0.5412]
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"butterworth_qs: order must be a positive integer, got {order!r}")
    qs = [1.0 / (2.0 * math.sin((2 * k - 1) * math.pi / (2 * order))) for k in range(1, order // 2 + 1)]
    return qs, order % 2 == 1


def butterworth_coeffs(kind: str, freq_hz: Tensor, order: int, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Butterworth low- or high-pass of any order as second-order sections.

    Shape:
        ``freq_hz`` ``(...)`` -> ``b, a`` ``(..., n_sections, 3)`` with
        ``n_sections = ceil(order / 2)``.

    Differentiable in ``freq_hz``. CUDA: yes.

    >>> b, a = butterworth_coeffs("highpass", torch.tensor(80.0), 3, 44100)
    >>> tuple(b.shape)
    (2, 3)
    """
    check_choice(kind, ("lowpass", "highpass"), "butterworth_coeffs", "kind")
    freq_hz = _as_tensor(freq_hz)
    qs, odd = butterworth_qs(order)
    bs, as_ = [], []
    for q in qs:
        b, a = biquad_coeffs(
            kind, freq_hz, torch.full_like(freq_hz, q), torch.zeros_like(freq_hz), sample_rate
        )
        bs.append(b)
        as_.append(a)
    if odd:
        b, a = first_order_coeffs(kind, freq_hz, sample_rate)
        bs.append(b)
        as_.append(a)
    return torch.stack(bs, dim=-2), torch.stack(as_, dim=-2)


def biquad_response(b: Tensor, a: Tensor, freqs_hz: Tensor, sample_rate: int) -> Tensor:
    """Complex frequency response of one biquad ``H(e^{jw})`` at ``freqs_hz``.

    Args:
        b, a: ``(..., 3)`` coefficients.
        freqs_hz: ``(F,)`` frequencies in Hz.
        sample_rate: Hz.

    Shape:
        ``(..., F)`` complex.

    Uses ``B(e^{jw}) = e^{-jw} [b1 + (b0 + b2) cos w + j (b0 - b2) sin w]``; the common
    ``e^{-jw}`` cancels between numerator and denominator, so each section costs four real
    multiply-adds per frequency and the phase is still exact. Differentiable; CUDA: yes.

    >>> b, a = biquad_coeffs("lowpass", torch.tensor(1000.0), torch.tensor(0.7071), torch.tensor(0.0), 48000)
    >>> h = biquad_response(b, a, torch.tensor([0.0, 1000.0]), 48000)
    >>> [round(v, 2) for v in (20 * h.abs().log10()).tolist()]
    [0.0, -3.01]
    """
    w = (2.0 * math.pi / sample_rate) * _as_tensor(freqs_hz, b)
    return _sections_response(b.unsqueeze(-2), a.unsqueeze(-2), *_grid(w))


def sos_response(b: Tensor, a: Tensor, freqs_hz: Tensor, sample_rate: int) -> Tensor:
    """Complex response of a cascade, ``b, a`` ``(..., n_sections, 3)`` -> ``(..., F)``."""
    w = (2.0 * math.pi / sample_rate) * _as_tensor(freqs_hz, b)
    return _sections_response(b, a, *_grid(w))


def _grid(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(1 - cos w, sin w)``, the first as ``2 sin^2(w/2)`` so it keeps its digits near DC."""
    return 2.0 * torch.sin(0.5 * w).square(), torch.sin(w)


def _sections_response(b: Tensor, a: Tensor, omc: Tensor, sin_w: Tensor) -> Tensor:
    """Product over the section axis (-2) of each section's response on a grid.

    ``omc = 1 - cos w``. The real parts ``b1 + (b0 + b2) cos w`` are evaluated as
    ``(b0 + b1 + b2) - (b0 + b2)(1 - cos w)``: near DC the first form cancels two numbers
    close to 2 (losing ~5 float32 digits for a 30 Hz filter), while the coefficient sum
    ``1 + a1 + a2`` is exact in floating point (Sterbenz) for the poles near ``z = 1``.
    """
    # (..., S, 1) coefficient columns against the (F,) grid.
    b0, b1, b2 = (b[..., i : i + 1] for i in range(3))
    a1, a2 = a[..., 1:2], a[..., 2:3]
    num_re = (b0 + b1 + b2) - (b0 + b2) * omc
    num_im = (b0 - b2) * sin_w
    den_re = ((1.0 + a1) + a2) - (1.0 + a2) * omc
    den_im = (1.0 - a2) * sin_w
    # N / D = N conj(D) / |D|^2, multiplied over sections in real arithmetic.
    inv = 1.0 / (den_re.square() + den_im.square())
    re = (num_re * den_re + num_im * den_im) * inv
    im = (num_im * den_re - num_re * den_im) * inv
    acc_re, acc_im = re[..., 0, :], im[..., 0, :]
    for k in range(1, re.shape[-2]):
        acc_re, acc_im = (
            acc_re * re[..., k, :] - acc_im * im[..., k, :],
            acc_re * im[..., k, :] + acc_im * re[..., k, :],
        )
    return torch.complex(acc_re, acc_im)


def _expand_coeffs(x: Tensor, c: Tensor, name: str) -> Tensor:
    c = c.to(dtype=x.dtype, device=x.device)
    if c.shape[-1] != 3:
        raise ValueError(f"biquad: {name} must end in 3 coefficients, got shape {tuple(c.shape)}")
    while c.ndim < 3:
        c = c.unsqueeze(0)
    if c.ndim > 3:
        raise ValueError(f"biquad: {name} must broadcast to (batch, channels, 3), got {tuple(c.shape)}")
    try:
        return c.expand(x.shape[0], x.shape[1], 3)
    except RuntimeError as exc:
        raise ValueError(
            f"biquad: {name} of shape {tuple(c.shape)} does not broadcast to the audio's "
            f"(batch, channels) = {tuple(x.shape[:2])}"
        ) from exc


def biquad(x: Tensor, b: Tensor, a: Tensor) -> Tensor:
    """Filter ``x`` with one biquad by the exact time-domain recursion.

    Args:
        x: ``(B, C, T)`` audio.
        b, a: coefficients broadcastable to ``(B, C, 3)``, ``a[..., 0] == 1``.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Runs torchaudio's ``lfilter`` (direct form, zero initial state) with ``clamp=False``,
    so the output is never clipped. Differentiable in ``x``, ``b`` and ``a``. CUDA: yes.

    >>> b, a = biquad_coeffs("lowpass", torch.tensor(1000.0), torch.tensor(0.7071), torch.tensor(0.0), 48000)
    >>> biquad(torch.ones(2, 2, 4000), b, a)[..., -1].round(decimals=4).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    bb = _expand_coeffs(x, b, "b").reshape(-1, 3)
    aa = _expand_coeffs(x, a, "a").reshape(-1, 3)
    y = lfilter(x.reshape(-1, x.shape[-1]), aa, bb, clamp=False, batching=True)
    return y.reshape(x.shape)


def sos_filter(x: Tensor, b: Tensor, a: Tensor) -> Tensor:
    """Filter ``x`` through a cascade of biquads, first section first (exact recursion).

    Args:
        x: ``(B, C, T)``.
        b, a: ``(..., n_sections, 3)`` with ``...`` broadcastable to ``(B, C)``.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> b, a = butterworth_coeffs("lowpass", torch.tensor(1000.0), 4, 48000)
    >>> sos_filter(torch.zeros(1, 2, 100), b, a).shape
    torch.Size([1, 2, 100])
    """
    if b.ndim < 2 or a.ndim < 2 or b.shape[-2] != a.shape[-2]:
        raise ValueError(
            f"sos_filter: b and a must be (..., n_sections, 3) with equal sections, got "
            f"{tuple(b.shape)} and {tuple(a.shape)}"
        )
    y = x
    for k in range(b.shape[-2]):
        y = biquad(y, b[..., k, :], a[..., k, :])
    return y


def next_fast_len(n: int) -> int:
    """Smallest ``m >= n`` of the form ``2^i 3^j 5^k`` (fast for every FFT backend).

    >>> next_fast_len(1000), next_fast_len(1025), next_fast_len(44100)
    (1000, 1080, 45000)
    """
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 5
        p3 *= 3
    return best


def iir_tail(a: Tensor, *, floor_db: float = -120.0, max_samples: int = 1 << 22) -> int:
    """Samples until the slowest pole of a cascade has decayed by ``floor_db``.

    The impulse response of a cascade decays like ``n^(m-1) r^n`` for its largest pole
    radius ``r`` repeated ``m`` times; this returns ``log(10^(floor_db/20)) / log(r)``
    times a margin of 1.5 for the repetition, capped at ``max_samples``.

    Reads tensor values (a host sync on CUDA): compute it once outside a fitting loop, or
    derive a bound from parameter ranges as :class:`~diffmix.effects.eq.ParametricEQ` does.

    >>> _, a = biquad_coeffs("lowpass", torch.tensor(1000.0), torch.tensor(0.7071), torch.tensor(0.0), 48000)
    >>> 50 < iir_tail(a) < 1000
    True
    """
    radius = pole_radius(a.detach().double()).max().clamp(0.0, 1.0 - 1e-12)
    r = float(radius)
    if r <= 0.0:
        return 3
    n = math.log(10.0 ** (floor_db / 20.0)) / math.log(r)
    return int(min(max_samples, math.ceil(1.5 * n) + 3))


def pole_radius(a: Tensor) -> Tensor:
    """Largest pole magnitude of each ``1 + a1 z^-1 + a2 z^-2`` (``(..., 3)`` -> ``(...)``)."""
    a1, a2 = a[..., 1], a[..., 2]
    disc = a1.square() - 4.0 * a2
    sq = torch.sqrt(disc.abs())
    real_roots = torch.maximum((-a1 + sq).abs(), (-a1 - sq).abs()) * 0.5
    complex_roots = torch.sqrt(a2.abs())
    return torch.where(disc >= 0, real_roots, complex_roots)


def sos_filter_fft(x: Tensor, b: Tensor, a: Tensor, *, tail: int) -> Tensor:
    """Filter ``x`` through a cascade by frequency sampling (fast, for fitting).

    ``x`` is zero-padded to ``n = next_fast_len(T + tail)``; its rfft is multiplied by the
    cascade's exact response on the ``n``-point grid and transformed back. The result
    equals the exact recursion except for what the impulse response rings beyond
    ``tail`` samples, which wraps onto the start: choose ``tail`` with :func:`iir_tail`.

    Args:
        x: ``(B, C, T)``.
        b, a: ``(..., n_sections, 3)`` with ``...`` broadcastable to ``(B, C)``.
        tail: padding in samples (>= 0).

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Differentiable in ``x``, ``b`` and ``a``. CUDA: yes (cuFFT).

    >>> b, a = butterworth_coeffs("lowpass", torch.tensor(1000.0), 2, 48000)
    >>> x = torch.randn(1, 1, 4800, dtype=torch.float64)
    >>> b, a = b.double(), a.double()
    >>> err = sos_filter_fft(x, b, a, tail=iir_tail(a)) - sos_filter(x, b, a)
    >>> bool(err.abs().max() < 1e-6)
    True
    """
    if tail < 0:
        raise ValueError(f"sos_filter_fft: tail must be >= 0, got {tail}")
    n_time = x.shape[-1]
    n = next_fast_len(n_time + tail)
    spec = real_fft(x, n)
    h = sos_response_on_grid(b.to(x.dtype), a.to(x.dtype), n)
    return torch.fft.irfft(spec * h, n=n)[..., :n_time]


def sos_response_on_grid(b: Tensor, a: Tensor, n: int) -> Tensor:
    """The cascade's response on the ``n // 2 + 1`` bins of an ``n``-point rfft.

    Shape:
        ``(..., n_sections, 3)`` -> ``(..., n // 2 + 1)`` complex.
    """
    k = torch.arange(n // 2 + 1, dtype=b.dtype, device=b.device)
    w = k * (2.0 * math.pi / n)
    return _sections_response(b, a, *_grid(w))


def linkwitz_riley(
    x: Tensor,
    sample_rate: int,
    *,
    freq_hz: ParamValue,
    order: int = 4,
    mode: str = "exact",
    tail: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Split ``x`` into low and high bands with a Linkwitz-Riley crossover.

    An LR filter of order ``2n`` is a Butterworth filter of order ``n`` applied twice:
    LR4 is two cascaded 2nd-order Butterworth sections (Q = 1/sqrt 2) per side, LR8 two
    4th-order Butterworths, LR2 two first-order ones (one biquad with Q = 1/2). Both sides
    are -6 dB at ``freq_hz`` and in phase, so ``low + high`` is an allpass (flat magnitude).
    LR2's two sides are in antiphase instead, so its high output is returned
    polarity-inverted, as is usual, which makes ``low + high`` flat for every order.

    Args:
        x: ``(B, C, T)`` audio.
        sample_rate: Hz.
        freq_hz: crossover frequency in Hz: float, ``(B,)`` or ``(B, C)``.
        order: 2, 4 (default) or 8.
        mode: ``"exact"`` (default, the recursion) or ``"fft"`` (frequency sampling,
            see :func:`sos_filter_fft`; agrees with the recursion to -120 dB).
        tail: FFT mode only: the impulse response's length in samples; ``None`` reads it
            from the poles with :func:`iir_tail` (a host sync on CUDA).

    Shape:
        ``(B, C, T)`` -> two ``(B, C, T)`` tensors ``(low, high)``.

    Returns:
        ``(low, high)`` with ``low + high`` equal to ``x`` through an allpass.

    Differentiable in ``x`` and ``freq_hz``. CUDA: yes.

    References:
        S. Linkwitz, "Active crossover networks for noncoincident drivers", JAES 1976.

    >>> low, high = linkwitz_riley(torch.randn(2, 2, 1000), 44100, freq_hz=1000.0)
    >>> low.shape, high.shape
    (torch.Size([2, 2, 1000]), torch.Size([2, 2, 1000]))
    """
    check_choice(mode, EQ_MODES, "linkwitz_riley", "mode")
    f = broadcast_param(freq_hz, x, name="freq_hz", effect="linkwitz_riley")
    b_lo, a_lo, b_hi, a_hi = linkwitz_riley_coeffs(f.double(), order, sample_rate)
    if mode == "exact":
        xd = x.double()
        return sos_filter(xd, b_lo, a_lo).to(x.dtype), sos_filter(xd, b_hi, a_hi).to(x.dtype)
    if tail is None:
        tail = iir_tail(torch.cat([a_lo, a_hi], dim=-2))
    # Both sides in one convolution: stack them on the batch axis.
    lead = (x.shape[0], f.shape[1], -1, -1)
    both = render_fft(
        torch.cat([x, x], dim=0),
        torch.cat([b_lo.expand(lead), b_hi.expand(lead)], dim=0),
        torch.cat([a_lo.expand(lead), a_hi.expand(lead)], dim=0),
        tail,
    )
    return both[: x.shape[0]], both[x.shape[0] :]


def linkwitz_riley_coeffs(
    freq_hz: Tensor, order: int, sample_rate: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Second-order sections ``(b_low, a_low, b_high, a_high)``, each ``(..., n_sections, 3)``.

    The high side of LR2 carries the polarity inversion (its ``b`` is negated).

    >>> [tuple(t.shape) for t in linkwitz_riley_coeffs(torch.tensor(500.0), 8, 48000)]
    [(4, 3), (4, 3), (4, 3), (4, 3)]
    """
    if order not in LR_ORDERS:
        raise ValueError(f"linkwitz_riley: order must be one of {list(LR_ORDERS)}, got {order!r}")
    freq_hz = _as_tensor(freq_hz)
    sides = []
    for kind in ("lowpass", "highpass"):
        if order == 2:
            b, a = biquad_coeffs(
                kind, freq_hz, torch.full_like(freq_hz, 0.5), torch.zeros_like(freq_hz), sample_rate
            )
            b, a = b.unsqueeze(-2), a.unsqueeze(-2)
            if kind == "highpass":
                b = -b
        else:
            b, a = butterworth_coeffs(kind, freq_hz, order // 2, sample_rate)
            b, a = torch.cat([b, b], dim=-2), torch.cat([a, a], dim=-2)
        sides += [b, a]
    return sides[0], sides[1], sides[2], sides[3]


# --------------------------------------------------------------------------------------
# Parametric EQ
def fir_from_sections(b: Tensor, a: Tensor, length: int) -> Tensor:
    """The cascade's impulse response, time-aliased to ``length`` samples, by frequency sampling.

    ``h[m] = sum_k h_true[m + k * length]``: equal to the true response truncated at
    ``length`` once that has decayed (see :func:`iir_tail`).

    Shape:
        ``(..., n_sections, 3)`` -> ``(..., length)``.
    """
    return torch.fft.irfft(sos_response_on_grid(b, a, length), n=length)


class LinearFilter(NamedTuple):
    """A linear, time-invariant stage as the FIR it applies: ``self(x)`` is
    ``fft_convolve(x, fir, ms=ms, skip=skip)``; a joined one (:meth:`then`) equals its
    ``parts`` applied in turn.

    Args:
        fir: ``(B|1, C|1, L)`` impulse response (any float dtype; the render casts it to
            the audio's).
        skip: samples of delay taken out (a zero-phase FIR's causal taps, see
            :func:`fft_convolve`).
        ms: ``fir``'s two channels filter mid and side of a left/right signal.
        parts: the filters joined into this one, in order (empty: none).

    Differentiable in ``fir`` and the audio; CPU and CUDA.
    """

    fir: Tensor
    skip: int = 0
    ms: bool = False
    parts: tuple[LinearFilter, ...] = ()

    def __call__(self, x: Tensor) -> Tensor:
        if not any(p.skip for p in self.parts[:-1]):
            # causal parts before the last: the one filter is the parts in turn
            return fft_convolve(x, self.fir.to(x.dtype), ms=self.ms, skip=self.skip)
        # A zero-phase part rings before the signal's first sample; in turn, each part starts
        # on its input's first sample, so what follows never hears that ringing. The one
        # filter would let it through to the output's first samples (as far as the later
        # parts reach): those are the parts run in turn over the signal's head.
        reach = sum(p.fir.shape[-1] for p in self.parts[1:])
        whole = reach + sum(p.skip for p in self.parts)  # the head's outputs before `reach` are exact
        head = x[..., :whole]
        for p in self.parts:
            head = p(head)
        if x.shape[-1] <= whole:
            return head  # a signal this short is all head: the parts in turn
        y = fft_convolve(x, self.fir.to(x.dtype), ms=self.ms, skip=self.skip)
        if torch.is_grad_enabled() and (y.requires_grad or head.requires_grad):
            return torch.cat([head[..., :reach], y[..., reach:]], -1)
        y[..., :reach] = head[..., :reach]  # a render: no full-length copy
        return y

    @property
    def basis(self) -> str | None:
        """``"ms"`` or ``"lr"``: the channels its two responses filter; None for one response
        (the same on left and right as on mid and side)."""
        if self.fir.shape[1] == 1:
            return None
        return "ms" if self.ms else "lr"

    def then(self, other: LinearFilter) -> LinearFilter | None:
        """This filter followed by ``other`` as one: their impulse responses convolved (in
        float64 at least), the delays added; applied, the same as the two in turn but for
        float rounding. None where the two filter different channel pairs (mid/side against
        left/right)."""
        if None not in (self.basis, other.basis) and self.basis != other.basis:
            return None
        a, b = self.fir, other.fir
        n = a.shape[-1] + b.shape[-1] - 1
        size = next_fast_len(n)
        wide = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float64)
        spec = torch.fft.rfft(a.to(wide), n=size) * torch.fft.rfft(b.to(wide), n=size)
        fir = torch.fft.irfft(spec, n=size)[..., :n]
        parts = (*(self.parts or (self,)), *(other.parts or (other,)))
        return LinearFilter(fir, self.skip + other.skip, "ms" in (self.basis, other.basis), parts)


def sections_filter(b: Tensor, a: Tensor, tail: int, mix: Tensor | None = None, *,
                    ms: bool = False) -> LinearFilter:
    """Second-order sections ``(B|1, C|1, S, 3)`` as a :class:`LinearFilter`: their impulse
    response, frequency-sampled on a grid of at least ``tail`` points (float64); ``ms``: the
    sections' two channels filter mid and side. ``mix`` ``(B|1, C|1)`` folds dry/wet into
    the response. Differentiable in ``b``, ``a`` and ``mix``; CPU and CUDA."""
    if tail < 1:
        raise ValueError(f"parametric_eq: tail must be >= 1 sample, got {tail}")
    length = next_fast_len(max(tail, 16))
    # (B|1, C|1, length), float64; the same sections (a fixed high-pass, an EQ between
    # steps) give the same response: designed once, not at every render.
    fir = _FIRS.get(constant_key("fir", b, a, length), lambda: fir_from_sections(b, a, length))
    if mix is not None:
        fir = fold_mix(fir, mix.unsqueeze(-1))
    return LinearFilter(fir, ms=ms)


def fold_mix(fir: Tensor, mix: Tensor) -> Tensor:
    """Dry/wet folded into an impulse response ``fir`` ``(..., L)`` (lag 0 first):
    ``(1 - mix) delta + mix fir``, ``mix`` broadcast against ``fir[..., :1]``.
    Differentiable in both."""
    mix = mix.to(fir.dtype)
    return torch.cat([mix * fir[..., :1] + (1.0 - mix), mix * fir[..., 1:]], dim=-1)


def render_fft(x: Tensor, b: Tensor, a: Tensor, tail: int, mix: Tensor | None = None, *,
               ms: bool = False) -> Tensor:
    """Second-order sections ``(B|1, C|1, S, 3)`` applied to ``x`` ``(B, C, T)`` as an FIR
    (:func:`sections_filter`, then :func:`fft_convolve`; ``ms``: the sections' two channels
    filter mid and side of a left/right ``x``). ``mix`` ``(B|1, C|1)`` folds dry/wet into
    the response. Differentiable in ``x``, ``b``, ``a`` and ``mix``; CPU and CUDA."""
    return sections_filter(b, a, tail, mix, ms=ms)(x)


def fft_convolve(x: Tensor, fir: Tensor, *, ms: bool = False, skip: int = 0) -> Tensor:
    """Causal linear convolution ``y[t] = sum_m fir[m] x[t - m]``, cut to ``x``'s length.

    Signals much longer than the filter are cut into overlapping blocks (overlap-save)
    with an FFT size of 8-16x the filter: about the arithmetic of one long transform,
    but each transform fits in cache, which made forward+backward faster on long tracks
    (CPU; BENCHMARKS.md, profile notes); short signals take one transform.

    Args:
        x: ``(B, C, T)``.
        fir: ``(B|1, C|1, L)`` impulse response.
        ms: ``x`` and the result are left/right and ``fir``'s two channels filter its mid
            and side (:func:`~diffmix.functional.gain.mid_side`): without a gradient, on a
            long signal, the mid/side sums are taken block by block (no full-length copies).
        skip: samples of delay taken out: the result is the convolution's samples ``skip
            .. skip + T`` of ``x`` followed by ``skip`` zeros (a zero-phase FIR's causal
            taps), as padding ``x`` and cutting would give, without the padded copy on a
            long signal rendered without a gradient.

    Shape:
        ``(B, C, T)``.

    >>> fft_convolve(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[1.0, 1.0]]])).tolist()
    [[[1.0, 3.0, 5.0]]]
    """
    n_time, length = x.shape[-1], fir.shape[-1]
    ms = ms and fir.shape[1] != 1  # one response for mid and side is the same on left and right
    block = 1 << (max(8 * length, 1 << 15) - 1).bit_length()  # powers of 2: fastest on CPU and GPU
    if skip and n_time + skip + length - 1 <= 2 * block:
        return fft_convolve(torch.nn.functional.pad(x, (0, skip)), fir, ms=ms)[..., skip:]
    if n_time + length - 1 <= 2 * block:
        if ms:
            return left_right(fft_convolve(mid_side(x), fir))
        n = next_fast_len(n_time + length - 1)
        cache = getattr(_FIXED, "inputs", None)
        if cache is not None and fir.requires_grad and not x.requires_grad and torch.is_grad_enabled():
            # a fixed excerpt under a fitted filter: its spectrum is shared, never changed in place
            spec_x = cache.get(constant_key("rfft", x, n), lambda: torch.fft.rfft(x, n=n))
            spec = spec_x * real_fft(fir, n)
        else:
            spec = _mul(real_fft(x, n), real_fft(fir, n))
        return torch.fft.irfft(spec, n=n)[..., :n_time]
    # Overlap-save with a hand-written backward: see :mod:`diffmix.functional._fft_conv`.
    return overlap_save(x, fir, block, ms=ms, skip=skip)


def _mul(spec: Tensor, response: Tensor) -> Tensor:
    """``spec * response``, in place when no gradient needs ``spec``'s old value.

    A fresh 100 MB product costs more in page faults than the multiply itself.
    """
    if torch.is_grad_enabled() and (spec.requires_grad or response.requires_grad):
        return spec * response
    return spec.mul_(response)
