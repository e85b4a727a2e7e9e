"""Triton kernels for the true-peak interpolator: the meter and the limiter's envelope.

Loaded only through :func:`diffmix.kernels.triton_ops.kernels`. The interpolator's taps
(``(phases, taps)``, from :func:`diffmix.functional.peaks.interpolation_filter`) are an
input, so the kernels follow whatever filter the meter uses.

Forward: for each in-between point ``m`` (between samples ``m`` and ``m + 1``) the winning
phase's signed value ``v = sum_k taps[p, k] x[m - K/2 + 1 + k]`` and its phase ``p`` (the
first phase of largest ``|v|``); only those two values per sample are written, never the
oversampled signal. Backward (the adjoint, as a gather, so no atomics): with ``w[m]`` the
gradient reaching point ``m``, ``dx[j] = sum_k taps[p[m], k] w[m]`` over ``m = j + K/2 - 1 - k``.
"""

import triton
import triton.language as tl


@triton.jit
def between_fwd(x_ptr, taps_ptr, val_ptr, arg_ptr, T, P: tl.constexpr, K: tl.constexpr,
                BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = m < T
    base = x_ptr + row * T
    val = tl.load(base + m, mask=valid, other=0.0) * 0
    best = val - 1
    arg = tl.full((BLOCK,), 0, tl.int32)
    for p in tl.static_range(P):
        acc = best * 0
        for k in tl.static_range(K):
            j = m - (K // 2 - 1) + k
            xv = tl.load(base + j, mask=valid & (j >= 0) & (j < T), other=0.0)
            acc += tl.load(taps_ptr + p * K + k) * xv
        better = tl.abs(acc) > best
        best = tl.where(better, tl.abs(acc), best)
        val = tl.where(better, acc, val)
        arg = tl.where(better, p, arg)
    tl.store(val_ptr + row * T + m, val, mask=valid)
    tl.store(arg_ptr + row * T + m, arg, mask=valid)


@triton.jit
def between_bwd(w_ptr, arg_ptr, taps_ptr, gx_ptr, T, K: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = j < T
    acc = tl.load(w_ptr + row * T + j, mask=valid, other=0.0) * 0
    for k in tl.static_range(K):
        m = j + (K // 2 - 1) - k
        ok = valid & (m >= 0) & (m < T)
        wv = tl.load(w_ptr + row * T + m, mask=ok, other=0.0)
        p = tl.load(arg_ptr + row * T + m, mask=ok, other=0)
        acc += tl.load(taps_ptr + p * K + k, mask=ok, other=0.0) * wv
    tl.store(gx_ptr + row * T + j, acc, mask=valid)


@triton.jit
def window_min(req_ptr, held_ptr, arg_ptr, T, L, BLOCK: tl.constexpr):
    """The limiter ramp's running minimum: for ``i < T + L``, the minimum of ``req`` over
    ``i - L .. i`` with 1 outside ``[0, T)``, and the sample holding it (the latest of
    equal minima, -1 for the padding), as the numba kernel's deque keeps them."""
    row = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = T + L
    valid = i < n
    base = req_ptr + row * T
    first = tl.load(base + i * 0, mask=valid, other=1.0)
    best = first * 0 + float("inf")
    arg = tl.full((BLOCK,), -1, tl.int64)
    d = 0
    while d <= L:  # newest to oldest: only a strictly smaller value replaces the latest
        k = i - d
        ok = valid & (k >= 0) & (k < T)
        v = tl.load(base + k, mask=ok, other=float("inf"))
        better = v < best
        best = tl.where(better, v, best)
        arg = tl.where(better, k.to(tl.int64), arg)
        d += 1
    inside = (i >= L) & (i < T)
    keep = (best < 1.0) | inside
    tl.store(held_ptr + row * n + i, tl.where(keep, best, 1.0), mask=valid)
    tl.store(arg_ptr + row * n + i, tl.where(keep, arg, -1), mask=valid)
