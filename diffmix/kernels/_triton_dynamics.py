"""Triton kernels for the branching smoother and the fused compressor/expander.

Loaded only through :func:`diffmix.kernels.triton_ops.kernels` (once compiled for CUDA,
once under the interpreter for CPU tensors); never imported by the package itself.

Design (why, in short; BENCHMARKS.md's profile notes have the long form). One program per
gain row walks the row in time blocks of ``BLOCK`` samples, so every load and store is a
contiguous vector. Inside a block the sequential recursion becomes scans:

- with the branch decisions fixed, ``y[t] = c[t] y[t-1] + (1 - c[t]) g[t]`` is a
  composition of affine maps, one ``tl.associative_scan``. The scan carries each segment's
  map *and* its map without the last element, so it yields both ``y[t]`` and the state
  ``y[t-1]`` each decision needs, with no register shift;
- the decisions (falling or rising, hold) are re-derived from those states and the block
  re-scanned until they stop changing. Each pass settles at least the first wrong decision
  (a scan's output at ``t`` depends only on elements ``<= t``), so it ends within
  ``BLOCK + 1`` passes; on music a few. The hold counter is a running maximum (another scan);
- the backward pass replays the stored decisions: the adjoint recursion
  ``lam[t] = dy[t] + c[t+1] lam[t+1]`` is one scan over the block read back to front.

No helper from ``triton.language.standard`` is used (``tl.sum``, ``tl.max``, ``tl.cdiv`` are
themselves jitted functions, which the interpreter cannot call when Triton was imported for
compilation); reductions go through ``tl.reduce`` with the combiners below, and loops over a
runtime bound are ``while`` loops (the interpreter's ``range`` cannot take a runtime bound
under numpy 2).
"""

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _affine(c1, b1, c2, b2):
    # y -> c y + b: left segment first, then right
    return c1 * c2, c2 * b1 + b2


@triton.jit
def _affine2(c1, b1, e1, f1, c2, b2, e2, f2):
    # (the segment's map, the map of all but its last element)
    return c1 * c2, c2 * b1 + b2, c1 * e2, e2 * b1 + f2


@triton.jit
def _at(v, idx, i):
    """``v[i]`` of a block vector, as a scalar."""
    return tl.reduce(tl.where(idx == i, v, 0), 0, _add)


@triton.jit
def _sum64(v, keep):
    return tl.reduce(tl.where(keep, v.to(tl.float64), 0.0), 0, _add)


@triton.jit
def _coef(md, ad, au):
    # 0 rising (a_up), 1 falling (a_down), 2 hold (y stays: coefficient 1)
    return tl.where(md == 1, ad, tl.where(md == 0, au, ad * 0 + 1))


@triton.jit
def _decide(g, ypv, idx, run_in, h, HOLDS: tl.constexpr):
    falling = g < ypv
    if HOLDS:
        pos = idx.to(tl.int64)
        last_not = tl.associative_scan(tl.where(falling, -1 - run_in, pos), 0, _max)
        run = pos - last_not
        mode = tl.where(falling, tl.where(run <= h, 2, 1), 0)
    else:
        run = idx.to(tl.int64) * 0
        mode = tl.where(falling, 1, 0)
    return mode, run


@triton.jit
def _solve(g, prev, idx, valid, run_in, ad, au, h, HOLDS: tl.constexpr, BLOCK: tl.constexpr):
    """The block's smoothed values ``y`` and decisions from the state ``prev`` before it."""
    mode, run = _decide(g, g * 0 + prev, idx, run_in, h, HOLDS)
    ca = g * 0
    ba = g * 0
    changed = 1
    passes = 0
    while (changed > 0) & (passes <= BLOCK + 1):
        c = _coef(mode, ad, au)
        ca, ba, ce, be = tl.associative_scan((c, (1 - c) * g, c * 0 + 1, c * 0), 0, _affine2)
        new, run = _decide(g, ce * prev + be, idx, run_in, h, HOLDS)
        changed = tl.reduce(tl.where(valid & (new != mode), 1, 0), 0, _max)
        mode = new
        passes += 1
    return ca * prev + ba, mode, run


@triton.jit
def smooth_fwd(g_ptr, ad_ptr, au_ptr, hold_ptr, init_ptr, y_ptr, mode_ptr, T,
               STORE: tl.constexpr, HOLDS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK)
    ad = tl.load(ad_ptr + r)
    au = tl.load(au_ptr + r)
    h = tl.load(hold_ptr + r)
    prev = tl.load(init_ptr + r)
    run = h * 0
    base = r * T
    b0 = 0
    while b0 < T:
        pos = b0 + idx
        valid = pos < T
        g = tl.load(g_ptr + base + pos, mask=valid, other=0.0)
        y, mode, runv = _solve(g, prev, idx, valid, run, ad, au, h, HOLDS, BLOCK)
        tl.store(y_ptr + base + pos, y, mask=valid)
        if STORE:
            tl.store(mode_ptr + base + pos, mode.to(tl.uint8), mask=valid)
        last = tl.minimum(T - b0, BLOCK) - 1
        prev = _at(y, idx, last)
        run = _at(runv, idx, last)
        b0 += BLOCK


@triton.jit
def smooth_bwd(gy_ptr, g_ptr, y_ptr, mode_ptr, ad_ptr, au_ptr, init_ptr, gg_ptr, gad_ptr,
               gau_ptr, T, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    jj = tl.arange(0, BLOCK)
    ad = tl.load(ad_ptr + r)
    au = tl.load(au_ptr + r)
    init = tl.load(init_ptr + r)
    lam_next = init * 0
    sad = ad.to(tl.float64) * 0
    sau = sad
    base = r * T
    blk = (T + BLOCK - 1) // BLOCK - 1
    while blk >= 0:
        b0 = blk * BLOCK
        m = tl.minimum(T - b0, BLOCK)
        valid = jj < m
        pos = b0 + m - 1 - jj  # back to front: the adjoint runs in reverse time
        md = tl.load(mode_ptr + base + pos, mask=valid, other=0)
        c = _coef(md, ad, au)
        nxt = valid & (pos + 1 < T)
        cn = tl.where(nxt, _coef(tl.load(mode_ptr + base + pos + 1, mask=nxt, other=0), ad, au), 0)
        gyv = tl.load(gy_ptr + base + pos, mask=valid, other=0.0)
        ca, ba = tl.associative_scan((cn, gyv), 0, _affine)
        lam = ca * lam_next + ba
        tl.store(gg_ptr + base + pos, (1 - c) * lam, mask=valid)
        yp = tl.load(y_ptr + base + pos - 1, mask=valid & (pos > 0), other=0.0)
        yp = tl.where(pos == 0, init, yp)
        contrib = lam * (yp - tl.load(g_ptr + base + pos, mask=valid, other=0.0))
        sad += _sum64(contrib, valid & (md == 1))
        sau += _sum64(contrib, valid & (md == 0))
        lam_next = _at(lam, jj, m - 1)
        blk -= 1
    tl.store(gad_ptr + r, sad)
    tl.store(gau_ptr + r, sau)


@triton.jit
def _power(s_ptr, rb, NC, N, pos, inb, zero, MEAN: tl.constexpr, AMP: tl.constexpr):
    """Linked detector power at ``pos`` (0 past the end), as the numba kernel forms it."""
    p = zero
    c = 0
    while c < NC:
        v = tl.load(s_ptr + (rb + c) * N + pos, mask=inb, other=0.0)
        if AMP:
            v = v * v
        if MEAN:
            p = p + v
        else:
            p = tl.maximum(p, v)
        c += 1
    if MEAN:
        p = p / NC
    return tl.where(inb, p, zero)


@triton.jit
def dyn_fwd(x_ptr, s_ptr, prm_ptr, k_ptr, hold_ptr, out_ptr, y_ptr, mode_ptr, NC, N, L,
            KIND: tl.constexpr, MEAN: tl.constexpr, AMP: tl.constexpr, STORE: tl.constexpr,
            HOLDS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK)
    th = tl.load(prm_ptr + r * 8 + 0)
    sl = tl.load(prm_ptr + r * 8 + 1)
    kn = tl.load(prm_ptr + r * 8 + 2)
    ad = tl.load(prm_ptr + r * 8 + 4)
    au = tl.load(prm_ptr + r * 8 + 5)
    mk = tl.load(prm_ptr + r * 8 + 6)
    mx = tl.load(prm_ptr + r * 8 + 7)
    pow_db = tl.load(k_ptr + 0)
    inv_db = tl.load(k_ptr + 1)
    floor = tl.load(k_ptr + 2)
    eps = tl.load(k_ptr + 7)
    if KIND == 0:
        sgn = 1.0
        lo = -tl.load(k_ptr + 8)
    else:
        sgn = -1.0
        lo = -tl.load(prm_ptr + r * 8 + 3)
    half = 0.5 * kn
    den = 2.0 * tl.maximum(kn, eps)
    h = tl.load(hold_ptr + r)
    total = N + L
    zero = tl.full((BLOCK,), 0, th.dtype)
    prev = th * 0
    run = h * 0
    rb = r * NC
    b0 = 0
    while b0 < total:
        pos = b0 + idx
        valid = pos < total
        p = _power(s_ptr, rb, NC, N, pos, pos < N, zero, MEAN, AMP)
        level = pow_db * tl.log(tl.maximum(p, floor))
        d = sgn * (level - th)
        u = tl.minimum(tl.maximum(d + half, 0.0), kn)
        f = tl.where(d >= half, d, u * u / den)
        gc = tl.maximum(sl * f, lo)
        y, mode, runv = _solve(gc, prev, idx, valid, run, ad, au, h, HOLDS, BLOCK)
        if STORE:
            tl.store(y_ptr + r * total + pos, y, mask=valid)
            tl.store(mode_ptr + r * total + pos, mode.to(tl.uint8), mask=valid)
        w = 1.0 + mx * (tl.exp((y + mk) * inv_db) - 1.0)
        t = pos - L
        ok = valid & (t >= 0)
        c = 0
        while c < NC:
            xv = tl.load(x_ptr + (rb + c) * N + t, mask=ok, other=0.0)
            tl.store(out_ptr + (rb + c) * N + t, xv * w, mask=ok)
            c += 1
        last = tl.minimum(total - b0, BLOCK) - 1
        prev = _at(y, idx, last)
        run = _at(runv, idx, last)
        b0 += BLOCK


@triton.jit
def dyn_bwd(gout_ptr, x_ptr, s_ptr, prm_ptr, k_ptr, y_ptr, mode_ptr, gx_ptr, gs_ptr, grads_ptr,
            NC, N, L, KIND: tl.constexpr, MEAN: tl.constexpr, AMP: tl.constexpr,
            BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    jj = tl.arange(0, BLOCK)
    th = tl.load(prm_ptr + r * 8 + 0)
    sl = tl.load(prm_ptr + r * 8 + 1)
    kn = tl.load(prm_ptr + r * 8 + 2)
    ad = tl.load(prm_ptr + r * 8 + 4)
    au = tl.load(prm_ptr + r * 8 + 5)
    mk = tl.load(prm_ptr + r * 8 + 6)
    mx = tl.load(prm_ptr + r * 8 + 7)
    pow_db = tl.load(k_ptr + 0)
    inv_db = tl.load(k_ptr + 1)
    floor = tl.load(k_ptr + 2)
    eps = tl.load(k_ptr + 7)
    if KIND == 0:
        sgn = 1.0
        lo = -tl.load(k_ptr + 8)
    else:
        sgn = -1.0
        lo = -tl.load(prm_ptr + r * 8 + 3)
    half = 0.5 * kn
    wc = tl.maximum(kn, eps)
    inv_den = 1.0 / (2.0 * wc)
    inv_wc = 1.0 / wc
    zero = tl.full((BLOCK,), 0, th.dtype)
    one = zero + 1.0
    nc_f = (th * 0 + 1) * NC
    g_thr = th.to(tl.float64) * 0
    g_slope = g_thr
    g_knee = g_thr
    g_rng = g_thr
    g_ad = g_thr
    g_au = g_thr
    g_mk = g_thr
    g_mix = g_thr
    total = N + L
    rb = r * NC
    lam_next = th * 0
    blk = (total + BLOCK - 1) // BLOCK - 1
    while blk >= 0:
        b0 = blk * BLOCK
        m = tl.minimum(total - b0, BLOCK)
        valid = jj < m
        pos = b0 + m - 1 - jj  # back to front
        yv = tl.load(y_ptr + r * total + pos, mask=valid, other=0.0)
        md = tl.load(mode_ptr + r * total + pos, mask=valid, other=0)
        gain = tl.exp((yv + mk) * inv_db)
        t = pos - L
        ok = valid & (t >= 0)
        lam0 = zero
        c = 0
        while c < NC:
            go = tl.load(gout_ptr + (rb + c) * N + t, mask=ok, other=0.0)
            xv = tl.load(x_ptr + (rb + c) * N + t, mask=ok, other=0.0)
            tl.store(gx_ptr + (rb + c) * N + t, go * (1.0 + mx * (gain - 1.0)), mask=ok)
            lam0 += go * xv
            c += 1
        g_mix += _sum64(lam0 * (gain - 1.0), valid)
        dy = lam0 * mx * gain * inv_db
        g_mk += _sum64(dy, valid)
        # the smoother's adjoint over the block, read back to front
        cc = _coef(md, ad, au)
        nxt = valid & (pos + 1 < total)
        mdn = tl.load(mode_ptr + r * total + pos + 1, mask=nxt, other=0)
        cn = tl.where(nxt, _coef(mdn, ad, au), 0)
        ca, ba = tl.associative_scan((cn, dy), 0, _affine)
        lam = ca * lam_next + ba
        # the static curve's terms, recomputed from the side-chain
        inb = valid & (pos < N)
        p = _power(s_ptr, rb, NC, N, pos, inb, zero, MEAN, AMP)
        level = pow_db * tl.log(tl.maximum(p, floor))
        yp = tl.load(y_ptr + r * total + pos - 1, mask=valid & (pos > 0), other=0.0)
        d = sgn * (level - th)
        u = tl.minimum(tl.maximum(d + half, 0.0), kn)
        f = tl.where(d >= half, d, u * u * inv_den)
        gc = sl * f
        clamped = gc < lo
        gc = tl.maximum(gc, lo)
        dgc = (1.0 - cc) * lam
        contrib = lam * (yp - gc)
        g_ad += _sum64(contrib, valid & (md == 1))
        g_au += _sum64(contrib, valid & (md == 0))
        g_rng += _sum64(-dgc, valid & clamped)
        live = tl.where(clamped, zero, dgc)
        g_slope += _sum64(live * f, valid)
        inside = (d > -half) & (d < half)
        g_knee += _sum64(live * sl * (u * inv_den - u * u * inv_den * inv_wc), valid & inside)
        dfd = tl.where(d >= half, one, tl.where(inside, u * inv_wc, zero))
        dlevel = sgn * (live * sl * dfd)
        g_thr -= _sum64(dlevel, valid)
        dp = tl.where(p > floor, dlevel * pow_db / p, zero)
        # side-chain gradient; a max link feeds only the first channel holding the maximum
        taken = zero
        c = 0
        while c < NC:
            v = tl.load(s_ptr + (rb + c) * N + pos, mask=inb, other=0.0)
            if MEAN:
                dv = dp * (1.0 / nc_f)
            else:
                vv = v
                if AMP:
                    vv = v * v
                hit = (vv == p) & (taken == 0)
                dv = tl.where(hit, dp, zero)
                taken = tl.where(hit, one, taken)
            if AMP:
                dv = dv * 2.0 * v
            tl.store(gs_ptr + (rb + c) * N + pos, dv, mask=inb)
            c += 1
        lam_next = _at(lam, jj, m - 1)
        blk -= 1
    tl.store(grads_ptr + r * 8 + 0, g_thr)
    tl.store(grads_ptr + r * 8 + 1, g_slope)
    tl.store(grads_ptr + r * 8 + 2, g_knee)
    tl.store(grads_ptr + r * 8 + 3, g_rng)
    tl.store(grads_ptr + r * 8 + 4, g_ad)
    tl.store(grads_ptr + r * 8 + 5, g_au)
    tl.store(grads_ptr + r * 8 + 6, g_mk)
    tl.store(grads_ptr + r * 8 + 7, g_mix)
