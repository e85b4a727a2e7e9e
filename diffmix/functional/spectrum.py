"""Long-term spectra and fractional-octave bands. Differentiable; CPU and CUDA.

The long-term spectrum is Welch's average of Hann-windowed periodograms. Bands follow
IEC 61260-1 base-10 fractional-octave centres (1 kHz reference); a band's power is the
sum of the bins between its edges, so band powers of a filtered signal are exactly the
band sums of ``|H|²`` times the input's spectrum, which lets the master EQ be fitted in the
frequency domain without rendering audio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffmix.functional._cache import SignalMemo
from diffmix.functional.gain import mid_side

# The exact centre of the third-octave band nominally called 20 Hz (IEC 61260-1: 19.95 Hz),
# the lowest band of the analysis spectrum.
NOMINAL_20_HZ = 1000.0 * 10.0**-1.7


def band_centres(fraction: int = 3, low_hz: float = 20.0, high_hz: float = 20000.0) -> Tensor:
    """Exact base-10 centres ``1000 · 10^(0.3·k/fraction)`` between ``low_hz`` and ``high_hz``.

    The one definition of fractional-octave band centres: the features, the match EQ and
    the analysis spectrum all take theirs from here (each with its own range).

    >>> [round(f) for f in band_centres(1).tolist()]
    [32, 63, 126, 251, 501, 1000, 1995, 3981, 7943, 15849]
    """
    g = 10.0 ** (0.3 / fraction)
    k_lo = math.ceil(math.log(low_hz / 1000.0, g) - 1e-9)
    k_hi = math.floor(math.log(high_hz / 1000.0, g) + 1e-9)
    k = torch.arange(k_lo, k_hi + 1, dtype=torch.float64)
    return 1000.0 * g**k


def band_membership(centres: Tensor, sample_rate: int, n_fft: int, fraction: int = 3) -> Tensor:
    """``(bands, n_fft // 2 + 1)`` 0/1 matrix: bin ``k`` belongs to the band whose edges
    ``fc · 10^(±0.15/fraction)`` hold its frequency."""
    half = 10.0 ** (0.15 / fraction)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, hi = (centres / half).unsqueeze(1), (centres * half).unsqueeze(1)
    return ((freqs >= lo) & (freqs < hi)).to(torch.float64)


def top_centre_hz(sample_rate: int, fraction: int = 3) -> float:
    """The highest centre (Hz) whose band's upper edge ``fc · 10^(0.15/fraction)`` is at or
    below Nyquist."""
    return sample_rate / 2 / 10 ** (0.15 / fraction)


def band_matrix(
    sample_rate: int, n_fft: int, fraction: int = 3, low_hz: float = 20.0, high_hz: float = 20000.0
) -> tuple[Tensor, Tensor]:
    """``(bands, n_fft // 2 + 1)`` 0/1 matrix summing rFFT bins into bands, and the centres.

    Bands above Nyquist, and bands too narrow to hold a bin, are dropped.
    """
    centres = band_centres(fraction, low_hz, min(high_hz, top_centre_hz(sample_rate, fraction)))
    matrix = band_membership(centres, sample_rate, n_fft, fraction)
    keep = matrix.sum(1) > 0
    return matrix[keep], centres[keep]


_WELCH_GROUP = 64  # frames per group of the backward's transforms
# Frames per group of the no-gradient Welch average on CPU: a group's frames and spectrum
# (2 MiB per float64 channel of 8192-point frames) stay small enough for the allocator to
# reuse their memory from group to group; larger groups took fresh pages each time.
_PSD_GROUP = 16
_WELCH_KEEP_BYTES = 32 << 20  # the largest forward spectrum the backward reuses


def welch_psd(x: Tensor, n_fft: int = 8192, hop: int | None = None, *,
              pre: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Average power per rFFT bin of ``(..., time)`` audio: ``(..., n_fft // 2 + 1)``.

    Hann window, 50% overlap by default; a signal shorter than ``n_fft`` is zero-padded.
    Normalised so a full-scale sine's bins sum to its mean square (0.5). ``pre`` maps the
    samples to the signal analysed, sample by sample (mid/side in float64, say): without a
    gradient on the CPU it is applied to a group of frames' samples at a time, so neither
    its full-length output nor a framed copy ever exists; the same values as ``pre(x)``.
    """
    hop = hop or n_fft // 2
    t = x.shape[-1]
    if t < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - t))
        t = n_fft
    n = (t - n_fft) // hop + 1
    graph = torch.is_grad_enabled() and x.requires_grad
    grouped = not graph and n > _PSD_GROUP and x.device.type == "cpu"
    if pre is not None and not grouped:
        x, pre = pre(x), None
    if graph and n_fft % hop == 0:
        return _Welch.apply(x, n_fft, hop)
    windows: list[Tensor] = []

    def power_of(j0: int, j1: int) -> Tensor:  # the power of frames j0 .. j1, (..., frames, bins)
        part = x[..., j0 * hop : (j1 - 1) * hop + n_fft]
        frames = (part if pre is None else pre(part)).unfold(-1, n_fft, hop)
        if not windows:
            windows.append(torch.hann_window(n_fft, periodic=True, dtype=frames.dtype, device=x.device))
        spec = torch.fft.rfft(frames * windows[0], dim=-1)
        return spec.real.square() + spec.imag.square()

    if not grouped:
        power = power_of(0, n).mean(-2)
    else:  # no gradient: a group of frames at a time, so no full-length framed copy or spectrum
        power = _grouped_power(x, pre, n, n_fft, hop, windows) / n
    power = power / windows[0].square().sum() / n_fft * 2.0
    power[..., 0] = power[..., 0] / 2.0
    if n_fft % 2 == 0:
        power[..., -1] = power[..., -1] / 2.0
    return power


def _grouped_power(x: Tensor, pre: Callable[[Tensor], Tensor] | None, n: int, n_fft: int, hop: int,
                   windows: list[Tensor]) -> Tensor:
    """The sum over ``n`` frames of their periodograms, :data:`_PSD_GROUP` frames at a time:
    the same arithmetic as the one-group path, with each group's windowed frames, spectrum
    and powers written into buffers made once (fresh buffers per group took fresh pages),
    and the groups' sums added in float64 (returned in the frames' dtype)."""
    bufs: list[Tensor] = []
    power: Tensor | None = None
    for j0 in range(0, n, _PSD_GROUP):
        j1 = min(n, j0 + _PSD_GROUP)
        part = x[..., j0 * hop : (j1 - 1) * hop + n_fft]
        frames = (part if pre is None else pre(part)).unfold(-1, n_fft, hop)
        if not windows:
            windows.append(torch.hann_window(n_fft, periodic=True, dtype=frames.dtype, device=x.device))
        if not bufs or frames.shape != bufs[0].shape:  # the first group, and a shorter last one
            spec = torch.empty(frames.shape[:-1] + (n_fft // 2 + 1,), dtype=windows[0].dtype.to_complex(),
                               device=x.device)
            bufs = [torch.empty_like(frames), spec, torch.empty_like(spec.real), torch.empty_like(spec.real)]
        windowed, spec, re2, im2 = bufs
        torch.mul(frames, windows[0], out=windowed)
        torch.fft.rfft(windowed, dim=-1, out=spec)
        torch.mul(spec.real, spec.real, out=re2)
        torch.mul(spec.imag, spec.imag, out=im2)
        group = re2.add_(im2).sum(-2)
        power = group.double() if power is None else power.add_(group)  # summed in float64
    assert power is not None
    return power.to(windows[0].dtype)


_MID_SIDE_PSD = SignalMemo()


def mid_side_psd(x: Tensor, n_fft: int = 8192) -> Tensor:
    """:func:`welch_psd` of ``x``'s mid and side, ``(B, 2, n_fft // 2 + 1)`` float64 (transformed
    in ``x``'s own dtype, each group's powers summed in float64: float32 audio reads within
    1e-5 dB of a float64 analysis at half its cost), from ``x``'s own samples a group of
    frames at a time and once per signal
    (:class:`~diffmix.functional._cache.SignalMemo`): a master job's match EQ and its
    report's tone error analyse the same input and reference. ``x``: ``(B, 2, T)``. Shared
    result: callers don't modify it. Not differentiable."""

    def make() -> Tensor:
        with torch.no_grad():
            return welch_psd(x, n_fft, pre=mid_side).double()

    return _MID_SIDE_PSD.get(x, int(n_fft), make)


class _Welch(torch.autograd.Function):
    # welch_psd with a hand-written backward: d|X_f[k]|^2 / du_f = 2 Re(X_f[k] e^{2 pi i k m / N})
    # for the windowed frame u_f, so each frame's gradient is one inverse transform of its own
    # spectrum times the incoming gradient, windowed and overlap-added. Autograd's generic
    # path (the complex transform's backward, the squares, the frames' scatter) kept every
    # frame's spectrum and cost about twice the arithmetic; here the spectra are recomputed
    # a group of frames at a time.
    @staticmethod
    def forward(ctx, x: Tensor, n_fft: int, hop: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        ctx.n_fft, ctx.hop = n_fft, hop
        window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
        spec = torch.fft.rfft(x.unfold(-1, n_fft, hop) * window, dim=-1)
        # A small one (a fit's excerpt: ~6 MB for 8 s of mid and side) is kept for the
        # backward, whose per-group transforms of the same frames equal it bit for bit.
        ctx.spec = spec if spec.numel() * spec.element_size() <= _WELCH_KEEP_BYTES else None
        power = (spec.real.square() + spec.imag.square()).mean(-2)
        return _normalise(power, window, n_fft)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        n_fft, hop = ctx.n_fft, ctx.hop
        lead, t = x.shape[:-1], x.shape[-1]
        rows = x.reshape(-1, t)
        frames = rows.unfold(-1, n_fft, hop)  # (R, n, N), a view
        n, r = frames.shape[1], n_fft // hop
        window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
        # The forward's scaling per bin and its mean over frames, with the one-sided sum's
        # DC and Nyquist terms doubled as irfft expects: grad_u = N irfft(A).
        coef = _normalise(grad.reshape(-1, grad.shape[-1]).to(x.dtype) / n, window, n_fft) * n_fft
        coef[..., 0] = coef[..., 0] * 2.0
        if n_fft % 2 == 0:
            coef[..., -1] = coef[..., -1] * 2.0
        segments = rows.new_zeros(rows.shape[0], n - 1 + r, hop)  # the frames' span, hop by hop
        kept = None if ctx.spec is None else ctx.spec.reshape(rows.shape[0], n, -1)
        for j0 in range(0, n, _WELCH_GROUP):
            j1 = min(n, j0 + _WELCH_GROUP)
            spec = torch.fft.rfft(frames[:, j0:j1] * window, dim=-1) if kept is None else kept[:, j0:j1]
            part = torch.fft.irfft(spec * coef.unsqueeze(1), n=n_fft, dim=-1).mul_(window)
            part = part.reshape(rows.shape[0], j1 - j0, r, hop)
            for p in range(r):  # frame f's p-th hop lands on hop f + p
                segments[:, j0 + p : j1 + p] += part[:, :, p]
        out = torch.nn.functional.pad(segments.reshape(rows.shape[0], -1), (0, t - (n - 1 + r) * hop))
        return out.reshape(*lead, t), None, None


def _normalise(power: Tensor, window: Tensor, n_fft: int) -> Tensor:
    """Welch's scaling of a mean periodogram ``(..., bins)``: a full-scale sine's bins sum to
    its mean square; DC and Nyquist are not doubled (one-sided)."""
    power = power / window.square().sum() / n_fft * 2.0
    power[..., 0] = power[..., 0] / 2.0
    if n_fft % 2 == 0:
        power[..., -1] = power[..., -1] / 2.0
    return power


def band_powers(psd: Tensor, matrix: Tensor) -> Tensor:
    """Sum a ``(..., bins)`` PSD into ``(..., bands)`` powers."""
    return psd @ matrix.to(psd.dtype).T


def power_db(power: Tensor, floor: float = 1e-12) -> Tensor:
    """Power to dB, floored so silence stays finite (and gradients finite)."""
    return 10.0 * torch.log10(power + floor)
