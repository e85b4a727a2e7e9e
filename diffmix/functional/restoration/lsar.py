"""Least-squares AR (LSAR) interpolation of masked samples, batched over segments."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.functional.restoration._common import _rows, _toeplitz
from diffmix.functional.restoration.masks import _changed, _flagged, _segments, runs


def lsar_interpolate(
    x: Tensor,
    mask: Tensor,
    coeffs: Tensor,
    hop: int,
    *,
    max_span: int = 4096,
    beyond: bool = False,
    iterations: int = 4,
    innovation: Tensor | None = None,
    em_steps: int = 4,
    drive: Tensor | None = None,
) -> Tensor:
    """Least-squares AR interpolation of the masked samples.

    Each segment of masked samples (runs closer than the AR order ``p`` are one segment)
    is replaced by the values that minimise the sum of squared forward prediction errors
    ``sum_n (sum_k a[k] x[n - k])^2`` over every error term that involves one of them,
    with the AR model of the frame holding the segment's centre and the unmasked samples
    fixed (Godsill and Rayner's LSAR). Samples outside the signal count as zeros.

    With ``beyond=True`` (declipping) the solution is constrained to lie beyond the
    observed value, ``sign(x) u >= |x|``: samples that the unconstrained solution pulls
    back inside the clip level are fixed at it and the rest re-solved (an active-set
    iteration, ``iterations`` rounds; any violator left is held at the rail).

    With ``innovation`` (the innovation's standard deviation ``sigma_e`` per frame) the
    masked samples are not missing but observed through additive Gaussian noise (the
    click) of unknown variance ``sigma_n^2``, one per segment: the repair is the
    posterior mean, which minimises ``||A x||^2 / sigma_e^2 + ||y_u - x_u||^2 / sigma_n^2``,
    that is ``(A_u^T A_u + lam I) x_u = -A_u^T A_k x_k + lam y_u`` with
    ``lam = sigma_e^2 / sigma_n^2``. ``sigma_n^2`` is fitted by EM (``em_steps`` rounds
    from the plain LSAR solution): the mean of ``(y_u - x_u)^2`` plus the posterior
    variance ``sigma_e^2 diag((A_u^T A_u + lam I)^-1)``. A loud click gets ``lam``
    near 0 (plain LSAR); a quiet one, or clean samples in the span, keep part of what
    they tell about the signal. Not with ``beyond``.

    With ``drive`` each error term is ``(a * x)[n] - drive[n]``: a model with a known
    input, as the joint (ARX) stereo model of :func:`repair_clicks`, whose part from
    the other channel is the drive.

    Differentiable with respect to ``x`` (and ``drive``): for a fixed mask, coefficients
    (and active set, and ``lam``) the result is linear in them. ``coeffs``, ``mask`` and
    ``innovation`` get no gradient.

    Args:
        x: audio.
        mask: ``True`` where a sample is to be interpolated.
        coeffs: prediction-error filters per frame (:func:`ar_coefficients`).
        hop: frame length of ``coeffs`` in samples.
        max_span: segments longer than this are left as they are.
        innovation: ``(B, C, F)``, positive, or ``None`` (the masked samples are missing).
        drive: ``(B, C, T)`` or ``None`` (a plain AR model).

    Shape:
        ``x (B, C, T)``, ``mask (B, C, T)``, ``coeffs (B, C, F, p + 1)`` -> ``(B, C, T)``.

    References:
        Godsill and Rayner (1998), section 5.2.2, the LSAR interpolator; the click as
        additive noise on the observed samples, their Bayesian treatment (ch. 9).
    """
    _rows(x, "lsar_interpolate")
    return _lsar(x, mask, coeffs, hop, max_span=max_span, beyond=beyond, iterations=iterations,
                 innovation=innovation, em_steps=em_steps, drive=drive)


def _lsar(
    x: Tensor, mask: Tensor, coeffs: Tensor, hop: int, *, max_span: int = 4096,
    beyond: bool = False, iterations: int = 4, innovation: Tensor | None = None,
    em_steps: int = 4, drive: Tensor | None = None,
) -> Tensor:
    """:func:`lsar_interpolate` without its scan of ``x`` for non-finite samples, for this
    package's callers, which pass audio checked on the way in (or a repair of it)."""
    b, c, t = x.shape
    rows = x.reshape(b * c, t)
    if mask.shape != x.shape:
        raise ValueError(f"lsar_interpolate: mask shape {tuple(mask.shape)} != audio {tuple(x.shape)}")
    if innovation is not None and beyond:
        raise ValueError("lsar_interpolate: innovation (a noisy observation) and beyond "
                         "(a clipped one) do not combine")
    if drive is not None and drive.shape != x.shape:
        raise ValueError(f"lsar_interpolate: drive shape {tuple(drive.shape)} != audio {tuple(x.shape)}")
    p = coeffs.shape[-1] - 1
    m2 = mask.reshape(b * c, t).to(x.device)
    segs = _segments(runs(m2[:, None]), p)
    segs = segs[(segs[:, 2] - segs[:, 1]) <= max_span]
    if len(segs) == 0:
        return x
    at, vals = _lsar_solve(rows, m2, segs, coeffs, hop, beyond=beyond, iterations=iterations,
                           innovation=innovation, em_steps=em_steps, drive=drive)
    return rows.index_put(at, vals).reshape(b, c, t)


def _lsar_solve(
    rows: Tensor, m2: Tensor, segs: Tensor, coeffs: Tensor, hop: int, *, beyond: bool = False,
    iterations: int = 4, innovation: Tensor | None = None, em_steps: int = 4,
    drive: Tensor | None = None,
) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """The solves of :func:`lsar_interpolate` (arguments as there; ``rows``, ``m2``
    ``(N, T)``) for the segments ``segs`` (``(S, 3)`` row, start, end: the mask's runs
    merged at gap ``p``, none empty): ``((row, sample) indices, values)`` of the masked
    samples inside them, ``values`` in ``rows``' dtype."""
    n, t = rows.shape
    p = coeffs.shape[-1] - 1
    frames = coeffs.shape[-2]
    a_all = coeffs.reshape(n, frames, p + 1).detach()
    length = segs[:, 2] - segs[:, 1]
    x = rows
    dflat = None if drive is None else drive.reshape(n, t)

    def take(v: Tensor, row: Tensor, idx: Tensor) -> Tensor:
        # v[row, idx - p], zero (False) outside the signal: the windows of the segments,
        # read without a padded copy of the whole signal.
        j = idx - p
        return torch.where((j >= 0) & (j < t), v[row, j.clamp(0, t - 1)], v.new_zeros(()))

    # Half-octave buckets (2^k and 3 2^(k - 1)): a segment's solve costs its bucket's
    # length cubed, so a finer grid wastes less on padding (the padded unknowns are
    # identity rows, decoupled: the bucket changes nothing but rounding).
    k = torch.ceil(torch.log2(length.double())).long()
    bucket = torch.where(4 * length <= 3 << k, 3 << (k - 2).clamp(min=0), 1 << k).clamp(min=8)
    out_rows, out_cols, out_vals = [], [], []
    for lb in torch.unique(bucket).tolist():
        sel = bucket == lb
        seg, ls = segs[sel], length[sel]
        row, start = seg[:, 0], seg[:, 1]
        pos = torch.arange(lb + 2 * p, device=x.device)
        idx = start[:, None] + pos  # window [start - p, start + lb + p) in padded coords
        xs = take(rows, row[:, None], idx).to(torch.float64)  # the Gram matrix can be ill-conditioned
        inside = (pos[None, p : p + lb] - p) < ls[:, None]
        unknown = take(m2, row[:, None], idx[:, p : p + lb]) & inside
        frame = ((start + ls // 2) // hop).clamp(max=frames - 1)
        a = a_all[row, frame].to(xs.dtype)  # (nb, p + 1)
        # G = A_u^T A_u is Toeplitz in the autocorrelation of the filter (all error rows
        # touching the segment are in the objective).
        # The filters by FFT (no wrap: every index read lies inside the transform).
        n_fft = 1 << math.ceil(math.log2(lb + 3 * p + 1))
        fa = torch.fft.rfft(a, n_fft)
        ra = torch.fft.irfft(fa.real.square() + fa.imag.square(), n_fft)[:, : p + 1]
        ra = tnf.pad(ra, (0, 1))
        # The Gram matrix is banded (bandwidth p): a long plain solve goes block by block
        # (blocks of `band` >= p samples, block-tridiagonal, see `_band_solve`).
        band = 1 << max(3, math.ceil(math.log2(p)))
        banded = innovation is None and lb >= 4 * band and lb % band == 0
        if not banded:  # Toeplitz in `ra`, zero from lag p + 1 on: (nb, lb, lb)
            gram = _toeplitz(tnf.pad(ra, (0, max(0, lb - p - 2))), lb)
        mid = xs[:, p : p + lb]  # the segment's own samples
        if beyond:
            sign, level = torch.sign(mid).detach(), mid.detach().abs()
        unk = unknown
        for _ in range(iterations if beyond else 1):
            d = unk.to(xs.dtype)
            known = xs.clone()
            known[:, p : p + lb] = mid * (1 - d)
            # e0[i] = sum_k a[k] known[i + p - k]: error term n = start + i, i < lb + p
            e0 = torch.fft.irfft(torch.fft.rfft(known, n_fft) * fa, n_fft)[:, p : lb + 2 * p]
            if dflat is not None:  # error term n = start + i is (a * x)[n] - drive[n]
                e0 = e0 - take(dflat, row[:, None], idx[:, p:]).to(xs.dtype)
            # g[i] = sum_k a[k] e0[i + k] (A_u^T e0), i < lb
            g = torch.fft.irfft(torch.fft.rfft(e0, n_fft) * fa.conj(), n_fft)[:, :lb, None]
            if banded:
                u = _band_solve(ra, d, -d * g[..., 0], band)
            else:
                mat = gram * (d[:, :, None] * d[:, None, :])
                mat.diagonal(dim1=-2, dim2=-1).add_(1 - d)
                chol, _ = torch.linalg.cholesky_ex(mat)
                u = torch.cholesky_solve(-d[..., None] * g, chol)[..., 0]
            if innovation is not None:
                # EM for the click variance: start from plain LSAR (lam = 0), then solve
                # with lam = sigma_e^2 / sigma_n^2 and re-estimate sigma_n^2. lam is
                # detached, so the last solve is linear in x.
                s2 = innovation.reshape(n, frames)[row, frame].detach().to(xs.dtype).square()
                y = mid
                lam = torch.zeros_like(d)
                for step in range(em_steps + 1):
                    if step:
                        damped = mat.clone()
                        damped.diagonal(dim1=-2, dim2=-1).add_(lam)
                        chol, _ = torch.linalg.cholesky_ex(damped)
                        u = torch.cholesky_solve((-d * g[..., 0] + lam * y)[..., None], chol)[..., 0]
                    if step == em_steps:
                        break
                    post = s2[:, None] * torch.cholesky_inverse(chol).diagonal(dim1=-2, dim2=-1)
                    noise = (((y.detach() - u.detach()).square() + post) * d).sum(-1)
                    noise = noise / d.sum(-1).clamp(min=1)
                    lam = (s2 / noise.clamp(min=1e-30))[:, None] * d
            if not beyond:
                break
            bad = unk & (sign * u.detach() < level)
            unk = unk & ~bad
        vals = torch.where(unk, u, mid)
        keep = unknown
        r_idx = row[:, None].expand(-1, lb)[keep]
        c_idx = (start[:, None] + pos[None, :lb])[keep]
        out_rows.append(r_idx)
        out_cols.append(c_idx)
        out_vals.append(vals[keep])
    r_cat, c_cat, v_cat = torch.cat(out_rows), torch.cat(out_cols), torch.cat(out_vals)
    return (r_cat, c_cat), v_cat.to(rows.dtype)


def _band_solve(ra: Tensor, d: Tensor, rhs: Tensor, band: int) -> Tensor:
    """Solve ``M u = rhs`` with ``M = D G D + I - D`` (``G`` Toeplitz in ``ra``
    (``(K, p + 2)``, zero from lag ``p + 1``), ``D = diag(d)``; ``d``, ``rhs`` ``(K, n)``,
    ``n`` a multiple of ``band >= p``): :func:`lsar_interpolate`'s system, symmetric
    positive definite and banded, so block-tridiagonal in blocks of ``band``. Block
    Cholesky, ``M = L L^T`` with diagonal blocks ``L_i`` and sub-diagonal blocks
    ``W_i = C_i L_(i-1)^-T`` (``C_i`` the block of ``M`` below the diagonal):
    ``L_i L_i^T = M_ii - W_i W_i^T``; then the two block substitutions. It costs
    ``n band^2`` where the dense factorisation costs ``n^3 / 3``; the loop runs over the
    ``n / band`` blocks, each step batched over the segments. Linear in ``rhs``."""
    k, n = d.shape
    m = n // band
    ar = torch.arange(band, device=d.device)
    p1 = ra.shape[-1] - 1
    t0 = ra[:, (ar[:, None] - ar[None]).abs().clamp(max=p1)]  # (K, band, band)
    t1 = ra[:, (band + ar[:, None] - ar[None]).clamp(max=p1)]  # the block below it
    db = d.reshape(k, m, band)
    diag = t0[:, None] * (db[..., :, None] * db[..., None, :])  # (K, m, band, band)
    diag.diagonal(dim1=-2, dim2=-1).add_(1 - db)
    below = t1[:, None] * (db[:, 1:, :, None] * db[:, :-1, None, :])  # (K, m - 1, band, band)
    rb = rhs.reshape(k, m, band, 1)
    chol, low, y = [], [], []
    for i in range(m):
        s = diag[:, i]
        if i:
            x = torch.linalg.solve_triangular(chol[-1], below[:, i - 1].transpose(-1, -2),
                                              upper=False)  # L_(i-1)^-1 C_i^T = W_i^T
            low.append(x.transpose(-1, -2))
            s = s - x.transpose(-1, -2) @ x
        chol.append(torch.linalg.cholesky_ex(s)[0])
        r = rb[:, i] if not i else rb[:, i] - low[-1] @ y[-1]
        y.append(torch.linalg.solve_triangular(chol[-1], r, upper=False))
    u = [None] * m
    for i in reversed(range(m)):
        r = y[i] if i == m - 1 else y[i] - low[i].transpose(-1, -2) @ u[i + 1]
        u[i] = torch.linalg.solve_triangular(chol[i].transpose(-1, -2), r, upper=True)
    return torch.cat(u, -2).reshape(k, n)


def _lsar_update(x: Tensor, mask: Tensor, coeffs: Tensor, hop: int, prev_mask: Tensor,
                 prev: Tensor, drive: Tensor | None = None,
                 mask_runs: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``lsar_interpolate(x, mask, coeffs, hop, drive=drive)`` given ``prev``, its result
    for ``prev_mask``: only the segments with a changed sample within ``p`` samples are
    solved again. The same result (to rounding: a segment solved in another batch may
    round differently): a segment's solution depends on the samples and the mask from
    ``p`` before it to ``p`` after it alone, and where those did not change, neither did
    the segment (its neighbours stay ``p`` or more away). ``(B, C, T)`` each.
    ``mask_runs``: :func:`runs` of ``mask`` and of ``prev_mask``, where the caller has
    them: the changes are then found from the runs, without a pass over the masks."""
    b, c, t = x.shape
    p = coeffs.shape[-1] - 1
    m2 = mask.reshape(b * c, t)
    if mask_runs is None:
        at = _flagged(m2 != prev_mask.reshape(b * c, t))  # row-major: sorted keys row * (t + 1) + sample
        new_runs = None
    else:
        new_runs = mask_runs[0]
        at = _changed(new_runs, mask_runs[1], t)
    if len(at) == 0:
        return prev
    segs = _segments(runs(mask.reshape(b * c, 1, t)) if new_runs is None else new_runs, p)
    key = at[:, 0] * (t + 1) + at[:, 1]
    lo, hi = (segs[:, 1] - p).clamp(min=0), (segs[:, 2] + p).clamp(max=t)
    base = segs[:, 0] * (t + 1)
    count = torch.searchsorted(key, base + hi) - torch.searchsorted(key, base + lo)
    touched = segs[count > 0]
    # Samples no longer masked return to x, and so do the segments too long to solve
    # (`lsar_interpolate`'s `max_span`); those solved again take the new solution.
    rows = x.reshape(b * c, t)
    short = (touched[:, 2] - touched[:, 1]) <= 4096
    long = touched[~short]
    if len(long):
        size = long[:, 2] - long[:, 1]
        pos = torch.arange(int(size.sum()), device=x.device) - torch.repeat_interleave(
            size.cumsum(0) - size - long[:, 1], size)
        at = torch.cat([at, torch.stack([torch.repeat_interleave(long[:, 0], size), pos], -1)])
    touched = touched[short]
    y = prev.reshape(b * c, t).index_put((at[:, 0], at[:, 1]), rows[at[:, 0], at[:, 1]])
    if len(touched):
        idx, vals = _lsar_solve(rows, m2, touched, coeffs, hop,
                                drive=None if drive is None else drive.reshape(b * c, t))
        y = y.index_put_(idx, vals)
    return y.reshape(b, c, t)
