"""The joint (ARX) stereo model: each channel from its own past and the other channel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.functional.restoration._common import _ARX_CHUNK, _ARX_SPAN, _frame_windows, _toeplitz
from diffmix.functional.restoration.ar import levinson


def _cross_filters(x: Tensor, ref: Tensor, hop: int, q: int, frames: Tensor) -> Tensor:
    """Per frame, the two-sided FIR ``h`` (taps ``-q .. q``) that best predicts ``x`` from
    ``ref`` over the Hann-windowed two hops centred on the frame (the autocorrelation
    method, as :func:`ar_coefficients`; a -60 dB white floor keeps it well posed). Only
    the ``frames`` (``(K, 2)`` rows ``(batch * C + channel, frame)``) are fitted.

    Shape:
        ``x, ref (B, C, T)`` -> ``(B, C, F, 2q + 1)`` float64 (zeros outside ``frames``).
    """
    b, c, t = x.shape
    nf = -(-t // hop)
    half = hop // 2
    taps = 2 * q + 1

    def windows(v: Tensor) -> Tensor:
        vp = tnf.pad(v.reshape(b * c, t), (half, nf * hop - t + 2 * hop - half))
        return vp.unfold(-1, 2 * hop, hop)[:, :nf][frames[:, 0], frames[:, 1]]

    win = torch.hann_window(2 * hop, periodic=False, dtype=x.dtype, device=x.device)
    n_fft = 1 << math.ceil(math.log2(2 * hop + taps))
    fx = torch.fft.rfft(windows(x) * win, n_fft)
    fr = torch.fft.rfft(windows(ref) * win, n_fft)
    auto = torch.fft.irfft(fr.real.square() + fr.imag.square(), n_fft)[..., :taps].double()
    cross = torch.fft.irfft(fx * fr.conj(), n_fft).double()  # [k] = sum_n x[n] ref[n - k]
    cross = torch.cat([cross[..., n_fft - q :], cross[..., : q + 1]], -1)  # lags -q .. q
    lag = (torch.arange(taps, device=x.device)[:, None]
           - torch.arange(taps, device=x.device)[None]).abs()
    eye = torch.eye(taps, dtype=auto.dtype, device=x.device)
    normal = auto[..., lag] + eye * (auto[..., :1, None] * 1e-6 + 1e-20)
    out = torch.zeros(b * c, nf, taps, dtype=torch.float64, device=x.device)
    if len(frames):
        out[frames[:, 0], frames[:, 1]] = torch.linalg.solve(normal, cross[..., None])[..., 0]
    return out.reshape(b, c, nf, taps)


def _arx_filters(x: Tensor, ref: Tensor | None, hop: int, p: int, q: int,
                 frames: Tensor, mono: bool = False, both: bool = False,
                 limit: Tensor | None = None) -> tuple[Tensor, ...]:
    """Per frame, the joint (ARX) predictor of ``x`` from its own ``p`` past samples and
    the ``2q + 1`` samples of ``ref`` around it: ``x[n] ~ -sum_k a[k] x[n - k] +
    sum_j h[j] ref[n - j]`` (``k = 1 .. p``, ``j = -q .. q``), least squares over the
    Hann-windowed ``_ARX_SPAN`` hops centred on the frame (the autocorrelation method,
    as :func:`ar_coefficients`, with its -60 dB white floor; longer than the AR fit's
    two hops, since the model has ``p + 2q`` coefficients). The error ``(a * x)[n] -
    (h * ref)[n]`` is what :func:`lsar_interpolate` minimises with ``drive = h * ref``
    (:func:`_fir_frames`). Only the ``frames`` (``(K, 2)`` rows ``(batch * C + channel,
    frame)``) are fitted; zeros elsewhere.

    With ``mono`` also the AR filter of order ``p`` fitted on the same windows (the
    model the ARX extends), next. With ``both`` also the backward model, last, which
    predicts ``x`` from its own ``p`` *next* samples, ``x[n] ~ -sum_k a[k] x[n + k] +
    sum_j h[j] ref[n + j]`` (the same fit on the time-reversed signals: the same
    autocorrelations, the cross-correlation at negated lags).

    ``ref`` ``None``: the other channel of ``x`` (stereo; read in place, as
    ``x.flip(1)``). ``limit`` (``(B, C, T)``, positive): both signals clamped to
    ``+-limit`` (the other channel to its own), as ``torch.clamp`` of the whole would,
    read at the frames' windows only.

    Shape:
        ``x, ref (B, C, T)`` -> ``(a (B, C, F, p + 1), h (B, C, F, 2q + 1))``, float64.
    """
    b, c, t = x.shape
    nf = -(-t // hop)
    span = _ARX_SPAN * hop
    half = (span - hop) // 2
    taps = 2 * q + 1

    def windows(v: Tensor | None, part: Tensor) -> Tensor:
        if v is None:  # the other channel of x: its row, as x.flip(1) holds it
            v, part = x, torch.stack([part[:, 0] + 1 - 2 * (part[:, 0] % 2), part[:, 1]], -1)
        out = _frame_windows(v.reshape(b * c, t), part, hop, half, span)
        if limit is not None:
            lw = _frame_windows(limit.reshape(b * c, t), part, hop, half, span)
            out = torch.maximum(torch.minimum(out, lw), -lw)
        return out

    win = torch.hann_window(span, periodic=False, dtype=x.dtype, device=x.device)
    n_fft = 1 << math.ceil(math.log2(span + p + taps))
    dev = x.device
    j = torch.arange(-q, q + 1, device=dev)
    lags = torch.arange(-q - p, q + 1, device=dev)
    a = torch.zeros(b * c, nf, p + 1, dtype=torch.float64, device=dev)
    h = torch.zeros(b * c, nf, taps, dtype=torch.float64, device=dev)
    a0 = torch.zeros_like(a) if mono else a
    ab, hb = (torch.zeros_like(a), torch.zeros_like(h)) if both else (a, h)
    r0 = []  # the mono fits' autocorrelations, chunk by chunk (one Levinson run for all)
    # In chunks of frames: the normal matrices, (p + 2q + 1)^2 each, add up at dense clicks.
    for lo in range(0, len(frames), _ARX_CHUNK):
        part = frames[lo : lo + _ARX_CHUNK]
        fx = torch.fft.rfft(windows(x, part) * win, n_fft)
        fr = torch.fft.rfft(windows(ref, part) * win, n_fft)
        rxx = torch.fft.irfft(fx.real.square() + fx.imag.square(), n_fft)[..., : p + 1].double()
        rrr = torch.fft.irfft(fr.real.square() + fr.imag.square(), n_fft)[..., :taps].double()
        # cross[k] = sum_n x[n] ref[n - k]; sum_n x[n - i] ref[n - j] = cross[j - i]
        cross = torch.fft.irfft(fx * fr.conj(), n_fft).double()
        # The normal matrix [[own, cross], [cross^T, other]]: the diagonal blocks (with
        # the floor) are the same forwards and backwards; only the cross blocks change.
        normal = rxx.new_empty(len(part), p + taps, p + taps)
        normal[:, :p, :p] = _toeplitz(rxx, p)
        normal[:, p:, p:] = _toeplitz(rrr, taps)
        floor = torch.cat([rxx[..., :1].expand(-1, p), rrr[..., :1].expand(-1, taps)], -1) * 1e-6 + 1e-20
        normal.diagonal(dim1=-2, dim2=-1).add_(floor)
        for sign, (fa, fh) in ((1, (a, h)), (-1, (ab, hb)))[: 2 if both else 1]:
            cl = cross[..., (sign * lags) % n_fft]  # lags -q - p .. q (negated: backward)
            # [i - 1, j + q] = cl[j - i + q + p] (i = 1 .. p, j = -q .. q): row i - 1 of
            # the strided rows cl[m ..] read from m = p - i, so the rows reversed
            normal[:, :p, p:] = cl.as_strided((len(cl), p, taps), (cl.stride(0), 1, 1)).flip(-2)
            normal[:, p:, :p] = normal[:, :p, p:].transpose(-1, -2)
            rhs = torch.cat([rxx[..., 1:], cl[..., j + q + p]], -1)
            w = _spd_solve(normal, rhs)
            fa[part[:, 0], part[:, 1]] = torch.cat([torch.ones_like(w[..., :1]), -w[..., :p]], -1)
            fh[part[:, 0], part[:, 1]] = w[..., p:]
        if mono:
            r0.append(torch.cat([rxx[..., :1] * (1.0 + 1e-6) + 1e-20, rxx[..., 1:]], -1))
    if mono and len(frames):
        a0[frames[:, 0], frames[:, 1]] = levinson(torch.cat(r0))
    out = [a.reshape(b, c, nf, p + 1), h.reshape(b, c, nf, taps)]
    out += [a0.reshape(b, c, nf, p + 1)] if mono else []
    out += [ab.reshape(b, c, nf, p + 1), hb.reshape(b, c, nf, taps)] if both else []
    return tuple(out)


def _spd_solve(mat: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``mat w = rhs`` for a batch of symmetric positive definite ``(K, n, n)``
    matrices (``rhs (K, n)``) by Cholesky, half the cost of an LU solve; the matrices
    whose factorisation fails (not numerically positive definite) fall back to LU."""
    chol, info = torch.linalg.cholesky_ex(mat)
    # Two triangular solves: batched `cholesky_solve` copies the factors first, and cost
    # more than they do.
    w = torch.linalg.solve_triangular(chol, rhs[..., None], upper=False)
    w = torch.linalg.solve_triangular(chol.mT, w, upper=True)[..., 0]
    bad = (info != 0).nonzero()[:, 0]
    if len(bad):
        w[bad] = torch.linalg.solve(mat[bad], rhs[bad][..., None])[..., 0]
    return w


def _fir_frames(ref: Tensor, h: Tensor, hop: int, frames: Tensor | None = None) -> Tensor:
    """``y[n] = sum_k h_f[k] ref[n - k]`` (``k = -q .. q``) with ``f`` the frame of ``n``:
    ``ref (B, C, T)``, ``h (B, C, F, 2q + 1)`` -> ``(B, C, T)``. Linear in ``ref``. With
    ``frames`` (``(K, 2)`` rows ``(batch * C + channel, frame)``) only those frames are
    filtered, zeros elsewhere (where ``h`` is zero, as :func:`_cross_filters` leaves it)."""
    b, c, t = ref.shape
    nf, taps = h.shape[-2], h.shape[-1]
    q = taps // 2
    xp = tnf.pad(ref.reshape(b * c, t), (q, nf * hop - t + q))
    seg = xp.unfold(-1, hop + 2 * q, hop)[:, :nf]  # (N, F, hop + 2q)
    hf = h.reshape(b * c, nf, taps)
    if frames is not None:
        seg, hf = seg[frames[:, 0], frames[:, 1]], hf[frames[:, 0], frames[:, 1]]
    n_fft = 1 << math.ceil(math.log2(hop + 4 * q + 1))
    filt = torch.fft.rfft(hf.to(ref.dtype), n_fft)
    y = torch.fft.irfft(torch.fft.rfft(seg, n_fft) * filt, n_fft)[..., 2 * q : 2 * q + hop]
    if frames is not None:
        full = y.new_zeros(b * c, nf, hop)
        full[frames[:, 0], frames[:, 1]] = y
        y = full
    return y.reshape(b * c, nf * hop)[:, :t].reshape(b, c, t)
