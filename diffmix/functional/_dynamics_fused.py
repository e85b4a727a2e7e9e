"""Fused CPU kernels for the compressor and the expander: one pass per direction.

The composite path (:func:`diffmix.functional.dynamics._compress_composite`) spells the
effect out in torch ops around the branching smoother; on long signals those dozen
full-length temporaries, not the recursion, dominate the time. Here the whole per-sample
chain - detector (linked by max or mean), level in dB, soft-knee static curve, branching
attack/release/hold smoother, dB to gain, makeup, dry/wet and lookahead - is one loop per
gain row, and the backward pass is one time-reversed loop that replays the recorded branch
decisions and recomputes the cheap per-sample terms instead of storing them.

Rows are gain rows: ``(B, C, T)`` audio is viewed as ``(rows, nc, T)`` where a linked
detector makes each item one row of ``nc = C`` channels and an unlinked one makes each
channel its own row. Per-row parameters are ``(rows,)`` arrays. The composite path is the
reference: tests check that both give the same audio and gradients.

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
import torch

from diffmix.functional._dynamics_kernels import FLOOR_POWER, over_rows

_POW_DB = 10.0 / math.log(10.0)
_AMP_DB = 20.0 / math.log(10.0)
N_GRADS = 8  # thr, slope, knee, range, a_down, a_up, makeup, mix


def constants(dtype: torch.dtype) -> torch.Tensor:
    """Literals in the audio's dtype, so float32 audio runs float32 math (logf, expf)
    instead of being promoted to double by Python float literals."""
    values = [_POW_DB, 1.0 / _AMP_DB, FLOOR_POWER, 0.0, 0.5, 1.0, 2.0, 1e-6]
    return torch.tensor(values, dtype=dtype)


@numba.njit(inline="always")
def _power(side, r, tp, nc, amp, mean, k):  # noqa: ANN001, ANN202
    """Linked detector power at one sample and the channel a max link picked."""
    p = k[3]
    best = 0
    for c in range(nc):
        v = side[r, c, tp]
        if amp:
            v = v * v
        if mean:
            p += v
        elif v > p:
            p = v
            best = c
    if mean:
        p /= nc
    return p, best


@numba.njit(inline="always")
def _edge(kind, th, half, k):  # noqa: ANN001, ANN202
    """Detector power beyond which the curve is flat at 0 dB (skips the logarithm)."""
    return math.exp((th - half if kind == 0 else th + half) / k[0])


@numba.njit(inline="always")
def _flat(p, kind, edge):  # noqa: ANN001, ANN202
    """True where the detector power puts the curve on its flat 0 dB part (no log needed)."""
    return p <= edge if kind == 0 else p >= edge


@numba.njit(inline="always")
def _curve(level, kind, th, sl, half, wc, rg, k):  # noqa: ANN001, ANN202
    """Static gain in dB from a level in dB; returns (gain, d, f, clamped)."""
    d = level - th if kind == 0 else th - level
    if d >= half:
        f = d
    elif d <= -half:
        f = k[3]
    else:
        u = d + half
        f = u * u / (k[6] * wc)
    gc = sl * f
    clamped = False
    if kind == 1 and gc < -rg:
        gc = -rg
        clamped = True
    return gc, d, f, clamped


@numba.njit(inline="always")
def _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,  # noqa: ANN001, ANN202
             hold, makeup, mix, out, y, mode, lv, store, k, mono, holds):
    """One gain row. ``mono`` and ``holds`` are compile-time constants in each caller, so
    the single-channel, hold-free loop carries no dead work (it is 40 % faster)."""
    n = x.shape[2]
    nc = 1 if mono else x.shape[1]
    n_side = side.shape[2]
    th = thr[r]
    sl = slope[r]
    half = k[4] * knee[r]
    wc = max(knee[r], k[7])
    rg = rng[r]
    ad = a_down[r]
    au = a_up[r]
    h = hold[r]
    mk = makeup[r]
    m = mix[r]
    edge = _edge(kind, th, half, k)
    inv_db = k[1]
    one = k[5]
    prev = k[3]
    run = 0
    for tp in range(n + lookahead):
        p = k[3]
        if tp < n_side:
            if mono:
                v = side[r, 0, tp]
                p = v * v if amp else v
            else:
                p, _ = _power(side, r, tp, nc, amp, mean, k)
        gc = k[3]
        if not _flat(p, kind, edge):
            level = k[0] * math.log(max(p, k[2]))
            if store:
                lv[r, tp] = level
            gc, _, _, _ = _curve(level, kind, th, sl, half, wc, rg, k)
        if gc < prev:
            md = 1
            if holds:
                run += 1
                if run <= h:
                    md = 2
            if md == 1:
                prev = gc + ad * (prev - gc)
        else:
            run = 0
            md = 0
            prev = gc + au * (prev - gc)
        if store:
            y[r, tp] = prev
            mode[r, tp] = md
        t = tp - lookahead
        if t >= 0:
            wet = one + m * (math.exp((prev + mk) * inv_db) - one)
            if mono:
                out[r, 0, t] = x[r, 0, t] * wet
            else:
                for c in range(nc):
                    out[r, c, t] = x[r, c, t] * wet


@numba.njit(cache=True, nogil=True)
def _fwd_mono_hold(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
                   a_up, hold, makeup, mix, out, y, mode, lv, store, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, lv, store, k, True, True)


@numba.njit(cache=True, nogil=True)
def _fwd_mono(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
              a_up, hold, makeup, mix, out, y, mode, lv, store, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, lv, store, k, True, False)


@numba.njit(cache=True, nogil=True)
def _fwd_multi_hold(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
                    a_up, hold, makeup, mix, out, y, mode, lv, store, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, lv, store, k, False, True)


@numba.njit(cache=True, nogil=True)
def _fwd_multi(r0, r1, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
               a_up, hold, makeup, mix, out, y, mode, lv, store, k):
    for r in range(r0, r1):
        _fwd_row(x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down, a_up,
                 hold, makeup, mix, out, y, mode, lv, store, k, False, False)


@numba.njit(inline="always")
def _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
             a_up, makeup, mix, y, mode, lv, side_is_x, gx, gside, grads, k, mono):
    n = x.shape[2]
    nc = 1 if mono else x.shape[1]
    n_side = side.shape[2]
    th = thr[r]
    sl = slope[r]
    half = k[4] * knee[r]
    wc = max(knee[r], k[7])
    rg = rng[r]
    ad = a_down[r]
    au = a_up[r]
    mk = makeup[r]
    m = mix[r]
    edge = _edge(kind, th, half, k)
    inv_db = k[1]
    one = k[5]
    carry = 0.0
    g_th = 0.0
    g_sl = 0.0
    g_kn = 0.0
    g_rg = 0.0
    g_ad = 0.0
    g_au = 0.0
    g_mk = 0.0
    g_mx = 0.0
    for tp in range(n + lookahead - 1, -1, -1):
        t = tp - lookahead
        dy = 0.0
        if t >= 0:
            gain = math.exp((y[r, tp] + mk) * inv_db)
            wet = one + m * (gain - one)
            if mono:
                go = gout[r, 0, t]
                gx[r, 0, t] = go * wet
                dg = go * x[r, 0, t]
            else:
                dg = 0.0
                for c in range(nc):
                    go = gout[r, c, t]
                    gx[r, c, t] = go * wet
                    dg += go * x[r, c, t]
            g_mx += dg * (gain - one)
            dy = dg * m * gain * inv_db
            g_mk += dy
        lam = dy + carry
        md = mode[r, tp]
        if md == 2:
            carry = lam
            continue
        p = k[3]
        best = 0
        if tp < n_side:
            if mono:
                v = side[r, 0, tp]
                p = v * v if amp else v
            else:
                p, best = _power(side, r, tp, nc, amp, mean, k)
        flat = _flat(p, kind, edge)
        gc = k[3]
        if not flat:
            gc, d, f, clamped = _curve(lv[r, tp], kind, th, sl, half, wc, rg, k)
        yp = y[r, tp - 1] if tp > 0 else k[3]
        if md == 1:
            dgc = (1.0 - ad) * lam
            g_ad += lam * (yp - gc)
            carry = ad * lam
        else:
            dgc = (1.0 - au) * lam
            g_au += lam * (yp - gc)
            carry = au * lam
        if flat:
            continue
        if clamped:
            g_rg -= dgc
            continue
        g_sl += dgc * f
        if d >= half:
            dfd = 1.0
        elif d <= -half:
            continue
        else:
            u = d + half
            dfd = u / wc
            g_kn += dgc * sl * (u / (2.0 * wc) - u * u / (2.0 * wc * wc))
        dd = dgc * sl * dfd
        dlevel = dd if kind == 0 else -dd
        g_th -= dlevel
        if tp >= n_side or p <= k[2]:
            continue
        dp = dlevel * k[0] / p
        if mono:
            dv = dp * 2.0 * side[r, 0, tp] if amp else dp
            if side_is_x:
                gx[r, 0, tp] += dv
            else:
                gside[r, 0, tp] = dv
            continue
        for c in range(nc):
            if mean:
                dv = dp / nc
            elif c == best:
                dv = dp
            else:
                continue
            if amp:
                dv = dv * 2.0 * side[r, c, tp]
            if side_is_x:
                gx[r, c, tp] += dv
            else:
                gside[r, c, tp] = dv
    grads[r, 0] = g_th
    grads[r, 1] = g_sl
    grads[r, 2] = g_kn
    grads[r, 3] = g_rg
    grads[r, 4] = g_ad
    grads[r, 5] = g_au
    grads[r, 6] = g_mk
    grads[r, 7] = g_mx


@numba.njit(cache=True, nogil=True)
def _bwd_mono(r0, r1, gout, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
              a_up, makeup, mix, y, mode, lv, side_is_x, gx, gside, grads, k):
    for r in range(r0, r1):
        _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,
                 a_up, makeup, mix, y, mode, lv, side_is_x, gx, gside, grads, k, True)


@numba.njit(cache=True, nogil=True)
def _bwd_multi(r0, r1, gout, x, side, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,  # noqa: ANN001, ANN202
               a_up, makeup, mix, y, mode, lv, side_is_x, gx, gside, grads, k):
    for r in range(r0, r1):
        _bwd_row(gout, x, side, r, amp, mean, kind, lookahead, thr, slope, knee, rng, a_down,
                 a_up, makeup, mix, y, mode, lv, side_is_x, gx, gside, grads, k, False)


class FusedDynamics(torch.autograd.Function):
    """Autograd wrapper: ``(x, side, thr, slope, knee, rng, a_down, a_up, makeup, mix)``.

    ``x`` is ``(rows, nc, T)``; ``side`` is ``None`` (detect on ``x``) or ``(rows, nc, T)``;
    each parameter is ``(rows,)``. ``opts = (kind, mean, lookahead, hold, amp, store)`` with
    ``kind`` 0 for the compressor and 1 for the expander, ``hold`` a ``(rows,)`` int64 tensor,
    ``amp`` true when ``side`` holds amplitudes (squared inside) rather than powers, and
    ``store`` whether autograd will call backward (decided by the caller: grad mode is off
    inside ``forward``).
    """

    @staticmethod
    def forward(ctx, x, side, thr, slope, knee, rng, a_down, a_up, makeup, mix, opts):  # noqa: ANN001, ANN205
        kind, mean, lookahead, hold, amp, store = opts
        x = x.contiguous()
        side_is_x = side is None
        s = x if side_is_x else side.contiguous()
        params = [p.detach().contiguous() for p in (thr, slope, knee, rng, a_down, a_up, makeup, mix)]
        rows, _, n = x.shape
        out = torch.empty_like(x)
        shape = (rows, n + lookahead) if store else (1, 1)
        y = torch.empty(shape, dtype=x.dtype)
        mode = torch.empty(shape, dtype=torch.uint8)
        level = torch.empty(shape, dtype=x.dtype)  # only read where the curve is not flat
        np_params = [p.numpy() for p in params]
        hold = hold.contiguous()
        holds = bool((hold > 0).any())
        kernel = (_fwd_mono_hold if holds else _fwd_mono) if x.shape[1] == 1 else (
            _fwd_multi_hold if holds else _fwd_multi)
        over_rows(kernel, rows, x.numel(), x.detach().numpy(), s.detach().numpy(), amp, mean, kind,
                  lookahead, *np_params[:6], hold.numpy(), *np_params[6:], out.numpy(), y.numpy(),
                  mode.numpy(), level.numpy(), store, constants(x.dtype).numpy())
        ctx.opts = (kind, mean, lookahead, side_is_x, amp)
        if store:
            ctx.save_for_backward(x, s, y, mode, level, *params)
        return out

    @staticmethod
    def backward(ctx, gout):  # noqa: ANN001, ANN205
        kind, mean, lookahead, side_is_x, amp = ctx.opts
        x, s, y, mode, level, *params = ctx.saved_tensors
        gx = torch.empty_like(x)
        gside = torch.empty((1, 1, 1), dtype=x.dtype) if side_is_x else torch.zeros_like(s)
        grads = torch.empty((x.shape[0], N_GRADS), dtype=torch.float64)
        np_params = [p.numpy() for p in params]
        kernel = _bwd_mono if x.shape[1] == 1 else _bwd_multi
        over_rows(kernel, x.shape[0], x.numel(), gout.contiguous().numpy(), x.numpy(), s.numpy(),
                  amp, mean, kind, lookahead, *np_params, y.numpy(), mode.numpy(), level.numpy(),
                  side_is_x, gx.numpy(), gside.numpy(), grads.numpy(), constants(x.dtype).numpy())
        g = grads.to(x.dtype).unbind(1)
        return (gx, None if side_is_x else gside, *g, None)
