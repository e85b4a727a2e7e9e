"""Fused CPU kernels for the compressor and the expander: one pass per direction.

The composite path (:func:`diffmix.functional.dynamics._run` with ``backend="torch"``)
spells the effect out in torch ops around the branching smoother; on long signals those
dozen full-length temporaries, not the recursion, dominate the time. Here the whole chain -
detector (linked by max or mean), level in dB, soft-knee static curve, branching
attack/release/hold smoother, dB to gain, makeup, dry/wet and lookahead - runs per gain row,
and the backward pass is one time-reversed sweep that replays the recorded branch decisions
and recomputes every cheap per-sample term instead of storing it. Forward stores only the
smoothed gain in dB and one branch byte per sample.

Each row is processed in blocks of ``BLOCK`` samples that stay in L1 cache. Only the
smoother itself is sequential; everything around it (detector, logarithm, curve, gain,
output, and in backward every gradient term) runs as branch-free loops over the block that
LLVM vectorises. numba has no vector ``log``/``exp`` (no SVML), so float32 audio uses the
polynomial :func:`_ln_block` / :func:`_exp_block` below (within 2 ulp of libm; the float64
reference-loop tests bound the effect); float64 audio keeps libm for gradcheck-grade
accuracy.

Rows are gain rows: ``(B, C, T)`` audio is viewed as ``(rows, nc, T)`` where a linked
detector makes each item one row of ``nc = C`` channels and an unlinked one makes each
channel its own row. Per-row parameters are ``(rows,)`` arrays. The composite path is the
reference: tests check that both give the same audio and gradients. The Triton kernels
(:mod:`diffmix.kernels._triton_dynamics`) implement the same contract for CUDA; both are
reached through the custom op ``diffmix::dynamics`` (:mod:`diffmix.kernels.ops`).

Backward, with ``G = 10^((y + makeup)/20)`` and ``out = x (1 + mix (G - 1))``::

    dx      = gout (1 + mix (G - 1))           (+ the side-chain term when side is x)
    dmix    = sum gout x (G - 1)
    dy      = sum_c gout x mix G ln10/20       -> the smoother's reversed recursion
    dcurve  = (1 - c[t]) lam[t];  d slope = dcurve f;  d level = dcurve slope f'(d)
    dpower  = d level * 10/ln10 / power        -> the channel(s) the link picked
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from diffmix.functional._dynamics_kernels import FLOOR_POWER, over_rows

_POW_DB = 10.0 / math.log(10.0)
_AMP_DB = 20.0 / math.log(10.0)
N_GRADS = 8  # thr, slope, knee, range, a_down, a_up, makeup, mix
# Fused multiply-adds: the forward smoother's chain is then one FMA and a select per sample,
# the backward's one FMA (-13 % and -5 % single-thread time, measured).
_CONTRACT = {"contract"}
BLOCK = 512  # samples per block: ~10 scratch rows of it fit in L1 with the row's data

# float32 polynomial log/exp. Constants are float32 so the loops stay in single precision.
_F = np.float32
_SQRT_HALF_BITS = np.int64(0x3F3504F3)  # bits of sqrt(0.5): mantissas land in [0.707, 1.414)
_MANT_MASK = np.int64(0x007FFFFF)
_LN2_HI = _F(0.693145751953125)  # ln 2 split so that n * _LN2_HI is exact for |n| < 256
_LN2_LO = _F(1.428606765330187e-06)
_LOG2E = _F(1.4426950408889634)
_EXP_LO = _F(-87.0)  # keeps 2^n normal: the gain below e^-87 (-755 dB) is treated as e^-87
_EXP_HI = _F(88.0)
_ONE = _F(1.0)
_HALF = _F(0.5)
_TWO = _F(2.0)
# atanh series: ln m = 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9), s = (m - 1)/(m + 1), |s| < 0.172
_L3, _L5, _L7, _L9 = _F(1 / 3), _F(1 / 5), _F(1 / 7), _F(1 / 9)
# Taylor series of e^r on |r| <= ln2/2 to r^7 (truncation < 6e-9 relative)
_E2, _E3, _E4, _E5, _E6, _E7 = (_F(1 / math.factorial(i)) for i in range(2, 8))


def constants(dtype: torch.dtype) -> torch.Tensor:
    """Literals in the audio's dtype, so float32 audio runs float32 math instead of being
    promoted to double by Python float literals."""
    values = [_POW_DB, 1.0 / _AMP_DB, FLOOR_POWER, 0.0, 0.5, 1.0, 2.0, 1e-6, math.inf]
    return torch.tensor(values, dtype=dtype)


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor from numpy's allocator: numpy asks the kernel for transparent huge pages
    on large buffers, which makes first touch (the page faults of a fresh buffer) cheaper
    than with torch's allocator (measured: BENCHMARKS.md, profile notes)."""
    return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))


@numba.njit(inline="always", error_model="numpy")
def _ln_block(p, out, n, scale, q, qi, mf, mi):  # noqa: ANN001, ANN202
    """``out[i] = scale * ln(p[i])`` for ``i < n``, float32 ``p > 0`` (normal numbers), vectorisable.

    ``q``/``qi`` and ``mf``/``mi`` are float32 scratch buffers and their int32 views.
    """
    for i in range(n):
        q[i] = p[i]
    for i in range(n):
        b = np.int64(qi[i]) - _SQRT_HALF_BITS
        mi[i] = np.int32((b & _MANT_MASK) + _SQRT_HALF_BITS)
        q[i] = _F(b >> 23)  # q now holds the exponent
    for i in range(n):
        m = mf[i]
        s = (m - _ONE) / (m + _ONE)
        z = s * s
        poly = _ONE + z * (_L3 + z * (_L5 + z * (_L7 + z * _L9)))
        e = q[i]
        out[i] = scale * (e * _LN2_HI + (_TWO * s * poly + e * _LN2_LO))


@numba.njit(inline="always", error_model="numpy")
def _exp_block(z, out, n, nf, ni):  # noqa: ANN001, ANN202
    """``out[i] = exp(z[i])`` for ``i < n``, float32 ``z`` (clamped to ``[-87, 88]``), vectorisable.

    ``nf``/``ni`` are a float32 scratch buffer and its int32 view. ``out`` may be ``z``.
    """
    for i in range(n):
        v = min(max(z[i], _EXP_LO), _EXP_HI)
        e = np.floor(v * _LOG2E + _HALF)
        r = (v - e * _LN2_HI) - e * _LN2_LO
        out[i] = _ONE + r * (_ONE + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7))))))
        ni[i] = np.int32((np.int64(e) + 127) << 23)
    for i in range(n):
        out[i] = out[i] * nf[i]


@numba.njit(inline="always", error_model="numpy")
def _detect(side, r, b0, m, amp, mean, pbuf, k, mono):  # noqa: ANN001, ANN202
    """Linked detector power of samples ``b0 .. b0+m`` into ``pbuf`` (0 past the end)."""
    nc = 1 if mono else side.shape[1]
    m_in = min(max(side.shape[2] - b0, 0), m)
    s0 = side[r, 0, b0:b0 + m_in]  # 1-D views: an index like b0 + i may be negative as far
    for i in range(m_in):  # as numba knows, and its wraparound check blocks vector loads
        v = s0[i]
        pbuf[i] = v * v if amp else v
    for c in range(1, nc):
        sc = side[r, c, b0:b0 + m_in]
        for i in range(m_in):
            v = sc[i]
            if amp:
                v = v * v
            pbuf[i] = pbuf[i] + v if mean else max(pbuf[i], v)
    if mean and nc > 1:
        for i in range(m_in):
            pbuf[i] = pbuf[i] / nc
    for i in range(m_in, m):
        pbuf[i] = k[3]
    return m_in


@numba.njit(inline="always", error_model="numpy")
def _levels(pbuf, lbuf, m, fast, k, q, qi, mf, mi):  # noqa: ANN001, ANN202
    """Level in dB of the detector power, floored for digital silence."""
    floor = k[2]
    for i in range(m):
        lbuf[i] = max(pbuf[i], floor)
    if fast:
        _ln_block(lbuf, lbuf, m, k[0], q, qi, mf, mi)
    else:
        for i in range(m):
            lbuf[i] = k[0] * math.log(lbuf[i])


@numba.njit(inline="always", error_model="numpy")
def _gains(ybuf, gbuf, n, mk, fast, k, nf, ni):  # noqa: ANN001, ANN202
    """Linear gain ``10^((y + makeup)/20)`` of the smoothed gain in dB."""
    inv_db = k[1]
    for i in range(n):
        gbuf[i] = (ybuf[i] + mk) * inv_db
    if fast:
        _exp_block(gbuf, gbuf, n, nf, ni)
    else:
        for i in range(n):
            gbuf[i] = math.exp(gbuf[i])


@numba.njit(inline="always", error_model="numpy")
def _curve_block(lbuf, gbuf, m, sgn, th, sl, kn, half, den, lo, zero):  # noqa: ANN001, ANN202
    """Static gain in dB from levels in dB, branch-free: ``d`` is the distance past the
    threshold (``sgn`` = -1 mirrors it for the expander), ``lo`` the range floor (-inf for
    the compressor)."""
    for i in range(m):
        d = sgn * (lbuf[i] - th)
        u = min(max(d + half, zero), kn)
        f = d if d >= half else u * u / den
        gbuf[i] = max(sl * f, lo)


@numba.njit(inline="always", error_model="numpy")
def _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,  # noqa: ANN001, ANN202
             hold, makeup, mix, out, y, mode, store, fast, k, mono, holds):
    """One gain row. ``mono`` and ``holds`` are compile-time constants in each caller, so
    the single-channel, hold-free loop carries no dead work."""
    n = x.shape[2]
    nc = 1 if mono else x.shape[1]
    total = n + lookahead
    sgn = k[5] if kind == 0 else -k[5]
    th = thr[r]
    sl = slope[r]
    kn = knee[r]
    half = k[4] * kn
    den = k[6] * max(kn, k[7])
    lo = -k[8] if kind == 0 else -rng[r]
    ad = a_down[r]
    au = a_up[r]
    bd = k[5] - ad
    bu = k[5] - au
    h = hold[r]
    mk = makeup[r]
    mx = mix[r]
    one = k[5]
    zero = k[3]
    pbuf = np.empty(BLOCK, x.dtype)
    gbuf = np.empty(BLOCK, x.dtype)
    ybuf = np.empty(BLOCK + 1, x.dtype)  # ybuf[0] is the state before the block
    q = np.empty(BLOCK, np.float32)
    mf = np.empty(BLOCK, np.float32)
    qi = q.view(np.int32)
    mi = mf.view(np.int32)
    prev = zero
    run = 0
    for b0 in range(0, total, BLOCK):
        m = min(BLOCK, total - b0)
        _detect(side, r, b0, m, amp, mean, pbuf, k, mono)
        _levels(pbuf, gbuf, m, fast, k, q, qi, mf, mi)
        _curve_block(gbuf, gbuf, m, sgn, th, sl, kn, half, den, lo, zero)
        ybuf[0] = prev
        # The only sequential part. Both candidates are formed off the dependency chain, and
        # the branch decision is a select: on music it flips too often to predict.
        if holds:
            for i in range(m):
                gc = gbuf[i]
                if gc < prev:
                    run += 1
                    if run <= h:
                        md = 2
                    else:
                        md = 1
                        prev = ad * prev + bd * gc
                else:
                    run = 0
                    md = 0
                    prev = au * prev + bu * gc
                ybuf[i + 1] = prev
                if store:
                    mode[r, b0 + i] = md
        else:
            for i in range(m):
                gc = gbuf[i]
                fall = ad * prev + bd * gc
                rise = au * prev + bu * gc
                prev = fall if gc < prev else rise
                ybuf[i + 1] = prev
            if store:  # the same comparisons again, now vectorised
                mb = mode[r, b0:b0 + m]
                for i in range(m):
                    mb[i] = 1 if gbuf[i] < ybuf[i] else 0
        if store:
            yb = y[r, b0:b0 + m]
            for i in range(m):
                yb[i] = ybuf[i + 1]
        # first sample whose output index (tp - lookahead) is >= 0; loops below that must
        # skip samples run from 0 with an offset rather than from i0 (vectorised only so)
        i0 = min(max(lookahead - b0, 0), m)
        # whole blocks: a loop from i0 defeats LLVM's vectoriser (measured 5x slower)
        _gains(ybuf[1:], gbuf, m, mk, fast, k, mf, mi)
        t0 = b0 - lookahead
        for i in range(m):
            gbuf[i] = one + mx * (gbuf[i] - one)
        t1 = t0 + i0
        for c in range(nc):
            xb = x[r, c, t1:t1 + m - i0]
            ob = out[r, c, t1:t1 + m - i0]
            gw = gbuf[i0:m]
            for j in range(m - i0):
                ob[j] = xb[j] * gw[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _fwd_mono_hold(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
                   a_up, hold, makeup, mix, out, y, mode, store, fast, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, store, fast, k, True, True)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _fwd_mono(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
              a_up, hold, makeup, mix, out, y, mode, store, fast, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, store, fast, k, True, False)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _fwd_multi_hold(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
                    a_up, hold, makeup, mix, out, y, mode, store, fast, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, store, fast, k, False, True)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _fwd_multi(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
               a_up, hold, makeup, mix, out, y, mode, store, fast, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, store, fast, k, False, False)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _bsum(buf, n):  # noqa: ANN001, ANN202
    """Sum of ``buf[:n]`` in float64. Its own function so that only this loop may be
    reassociated (vectorised with several partial sums): the polynomial ``log``/``exp``
    above must keep their order. A hand-unrolled 16-lane sum in the caller was about three
    times slower (BENCHMARKS.md, profile notes)."""
    total = 0.0
    for i in range(n):
        total += buf[i]
    return total


@numba.njit(inline="always", error_model="numpy")
def _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
             a_up, makeup, mix, y, mode, side_is_x, gx, gside, grads, fast, k, mono):
    n = x.shape[2]
    nc = 1 if mono else x.shape[1]
    total = n + lookahead
    sgn = k[5] if kind == 0 else -k[5]
    th = thr[r]
    sl = slope[r]
    kn = knee[r]
    half = k[4] * kn
    wc = max(kn, k[7])
    den = k[6] * wc
    inv_den = k[5] / den  # the per-sample loop multiplies: a division each costs more
    inv_wc = k[5] / wc
    lo = -k[8] if kind == 0 else -rng[r]
    ad = a_down[r]
    au = a_up[r]
    mk = makeup[r]
    mx = mix[r]
    inv_db = k[1]
    one = k[5]
    zero = k[3]
    floor = k[2]
    pbuf = np.empty(BLOCK, x.dtype)
    lbuf = np.empty(BLOCK, x.dtype)
    gbuf = np.empty(BLOCK, x.dtype)
    lam = np.empty(BLOCK, x.dtype)
    cbuf = np.empty(BLOCK, x.dtype)
    dpb = np.empty(BLOCK, x.dtype)
    taken = np.empty(BLOCK, x.dtype)
    taken[0] = nc
    inv_nc = one / taken[0]  # in the audio's dtype: float32 math stays float32
    terms = np.empty((6, BLOCK), x.dtype)  # per-sample parameter-gradient terms
    q = np.empty(BLOCK, np.float32)
    mf = np.empty(BLOCK, np.float32)
    qi = q.view(np.int32)
    mi = mf.view(np.int32)
    carry = zero
    g = np.zeros(N_GRADS, np.float64)
    last = (total - 1) // BLOCK
    for blk in range(last, -1, -1):
        b0 = blk * BLOCK
        m = min(BLOCK, total - b0)
        # output side: dx through the gain, the mix and makeup terms, and dL/dy
        i0 = min(max(lookahead - b0, 0), m)
        t0 = b0 - lookahead
        yb = y[r, b0:b0 + m]
        mb = mode[r, b0:b0 + m]
        for i in range(m):
            gbuf[i] = yb[i]
        _gains(gbuf, gbuf, m, mk, fast, k, mf, mi)  # whole blocks vectorise
        for i in range(m):
            lam[i] = zero
        t1 = t0 + i0
        for c in range(nc):
            gob = gout[r, c, t1:t1 + m - i0]
            gxb = gx[r, c, t1:t1 + m - i0]
            xb = x[r, c, t1:t1 + m - i0]
            gw = gbuf[i0:m]  # views again: i0 + j would cost a wraparound check
            lw = lam[i0:m]
            for j in range(m - i0):
                gxb[j] = gob[j] * (one + mx * (gw[j] - one))
            for j in range(m - i0):
                lw[j] += gob[j] * xb[j]
        for i in range(m):
            dg = lam[i]
            terms[0, i] = dg * (gbuf[i] - one)
            lam[i] = dg * mx * gbuf[i] * inv_db
        g[7] += _bsum(terms[0], m)
        g[6] += _bsum(lam, m)
        # the smoother's adjoint, the only sequential part: lam[t] = dy[t] + c[t+1] lam[t+1]
        for i in range(m):
            md = mb[i]
            cbuf[i] = ad if md == 1 else (au if md == 0 else one)
        for i in range(m):
            dpb[i] = cbuf[i] * lam[i]
        for i in range(m - 1, -1, -1):  # the chain is one fused multiply-add per sample
            lam[i] = lam[i] + carry
            carry = dpb[i] + cbuf[i] * carry
        # the static curve's terms, recomputed from the side-chain
        m_in = _detect(side, r, b0, m, amp, mean, pbuf, k, mono)
        _levels(pbuf, lbuf, m, fast, k, q, qi, mf, mi)
        if b0 == 0:
            gbuf[0] = zero  # the smoother starts from 0 dB
            for j in range(1, m):
                gbuf[j] = yb[j - 1]
        else:
            yp = y[r, b0 - 1:b0 - 1 + m]
            for j in range(m):
                gbuf[j] = yp[j]
        pdb = k[0]
        for i in range(m):
            v = lam[i]
            md = mb[i]
            d = sgn * (lbuf[i] - th)
            u = min(max(d + half, zero), kn)
            f = d if d >= half else u * u * inv_den
            gc = sl * f
            clamped = gc < lo
            gc = max(gc, lo)
            dgc = (one - cbuf[i]) * v
            contrib = v * (gbuf[i] - gc)
            terms[0, i] = contrib if md == 1 else zero
            terms[1, i] = contrib if md == 0 else zero
            terms[2, i] = -dgc if clamped else zero
            live = zero if clamped else dgc
            terms[3, i] = live * f
            inside = (d > -half) & (d < half)
            terms[4, i] = live * sl * (u * inv_den - u * u * inv_den * inv_wc) if inside else zero
            dfd = one if d >= half else (u * inv_wc if inside else zero)
            dlevel = sgn * (live * sl * dfd)
            terms[5, i] = dlevel
            p = pbuf[i]
            dpb[i] = dlevel * pdb / p if p > floor else zero
        g[4] += _bsum(terms[0], m)
        g[5] += _bsum(terms[1], m)
        g[3] += _bsum(terms[2], m)
        g[1] += _bsum(terms[3], m)
        g[2] += _bsum(terms[4], m)
        g[0] -= _bsum(terms[5], m)
        # side-chain gradient (into gx when the side-chain is the input itself)
        if mono:
            if amp:
                s0 = side[r, 0, b0:b0 + m_in]
                two = k[6]
                for i in range(m_in):
                    dpb[i] = dpb[i] * two * s0[i]
            dst = gx[r, 0, b0:b0 + m_in] if side_is_x else gside[r, 0, b0:b0 + m_in]
            if side_is_x:
                for i in range(m_in):
                    dst[i] += dpb[i]
            else:
                for i in range(m_in):
                    dst[i] = dpb[i]
        else:
            # channel by channel over the block; a max link feeds only the first channel
            # that holds the maximum (``taken`` marks the samples already fed)
            two = k[6]
            if not mean:
                for i in range(m_in):
                    taken[i] = zero
            for c in range(nc):
                sc = side[r, c, b0:b0 + m_in]
                dst = gx[r, c, b0:b0 + m_in] if side_is_x else gside[r, c, b0:b0 + m_in]
                for i in range(m_in):
                    v = sc[i]
                    if mean:
                        dv = dpb[i] * inv_nc
                    else:
                        hit = ((v * v if amp else v) == pbuf[i]) & (taken[i] == zero)
                        dv = dpb[i] if hit else zero
                        taken[i] = one if hit else taken[i]
                    if amp:
                        dv = dv * two * v
                    if side_is_x:
                        dst[i] += dv
                    else:
                        dst[i] = dv
    for j in range(N_GRADS):
        grads[r, j] += g[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _bwd_mono(r0, r1, gout, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
              a_up, makeup, mix, y, mode, side_is_x, gx, gside, grads, fast, k):
    for r in range(r0, r1):
        _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,
                 a_up, makeup, mix, y, mode, side_is_x, gx, gside, grads, fast, k, True)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_CONTRACT)
def _bwd_multi(r0, r1, gout, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
               a_up, makeup, mix, y, mode, side_is_x, gx, gside, grads, fast, k):
    for r in range(r0, r1):
        _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,
                 a_up, makeup, mix, y, mode, side_is_x, gx, gside, grads, fast, k, False)


def fused_forward(x: torch.Tensor, side: torch.Tensor | None, params: torch.Tensor,
                  hold: torch.Tensor, kind: int, mean: bool, lookahead: int, amp: bool,
                  store: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compressor (``kind`` 0) or expander (1) over gain rows; ``(out, y, mode)``.

    ``x`` is ``(rows, nc, T)``; ``side`` is ``None`` (detect on ``x``) or ``(rows, nc, T)``,
    amplitudes if ``amp`` (squared inside), else powers; ``params`` is ``(rows, 8)``:
    threshold, slope, knee, range, a_down, a_up, makeup, mix; ``hold`` ``(rows,)`` int64.
    ``y`` (smoothed gain in dB, ``(rows, T + lookahead)``) and ``mode`` (branch bytes) are
    filled only if ``store`` (else ``(1, 1)``): what :func:`fused_backward` replays.
    """
    x = x.detach().contiguous()
    s = x if side is None else side.detach().contiguous()
    np_params = [p.contiguous().numpy() for p in params.detach().unbind(1)]
    rows, _, n = x.shape
    out = empty(tuple(x.shape), x.dtype)
    shape = (rows, n + lookahead) if store else (1, 1)
    y = empty(shape, x.dtype)
    mode = empty(shape, torch.uint8)
    hold = hold.contiguous()
    holds = bool((hold > 0).any())
    kernel = (_fwd_mono_hold if holds else _fwd_mono) if x.shape[1] == 1 else (
        _fwd_multi_hold if holds else _fwd_multi)
    over_rows(kernel, rows, x.numel(), x.numpy(), s.numpy(), amp, mean, kind, lookahead,
              *np_params[:6], hold.numpy(), *np_params[6:], out.numpy(), y.numpy(), mode.numpy(),
              store, x.dtype == torch.float32, constants(x.dtype).numpy())
    return out, y, mode


def fused_backward(gout: torch.Tensor, x: torch.Tensor, side: torch.Tensor | None,
                   params: torch.Tensor, y: torch.Tensor, mode: torch.Tensor, kind: int,
                   mean: bool, lookahead: int,
                   amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact backward of :func:`fused_forward`: ``(dx, dside, dparams)``; ``dside`` is empty
    when ``side`` is ``None`` (its share is in ``dx``), ``dparams`` ``(rows, 8)``."""
    x = x.detach().contiguous()
    side_is_x = side is None
    s = x if side is None else side.detach().contiguous()
    gx = empty(tuple(x.shape), x.dtype)
    gside = torch.empty((1, 1, 1), dtype=x.dtype) if side_is_x else torch.zeros_like(s)
    grads = torch.zeros((x.shape[0], N_GRADS), dtype=torch.float64)
    np_params = [p.contiguous().numpy() for p in params.detach().unbind(1)]
    kernel = _bwd_mono if x.shape[1] == 1 else _bwd_multi
    over_rows(kernel, x.shape[0], x.numel(), gout.contiguous().numpy(), x.numpy(), s.numpy(),
              amp, mean, kind, lookahead, *np_params, y.numpy(), mode.numpy(), side_is_x,
              gx.numpy(), gside.numpy(), grads.numpy(), x.dtype == torch.float32,
              constants(x.dtype).numpy())
    return gx, (x.new_empty(0) if side_is_x else gside), grads.to(x.dtype)
