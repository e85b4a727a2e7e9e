"""Clicks at the same samples in both channels, repaired jointly (stereo only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmix.functional.restoration.masks import _segments, runs


def coincident_interpolate(
    x: Tensor,
    mask: Tensor,
    coeffs: Tensor,
    hop: int,
    innovation: Tensor,
    *,
    em_steps: int = 4,
    max_span: int = 4096,
    out: Tensor | None = None,
    drive: Tensor | None = None,
) -> Tensor:
    """Repair the spans masked in both channels of a stereo signal as one Gaussian
    posterior: each channel an AR process (its frame's model and innovation
    ``sigma_e``), observed through an additive click whose two channels are correlated.

    A scratch or a digital glitch puts one burst in both channels, at levels and signs
    that differ: ``d_R ~ r d_L``. Where both channels are masked at sample ``n`` the
    click ``(d_L[n], d_R[n])`` is zero-mean Gaussian with a 2x2 covariance ``S`` (white
    in time). The posterior mean minimises
    ``sum_c ||A_c x_c||^2 / sigma_e,c^2 + sum_n (y_n - x_n)^T S^-1 (y_n - x_n)`` over the
    masked samples of both channels jointly. ``S`` is fitted by EM per group of spans
    (``em_steps`` rounds from plain LSAR): the mean over the samples masked in both of
    ``(y_n - u_n)(y_n - u_n)^T`` plus the posterior covariance of ``x_n`` (positive
    definite by construction). For a click alike in both channels (rank one) ``S``
    tends to singular and ``b y_L - a y_R`` is read as (nearly) click-free, which
    halves the unknowns; for unrelated clicks ``S`` is near diagonal and the repair is
    the per-channel one.

    Runs of either channel closer than ``p`` samples form one group, solved with the
    models of the frame holding its centre; only groups with a sample masked in both
    channels are solved (longer than ``max_span``: left), and in such a group a sample
    masked in either channel is read as damaged in both (one event: the per-channel
    detections find its edges a few samples apart). ``out`` (default ``x``) gives every
    other sample. ``drive``: each channel's model has a known input, as in
    :func:`lsar_interpolate` (the joint stereo model of :func:`repair_clicks`, driven by
    the other channel's first repair).

    Differentiable with respect to ``x`` (linear once the mask, models and ``S`` are
    fixed; ``S`` is detached). CUDA: yes.

    Shape:
        ``x, mask, out, drive (B, 2, T)``, ``coeffs (B, 2, F, p + 1)``, ``innovation (B, 2, F)``
        -> ``(B, 2, T)``.

    >>> from diffmix.functional.restoration import ar_coefficients
    >>> x = torch.randn(1, 2, 4096, dtype=torch.float64) * 0.1
    >>> mask = torch.zeros(1, 2, 4096, dtype=torch.bool)
    >>> mask[..., 2000:2010] = True
    >>> coeffs = ar_coefficients(x, 44100, order=8, hop=1024)
    >>> coincident_interpolate(x, mask, coeffs, 1024, torch.full((1, 2, 4), 0.1)).shape
    torch.Size([1, 2, 4096])

    References:
        Godsill and Rayner (1998), ch. 5 (LSAR) and ch. 9 (the click as additive noise);
        Dempster, Laird and Rubin (1977), EM.
    """
    b, c, t = x.shape
    base = x if out is None else out
    if c != 2:
        raise ValueError(f"coincident_interpolate: needs 2 channels, got {c}")
    p = coeffs.shape[-1] - 1
    frames = coeffs.shape[-2]
    m = mask.to(x.device)
    both = m[:, 0] & m[:, 1]
    if not bool(both.any()):
        return base
    groups = _segments(runs((m[:, 0] | m[:, 1])[:, None]), p)
    cs = torch.nn.functional.pad(both.to(torch.int64), (1, 0)).cumsum(-1)
    has = cs[groups[:, 0], groups[:, 2]] > cs[groups[:, 0], groups[:, 1]]
    length = groups[:, 2] - groups[:, 1]
    groups, length = groups[has & (length <= max_span)], length[has & (length <= max_span)]
    if len(groups) == 0:
        return base
    rows = x.reshape(b * c, t)
    dflat = None if drive is None else drive.reshape(b * c, t)
    m2 = m.reshape(b * c, t)
    a_all = coeffs.reshape(b * c, frames, p + 1).detach()
    s_all = innovation.reshape(b * c, frames).detach()

    def take(v: Tensor, row: Tensor, idx: Tensor) -> Tensor:
        j = idx - p  # padded coordinates; zero (False) outside the signal
        return torch.where((j >= 0) & (j < t), v[row, j.clamp(0, t - 1)], v.new_zeros(()))

    k = torch.ceil(torch.log2(length.double())).long()
    bucket = torch.where(4 * length <= 3 << k, 3 << (k - 2).clamp(min=0), 1 << k).clamp(min=8)
    out_r, out_c, out_v = [], [], []
    ch = torch.arange(2, device=x.device)
    for lb in torch.unique(bucket).tolist():
        sel = bucket == lb
        grp, ls = groups[sel], length[sel]
        start = grp[:, 1]
        row = (2 * grp[:, 0])[:, None] + ch  # (nb, 2)
        pos = torch.arange(lb + 2 * p, device=x.device)
        idx = start[:, None] + pos  # (nb, lb + 2p)
        xs = take(rows, row[..., None], idx[:, None]).to(torch.float64)  # (nb, 2, lb + 2p)
        inside = (pos[:lb] < ls[:, None])[:, None]
        d = (take(m2, row[..., None], idx[:, None, p : p + lb]) & inside).to(xs.dtype)
        # The click is one event in both channels: a sample flagged in either is read
        # as damaged in both (each channel's detection finds the edges against its own
        # music, so the two spans differ by a few samples).
        d = (d[:, :1] + d[:, 1:]).clamp(max=1).expand(-1, 2, -1).contiguous()
        frame = ((start + ls // 2) // hop).clamp(max=frames - 1)
        a = a_all[row, frame[:, None]].to(xs.dtype)  # (nb, 2, p + 1)
        s2 = s_all[row, frame[:, None]].to(xs.dtype).square().clamp(min=1e-30)  # (nb, 2)
        n_fft = 1 << math.ceil(math.log2(lb + 3 * p + 1))
        fa = torch.fft.rfft(a, n_fft)
        ra = torch.nn.functional.pad(
            torch.fft.irfft(fa.real.square() + fa.imag.square(), n_fft)[..., : p + 1], (0, 1))
        lag = (pos[:lb, None] - pos[None, :lb]).abs().clamp(max=p + 1)
        known = xs.clone()
        known[..., p : p + lb] = xs[..., p : p + lb] * (1 - d)
        e0 = torch.fft.irfft(torch.fft.rfft(known, n_fft) * fa, n_fft)[..., p : lb + 2 * p]
        if dflat is not None:  # error term n is (a * x)[n] - drive[n]
            e0 = e0 - take(dflat, row[..., None], idx[:, None, p:]).to(xs.dtype)
        g = torch.fft.irfft(torch.fft.rfft(e0, n_fft) * fa.conj(), n_fft)[..., :lb]
        # The prior's precision, block diagonal over the channels (sigma_e^-2 A_u^T A_u);
        # known samples are decoupled identity rows.
        prior = xs.new_zeros(len(grp), 2 * lb, 2 * lb)
        for i in range(2):
            blk = ra[:, i][:, lag] * (d[:, i, :, None] * d[:, i, None, :]) / s2[:, i, None, None]
            blk.diagonal(dim1=-2, dim2=-1).add_(1 - d[:, i])
            prior[:, i * lb : (i + 1) * lb, i * lb : (i + 1) * lb] = blk
        rhs0 = (-d * g / s2[..., None]).reshape(len(grp), 2 * lb)
        y = xs[..., p : p + lb]
        dual = d[:, 0]  # (nb, lb): every damaged sample is damaged in both channels
        yd = y.detach()
        prec = None
        diag = torch.arange(lb, device=x.device)
        for step in range(em_steps + 1):
            mat = prior.clone()
            rhs = rhs0
            if prec is not None:
                w11, w12, w22 = prec
                dl = torch.cat([dual * w11[:, None], dual * w22[:, None]], -1)
                mat.diagonal(dim1=-2, dim2=-1).add_(dl)
                off = dual * w12[:, None]
                mat[:, diag, lb + diag] += off
                mat[:, lb + diag, diag] += off
                rhs = rhs + dl * y.reshape(len(grp), 2 * lb) + torch.cat(
                    [off * y[:, 1], off * y[:, 0]], -1)
            chol, _ = torch.linalg.cholesky_ex(mat if step == em_steps else mat.detach())
            u = torch.cholesky_solve(rhs[..., None], chol)[..., 0].reshape(len(grp), 2, lb)
            if step == em_steps:
                break
            with torch.no_grad():
                cov = torch.cholesky_inverse(chol)
                c11 = cov[:, diag, diag]
                c22 = cov[:, lb + diag, lb + diag]
                c12 = cov[:, diag, lb + diag]
                r = yd - u.detach()
                nd = dual.sum(-1).clamp(min=1)
                s11 = ((r[:, 0].square() + c11) * dual).sum(-1) / nd
                s22 = ((r[:, 1].square() + c22) * dual).sum(-1) / nd
                s12 = ((r[:, 0] * r[:, 1] + c12) * dual).sum(-1) / nd
                det = (s11 * s22 - s12.square()).clamp(min=1e-300)
                prec = (s22 / det, -s12 / det, s11 / det)
        keep = d > 0
        cols = (start[:, None] + pos[None, :lb])[:, None].expand(-1, 2, -1)
        out_r.append(row[..., None].expand(-1, -1, lb)[keep])
        out_c.append(cols[keep])
        out_v.append(u[keep])
    r_cat, c_cat, v_cat = torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)
    return base.reshape(b * c, t).index_put((r_cat, c_cat), v_cat.to(x.dtype)).reshape(b, c, t)
