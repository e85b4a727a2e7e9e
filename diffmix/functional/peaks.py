"""Peaks and dynamics: sample peak, BS.1770 true peak, a smooth true-peak surrogate, PLR,
PSR and crest factor.

All functions take ``(batch, channels, time)`` audio. CPU and CUDA.

Conventions (each is tested): peaks of digital silence are ``0.0`` linear, i.e. ``-inf``
dB; PLR, PSR and crest factor of silence are ``0.0`` dB (nothing stands above the
average because there is nothing); :func:`true_peak_soft` stays finite (about -200 dBTP)
on silence so a loss built on it never sees ``-inf``.

References:
    ITU-R BS.1770-5 (2023), Annex 2: guidelines for accurate measurement of true-peak
    level. EBU Tech 3341 (2016), section 2.6 (true-peak meter).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from diffmix.checks import check_sample_rate, value_checks_enabled
from diffmix.functional.gain import amp_to_db
from diffmix.functional.loudness import (
    check_meter_input,
    integrated_loudness,
    short_term_loudness,
)
from diffmix.kernels.backend import check as check_backend
from diffmix.kernels.backend import numba_threads, resolve

_HALF_TAPS = 40  # taps each side of the interpolated point: 80 taps per phase
_KAISER_BETA = 8.0
# ITU-R BS.1770-5 Annex 2: the order-48, 4-phase interpolating FIR as the Recommendation
# prints it (row p gives the output 4n + p as sum_j row[j] x[n - j]).
ANNEX2_TAPS = (
    (0.0017089843750, 0.0109863281250, -0.0196533203125, 0.0332031250000, -0.0594482421875,
     0.1373291015625, 0.9721679687500, -0.1022949218750, 0.0476074218750, -0.0266113281250,
     0.0148925781250, -0.0083007812500),
    (-0.0291748046875, 0.0292968750000, -0.0517578125000, 0.0891113281250, -0.1665039062500,
     0.4650878906250, 0.7797851562500, -0.2003173828125, 0.1015625000000, -0.0582275390625,
     0.0330810546875, -0.0189208984375),
    (-0.0189208984375, 0.0330810546875, -0.0582275390625, 0.1015625000000, -0.2003173828125,
     0.7797851562500, 0.4650878906250, -0.1665039062500, 0.0891113281250, -0.0517578125000,
     0.0292968750000, -0.0291748046875),
    (-0.0083007812500, 0.0148925781250, -0.0266113281250, 0.0476074218750, -0.1022949218750,
     0.9721679687500, 0.1373291015625, -0.0594482421875, 0.0332031250000, -0.0196533203125,
     0.0109863281250, 0.0017089843750),
)
_IDEAL_FACTOR = 8  # the strict meter's ideal interpolation: 8 points per sample
_IDEAL_CORE = 1 << 15  # samples per FFT block of the ideal interpolation ...
_IDEAL_OVERLAP = 1 << 11  # ... and context either side: edge ringing below 2e-4 (0.002 dB)
# The float32 transforms' rounding on an ideal point, relative to its block's peak: at most
# 1.2e-6 measured (a full-scale random-sign block; music 4e-7). Added to every ideal point,
# so the meter never reads below the exact (float64) interpolation; 3.5e-5 dB at the peak.
_FFT_ROUNDING = 4e-6
numba: ModuleType | None
try:  # numba is a runtime dependency; conv1d is the fallback and the CUDA path.
    import numba
except ImportError:  # pragma: no cover - depends on the install
    numba = None

_BLOCK = 256  # output samples per vectorised accumulation block in the CPU kernel
_SEGMENT = 1 << 13  # samples per segment of the no-grad true-peak scan
_LANES_PER_PASS = 256  # segments per convolution call: bounds memory to ~2M samples


def oversampling_factor(sample_rate: int) -> int:
    """BS.1770 Annex 2: oversample to at least 192 kHz: 4x below 96 kHz, 2x below 192 kHz.

    >>> oversampling_factor(44100), oversampling_factor(96000), oversampling_factor(192000)
    (4, 2, 1)
    """
    sr = check_sample_rate(sample_rate, "true_peak")
    return 4 if sr < 96000 else 2 if sr < 192000 else 1


@functools.lru_cache(maxsize=16)
def interpolation_filter(factor: int) -> np.ndarray:
    """Polyphase interpolator: ``(factor - 1, 2 * 40)`` taps for the in-between phases.

    Row ``p - 1`` interpolates the point ``p / factor`` of a sample period after sample
    ``m`` from samples ``m - 39 .. m + 40``: a Kaiser-windowed (beta 8) ideal band-limited
    interpolator, each phase normalised to unit DC gain. Phase 0 is the samples
    themselves, so the true peak is never below the sample peak. Each phase delays a tone
    within 0.015 dB of the ideal up to 0.47 fs (48 taps reached only 0.42 fs, so dense
    content near Nyquist slipped past the limiter), wider than the 48-tap example filter
    of BS.1770 Annex 2.
    """
    d = np.arange(1, factor)[:, None] / factor + (_HALF_TAPS - 1) - np.arange(2 * _HALF_TAPS)
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (d / _HALF_TAPS) ** 2, 0.0, None)))
    taps = np.sinc(d) * window / np.i0(_KAISER_BETA)
    return taps / taps.sum(axis=1, keepdims=True)


def _phases(rows: Tensor, factor: int) -> Tensor:
    """``(N, T)`` -> ``(N, factor - 1, T)``: the interpolated in-between points."""
    taps = torch.as_tensor(interpolation_filter(factor), dtype=rows.dtype, device=rows.device)
    x = torch.nn.functional.pad(rows[:, None, :], (_HALF_TAPS - 1, _HALF_TAPS))
    return torch.nn.functional.conv1d(x, taps[:, None, :])


def _accumulate_phase(acc, xs, taps, p, w):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    # acc[i] += sum_k taps[p, k] xs[k + i] for i < w (xs holds w + n_taps - 1 samples).
    # Eight taps per pass over acc: an eighth of its loads and stores, which bound a
    # tap-by-tap loop (measured 26 -> 18 ms for the limiter's envelope of 30 s stereo).
    n_taps = taps.shape[1]
    k8 = n_taps - n_taps % 8
    for k in range(0, k8, 8):
        xk = xs[k: k + w + 7]
        t0, t1, t2, t3 = taps[p, k], taps[p, k + 1], taps[p, k + 2], taps[p, k + 3]
        t4, t5, t6, t7 = taps[p, k + 4], taps[p, k + 5], taps[p, k + 6], taps[p, k + 7]
        for i in range(w):
            acc[i] += ((t0 * xk[i] + t1 * xk[i + 1]) + (t2 * xk[i + 2] + t3 * xk[i + 3])) + (
                (t4 * xk[i + 4] + t5 * xk[i + 5]) + (t6 * xk[i + 6] + t7 * xk[i + 7]))
    for k in range(k8, n_taps):
        tap = taps[p, k]
        xk = xs[k: k + w]
        for i in range(w):
            acc[i] += tap * xk[i]


if numba is not None:
    _accumulate_phase = numba.njit(inline="always", fastmath={"contract"})(_accumulate_phase)


def _peak_kernel(x, taps, out):  # pragma: no cover - compiled
    # out[n, s] = max |interpolated point| over the block s of row n. Accumulating a block
    # of consecutive outputs tap by tap keeps every load contiguous, so it vectorises.
    n_rows, t = x.shape
    n_phase, n_taps = taps.shape
    half = n_taps // 2
    n_blocks = out.shape[1]
    for job in numba.prange(n_rows * n_blocks):
        r = job // n_blocks
        s = job % n_blocks
        lo = s * _BLOCK
        hi = min(t, lo + _BLOCK)
        acc = np.empty(_BLOCK, dtype=x.dtype)
        peak = 0.0
        for p in range(n_phase):
            for i in range(hi - lo):
                acc[i] = 0.0
            if lo - (half - 1) >= 0 and hi + half <= t:
                start = lo - (half - 1)
                _accumulate_phase(acc, x[r, start:hi + half], taps, p, hi - lo)
            else:
                for k in range(n_taps):
                    tap = taps[p, k]
                    off = lo - (half - 1) + k
                    for i in range(hi - lo):
                        j = off + i
                        if j >= 0 and j < t:
                            acc[i] += tap * x[r, j]
            for i in range(hi - lo):
                peak = max(peak, abs(acc[i]))
        out[r, s] = peak


if numba is not None:
    _peak_kernel = numba.njit(parallel=True, cache=True, fastmath={"contract"})(_peak_kernel)


def _between_peak(rows: Tensor, factor: int, kernel: str = "numba") -> Tensor:
    """Peak of the in-between points per row, in bounded memory and parallel segments.

    One long row convolves on a single thread; cutting it into overlapping segments
    batched together is several times faster and lets memory stay bounded.
    """
    n, t = rows.shape
    if kernel == "numba" and rows.device.type == "cpu" and numba is not None:
        xn = np.ascontiguousarray(rows.numpy())
        np_taps = interpolation_filter(factor).astype(xn.dtype)
        out = np.zeros((n, -(-t // _BLOCK)), dtype=np.float64)
        numba_threads()
        _peak_kernel(xn, np_taps, out)
        return torch.from_numpy(out.max(1)).to(rows.dtype)
    seg = min(_SEGMENT, t)
    n_seg = -(-t // seg)
    xp = torch.nn.functional.pad(rows, (_HALF_TAPS - 1, n_seg * seg - t + _HALF_TAPS))
    lanes = xp.unfold(1, seg + 2 * _HALF_TAPS - 1, seg).reshape(n * n_seg, 1, -1)
    taps = torch.as_tensor(interpolation_filter(factor), dtype=rows.dtype, device=rows.device)
    peaks = [
        torch.nn.functional.conv1d(lanes[i: i + _LANES_PER_PASS], taps[:, None, :])
        .abs().amax((-1, -2))
        for i in range(0, lanes.shape[0], _LANES_PER_PASS)
    ]
    # Zero padding beyond the end only ever adds in-between points of the true signal's
    # continuation with silence, which is what a converter would see too.
    return torch.cat(peaks).reshape(n, n_seg).amax(-1)


def oversample(x: Tensor, sample_rate: int, *, factor: int | None = None) -> Tensor:
    """Band-limited oversampling as used by the true-peak meter.

    Args:
        x: audio.
        sample_rate: in Hz.
        factor: oversampling factor; default :func:`oversampling_factor`.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T * factor)``; every ``factor``-th sample is the input.

    Differentiable in ``x``. CPU and CUDA.

    >>> oversample(torch.zeros(1, 2, 10), 48000).shape
    torch.Size([1, 2, 40])
    """
    check_meter_input(x, "oversample")
    f = oversampling_factor(sample_rate) if factor is None else _check_factor(factor)
    b, c, t = x.shape
    if f == 1:
        return x
    rows = x.reshape(b * c, t)
    full = torch.cat([rows[:, None, :], _phases(rows, f)], dim=1)  # (N, f, T)
    return full.transpose(1, 2).reshape(b, c, t * f)


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 16:
        raise ValueError(f"true_peak: factor must be an integer in [1, 16], got {factor!r}")
    return factor


def sample_peak(x: Tensor, sample_rate: int) -> Tensor:
    """Largest absolute sample value per channel.

    Shape:
        ``(B, C, T)`` -> ``(B, C)`` linear (1.0 = 0 dBFS).

    >>> sample_peak(torch.tensor([[[0.1, -0.5, 0.25]]]), 48000).tolist()
    [[0.5]]
    """
    check_meter_input(x, "sample_peak")
    return x.abs().amax(-1)


def true_peak(
    x: Tensor, sample_rate: int, *, factor: int | None = None, backend: str = "auto"
) -> Tensor:
    """True peak per channel, BS.1770 Annex 2 (oversampled peak).

    Args:
        x: audio.
        sample_rate: in Hz.
        factor: oversampling factor; default 4 below 96 kHz, 2 below 192 kHz, else 1.
        backend: ``"auto"``, ``"numba"``, ``"triton"`` or ``"torch"``
            (:mod:`diffmix.kernels.backend`); numba and Triton never materialise the
            oversampled signal.

    Shape:
        ``(B, C, T)`` -> ``(B, C)`` linear; ``20 log10`` of it is dBTP.

    Not meant for gradients (a max); use :func:`true_peak_soft` in losses. CPU and CUDA.

    References:
        ITU-R BS.1770-5 Annex 2; EBU Tech 3341 test cases 15-23.

    >>> t = torch.arange(4801, dtype=torch.float64)
    >>> fade = torch.hann_window(4801, periodic=False, dtype=torch.float64)
    >>> x = (fade * torch.sin(math.pi / 2 * t + math.pi / 4)).reshape(1, 1, -1)  # fs/4, 45 deg
    >>> round(20 * math.log10(float(sample_peak(x, 48000))), 2)
    -3.01
    >>> round(20 * math.log10(float(true_peak(x, 48000))), 2) + 0.0  # not -0.0
    0.0
    """
    f = oversampling_factor(sample_rate) if factor is None else _check_factor(factor)
    b, c, t = x.shape
    kernel = resolve(check_backend(backend, "true_peak"), x, "true_peak")
    if kernel == "numba" and f > 1 and not (
        torch.is_grad_enabled() and x.requires_grad
    ):
        # All in numpy and numba: one read for the sample peak (NaN propagates to the
        # check), one kernel pass for the in-between points, no torch thread wake-ups.
        check_meter_input(x, "true_peak", scan=False)
        xn = x.detach()
        xn = (xn if xn.dtype in (torch.float32, torch.float64) else xn.float()).reshape(b * c, t)
        xs = xn.numpy()
        np_peak = np.maximum(xs.max(-1), -xs.min(-1))  # |x| max without a full-size temporary
        if value_checks_enabled() and not np.isfinite(np_peak).all():
            raise ValueError("true_peak: audio contains NaN or Inf")
        np_between = _between_peak(xn, f, kernel).numpy()
        return torch.from_numpy(np.maximum(np_peak, np_between)).reshape(b, c).to(x.dtype)
    check_meter_input(x, "true_peak")
    peak = x.abs().amax(-1)
    if f == 1:
        return peak
    rows = x.reshape(b * c, t)
    if kernel == "triton" and not (torch.is_grad_enabled() and x.requires_grad):
        from diffmix.kernels.triton_ops import between

        taps = torch.as_tensor(interpolation_filter(f), dtype=x.dtype, device=x.device)
        return torch.maximum(peak, between(rows, taps)[0].abs().amax(-1).reshape(b, c))
    if torch.is_grad_enabled() and x.requires_grad:
        inter = _phases(rows, f).abs().amax((-1, -2))
    else:
        inter = _between_peak(rows.detach(), f, kernel)
    return torch.maximum(peak, inter.reshape(b, c))


@functools.lru_cache(maxsize=4)
def _kaiser_resampler(factor: int, zeros: int = 10, beta: float = 5.0) -> np.ndarray:
    """The phases ``(factor, 2 * zeros)`` over ``x[m - zeros + 1 .. m + zeros]`` of the
    common polyphase upsampler: a Kaiser (beta 5) windowed sinc cut at Nyquist, 10 zero
    crossings a side, normalised to unit gain at DC (the default design of scipy's
    ``resample_poly``). Its transition band is wide, so near Nyquist it passes images and
    reads above the ideal interpolation, and its phase 0 is the sample times a gain a hair
    above 1: the strict meter includes it for that reason."""
    half = zeros * factor
    i = np.arange(2 * half + 1)
    t = (i - half) / factor
    proto = np.sinc(t) * np.i0(beta * np.sqrt(np.clip(1.0 - (t / zeros) ** 2, 0.0, None)))
    scale = factor / proto.sum()
    d = np.arange(factor)[:, None] / factor - np.arange(-zeros + 1, zeros + 1)[None, :]
    w = np.i0(beta * np.sqrt(np.clip(1.0 - (d / zeros) ** 2, 0.0, None)))
    return np.sinc(d) * w * scale


def _ideal_between(rows: Tensor, factor: int = _IDEAL_FACTOR) -> Tensor:
    """``(N, T) -> (N, T)``: the largest ideal band-limited interpolation (zero spectrum
    above Nyquist, the Nyquist bin split evenly as numpy's FFT resampling does) over the
    ``factor - 1`` points strictly between samples ``m`` and ``m + 1``; zero beyond the ends.

    FFT blocks of 32768 samples with 2048 of context either side (:func:`_ideal_part`).
    """
    n, t = rows.shape
    with _one_thread(rows.device):
        whole = _ideal_part(lambda a, z: rows[:, a:z], t, 0, _ideal_grid(t)[2], factor)
    return whole.to(rows.dtype)


def _ideal_grid(t: int) -> tuple[int, int, int]:
    """``(core, overlap, blocks)``: the ideal interpolation's FFT block grid over ``t``
    samples (block ``j`` holds samples ``j core .. (j + 1) core``, with ``overlap`` of
    context either side, zeros beyond the ends)."""
    core = min(_IDEAL_CORE, t + (t % 2))
    return core, _IDEAL_OVERLAP, -(-t // core)


def _ideal_part(source: Callable[[int, int], Tensor], t: int, j0: int, j1: int,
                factor: int = _IDEAL_FACTOR, room: Tensor | None = None,
                errors: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``(N, hi - lo)`` float32: :func:`_ideal_between` over the samples ``lo = j0 core ..
    hi = min(t, j1 core)`` of blocks ``j0 .. j1`` of the grid (:func:`_ideal_grid`), from
    ``source(a, z)``, the signal's samples ``a .. z`` ``(N, z - a)``. Blocks are transformed
    on their own, so a part reads exactly as the same samples of the whole signal.
    ``room`` ``(N, j1 - j0)``: see :func:`_ideal_blocks` (skipped blocks read 0);
    ``errors`` ``(out (N, j1 - j0) float64, weights)``: each block's
    :func:`_ideal_error_bound` under ``weights``, written into ``out``."""
    core, overlap, _ = _ideal_grid(t)
    lo, hi = j0 * core, min(t, j1 * core)
    a, z = max(0, lo - overlap), min(t, j1 * core + overlap)
    part = source(a, z).float()  # float32 resolves a peak to 1e-6 dB, at a third of the time
    n = part.shape[0]
    width = core + 2 * overlap
    padded = torch.nn.functional.pad(part, (overlap - (lo - a), j1 * core + overlap - z))
    lanes = padded.unfold(1, width, core).reshape(n * (j1 - j0), width)
    out = torch.empty(n * (j1 - j0), core, dtype=part.dtype, device=part.device)
    _ideal_blocks(lanes, out, factor, overlap, core, None if room is None else room.reshape(-1),
                  None if errors is None else (errors[0].view(-1), errors[1]))
    return out.reshape(n, (j1 - j0) * core)[:, : hi - lo]


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """torch on one CPU thread inside: after numba's OpenMP kernels have run, torch's
    two-thread element-wise passes over these blocks were measured 3-5x slower than one
    thread on the shared 2-core box (the FFTs themselves are single-threaded)."""
    if device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _ideal_blocks(lanes: Tensor, out: Tensor, factor: int, overlap: int, core: int,
                  room: Tensor | None = None, errors: tuple[Tensor, Tensor] | None = None) -> None:
    """Fill ``out`` ``(blocks, core)`` from ``lanes`` ``(blocks, core + 2 overlap)``, 2 at a time.

    The zero-padded ``factor * width``-point inverse transform, phase by phase: the points
    ``p / factor`` after each sample are the ``width``-point inverse transform of the lane's
    spectrum twisted by ``exp(2 pi i k p / (factor width))`` (the split Nyquist bin folds to
    ``X[width / 2] cos(pi p / factor)``). The same trigonometric polynomial at the same
    points, to rounding, but transforms that stay in cache: 4-5x faster than one long
    transform. Phase 0 is the sample itself (the caller's level includes it).

    ``room`` ``(blocks,)`` float64 (CPU): how far each lane's Kaiser 8x points (the strict
    meter's FIR rows, at most the caller's level there) stay under the caller's floor. A
    pair of lanes whose ideal points can't make up that room (:func:`_ideal_error_bound`)
    skips its inverse transforms and reads 0: under the floor, at most the exact level.
    Pairs are kept as they are, so the lanes computed read bit for bit as without ``room``.
    ``errors`` ``(out (blocks,) float64, weights)``: each lane's :func:`_ideal_error_bound`
    under ``weights``, from the spectrum the transforms use anyway.
    """
    width = lanes.shape[1]
    twist = _phase_twists(width, factor, lanes.dtype, str(lanes.device))  # (factor - 1, width // 2 + 1)
    nyquist = twist[:, -1].real
    for i in range(0, lanes.shape[0], 2):
        spec = torch.fft.rfft(lanes[i: i + 2])  # (b, width // 2 + 1)
        if errors is not None:
            errors[0][i: i + 2] = _ideal_error_bound(spec, lanes[i: i + 2], factor, errors[1])
        if room is not None and bool((room[i: i + 2] > 0).all()):
            if bool((_ideal_error_bound(spec, lanes[i: i + 2], factor) < room[i: i + 2]).all()):
                out[i: i + 2] = 0.0
                continue
        z = spec[:, None, :] * twist
        z[..., -1] = spec[:, None, -1].real * nyquist
        phases = torch.fft.irfft(z, n=width)[..., overlap: overlap + core]
        torch.amax(phases.abs_(), dim=1, out=out[i: i + 2])
        # Never read low for the transforms' float32 rounding: add a bound on it.
        out[i: i + 2] += _FFT_ROUNDING * lanes[i: i + 2].abs().amax(1, keepdim=True)


def _ideal_error_bound(spec: Tensor, lanes: Tensor, factor: int, weights: Tensor | None = None) -> Tensor:
    """``(b,)`` float64: how far above the strict meter's Kaiser 8x points (over the same
    samples) any ideal point of each lane's core can read, rounding included.

    Both are linear in the lane: per frequency bin the ideal point ``p / factor`` after
    sample ``m`` is ``X_k exp(i w_k (m + p / factor)) / W`` and the Kaiser row's is
    ``X_k H_p(w_k) exp(i w_k m) / W``, so their difference is at most ``sum_k |X_k|
    max_p |exp(i w_k p / factor) - H_p(w_k)| / W`` (both halves of the spectrum; at the split
    Nyquist bin ``|cos(pi p / factor)| + |H_p(pi)|``). The rows err by ~0.2 % in the
    passband and more near Nyquist, so on music this is a few % of the lane's peak. The
    margin of 1e-4 of the lane's peak covers the float32 spectrum, transforms (at most
    1.2e-6 measured) and FIR sums (~20 units in the last place of ``sum |h| |x|``), and
    the :data:`_FFT_ROUNDING` added to each point (and ~80 taps' sums, :func:`_fir_error_weights`).
    ``weights``: per bin, :func:`_ideal_error_weights`'s (the default) or another row set's.
    """
    weights = _ideal_error_weights(lanes.shape[1], factor) if weights is None else weights
    peak = lanes.abs().amax(1).to(torch.float64)
    return (spec.abs().to(torch.float64) @ weights) * (1.0 + 1e-3) + 1e-4 * peak


def _row_errors(rows: np.ndarray, positions: Sequence[float], width: int) -> np.ndarray:
    """``(width // 2 + 1,)``: per bin ``w_k = 2 pi k / width``, the largest ``|exp(i w_k d) -
    H(w_k)|`` over FIR ``rows`` ``(R, 2 half)`` (over ``x[m - half + 1 .. m + half]``), each
    against the ideal point at its position ``d``; at the split Nyquist bin ``|cos(pi d)| +
    |H(pi)|``. Each response is one transform of the row's taps laid on the ``width``-point
    circle (``H(w) = sum_j h_j exp(i w j)``, the conjugate of their DFT)."""
    half = rows.shape[1] // 2
    at = np.arange(-half + 1, half + 1) % width
    w = 2 * np.pi * np.arange(width // 2 + 1) / width
    worst = np.zeros(width // 2 + 1)
    for row, d in zip(rows, positions, strict=True):
        laid = np.zeros(width)
        laid[at] = row
        h = np.conj(np.fft.rfft(laid))
        err = np.abs(np.exp(1j * w * d) - h)
        err[-1] = abs(math.cos(math.pi * d)) + abs(h[-1])  # the split Nyquist bin
        worst = np.maximum(worst, err)
    return worst


def _both_halves(width: int) -> np.ndarray:
    """A real lane's spectrum counts each bin twice but DC and Nyquist; over ``width``."""
    k = np.arange(width // 2 + 1)
    return np.where((k == 0) | (k == width // 2), 1.0, 2.0) / width


@functools.lru_cache(maxsize=4)
def _ideal_error_weights(width: int, factor: int) -> Tensor:
    """``(width // 2 + 1,)`` float64: :func:`_ideal_error_bound`'s weight of each bin."""
    rows = _kaiser_resampler(factor)  # (factor, 2 zeros) over x[m - zeros + 1 .. m + zeros]
    worst = _row_errors(rows[1:], [p / factor for p in range(1, factor)], width)
    return torch.from_numpy(worst * _both_halves(width))


@functools.lru_cache(maxsize=4)
def _fir_error_weights(width: int, meter_factor: int) -> Tensor:
    """As :func:`_ideal_error_weights`, for the rows the ideal points bound on a floored CPU
    strict level (:func:`_strict_ideal_first`): the Kaiser 8x in-between rows and this
    module's meter at ``meter_factor`` (its phase ``p`` against the ideal point ``p /
    meter_factor``, one of the ideal's eighths), whichever errs more in each bin."""
    worst = _ideal_error_weights(width, _IDEAL_FACTOR)
    if meter_factor > 1:
        rows = interpolation_filter(meter_factor)  # over x[m - 39 .. m + 40]
        meter = _row_errors(rows, [p / meter_factor for p in range(1, meter_factor)], width)
        worst = torch.maximum(worst, torch.from_numpy(meter * _both_halves(width)))
    return worst


@functools.lru_cache(maxsize=8)
def _phase_twists(width: int, factor: int, dtype: torch.dtype, device: str) -> Tensor:
    """``(factor - 1, width // 2 + 1)`` complex: ``exp(2 pi i k p / (factor width))`` for the
    phases ``p = 1 .. factor - 1``; the last column holds ``cos(pi p / factor)`` (real)."""
    k = torch.arange(width // 2 + 1, dtype=torch.float64)
    p = torch.arange(1, factor, dtype=torch.float64)[:, None]
    twist = torch.polar(torch.ones((), dtype=torch.float64), (2 * math.pi / (factor * width)) * k * p)
    twist[:, -1] = torch.cos(math.pi * p[:, 0] / factor)
    return twist.to(device, torch.complex64 if dtype == torch.float32 else torch.complex128)


def strict_envelope(x: Tensor, sample_rate: int, *, meter: bool = True, gain: Tensor | None = None,
                    floor: Tensor | None = None, ideal_first: bool = False,
                    bound: Tensor | None = None) -> Tensor:
    """Per-sample level that no usual true-peak meter exceeds, channels linked.

    ``level[b, n]`` is the largest of ``|x[n]|`` and, on both sides of sample ``n``, the
    in-between points of: this module's meter (:func:`true_peak`), BS.1770 Annex 2's own
    48-tap filter and the common Kaiser polyphase upsampler at 4x and 8x (both pass images
    near Nyquist, so they read above the ideal there), and ideal 8x interpolation (which
    sees content up to Nyquist and peaks between 4x points). A ceiling held on this level
    holds on each of those meters by construction. ``meter=False`` leaves out this module's
    meter, for a caller that takes the maximum with its envelope anyway (the limiter's).
    ``gain`` ``(B, 1, T)`` meters ``x * gain`` without a full-length copy of it.

    ``floor`` ``(B,)`` (linear) is for a caller that only asks which samples reach a level:
    the level is then exact wherever it reaches ``floor``, and elsewhere at most the exact
    one (so ``max(level, floor)`` is exactly ``max(exact, floor)``, and so are a comparison
    with any level at or above ``floor`` and the peak, where that reaches it). On CPU the FIR
    rows skip the 256-sample blocks whose samples, times the largest row's L1 norm, stay
    under it (:func:`_fir_todo`), and the ideal interpolation skips the FFT blocks whose
    Kaiser 8x points stay further under it than any ideal point can read above them
    (:func:`_ideal_error_bound`: a few % of the block's peak on music).
    ``ideal_first`` (with ``floor``, on CPU) turns that round: every ideal point is computed
    first, and the costlier FIR rows run only in the blocks where those points leave them
    room to reach the floor (:func:`_strict_ideal_first`); the same level where it counts.
    What a floor far under the peak wants (a limiter's level: a few % of blocks reach it).
    ``bound`` ``(B, blocks)`` float64 (with ``floor``, on CPU): the caller's upper bound on
    every FIR point of each 256-sample block of the metered signal (a limiter knows one for
    its output), used where it is tighter than the rows' own.

    Shape:
        ``(B, C, T)`` -> ``(B, T)`` linear. Not differentiable (a max); CPU and CUDA.
    """
    check_meter_input(x, "strict_envelope")
    b, c, t = x.shape
    if gain is not None and gain.shape != (b, 1, t):
        raise ValueError(f"strict_envelope: gain must be (B, 1, T) = {(b, 1, t)}, got {tuple(gain.shape)}")
    if floor is not None:
        floor = floor.detach().reshape(-1).to("cpu", torch.float64)
        if floor.shape != (b,):
            raise ValueError(f"strict_envelope: floor must have B = {b} elements, got {floor.numel()}")
    known = None if bound is None or floor is None else bound.detach().to("cpu", torch.float64)
    if known is not None and known.shape != (b, -(-t // _BLOCK)):
        raise ValueError(f"strict_envelope: bound must be (B, blocks) = {(b, -(-t // _BLOCK))}, "
                         f"got {tuple(known.shape)}")
    with torch.no_grad():
        x = x.detach()
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()

        def source(a: int, z: int) -> Tensor:  # the metered signal's samples a .. z, (B, C, z - a)
            return x[..., a:z] if gain is None else x[..., a:z] * gain[..., a:z].to(x.dtype)

        taps, phase0 = _strict_rows()
        f = oversampling_factor(sample_rate)
        if ideal_first and floor is not None and x.device.type == "cpu" and _compiled(x):
            return _strict_ideal_first(source, b, c, t, x.dtype, f if meter else 1, phase0, floor)
        firs = [taps, *([interpolation_filter(f)] if f > 1 and meter else [])]
        # Context that makes each FIR point exact, on the compiled kernel's block grid (its
        # vectorised sums group by blocks from the first sample: a part reads as the whole).
        reach = -(-max(r.shape[1] for r in firs) // _BLOCK) * _BLOCK
        level = torch.empty(b, t, dtype=x.dtype, device=x.device)
        core, _, blocks = _ideal_grid(t)
        # Parts of a few blocks keep every temporary small (on CPU): a whole-length copy per
        # step cost more in page faults than in arithmetic. Each part reads as the whole would.
        step = _STRICT_PART_BLOCKS if x.device.type == "cpu" else blocks
        last = x.new_zeros(b * c)  # the ideal level between the sample before a part and its first
        last_mag = [x.new_zeros(b)]  # |x| at the sample before a part, channels linked
        # Below a floor on CPU, each block's ideal points are skipped where the FIR rows'
        # level (or their bound, where the rows were skipped too) leaves more room under the
        # floor than the ideal points can make up (_ideal_blocks); a test on the host.
        skip = floor is not None and x.device.type == "cpu"

        def ideal(j0: int, room: Tensor | None) -> Tensor:
            j1 = min(blocks, j0 + step)
            return _ideal_part(lambda a, z: source(a, z).reshape(b * c, z - a), t, j0, j1,
                               room=room).to(x.dtype)

        def rows(j0: int) -> tuple[Tensor, Tensor | None]:
            """Part ``j0``'s level but for its ideal points, ``(B, hi - lo)``, and each lane's
            room for them under the floor, ``(B C, blocks)`` (None: no skipping)."""
            j1 = min(blocks, j0 + step)
            lo, hi = j0 * core, min(t, j1 * core)
            a, z = max(0, lo - reach), min(t, hi + reach)
            part = source(a, z)
            mags = part.abs().amax(1)  # (B, z - a): for the level and the FIR rows' bounds
            out = mags[:, lo - a : hi - a]
            # The Kaiser phase 0 on both sides of sample n: the samples n - 1 and n times a gain.
            mag_before = torch.cat([last_mag[0][:, None], out[:, :-1]], 1)
            last_mag[0] = out[:, -1]
            out = torch.maximum(out, phase0 * torch.maximum(out, mag_before))
            room = None
            for rows_taps in firs:
                bound = None if floor is None else _fir_bounds(part, rows_taps, mags)
                if bound is not None and known is not None:  # parts start on the block grid
                    bound = torch.minimum(bound, known[:, a // _BLOCK: a // _BLOCK + bound.shape[1]])
                # With ideal blocks to skip, the Kaiser rows run wherever their bound comes
                # near the floor: their level leaves the ideal points more room than the bound.
                under = floor * (1.0 - _IDEAL_ROOM) if skip and rows_taps is taps else floor
                todo = None if bound is None else (bound >= under[:, None]).to(torch.uint8).numpy()
                fir = _fir_envelope(part, rows_taps, todo)[:, lo - a : hi - a]
                torch.maximum(out, fir, out=out)
                if skip and rows_taps is taps:  # the Kaiser 8x rows, and where skipped their bound
                    if bound is not None:
                        held = torch.from_numpy(todo).bool().repeat_interleave(_BLOCK, 1)[:, lo - a : hi - a]
                        fir = torch.where(held, fir.to(torch.float64),
                                          bound.repeat_interleave(_BLOCK, 1)[:, lo - a : hi - a])
                    top = torch.nn.functional.pad(fir.to(torch.float64), (0, (j1 - j0) * core - (hi - lo)))
                    top = top.view(b, j1 - j0, core).amax(-1)
                    room = (floor[:, None] - top)[:, None, :].expand(b, c, j1 - j0).reshape(b * c, j1 - j0)
            return out, room

        starts = list(range(0, blocks, step))
        # On CPU a part's ideal transforms run on a second thread while the next part's FIR
        # rows and maxima run (torch releases the GIL; each side on one torch thread).
        pool = ThreadPoolExecutor(max_workers=1) if x.device.type == "cpu" and len(starts) > 1 else None
        with _one_thread(x.device), contextlib.ExitStack() as stack:
            if pool is not None:
                stack.callback(pool.shutdown, cancel_futures=True)
            # The last part's (j0, level so far, ideal points to come).
            pending: tuple[int, Tensor, Future | Tensor] | None = None
            for j0 in [*starts, None]:
                if j0 is not None:
                    out, room = rows(j0)
                    ahead = pool.submit(ideal, j0, room) if pool is not None else None
                if pending is not None:
                    p0, p_out, p_ahead = pending
                    lo, hi = p0 * core, min(t, min(blocks, p0 + step) * core)
                    between = p_ahead.result() if isinstance(p_ahead, Future) else p_ahead
                    before = torch.cat([last[:, None], between[:, :-1]], 1)
                    last = between[:, -1]
                    peak = torch.maximum(between, before).view(b, c, hi - lo).amax(1)
                    level[:, lo:hi] = torch.maximum(p_out, peak)
                pending = None if j0 is None else (j0, out, ahead if ahead is not None else ideal(j0, room))
        return level


def _compiled(x: Tensor) -> bool:
    """Whether :func:`_fir_envelope` runs the compiled kernel (and :func:`_fir_bounds` has a
    bound) for ``x``."""
    from diffmix.kernels.backend import use_numba

    return x.device.type == "cpu" and use_numba(x, "strict_envelope")


def _strict_ideal_first(source: Callable[[int, int], Tensor], b: int, c: int, t: int, dtype: torch.dtype,
                        meter_factor: int, phase0: float, floor: Tensor) -> Tensor:
    """:func:`strict_envelope` ``(B, T)`` of ``source(a, z)`` (its samples ``a .. z``,
    ``(B, C, z - a)``) under ``floor`` ``(B,)``, ideal points first (CPU, compiled kernel).

    Every ideal point is computed (:func:`_ideal_part`), with each FFT block's bound on how
    far any Kaiser 8x point, or any point of this module's meter at ``meter_factor`` (1:
    not metered), can read above the ideal point at its position (:func:`_ideal_error_bound`
    under :func:`_fir_error_weights`). Those rows then run only in the 256-sample blocks
    where the ideal points on either side of some sample, plus that bound, reach the
    floor: elsewhere every point of theirs stays under it. Annex 2's rows, which err
    against the ideal by up to 2 % in the passband, run where their own L1 bound reaches
    the floor (:func:`_fir_bounds`). So the level is exact wherever it reaches the floor
    and at most exact elsewhere, as :func:`strict_envelope` promises. Parts of a few FFT
    blocks, whose ideal points are computed on two worker threads ahead of the rows.
    """
    rows8 = _kaiser_resampler(_IDEAL_FACTOR)[1:]  # the Kaiser 8x in-between rows, over x[m - 9 .. m + 10]
    annex = _annex2_rows()
    bounded = [rows8, *([interpolation_filter(meter_factor)] if meter_factor > 1 else [])]
    reach = -(-max(r.shape[1] for r in (annex, *bounded)) // _BLOCK) * _BLOCK
    core, overlap, blocks = _ideal_grid(t)
    weights = _fir_error_weights(core + 2 * overlap, meter_factor)
    per_lane = core // _BLOCK if core % _BLOCK == 0 else None  # 256-blocks per FFT block
    step = _STRICT_PART_BLOCKS
    level = torch.empty(b, t, dtype=dtype)

    def ideal(j0: int) -> tuple[Tensor, Tensor]:
        j1 = min(blocks, j0 + step)
        errors = torch.empty(b * c, j1 - j0, dtype=torch.float64)
        between = _ideal_part(lambda a, z: source(a, z).reshape(b * c, z - a), t, j0, j1,
                              errors=(errors, weights))
        return between.to(dtype), errors

    last = torch.zeros(b * c, dtype=dtype)  # the ideal level between a part's first sample and the one before
    last_err = torch.zeros(b, dtype=torch.float64)  # that point's FFT block's error bound, channels linked
    last_mag = torch.zeros(b, dtype=dtype)
    starts = list(range(0, blocks, step))
    # Two parts' ideal points at a time (each torch thread on its own core: the rows left
    # are a few % of the work), in order.
    with _one_thread(torch.device("cpu")), ThreadPoolExecutor(max_workers=2) as pool:
        ahead = [pool.submit(ideal, j) for j in starts[:2]]
        for i, j0 in enumerate(starts):
            between, errors = ahead.pop(0).result()
            if i + 2 < len(starts):
                ahead.append(pool.submit(ideal, starts[i + 2]))
            j1 = min(blocks, j0 + step)
            lo, hi = j0 * core, min(t, j1 * core)
            before = torch.cat([last[:, None], between[:, :-1]], 1)
            last = between[:, -1]
            near = torch.maximum(between, before).view(b, c, hi - lo).amax(1)  # (B, n)
            # Each 256-block's bound on the bounded rows' points: the ideal points on either
            # side of its samples plus their FFT blocks' error bounds (the point before a
            # part's first sample lies in the block before).
            n_blk = -(-(hi - lo) // _BLOCK)
            top = torch.nn.functional.pad(near, (0, n_blk * _BLOCK - (hi - lo)))
            top = top.view(b, n_blk, _BLOCK).amax(-1)
            err = errors.view(b, c, j1 - j0).amax(1)  # (B, j1 - j0)
            if per_lane is None:  # one FFT block shorter than 256 samples: the whole signal
                err_blk = err.amax(1, keepdim=True).expand(b, n_blk)
            else:
                err_blk = err.repeat_interleave(per_lane, 1)[:, :n_blk].clone()
                err_blk[:, ::per_lane] = torch.maximum(err_blk[:, ::per_lane], torch.cat(
                    [last_err[:, None], err[:, :-1]], 1)[:, : err_blk[:, ::per_lane].shape[1]])
            last_err = err[:, -1]
            need = top.to(torch.float64) + err_blk >= floor[:, None]  # (B, n_blk)
            a, z = max(0, lo - reach), min(t, hi + reach)
            part = source(a, z)
            mags = part.abs().amax(1)
            out = mags[:, lo - a : hi - a]
            mag_before = torch.cat([last_mag[:, None], out[:, :-1]], 1)
            last_mag = out[:, -1]
            out = torch.maximum(out, phase0 * torch.maximum(out, mag_before))
            torch.maximum(out, near, out=out)
            bound = _fir_bounds(part, annex, mags)
            assert bound is not None  # the compiled kernel serves the source (checked by the caller)
            todo = (bound >= floor[:, None]).to(torch.uint8).numpy()
            torch.maximum(out, _fir_envelope(part, annex, todo)[:, lo - a : hi - a], out=out)
            if bool(need.any()):
                todo = np.zeros((b, -(-(z - a) // _BLOCK)), dtype=np.uint8)
                first = (lo - a) // _BLOCK
                todo[:, first : first + n_blk] = need.numpy()
                for rows_taps in bounded:
                    torch.maximum(out, _fir_envelope(part, rows_taps, todo)[:, lo - a : hi - a], out=out)
            level[:, lo:hi] = out
    return level


def _fir_todo(x: Tensor, taps: np.ndarray, floor: Tensor) -> np.ndarray | None:
    """Which 256-sample blocks of ``x`` need ``taps``' rows to meet ``floor``:
    :func:`_fir_bounds` at or above it, ``(B, blocks)`` uint8; None where it has none."""
    bound = _fir_bounds(x, taps)
    return None if bound is None else (bound >= floor[:, None]).to(torch.uint8).numpy()


def _fir_bounds(x: Tensor, taps: np.ndarray, mag: Tensor | None = None) -> Tensor | None:
    """An upper bound on every point of ``taps``' rows in each 256-sample block of ``x``
    ``(B, C, T)`` (on :func:`_fir_envelope`'s compiled grid), ``(B, blocks)`` float64, or
    None where the compiled kernel does not serve ``x`` (then every block is done).

    A point of a block (the samples ``n`` of the block and the points on either side) reads
    ``x[m - half + 1 .. m + half]`` for ``m`` from one before the block to its last sample,
    so it is at most the largest row's L1 norm times the largest ``|x|`` within ``half``
    samples of the block; the compiled sums (float32: at most ~25 roundings of a sum of
    ``|h| |x|`` terms) are covered by a relative margin of 1e-5. ``mag``: ``|x|``'s largest
    channel per sample ``(B, T)``, where the caller has it.
    """
    from diffmix.kernels.backend import use_numba

    if x.device.type != "cpu" or not use_numba(x, "strict_envelope"):
        return None
    b, _, t = x.shape
    half = taps.shape[1] // 2
    if t > _BOUND_PART + 2 * _BLOCK and half <= _BLOCK:  # in parts (a block of context each side): no
        parts = []  # full-length temporaries, which cost more in fresh pages than in arithmetic
        for lo in range(0, t, _BOUND_PART):
            hi, a = min(t, lo + _BOUND_PART), max(0, lo - _BLOCK)
            first = (lo - a) // _BLOCK
            z = min(t, hi + _BLOCK)
            bound = _fir_bounds(x[..., a:z], taps, None if mag is None else mag[:, a:z])
            assert bound is not None
            parts.append(bound[:, first: first + -(-(hi - lo) // _BLOCK)])
        return torch.cat(parts, 1)
    l1 = float(np.abs(np.asarray(taps, dtype=np.float32 if x.dtype == torch.float32 else np.float64)
                      .astype(np.float64)).sum(1).max()) * (1.0 + 1e-5)
    n_blocks = -(-t // _BLOCK)
    mag = torch.nn.functional.pad(x.abs().amax(1) if mag is None else mag, (0, n_blocks * _BLOCK - t))
    blocks = mag.view(b, n_blocks, _BLOCK)
    reach = blocks.amax(-1)
    # the half samples either side of each block
    torch.maximum(reach[:, 1:], blocks[:, :-1, _BLOCK - half:].amax(-1), out=reach[:, 1:])
    torch.maximum(reach[:, :-1], blocks[:, 1:, :half].amax(-1), out=reach[:, :-1])
    return reach.to(torch.float64) * l1


# Below a floor, the strict FIR rows also run where their L1 bound is within this fraction
# under it, so that each skipped ideal block's room is more than its points' error bound
# (a few % of the block's peak on music).
_IDEAL_ROOM = 0.1

# Samples per part of _fir_bounds over a long signal (a multiple of its 256-sample blocks).
_BOUND_PART = 1 << 20

# Ideal-interpolation blocks per part of the strict envelope on CPU (8 x 32768 samples).
_STRICT_PART_BLOCKS = 8


@functools.lru_cache(maxsize=1)
def _strict_rows() -> tuple[np.ndarray, float]:
    """Annex 2's four phases and the Kaiser upsampler's 8x in-between phases as ``(11, 20)``
    rows over ``x[m - 9 .. m + 10]`` (Annex 2's 12 taps cover ``x[m - 5 .. m + 6]``: its
    prototype's delay of 23.5 puts its points at ``m + 1/8, 3/8, 5/8, 7/8``), and the gain
    of the upsamplers' phase 0 (the sample itself times a hair above 1).

    The Kaiser upsampler at 4x is its 8x rows 0, 2, 4, 6 times a constant below 1 (the same
    windowed sinc, normalised over a shorter prototype), so it never reads above them: it
    is left out (:func:`_strict_rows_all` keeps every row, for the tests). Both phase 0s
    are the sample times a gain (all other taps below 1e-16): the larger gain times ``|x|``
    stands for them.
    """
    k4, k8 = _kaiser_resampler(4), _kaiser_resampler(8)
    for q in range(4):  # the claim above, checked whenever the design changes
        scale = k8[2 * q][9] / k4[q][9] if q == 0 else k8[2 * q][10] / k4[q][10]
        assert scale >= 1.0 and np.allclose(k8[2 * q], scale * k4[q], rtol=1e-12, atol=1e-18)
    phase0 = np.delete(np.stack([k4[0], k8[0]]), 9, axis=1)
    assert np.abs(phase0).max() < 1e-16
    gain = float(max(k4[0][9], k8[0][9]))
    return np.concatenate([_annex2_rows(), k8[1:]]), gain


def _annex2_rows() -> np.ndarray:
    annex = np.zeros((4, 20))
    annex[:, 4:16] = np.asarray(ANNEX2_TAPS)[:, ::-1]
    return annex


def _strict_rows_all() -> np.ndarray:
    """Every FIR row of the strict meter, ``(16, 20)``: Annex 2, Kaiser 4x and 8x."""
    return np.concatenate([_annex2_rows(), _kaiser_resampler(4), _kaiser_resampler(8)])


def _fir_envelope(x: Tensor, taps: np.ndarray, todo: np.ndarray | None = None) -> Tensor:
    """``(B, C, T) -> (B, T)``: per sample, the largest of ``|x[n]|`` and the points of every
    row of ``taps`` (over ``x[m - half + 1 .. m + half]``) between ``n - 1`` and ``n + 1``,
    channels linked. The limiter's compiled kernel on CPU, ``conv1d`` elsewhere. ``todo``
    ``(B, blocks)`` (CPU, :func:`_fir_todo`): only those 256-sample blocks; 0 in the others."""
    b, c, t = x.shape
    from diffmix.kernels.backend import use_numba

    if x.device.type == "cpu" and use_numba(x, "strict_envelope"):
        from diffmix.functional._peak_kernels import envelope_numpy

        xn = np.ascontiguousarray(x.numpy())
        level = None if todo is None else np.zeros((b, t), dtype=xn.dtype)
        level, _ = envelope_numpy(xn, np.ascontiguousarray(taps, dtype=xn.dtype), level=level,
                                  todo=todo, want_code=False)
        return torch.from_numpy(level)
    half = taps.shape[1] // 2
    rows = x.reshape(b * c, 1, t)
    weight = torch.as_tensor(taps, dtype=x.dtype, device=x.device)[:, None, :]
    between = torch.nn.functional.conv1d(
        torch.nn.functional.pad(rows, (half - 1, half)), weight
    ).abs().amax(1)
    before = torch.nn.functional.pad(between[:, :-1], (1, 0))
    return torch.maximum(rows[:, 0].abs(), torch.maximum(between, before)).reshape(b, c, t).amax(1)


def strict_true_peak(x: Tensor, sample_rate: int) -> Tensor:
    """The highest reading among this meter, BS.1770 Annex 2's filter, the common Kaiser
    polyphase upsampler at 4x and 8x and ideal 8x interpolation (:func:`strict_envelope`):
    the level a delivery ceiling is checked against.

    Shape:
        ``(B, C, T)`` -> ``(B, C)`` linear; ``20 log10`` of it is dBTP.

    >>> x = torch.randn(1, 2, 4410, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> bool((strict_true_peak(x, 44100) >= true_peak(x, 44100)).all())
    True
    """
    check_meter_input(x, "strict_true_peak")
    b, c, t = x.shape
    with torch.no_grad():
        x = x.detach()
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        rows = x.reshape(b * c, t)
        # The peak alone, without the per-sample envelope: the meter's block-max kernel for
        # the FIR phases, and each row's largest ideal point.
        taps, gain = _strict_rows()
        peak = torch.maximum(gain * rows.abs().amax(-1), _ideal_between(rows).amax(-1))
        f = oversampling_factor(sample_rate)
        for rows_taps in (taps, interpolation_filter(f) if f > 1 else None):
            if rows_taps is None:
                continue
            if x.device.type == "cpu" and numba is not None:
                xn = np.ascontiguousarray(rows.numpy())
                out = np.zeros((b * c, -(-t // _BLOCK)), dtype=np.float64)
                numba_threads()
                _peak_kernel(xn, np.ascontiguousarray(rows_taps, dtype=xn.dtype), out)
                between = torch.from_numpy(out.max(1)).to(rows.dtype)
            else:
                between = _fir_envelope(rows.reshape(b * c, 1, t), rows_taps)
                between = between.amax(-1)
            peak = torch.maximum(peak, between)
        return peak.reshape(b, c)


@functools.lru_cache(maxsize=8)
def strict_sensitivity(sample_rate: int) -> tuple[float, float]:
    """``(gain, rounding)``: how far :func:`strict_envelope` can move when its float32
    input moves, so that ``level(x + e) <= level(x) + gain * max|e| + rounding * max|x|``
    at every sample for any ``e``, each side metered as this module meters it.

    ``gain`` is the largest L1 norm of the meter's linear maps: ``|x|`` (1, the upsamplers'
    phase 0 a hair above), every FIR row (BS.1770 Annex 2, the Kaiser 4x/8x upsamplers,
    this module's interpolator) and each ideal phase's kernel over an FFT block (its
    circular sinc, about 9). ``rounding`` bounds float32 arithmetic on both sides: an
    ``n``-tap row's sum errs by at most ``n`` units in the last place of ``sum |h| |x|``,
    and the ideal points by :data:`_FFT_ROUNDING` of their block's peak, plus the
    ``_FFT_ROUNDING`` term each reading adds. What a delivery uses to bound the true peak
    of a dithered, quantised render from the render's own reading
    (:func:`diffmix.delivery.quantised_peak_bound`).
    """
    taps, phase0 = _strict_rows()
    f = oversampling_factor(sample_rate)
    rows = [taps, *([interpolation_filter(f)] if f > 1 else [])]
    width = _IDEAL_CORE + 2 * _IDEAL_OVERLAP
    # a unit impulse's spectrum, twisted (its last column already the real Nyquist fold)
    twist = _phase_twists(width, _IDEAL_FACTOR, torch.float64, "cpu")
    ideal = float(torch.fft.irfft(twist, n=width).abs().sum(-1).max())
    gain = max(1.0, phase0, ideal, *(float(np.abs(r).sum(1).max()) for r in rows))
    unit = 2.0 ** -24
    fir = max(r.shape[1] * float(np.abs(r).sum(1).max()) for r in rows) * unit
    return gain, 2.0 * fir + 3.0 * _FFT_ROUNDING


def true_peak_soft(
    x: Tensor, sample_rate: int, *, temperature_db: float = 0.05, factor: int | None = None
) -> Tensor:
    """Smooth true peak in dBTP for losses: a log-sum-exp over the oversampled signal.

    ``soft = tau * log(sum exp(L_i / tau))`` with ``L_i`` the level in dB of each
    oversampled sample (all channels) and ``tau = temperature_db``. It is smooth, never
    below the oversampled peak, and at most ``tau * ln(N)`` above it (N oversampled
    samples), reached only if every sample sits at the peak (a steady sine reads about
    0.5 dB high); on programme material few samples are within a few ``tau`` of the peak.

    Args:
        x: audio.
        sample_rate: in Hz.
        temperature_db: smoothness ``tau`` in dB (> 0).
        factor: oversampling factor; default as :func:`true_peak`.

    Shape:
        ``(B, C, T)`` -> ``(B,)`` dBTP.

    Differentiable in ``x``; finite on silence (about -200 dBTP). CPU and CUDA.
    """
    if not (isinstance(temperature_db, (int, float)) and temperature_db > 0
            and math.isfinite(temperature_db)):
        raise ValueError(f"true_peak_soft: temperature_db must be > 0, got {temperature_db!r}")
    y = oversample(x, sample_rate, factor=factor)
    level = 10.0 * torch.log10(y.square() + 1e-20)
    return temperature_db * torch.logsumexp(level.flatten(1) / temperature_db, dim=-1)


def peak_ratio_db(peak_db: Tensor, loudness: Tensor) -> Tensor:
    """A peak level over a loudness, in dB: ``peak_db - loudness``, and ``0.0`` where the
    loudness is ``-inf`` (silence). The one definition of PLR and PSR (:func:`plr`,
    :func:`psr`, :func:`diffmix.functional.analysis.analyze`, the job reports).

    >>> peak_ratio_db(torch.tensor([-1.0, -90.0]), torch.tensor([-14.0, -math.inf])).tolist()
    [13.0, 0.0]
    """
    silent = torch.isinf(loudness) & (loudness < 0)
    return torch.where(silent, torch.zeros_like(peak_db), peak_db - loudness)


def plr(x: Tensor, sample_rate: int) -> Tensor:
    """Peak-to-loudness ratio: true peak (max over channels, dBTP) minus integrated loudness.

    Shape:
        ``(B, C, T)`` -> ``(B,)`` dB; ``0.0`` for silence.

    References:
        EBU R 128 s1 (2016); AES TD1004.
    """
    tp = amp_to_db(true_peak(x, sample_rate).amax(-1))
    return peak_ratio_db(tp, integrated_loudness(x, sample_rate))


def psr(x: Tensor, sample_rate: int) -> Tensor:
    """Peak-to-short-term-loudness ratio: true peak (dBTP) minus the maximum short-term
    loudness.

    Shape:
        ``(B, C, T)`` -> ``(B,)`` dB; ``0.0`` for silence.
    """
    tp = amp_to_db(true_peak(x, sample_rate).amax(-1))
    return peak_ratio_db(tp, short_term_loudness(x, sample_rate).amax(-1))


def crest_factor(x: Tensor, sample_rate: int) -> Tensor:
    """Crest factor per channel: sample peak over RMS, in dB (a full-scale sine: 3.01 dB).

    Shape:
        ``(B, C, T)`` -> ``(B, C)`` dB; ``0.0`` for a silent channel.

    >>> t = torch.arange(48000) / 48000
    >>> x = torch.sin(2 * math.pi * 1000 * t).reshape(1, 1, -1)
    >>> round(float(crest_factor(x, 48000)), 2)
    3.01
    """
    check_meter_input(x, "crest_factor")
    peak = x.abs().amax(-1)
    rms = x.square().mean(-1).sqrt()
    silent = peak == 0
    ratio = peak / torch.where(silent, torch.ones_like(rms), rms)
    return torch.where(silent, torch.zeros_like(peak), 20.0 * torch.log10(ratio))
